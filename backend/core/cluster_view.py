"""What the cluster looks like, pieced together from heartbeats.

`ClusterView` is a pure core: the web process and `taskring status` feed it
every heartbeat with its arrival time on their own clock, and ask it, at a time
they pass in, which components are alive, which portals users can reach, what
stands in the way of a write committing, and each component's metrics. A
component is alive while its last heartbeat is at most STALE_INTERVALS of its
own announced intervals old. Senders are read from the topic, not the body
(SECURITY.md, "Heartbeats are not believed"); the ring has converged when every
live member position's first successor is the next one around (`unconverged`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from backend.core.metrics import LATENCY_BUCKETS

STALE_INTERVALS = 3.0
# Components silent this long are dropped entirely, so ids that come and go
# (restarts under new names) do not pile up for the life of the process.
FORGET_AFTER = 600.0
MAX_INTERVAL = 3600.0
# /readyz lists this many unconverged ring positions at most (16 nodes have 128).
MAX_RING_REASONS = 8
MAX_REFUSED = 256  # refused subscriptions a heartbeat may list

CLIENT_PORTAL = "client-portal"
ADMIN_PORTAL = "admin-portal"
PORTAL_KINDS = (CLIENT_PORTAL, ADMIN_PORTAL)
PORTAL_NAMES = {CLIENT_PORTAL: "client portal", ADMIN_PORTAL: "admin portal"}


CACHE_NODE = "cache-node"
REPLICA = "replica"
WEB = "web"
KNOWN_KINDS = frozenset({CLIENT_PORTAL, ADMIN_PORTAL, CACHE_NODE, REPLICA, WEB})
RING_BITS = 64

_POSITION = re.compile(r"[0-9a-f]{16}")
HEARTBEAT_TOPIC_PREFIX = "taskring/v1/heartbeat/"
# A portal address is what a TCP connect takes and nothing more: a DNS name or IPv4
# address, or a bracketed IPv6 address, then a port. No scheme, path, user or spaces.
_HOST_PORT = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})", re.ASCII
)


class HeartbeatError(ValueError):
    """A heartbeat message is missing a field or has one of the wrong type."""


@dataclass(frozen=True)
class OpLatency:
    """One op's latency histogram as a heartbeat carries it: a count per bucket, +Inf last."""

    op: str
    counts: tuple[int, ...]
    total_seconds: float

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus-style buckets: (upper bound, requests at or below it), ending at +Inf."""
        return cumulative_buckets(self.counts)


@dataclass(frozen=True)
class Metrics:
    requests: tuple[tuple[str, str, int], ...] = ()  # (op, outcome, count)
    latency: tuple[OpLatency, ...] = ()
    dropped: tuple[tuple[str, str, int], ...] = ()  # (message, reason, count); drops.py

    @property
    def served(self) -> int:
        return sum(count for _, _, count in self.requests)


@dataclass(frozen=True)
class Heartbeat:
    """One parsed heartbeat (the fields of heartbeat_message in backend/adapters/heartbeats.py)."""

    id: str
    kind: str
    address: str
    pid: int
    ready: bool
    problem: str | None
    started: float
    sent: float
    interval: float
    metrics: Metrics
    ring: dict[str, Any] | None = None  # a cache node's ring (docs/architecture.md, Heartbeats)
    raft: dict[str, Any] | None = None  # a replica's Raft state (docs/architecture.md, Heartbeats)
    # CPU seconds the process has used so far; None from senders older than the field
    cpu_seconds: float | None = None
    # Topic filters the broker refused the sender's subscriptions to; () from older senders
    refused: tuple[str, ...] = ()

    @property
    def uptime(self) -> float:
        # Both times come from the sender's clock, so clock skew between hosts does not matter.
        return max(0.0, self.sent - self.started)

    @property
    def usable(self) -> bool:
        """Ready by its own account, and hearing every topic it subscribed to."""
        return self.ready and not self.refused

    @property
    def trouble(self) -> str | None:
        """Why it is not usable (None when it is, or does not say)."""
        if self.refused:
            return f"connected but {_refusal(self.refused)}"
        return self.problem

    def why_not_ready(self) -> str:
        """One line for a person, starting with the component's id."""
        if self.refused:
            return f"{self.id} is connected but {_refusal(self.refused)}"
        return f"{self.id}: {self.problem or 'not ready'}"


def _refusal(refused: tuple[str, ...]) -> str:
    return f"the broker refused its subscription to {', '.join(refused)}"


@dataclass(frozen=True)
class Component:
    """The latest heartbeat of one component and when it arrived (receiver's clock)."""

    heartbeat: Heartbeat
    received: float

    @property
    def id(self) -> str:
        return self.heartbeat.id

    @property
    def kind(self) -> str:
        return self.heartbeat.kind

    def age(self, now: float) -> float:
        return max(0.0, now - self.received)

    def alive(self, now: float) -> bool:
        return self.age(now) <= STALE_INTERVALS * self.heartbeat.interval

    def ready(self, now: float) -> bool:
        return self.alive(now) and self.heartbeat.usable

    def summary(self, now: float) -> dict[str, Any]:
        """A JSON-ready description, as /api/components and `taskring status --json` show it."""
        beat = self.heartbeat
        alive = self.alive(now)
        return {
            "id": beat.id,
            "kind": beat.kind,
            "address": beat.address,
            "pid": beat.pid,
            "alive": alive,
            "ready": alive and beat.usable,
            "problem": beat.trouble if alive else f"no heartbeat for {self.age(now):.1f}s",
            "uptime": round(beat.uptime, 3),  # seconds
            "uptime_seconds": round(beat.uptime, 3),  # the same, under its older name
            "last_heard_seconds": round(self.age(now), 3),
            "requests": beat.metrics.served,
        }


class ClusterView:
    """The latest heartbeat of every component, and the answers derived from them."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str], Component] = {}

    def observe(self, topic: str, message: Any, received: float) -> Component:
        """Record a heartbeat that arrived on `topic` at `received`; raise HeartbeatError if
        the topic is not a known kind's heartbeat topic, the message is malformed, or its
        body names another component than its topic."""
        kind, component_id = parse_heartbeat_topic(topic)
        if not isinstance(message, dict):
            raise HeartbeatError("a heartbeat must be a map")
        heartbeat = parse_heartbeat(message)
        if (heartbeat.kind, heartbeat.id) != (kind, component_id):
            raise HeartbeatError(
                f"heartbeat body says {heartbeat.kind} {heartbeat.id!r} but it came on the"
                f" topic of {kind} {component_id!r}"
            )
        if kind in PORTAL_KINDS:
            check_portal_address(heartbeat.address)
        component = Component(heartbeat, received)
        self._components[(kind, component_id)] = component
        return component

    def forget_silent(self, now: float) -> None:
        """Drop components not heard from for FORGET_AFTER seconds."""
        for key, component in list(self._components.items()):
            if component.age(now) > FORGET_AFTER:
                del self._components[key]

    def components(self, now: float) -> list[Component]:
        """Every known component (alive or not), by kind then id."""
        self.forget_silent(now)
        return sorted(self._components.values(), key=lambda c: (c.kind, c.id))

    def alive(self, now: float, kind: str | None = None) -> list[Component]:
        return [
            c for c in self.components(now) if c.alive(now) and (kind is None or c.kind == kind)
        ]

    def portals(self, now: float) -> list[dict[str, str]]:
        """The live portals, as /api/cluster lists them."""
        return [
            {"id": c.id, "kind": c.kind, "address": c.heartbeat.address}
            for c in self.alive(now)
            if c.kind in PORTAL_KINDS
        ]

    def cache_nodes(self, now: float) -> list[dict[str, Any]]:
        """The live cache nodes and their view of the ring, as /api/cluster lists them."""
        nodes = [ring_summary(c.id, c.heartbeat.ring or {}) for c in self.alive(now, CACHE_NODE)]
        return sorted(nodes, key=lambda node: node["id"])

    def ready_portals(self, now: float, kind: str) -> list[Component]:
        """Live portals of `kind` that say they can take a write, the longest-running first."""
        ready = [c for c in self.alive(now, kind) if c.heartbeat.usable]
        return sorted(ready, key=lambda c: (-c.heartbeat.uptime, c.id))

    def missing(self, now: float) -> list[str]:
        """Why a write cannot commit end to end, for a person; empty when it can."""
        reasons: list[str] = []
        for kind in PORTAL_KINDS:
            reasons.extend(self._missing_for(kind, now))
        deaf = [reason for reason in self.refusals(now) if reason not in reasons]
        return reasons + deaf + self._missing_groups(now) + self.unconverged(now)

    def refusals(self, now: float) -> list[str]:
        """Each live component the broker refused a subscription, whatever its kind: it is
        connected, but deaf to what it needs to hear."""
        return [c.heartbeat.why_not_ready() for c in self.alive(now) if c.heartbeat.refused]

    def unconverged(self, now: float) -> list[str]:
        """Why the ring has not converged, for a person; empty when it has.

        Over the live cache nodes that say they are ring members, every position's
        first successor must be the next of their positions around the ring. Right
        after a join, a leave or a crash some node still points past or short of a
        position, and requests routed through it may take a detour or wait."""
        ring = sorted(self._live_positions(now), key=lambda entry: entry[:2])
        reasons = []
        for index, (position, node, successor) in enumerate(ring):
            want_position, want_node, _ = ring[(index + 1) % len(ring)]
            if successor == (want_node, want_position):
                continue
            has = "no successor" if successor is None else f"successor {_peer_text(*successor)}"
            reasons.append(
                f"ring not converged: {_peer_text(node, position)} has {has},"
                f" expected {_peer_text(want_node, want_position)}"
            )
        if len(reasons) > MAX_RING_REASONS:
            more = len(reasons) - MAX_RING_REASONS
            reasons = [*reasons[:MAX_RING_REASONS], f"ring not converged: {more} more positions"]
        return reasons

    def _live_positions(self, now: float) -> list[tuple[int, str, tuple[str, int] | None]]:
        """(position, node id, its first successor as (node, position) or None) of every
        position of every live member cache node; malformed entries are left out."""
        entries = []
        for node in self.alive(now, CACHE_NODE):
            ring = node.heartbeat.ring or {}
            if ring.get("member") is not True:
                continue
            for position, successors in _positions_and_successors(ring):
                first = _peer_position(successors[0]) if successors else None
                entries.append((position, node.id, first))
        return entries

    def _missing_groups(self, now: float) -> list[str]:
        """A durable ring commits a write only through its key's group, so every group
        must have a live leader. The groups expected are those the live cache nodes name
        and every group a replica has ever been heard from (until forgotten): a group
        whose replicas all fell silent, or have not started yet, is not ready. When the
        cache nodes say they are durable but no group is known at all, say so."""
        led = {group["id"]: group["leader"] for group in self.replica_groups(now)}
        expected = self.expected_groups(now)
        reasons = []
        for group in expected:
            if led.get(group):
                continue
            if group in led:
                reasons.append(f"replica group {group} has no leader")
            else:
                reasons.append(f"replica group {group} has no live replica")
        if not expected and self.durable_ring(now):
            reasons.append(
                "the cache nodes keep their keys in replica groups, and no replica"
                " has been heard from yet"
            )
        return reasons

    def expected_groups(self, now: float) -> list[str]:
        """The replica groups a write may need: named by a live cache node's heartbeat
        (ring "groups"), or heard from in any replica heartbeat still remembered."""
        names = {
            str((c.heartbeat.raft or {}).get("group", "?"))
            for c in self.components(now)
            if c.kind == REPLICA
        }
        for node in self.alive(now, CACHE_NODE):
            listed = (node.heartbeat.ring or {}).get("groups")
            if isinstance(listed, list):
                names.update(str(group) for group in listed)
        return sorted(names, key=lambda name: (len(name), name))  # g2 before g10

    def durable_ring(self, now: float) -> bool:
        """Whether a live cache node says its keys live in replica groups."""
        return any(
            (c.heartbeat.ring or {}).get("durable") is True for c in self.alive(now, CACHE_NODE)
        )

    def replica_groups(self, now: float) -> list[dict[str, Any]]:
        """Each replica group heard from, its live members and its leader (/api/cluster)."""
        groups: dict[str, list[Component]] = {}
        for c in self.alive(now, REPLICA):
            raft = c.heartbeat.raft or {}
            groups.setdefault(str(raft.get("group", "?")), []).append(c)
        return [_group_summary(gid, members) for gid, members in sorted(groups.items())]

    def _missing_for(self, kind: str, now: float) -> list[str]:
        live = self.alive(now, kind)
        if any(c.heartbeat.usable for c in live):
            return []
        if live:
            return [c.heartbeat.why_not_ready() for c in live]
        reason = f"no {PORTAL_NAMES[kind]} is up"
        silent = [c for c in self.components(now) if c.kind == kind]
        if silent:
            last = min(silent, key=lambda c: c.age(now))
            reason += f" (last heard from {last.id} {last.age(now):.1f}s ago)"
        return [reason]

    def request_totals(self, now: float) -> dict[tuple[str, str, str], int]:
        """Requests served by live components, summed by (kind, op, outcome)."""
        totals: dict[tuple[str, str, str], int] = {}
        for component in self.alive(now):
            for op, outcome, count in component.heartbeat.metrics.requests:
                key = (component.kind, op, outcome)
                totals[key] = totals.get(key, 0) + count
        return totals


def cumulative_buckets(counts: tuple[int, ...] | list[int]) -> list[tuple[str, int]]:
    """Turn per-bucket counts (+Inf last) into Prometheus's cumulative (le, count) pairs."""
    bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]
    pairs: list[tuple[str, int]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        pairs.append((bound, running))
    return pairs


def _group_summary(group_id: str, members: list[Component]) -> dict[str, Any]:
    """A group in the shape of /api/cluster: the leader is the member of the highest term
    that says it leads (an old leader cut off from the others may still think it does)."""
    rows, leaders = [], []
    for c in sorted(members, key=lambda c: c.id):
        raft = c.heartbeat.raft or {}
        role = str(raft.get("role", "unknown"))
        term = raft.get("term", 0) if isinstance(raft.get("term"), int) else 0
        rows.append(
            {
                "id": c.id,
                "role": role,
                "term": term,
                "commit_index": raft.get("commit_index", 0),
                "applied_index": raft.get("applied_index", 0),
            }
        )
        if role == "leader":
            leaders.append((term, c.id))
    return {"id": group_id, "members": rows, "leader": max(leaders)[1] if leaders else ""}


def ring_summary(node_id: str, ring: dict[str, Any]) -> dict[str, Any]:
    """A cache node's heartbeat `ring` map in the shape of /api/cluster (all ids strings).

    The heartbeat names peers as [host, position]; the API lists successors by
    cache node id and fingers as {start, node, position} of the lowest position.
    """
    # The map comes off the bus: whatever is not of the layout above is left out.
    listed = ring.get("positions")
    positions = [p for p in listed if _position(p) is not None] if isinstance(listed, list) else []
    fingers = []
    if positions:
        base = int(positions[0], 16)
        for peer in _peers(ring.get("fingers")):
            start = _finger_start(base, int(peer[1], 16))
            fingers.append({"start": f"{start:016x}", "node": peer[0], "position": peer[1]})
    return {
        "id": node_id,
        "positions": positions,
        "successors": [p[0] for p in _peers(ring.get("successors"))],
        "fingers": fingers,
        "keys": ring["keys"] if _is_count(ring.get("keys")) else 0,
        "member": bool(ring.get("member", False)),
    }


def _positions_and_successors(ring: dict[str, Any]) -> list[tuple[int, list[Any]]]:
    """Each position of a heartbeat's ring map with its successor list. The full layout
    is in "vnodes"; older or partial maps have only the first position's "successors"."""
    vnodes = ring.get("vnodes")
    if isinstance(vnodes, list) and vnodes:
        pairs = [
            (vnode.get("position"), vnode.get("successors"))
            for vnode in vnodes
            if isinstance(vnode, dict)
        ]
    else:
        positions = ring.get("positions")
        first = positions[:1] if isinstance(positions, list) else []
        pairs = [(position, ring.get("successors")) for position in first]
    parsed = []
    for text, successors in pairs:
        position = _position(text)
        if position is not None:
            parsed.append((position, successors if isinstance(successors, list) else []))
    return parsed


def _position(value: Any) -> int | None:
    """A ring position from its 16-hex-digit text, or None if it is not one."""
    if isinstance(value, str) and _POSITION.fullmatch(value):
        return int(value, 16)
    return None


def _peers(value: Any) -> list[Any]:
    """The well-formed peers ([node id, 16-hex position]) of a heartbeat's list."""
    if not isinstance(value, list | tuple):
        return []
    return [peer for peer in value if _peer_position(peer) is not None]


def _peer_position(value: Any) -> tuple[str, int] | None:
    if not _is_peer(value):
        return None
    position = _position(value[1])
    return None if position is None else (value[0], position)


def _peer_text(node: str, position: int) -> str:
    return f"{node} at {position:016x}"


def _is_peer(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], str)
    )


def _finger_start(base: int, target: int) -> int:
    """The largest finger start base + 2^k that the target position still succeeds."""
    distance = (target - base) % (1 << RING_BITS)
    k = max(distance.bit_length() - 1, 0)
    return (base + (1 << k)) % (1 << RING_BITS)


# ---- parsing ------------------------------------------------------------------------


def parse_heartbeat_topic(topic: str) -> tuple[str, str]:
    """(kind, id) of `taskring/v1/heartbeat/<kind>/<id>`; HeartbeatError for anything else."""
    if not isinstance(topic, str) or not topic.startswith(HEARTBEAT_TOPIC_PREFIX):
        raise HeartbeatError(f"{topic!r} is not a heartbeat topic")
    levels = topic[len(HEARTBEAT_TOPIC_PREFIX) :].split("/")
    if len(levels) != 2 or not levels[1]:
        raise HeartbeatError(f"heartbeat topic {topic!r} is not .../heartbeat/<kind>/<id>")
    kind, component_id = levels
    if kind not in KNOWN_KINDS:
        raise HeartbeatError(f"heartbeat topic {topic!r} names an unknown kind {kind!r}")
    return kind, component_id


def check_portal_address(address: str) -> None:
    """Raise HeartbeatError unless `address` is a plain TCP host:port (port 1-65535)."""
    match = _HOST_PORT.fullmatch(address)
    if not match or not 0 < int(match.group(1)) <= 65535:
        raise HeartbeatError(f"portal address {address[:100]!r} is not a plain host:port")


def parse_heartbeat(message: dict[str, Any]) -> Heartbeat:
    """Check every field of a heartbeat message; raise HeartbeatError naming the first bad one."""
    interval = _number(message, "interval")
    if not 0 < interval <= MAX_INTERVAL:
        raise HeartbeatError(f"heartbeat field 'interval' out of range: {interval}")
    problem = message.get("problem")
    if problem is not None and not isinstance(problem, str):
        raise HeartbeatError("heartbeat field 'problem' must be text or null")
    return Heartbeat(
        id=_text(message, "id", nonempty=True),
        kind=_text(message, "kind", nonempty=True),
        address=_text(message, "address"),
        pid=_integer(message, "pid"),
        ready=_boolean(message, "ready"),
        problem=problem,
        started=_number(message, "started"),
        sent=_number(message, "sent"),
        interval=interval,
        metrics=parse_metrics(message.get("metrics")),
        ring=_ring(message),
        raft=_map_field(message, "raft"),
        cpu_seconds=_cpu_seconds(message),
        refused=_refused(message),
    )


def _refused(message: dict[str, Any]) -> tuple[str, ...]:
    """The optional `refused`: absent or null in older heartbeats, else a list of topic
    filters (text), at most MAX_REFUSED of them."""
    value = message.get("refused")
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(f, str) for f in value):
        raise HeartbeatError("heartbeat field 'refused' must be a list of topic filters")
    if len(value) > MAX_REFUSED:
        raise HeartbeatError(f"heartbeat field 'refused' lists over {MAX_REFUSED} filters")
    return tuple(value)


def _cpu_seconds(message: dict[str, Any]) -> float | None:
    """The optional `cpu_seconds`: absent or null in older heartbeats, else a finite
    number of seconds, zero or more."""
    value = message.get("cpu_seconds")
    if value is None:
        return None
    if not _is_finite(value) or value < 0:
        raise HeartbeatError("heartbeat field 'cpu_seconds' must be a finite number, 0 or more")
    return float(value)


def _ring(message: dict[str, Any]) -> dict[str, Any] | None:
    return _map_field(message, "ring")


def _map_field(message: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise HeartbeatError(f"heartbeat field {name!r} must be a map")
    return value


def parse_metrics(wire: Any) -> Metrics:
    """Parse RequestMetrics.to_wire(); raise HeartbeatError on any malformed entry."""
    if wire is None:
        return Metrics()
    if not isinstance(wire, dict):
        raise HeartbeatError("heartbeat field 'metrics' must be a map")
    requests = tuple(_request_entry(entry) for entry in _list(wire, "requests"))
    latency = tuple(_latency_entry(entry) for entry in _list(wire, "latency"))
    return Metrics(requests, latency, _dropped(wire.get("dropped")))


def _dropped(value: Any) -> tuple[tuple[str, str, int], ...]:
    """Dropped-message counts; absent in older heartbeats, and a malformed entry is
    skipped rather than costing the whole heartbeat."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(
        (entry[0], entry[1], entry[2])
        for entry in value
        if isinstance(entry, list | tuple)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and _is_count(entry[2])
    )


def _request_entry(entry: Any) -> tuple[str, str, int]:
    if not (
        isinstance(entry, list | tuple)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and _is_count(entry[2])
    ):
        raise HeartbeatError(f"metrics 'requests' entry {entry!r} is not [op, outcome, count]")
    return entry[0], entry[1], entry[2]


def _latency_entry(entry: Any) -> OpLatency:
    expected = len(LATENCY_BUCKETS) + 1
    if not (
        isinstance(entry, list | tuple)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], list | tuple)
        and len(entry[1]) == expected
        and all(_is_count(count) for count in entry[1])
        and _is_finite(entry[2])
    ):
        raise HeartbeatError(
            f"metrics 'latency' entry {entry!r} is not [op, {expected} bucket counts, sum]"
        )
    return OpLatency(entry[0], tuple(entry[1]), float(entry[2]))


def _list(wire: dict[str, Any], field: str) -> list[Any]:
    value = wire.get(field, [])
    if not isinstance(value, list | tuple):
        raise HeartbeatError(f"metrics field {field!r} must be a list")
    return list(value)


def _text(message: dict[str, Any], field: str, nonempty: bool = False) -> str:
    value = message.get(field)
    if not isinstance(value, str) or (nonempty and not value):
        raise HeartbeatError(f"heartbeat field {field!r} must be {'non-empty ' * nonempty}text")
    return value


def _integer(message: dict[str, Any], field: str) -> int:
    value = message.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HeartbeatError(f"heartbeat field {field!r} must be an integer")
    return value


def _boolean(message: dict[str, Any], field: str) -> bool:
    value = message.get(field)
    if not isinstance(value, bool):
        raise HeartbeatError(f"heartbeat field {field!r} must be true or false")
    return value


def _number(message: dict[str, Any], field: str) -> float:
    value = message.get(field)
    if not _is_finite(value):
        raise HeartbeatError(f"heartbeat field {field!r} must be a finite number")
    return float(value)


def _is_finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
