"""Cluster membership: who votes, who only listens, and how membership may change.

A configuration is a set of voters plus learners (non-voting members that
catch up first); it changes one voter at a time, and takes effect as soon as
its entry is appended (the Raft dissertation, chapter 4). Why that is safe and
how a server is replaced: docs/architecture.md, "Raft".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from backend.core.raft.wire import want_list, want_node_id


class ConfigChangeError(ValueError):
    """A membership change that is not allowed from the current configuration."""


class ChangeOp(StrEnum):
    ADD_VOTER = "add_voter"  # a new server, or a learner that has caught up
    ADD_LEARNER = "add_learner"  # a new non-voting server, or a voter stepping down to one
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ChangeOp
    node: int

    @classmethod
    def add_voter(cls, node: int) -> ConfChange:
        return cls(ChangeOp.ADD_VOTER, node)

    @classmethod
    def add_learner(cls, node: int) -> ConfChange:
        return cls(ChangeOp.ADD_LEARNER, node)

    @classmethod
    def remove(cls, node: int) -> ConfChange:
        return cls(ChangeOp.REMOVE, node)


@dataclass(frozen=True, slots=True)
class Config:
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        both = self.voters & self.learners
        if both:
            raise ConfigChangeError(f"nodes {sorted(both)} cannot be both voter and learner")

    @classmethod
    def of(cls, voters: Iterable[int], learners: Iterable[int] = ()) -> Config:
        return cls(frozenset(voters), frozenset(learners))

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def has_quorum(self, nodes: Iterable[int]) -> bool:
        return len(self.voters.intersection(nodes)) >= self.quorum

    def committed_index(self, match: Mapping[int, int]) -> int:
        """The highest index stored on a majority of voters (Figure 2, "Rules for Servers")."""
        if not self.voters:
            return 0
        indexes = sorted((match.get(voter, 0) for voter in self.voters), reverse=True)
        return indexes[self.quorum - 1]

    def apply(self, change: ConfChange) -> Config:
        """The configuration after `change`; raises ConfigChangeError if it makes no sense."""
        node = change.node
        if change.op is ChangeOp.ADD_VOTER:
            if node in self.voters:
                raise ConfigChangeError(f"node {node} is already a voter")
            return Config(self.voters | {node}, self.learners - {node})
        if change.op is ChangeOp.ADD_LEARNER:
            if node in self.learners:
                raise ConfigChangeError(f"node {node} is already a learner")
            if self.voters == {node}:
                raise ConfigChangeError(f"node {node} is the last voter")
            return Config(self.voters - {node}, self.learners | {node})
        if node not in self.members:
            raise ConfigChangeError(f"node {node} is not a member")
        if self.voters == {node}:
            raise ConfigChangeError(f"node {node} is the last voter")
        return Config(self.voters - {node}, self.learners - {node})

    def to_wire(self) -> list[list[int]]:
        return [sorted(self.voters), sorted(self.learners)]

    @classmethod
    def from_wire(cls, value: Any) -> Config:
        voters, learners = want_list(value, "config", length=2)
        return cls.of(
            (want_node_id(v, "config voter") for v in want_list(voters, "config voters")),
            (want_node_id(n, "config learner") for n in want_list(learners, "config learners")),
        )
