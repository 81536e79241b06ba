"""Positions on the 64-bit Chord ring and the interval arithmetic every ring rule is written in.

A position is a plain int in [0, 2**64). Intervals run clockwise and wrap around zero.
An interval whose two ends are equal follows Chord's convention for a one-position
ring: the open interval (a, a) is every position but a, the half-open (a, a] is the
whole ring, so a lone position owns every key.

A key's owner is the first position at or after it, wrapping around (the
"successor" of the key; docs/protocol.md, Trace).
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Final, TypeGuard

RING_BITS: Final = 64
RING_SIZE: Final = 1 << RING_BITS
MASK: Final = RING_SIZE - 1


def distance(a: int, b: int) -> int:
    """How far b lies clockwise from a."""
    return (b - a) & MASK


def between(x: int, a: int, b: int) -> bool:
    """x in the open interval (a, b)."""
    if a == b:
        return x != a
    return 0 < ((x - a) & MASK) < ((b - a) & MASK)


def between_right(x: int, a: int, b: int) -> bool:
    """x in the half-open interval (a, b]: the arc a position b owns when a precedes it."""
    if a == b:
        return True
    return 0 < ((x - a) & MASK) <= ((b - a) & MASK)


def finger_start(n: int, i: int) -> int:
    """Where finger i of position n starts looking: n + 2**i on the ring."""
    return (n + (1 << i)) & MASK


def is_position(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < RING_SIZE


def vnode_position(host_id: str, index: int) -> int:
    """The ring position of virtual node `index` of a cache node: SHA-256 of "<id>#<index>"."""
    digest = hashlib.sha256(f"{host_id}#{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def format_position(position: int) -> str:
    return f"{position:016x}"


def owner_index(key: int, sorted_positions: Sequence[int]) -> int:
    """Index of the owner of `key` among sorted positions: the first at or after it, wrapping."""
    i = bisect_left(sorted_positions, key)
    return i if i < len(sorted_positions) else 0


def successor_list_length(positions: int) -> int:
    """The default successor-list length r for a ring of about this many positions:
    2·log2 N, and at least 3, so the ring survives r - 1 consecutive failures."""
    return max(3, 2 * math.ceil(math.log2(max(positions, 2))))
