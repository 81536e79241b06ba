"""Messages to and from a replica group's members, and the checks on what arrives.

Every message is a msgpack map with a type field `t`, published to one
member's inbox `topics.raft_member(group, member)`. Raft's own messages
(backend/core/raft/messages.py) share the inbox.

    raft       member -> member: {"t": "raft", "group", "msgs": [raft message map, ...]}
               every Raft message one Ready has for that member, in order   RaftBatch

    propose    user -> a member: apply `ops` once, in order, after they are durable
               {"t": "propose", "corr": text, "reply_to": topic, "client": text,
                "request": int >= 1, "acked": int >= 0, "ops": [op, ...]}
               op i has request id `request + i`; `acked` (at most `request`): the user
               holds the answer of every request id below it (docs/architecture.md,
               "Replica groups").
                                                                                Propose
    proposed   member -> reply_to
               {"t": "proposed", "corr", "group", "member", "ok": true,
                "index": log index, "results": [op result, ...]}   one per op, in order
               {"t": "proposed", "corr", "group", "member", "ok": false,
                "error": {"code", "message"}, "leader": member id | None}
               code "unavailable": this attempt was certainly not applied (the member is
               not the leader, lost the entry to another leader's, or has no quorum);
               "timeout": it may or may not have been applied; "bad_request": malformed.

    read       user -> the leader: linearizable reads (ReadIndex, Raft dissertation §6.4)
               {"t": "read", "corr", "reply_to", "ops": [read op, ...]}        Read
    read_result  member -> reply_to
               {"t": "read_result", "corr", "group", "member", "ok": true,
                "index": applied index read at, "results": [op result, ...]}
               {"t": "read_result", "corr", "group", "member", "ok": false,
                "error": {"code", "message"}, "leader": member id | None}

An op result is `{"ok": true, "result": {...}, "events": [...]}` or
`{"ok": false, "error": {"code", "message"}}` (a write refused because its
`owner` does not hold the key adds `"fenced": true`). Writes may name an
`owner`; `claim` and `renew` must (docs/architecture.md, "Replica groups" and
"Leases"). Ops are backend/core/model/kv.py operations; reads may also be
state_machine.EXTRA_READ_OPS.
`reply_to` must lie under taskring/v1/raft/ (topics.raft_reply), the only
subtree the broker lets replicas publish on.

Each kind is a frozen dataclass: RaftBatch, Propose, Read, and for both answers
AnswerOk and AnswerError (`kind` is "proposed" or "read_result"). `to_wire` gives
the map above; `from_wire` is the one check of an arriving map (answer_from_wire
for either answer; given the request's op count, it also requires one result per
op), raising ValueError naming the first bad field. A propose or
read with a usable address raises BadRequest instead, so that it can be answered.
The Raft messages in a batch and the ops stay maps: each Raft message is decoded
on its own by the member (a bad one costs only itself), and ops go to kv.py as
maps, checked here by check_write_or_read_op and check_read_op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from backend.core.model.kv import READ_OPS, WRITE_OPS
from backend.core.replica.state_machine import OWNER_OPS, Operation, OpResult, Proposal

RAFT = "raft"
PROPOSE = "propose"
PROPOSED = "proposed"
READ = "read"
READ_RESULT = "read_result"

MAX_OPS = 10_000  # per message
MAX_TEXT = 256  # corr, reply_to, client
MAX_U64 = (1 << 64) - 1
MAX_ID = (1 << 63) - 1


# ---- the messages ----------------------------------------------------------------------
#
# One frozen dataclass per kind. `to_wire` gives the map above, key for key (the
# bytes on the wire are the same as ever); `from_wire` is the one check of what
# arrives: ValueError naming the first bad field. The ops inside stay maps (a
# KeyValueState operation is a map all the way to kv.py), checked by the
# functions at the end.


class BadRequest(ValueError):
    """A propose or read with a good address but a bad body: answered `bad_request`
    at `reply_to`, where one without an address can only be dropped."""

    def __init__(self, corr: str, reply_to: str, problem: str) -> None:
        super().__init__(problem)
        self.corr = corr
        self.reply_to = reply_to


@dataclass(frozen=True, slots=True)
class RaftBatch:
    """Every Raft message one Ready has for a member, in order. The messages stay
    maps here: the member decodes each on its own, so one bad message does not
    cost the others (backend/core/raft/messages.py)."""

    group: str
    messages: list[dict[str, Any]]

    def to_wire(self) -> dict[str, Any]:
        return {"t": RAFT, "group": self.group, "msgs": self.messages}

    @classmethod
    def from_wire(cls, message: Mapping[str, Any]) -> RaftBatch:
        group = message.get("group")
        if not isinstance(group, str):
            raise ValueError("group must be text")
        messages = message.get("msgs")
        if not isinstance(messages, list):
            raise ValueError("msgs is not a list")
        return cls(group, messages)


@dataclass(frozen=True, slots=True)
class Propose:
    corr: str
    reply_to: str
    client: str
    request: int
    acked: int
    ops: list[Operation]

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": PROPOSE,
            "corr": self.corr,
            "reply_to": self.reply_to,
            "client": self.client,
            "request": self.request,
            "acked": self.acked,
            "ops": self.ops,
        }

    @classmethod
    def from_wire(cls, message: Mapping[str, Any]) -> Propose:
        """ValueError if there is nowhere to answer; BadRequest (a ValueError) if there
        is, naming the first bad field."""
        corr, reply_to = _address(message)
        try:
            client = _text(message, "client")
            request = _int(message.get("request"), "request", 1, MAX_ID)
            acked = _int(message.get("acked", 0), "acked", 0, request)
            ops = _ops(message, check_write_or_read_op)
            if request + len(ops) - 1 > MAX_ID:
                raise ValueError("request ids run past 2**63 - 1")
        except ValueError as exc:
            raise BadRequest(corr, reply_to, str(exc)) from exc
        return cls(corr, reply_to, client, request, acked, ops)

    def proposal(self) -> Proposal:
        return Proposal(self.client, self.request, self.acked, tuple(self.ops))


@dataclass(frozen=True, slots=True)
class Read:
    corr: str
    reply_to: str
    ops: list[Operation]

    def to_wire(self) -> dict[str, Any]:
        return {"t": READ, "corr": self.corr, "reply_to": self.reply_to, "ops": self.ops}

    @classmethod
    def from_wire(cls, message: Mapping[str, Any]) -> Read:
        """As Propose.from_wire: ValueError without an address, BadRequest with one."""
        corr, reply_to = _address(message)
        try:
            ops = _ops(message, check_read_op)
        except ValueError as exc:
            raise BadRequest(corr, reply_to, str(exc)) from exc
        return cls(corr, reply_to, ops)


@dataclass(frozen=True, slots=True)
class AnswerOk:
    """A proposal applied (`kind` PROPOSED) or reads served (READ_RESULT) at `index`,
    one result per op. `group`, `member` and `index` are None only in an answer
    that left them out, which users accept."""

    kind: str
    corr: str
    group: str | None
    member: int | None
    index: int | None
    results: list[OpResult]

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": self.kind,
            "corr": self.corr,
            "group": self.group,
            "member": self.member,
            "ok": True,
            "index": self.index,
            "results": self.results,
        }

    @classmethod
    def from_wire(cls, message: Mapping[str, Any], ops: int | None = None) -> AnswerOk:
        """As answer_from_wire, and ValueError for a refusal."""
        answer = answer_from_wire(message, ops)
        if not isinstance(answer, AnswerOk):
            raise ValueError("ok must be true")
        return answer


@dataclass(frozen=True, slots=True)
class AnswerError:
    """A proposal or read refused: `code` (see above), and the leader if known."""

    kind: str
    corr: str
    group: str | None
    member: int | None
    code: str
    message: str
    leader: int | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": self.kind,
            "corr": self.corr,
            "group": self.group,
            "member": self.member,
            "ok": False,
            "error": {"code": self.code, "message": self.message},
            "leader": self.leader,
        }

    @classmethod
    def from_wire(cls, message: Mapping[str, Any]) -> AnswerError:
        """As answer_from_wire, and ValueError for an ok answer."""
        answer = answer_from_wire(message)
        if not isinstance(answer, AnswerError):
            raise ValueError("ok must be false")
        return answer


Answer = AnswerOk | AnswerError


def answer_from_wire(message: Mapping[str, Any], ops: int | None = None) -> Answer:
    """A proposed/read_result in the form above, answering a request of `ops`
    operations if given (then an ok answer must hold that many results); ValueError
    naming the first bad field (what a result's `result` holds is checked by whoever
    reads it)."""
    kind = message.get("t")
    if kind != PROPOSED and kind != READ_RESULT:
        raise ValueError(f"t must be {PROPOSED!r} or {READ_RESULT!r}")
    corr = _text(message, "corr")
    group = message.get("group")
    if group is not None and not isinstance(group, str):
        raise ValueError("group must be text")
    ok = message.get("ok")
    if not isinstance(ok, bool):
        raise ValueError("ok must be true or false")
    member = _optional_u64(message, "member")
    leader = _optional_u64(message, "leader")
    index = _optional_u64(message, "index")
    if not ok:
        error = message.get("error")
        if not _is_error(error):
            raise ValueError("error must be a map of code and message texts")
        return AnswerError(kind, corr, group, member, error["code"], error["message"], leader)
    results = message.get("results")
    if not isinstance(results, list) or (ops is not None and len(results) != ops):
        counted = "op results" if ops is None else f"{ops} op results"
        raise ValueError(f"results must be a list of {counted}")
    for result in results:
        if not isinstance(result, Mapping) or not isinstance(result.get("ok"), bool):
            raise ValueError("an op result must be a map with ok")
        if result["ok"] and not isinstance(result.get("result"), Mapping):
            raise ValueError("an ok op result must carry a result map")
        if not result["ok"] and not _is_error(result.get("error")):
            raise ValueError("a failed op result must carry an error map")
    return AnswerOk(kind, corr, group, member, index, results)


def _address(message: Mapping[str, Any]) -> tuple[str, str]:
    """The (corr, reply_to) of a propose or read; ValueError if there is nowhere to answer."""
    return _text(message, "corr"), _text(message, "reply_to")


def _optional_u64(message: Mapping[str, Any], name: str) -> int | None:
    value = message.get(name)
    return None if value is None else _int(value, name, 0, MAX_U64)


def _is_error(error: Any) -> TypeGuard[Mapping[str, Any]]:
    return (
        isinstance(error, Mapping)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )


def _ops(message: Mapping[str, Any], check: Callable[[Any], None]) -> list[dict[str, Any]]:
    ops = message.get("ops")
    if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_OPS:
        raise ValueError(f"ops must be a list of 1 to {MAX_OPS} operations")
    for position, op in enumerate(ops):
        try:
            check(op)
        except ValueError as exc:
            raise ValueError(f"ops[{position}]: {exc}") from exc
    return ops


# Fields each operation needs, beyond "op" and "cid", and their types.
_OP_FIELDS: dict[str, dict[str, type]] = {
    "create_client": {
        "name": str,
        "data": str,
        "created_at": int,
        "token_salt": bytes,
        "token_hash": bytes,
    },
    "get_client": {},
    "update_client": {"data": str},
    "delete_client": {},
    "rotate_token": {"token_salt": bytes, "token_hash": bytes},
    "verifier": {},
    "insert_task": {"title": str, "description": str},
    "update_task": {"title": str, "description": str},
    "delete_task": {"title": str},
    "delete_tasks": {},
    "list_tasks": {},
    "claim": {"owner": str},
    "renew": {"owner": str},
}
assert set(_OP_FIELDS) == READ_OPS | WRITE_OPS | OWNER_OPS


def check_write_or_read_op(op: Any) -> None:
    """A KeyValueState operation with every field it needs, of the right type."""
    if not isinstance(op, Mapping):
        raise ValueError(f"an operation must be a map, not {type(op).__name__}")
    name = op.get("op")
    if not isinstance(name, str) or name not in _OP_FIELDS:  # a list would not hash
        raise ValueError(f"unknown operation {name!r:.80}")
    _int(op.get("cid"), "cid", 0, MAX_U64)
    for key, kind in _OP_FIELDS[name].items():
        value = op.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name}: {key} must be {kind.__name__}")
    for optional in ("owner", "req"):
        value = op.get(optional)
        if optional in op and (not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT):
            raise ValueError(f"{name}: {optional} must be text of 1 to {MAX_TEXT} characters")


def check_read_op(op: Any) -> None:
    if not isinstance(op, Mapping):
        raise ValueError(f"an operation must be a map, not {type(op).__name__}")
    name = op.get("op")
    if name == "load_keys":
        cids = op.get("cids")
        if not isinstance(cids, list) or len(cids) > MAX_OPS:
            raise ValueError(f"load_keys: cids must be a list of at most {MAX_OPS} CIDs")
        for cid in cids:
            _int(cid, "load_keys cid", 0, MAX_U64)
    elif name == "clients_after":
        _int(op.get("after"), "clients_after: after", -1, MAX_U64)
        _int(op.get("limit"), "clients_after: limit", 1, MAX_OPS)
    elif isinstance(name, str) and name in READ_OPS and "owner" not in op:
        check_write_or_read_op(op)
    else:
        raise ValueError(f"{name!r:.80} is not a read operation")


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise ValueError(f"{key} must be text of 1 to {MAX_TEXT} characters")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer from {low} to {high}, not {value!r}")
    return value
