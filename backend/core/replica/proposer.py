"""The user's side of replica groups, as a pure state machine: send proposals and
reads, find the leader, retry, and give each request one honest outcome.

A cache node (or a test) holds one `GroupProposer` per process incarnation, with
a `client_id` new for each, since groups remember answers by (client id,
request id). The caller moves messages and publishes `sends` (core.py's Send):

    handle, sends = proposer.propose(group, ops, now)   or .read(group, ops, now)
    done, sends = proposer.receive(message, now)        a "proposed"/"read_result" reply
    done, sends = proposer.tick(now)                    every ~50 ms: retries, deadlines
    proposer.leader_hint(group, member)                 e.g. from replica heartbeats

Each `Done(handle, ok, results, error)` arrives exactly once per handle; an
answer not in wire.py's form is dropped and counted (`drops`). Retries and
outcomes: docs/architecture.md, "Replica groups".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.core.drops import Drops
from backend.core.errors import BAD_REQUEST, TIMEOUT, UNAVAILABLE
from backend.core.replica import wire
from backend.core.replica.core import Send
from backend.core.replica.state_machine import Operation, OpResult

ATTEMPT_TIMEOUT = 1.0
RETRY_DELAY = 0.1
DEADLINE = 10.0


@dataclass(frozen=True, slots=True)
class Done:
    handle: str
    ok: bool
    results: list[OpResult] = field(default_factory=list)
    code: str = ""
    message: str = ""
    index: int = 0  # the log index the answer reflects (applied at, or read at)


@dataclass(slots=True)
class _Request:
    handle: str
    group: str
    kind: str  # wire.PROPOSE or wire.READ
    ops: list[Operation]
    deadline: float
    client: str = ""  # client id and first request id (proposals only)
    request: int = 0
    attempt: int = 0
    corr: str = ""  # the current attempt's
    member: int = 0  # where the current attempt went
    sent_at: float = 0.0
    retry_at: float | None = None  # set while waiting to send the next attempt
    maybe_applied: bool = False
    last_error: tuple[str, str] = (UNAVAILABLE, "no member answered")
    corrs: set[str] = field(default_factory=set)


class GroupProposer:
    def __init__(
        self,
        client_id: str,
        members: dict[str, list[int]],
        inbox: Callable[[str, int], str],
        reply_topic: Callable[[str], str],
        *,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        retry_delay: float = RETRY_DELAY,
        deadline: float = DEADLINE,
        drops: Drops | None = None,
    ) -> None:
        """`members[group]` lists each group's members; `inbox(group, member)` is a member's
        topic; `reply_topic(group)` is where this proposer hears answers from a group."""
        if not members or not all(members.values()):
            raise ValueError("every replica group needs at least one member")
        self.client_id = client_id
        self.drops = drops or Drops(f"proposer {client_id}")
        self.members = {group: sorted(ids) for group, ids in members.items()}
        self.inbox = inbox
        self.reply_topic = reply_topic
        self.attempt_timeout = attempt_timeout
        self.retry_delay = retry_delay
        self.deadline = deadline
        self.leaders: dict[str, int] = {}
        self._next_request = 1
        self._known: set[str] = set()  # groups that answered a proposal ok: they know us
        self._base_id = client_id
        self._generation = 0
        self._handles = itertools.count(1)
        self._requests: dict[str, _Request] = {}
        self._by_corr: dict[str, _Request] = {}

    # ---- inputs -----------------------------------------------------------------------------

    def propose(self, group: str, ops: list[Operation], now: float) -> tuple[str, list[Send]]:
        request = self._new(group, wire.PROPOSE, ops, now)
        request.client, request.request = self.client_id, self._next_request
        self._next_request += len(ops)
        return request.handle, [self._send_attempt(request, now)]

    def read(self, group: str, ops: list[Operation], now: float) -> tuple[str, list[Send]]:
        request = self._new(group, wire.READ, ops, now)
        return request.handle, [self._send_attempt(request, now)]

    def leader_hint(self, group: str, member: int | None) -> None:
        if member is not None and member in self.members.get(group, ()):
            self.leaders[group] = member

    def receive(self, message: dict[str, Any], now: float) -> tuple[list[Done], list[Send]]:
        corr = message.get("corr")
        request = self._by_corr.get(corr) if isinstance(corr, str) else None
        kind = message.get("t")
        if request is None or (kind != wire.PROPOSED and kind != wire.READ_RESULT):
            return [], []  # an answer to a finished request, or a repeat
        try:
            answer = wire.answer_from_wire(message, len(request.ops))
        except ValueError as exc:
            # Not an answer: the request waits on for a real one (or its deadline).
            self.drops.bad(str(kind), exc)
            return [], []
        if isinstance(answer, wire.AnswerOk):
            return [self._on_ok(request, answer)], []
        if answer.code == BAD_REQUEST:
            done = Done(request.handle, False, [], answer.code, answer.message)
            return [self._finish(request, done)], []
        return [], self._on_error(request, answer, now)

    def _on_ok(self, request: _Request, answer: wire.AnswerOk) -> Done:
        self.leader_hint(request.group, answer.member)
        if request.kind == wire.PROPOSE and request.client == self.client_id:
            self._on_applied(request.group, answer.results)
        index = answer.index or 0
        return self._finish(request, Done(request.handle, True, answer.results, index=index))

    def _on_error(self, request: _Request, answer: wire.AnswerError, now: float) -> list[Send]:
        """A refusal other than bad_request: retry, at once or after `retry_delay`."""
        code, text = answer.code, answer.message
        if code != UNAVAILABLE:
            request.maybe_applied = True  # a `timeout` from the group: it may yet apply
        request.last_error = (code, text)
        self.leader_hint(request.group, answer.leader)
        if answer.corr != request.corr or request.retry_at is not None:
            return []
        if answer.leader is not None and answer.leader != answer.member:
            return [self._send_attempt(request, now)]
        self._retry_later(request, now)
        return []

    def tick(self, now: float) -> tuple[list[Done], list[Send]]:
        done: list[Done] = []
        sends: list[Send] = []
        for request in list(self._requests.values()):
            if now >= request.deadline:
                done.append(self._finish(request, self._give_up(request)))
            elif request.retry_at is not None and now >= request.retry_at:
                sends.append(self._send_attempt(request, now))
            elif request.retry_at is None and now - request.sent_at >= self.attempt_timeout:
                request.maybe_applied = True  # unanswered: it may be in some leader's log
                request.last_error = (TIMEOUT, f"member {request.member} did not answer")
                self._forget_leader(request)
                sends.append(self._send_attempt(request, now))
        return done, sends

    @property
    def pending(self) -> int:
        return len(self._requests)

    def acked(self, group: str) -> int:
        """Every request id below this one has its final outcome here; 1 until `group`
        has answered a proposal `ok` and so knows this client (state_machine.py)."""
        if group not in self._known:
            return 1
        ids = [r.request for r in self._requests.values() if r.client == self.client_id]
        return min(ids, default=self._next_request)

    def _on_applied(self, group: str, results: list[OpResult]) -> None:
        if any(isinstance(r, dict) and r.get("expired") for r in results):
            # the group forgot this client: carry on under a new id, numbering afresh
            self._generation += 1
            self.client_id = f"{self._base_id}~{self._generation}"
            self._next_request = 1
            self._known.clear()
        else:
            self._known.add(group)

    # ---- attempts ------------------------------------------------------------------------

    def _new(self, group: str, kind: str, ops: list[Operation], now: float) -> _Request:
        if group not in self.members:
            raise ValueError(f"unknown replica group {group!r}")
        if not ops:
            raise ValueError("a request needs at least one operation")
        handle = f"{self.client_id}.{next(self._handles)}"
        request = _Request(handle, group, kind, list(ops), now + self.deadline)
        self._requests[handle] = request
        return request

    def _send_attempt(self, request: _Request, now: float) -> Send:
        request.attempt += 1
        request.corr = f"{request.handle}.{request.attempt}"
        request.corrs.add(request.corr)
        self._by_corr[request.corr] = request
        request.member = self._target(request)
        request.sent_at = now
        request.retry_at = None
        reply_to = self.reply_topic(request.group)
        message: wire.Propose | wire.Read
        if request.kind == wire.PROPOSE:
            message = wire.Propose(
                request.corr,
                reply_to,
                request.client,
                request.request,
                self.acked(request.group),
                request.ops,
            )
        else:
            message = wire.Read(request.corr, reply_to, request.ops)
        return Send(self.inbox(request.group, request.member), message.to_wire())

    def _target(self, request: _Request) -> int:
        """The believed leader; without one, the members in turn."""
        leader = self.leaders.get(request.group)
        if leader is not None:
            return leader
        members = self.members[request.group]
        return members[(request.attempt - 1) % len(members)]

    def _retry_later(self, request: _Request, now: float) -> None:
        self._forget_leader(request)
        request.retry_at = now + self.retry_delay

    def _forget_leader(self, request: _Request) -> None:
        if self.leaders.get(request.group) == request.member:
            del self.leaders[request.group]

    def _give_up(self, request: _Request) -> Done:
        if request.kind == wire.READ:
            return Done(request.handle, False, [], UNAVAILABLE, "no linearizable read in time")
        if request.maybe_applied or request.retry_at is None:
            # the attempt in flight has no answer yet: it may be applied
            return Done(
                request.handle,
                False,
                [],
                TIMEOUT,
                f"no outcome from replica group {request.group} in time "
                f"(last: {request.last_error[1]})",
            )
        return Done(request.handle, False, [], UNAVAILABLE, request.last_error[1])

    def _finish(self, request: _Request, done: Done) -> Done:
        del self._requests[request.handle]
        for corr in request.corrs:
            self._by_corr.pop(corr, None)
        return done
