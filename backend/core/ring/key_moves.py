"""Keys on their way between cache nodes: the bookkeeping of both ends of a handover.

Sender: keys handed away leave the key-value state at once and wait here, under
the handover's id, for the acknowledgement, or are taken back at the deadline.
Receiver: a newly gained arc is "cold" until a handover covering it arrives, so
a request for a key not held waits instead of answering not_found; a key
already held is never overwritten. Pure: times are the caller's clock readings.
The rules: docs/architecture.md, "The ring without replica groups".
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from backend.core.chord import between_right
from backend.core.chord.ids import is_position
from backend.core.drops import Drops
from backend.core.model.kv import Key, KeyValueState, key_from_wire

log = logging.getLogger(__name__)

HANDOVER_ACK_WAIT = 5.0
COVER_TTL = 10.0  # a received handover's arcs count as complete this long
SEEN_LIMIT = 4_096  # handover ids remembered, to ignore a redelivered one


@dataclass(slots=True)
class InFlight:
    """Keys handed to `to` ("" when routed to whoever owns them) and not yet acknowledged."""

    to: str
    cids: list[int]
    keys: list[Any]
    deadline: float


@dataclass(slots=True)
class Arc:
    """The arc (start, end] until `until`."""

    start: int
    end: int
    until: float

    def holds(self, key: int, now: float) -> bool:
        return now < self.until and between_right(key, self.start, self.end)


class KeyMoves:
    def __init__(self, id_prefix: str, cold_wait: float) -> None:
        self.id_prefix = id_prefix
        self.cold_wait = cold_wait
        self.inflight: dict[str, InFlight] = {}
        self.moving: set[int] = set()  # the cids in flight
        self._cold: list[Arc] = []
        self._cold_positions: dict[int, float] = {}
        self._covered: list[Arc] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._counter = 0

    # ---- sending --------------------------------------------------------------------

    def send_away(
        self, state: KeyValueState, cids: list[int], to: str, now: float
    ) -> tuple[str, list[Any]]:
        """Take `cids` out of `state` into a new handover; its id and the keys' wire form."""
        self._counter += 1
        hid = f"{self.id_prefix}/{self._counter}"
        keys = state.export_keys(cids)
        for cid in cids:
            state.keys.pop(cid, None)
        self.moving.update(cids)
        self.inflight[hid] = InFlight(to, list(cids), keys, now + HANDOVER_ACK_WAIT)
        return hid, keys

    def acknowledged(self, hid: str) -> InFlight | None:
        """The handover arrived (or is given up): forget it; what it carried, if known."""
        flight = self.inflight.pop(hid, None)
        if flight is not None:
            self.moving.difference_update(flight.cids)
        return flight

    def overdue(self, now: float) -> list[str]:
        return [hid for hid, f in self.inflight.items() if f.deadline <= now]

    def sent_to(self, hosts: Collection[str]) -> list[str]:
        """Handovers sent directly to any of `hosts`."""
        return [hid for hid, f in self.inflight.items() if f.to in hosts]

    # ---- receiving ------------------------------------------------------------------

    def first_time(self, hid: str) -> bool:
        """Whether handover `hid` is new (it is remembered from now on)."""
        if hid in self._seen:
            return False
        self._seen[hid] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        return True

    def gained(self, start: int, end: int, now: float) -> None:
        """A position here now owns (start, end], which another may still hold keys of."""
        self._cold.append(Arc(start, end, now + self.cold_wait))

    def predecessor_unknown(self, position: int, now: float) -> None:
        """`position` serves whatever reaches it, so any key may be early for a while."""
        self._cold_positions[position] = now + self.cold_wait

    def covered(self, arcs: list[list[int]], now: float) -> None:
        self._covered.extend(Arc(a, b, now + COVER_TTL) for a, b in arcs)

    def must_wait(self, held: bool, position: int, key: int, now: float) -> bool:
        """Whether a request for `key` at `position` should wait for a handover."""
        if held:
            return False
        if key in self.moving:
            return True
        cold = self._cold_positions.get(position, 0.0) > now or any(
            a.holds(key, now) for a in self._cold
        )
        return cold and not any(a.holds(key, now) for a in self._covered)

    def expire(self, now: float) -> None:
        self._cold = [a for a in self._cold if a.until > now]
        self._covered = [a for a in self._covered if a.until > now]
        self._cold_positions = {p: t for p, t in self._cold_positions.items() if t > now}


def import_keys(state: KeyValueState, items: list[Any], drops: Drops) -> int:
    """Add handed-over keys that `state` does not hold; malformed ones are skipped (and
    counted in `drops`). Returns how many were added."""
    added = 0
    for item in items:
        try:
            cid, key = key_from_wire(item)
            if not isinstance(key, Key) or not is_position(cid):
                raise ValueError("not a key")
        except ValueError as exc:
            drops.bad("key in a handover", exc)
            continue
        if cid not in state.keys:
            state.keys[cid] = key
            added += 1
    return added
