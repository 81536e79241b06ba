"""A node's view of the replicated log: entries after the latest snapshot, plus bookkeeping.

The log rules of the Raft paper: `maybe_append` accepts entries only after a
matching (prev_index, prev_term) and on a conflict deletes the entry and all
after it (§5.3, Log Matching); `is_up_to_date` is the election restriction
(§5.4.1); a snapshot's (index, term) stands in for the entries it covers (§7).
It tracks `unstable_from` (the first index not on disk), `pending_snapshot`,
`committed` and `applied`, and hands entries out for applying only once they
are on disk, so a node never applies what a crash could take back.
Configuration entries are indexed so membership is found without scanning.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from backend.core.raft.membership import Config
from backend.core.raft.state import Entry, Snapshot


class LogCorruptedError(RuntimeError):
    """A rule that Raft guarantees was broken: committed state would be lost."""


class RaftLog:
    def __init__(
        self, snapshot: Snapshot, entries: Sequence[Entry] = (), committed: int = 0
    ) -> None:
        self.snapshot = snapshot
        self._entries: list[Entry] = []
        self._config_indexes: list[int] = []
        self.unstable_from = snapshot.index + 1
        self._extend(entries)
        self.unstable_from = self.last_index + 1  # what we were given is already on disk
        self.pending_snapshot: Snapshot | None = None
        # False after compacting without the state's bytes (the application keeps them on
        # disk): the snapshot's data is then empty and must not be sent to anyone
        self.snapshot_loaded = True
        committed = max(committed, snapshot.index)
        if committed > self.last_index:
            raise LogCorruptedError(
                f"commit index {committed} is past the last log index {self.last_index}"
            )
        self.committed = committed
        self.applied = snapshot.index

    # ---- reading ------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot.term

    @property
    def stable_index(self) -> int:
        """The last index known to be on disk."""
        return self.unstable_from - 1

    def term(self, index: int) -> int | None:
        """The term at `index`, or None when it is compacted away or not yet written."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index:
            return None
        return self._entries[index - self.first_index].term

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.first_index]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: "the log with the later term is more up-to-date. If the logs end with the
        same term, then whichever log is longer is more up-to-date"."""
        if last_term != self.last_term:
            return last_term > self.last_term
        return last_index >= self.last_index

    def slice(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        """Entries low..high inclusive, at most max_bytes of them but always at least one."""
        out: list[Entry] = []
        size = 0
        for index in range(max(low, self.first_index), min(high, self.last_index) + 1):
            entry = self.entry(index)
            size += entry.size
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def entries_from(self, low: int) -> list[Entry]:
        return self._entries[max(low, self.first_index) - self.first_index :]

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last index at or before `index` whose term is at most `term`, and that term.

        Lets a leader skip a whole divergent term per probe instead of one entry
        (the optimisation §5.3 sketches: "the follower can include the term of the
        conflicting entry and the first index it stores for that term").
        """
        for candidate in range(min(index, self.last_index), self.snapshot.index - 1, -1):
            found = self.term(candidate)
            if found is None:
                return candidate, 0
            if found <= term:
                return candidate, found
        return self.snapshot.index, 0

    # ---- membership ---------------------------------------------------------

    def config(self) -> Config:
        """The latest configuration in the log, committed or not (dissertation §4.1)."""
        if self._config_indexes:
            return self.entry(self._config_indexes[-1]).config or Config()
        return self.snapshot.config

    def last_config_index(self) -> int:
        return self._config_indexes[-1] if self._config_indexes else self.snapshot.index

    def config_at(self, index: int) -> Config:
        position = bisect.bisect_right(self._config_indexes, index)
        if position:
            return self.entry(self._config_indexes[position - 1]).config or Config()
        return self.snapshot.config

    # ---- writing ------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """A leader appends its own new entries (§5.3: "the leader appends the command to its
        log as a new entry"); a leader never overwrites."""
        if entries and entries[0].index != self.last_index + 1:
            raise LogCorruptedError(
                f"leader append at {entries[0].index} does not follow {self.last_index}"
            )
        self._extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries (Figure 2, receiver implementation steps 2-5).

        Returns the index of the last entry the message covers, or None if the log
        does not contain an entry at prev_index whose term matches prev_term.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogCorruptedError(
                    f"entry {conflict} conflicts with committed entries (commit {self.committed})"
                )
            self._truncate_and_append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index <= self.committed:
            return
        if index > self.last_index:
            raise LogCorruptedError(f"commit {index} is past the last log index {self.last_index}")
        self.committed = index

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def _truncate_and_append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first <= self.snapshot.index:
            raise LogCorruptedError(f"cannot rewrite entry {first}: it is in the snapshot")
        if first <= self.last_index:
            del self._entries[first - self.first_index :]
            del self._config_indexes[bisect.bisect_left(self._config_indexes, first) :]
            self.unstable_from = min(self.unstable_from, first)
        self._extend(entries)

    def _extend(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if entry.index != self.last_index + 1:
                raise LogCorruptedError(f"entry {entry.index} does not follow {self.last_index}")
            self._entries.append(entry)
            if entry.config is not None:
                self._config_indexes.append(entry.index)

    # ---- persistence and application ----------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return self.entries_from(self.unstable_from)

    def stable_to(self, index: int, term: int) -> None:
        """Entries through (index, term) are on disk, unless they were replaced meanwhile."""
        if self.match_term(index, term) and index >= self.unstable_from:
            self.unstable_from = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == index:
            self.pending_snapshot = None

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Committed, durable entries not yet handed out for applying."""
        if self.pending_snapshot is not None:
            return []
        high = min(self.committed, self.stable_index)
        if high <= self.applied:
            return []
        return self.slice(self.applied + 1, high, max_bytes)

    def applied_to(self, index: int) -> None:
        self.applied = max(self.applied, index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot from the leader (§7, InstallSnapshot step 7:
        "discard the entire log")."""
        self.snapshot = snapshot
        self._entries = []
        self._config_indexes = []
        self.committed = snapshot.index
        self.unstable_from = snapshot.index + 1
        self.pending_snapshot = snapshot
        self.snapshot_loaded = True

    def compact(self, index: int, data: bytes | None) -> Snapshot:
        """Discard entries through `index`, already applied, replaced by the application's
        snapshot `data` of the state machine as of that index.

        `index` may be older than the applied index (a snapshot taken in the background
        while entries kept being applied); the entries after it stay. `data` None: the
        application holds the bytes (on disk) and hands them over with `attach_data`
        when the snapshot must be sent."""
        if self.pending_snapshot is not None:
            raise ValueError("a snapshot from the leader is still waiting to be saved")
        if not self.snapshot.index < index <= self.applied:
            raise ValueError(
                f"can only compact through an applied index after {self.snapshot.index}, "
                f"up to {self.applied}; not {index}"
            )
        term = self.term(index)
        assert term is not None  # index is within the log by the check above
        snapshot = Snapshot(index, term, self.config_at(index), data or b"")
        del self._entries[: index - self.first_index + 1]
        del self._config_indexes[: bisect.bisect_right(self._config_indexes, index)]
        self.snapshot = snapshot
        self.snapshot_loaded = data is not None
        return snapshot

    def attach_data(self, snapshot: Snapshot) -> bool:
        """Take the bytes of the current snapshot, compacted without them; False if
        `snapshot` is not the current one (a newer one replaced it meanwhile)."""
        current = self.snapshot
        if self.snapshot_loaded or (snapshot.index, snapshot.term) != (current.index, current.term):
            return False
        self.snapshot = Snapshot(current.index, current.term, current.config, snapshot.data)
        self.snapshot_loaded = True
        return True
