"""How a cache node holds the keys it owns: one interface, one implementation per mode.

The cache core (cache_core.py) routes requests to their owner and tracks the
ring; everything that depends on where keys live goes through `KeyHolding`:
applying a request, answering a scan, what a change of ownership does to the
keys, ticks and flushes, and the mode's part of the status. `MemoryKeys` keeps
keys in memory only and moves them with ownership (key_moves.py keeps the
books); `ReplicatedKeys` keeps them in replica groups under claims and leases
(durable_keys.py), memory being their cache. Both are pure: times are the
caller's readings, messages to send are returned (replica.core.Send), and later
answers wait in `finished`. The rules: docs/architecture.md, "The ring without
replica groups" and "Leases".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from backend.core import topics
from backend.core.chord import ChordNode, between_right, owner_index
from backend.core.drops import Drops
from backend.core.errors import BAD_REQUEST
from backend.core.model.kv import KeyValueState, record_to_wire
from backend.core.replica import wire as group_wire
from backend.core.replica.core import Send
from backend.core.replica.state_machine import apply_op, op_error, outcome_of
from backend.core.ring import wire
from backend.core.ring.durable_keys import DurableKeys
from backend.core.ring.jobs import Finished, Job
from backend.core.ring.key_moves import KeyMoves, import_keys

log = logging.getLogger(__name__)

SWEEP_BATCH = 512  # keys routed away per sweep
HANDOVER_BATCH = 256  # keys per direct handover message
HANDOVER_TOKEN = "h"  # a lookup token: "h" + handover id (a request's starts with "r")


@dataclass(frozen=True, slots=True)
class Lookup:
    """A Chord lookup for the core to start: `payload` goes to whoever owns `key`."""

    key: int
    token: str
    payload: dict[str, Any]


class KeyHolding(Protocol):
    """What a cache node does with its keys, whichever way it holds them."""

    durable: bool  # announced, so that portals know what a repeated write may do
    # Keys came in since the core last looked: `arrived` for its parked requests,
    # `imported` for its sweep; the core clears each once it has looked.
    arrived: bool
    imported: bool

    @property
    def moving(self) -> int:
        """Keys handed to another node and not yet acknowledged."""

    @property
    def handovers_pending(self) -> int:
        """Handovers sent and not yet acknowledged."""

    def subscriptions(self) -> list[str]:
        """Topics beyond the ring's whose messages go to `receive`."""

    def status(self) -> dict[str, Any]:
        """The mode's fields of the heartbeat's "ring" map."""

    def takes(self, kind: object) -> bool:
        """Whether a message of type `kind` on the host topic is for `receive`."""

    def receive(self, message: dict[str, Any], now: float) -> list[Send]: ...

    def tick(self, now: float) -> list[Send]: ...

    def flush(self, now: float) -> list[Send]:
        """Send what the messages since the last flush left to send."""

    def take_finished(self) -> list[Finished]:
        """Answers ready since the last call, in order."""

    # ---- serving ------------------------------------------------------------------

    def must_wait(self, cid: int, position: int, now: float) -> bool:
        """Whether a request for `cid`, owned at `position`, waits for its key to arrive."""

    def submit(self, cid: int, job: Job) -> Finished | None:
        """Apply a request that reached this node as the key's owner: its answer now, or
        None when it comes later through `take_finished`."""

    def scan(
        self, job: Job, after: int, limit: int, serves: Callable[[int], bool], now: float
    ) -> list[Send]:
        """A scan request (`job.context` is the message): its reply, or what asks for it."""

    # ---- ownership changes --------------------------------------------------------

    def position_unsure(self, position: int, now: float) -> None:
        """`position` serves whatever reaches it while it learns its predecessor."""

    def arc_gained(self, start: int, end: int, now: float) -> None:
        """A position here now owns (start, end]."""

    def arc_lost(self, start: int, end: int, to: str | None, now: float) -> list[Send]:
        """A position here lost (start, end] to cache node `to` (None: not another node's,
        or the ring moved on already)."""

    def sweep(self, owns: Callable[[int], bool], now: float) -> list[Lookup]:
        """Deal with the keys held here that no position here owns."""

    def handover(self, handover: wire.Handover, now: float) -> list[Send]:
        """A handover of keys to this node (its keys are checked as they are imported)."""

    def handover_acked(self, hid: str) -> None: ...

    def lookup_dropped(self, hid: str) -> None:
        """Chord gave up on the lookup carrying handover `hid`."""

    def expire(self, now: float, suspects: Collection[str]) -> None:
        """Time passed; `suspects` are the cache nodes that stopped answering."""

    def leave(self, members: Sequence[ChordNode], now: float) -> list[Send]:
        """The node leaves the ring after this; `members` are its positions in it."""


# ---- memory only ----------------------------------------------------------------------


class MemoryKeys:
    """Keys in this node's memory only, handed between nodes as ownership moves."""

    durable = False

    def __init__(
        self,
        host_id: str,
        incarnation: str,
        state: KeyValueState,
        cold_wait: float,
        drops: Drops,
    ) -> None:
        self.host_id = host_id
        self.state = state
        self.drops = drops
        self.moves = KeyMoves(f"{host_id}/{incarnation}", cold_wait)
        self.arrived = False
        self.imported = False
        self.leaving = False

    def subscriptions(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {"durable": False, "groups": []}

    @property
    def moving(self) -> int:
        return len(self.moves.moving)

    @property
    def handovers_pending(self) -> int:
        return len(self.moves.inflight)

    def takes(self, kind: object) -> bool:
        return False

    def receive(self, message: dict[str, Any], now: float) -> list[Send]:
        return []

    def tick(self, now: float) -> list[Send]:
        return []

    def flush(self, now: float) -> list[Send]:
        return []

    def take_finished(self) -> list[Finished]:
        return []

    # ---- serving ------------------------------------------------------------------

    def must_wait(self, cid: int, position: int, now: float) -> bool:
        return self.moves.must_wait(cid in self.state.keys, position, cid, now)

    def submit(self, cid: int, job: Job) -> Finished | None:
        try:
            # Checked whole first: an operation that fails halfway must not change memory.
            group_wire.check_write_or_read_op(job.op)
        except ValueError as exc:
            result = op_error(BAD_REQUEST, str(exc))
        else:
            result = apply_op(self.state, job.op)
        if outcome_of(result) == BAD_REQUEST:
            self._drop_if_empty(cid)
        return Finished(job, result, "")

    def _drop_if_empty(self, cid: int) -> None:
        """A malformed create may leave an empty key behind; it must not count as held."""
        key = self.state.keys.get(cid)
        if key is not None and key.record is None and not key.tasks:
            del self.state.keys[cid]

    def scan(
        self, job: Job, after: int, limit: int, serves: Callable[[int], bool], now: float
    ) -> list[Send]:
        scan: wire.Scan = job.context
        records = self.state.clients_after(after, len(self.state.keys))
        clients = [record_to_wire(r) for r in records if serves(r.cid)][:limit]
        result = {"clients": clients, "host": self.host_id}
        reply = wire.Reply.success(scan.corr, result, [self.host_id], self.host_id, 0)
        return [Send(scan.reply_to, reply.to_wire())]

    # ---- ownership changes --------------------------------------------------------

    def position_unsure(self, position: int, now: float) -> None:
        self.moves.predecessor_unknown(position, now)

    def arc_gained(self, start: int, end: int, now: float) -> None:
        self.moves.gained(start, end, now)

    def arc_lost(self, start: int, end: int, to: str | None, now: float) -> list[Send]:
        if to is None:
            return []  # the sweep decides
        cids = [c for c in self.state.keys if c == end or between_right(c, start, end)]
        return self._hand_directly(to, cids, [[start, end]], now)

    def sweep(self, owns: Callable[[int], bool], now: float) -> list[Lookup]:
        """Route keys no position here owns to their owner."""
        strays = [c for c in self.state.keys if not owns(c)][:SWEEP_BATCH]
        if strays:
            log.info("cache node %s routing %d keys to their owners", self.host_id, len(strays))
        lookups = []
        for cid in strays:
            hid, keys = self.moves.send_away(self.state, [cid], "", now)
            payload = wire.Handover(self.host_id, keys, hid).to_wire()
            lookups.append(Lookup(cid, HANDOVER_TOKEN + hid, payload))
        return lookups

    def handover(self, handover: wire.Handover, now: float) -> list[Send]:
        hid, sender = handover.id, handover.from_host
        if sender == self.host_id:
            self.moves.acknowledged(hid)  # our own stray came back to us: we own it
            self._import(handover.keys)
            return []
        if self.moves.first_time(hid):
            self._import(handover.keys)
            self.moves.covered(handover.arcs, now)
        return [Send(topics.ring_host(sender), wire.HandoverAck(self.host_id, hid).to_wire())]

    def handover_acked(self, hid: str) -> None:
        self.moves.acknowledged(hid)

    def lookup_dropped(self, hid: str) -> None:
        self._take_back(hid, "its lookup was dropped")

    def expire(self, now: float, suspects: Collection[str]) -> None:
        self.moves.expire(now)
        for hid in self.moves.overdue(now):
            self._take_back(hid, "no acknowledgement came")
        for hid in self.moves.sent_to(suspects):
            self._take_back(hid, "that cache node stopped answering")

    def leave(self, members: Sequence[ChordNode], now: float) -> list[Send]:
        sends = self._hand_everything_over(members, now) if members else []
        self.leaving = True
        return sends

    # ---- moving keys --------------------------------------------------------------

    def _hand_directly(
        self, to: str, cids: list[int], arcs: list[list[int]], now: float
    ) -> list[Send]:
        """Hand `cids` to cache node `to` in batches; the arcs ride on the last batch, so
        the receiver stops waiting for them only once every key has arrived."""
        batches = [cids[i : i + HANDOVER_BATCH] for i in range(0, len(cids), HANDOVER_BATCH)]
        sends = []
        for i, batch in enumerate(batches or [[]]):
            hid, keys = self.moves.send_away(self.state, batch, to, now)
            last = i == max(len(batches), 1) - 1
            message = wire.Handover(self.host_id, keys, hid, arcs if last else []).to_wire()
            sends.append(Send(topics.ring_host(to), message))
        return sends

    def _hand_everything_over(self, members: Sequence[ChordNode], now: float) -> list[Send]:
        """Before leaving: each key to the first position after its owner that lives on
        another cache node (its owner once this node is gone)."""
        members = sorted(members, key=lambda n: n.pos)
        positions = [n.pos for n in members]
        target: dict[int, str | None] = {
            n.pos: next((p.host for p in n.successors if p.host != self.host_id), None)
            for n in members
        }
        cids: dict[str, list[int]] = {}
        arcs: dict[str, list[list[int]]] = {}
        for n in members:
            to = target[n.pos]
            if to is not None and n.predecessor is not None:
                arcs.setdefault(to, []).append([n.predecessor.pos, n.pos])
        lost = 0
        for cid in list(self.state.keys):
            to = target[positions[owner_index(cid, positions)]]
            if to is None:
                lost += 1
            else:
                cids.setdefault(to, []).append(cid)
        sends = []
        for to in sorted(set(cids) | set(arcs)):
            sends.extend(self._hand_directly(to, cids.get(to, []), arcs.get(to, []), now))
        handed = sum(len(c) for c in cids.values())
        log.info("cache node %s handing %d keys to %d others", self.host_id, handed, len(cids))
        if lost:
            log.warning("no other cache node to hand %d keys to; they are lost", lost)
        return sends

    def _take_back(self, hid: str, why: str) -> None:
        flight = self.moves.acknowledged(hid)
        if flight is None:
            return
        if self.leaving:
            log.warning("lost %d keys handed to %s: %s", len(flight.cids), flight.to or "?", why)
            return
        log.info("taking back %d keys handed to %s: %s", len(flight.cids), flight.to or "?", why)
        self._import(flight.keys)

    def _import(self, items: list[Any]) -> None:
        import_keys(self.state, items, self.drops)
        self.imported = self.arrived = True


# ---- in replica groups ----------------------------------------------------------------


class ReplicatedKeys:
    """Keys owned under leases in replica groups, with memory as their cache."""

    durable = True

    def __init__(
        self,
        host_id: str,
        incarnation: str,
        groups: dict[str, list[int]],
        state: KeyValueState,
        now: float,
        drops: Drops,
    ) -> None:
        self.host_id = host_id
        self.durable_keys = DurableKeys(host_id, incarnation, groups, state, now, drops)
        # Nothing arrives by handover: a key comes with its claim, and the key's queue
        # in DurableKeys waits for it.
        self.arrived = False
        self.imported = False

    @property
    def moving(self) -> int:
        return 0

    @property
    def handovers_pending(self) -> int:
        return 0

    def subscriptions(self) -> list[str]:
        return [self.durable_keys.reply_filter]

    def status(self) -> dict[str, Any]:
        return {"durable": True, "groups": self.durable_keys.groups}

    def takes(self, kind: object) -> bool:
        return kind in (group_wire.PROPOSED, group_wire.READ_RESULT)

    def receive(self, message: dict[str, Any], now: float) -> list[Send]:
        return self.durable_keys.receive(message, now)

    def tick(self, now: float) -> list[Send]:
        return self.durable_keys.tick(now)

    def flush(self, now: float) -> list[Send]:
        return self.durable_keys.flush(now)

    def take_finished(self) -> list[Finished]:
        finished, self.durable_keys.finished = self.durable_keys.finished, []
        return finished

    # ---- serving ------------------------------------------------------------------

    def must_wait(self, cid: int, position: int, now: float) -> bool:
        return False  # the key's group has it: the claim fetches it

    def submit(self, cid: int, job: Job) -> Finished | None:
        self.durable_keys.submit(cid, job)
        return None

    def scan(
        self, job: Job, after: int, limit: int, serves: Callable[[int], bool], now: float
    ) -> list[Send]:
        # every group, not memory: the groups hold every key, this node only some
        return self.durable_keys.scan(job, after, limit, now)

    # ---- ownership changes --------------------------------------------------------

    def position_unsure(self, position: int, now: float) -> None:
        pass  # the claim is what waits for a key, not the arc

    def arc_gained(self, start: int, end: int, now: float) -> None:
        pass

    def arc_lost(self, start: int, end: int, to: str | None, now: float) -> list[Send]:
        return []  # the new owner claims the keys; the sweep drops them here

    def sweep(self, owns: Callable[[int], bool], now: float) -> list[Lookup]:
        """Keys this node no longer owns leave memory (their group keeps them, and their
        next owner claims them)."""
        strays = [c for c in self.durable_keys.keys if not owns(c)]
        dropped = sum(self.durable_keys.forget(cid) for cid in strays)
        if dropped:
            log.info("cache node %s dropped %d keys it no longer owns", self.host_id, dropped)
        return []

    def handover(self, handover: wire.Handover, now: float) -> list[Send]:
        """Only a memory-only node hands keys over; memory here holds only claimed keys,
        so the keys are not taken, and the handover is acknowledged so its sender stops
        waiting."""
        sender = handover.from_host
        if sender == self.host_id:
            return []
        ack = wire.HandoverAck(self.host_id, handover.id)
        return [Send(topics.ring_host(sender), ack.to_wire())]

    def handover_acked(self, hid: str) -> None:
        pass

    def lookup_dropped(self, hid: str) -> None:
        pass

    def expire(self, now: float, suspects: Collection[str]) -> None:
        pass  # DurableKeys expires its queues on its tick

    def leave(self, members: Sequence[ChordNode], now: float) -> list[Send]:
        self.durable_keys.abandon_queued("the cache node is leaving the ring")
        return []
