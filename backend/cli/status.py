"""`taskring status`: which components run, where, whether they are ready, and how data is stored.

It listens to the components' heartbeats on the MQTT broker for a moment
(`--wait` seconds), or, with `--web URL`, asks a running web process instead
(GET /api/cluster, /readyz and /api/components). It prints a table, or JSON
with `--json`.

Exit codes: 0 the view was printed (ready or not), 2 usage error, 3 the
broker or the web process could not be reached in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import click
import httpx
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from backend.adapters.broker_logins import STATUS_LOGIN, local_broker_url
from backend.adapters.bus import open_bus
from backend.adapters.settings import BrokerAddresses, ConfigError
from backend.adapters.settings import data_dir as config_data_dir
from backend.core import topics
from backend.core.cluster_view import ClusterView, HeartbeatError
from backend.processes.options import EXIT_UNREACHABLE, fail

DEFAULT_WAIT = 2.5
LOCAL_STORAGE = "every portal holds a full copy"
WIDE = 160

console = Console()


class Unreachable(Exception):
    """Neither the broker nor the web process answered in time."""


@dataclass
class Snapshot:
    """What `taskring status` found, whichever way it asked."""

    source: str
    components: list[dict[str, Any]]
    missing: list[str]
    cache_nodes: list[dict[str, Any]] = field(default_factory=list)
    replica_groups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def storage(self) -> dict[str, str]:
        if self.cache_nodes or self.replica_groups:
            return {
                "mode": "ring",
                "summary": f"{_count(len(self.cache_nodes), 'cache node')}, "
                f"{_count(len(self.replica_groups), 'replica group')}",
            }
        return {"mode": "local", "summary": LOCAL_STORAGE}

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ready": not self.missing,
            "missing": self.missing,
            "components": self.components,
            "storage": self.storage,
            "cache_nodes": self.cache_nodes,
            "replica_groups": self.replica_groups,
        }


# ---- asking the broker --------------------------------------------------------------


async def listen_to_heartbeats(address: BrokerAddresses, wait: float) -> Snapshot:
    """Connect within `wait` seconds, then collect heartbeats for `wait` seconds."""
    view = ClusterView()

    async def on_heartbeat(topic: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(HeartbeatError):  # a malformed one says nothing we could show
            view.observe(topic, message, time.monotonic())

    # Logged in, the broker takes the login as the client id anyway; anonymous, a
    # random one keeps two `taskring status` from disconnecting each other.
    client_id = address.first.username or f"taskring-status-{os.getpid()}-{secrets.token_hex(3)}"
    bus = open_bus(address, client_id)
    bus.subscribe(topics.HEARTBEATS, on_heartbeat)
    async with bus:
        if not await bus.wait_connected(wait):
            reason = f": {bus.last_error}" if bus.last_error else ""
            raise Unreachable(
                f"cannot reach the MQTT broker at {address.redacted()} within {wait:g}s{reason}"
            )
        # Heartbeats come once a second and are not retained: listening is the only way.
        await asyncio.sleep(wait)
    now = time.monotonic()
    return Snapshot(
        source=address.redacted(),
        components=[c.summary(now) for c in view.components(now)],
        missing=view.missing(now),
        cache_nodes=view.cache_nodes(now),
        replica_groups=view.replica_groups(now),
    )


# ---- asking the web process ---------------------------------------------------------


def ask_web(url: str, wait: float) -> Snapshot:
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, timeout=wait) as http:
            cluster = _get_json(http, "/api/cluster", (200,))
            readiness = _get_json(http, "/readyz", (200, 503))
            components = _get_json(http, "/api/components", (200, 404), list)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise Unreachable(f"cannot reach the web process at {base}: {exc}") from exc
    listed = components or [
        {"id": p["id"], "kind": p["kind"], "address": p["address"]}
        for p in cluster.get("portals", [])
    ]
    return Snapshot(
        source=base,
        components=listed,
        missing=list(readiness.get("missing", [])),
        cache_nodes=list(cluster.get("cache_nodes", [])),
        replica_groups=list(cluster.get("replica_groups", [])),
    )


def _get_json(http: httpx.Client, path: str, accepted: tuple[int, ...], shape: type = dict) -> Any:
    """The JSON body of GET `path`, which must be a `shape` (an object, or a list); an
    empty one for a 404 when that is accepted."""
    response = http.get(path)
    if response.status_code not in accepted:
        raise Unreachable(f"{http.base_url}{path} answered HTTP {response.status_code}")
    if response.status_code == 404:
        return shape()
    try:
        body = response.json()
    except ValueError as exc:
        raise Unreachable(f"{http.base_url}{path} did not answer JSON") from exc
    if not isinstance(body, shape):
        what = "a JSON object" if shape is dict else "a JSON list"
        raise Unreachable(f"{http.base_url}{path} did not answer {what}")
    return body


# ---- printing -----------------------------------------------------------------------


def print_snapshot(snapshot: Snapshot, wait: float, from_web: bool) -> None:
    heard = "as the web process sees it" if from_web else f"heard for {wait:g}s"
    if not console.is_terminal:
        console.width = max(console.width, WIDE)  # a pipe or a file: never cut a column short
    table = Table(
        title=f"Components ({heard} at {snapshot.source})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("kind", "id", "address", "pid", "state", "problem", "uptime", "requests"):
        table.add_column(
            column,
            justify="right" if column in ("pid", "requests") else "left",
            no_wrap=column != "problem",
        )
    for component in snapshot.components:
        table.add_row(*_row(component))
    if snapshot.components:
        console.print(table)
    else:
        console.print(f"No component was heard at {snapshot.source}.")
    if snapshot.missing:
        console.print("[bold red]Not ready[/]: a write cannot commit end to end:")
        for reason in snapshot.missing:
            console.print(f"  - {reason}", markup=False, highlight=False)
    else:
        console.print("[bold green]Ready[/]: a write can commit end to end.")
    storage = snapshot.storage
    console.print(f"Storage: {storage['mode']}: {storage['summary']}", markup=False)
    if snapshot.cache_nodes:
        print_ring(snapshot.cache_nodes)
    if snapshot.replica_groups:
        print_groups(snapshot.replica_groups)


RING_WIDTH = 64
MARKS = "abcdefghijklmnopqrstuvwxyz"


def ring_line(nodes: list[dict[str, Any]], width: int = RING_WIDTH) -> str:
    """The 64-bit ring unrolled onto `width` cells; each cell shows whose position falls in it."""
    cells = ["·"] * width
    for mark, node in zip(MARKS, nodes, strict=False):
        for position in node.get("positions", []):
            cell = int(position, 16) * width >> 64
            cells[cell] = mark if cells[cell] in ("·", mark) else "*"
    return "".join(cells)


def print_ring(nodes: list[dict[str, Any]]) -> None:
    """Draw the ring: where each cache node's positions sit, and what it holds."""
    total = sum(len(node.get("positions", [])) for node in nodes)
    console.print(f"\nRing: {total} positions on {len(nodes)} cache nodes (* = several nodes)")
    console.print(f"  0 |{ring_line(nodes)}| 2^64", markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("", "cache node", "positions", "keys", "successors", "fingers"):
        table.add_column(column, justify="right" if column in ("positions", "keys") else "left")
    for mark, node in zip(MARKS, nodes, strict=False):
        table.add_row(
            mark,
            node["id"],
            str(len(node.get("positions", []))),
            str(node.get("keys", 0)),
            _hosts(node.get("successors", [])),
            _hosts(node.get("fingers", [])),
        )
    console.print(table)


def print_groups(groups: list[dict[str, Any]]) -> None:
    """Each replica group's members: who leads, in which term, how far each has got."""
    console.print("\nReplica groups")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("group", "member", "role"):
        table.add_column(column)
    for column in ("term", "commit index", "applied index"):
        table.add_column(column, justify="right")
    for group in groups:
        leader = group.get("leader") or ""
        for member in group.get("members", []):
            role = _plain(member.get("role"))
            table.add_row(
                _plain(group.get("id")),
                _plain(member.get("id")),
                f"[bold]{role}[/]" if member.get("id") == leader else role,
                str(member.get("term", "")),
                str(member.get("commit_index", "")),
                str(member.get("applied_index", "")),
            )
        if not leader:
            table.add_row(_plain(group.get("id")), "", "[red]no leader[/]", "", "", "")
    console.print(table)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _hosts(entries: list[Any]) -> str:
    """The distinct cache nodes named by successor ids or {start, node, position} fingers."""
    hosts = [str(e.get("node", "?")) if isinstance(e, dict) else str(e) for e in entries]
    return ", ".join(dict.fromkeys(hosts)) or "-"


def _row(component: dict[str, Any]) -> list[str]:
    if "alive" not in component:
        state = "up"
    elif not component["alive"]:
        state = "[red]down[/]"
    elif component.get("ready"):
        state = "[green]up, ready[/]"
    else:
        state = "[yellow]up, not ready[/]"
    uptime = component.get("uptime_seconds")
    requests = component.get("requests")
    return [
        _plain(component.get("kind")),
        _plain(component.get("id")),
        _plain(component.get("address")),
        str(component.get("pid", "")),
        state,
        _plain(component.get("problem") or ""),
        format_duration(uptime) if isinstance(uptime, int | float) else "",
        str(requests) if requests is not None else "",
    ]


def _plain(value: Any) -> str:
    """Text from the network, escaped so rich does not read it as markup."""
    return escape(str(value if value is not None else ""))


def format_duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.1f}s"


@click.command("status")
@click.option(
    "--broker",
    envvar="TASKRING_BROKER",
    help="MQTT broker URL, or a comma-separated list of a clustered broker's nodes "
    "(default mqtt://127.0.0.1:1883).",
)
@click.option(
    "--web",
    envvar="TASKRING_WEB",
    help="Ask this web process (e.g. http://127.0.0.1:8000) instead of the broker.",
)
@click.option(
    "--data-dir",
    envvar="TASKRING_DATA_DIR",
    help="Where `taskring up` keeps the broker logins (default ./data).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, min_open=True, max=600),
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds to wait for the broker, then to listen to heartbeats.",
)
def status(
    broker: str | None, web: str | None, data_dir: str | None, as_json: bool, wait: float
) -> None:
    """Show the cluster: components, health, storage."""
    _quiet_libraries()
    try:
        if web:
            snapshot = ask_web(web, wait)
        else:
            snapshot = asyncio.run(listen_to_heartbeats(_broker(broker, data_dir), wait))
    except Unreachable as exc:
        fail(EXIT_UNREACHABLE, str(exc))
    if as_json:
        click.echo(json.dumps(snapshot.to_json(), indent=2))
    else:
        print_snapshot(snapshot, wait, from_web=bool(web))


def _broker(flag: str | None, data_dir: str | None) -> BrokerAddresses:
    """The broker, logged in as the read-only `status` when the data directory has its login."""
    try:
        address = BrokerAddresses.parse(
            local_broker_url(STATUS_LOGIN, flag, config_data_dir(data_dir))
        )
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from exc
    return address


def _quiet_libraries() -> None:
    """The bus logs every failed connection attempt and httpx every request; one error says it."""
    logging.getLogger("backend.adapters.bus.mqtt").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
