"""Timing and size settings of the Chord core, in one place.

Times are in the caller's clock units (seconds for the cache node, virtual
seconds in the simulator); the core only compares them. The adapter calls
`tick(now)` well more often than the shortest interval here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.chord.ids import successor_list_length


@dataclass(frozen=True, slots=True)
class ChordConfig:
    successors: int = 10  # r; 2·log2 of the default ring (4 cache nodes x 8 positions)
    stabilize_interval: float = 0.5
    fix_fingers_interval: float = 0.5
    check_predecessor_interval: float = 1.0
    peer_timeout: float = 2.0  # a cache node silent this long while we wait on it is dead
    hop_timeout: float = 0.5  # resend an unacknowledged lookup hop after this long
    hop_attempts: int = 3  # then route around that cache node
    join_attempts: int = 3
    max_hops: int = 96
    route_wait: float = 5.0  # hold a lookup with no usable route this long before dropping it
    cross_check_interval: float = 10.0  # ask another cache node who follows each position
    suspect_ttl: float = 60.0  # forget a dead cache node after this long

    def __post_init__(self) -> None:
        if self.successors < 1:
            raise ValueError("the successor list needs at least one entry")
        intervals = ("stabilize_interval", "fix_fingers_interval", "check_predecessor_interval")
        for name in (*intervals, "cross_check_interval", "route_wait", "suspect_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.peer_timeout <= 0 or self.hop_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.hop_attempts < 1 or self.join_attempts < 1 or self.max_hops < 1:
            raise ValueError("attempt and hop limits must be at least 1")

    @classmethod
    def for_ring(cls, positions: int, **overrides: Any) -> ChordConfig:
        """Settings whose successor list suits a ring of about `positions` positions."""
        return cls(successors=successor_list_length(positions), **overrides)
