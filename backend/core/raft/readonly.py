"""Linearizable reads without log entries: the ReadIndex protocol.

Implements §6.4 of the Raft dissertation (and §8 of the paper: "a leader
must check whether it has been deposed before processing a read-only
request"). The leader notes its commit index as the read index, then
confirms it is still leader by hearing back from a majority on a round of
heartbeats sent after the read arrived; once the application has applied
through the read index, the read sees every write acknowledged before it.

Each read gets a sequence number; heartbeats carry the newest one and their
responses echo it. A response echoing `seq` confirms every read numbered at
most `seq`, since that heartbeat left after those reads arrived. Many reads
waiting at once share one heartbeat round.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from backend.core.raft.membership import Config


@dataclass(frozen=True, slots=True)
class PendingRead:
    seq: int
    index: int
    ctx: bytes
    requester: int


class ReadIndexQueue:
    def __init__(self) -> None:
        self.seq = 0  # never reused, so a late echo can never confirm a newer read
        self._pending: deque[PendingRead] = deque()
        self._acked: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ctx: bytes, index: int, requester: int) -> None:
        self.seq += 1
        self._pending.append(PendingRead(self.seq, index, ctx, requester))

    def ack(self, node: int, seq: int) -> None:
        if seq > self._acked.get(node, 0):
            self._acked[node] = seq

    def release(self, config: Config, leader: int) -> list[PendingRead]:
        """Pop every read a majority of voters has confirmed, oldest first."""
        released: list[PendingRead] = []
        while self._pending:
            seq = self._pending[0].seq
            confirmed = {node for node, acked in self._acked.items() if acked >= seq}
            if not config.has_quorum(confirmed | {leader}):
                break
            released.append(self._pending.popleft())
        return released

    def clear(self) -> None:
        self._pending.clear()
        self._acked.clear()
