"""One cache node of the ring, pure: Chord routing plus the keys this node holds.

`CacheNode` wraps a ChordHost (membership and routing) and a KeyHolding
(key_holding.py: MemoryKeys or ReplicatedKeys). It takes decoded messages and
ticks with the caller's clock reading and returns `Publish`es to send in order:

    node = CacheNode("cache-node-1", incarnation=<random text>, seed=<random int>,
                     bootstrap=True, now=t)
    publishes = node.receive(topic, message, now)   # per message on its host topic or announce
    publishes = node.tick(now)                      # every TICK_INTERVAL or so
    publishes = node.leave(now)                     # on SIGTERM; then wait for handovers_pending

Replies are remembered by correlation id, so a request is never applied twice;
`receive` is total (bad_request or dropped and counted, never raised). Formats:
wire.py. Rules: docs/architecture.md, "A write, end to end", "Leases" and "The
ring without replica groups".
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from backend.core import topics
from backend.core.chord import (
    MEMBER,
    ChordConfig,
    ChordHost,
    Dropped,
    Isolated,
    Joined,
    Output,
    Owned,
    RangeChanged,
    Send,
    between,
    decode,
    format_position,
    hosts_visited,
    owner_index,
)
from backend.core.chord.messages import MAX_TOKEN_CHARS, MESSAGE_TYPES
from backend.core.errors import BAD_REQUEST, UNAVAILABLE
from backend.core.metrics import RequestMetrics
from backend.core.model.kv import WRITE_OPS, KeyValueState
from backend.core.model.records import CLIENT_DELETED, TOKEN_ROTATED
from backend.core.replica.state_machine import OpResult, outcome_of
from backend.core.ring import wire
from backend.core.ring.jobs import Finished, Job
from backend.core.ring.key_holding import HANDOVER_TOKEN, KeyHolding, MemoryKeys, ReplicatedKeys

log = logging.getLogger(__name__)

TICK_INTERVAL = 0.1  # how often the node's process calls `tick`
ANNOUNCE_INTERVAL = 0.5
PEER_FRESH = 2.0  # a member announced this recently is a join contact
PEER_FORGET = 60.0
WAIT_LOG_INTERVAL = 5.0
COLD_WAIT = 2.0  # a newly gained arc waits this long for its keys
PARK_LIMIT = 8.0  # a parked request is answered `unavailable` after this long
SWEEP_INTERVAL = 1.0
FULL_SWEEP_INTERVAL = 10.0  # sweep even when nothing seems to have changed
REPLY_CACHE = 10_000

NOT_IN_RING = "not yet in the ring"
UNROUTABLE = "no route to the owner of this key; not applied, safe to retry"
MOVING = "the key is moving between cache nodes; not applied, safe to retry"


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    message: dict[str, Any]
    qos: int = topics.MESSAGE_QOS


@dataclass(slots=True)
class _PeerInfo:
    positions: list[int]
    member: bool
    incarnation: str
    heard: float


@dataclass(slots=True)
class _Parked:
    owned: Owned
    since: float


@dataclass(slots=True)
class _Waiting:
    """When this node started waiting to get into a ring, and when it last said so."""

    since: float
    logged: float = field(default=-1e18)


class _Lru:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        return self.items.get(key)

    def put(self, key: Any, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.limit:
            self.items.popitem(last=False)


class CacheNode:
    def __init__(
        self,
        host_id: str,
        *,
        incarnation: str,
        vnodes: int = 8,
        bootstrap: bool = False,
        join_wait: float = 2.0,
        cold_wait: float = COLD_WAIT,
        config: ChordConfig | None = None,
        now: float = 0.0,
        seed: int = 0,
        metrics: RequestMetrics | None = None,
        groups: dict[str, list[int]] | None = None,
    ) -> None:
        """`groups` (group id -> member ids) makes the node durable; None keeps keys in
        memory only. `seed` seeds the node's choices (which member to join through): the
        caller's, so that the core reads no entropy itself."""
        self.id = host_id
        self.incarnation = incarnation
        self.host = ChordHost(host_id, vnodes, config, incarnation)
        self.host.now = now
        self.state = KeyValueState()
        self.may_bootstrap = bootstrap
        self.join_wait = join_wait
        self.metrics = metrics or RequestMetrics()
        self.drops = self.metrics.drops
        if not self.drops.owner:
            self.drops.owner = f"cache node {host_id}"
        self.rng = random.Random(seed)
        self.now = now
        self.peers: dict[str, _PeerInfo] = {}
        self.leaving = False
        self._waiting: _Waiting | None = _Waiting(now)
        self._bootstrapping = False
        self._was_member = False
        self._replies = _Lru(REPLY_CACHE)
        self._parked: list[_Parked] = []
        self._due_announce = now
        self._due_sweep = now
        self._due_full_sweep = now
        self._swept_view: tuple[Any, ...] | None = None
        self.holding: KeyHolding = (
            ReplicatedKeys(host_id, incarnation, groups, self.state, now, self.drops)
            if groups
            else MemoryKeys(host_id, incarnation, self.state, cold_wait, self.drops)
        )
        self._in_flight: set[tuple[str, str]] = set()  # (reply_to, corr) being proposed

    # ---- queries --------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        """The topics whose messages go to `receive`."""
        return [topics.ring_host(self.id), topics.RING_ANNOUNCE, *self.holding.subscriptions()]

    @property
    def member(self) -> bool:
        return not self.leaving and bool(self.host.members())

    def readiness(self) -> str | None:
        return None if self.member else NOT_IN_RING

    @property
    def handovers_pending(self) -> int:
        """Handovers sent and not yet acknowledged."""
        return self.holding.handovers_pending

    def ring_status(self) -> dict[str, Any]:
        """The heartbeat's "ring" field (layout in docs/architecture.md, Heartbeats)."""
        vnodes = [_vnode_status(v) for v in self.host.describe()["vnodes"]]
        first = vnodes[0]
        return {
            "member": self.member,
            "positions": [v["position"] for v in vnodes],
            "predecessors": [v["predecessor"] for v in vnodes],
            "successors": first["successors"],
            "fingers": first["fingers"],
            "keys": len(self.state.keys),
            "moving": self.holding.moving,
            "vnodes": vnodes,
            **self.holding.status(),
        }

    # ---- inputs ---------------------------------------------------------------------

    def receive(self, topic: str, message: dict[str, Any], now: float) -> list[Publish]:
        """A message from the node's own host topic or the announcement topic."""
        self._clock(now)
        if topic == topics.RING_ANNOUNCE:
            if message.get("t") == wire.HOST_GONE:
                return self._on_host_gone(message)
            self._on_announce(message)
            return []
        kind = message.get("t")
        out: list[Publish] = []
        if self.holding.takes(kind):
            self._sends(self.holding.receive(message, now), out)
        elif kind == wire.BATCH:
            try:
                inner = wire.unbatch(message)
            except ValueError as exc:
                self.drops.bad("batch", exc)
                inner = []
            for item in inner:
                self._receive(item.get("t"), topic, item, out)
        else:
            self._receive(kind, topic, message, out)
        if self.holding.arrived and self._parked:
            self._release_parked(out)
        self._answer_finished(out)
        return out

    def flush(self, now: float) -> list[Publish]:
        """Propose what arrived since the last flush (durable mode: one message per
        group for all of it); call after a burst of `receive`s."""
        self._clock(now)
        out: list[Publish] = []
        self._sends(self.holding.flush(now), out)
        self._answer_finished(out)
        return out

    def _sends(self, sends: Iterable[Any], out: list[Publish]) -> None:
        out.extend(Publish(send.topic, send.message, send.qos) for send in sends)

    def _receive(self, kind: Any, topic: str, message: dict[str, Any], out: list[Publish]) -> None:
        if kind == wire.REQUEST:
            self._on_request(message, out)
        elif kind == wire.SCAN:
            self._on_scan(message, out)
        elif kind == wire.HANDOVER:
            self._on_handover(message, out)
        elif kind == wire.HANDOVER_ACK:
            self._on_handover_ack(message)
        elif isinstance(kind, str) and kind in MESSAGE_TYPES:
            try:
                chord_message = decode(message)
            except ValueError as exc:
                self.drops.bad(f"chord {kind}", exc)
                return
            self._process(self.host.handle(chord_message), out)
        else:
            self.drops.drop("message", "unknown type", f"{kind!r:.80} on {topic}")

    def tick(self, now: float) -> list[Publish]:
        self._clock(now)
        out: list[Publish] = []
        # The other members heard of let Chord find its way back and merge a split ring.
        self.host.set_known_hosts(self._contacts())
        self._process(self.host.tick(now), out)
        if not self.leaving and self.host.isolated:
            self._get_into_ring(out)
        if now >= self._due_announce:
            self._due_announce = now + ANNOUNCE_INTERVAL
            out.append(Publish(topics.RING_ANNOUNCE, self._announcement(), qos=0))
        self._expire()
        self._release_parked(out)
        if now >= self._due_sweep:
            self._due_sweep = now + SWEEP_INTERVAL
            self._sweep(out)
        self._sends(self.holding.tick(now), out)
        self._answer_finished(out)
        return out

    def leave(self, now: float) -> list[Publish]:
        """Let the keys go (handed to their next owners, or in durable mode what is not
        yet proposed answered unavailable), then leave the ring (Chord's goodbye)."""
        self._clock(now)
        out: list[Publish] = []
        if self.leaving:
            return out
        self._sends(self.holding.leave(self.host.members(), self.now), out)
        self.leaving = True
        self._process(self.host.leave(), out)
        for parked in self._parked:
            self._reply_unavailable(parked.owned.token, MOVING, parked.owned.hosts(), out)
        self._parked.clear()
        self._answer_finished(out)
        out.append(Publish(topics.RING_ANNOUNCE, self._announcement(), qos=0))
        return out

    # ---- membership -----------------------------------------------------------------

    def _clock(self, now: float) -> None:
        self.now = now
        self.host.now = now

    def _on_announce(self, message: dict[str, Any]) -> None:
        try:
            announce = wire.Announce.from_wire(message)
        except ValueError as exc:
            self.drops.bad("announcement", exc)
            return
        if announce.host == self.id:
            return
        self.peers[announce.host] = _PeerInfo(
            list(announce.positions), announce.member, announce.incarnation, self.now
        )

    def _on_host_gone(self, message: dict[str, Any]) -> list[Publish]:
        """A cache node's last will (or its goodbye): Chord stops waiting on it now. A
        will of an incarnation other than the latest announced is an earlier run's."""
        try:
            gone = wire.HostGone.from_wire(message)
        except ValueError as exc:
            self.drops.bad("host_gone", exc)
            return []
        host = gone.host
        peer = self.peers.get(host)
        if host == self.id or (peer is not None and peer.incarnation != gone.incarnation):
            return []
        if peer is not None:
            peer.member = False  # no join contact; its next announcement says otherwise
        out: list[Publish] = []
        self._process(self.host.peer_gone(host, self.now), out)
        self._answer_finished(out)
        return out

    def _announcement(self) -> dict[str, Any]:
        return wire.Announce(
            self.id, self.incarnation, self.member, self.host.positions, self.holding.durable
        ).to_wire()

    def _contacts(self) -> list[str]:
        fresh = self.now - PEER_FRESH
        return sorted(h for h, p in self.peers.items() if p.member and p.heard >= fresh)

    def _get_into_ring(self, out: list[Publish]) -> None:
        """Join through a member heard recently; with none, start a ring (if allowed,
        after join_wait) or keep waiting and say so now and then."""
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = _Waiting(self.now)
        contacts = self._contacts()
        if contacts:
            contact = self.rng.choice(contacts)
            log.info("cache node %s joining the ring through %s", self.id, contact)
            self._waiting = None
            self._process(self.host.join(contact), out)
        elif self.may_bootstrap and self.now - waiting.since >= self.join_wait:
            log.info("no cache node in a ring announced itself; %s starts a new ring", self.id)
            self._waiting = None
            self._bootstrapping = True
            try:
                self._process(self.host.bootstrap(), out)
            finally:
                self._bootstrapping = False
        elif self.now - waiting.logged >= WAIT_LOG_INTERVAL:
            waiting.logged = self.now
            log.info(
                "cache node %s waiting %.0fs for a ring member to announce itself",
                self.id,
                self.now - waiting.since,
            )

    # ---- what the Chord core hands back ---------------------------------------------

    def _process(self, outputs: Iterable[Output], out: list[Publish]) -> None:
        for item in outputs:
            if isinstance(item, Send):
                out.append(Publish(topics.ring_host(item.host), item.message.to_wire()))
            elif isinstance(item, Owned):
                self._on_owned(item, out)
            elif isinstance(item, Dropped):
                self._on_dropped(item, out)
            elif isinstance(item, RangeChanged):
                self._on_range_changed(item, out)
            elif isinstance(item, Joined):
                self._was_member = True
                if not self._bootstrapping:
                    self.holding.position_unsure(item.position, self.now)
            elif isinstance(item, Isolated) and self._was_member:
                log.warning("cache node %s lost touch with the ring; joining again", self.id)

    def _on_owned(self, owned: Owned, out: list[Publish]) -> None:
        payload = owned.payload
        kind = payload.get("t") if isinstance(payload, dict) else None
        if kind == wire.REQUEST:
            self._serve(owned, out)
        elif kind == wire.HANDOVER:
            self._on_handover(payload, out)
        else:
            self.drops.drop("lookup", "unknown payload", f"token {owned.token!r:.80}")

    def _on_dropped(self, dropped: Dropped, out: list[Publish]) -> None:
        token = dropped.token
        if token.startswith(HANDOVER_TOKEN):
            self.holding.lookup_dropped(token[len(HANDOVER_TOKEN) :])
        else:
            self._reply_unavailable(token, UNROUTABLE, hosts_visited(dropped.route), out)

    def _on_range_changed(self, change: RangeChanged, out: list[Publish]) -> None:
        pos, old, new = change.position, change.old_predecessor, change.new_predecessor
        if self._bootstrapping:
            return
        if new is None:
            self.holding.position_unsure(pos, self.now)
        elif old is None:
            self.holding.arc_gained(new, pos, self.now)
        elif between(new, old, pos):
            to = self._taker_of_lost_arc(pos, new)
            self._sends(self.holding.arc_lost(old, new, to, self.now), out)
        else:
            self.holding.arc_gained(new, old, self.now)
        self._due_sweep = min(self._due_sweep, self.now)

    # ---- serving requests -----------------------------------------------------------

    def _on_request(self, message: dict[str, Any], out: list[Publish]) -> None:
        try:
            request = wire.Request.from_wire(message)
            if not _reply_address(request.reply_to):
                raise ValueError("reply_to must be an MQTT topic name without wildcards")
            if request.op.get("cid") != request.key:
                raise ValueError("request key must equal the operation's cid")
            token = _request_token(request.reply_to, request.corr)
            if len(token) > MAX_TOKEN_CHARS:
                raise ValueError("corr and reply_to together are too long")
        except ValueError as exc:
            self._refuse(message, str(exc), out)
            return
        # The map as it came rides the lookup: the owner decodes it again.
        self._process(self.host.lookup(request.key, token, message), out)

    def _refuse(self, message: dict[str, Any], problem: str, out: list[Publish]) -> None:
        corr, reply_to = message.get("corr"), message.get("reply_to")
        if _usable_text(corr) and _reply_address(reply_to):
            out.append(Publish(reply_to, wire.Reply.failure(corr, BAD_REQUEST, problem).to_wire()))
        else:
            self.drops.drop(str(message.get("t"))[:40], "no usable reply address", problem)

    def _serve(self, owned: Owned, out: list[Publish], since: float | None = None) -> None:
        try:
            request = wire.Request.from_wire(owned.payload)
        except ValueError as exc:
            self.drops.bad("request at its owner", exc)
            return
        corr, reply_to = request.corr, request.reply_to
        cached = self._replies.get((reply_to, corr))
        if cached is not None:
            out.append(Publish(reply_to, cached))
            return
        if (reply_to, corr) in self._in_flight:
            return  # a repeat of a request still being proposed: it gets the one answer
        if since is None and self._must_wait(owned):
            self._parked.append(_Parked(owned, self.now))
            return
        started = since if since is not None else self.now
        job = Job((owned, request), request.op, started)
        answered = self.holding.submit(owned.key, job)
        if answered is None:
            self._in_flight.add((reply_to, corr))  # until its answer is taken from `finished`
        else:
            self._answer(owned, request, answered.result, answered.group, self.now - started, out)

    def _answer(
        self,
        owned: Owned,
        request: wire.Request,
        result: OpResult,
        group: str,
        waited: float,
        out: list[Publish],
    ) -> None:
        op, corr, reply_to = request.op, request.corr, request.reply_to
        route = owned.hosts()
        if result.get("ok"):
            answer = wire.Reply.success(corr, result["result"], route, self.id, owned.hops, group)
        else:
            error = result["error"]
            answer = wire.Reply.failure(
                corr, error["code"], error["message"], route, self.id, owned.hops, group
            )
        reply = answer.to_wire()
        self.metrics.observe(str(op.get("op")), outcome_of(result), max(0.0, waited))
        if op.get("op") in WRITE_OPS:  # a read may run twice; a write must not
            self._replies.put((reply_to, corr), reply)
        out.append(Publish(reply_to, reply))
        for event in result.get("events", ()):
            out.extend(event_publishes(self.id, event))

    def _answer_finished(self, out: list[Publish]) -> None:
        for item in self.holding.take_finished():
            self._answer_one(item, out)

    def _answer_one(self, item: Finished, out: list[Publish]) -> None:
        waited = self.now - item.job.since
        context = item.job.context
        if isinstance(context, tuple):
            owned, request = context
            self._in_flight.discard((request.reply_to, request.corr))
            self._answer(owned, request, item.result, item.group, waited, out)
            return
        scan: wire.Scan = context
        if item.result.get("ok"):
            result = {**item.result["result"], "host": self.id, "complete": True}
            reply = wire.Reply.success(scan.corr, result, [self.id], self.id, 0)
        else:
            error = item.result["error"]
            reply = wire.Reply.failure(
                scan.corr, error["code"], error["message"], [self.id], self.id
            )
        self.metrics.observe("scan", outcome_of(item.result), max(0.0, waited))
        out.append(Publish(scan.reply_to, reply.to_wire()))

    def _reply_unavailable(
        self, token: str, message: str, route: list[str], out: list[Publish]
    ) -> None:
        address = _parse_request_token(token)
        if address is None:
            self.drops.drop("lookup", "token without a reply address", f"{token!r:.80}")
            return
        reply_to, corr = address
        out.append(
            Publish(reply_to, wire.Reply.failure(corr, UNAVAILABLE, message, route).to_wire())
        )

    def _on_scan(self, message: dict[str, Any], out: list[Publish]) -> None:
        try:
            scan = wire.Scan.from_wire(message)
            if not _reply_address(scan.reply_to):
                raise ValueError("reply_to must be an MQTT topic name without wildcards")
        except ValueError as exc:
            self._refuse(message, str(exc), out)
            return
        job = Job(scan, {"op": "scan", "limit": scan.limit}, self.now)
        sends = self.holding.scan(job, scan.after, scan.limit, self._serves(), self.now)
        self._sends(sends, out)

    # ---- ownership ------------------------------------------------------------------

    def _ownership(self) -> Callable[[int], bool] | None:
        """Whether a position here owns a key, or None when this node cannot tell: it is
        not wholly in the ring or a position does not know its predecessor yet."""
        nodes = sorted(self.host.nodes, key=lambda n: n.pos)
        if self.leaving or any(n.state != MEMBER or n.predecessor is None for n in nodes):
            return None
        positions = [n.pos for n in nodes]
        host = self.host

        def owns(key: int) -> bool:
            # The first own position at or after the key owns it if any does; the slow
            # check covers predecessor pointers that are not yet consistent.
            if nodes[owner_index(key, positions)].owns(key):
                return True
            return host.owner_of(key) is not None

        return owns

    def _serves(self) -> Callable[[int], bool]:
        """Whether a held key counts as this node's for a scan."""
        if not self.member:
            return lambda _cid: False
        owns = self._ownership()
        return owns if owns is not None else lambda _cid: True

    # ---- cold arcs and parked requests ----------------------------------------------

    def _must_wait(self, owned: Owned) -> bool:
        """A key this position may own but whose handover has not arrived yet."""
        return self.holding.must_wait(owned.key, owned.position, self.now)

    def _release_parked(self, out: list[Publish]) -> None:
        if not self._parked:
            return
        parked, self._parked = self._parked, []
        self.holding.arrived = False
        owns = self._ownership()
        for item in parked:
            owned = item.owned
            if self.now - item.since >= PARK_LIMIT:
                self._reply_unavailable(owned.token, MOVING, owned.hosts(), out)
            elif self._must_wait(owned):
                self._parked.append(item)
            elif owns is not None and not owns(owned.key):
                # The arc moved on while the request waited: route it again from here.
                self._process(self.host.lookup(owned.key, owned.token, owned.payload), out)
            else:
                self._serve(owned, out, since=item.since)

    def _expire(self) -> None:
        self.holding.expire(self.now, self.host.liveness.suspects)
        forget = self.now - PEER_FORGET
        self.peers = {h: p for h, p in self.peers.items() if p.heard >= forget}

    # ---- keys changing hands --------------------------------------------------------

    def _taker_of_lost_arc(self, pos: int, new: int) -> str | None:
        """The cache node that position `pos`'s new predecessor `new` lives on, if it is
        still that and lives on another node (else the sweep decides)."""
        node = self.host.node_at(pos)
        pred = None if node is None else node.predecessor
        if pred is None or pred.pos != new or pred.host == self.id:
            return None
        return pred.host

    def _sweep(self, out: list[Publish]) -> None:
        """Deal with keys no position here owns, when the ring view or the keys changed
        (or now and then regardless)."""
        owns = self._ownership()
        if owns is None:
            return
        view = tuple((n.pos, n.predecessor) for n in self.host.nodes)
        if (
            view == self._swept_view
            and not self.holding.imported
            and self.now < self._due_full_sweep
        ):
            return
        self._swept_view, self.holding.imported = view, False
        self._due_full_sweep = self.now + FULL_SWEEP_INTERVAL
        for lookup in self.holding.sweep(owns, self.now):
            self._process(self.host.lookup(lookup.key, lookup.token, lookup.payload), out)

    def _on_handover(self, message: dict[str, Any], out: list[Publish]) -> None:
        try:
            handover = wire.Handover.from_wire(message)
        except ValueError as exc:
            self.drops.bad("handover", exc)
            return
        self._sends(self.holding.handover(handover, self.now), out)

    def _on_handover_ack(self, message: dict[str, Any]) -> None:
        try:
            ack = wire.HandoverAck.from_wire(message)
        except ValueError as exc:
            self.drops.bad("handover_ack", exc)
            return
        self.holding.handover_acked(ack.id)


# ---- helpers ------------------------------------------------------------------------


def _request_token(reply_to: str, corr: str) -> str:
    """The reply address and correlation id, in the Chord lookup's token."""
    return f"r{len(reply_to)}:{reply_to}{corr}"


def _parse_request_token(token: str) -> tuple[str, str] | None:
    if not token.startswith("r"):
        return None
    length, colon, rest = token[1:].partition(":")
    if not colon or not length.isdigit() or int(length) > len(rest):
        return None
    n = int(length)
    return rest[:n], rest[n:]


_BATCHED_TOPICS = (topics.ring_host(""), topics.ring_reply(""), topics.ring_events(""))


def coalesce(publishes: list[Publish]) -> list[Publish]:
    """The same messages, with every cache node's or portal's share sent as one batch
    (wire.BATCH) per topic, in order: one MQTT message instead of many."""
    by_topic: dict[str, list[Publish]] = {}
    for item in publishes:
        by_topic.setdefault(item.topic, []).append(item)
    out: list[Publish] = []
    for topic, items in by_topic.items():
        if len(items) == 1 or not topic.startswith(_BATCHED_TOPICS):
            out.extend(items)  # each with its own QoS
            continue
        qos = max(i.qos for i in items)
        batches = wire.batched({topic: [item.message for item in items]})
        out.extend(Publish(topic, message, qos) for topic, message in batches)
    return out


def event_publishes(host: str, event: dict[str, Any]) -> list[Publish]:
    """A change event goes to the events topic of the cache node that applied it, for
    watchers; a token rotation too, in order with the others, so that portals end the
    watches granted to the old token before any later event reaches them. A rotation or
    a deletion also goes to every portal, since they cache authentications."""
    kind = event.get("event")
    out = [Publish(topics.ring_events(host), event)]
    if kind in (TOKEN_ROTATED, CLIENT_DELETED):
        out.append(Publish(topics.RING_CLIENT_CHANGES, event))
    return out


def _usable_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= 512


def _reply_address(value: object) -> TypeGuard[str]:
    """A topic a reply can be published to: MQTT forbids wildcards and NUL in one."""
    return isinstance(value, str) and _usable_text(value) and not any(c in value for c in "+#\0")


def _hex_peer(pair: list[Any] | None) -> list[str] | None:
    """[position, host] from ChordHost.describe() as [host, "%016x"]."""
    return None if pair is None else [pair[1], format_position(pair[0])]


def _vnode_status(vnode: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": format_position(vnode["position"]),
        "state": vnode["state"],
        "predecessor": _hex_peer(vnode["predecessor"]),
        "successors": [_hex_peer(p) for p in vnode["successors"]],
        "fingers": [_hex_peer(p) for p in vnode["fingers"]],
    }
