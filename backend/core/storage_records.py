"""The records of the write-ahead log, and how replaying them rebuilds a node's state.

Pure: bytes in, values out. Three kinds of record, each a msgpack list:

    [1, index, term, data, config]   a log entry; it replaces any entry at that
                                     index or later (a follower's truncation, §5.3)
    [2, term, vote, commit]          the hard state, latest wins
    [3, index, term]                 the log was replaced by the snapshot at
                                     (index, term) received from the leader (§7)

`replay(snapshot, payloads)` folds them, oldest first, over the newest
snapshot on disk into the `PersistentState` a RaftNode starts from. The
simulator uses the same functions, so what it checks is what the disk does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from backend.core.codec import pack_value
from backend.core.raft import Entry, HardState, PersistentState, Ready, Snapshot
from backend.core.raft.wire import want_int, want_list
from backend.core.storage_errors import StorageCorruptError

ENTRY = 1
HARD_STATE = 2
RESTORE = 3


def _pack(record: list[Any]) -> bytes:
    return pack_value(record)


def encode_entry(entry: Entry) -> bytes:
    return _pack([ENTRY, *entry.to_wire()])


def encode_hard_state(hard_state: HardState) -> bytes:
    return _pack([HARD_STATE, *hard_state.to_wire()])


def encode_restore(snapshot: Snapshot) -> bytes:
    return _pack([RESTORE, snapshot.index, snapshot.term])


def records_for_ready(ready: Ready) -> list[bytes]:
    """What one Ready adds to the log, in the order it must reach the disk."""
    records = [] if ready.snapshot is None else [encode_restore(ready.snapshot)]
    records.extend(encode_entry(entry) for entry in ready.entries)
    if ready.hard_state is not None:
        records.append(encode_hard_state(ready.hard_state))
    return records


def decode(payload: bytes) -> Entry | HardState | tuple[int, int]:
    """One record: an Entry, a HardState, or (index, term) of a restore. ValueError if bad."""
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"undecodable log record: {exc}") from exc
    kind, *fields = want_list(record, "log record")
    if kind == ENTRY:
        return Entry.from_wire(fields)
    if kind == HARD_STATE:
        return HardState.from_wire(fields)
    if kind == RESTORE:
        index, term = want_list(fields, "restore record", length=2)
        return want_int(index, "restore index"), want_int(term, "restore term")
    raise ValueError(f"unknown log record kind {kind!r}")


class _Replay:
    """The log as the records describe it, entries after the snapshot index `base`."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot
        self.base = snapshot.index if snapshot else 0
        self.entries: list[Entry] = []
        self.hard_state = HardState()
        self.term_at_base: int | None = None  # the term logged at `base`, if seen

    def entry(self, entry: Entry) -> None:
        if entry.index <= self.base:
            # covered by the snapshot; but writing here truncated everything after it
            self.entries.clear()
            self.term_at_base = entry.term if entry.index == self.base else None
            return
        last = self.base + len(self.entries)
        if entry.index > last + 1:
            raise StorageCorruptError(f"log entry {entry.index} follows entry {last}: a gap")
        del self.entries[entry.index - self.base - 1 :]
        self.entries.append(entry)

    def restore(self, index: int, term: int) -> None:
        if index > self.base:
            raise StorageCorruptError(
                f"the log was replaced by snapshot {index}, "
                f"but the newest readable snapshot is {self.base}"
            )
        self.entries.clear()
        self.term_at_base = term if index == self.base else None

    def result(self) -> PersistentState:
        if self.snapshot and self.term_at_base not in (None, self.snapshot.term):
            # the snapshot was saved but the restore record did not reach the disk:
            # the old entries after it belong to another history
            self.entries.clear()
        last = self.base + len(self.entries)
        hard = self.hard_state
        if hard.commit > last:
            raise StorageCorruptError(f"commit index {hard.commit} is past the last entry {last}")
        return PersistentState(hard, self.snapshot, tuple(self.entries))


def replay(snapshot: Snapshot | None, payloads: Iterable[bytes]) -> PersistentState:
    state = _Replay(snapshot)
    for position, payload in enumerate(payloads):
        try:
            record = decode(payload)
        except ValueError as exc:
            raise StorageCorruptError(f"log record {position}: {exc}") from exc
        if isinstance(record, Entry):
            state.entry(record)
        elif isinstance(record, HardState):
            state.hard_state = record
        else:
            state.restore(*record)
    return state.result()
