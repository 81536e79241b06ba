"""The admin portal: the gRPC server of docs/protocol.md, Admin service.

`start_admin_server(store, admin_token, host, port)` serves AdminService on any
`Store` (tests give it a LocalStore over a MemoryBus) next to the standard
health and reflection services; `command` is `taskring admin-portal`. Every
AdminService call passes through `AdminCalls`, an interceptor that checks the
bearer token, maps errors to status codes and counts the call. Health and
reflection need no token: probes and tools such as grpcurl use them before
they hold a secret, and they reveal only what the proto file says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import click
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from backend.adapters.bus import open_bus
from backend.adapters.critical_tasks import critical_task
from backend.adapters.settings import (
    DEFAULT_ADMIN_PORTS,
    DEFAULT_HOST,
    BrokerAddresses,
    data_dir,
    read_admin_token,
)
from backend.adapters.store import make_store
from backend.adapters.store.interface import Store
from backend.admin_pb import admin_pb2, admin_pb2_grpc
from backend.core import errors
from backend.core.drops import Drops
from backend.core.metrics import RequestMetrics
from backend.processes.admin_service import AdminService
from backend.processes.options import (
    broker_option,
    component_id_option,
    listen_option,
    storage_option,
)
from backend.processes.runtime import heartbeating, stop_on_signals

log = logging.getLogger(__name__)

KIND = "admin-portal"
SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
EXIT_FAILED, EXIT_USAGE = 1, 2
HEALTH_INTERVAL = 0.5  # seconds between readiness checks for the health service
STOP_GRACE = 5.0  # seconds calls in flight may take to finish on shutdown
MAX_MESSAGE_BYTES = 1 << 20  # far above any valid request (16 KiB of data)

STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    errors.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    errors.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    errors.EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    errors.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    errors.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.INTERNAL: grpc.StatusCode.INTERNAL,
}

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


# ---- authentication ------------------------------------------------------------------


def auth_problem(metadata: Sequence[tuple[str, Any]] | None, admin_token: str) -> str | None:
    """None if the metadata carries `authorization: Bearer <admin_token>`, else why not."""
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if not values:
        return "missing metadata 'authorization: Bearer <admin token>'"
    value = values[0]
    scheme, _, token = (value if isinstance(value, str) else "").strip().partition(" ")
    # RFC 7235: the scheme name is case-insensitive.
    if scheme.lower() != "bearer" or not token.strip():
        return "authorization metadata must be 'Bearer <admin token>'"
    # Constant time, so the reply time tells nothing about how much of a guess was right.
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        return "wrong admin token"
    return None


# ---- the call pipeline ---------------------------------------------------------------


class AdminCalls(grpc.aio.ServerInterceptor):
    """Authenticates, maps errors to status codes, and counts every AdminService call."""

    def __init__(self, admin_token: str, metrics: RequestMetrics) -> None:
        self.admin_token = admin_token
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        service, _, rpc = details.method.lstrip("/").partition("/")
        if service != SERVICE_NAME or handler is None or handler.unary_unary is None:
            return handler  # health, reflection, unknown methods: no token needed
        problem = auth_problem(details.invocation_metadata, self.admin_token)
        return grpc.unary_unary_rpc_method_handler(
            # A grpc.aio server's behaviours are coroutine functions; grpc's types say otherwise.
            self._wrap(rpc, cast(Behaviour, handler.unary_unary), problem),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, rpc: str, behaviour: Behaviour, auth: str | None) -> Behaviour:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            status, message = grpc.StatusCode.UNAUTHENTICATED, auth or ""
            if auth is None:
                try:
                    response = await behaviour(request, context)
                except errors.OpError as exc:
                    status, message = STATUS_BY_CODE[exc.code], exc.message
                except Exception:
                    log.exception("%s failed", rpc)
                    status, message = grpc.StatusCode.INTERNAL, "internal error; see the portal log"
                else:
                    self.metrics.observe(rpc, "ok", time.perf_counter() - started)
                    return response
            self.metrics.observe(rpc, status.name.lower(), time.perf_counter() - started)
            await context.abort(status, message)

        return call


# ---- health --------------------------------------------------------------------------


async def follow_readiness(
    servicer: health.aio.HealthServicer, store: Store, interval: float
) -> None:
    """Keep the health status in step with store.readiness() until cancelled."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    current = None
    while True:
        problem = store.readiness()
        status = serving if problem is None else not_serving
        if status != current:
            if current == serving:
                log.warning("admin portal not serving: %s", problem)
            elif current == not_serving:
                log.info("admin portal serving again")
            for name in ("", SERVICE_NAME):
                await servicer.set(name, status)
            current = status
        await asyncio.sleep(interval)


# ---- the server ----------------------------------------------------------------------


class AdminPortal:
    """A running admin portal; `stop()` ends it (calls in flight get `grace` seconds)."""

    def __init__(self, server: grpc.aio.Server, health_servicer: Any, host: str, port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.host = host
        self.port = port
        self.health_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port as clients dial it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = STOP_GRACE) -> None:
        if self.health_task is not None:
            self.health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.health_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_admin_server(
    store: Store,
    admin_token: str,
    host: str,
    port: int,
    metrics: RequestMetrics | None = None,
    health_interval: float = HEALTH_INTERVAL,
) -> AdminPortal:
    """Serve AdminService, health and reflection on host:port (0 picks a free port).

    Raises OSError if the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=[AdminCalls(admin_token, metrics or RequestMetrics())],
        options=[
            ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {target}: {exc}") from exc
    if bound == 0:  # older grpcio reports a failed bind this way
        raise OSError(f"cannot listen on {target}")
    await server.start()
    portal = AdminPortal(server, health_servicer, host, bound)
    # Without it the health service would report a stale status for good.
    portal.health_task = critical_task(
        follow_readiness(health_servicer, store, health_interval), "admin portal health"
    )
    return portal


# ---- the process ---------------------------------------------------------------------


async def run_admin_portal(
    portal_id: str, host: str, port: int, broker: BrokerAddresses, admin_token: str, storage: str
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    stop = stop_on_signals()
    metrics = RequestMetrics(Drops(f"admin portal {portal_id}"))
    bus = open_bus(broker, portal_id, drops=metrics.drops)
    store = make_store(storage, bus, portal_id, metrics.drops)
    async with bus:
        try:
            portal = await start_admin_server(store, admin_token, host, port, metrics)
        except OSError as exc:
            log.error("%s", exc)
            return EXIT_FAILED
        async with heartbeating(bus, KIND, portal_id, portal.address, store.readiness, metrics):
            log.info(
                "admin portal %s listening on %s (broker %s)",
                portal_id,
                portal.address,
                broker.redacted(),
            )
            await stop.wait()
            log.info("admin portal %s stopping", portal_id)
        await portal.stop()
    return 0


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command("admin-portal")
@component_id_option("admin-portal-1")
@listen_option(f"{DEFAULT_HOST}:{DEFAULT_ADMIN_PORTS[0]}", "serve gRPC")
@broker_option
@storage_option
@click.option(
    "--data-dir",
    "data_dir_flag",
    envvar="TASKRING_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding admin-token (default ./data).",
)
def command(
    component_id: str,
    listen: tuple[str, int],
    broker: BrokerAddresses,
    storage: str,
    data_dir_flag: Path | None,
) -> None:
    """Run one admin portal: gRPC, taskring.admin.v1.AdminService.

    The admin token comes from TASKRING_ADMIN_TOKEN, else from DATA_DIR/admin-token.
    """
    host, port = listen
    portal_id, address = component_id, broker
    directory = data_dir(str(data_dir_flag) if data_dir_flag else None)
    admin_token = read_admin_token(directory)
    if not admin_token:
        fail(
            f"no admin token: set TASKRING_ADMIN_TOKEN or write one to {directory / 'admin-token'}"
        )
    sys.exit(asyncio.run(run_admin_portal(portal_id, host, port, address, admin_token, storage)))
