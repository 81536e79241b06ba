"""Raft's safety properties over one group, checked as a simulator watches its members.

Election Safety, Leader Completeness, State Machine Safety and Log Matching
(Figure 3 of the Raft paper; docs/architecture.md, "The Raft simulator"). The
simulator calls `new_leader` when it first sees a member lead a term,
`record_commits` when a member's commit index moved, `check_applied` for every
entry a member applies, and `check_log_matching` over the live members' logs.
A violation goes to the simulator's `fail`, which raises with the seed. Shared
by raft_sim.py (one group) and system_sim.py (many groups under a cache ring).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from backend.core.raft import Entry, RaftNode


class RaftSafety:
    def __init__(self, fail: Callable[[str], None], name: str = "node") -> None:
        """`fail(what)` raises; `name` is how messages call a member ("node 2", "g1 member 2")."""
        self.fail = fail
        self.name = name
        self.leaders: dict[int, int] = {}  # term -> the one leader of that term
        self.committed: dict[int, Entry] = {}  # index -> the entry committed there
        self.commit_term: dict[int, int] = {}  # index -> a term by which it was committed
        self.max_commit = 0

    def new_leader(self, member: int, node: RaftNode) -> None:
        other = self.leaders.setdefault(node.term, member)
        if other != member:
            self.fail(
                f"election safety: {self.name}s {other} and {member} both lead term {node.term}"
            )
        log = node.log
        for index, term in self.commit_term.items():
            if term >= node.term or index <= log.snapshot.index:
                continue  # committed later, or covered by the snapshot
            if index > log.last_index or log.entry(index) != self.committed[index]:
                self.fail(
                    f"leader completeness: {self.name} {member}, leader of term {node.term}, "
                    f"lacks entry {index} committed by term {term}"
                )

    def record_commits(self, member: int, node: RaftNode, seen: int) -> int:
        """Entries `member` committed above `seen`; returns its commit index, the new `seen`."""
        log = node.log
        for index in range(max(seen + 1, log.first_index), node.commit_index + 1):
            entry = log.entry(index)
            known = self.committed.setdefault(index, entry)
            if known != entry:
                self.fail(
                    f"state machine safety: {self.name} {member} commits {entry} at {index}, "
                    f"but {known} was committed there"
                )
            if node.term < self.commit_term.get(index, node.term + 1):
                self.commit_term[index] = node.term
        self.max_commit = max(self.max_commit, node.commit_index)
        return node.commit_index

    def check_applied(self, member: int, entry: Entry) -> None:
        known = self.committed.setdefault(entry.index, entry)
        if known != entry:
            self.fail(
                f"state machine safety: {self.name} {member} applies {entry}, "
                f"but {known} was committed at {entry.index}"
            )

    def check_log_matching(self, nodes: Iterable[tuple[int, RaftNode]]) -> None:
        for (a, left), (b, right) in itertools.combinations(list(nodes), 2):
            low = max(left.log.first_index, right.log.first_index)
            high = min(left.last_index, right.last_index)
            agreed = False
            for index in range(high, low - 1, -1):
                here, there = left.log.entry(index), right.log.entry(index)
                if here.term == there.term:
                    agreed = True
                if agreed and here != there:
                    self.fail(
                        f"log matching: {self.name}s {a} and {b} share a later (index, term) "
                        f"but differ at {index}"
                    )
