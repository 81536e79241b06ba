"""Why the replication core refused a request from its application."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every refusal from a RaftNode."""


class NotLeader(RaftError):
    """Only the leader accepts proposals; `leader` is who to ask instead, if known."""

    def __init__(self, leader: int | None) -> None:
        hint = f"node {leader} leads" if leader is not None else "no leader is known"
        super().__init__(f"not the leader; {hint}")
        self.leader = leader


class ProposalDropped(RaftError):
    """The leader cannot take this proposal now (transfer or membership change under way)."""
