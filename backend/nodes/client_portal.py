"""The client portal: a TCP server speaking the line protocol of CONTRACT section 2.

`serve_client_portal(store, host, port, portal_id)` runs the server on any
`Store` (tests give it a LocalStore over a MemoryBus); `command` is
`taskring client-portal`, which connects to the MQTT broker, keeps a
LocalStore in step with the other portals, publishes heartbeats, and stops
cleanly (exit 0) on SIGTERM or SIGINT.

What each connection may do and how long it may take is in
client_connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
from typing import Any

import click

from ..bus.drops import Drops
from ..bus.mqtt import MqttBus
from ..cli_common import broker_option, component_id_option, listen_option, storage_option
from ..config import (
    DEFAULT_CLIENT_PORTS,
    DEFAULT_HOST,
    BrokerAddress,
)
from ..errors import UNAVAILABLE
from ..protocol import error_line
from ..store import make_store
from ..store.interface import Store
from ..telemetry import RequestMetrics
from .client_connection import Connection, Limits, PortalContext
from .process import heartbeating, run, stop_on_signals

log = logging.getLogger(__name__)

KIND = "client-portal"
LISTEN_BACKLOG = 1024
EXIT_FAILED, EXIT_USAGE = 1, 2


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
        if len(self.connections) >= self.context.limits.max_connections:
            await _turn_away(writer, len(self.connections))
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


async def _turn_away(writer: asyncio.StreamWriter, count: int) -> None:
    message = f"the portal already serves {count} connections; try again later or another portal"
    writer.write(error_line(None, UNAVAILABLE, message))
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# ---- the process -------------------------------------------------------------------


async def run_client_portal(
    portal_id: str, host: str, port: int, broker: BrokerAddress, limits: Limits, storage: str
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    stop = stop_on_signals()
    metrics = RequestMetrics(Drops(f"client portal {portal_id}"))
    bus = MqttBus(broker, portal_id, drops=metrics.drops)
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


def _raise_file_limit() -> None:
    """Every connection is a file descriptor; take all the kernel allows us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@click.command("client-portal")
@component_id_option("client-portal-1")
@listen_option(f"{DEFAULT_HOST}:{DEFAULT_CLIENT_PORTS[0]}", "accept client connections")
@broker_option
@storage_option
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds before a connection that sends nothing is closed.",
)
def command(
    component_id: str,
    listen: tuple[str, int],
    broker: BrokerAddress,
    storage: str,
    idle_timeout: float,
) -> None:
    """Run one client portal: raw TCP, newline-delimited JSON."""
    host, port = listen
    _raise_file_limit()
    limits = Limits(idle_timeout=idle_timeout)
    sys.exit(run(run_client_portal(component_id, host, port, broker, limits, storage)))
