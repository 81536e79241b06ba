"""The finger table of one position: entry i points at the owner of position + 2**i.

Sixty-four entries, but a ring of N positions has only about log2 N distinct
fingers: the low entries all point at the successor, and neighbouring entries
share an owner. Repair therefore looks up one distinct finger at a time and
fills every later entry the answer also covers (the paper's fix_fingers with
its usual shortcut). Fingers only speed routing up; correctness rests on the
successor lists.
"""

from __future__ import annotations

from collections.abc import Callable

from backend.core.chord.ids import MASK, RING_BITS, between, distance, finger_start
from backend.core.chord.messages import Peer


class FingerTable:
    __slots__ = ("entries", "next", "pos")

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.entries: list[Peer | None] = [None] * RING_BITS
        self.next = 0  # the entry the next repair looks up

    def clear(self) -> None:
        self.entries = [None] * RING_BITS
        self.next = 0

    def fill_from_successor(self, successor: Peer) -> int:
        """Point every entry the successor covers at it; return the first entry it does not."""
        i = self.next
        span = distance(self.pos, successor.pos) or (MASK + 1)
        while i < RING_BITS and (1 << i) <= span:
            self.entries[i] = successor
            i += 1
        return i

    def learn(self, i: int, owner: Peer) -> None:
        """Entry i's start is owned by `owner`: so is every later start up to it."""
        start = finger_start(self.pos, i)
        reach = distance(start, owner.pos)
        j = i
        while j < RING_BITS and distance(start, finger_start(self.pos, j)) <= reach:
            self.entries[j] = owner
            j += 1
        self.next = j % RING_BITS

    def forget(self, dead: Callable[[Peer], bool]) -> None:
        entries = self.entries
        for i, peer in enumerate(entries):
            if peer is not None and dead(peer):
                entries[i] = None

    def closest_preceding(self, key: int, usable: Callable[[Peer], bool]) -> Peer | None:
        """The finger closest before `key` (in (pos, key)) that `usable` accepts."""
        pos = self.pos
        d = distance(pos, key) or (MASK + 1)
        entries = self.entries
        for i in range((d - 1).bit_length() - 1, -1, -1):
            peer = entries[i]
            if peer is not None and between(peer.pos, pos, key) and usable(peer):
                return peer
        return None

    def distinct(self) -> list[Peer]:
        seen: list[Peer] = []
        for peer in self.entries:
            if peer is not None and (not seen or seen[-1] != peer):
                seen.append(peer)
        return seen
