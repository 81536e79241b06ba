"""The values Raft keeps: log entries, the persistent hard state, snapshots, roles.

These are the "State" box of Figure 2 of the Raft paper (Ongaro &
Ousterhout 2014): `currentTerm` and `votedFor` (the `HardState`, together
with the commit index so a restart need not re-learn it), and `log[]`
(`Entry`). A `Snapshot` (§7, "Log compaction") stands for every entry up to
its index, and records the configuration as of that index.

All are immutable values with compact wire forms (msgpack-friendly lists
and maps); decoding validates every field and raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from backend.core.raft.membership import Config
from backend.core.raft.wire import field as wire_field
from backend.core.raft.wire import want_bytes, want_int, want_list, want_map, want_optional_node_id


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. A configuration entry carries `config` and no data.

    A normal entry with empty data is the no-op a new leader appends
    (§8: "each leader commit a blank no-op entry into the log at the start
    of its term"); applications skip it.
    """

    index: int
    term: int
    data: bytes = b""
    config: Config | None = None

    @property
    def size(self) -> int:
        return len(self.data) + 16

    def to_wire(self) -> list[Any]:
        config = None if self.config is None else self.config.to_wire()
        return [self.index, self.term, self.data, config]

    @classmethod
    def from_wire(cls, value: Any) -> Entry:
        index, term, data, config = want_list(value, "entry", length=4)
        return cls(
            want_int(index, "entry index", minimum=1),
            want_int(term, "entry term", minimum=1),
            want_bytes(data, "entry data"),
            None if config is None else Config.from_wire(config),
        )


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before a node answers anyone (Figure 2, "Persistent state")."""

    term: int = 0
    vote: int | None = None
    commit: int = 0

    def to_wire(self) -> list[int]:
        return [self.term, self.vote or 0, self.commit]

    @classmethod
    def from_wire(cls, value: Any) -> HardState:
        term, vote, commit = want_list(value, "hard state", length=3)
        return cls(
            want_int(term, "hard state term"),
            want_optional_node_id(vote, "hard state vote"),
            want_int(commit, "hard state commit"),
        )


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts an application may act on: who leads, our role, the membership."""

    leader: int | None
    role: Role
    config: Config


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of `index` (§7): replaces every entry up to it."""

    index: int
    term: int
    config: Config
    data: bytes = field(default=b"", repr=False)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(0, 0, Config())

    def to_wire(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "term": self.term,
            "config": self.config.to_wire(),
            "data": self.data,
        }

    @classmethod
    def from_wire(cls, value: Any) -> Snapshot:
        message = want_map(value, "snapshot")
        return cls(
            want_int(wire_field(message, "index", "snapshot"), "snapshot index"),
            want_int(wire_field(message, "term", "snapshot"), "snapshot term"),
            Config.from_wire(wire_field(message, "config", "snapshot")),
            want_bytes(wire_field(message, "data", "snapshot"), "snapshot data"),
        )


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What a node finds on its disk when it starts: hard state, snapshot, later entries."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()

    @property
    def is_empty(self) -> bool:
        return self.hard_state == HardState() and self.snapshot is None and not self.entries


def bootstrap_state(voters: Iterable[int]) -> PersistentState:
    """The state every founding member of a new group starts from.

    Each founder writes the same first entry, the initial configuration at
    index 1 in term 1, already committed: identical logs need no agreement.
    A server joining later starts empty and learns everything from the leader.
    """
    config = Config.of(voters)
    if not config.voters:
        raise ValueError("a new group needs at least one voter")
    entry = Entry(1, 1, config=config)
    return PersistentState(HardState(term=1, vote=None, commit=1), None, (entry,))
