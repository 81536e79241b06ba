"""The bench's use of the admin portal (gRPC): make its clients, and the `admin` workload.

The bench's clients have fixed names (`bench-client-000000`, ...), so a
second run reuses them: a name that exists already gets a fresh token with
RotateToken, which is the only way to learn a usable one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from backend.admin_pb import admin_pb2, admin_pb2_grpc
from backend.bench.targets.base import TargetUnreachable, TargetUnusable
from backend.bench.workload import Kind, Op, client_name
from backend.core.model.identity import cid_for_name, format_cid

CONNECT_TIMEOUT = 5.0
SETUP_CONCURRENCY = 32
SETUP_ATTEMPTS = 5
CLIENT_DATA = "made by taskring bench"


@dataclass(frozen=True)
class Credentials:
    cid: str
    token: str


def grpc_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_channel(address: str) -> grpc.aio.Channel:
    # A channel of its own connection: gRPC otherwise shares one connection per address
    # between channels, and the bench's C connections would be one.
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


class AdminPortals:
    """The admin portals that answer, with the admin token to present to them."""

    def __init__(self, addresses: list[str], token: str, timeout: float) -> None:
        self.addresses = addresses
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self.channels: list[grpc.aio.Channel] = []
        self.reachable: list[str] = []

    async def connect(self) -> None:
        """Open a channel to each admin portal that answers; fail when none does."""
        problems = []
        for address in self.addresses:
            channel = open_channel(address)
            try:
                await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
            except TimeoutError:
                await channel.close()
                problems.append(address)
                continue
            self.channels.append(channel)
            self.reachable.append(address)
        if not self.channels:
            raise TargetUnreachable(
                f"no admin portal at {', '.join(problems)}: start the system with `make run` "
                "(or give --admin-portal)"
            )

    def stub(self, number: int = 0) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channels[number % len(self.channels)])

    def session(self, number: int, clients: list[Credentials]) -> AdminSession:
        """A session on a connection of its own to admin portal `number` (round robin)."""
        address = self.reachable[number % len(self.reachable)]
        return AdminSession(open_channel(address), self, clients)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))
        self.channels = []

    async def ensure_clients(self, count: int) -> list[Credentials]:
        """Create (or take over) clients 0 .. count-1 and return their credentials in order."""
        limit = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(number: int) -> Credentials:
            async with limit:
                return await self._ensure_client(number)

        return list(await asyncio.gather(*(one(n) for n in range(count))))

    async def _ensure_client(self, number: int) -> Credentials:
        name = client_name(number)
        stub = self.stub(number)
        for attempt in range(SETUP_ATTEMPTS):
            try:
                client = await stub.CreateClient(
                    admin_pb2.CreateClientRequest(name=name, data=CLIENT_DATA),
                    metadata=self.metadata,
                    timeout=self.timeout,
                )
                return Credentials(client.cid, client.token)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return await self._take_over(name, stub)
                self._check_setup_error(exc, attempt)
        raise AssertionError("unreachable: the last attempt raises")

    async def _take_over(self, name: str, stub: admin_pb2_grpc.AdminServiceStub) -> Credentials:
        cid = format_cid(cid_for_name(name))
        for attempt in range(SETUP_ATTEMPTS):
            try:
                client = await stub.RotateToken(
                    admin_pb2.RotateTokenRequest(cid=cid),
                    metadata=self.metadata,
                    timeout=self.timeout,
                )
                return Credentials(client.cid, client.token)
            except grpc.aio.AioRpcError as exc:
                self._check_setup_error(exc, attempt)
        raise AssertionError("unreachable: the last attempt raises")

    @staticmethod
    def _check_setup_error(exc: grpc.aio.AioRpcError, attempt: int) -> None:
        """Raise unless the error is worth another attempt."""
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise TargetUnusable(
                f"the admin portal refused the admin token ({exc.details()}): give the right "
                "one with --admin-token or TASKRING_ADMIN_TOKEN"
            )
        retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        if not retryable or attempt == SETUP_ATTEMPTS - 1:
            raise TargetUnusable(
                f"could not set up the bench clients: {code.name.lower()}: {exc.details()}"
            )


class AdminSession:
    """One connection's share of the `admin` workload: GetClient reads, UpdateClient writes."""

    def __init__(
        self, channel: grpc.aio.Channel, portals: AdminPortals, clients: list[Credentials]
    ) -> None:
        self.channel = channel
        self.stub = admin_pb2_grpc.AdminServiceStub(channel)
        self.metadata = portals.metadata
        self.timeout = portals.timeout
        self.clients = clients

    async def perform(self, op: Op) -> str | None:
        cid = self.clients[op.client].cid
        try:
            if op.kind is Kind.READ:
                await self.stub.GetClient(
                    admin_pb2.GetClientRequest(cid=cid),
                    metadata=self.metadata,
                    timeout=self.timeout,
                )
            else:
                await self.stub.UpdateClient(
                    admin_pb2.UpdateClientRequest(cid=cid, data=op.description),
                    metadata=self.metadata,
                    timeout=self.timeout,
                )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name.lower()
        return None

    async def close(self) -> None:
        await self.channel.close()
