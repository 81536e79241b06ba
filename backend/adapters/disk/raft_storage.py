"""A Raft node's disk: the write-ahead log and the snapshot files, behind one object.

    storage = DurableRaftStorage(data_dir)
    state = storage.state if not storage.state.is_empty else storage.bootstrap([1, 2, 3])
    storage.save(ready)                 # snapshot, entries, hard state; one fsync for all
    storage.save_snapshot(snapshot)     # and drop the log segments it covers
    storage.write_snapshot(snapshot)    # in a forked child: the file only (fsync, rename)
    storage.snapshot_written(index)     # then in the parent: prune, drop covered segments
    storage.load_snapshot(index)        # the bytes again, for a lagging follower

`write()` appends without syncing and `sync()` makes it durable (group commit).
Faults: a write refused for want of space (`durable_io.is_disk_full`) leaves
the log as it was, so the same Ready may be saved again once there is space; an
fsync failure raises `SyncFailed`, after which nothing unsynced may be trusted
(the replica exits and recovers from what is on disk).
Layout and the ordering rules that keep recovery whole: docs/architecture.md,
Snapshots; formats in wal.py and snapshot.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from backend.adapters.disk.durable_io import is_disk_full
from backend.adapters.disk.snapshot import SnapshotStore
from backend.adapters.disk.wal import DEFAULT_SEGMENT_BYTES, WriteAheadLog
from backend.adapters.private_files import private_directory
from backend.core.raft import HardState, PersistentState, Ready, Snapshot, bootstrap_state
from backend.core.storage_records import encode_entry, encode_hard_state, records_for_ready, replay

log = logging.getLogger(__name__)


class DurableRaftStorage:
    def __init__(
        self,
        directory: Path | str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        keep_snapshots: int = 2,
    ) -> None:
        self.directory = private_directory(directory)
        self._snapshots = SnapshotStore(self.directory / "snap", keep=keep_snapshots)
        snapshot = self._snapshots.load_newest()
        self._wal, payloads = WriteAheadLog.open(self.directory / "wal", segment_bytes)
        # what was on disk at open: hand it to RaftNode
        self.state: PersistentState = replay(snapshot, payloads)
        self._hard = self.state.hard_state
        self._last_index = self.state.entries[-1].index if self.state.entries else 0
        if snapshot is not None:
            self._last_index = max(self._last_index, snapshot.index)
        self._snapshot_index = snapshot.index if snapshot else 0

    @property
    def truncated_bytes(self) -> int:
        """Bytes of torn tail dropped when the log was opened."""
        return self._wal.truncated_bytes

    def bootstrap(self, voters: Iterable[int]) -> PersistentState:
        """Start a new group's log on an empty disk (founding members only)."""
        if not self.state.is_empty:
            raise ValueError(f"{self.directory} already holds a Raft log")
        state = bootstrap_state(voters)
        self._wal.append([*map(encode_entry, state.entries), encode_hard_state(state.hard_state)])
        self._last_index = state.entries[-1].index
        self._hard = state.hard_state
        self.sync()
        self.state = state
        return state

    def write(self, ready: Ready) -> None:
        """Append what `ready` must persist; durable only after the next sync(). If the
        disk is full nothing is appended and the same `ready` may be written again."""
        last_index = self._last_index
        if ready.snapshot is not None:
            self._snapshots.save(ready.snapshot)  # before the record that names it
            self._snapshot_index = max(self._snapshot_index, ready.snapshot.index)
            last_index = ready.snapshot.index
        if ready.entries:
            last_index = ready.entries[-1].index
        self._wal.append(records_for_ready(ready))
        self._last_index = last_index
        if ready.hard_state is not None:
            self._hard = ready.hard_state

    def sync(self) -> None:
        self._wal.sync()
        if self._wal.should_rotate():
            try:
                self._wal.rotate(self._last_index, [encode_hard_state(self._hard)])
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # what was written is durable; the next sync tries a new segment again
                log.warning("cannot start a new log segment: %s", exc)
        self._wal.release_before(self._snapshot_index)

    def save(self, ready: Ready) -> None:
        self.write(ready)
        if ready.must_sync or self._wal.should_rotate():
            self.sync()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot the node made by compacting; frees the log segments it covers."""
        self._snapshots.save(snapshot)
        self._snapshot_index = max(self._snapshot_index, snapshot.index)
        self._wal.release_before(self._snapshot_index)

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Only write the file, durably: what a forked child does (no logging, no log
        segments touched); the parent then calls `snapshot_written`."""
        self._snapshots.write(snapshot)

    def snapshot_written(self, index: int) -> None:
        """A snapshot at `index` was written by `write_snapshot` (in another process):
        prune older files and free the log segments it covers."""
        self._snapshots.prune()
        self._snapshot_index = max(self._snapshot_index, index)
        self._wal.release_before(self._snapshot_index)

    def discard_partial_snapshot(self, pid: int) -> None:
        """Delete what a snapshot writer `pid`, stopped before it finished, left behind."""
        for path in self._snapshots.temporary_files(pid):
            path.unlink(missing_ok=True)

    def load_snapshot(self, index: int) -> Snapshot:
        """The saved snapshot at `index`: FileNotFoundError if pruned, ValueError if damaged."""
        return self._snapshots.load(index)

    @property
    def hard_state(self) -> HardState:
        return self._hard

    def close(self) -> None:
        self._wal.close()
