"""What every replica of a group applies in log order: the key-value state plus a
table of answered requests, so a retried request is never applied twice.

Each Raft log entry holds a batch of proposals (`encode_batch`), each a run of
operations from one client, `Proposal(client, request, acked, ops)`. The table
keeps each client's answers above its floor and each portal request id's first
result; claims, renewals and the owner check on writes fence the cache ring.
`snapshot()` and `restore()` give the whole state as msgpack bytes. The rules
(exactly once, its bounds, ownership) are docs/architecture.md, "Replica
groups" and "Leases".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from backend.core.codec import array_header, pack_value
from backend.core.errors import BAD_REQUEST, TIMEOUT, UNAVAILABLE, OpError
from backend.core.model.kv import (
    READ_OPS,
    KeyValueState,
    key_from_wire,
    key_to_wire,
    record_to_wire,
)

Operation = dict[str, Any]
OpResult = dict[str, Any]

MAX_RESULTS_PER_CLIENT = 1024
MAX_CLIENTS = 4096
MAX_OWNERS = 1024
MAX_REQUESTS = 50_000  # portal request ids remembered; portals retry within seconds
MAX_REVOKED = 10_000  # keys listed per owner before its list becomes "all of them"
SNAPSHOT_VERSION = 3  # 3: answers packed; 2: with owners, leases and request ids
# Operations of the cache nodes that own keys (see "Ownership" above).
OWNER_OPS = frozenset({"claim", "renew"})
# Operations the durable tier answers beyond KeyValueState's, for its users' own needs:
#   load_keys      {"cids": [cid, ...]}    -> {"keys": [kv.key_to_wire(...), ...]} (a cold owner)
#   clients_after  {"after": -1|cid, "limit": n} -> {"clients": [record, ...]}
EXTRA_READ_OPS = frozenset({"load_keys", "clients_after"})


@dataclass(frozen=True, slots=True)
class Proposal:
    client: str
    request: int  # request id of ops[0]; ops[i] has request + i
    acked: int  # the client holds the answers of every request id below this
    ops: tuple[Operation, ...]

    @property
    def request_ids(self) -> range:
        return range(self.request, self.request + len(self.ops))

    def to_wire(self) -> list[Any]:
        return [self.client, self.request, self.acked, list(self.ops)]

    @classmethod
    def from_wire(cls, value: Any) -> Proposal:
        client, request, acked, ops = value
        return cls(client, request, acked, tuple(ops))


def encode_batch(proposals: Sequence[Proposal]) -> bytes:
    """One log entry's data: proposals applied in this order."""
    return join_packed([pack_proposal(p) for p in proposals])


def pack_proposal(proposal: Proposal) -> bytes:
    """One proposal packed alone; `join_packed` makes a batch of such pieces without
    packing them again (so a batch can be cut to size as it grows)."""
    return pack_value(proposal.to_wire())


def join_packed(pieces: Sequence[bytes]) -> bytes:
    return array_header(len(pieces)) + b"".join(pieces)


def decode_batch(data: bytes) -> list[Proposal]:
    items = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return [Proposal.from_wire(item) for item in items]


def op_ok(result: dict[str, Any], events: Iterable[dict[str, Any]] = ()) -> OpResult:
    return {"ok": True, "result": result, "events": list(events)}


def op_error(code: str, message: str) -> OpResult:
    return {"ok": False, "error": {"code": code, "message": message}}


def outcome_of(result: OpResult) -> str:
    """ "ok", or the error code of an op result (as metrics and comparisons name it)."""
    return "ok" if result.get("ok") else str((result.get("error") or {}).get("code"))


def apply_op(kv: KeyValueState, op: Operation) -> OpResult:
    """Apply one KeyValueState operation; its result or error as an op result."""
    try:
        result, events = kv.apply(op)
    except OpError as exc:
        return op_error(exc.code, exc.message)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # operations are checked before they get here; this is the last line
        return op_error(BAD_REQUEST, f"malformed operation: {exc!r}")
    return op_ok(result, (event.to_wire() for event in events))


@dataclass
class Session:
    """What the group remembers of one client."""

    floor: int = 1  # answers below this id are forgotten
    results: dict[int, bytes] = field(default_factory=dict)  # packed (see `_pack_answer`)
    last_index: int = 0  # log index of the client's latest proposal

    def to_wire(self) -> list[Any]:
        return [self.floor, self.last_index, [[rid, r] for rid, r in self.results.items()]]

    @classmethod
    def from_wire(cls, value: Any) -> Session:
        floor, last_index, results = value
        return cls(floor, {rid: _packed(result) for rid, result in results}, last_index)


@dataclass
class OwnerLease:
    """What the group remembers of one owner: keys taken from it since it last renewed
    (None: it must assume all of them) and the log index of its latest claim or renewal."""

    revoked: set[int] | None = None
    last_index: int = 0

    def to_wire(self) -> list[Any]:
        return [None if self.revoked is None else sorted(self.revoked), self.last_index]

    @classmethod
    def from_wire(cls, value: Any) -> OwnerLease:
        revoked, last_index = value
        return cls(None if revoked is None else set(revoked), last_index)


class Outcome:
    """What `lookup` knows of one request id."""

    APPLIED = "applied"
    NOT_APPLIED = "not_applied"
    UNKNOWN = "unknown"


class ReplicaStateMachine:
    def __init__(
        self, max_results: int = MAX_RESULTS_PER_CLIENT, max_clients: int = MAX_CLIENTS
    ) -> None:
        if max_results < 1 or max_clients < 1:
            raise ValueError("the answer table needs room for at least one entry")
        self.kv = KeyValueState()
        self.sessions: dict[str, Session] = {}
        self.owners: dict[int, str] = {}  # cid -> the cache node that may write it
        # portal request id -> its packed result (see `_pack_answer`)
        self.requests: OrderedDict[str, bytes] = OrderedDict()
        self.leases: dict[str, OwnerLease] = {}
        self.applied_index = 0
        self.max_results = max_results
        self.max_clients = max_clients

    # ---- applying the log ----------------------------------------------------------

    def apply_entry(self, index: int, data: bytes) -> list[list[OpResult]]:
        """Apply one committed entry; per proposal, per operation, the results."""
        self._advance_to(index)
        if not data:
            return []  # a new leader's no-op
        try:
            proposals = decode_batch(data)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            # every replica decodes the same bytes the same way, so skipping stays in step
            raise ValueError(f"log entry {index} is not a batch of proposals: {exc}") from exc
        return [self._apply_proposal(index, proposal) for proposal in proposals]

    def skip(self, index: int) -> None:
        """A configuration entry: nothing to apply, but the index is consumed."""
        self._advance_to(index)

    def _advance_to(self, index: int) -> None:
        if index != self.applied_index + 1:
            raise ValueError(f"applying index {index} after {self.applied_index}: out of order")
        self.applied_index = index

    def _apply_proposal(self, index: int, proposal: Proposal) -> list[OpResult]:
        session = self.sessions.get(proposal.client)
        if session is None:
            if proposal.acked > 1:
                return [self._expired(proposal.client)] * len(proposal.ops)
            session = self.sessions[proposal.client] = Session()
        results = [
            self._apply_once(session, proposal.client, rid, op)
            for rid, op in zip(proposal.request_ids, proposal.ops, strict=True)
        ]
        session.last_index = index
        self._forget(session, proposal.acked)
        self._evict_clients()
        return results

    def _apply_once(self, session: Session, client: str, rid: int, op: Operation) -> OpResult:
        if rid < session.floor:
            return op_error(
                TIMEOUT,
                f"request {rid} of {client} is older than the answers this group keeps; "
                "its outcome is unknown",
            )
        cached = session.results.get(rid)
        if cached is not None:
            return _unpack_answer(cached)
        result = self._run_owned(op) if "owner" in op else self._run(op)
        session.results[rid] = _pack_answer(result)
        return result

    # ---- requests retried by the portals ----------------------------------------------

    def _run_request(self, op: Operation) -> OpResult:
        """Apply a write carrying a portal's request id at most once across owners: a
        portal that hears nothing retries through another cache node, which proposes
        the same `req` afresh; the repeat gets the first result, marked `repeat`."""
        req = op.get("req")
        if req is None:
            return self._run(op)
        seen = self.requests.get(req)
        if seen is not None:
            return {**_unpack_answer(seen), "repeat": True}
        result = self._run(op)
        self.requests[req] = _pack_answer(result)
        if len(self.requests) > MAX_REQUESTS:
            self.requests.popitem(last=False)  # the oldest in log order: every replica agrees
        return result

    # ---- ownership -------------------------------------------------------------------

    def _run_owned(self, op: Operation) -> OpResult:
        name, owner = op.get("op"), op["owner"]
        if name == "claim":
            return self._claim(op["cid"], owner)
        if name == "renew":
            return self._renew(owner)
        cid = op.get("cid")
        holder = None if cid is None else self.owners.get(cid)
        if holder != owner:
            result = op_error(
                UNAVAILABLE,
                f"not applied: cache node {holder or 'none'} owns this key, not {owner}",
            )
            result["fenced"] = True
            return result
        return self._run_request(op)

    def _claim(self, cid: int, owner: str) -> OpResult:
        previous = self.owners.get(cid)
        self.owners[cid] = owner
        if previous is not None and previous != owner:
            lease = self.leases.get(previous)
            if lease is not None and lease.revoked is not None:
                lease.revoked.add(cid)
                if len(lease.revoked) > MAX_REVOKED:
                    lease.revoked = None
        mine = self._lease(owner, register_as=None)
        if mine.revoked is not None:
            mine.revoked.discard(cid)  # taken back before it heard it was taken
        exported = self.kv.export_keys([cid])
        # The index rides in the result, so an answer repeated from the table keeps it.
        key = exported[0] if exported else None
        return op_ok({"key": key, "previous": previous, "index": self.applied_index})

    def _renew(self, owner: str) -> OpResult:
        lease = self.leases.get(owner)
        revoked = None if lease is None or lease.revoked is None else sorted(lease.revoked)
        self._lease(owner, register_as=set()).revoked = set()
        return op_ok({"revoked": revoked, "index": self.applied_index})

    def _lease(self, owner: str, register_as: set[int] | None) -> OwnerLease:
        """The owner's lease record, made if missing (an unknown owner that claims must
        hear "all revoked" on its first renewal: its earlier record may have been forgotten)."""
        lease = self.leases.get(owner)
        if lease is None:
            lease = self.leases[owner] = OwnerLease(register_as)
        lease.last_index = self.applied_index
        excess = len(self.leases) - MAX_OWNERS
        if excess > 0:
            others = (o for o in self.leases if o != owner)
            oldest = sorted(others, key=lambda o: (self.leases[o].last_index, o))
            for name in oldest[:excess]:
                del self.leases[name]
        return lease

    def _run(self, op: Operation) -> OpResult:
        return apply_op(self.kv, op)

    def _forget(self, session: Session, acked: int) -> None:
        floor = max(session.floor, acked)
        if len(session.results) > self.max_results:
            kept = sorted(session.results)[-self.max_results :]
            floor = max(floor, kept[0])
        if floor != session.floor:
            session.floor = floor
            session.results = {rid: r for rid, r in session.results.items() if rid >= floor}

    def _evict_clients(self) -> None:
        excess = len(self.sessions) - self.max_clients
        if excess > 0:
            oldest = sorted(self.sessions, key=lambda c: (self.sessions[c].last_index, c))
            for client in oldest[:excess]:
                del self.sessions[client]

    def _expired(self, client: str) -> OpResult:
        result = op_error(
            TIMEOUT,
            f"this group no longer remembers client {client}; the outcome of its "
            "earlier requests is unknown; continue under a new client id",
        )
        result["expired"] = True
        return result

    # ---- answering -------------------------------------------------------------------

    def lookup(self, client: str, rid: int) -> tuple[str, OpResult | None]:
        """Whether request `rid` of `client` was applied, and its result if it was."""
        session = self.sessions.get(client)
        if session is None or rid < session.floor:
            return Outcome.UNKNOWN, None
        result = session.results.get(rid)
        if result is None:
            return Outcome.NOT_APPLIED, None
        return Outcome.APPLIED, _unpack_answer(result)

    def read(self, op: Operation) -> OpResult:
        """Answer a read-only operation from the applied state."""
        name = op.get("op")
        if name == "load_keys":
            return op_ok({"keys": self.kv.export_keys(list(op["cids"]))})
        if name == "clients_after":
            records = self.kv.clients_after(op["after"], op["limit"])
            return op_ok({"clients": [record_to_wire(r) for r in records]})
        if name not in READ_OPS:
            return op_error(BAD_REQUEST, f"{name!r} is not a read operation")
        return self._run(op)

    # ---- snapshots -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        state = {
            "version": SNAPSHOT_VERSION,
            "applied": self.applied_index,
            "keys": [key_to_wire(cid, key) for cid, key in self.kv.keys.items()],
            "owners": list(self.owners.items()),
            "leases": [[owner, lease.to_wire()] for owner, lease in self.leases.items()],
            "requests": list(self.requests.items()),
            "sessions": [[client, s.to_wire()] for client, s in self.sessions.items()],
        }
        return msgpack.packb(state, use_bin_type=True)

    @classmethod
    def restore(
        cls,
        data: bytes,
        max_results: int = MAX_RESULTS_PER_CLIENT,
        max_clients: int = MAX_CLIENTS,
    ) -> ReplicaStateMachine:
        """The state machine `snapshot()` described; empty bytes give an empty one."""
        machine = cls(max_results, max_clients)
        if not data:
            return machine
        try:
            machine._load(data)
        except (ValueError, TypeError, KeyError, AttributeError, msgpack.ExtraData) as exc:
            raise ValueError(f"not a replica state machine snapshot: {exc}") from exc
        return machine

    def _load(self, data: bytes) -> None:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if state.get("version") not in (1, 2, SNAPSHOT_VERSION):
            raise ValueError(f"unknown snapshot version {state.get('version')!r}")
        self.applied_index = state["applied"]
        self.kv.keys = dict(key_from_wire(item) for item in state["keys"])
        self.owners = {cid: owner for cid, owner in state.get("owners", [])}
        self.leases = {o: OwnerLease.from_wire(v) for o, v in state.get("leases", [])}
        self.requests = OrderedDict((r, _packed(v)) for r, v in state.get("requests", []))
        self.sessions = {c: Session.from_wire(s) for c, s in state["sessions"]}


# Answers are kept packed: tens of thousands of small maps that live for minutes are what
# Python's cyclic collector would otherwise walk again and again (pauses of 50-80 ms under
# load), while bytes are not tracked at all. Unpacking is for the rare repeat.
def _pack_answer(result: OpResult) -> bytes:
    return msgpack.packb(result, use_bin_type=True)


def _unpack_answer(packed: bytes) -> OpResult:
    result: OpResult = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    return result


def _packed(value: Any) -> bytes:
    """An answer from a snapshot: packed since version 3, a map before."""
    return value if isinstance(value, bytes) else _pack_answer(value)
