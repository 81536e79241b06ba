"""Hybrid logical clocks: versions that follow causality and break ties by node id.

A version is `(wall_ms, counter, node)`; tuples compare in that order, so two
replicas that saw the same writes pick the same winner, whatever the order in
which the writes arrived.
"""

from __future__ import annotations

from collections.abc import Callable

Version = tuple[int, int, str]
ZERO: Version = (0, 0, "")


class HybridClock:
    def __init__(self, node: str, wall_ms: Callable[[], int]) -> None:
        self.node = node
        self.wall_ms = wall_ms
        self.last: Version = ZERO

    def now(self) -> Version:
        """A version greater than every version this clock has issued or observed."""
        wall = self.wall_ms()
        last_wall, last_counter, _ = self.last
        if wall > last_wall:
            self.last = (wall, 0, self.node)
        else:
            self.last = (last_wall, last_counter + 1, self.node)
        return self.last

    def observe(self, seen: Version) -> None:
        """Move past a version received from another node, so later writes order after it."""
        if seen[:2] > self.last[:2]:
            self.last = (seen[0], seen[1], self.node)


def as_version(value: object) -> Version:
    """Decode a version from the wire (msgpack turns tuples into lists)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"not a version: {value!r}")
    wall, counter, node = value
    if not isinstance(wall, int) or not isinstance(counter, int) or not isinstance(node, str):
        raise ValueError(f"not a version: {value!r}")
    return (wall, counter, node)
