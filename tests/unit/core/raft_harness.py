"""A tiny synchronous network of RaftNodes for unit tests (the simulator does the chaos).

Persistence is implicit: every Ready is taken as persisted, sent and applied
at once. Messages can be dropped per link, and every message that was sent
is kept in `sent` for assertions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from backend.core.raft import (
    Config,
    Entry,
    HardState,
    Message,
    PersistentState,
    RaftNode,
    RaftOptions,
    ReadState,
    Snapshot,
    bootstrap_state,
)


def options(**overrides: Any) -> RaftOptions:
    """Plain Raft as the paper describes it, unless a test asks for the extensions."""
    base: dict[str, Any] = {
        "election_ticks": 10,
        "heartbeat_ticks": 1,
        "pre_vote": False,
        "check_quorum": False,
    }
    base.update(overrides)
    return RaftOptions(**base)


def state_with(
    voters: Iterable[int],
    terms: Iterable[int] = (),
    *,
    term: int | None = None,
    commit: int = 1,
    learners: Iterable[int] = (),
    vote: int | None = None,
) -> PersistentState:
    """A log of the bootstrap config entry at index 1, then one entry per term in `terms`."""
    config = Config.of(voters, learners)
    entries = [Entry(1, 1, config=config)]
    for index, entry_term in enumerate(terms, start=2):
        entries.append(Entry(index, entry_term, f"e{index}".encode()))
    last_term = entries[-1].term
    hard = HardState(term=max(term or 0, last_term), vote=vote, commit=commit)
    return PersistentState(hard, None, tuple(entries))


def new_node(
    node_id: int,
    voters: Iterable[int] = (1, 2, 3),
    state: PersistentState | None = None,
    seed: int = 0,
    **overrides: object,
) -> RaftNode:
    return RaftNode(
        node_id,
        state or bootstrap_state(voters),
        random.Random(seed * 1000 + node_id),
        options(**overrides),
    )


M = TypeVar("M")


def all_of(kind: type[M], messages: Sequence[object]) -> list[M]:
    """The messages, checked to be all of one type, so a test can read that type's fields."""
    typed = [m for m in messages if isinstance(m, kind)]
    assert len(typed) == len(messages), f"not all {kind.__name__}: {messages}"
    return typed


def drain(node: RaftNode) -> tuple[list[Message], list[Entry], list[ReadState]]:
    """Take every Ready: the messages to send, entries to apply and read states."""
    messages: list[Message] = []
    applied: list[Entry] = []
    reads: list[ReadState] = []
    while node.has_ready():
        ready = node.ready()
        messages.extend(ready.messages)
        applied.extend(ready.committed_entries)
        reads.extend(ready.read_states)
        node.advance(ready)
    return messages, applied, reads


def tick(node: RaftNode, times: int) -> None:
    for _ in range(times):
        node.tick()


class Net:
    def __init__(self, nodes: Iterable[RaftNode]) -> None:
        self.nodes = {node.id: node for node in nodes}
        self.cut: set[tuple[int, int]] = set()
        self.sent: list[Message] = []
        self.applied: dict[int, list[Entry]] = {node_id: [] for node_id in self.nodes}
        self.reads: dict[int, list[ReadState]] = {node_id: [] for node_id in self.nodes}
        self.snapshots: dict[int, Snapshot] = {}

    @classmethod
    def of(cls, size: int, seed: int = 0, **overrides: Any) -> Net:
        voters = range(1, size + 1)
        return cls(new_node(n, voters, seed=seed, **overrides) for n in voters)

    def add(self, node: RaftNode) -> None:
        self.nodes[node.id] = node
        self.applied.setdefault(node.id, [])
        self.reads.setdefault(node.id, [])

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cut.clear()

    def flush(self, rounds: int = 10_000) -> None:
        """Deliver messages until nobody has anything more to say."""
        for _ in range(rounds):
            outbox: list[Message] = []
            for node in self.nodes.values():
                while node.has_ready():
                    ready = node.ready()
                    if ready.snapshot is not None:
                        self.snapshots[node.id] = ready.snapshot
                    outbox.extend(ready.messages)
                    self.applied[node.id].extend(ready.committed_entries)
                    self.reads[node.id].extend(ready.read_states)
                    node.advance(ready)
            if not outbox:
                return
            for message in outbox:
                self.sent.append(message)
                if (message.src, message.dst) not in self.cut and message.dst in self.nodes:
                    self.nodes[message.dst].step(message)
        raise AssertionError("the network never went quiet")

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for node in self.nodes.values():
                node.tick()
            self.flush()

    def elect(self, node_id: int) -> RaftNode:
        self.nodes[node_id].campaign()
        self.flush()
        node = self.nodes[node_id]
        assert node.is_leader, f"node {node_id} did not win: {node.role}"
        return node

    def leader(self) -> RaftNode | None:
        leaders = [node for node in self.nodes.values() if node.is_leader]
        return max(leaders, key=lambda node: node.term, default=None)

    def data_applied(self, node_id: int) -> list[bytes]:
        return [entry.data for entry in self.applied[node_id] if entry.data]
