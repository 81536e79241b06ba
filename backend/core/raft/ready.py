"""What a RaftNode hands its application after each step: the I/O to do, in order.

The application takes a `Ready`, then, in this order (as with etcd's raft):

1. persist: save `snapshot` (if any), append `entries` (replacing any stored
   entries from `entries[0].index` on), save `hard_state` (if any); fsync if
   `must_sync`. Nothing below may happen before this is durable: the messages
   promise it (a vote, an acknowledged entry).
2. send `messages`.
3. apply: restore the state machine from `snapshot` (if any), then apply
   `committed_entries` in order (skipping configuration entries and empty
   no-ops); answer `read_states` once applied through their index.
4. call `node.advance(ready)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.core.raft.messages import Message
from backend.core.raft.state import Entry, HardState, Snapshot, SoftState


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read asked with `ctx` may be served once the state machine has applied `index`."""

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool
