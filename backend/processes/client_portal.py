"""The client portal: a TCP server speaking the line protocol of docs/protocol.md.

`serve_client_portal(store, host, port, portal_id)` runs the server on any
`Store` (tests give it a LocalStore over a MemoryBus); `command` is `taskring
client-portal`, which connects to the broker, serves the store of --storage,
publishes heartbeats, and exits 0 on SIGTERM or SIGINT. It turns away a
connection over the total or per-address cap (portal_limits.py) with an
`unavailable` line; each connection is client_connection.py. The limits:
SECURITY.md, Limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
from typing import Any

import click

from backend.adapters.bus import open_bus
from backend.adapters.settings import DEFAULT_CLIENT_PORTS, DEFAULT_HOST, BrokerAddresses
from backend.adapters.store import make_store
from backend.adapters.store.interface import Store
from backend.core.drops import Drops
from backend.core.errors import UNAVAILABLE
from backend.core.metrics import RequestMetrics
from backend.core.portal_limits import ConnectionCounts
from backend.core.protocol import error_line
from backend.processes.client_connection import Connection, Limits, PortalContext, peer_ip
from backend.processes.options import (
    broker_option,
    component_id_option,
    listen_option,
    storage_option,
)
from backend.processes.runtime import heartbeating, run, stop_on_signals

log = logging.getLogger(__name__)

KIND = "client-portal"
LISTEN_BACKLOG = 1024
EXIT_FAILED, EXIT_USAGE = 1, 2
MAX_CONNECTIONS_CEILING = 10_000
FILE_HEADROOM = 256  # descriptors kept for the broker connection, logs and the like


class ClientPortal:
    """A listening client portal; `close()` stops it and ends every connection."""

    def __init__(
        self,
        store: Store,
        portal_id: str,
        metrics: RequestMetrics | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.context = PortalContext(
            store, portal_id, metrics or RequestMetrics(), limits or Limits()
        )
        self.connections: set[asyncio.Task[Any]] = set()
        limits = self.context.limits
        self.counts = ConnectionCounts(limits.max_connections, limits.max_connections_per_ip)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._accept, host, port, backlog=LISTEN_BACKLOG, limit=2**16
        )

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually bound (useful when started on port 0)."""
        assert self.server is not None, "the portal is not started"
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        tasks = list(self.connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def __aenter__(self) -> ClientPortal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = peer_ip(writer)
        refusal = self.counts.admit(ip)
        if refusal is not None:
            log.debug("turned away a connection from %s: %s", ip, refusal)
            await _turn_away(writer, refusal)
            return
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await Connection(self.context, reader, writer).serve()
        except asyncio.CancelledError:
            # close() ended it. Returning normally matters: asyncio's stream callback
            # logs a traceback for a connection task that ends cancelled.
            pass
        except Exception:
            log.exception("a client connection failed")
        finally:
            self.connections.discard(task)
            self.counts.release(ip)


async def serve_client_portal(
    store: Store,
    host: str,
    port: int,
    portal_id: str,
    metrics: RequestMetrics | None = None,
    limits: Limits | None = None,
) -> ClientPortal:
    """Start a client portal on host:port (0 picks a free port) serving `store`."""
    portal = ClientPortal(store, portal_id, metrics, limits)
    await portal.start(host, port)
    return portal


async def _turn_away(writer: asyncio.StreamWriter, message: str) -> None:
    writer.write(error_line(None, UNAVAILABLE, message))
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# ---- the process -------------------------------------------------------------------


async def run_client_portal(
    portal_id: str, host: str, port: int, broker: BrokerAddresses, limits: Limits, storage: str
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    stop = stop_on_signals()
    metrics = RequestMetrics(Drops(f"client portal {portal_id}"))
    bus = open_bus(broker, portal_id, drops=metrics.drops)
    store = make_store(storage, bus, portal_id, metrics.drops)
    async with bus:
        try:
            portal = await serve_client_portal(store, host, port, portal_id, metrics, limits)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return EXIT_FAILED
        address = "{}:{}".format(*portal.address)
        async with heartbeating(bus, KIND, portal_id, address, store.readiness, metrics):
            log.info(
                "client portal %s listening on %s (broker %s)",
                portal_id,
                address,
                broker.redacted(),
            )
            await stop.wait()
            log.info("client portal %s stopping", portal_id)
        await portal.close()
    return 0


def _raise_file_limit() -> int:
    """Every connection is a file descriptor; take all the kernel allows us, and return
    how many we may have open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections(open_files: int) -> int:
    """All the connections the file limit allows, less headroom for the broker connection,
    logs and whatever else the process opens, and at most MAX_CONNECTIONS_CEILING."""
    return max(64, min(MAX_CONNECTIONS_CEILING, open_files - FILE_HEADROOM))


def _limit_option(name: str, kind: click.ParamType, default: Any, what: str) -> Any:
    variable = "TASKRING_" + name[2:].replace("-", "_").upper()
    return click.option(
        name, type=kind, default=default, show_default=default is not None,
        envvar=variable, show_envvar=True, help=what,
    )  # fmt: skip


_POSITIVE = click.FloatRange(min=0, min_open=True)
_COUNT = click.IntRange(min=1)


@click.command("client-portal")
@component_id_option("client-portal-1")
@listen_option(f"{DEFAULT_HOST}:{DEFAULT_CLIENT_PORTS[0]}", "accept client connections")
@broker_option
@storage_option
@_limit_option(
    "--idle-timeout",
    _POSITIVE,
    300.0,
    "Seconds before an authenticated connection that sends nothing is closed.",
)
@_limit_option(
    "--auth-timeout",
    _POSITIVE,
    10.0,
    "Seconds before a connection that sends nothing and has not authenticated is closed.",
)
@_limit_option(
    "--max-connections",
    _COUNT,
    None,
    "Connections served at once; more are turned away with `unavailable`. "
    f"Default: the open-file limit less {FILE_HEADROOM}, at most "
    f"{MAX_CONNECTIONS_CEILING:,}.",
)
@_limit_option(
    "--max-connections-per-ip",
    _COUNT,
    1_000,
    "Connections served at once from one source address (the web process's bridge counts as one).",
)
@_limit_option(
    "--auth-failure-burst",
    _COUNT,
    20,
    "Failed auths a source address may make at once before it is slowed down.",
)
@_limit_option(
    "--auth-failure-rate",
    _POSITIVE,
    5.0,
    "Failed auths a second a source address may make past the burst; its "
    "further attempts wait their turn.",
)
@_limit_option(
    "--watch-buffer",
    _COUNT,
    1 << 20,
    "Bytes of events queued for one watching connection before it is closed.",
)
@_limit_option(
    "--watch-buffer-client",
    _COUNT,
    16 << 20,
    "Bytes of events queued for all of one client's watching connections "
    "before the one adding more is closed.",
)
def command(
    component_id: str,
    listen: tuple[str, int],
    broker: BrokerAddresses,
    storage: str,
    idle_timeout: float,
    auth_timeout: float,
    max_connections: int | None,
    max_connections_per_ip: int,
    auth_failure_burst: int,
    auth_failure_rate: float,
    watch_buffer: int,
    watch_buffer_client: int,
) -> None:
    """Run one client portal: raw TCP, newline-delimited JSON."""
    host, port = listen
    open_files = _raise_file_limit()
    limits = Limits(
        idle_timeout=idle_timeout,
        auth_timeout=auth_timeout,
        max_connections=max_connections or default_max_connections(open_files),
        max_connections_per_ip=max_connections_per_ip,
        auth_failure_burst=auth_failure_burst,
        auth_failure_rate=auth_failure_rate,
        watch_buffer=watch_buffer,
        watch_buffer_client=watch_buffer_client,
    )
    sys.exit(run(run_client_portal(component_id, host, port, broker, limits, storage)))
