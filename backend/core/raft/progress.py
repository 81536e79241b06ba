"""The leader's view of each follower: how far its log matches, and how to send it more.

Each follower's `next` and `match` index (the paper's Figure 2) and, following
etcd's raft, its flow-control state: PROBE, REPLICATE or SNAPSHOT. What each
state sends and when it changes: docs/architecture.md, "Raft". Responses may
arrive late, twice or out of order; every transition ignores a response that
tells the leader nothing new.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum


class ProgressState(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last index of each AppendEntries sent and not yet acknowledged, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._indexes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._indexes)

    def full(self) -> bool:
        return len(self._indexes) >= self.capacity

    def add(self, index: int) -> None:
        self._indexes.append(index)

    def free_le(self, index: int) -> None:
        while self._indexes and self._indexes[0] <= index:
            self._indexes.popleft()

    def free_first_one(self) -> None:
        if self._indexes:
            self._indexes.popleft()

    def reset(self) -> None:
        self._indexes.clear()


class Progress:
    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.probe_sent = False
        self.snapshot_ticks = 0
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        return (
            f"Progress({self.state} match={self.match} next={self.next} "
            f"inflight={len(self.inflights)} active={self.recent_active})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        # after a snapshot the follower holds at least the snapshot's entries
        floor = self.pending_snapshot if self.state is ProgressState.SNAPSHOT else 0
        self._reset_state(ProgressState.PROBE)
        self.next = max(self.match, floor) + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def snapshot_failed(self) -> None:
        """The snapshot was not acknowledged in time: probe again from what is known."""
        self.pending_snapshot = 0
        self.become_probe()

    def maybe_update(self, index: int) -> bool:
        """A success response for `index`; False if it is old news."""
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        return True

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """A rejection of the append after `rejected`; False if it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        # a probe has exactly one append in flight, after next - 1; anything else is stale
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_sent: int | None) -> None:
        if self.state is ProgressState.REPLICATE:
            if last_sent is not None:
                self.next = last_sent + 1
                self.inflights.add(last_sent)
        else:
            self.probe_sent = True
