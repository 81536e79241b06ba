"""`taskring web`: the HTTP face of the cluster (health, readiness, cluster view, metrics).

`create_app(context)` builds the FastAPI application over a `WebContext` (the
cluster view, the bus, this process's own request counts); tests can give it any
bus. `command` is `taskring web`: it listens to every heartbeat to keep the view
current, publishes its own, and serves HTTP with uvicorn in the same asyncio
loop; SIGTERM or SIGINT stops it with exit code 0. The endpoints are in
docs/protocol.md, Web; the edge (allowed portals and origins, limits, headers)
in web/security.py and SECURITY.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.adapters.bus import open_bus
from backend.adapters.bus.transport import Bus
from backend.adapters.critical_tasks import critical_task
from backend.adapters.heartbeats import heartbeat_message, refused_subscriptions, run_heartbeat
from backend.adapters.settings import (
    DEFAULT_HOST,
    DEFAULT_WEB_PORT,
    BrokerAddresses,
    ConfigError,
)
from backend.core import topics
from backend.core.chaos_notices import ChaosNotices, NoticeError
from backend.core.cluster_view import (
    ADMIN_PORTAL,
    CLIENT_PORTAL,
    PORTAL_NAMES,
    ClusterView,
    Component,
    HeartbeatError,
    parse_heartbeat,
)
from backend.core.metrics import RequestMetrics
from backend.core.protocol import MAX_LINE_BYTES
from backend.processes.options import broker_option, listen_option
from backend.processes.runtime import stop_on_signals

from .grpc_web import create_grpc_web_router
from .metrics import ClusterCollector
from .probes import probe_admin_portal, probe_client_portal
from .security import PortalAllowList, SecurityHeaders, parse_origins
from .ui import DEFAULT_DIST, mount_ui
from .ws_bridge import DEFAULT_MAX_SOCKETS, BridgeLimits, create_ws_router

log = logging.getLogger(__name__)

KIND = "web"
EXIT_FAILED = 1
# How many ready portals of one kind /readyz tries before giving up on that kind.
MAX_PROBED_PER_KIND = 3
GRACEFUL_SHUTDOWN_SECONDS = 3
MAX_REMEMBERED_BAD = 1000
# uvicorn refuses WebSocket frames past this many bytes (its default is 16 MiB). It
# sits above the line limit so that a line a little too long still arrives and gets the
# bridge's `too_large` answer before close 1009; past it the server closes with 1009.
WS_MAX_SIZE = 2 * MAX_LINE_BYTES

Probe = Callable[[str], Awaitable[str | None]]


@dataclass
class WebContext:
    """Everything the endpoints read. `clock` is monotonic: it times heartbeat arrivals."""

    bus: Bus
    broker: str  # the broker URL without its password, for messages
    web_id: str = "web-1"
    address: str = ""
    view: ClusterView = field(default_factory=ClusterView)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    clock: Callable[[], float] = time.monotonic
    probes: dict[str, Probe] = field(
        default_factory=lambda: {
            CLIENT_PORTAL: probe_client_portal,
            ADMIN_PORTAL: probe_admin_portal,
        }
    )
    started: float = field(default_factory=time.time)
    allowed: PortalAllowList = field(default_factory=PortalAllowList)  # portals bridges may use
    origins: frozenset[str] = frozenset()  # origins besides the same one that may open sockets
    max_websockets: int = DEFAULT_MAX_SOCKETS
    chaos: ChaosNotices = field(default_factory=ChaosNotices)  # faults `taskring chaos` injects
    _bad_heartbeats: dict[str, str] = field(default_factory=dict)

    def bus_problem(self) -> str | None:
        if not self.bus.connected:
            return f"not connected to the MQTT broker at {self.broker}"
        if refused := refused_subscriptions(self.bus):
            # Deaf to what it subscribed to (heartbeats, say): its answers cannot be trusted.
            refusal = f"the broker refused its subscription to {', '.join(refused)}"
            return f"{self.web_id} is connected but {refusal}"
        return None

    async def on_chaos_notice(self, topic: str, message: dict[str, Any]) -> None:
        try:
            self.chaos.observe(message, self.clock())
        except NoticeError as exc:
            self.metrics.drops.bad("chaos notice", exc)

    async def on_heartbeat(self, topic: str, message: dict[str, Any]) -> None:
        try:
            self.view.observe(topic, message, self.clock())
        except HeartbeatError as exc:
            self.metrics.drops.bad("heartbeat", exc)  # counted, and logged 1st, 10th, ...
            # Also say it once per publisher and problem, not once a second.
            if self._bad_heartbeats.get(topic) != str(exc):
                log.info("ignoring heartbeats on %s: %s", topic, exc)
            if len(self._bad_heartbeats) >= MAX_REMEMBERED_BAD:
                self._bad_heartbeats.clear()  # a flood of junk topics must not grow memory
            self._bad_heartbeats[topic] = str(exc)
        else:
            self._bad_heartbeats.pop(topic, None)

    def own_component(self, now: float) -> Component:
        """This process as a heartbeat would describe it, fresh."""
        message = heartbeat_message(
            self.web_id,
            KIND,
            self.address,
            self.started,
            self.bus_problem(),
            self.metrics,
            refused_subscriptions(self.bus),
        )
        return Component(parse_heartbeat(message), now)

    def components(self) -> tuple[list[Component], float]:
        """Every known component, this process's own entry taken from memory."""
        now = self.clock()
        mine = self.own_component(now)
        others = [c for c in self.view.components(now) if (c.kind, c.id) != (KIND, self.web_id)]
        return sorted([*others, mine], key=lambda c: (c.kind, c.id)), now


# ---- readiness ----------------------------------------------------------------------


async def readiness(context: WebContext) -> dict[str, Any]:
    """The /readyz body: heartbeats say who is ready, then one of each kind is asked directly."""
    now = context.clock()
    missing: list[str] = []
    problem = context.bus_problem()
    if problem:
        missing.append(problem)
    missing.extend(reason for reason in context.view.missing(now) if reason not in missing)
    kinds = []
    for kind in (CLIENT_PORTAL, ADMIN_PORTAL):
        ready = context.view.ready_portals(now, kind)
        if ready and not usable_portals(context, kind, now):
            missing.append(context.allowed.why_none(PORTAL_NAMES[kind], heard(ready)))
        elif ready:
            kinds.append(kind)
    results = await asyncio.gather(*(_probe_kind(context, kind, now) for kind in kinds))
    chosen: dict[str, str] = {}
    for kind, (answered, failures) in zip(kinds, results, strict=True):
        if answered:
            chosen[kind] = answered
        missing.extend(failures)
    body: dict[str, Any] = {
        "status": "unready" if missing else "ready",
        "bus": {"connected": context.bus.connected, "broker": context.broker},
        "portals": chosen,
    }
    if missing:
        body["missing"] = missing
    return body


async def _probe_kind(context: WebContext, kind: str, now: float) -> tuple[str | None, list[str]]:
    """Try ready portals of `kind` until one answers: (its id or None, what the others said)."""
    failures: list[str] = []
    probe = context.probes[kind]
    for portal in usable_portals(context, kind, now)[:MAX_PROBED_PER_KIND]:
        try:
            problem = await probe(portal.heartbeat.address)
        except Exception as exc:  # a probe that breaks must not break /readyz
            log.exception("probing %s failed", portal.id)
            problem = f"the probe failed: {exc}"
        if problem is None:
            return portal.id, []
        failures.append(f"{portal.id}: {problem}")
    return None, failures


# ---- the application ------------------------------------------------------------------

ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(context: WebContext) -> FastAPI:
    app = FastAPI(title="taskring", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(context.components))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body = await readiness(context)
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/api/cluster")
    async def cluster() -> dict[str, Any]:
        now = context.clock()
        return {
            "cache_nodes": context.view.cache_nodes(now),
            "replica_groups": context.view.replica_groups(now),
            "portals": context.view.portals(now),
            "chaos": context.chaos.summary(now),
        }

    @app.get("/api/components")
    async def components() -> list[dict[str, Any]]:
        """A JSON list, one entry per component: id, kind, pid, uptime (seconds) and
        requests, with address, alive, ready, problem and last_heard_seconds besides."""
        listed, now = context.components()
        return [c.summary(now) for c in listed]

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = f"no such path: {request.url.path}" if exc.status_code == 404 else exc.detail
        return JSONResponse(
            {"error": {"code": code, "message": message}},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = "internal error; the web process's log has the details"
        return JSONResponse({"error": {"code": "internal", "message": message}}, status_code=500)

    # The browser's ways in: the client bridge, gRPC-Web, and the UI itself (last, at /).
    app.include_router(
        create_ws_router(
            lambda: live_addresses(context, CLIENT_PORTAL),
            BridgeLimits(max_sockets=context.max_websockets),
            explain=lambda: why_no_portal(context, CLIENT_PORTAL),
            origins=context.origins,
        )
    )
    app.include_router(
        create_grpc_web_router(
            lambda: live_addresses(context, ADMIN_PORTAL),
            explain=lambda: why_no_portal(context, ADMIN_PORTAL),
        )
    )
    mount_ui(app, DEFAULT_DIST)
    app.add_middleware(CountRequests, metrics=context.metrics)
    app.add_middleware(SecurityHeaders)
    return app


def usable_portals(context: WebContext, kind: str, now: float) -> list[Component]:
    """The ready portals of `kind` at allowed addresses, the longest-running first: the
    only ones a bridge or a probe ever connects to."""
    ready = context.view.ready_portals(now, kind)
    return [c for c in ready if context.allowed.allows(c.heartbeat.address)]


def live_addresses(context: WebContext, kind: str) -> list[str]:
    """Where the usable portals of `kind` listen, the longest-running first."""
    return [c.heartbeat.address for c in usable_portals(context, kind, context.clock())]


def why_no_portal(context: WebContext, kind: str) -> str:
    """What a bridge tells its caller when no portal of `kind` may be used."""
    ready = context.view.ready_portals(context.clock(), kind)
    return context.allowed.why_none(PORTAL_NAMES[kind], heard(ready))


def heard(portals: list[Component]) -> list[tuple[str, str]]:
    return [(c.id, c.heartbeat.address) for c in portals]


class CountRequests:
    """Counts every HTTP request in `metrics`: op "GET /path" by route, outcome "ok" or status."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = scope.get("route")
            # Unknown paths and methods share one name each, so a scanner cannot grow the
            # metrics without bound.
            path = getattr(route, "path", None) if status != 404 else None
            method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
            op = f"{method} {path or '(unmatched)'}"
            outcome = "ok" if status < 400 else str(status)
            self.metrics.observe(op, outcome, time.perf_counter() - began)


# ---- the process --------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: this process installs its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (0 picks a free port); raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


@dataclass(frozen=True)
class EdgeSettings:
    """What the bridges may reach and who may reach them (web/security.py)."""

    allowed: PortalAllowList = field(default_factory=PortalAllowList)
    origins: frozenset[str] = frozenset()
    max_websockets: int = DEFAULT_MAX_SOCKETS


async def run_web(
    web_id: str, host: str, port: int, broker: BrokerAddresses, edge: EdgeSettings | None = None
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    edge = edge or EdgeSettings()
    stop = stop_on_signals()
    try:
        sock = bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        return EXIT_FAILED
    bound_host, bound_port = sock.getsockname()[:2]
    address = f"{bound_host}:{bound_port}"
    bus = open_bus(broker, web_id)
    context = WebContext(
        bus=bus,
        broker=broker.redacted(),
        web_id=web_id,
        address=address,
        allowed=edge.allowed,
        origins=edge.origins,
        max_websockets=edge.max_websockets,
    )
    if not edge.allowed.configured:
        log.warning("no --allow-portals (TASKRING_ALLOW_PORTALS): the bridges will use no portal")
    bus.drops = context.metrics.drops  # heartbeats report what the bus dropped
    bus.subscribe(topics.HEARTBEATS, context.on_heartbeat)
    bus.subscribe(topics.CHAOS_EVENTS, context.on_chaos_notice)
    config = uvicorn.Config(
        create_app(context),
        log_config=None,
        access_log=False,
        lifespan="off",
        ws_max_size=WS_MAX_SIZE,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _Server(config)
    async with bus:
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        heartbeat = critical_task(
            run_heartbeat(bus, KIND, web_id, address, context.bus_problem, context.metrics),
            f"web {web_id} heartbeat",
        )
        log.info("web %s on http://%s (broker %s)", web_id, address, broker.redacted())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        log.info("web %s stopping", web_id)
        server.should_exit = True
        heartbeat.cancel()
        stopping.cancel()
        await asyncio.gather(heartbeat, stopping, return_exceptions=True)
        try:
            await serving
        except SystemExit as exc:  # uvicorn exits this way when it cannot start
            return int(exc.code or EXIT_FAILED)
    return 0


@click.command("web")
@click.option(
    "--id",
    "web_id",
    default="web-1",
    show_default=True,
    envvar="TASKRING_WEB_ID",
    help="This web process's id, unique in the cluster.",
)
@listen_option(f"{DEFAULT_HOST}:{DEFAULT_WEB_PORT}", "serve HTTP", envvar="TASKRING_WEB_LISTEN")
@broker_option
@click.option(
    "--allow-portals",
    "allow_portals",
    envvar="TASKRING_ALLOW_PORTALS",
    metavar="HOST:PORT,...",
    help="The portal addresses the bridges may send to (`taskring up` sets the ones it "
    "starts). '*' uses any address heartbeats name: that trusts every broker login. "
    "Unset: the bridges use no portal.",
)
@click.option(
    "--allow-origins",
    "allow_origins",
    envvar="TASKRING_ALLOW_ORIGINS",
    metavar="ORIGIN,...",
    help="Origins besides this server's own that may open WS /ws/client, like "
    "https://tasks.example.com ('*': any).",
)
@click.option(
    "--max-websockets",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_SOCKETS,
    show_default=True,
    envvar="TASKRING_MAX_WEBSOCKETS",
    help="Open WebSockets at most; more are closed with code 1013.",
)
def command(
    web_id: str,
    listen: tuple[str, int],
    broker: BrokerAddresses,
    allow_portals: str | None,
    allow_origins: str | None,
    max_websockets: int,
) -> None:
    """Run the web process: health, readiness, cluster view and metrics over HTTP."""
    host, port = listen
    try:
        allowed = PortalAllowList.parse(allow_portals)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-portals") from exc
    try:
        origins = parse_origins(allow_origins)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow-origins") from exc
    edge = EdgeSettings(allowed, origins, max_websockets)
    sys.exit(asyncio.run(run_web(web_id, host, port, broker, edge)))
