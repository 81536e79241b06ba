"""taskring as a bench target: the client portals over TCP, and the admin portals over gRPC.

Before a run the bench creates (or takes over) K clients through an admin
portal, gives each the same T tasks through a client portal (retrying while a
portal has not yet heard of the client), and waits until every client portal
serves all of them. A connection acts for one client at a time, so an
operation for another client than the connection's last `auth` is sent in one
write with that `auth`: one round trip, two requests. Reads are `list_tasks`,
writes `update_task`; the `admin` workload uses taskring_admin.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from backend.bench.channel import Channel, ChannelFailure
from backend.bench.targets.base import Session, TargetUnreachable, TargetUnusable
from backend.bench.targets.taskring_admin import AdminPortals, Credentials
from backend.bench.workload import Kind, Op, WorkloadSpec, initial_description, task_title

CONNECT_TIMEOUT = 5.0
LOAD_CONNECTIONS = 16
CONVERGENCE_TIMEOUT = 60.0
CONVERGENCE_POLL = 0.05


def encode(request: dict[str, Any]) -> bytes:
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def read_response(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next response line; event lines (from `watch`) are skipped."""
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("the portal closed the connection")
        message = json.loads(line)
        if isinstance(message, dict) and "ok" in message:
            return message


def error_code(response: dict[str, Any]) -> str | None:
    if response.get("ok") is True:
        return None
    error = response.get("error")
    return str(error.get("code", "internal")) if isinstance(error, dict) else "internal"


def error_text(response: dict[str, Any]) -> str:
    error = response.get("error") or {}
    return f"{error.get('code', 'internal')}: {error.get('message', '')}"


class LineSession:
    """One connection to a client portal, acting for whichever client each operation names."""

    def __init__(self, channel: Channel, clients: list[Credentials]) -> None:
        self.channel = channel
        self.clients = clients
        self.bound: tuple[str, int] | None = None  # (cid, connection generation) of the last auth

    async def perform(self, op: Op) -> str | None:
        client = self.clients[op.client]
        if op.kind is Kind.READ:
            request = {"op": "list_tasks", "cid": client.cid}
        else:
            request = {
                "op": "update_task",
                "cid": client.cid,
                "title": task_title(op.task),
                "description": op.description,
            }
        try:
            responses = await self.exchange(client, [request])
        except ChannelFailure as exc:
            return exc.code
        for response in responses:
            code = error_code(response)
            if code is not None:
                return code
        return None

    async def exchange(
        self, client: Credentials, requests: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Send requests for `client` (after an `auth` when needed); return every response."""
        await self.channel.open()
        binding = (client.cid, self.channel.generation)
        if self.bound != binding:
            requests = [{"op": "auth", "cid": client.cid, "token": client.token}, *requests]
        self.bound = binding
        futures = await self.channel.send(b"".join(map(encode, requests)), len(requests))
        try:
            responses = [await self.channel.wait(future) for future in futures]
        except ChannelFailure:
            self.bound = None
            raise
        if self.bound == binding and any(error_code(r) == "unauthorized" for r in responses):
            self.bound = None  # a failed auth unbinds the connection
        return responses

    async def close(self) -> None:
        await self.channel.close()


class TaskringTarget:
    name = "taskring"

    def __init__(
        self,
        portals: list[tuple[str, int]],
        admin: AdminPortals,
        spec: WorkloadSpec,
        timeout: float,
    ) -> None:
        self.portals = portals
        self.admin = admin
        self.spec = spec
        self.timeout = timeout
        self.clients: list[Credentials] = []

    @property
    def uses_client_portals(self) -> bool:
        return self.spec.workload != "admin"

    async def prepare(self) -> None:
        if self.uses_client_portals:
            await asyncio.gather(*(self._check_portal(host, port) for host, port in self.portals))
        await self.admin.connect()
        self.clients = await self.admin.ensure_clients(self.spec.clients)
        if self.uses_client_portals:
            await self._load_tasks()
            await asyncio.gather(*(self._await_portal(n) for n in range(len(self.portals))))

    async def session(self, number: int) -> Session:
        if not self.uses_client_portals:
            return self.admin.session(number, self.clients)
        return LineSession(self._channel(number), self.clients)

    async def close(self) -> None:
        await self.admin.close()

    def _channel(self, number: int) -> Channel:
        host, port = self.portals[number % len(self.portals)]
        return Channel(host, port, read_response, self.timeout)

    async def _check_portal(self, host: str, port: int) -> None:
        channel = Channel(host, port, read_response, CONNECT_TIMEOUT)
        try:
            response = await channel.call(encode({"op": "ping"}))
        except ChannelFailure:
            raise TargetUnreachable(
                f"no client portal at {host}:{port}: start the system with `make run` "
                "(or give --portal)"
            ) from None
        finally:
            await channel.close()
        if error_code(response) is not None:
            raise TargetUnusable(f"{host}:{port} did not answer ping: {error_text(response)}")

    async def _load_tasks(self) -> None:
        """Give every client exactly the tasks task-0000 .. task-{T-1}, through portal 0."""
        workers = min(LOAD_CONNECTIONS, len(self.clients))
        await asyncio.gather(*(self._load_share(w, workers) for w in range(workers)))

    async def _load_share(self, worker: int, workers: int) -> None:
        session = LineSession(self._channel(0), self.clients)
        try:
            for number in range(worker, len(self.clients), workers):
                await self._load_client(session, number)
        except ChannelFailure as exc:
            raise TargetUnusable(f"loading the initial tasks failed: {exc}") from None
        finally:
            await session.close()

    async def _load_client(self, session: LineSession, number: int) -> None:
        client = self.clients[number]
        requests: list[dict[str, Any]] = [{"op": "delete_tasks", "cid": client.cid}]
        for task in range(self.spec.tasks):
            description = initial_description(self.spec, number, task)
            requests.append(
                {
                    "op": "insert_task",
                    "cid": client.cid,
                    "title": task_title(task),
                    "description": description,
                }
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONVERGENCE_TIMEOUT
        while True:
            responses = await session.exchange(client, requests)
            failed = next((r for r in responses if error_code(r) is not None), None)
            if failed is None:
                return
            # A client just made or given a new token may not have reached this portal
            # yet; a failed auth changes nothing, so trying again is safe.
            if error_code(failed) != "unauthorized" or loop.time() > deadline:
                raise TargetUnusable(
                    f"loading the tasks of client {client.cid} failed: {error_text(failed)}"
                )
            await asyncio.sleep(CONVERGENCE_POLL)

    async def _await_portal(self, portal: int) -> None:
        """Wait until portal number `portal` serves every client's full set of tasks."""
        session = LineSession(self._channel(portal), self.clients)
        waiting = list(range(len(self.clients)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONVERGENCE_TIMEOUT
        try:
            while waiting:
                waiting = [n for n in waiting if not await self._serves_all(session, n)]
                if waiting and loop.time() > deadline:
                    host, port = self.portals[portal]
                    raise TargetUnusable(
                        f"the client portal at {host}:{port} still lacks the tasks of "
                        f"{len(waiting)} of {len(self.clients)} clients after "
                        f"{CONVERGENCE_TIMEOUT:.0f} s"
                    )
                if waiting:
                    await asyncio.sleep(CONVERGENCE_POLL)
        finally:
            await session.close()

    async def _serves_all(self, session: LineSession, number: int) -> bool:
        client = self.clients[number]
        try:
            responses = await session.exchange(client, [{"op": "list_tasks", "cid": client.cid}])
        except ChannelFailure:
            return False
        listing = responses[-1]
        return error_code(listing) is None and len(listing.get("tasks", ())) == self.spec.tasks
