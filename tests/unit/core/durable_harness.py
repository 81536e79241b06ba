"""Replica groups reduced to their state machines, for unit tests of the durable cache.

Each group is one ReplicaStateMachine. A proposal the test lets through (`commit`)
becomes the next log entry at once, and the group's answer is built the way
ReplicaCore builds it (backend/core/replica/core.py `_on_propose`, `_apply`): a
proposal whose every request id the answer table already holds is answered from
the table, at the current applied index, without a new entry. Reads are answered
from the applied state. The test decides when, whether and in which order each
answer reaches the node, which is how lost, late and reordered answers are made.
"""

from __future__ import annotations

from typing import Any

from backend.core import topics
from backend.core.errors import BAD_REQUEST
from backend.core.model.kv import KeyValueState
from backend.core.replica import wire
from backend.core.replica.core import Send
from backend.core.replica.state_machine import Outcome, ReplicaStateMachine, encode_batch
from backend.core.ring.durable_keys import DurableKeys
from backend.core.ring.jobs import Job

MEMBER = 1


def where(send: Send) -> tuple[str, int]:
    """The (group, member) of a message sent to a member's inbox."""
    prefix = topics.raft_member("", 0).rsplit("/", 2)[0] + "/"
    assert send.topic.startswith(prefix), send.topic
    group, member = send.topic[len(prefix) :].split("/")
    return group, int(member)


def ops_of(send: Send) -> list[str]:
    return [op["op"] for op in send.message.get("ops", [])]


class Groups:
    def __init__(self, names: list[str]) -> None:
        self.machines = {name: ReplicaStateMachine() for name in names}

    @property
    def members(self) -> dict[str, list[int]]:
        return {name: [MEMBER] for name in self.machines}

    def machine(self, group: str) -> ReplicaStateMachine:
        return self.machines[group]

    def commit(self, send: Send) -> dict[str, Any]:
        """Apply a propose (or answer a read) now; the answer, for the test to deliver."""
        group, member = where(send)
        message = send.message
        corr = message["corr"]
        machine = self.machines[group]
        if message["t"] == wire.READ:
            read = wire.Read.from_wire(message)
            results = [machine.read(op) for op in read.ops]
            answer = wire.AnswerOk(
                wire.READ_RESULT, corr, group, member, machine.applied_index, results
            )
            return answer.to_wire()
        try:
            proposal = wire.Propose.from_wire(message).proposal()
        except ValueError as exc:
            refusal = wire.AnswerError(wire.PROPOSED, corr, group, member, BAD_REQUEST, str(exc), 1)
            return refusal.to_wire()
        known = [machine.lookup(proposal.client, rid) for rid in proposal.request_ids]
        if all(outcome == Outcome.APPLIED for outcome, _ in known):
            results = [result for _, result in known if result is not None]
            answer = wire.AnswerOk(
                wire.PROPOSED, corr, group, member, machine.applied_index, results
            )
            return answer.to_wire()
        index = machine.applied_index + 1
        [results] = machine.apply_entry(index, encode_batch([proposal]))
        return wire.AnswerOk(wire.PROPOSED, corr, group, member, index, results).to_wire()

    def refuse(self, send: Send, code: str, text: str = "refused") -> dict[str, Any]:
        group, member = where(send)
        kind = wire.READ_RESULT if send.message["t"] == wire.READ else wire.PROPOSED
        corr = send.message["corr"]
        return wire.AnswerError(kind, corr, group, member, code, text, MEMBER).to_wire()


class Node:
    """One cache node's DurableKeys, with what it sent kept until the test takes it."""

    def __init__(
        self, groups: Groups, host: str = "a", incarnation: str = "i1", now: float = 0.0
    ) -> None:
        self.groups = groups
        self.state = KeyValueState()
        self.keys = DurableKeys(host, incarnation, groups.members, self.state, now)
        self.sent: list[Send] = []
        self.answers: dict[str, dict[str, Any]] = {}  # job label -> op result
        self.answered_by: dict[str, str] = {}  # job label -> the group named in Finished
        self.order: list[str] = []  # job labels in the order they finished

    @property
    def owner(self) -> str:
        return self.keys.owner

    def submit(self, label: str, op: dict[str, Any], now: float) -> None:
        self.keys.submit(op["cid"], Job(label, op, now))

    def scan(self, label: str, after: int, limit: int, now: float) -> None:
        job = Job(label, {"op": "scan", "limit": limit}, now)
        self.sent.extend(self.keys.scan(job, after, limit, now))

    def flush(self, now: float) -> list[Send]:
        self.sent.extend(self.keys.flush(now))
        self._collect()
        return self.take()

    def tick(self, now: float) -> list[Send]:
        self.sent.extend(self.keys.tick(now))
        self._collect()
        return self.take()

    def take(self) -> list[Send]:
        sent, self.sent = self.sent, []
        return sent

    def deliver(self, answer: dict[str, Any], now: float) -> None:
        self.sent.extend(self.keys.receive(answer, now))
        self._collect()

    def commit(self, sends: list[Send], now: float) -> None:
        """Let `sends` through to their groups and their answers back, in order."""
        for send in sends:
            self.deliver(self.groups.commit(send), now)

    def settle(self, now: float, sends: list[Send] | None = None) -> None:
        """Commit `sends` (by default, whatever is pending) and everything that follows
        from them, flushing after each round of answers, until nothing is left to send."""
        pending = self.take() if sends is None else sends
        for _ in range(100):
            self.commit(pending, now)
            pending = self.flush(now)
            if not pending:
                return
        raise AssertionError("the node kept sending")

    def start(self, now: float = 0.0) -> None:
        """The first tick, its renewals committed: the group knows this owner."""
        self.settle(now, self.tick(now))

    def result(self, label: str) -> dict[str, Any]:
        assert label in self.answers, f"{label} not answered; answered: {self.order}"
        return self.answers[label]

    def _collect(self) -> None:
        finished, self.keys.finished = self.keys.finished, []
        for item in finished:
            label = item.job.context
            assert label not in self.answers, f"{label} answered twice"
            self.answers[label] = item.result
            self.answered_by[label] = item.group
            self.order.append(label)
