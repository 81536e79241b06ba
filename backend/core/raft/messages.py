"""The messages Raft servers exchange, and their wire form.

The RPCs of the Raft paper (Ongaro & Ousterhout 2014, Figure 2 and §5),
split into request and response messages as etcd's raft does, so each is
one one-way packet on the bus:

    AppendEntries / AppendResponse     log replication and heartbeats-with-entries (§5.3)
    Heartbeat / HeartbeatResponse      leader liveness, commit index, ReadIndex rounds (§6.4)
    RequestVote / VoteResponse         elections (§5.2) and pre-votes (dissertation §9.6)
    InstallSnapshot                    catch-up past the compacted log (§7), acknowledged
                                       by an AppendResponse
    TimeoutNow                         leadership transfer (dissertation §3.10)
    ReadIndexRequest / ReadIndexResponse   a follower asks the leader for a read index (§6.4)

Every message names its sender `src`, receiver `dst` and the sender's
`term`. `to_wire()` gives a plain map for msgpack; `message_from_wire()`
validates every field and raises ValueError on anything malformed.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from backend.core.raft.state import Entry, Snapshot
from backend.core.raft.wire import (
    field,
    want_bool,
    want_bytes,
    want_int,
    want_list,
    want_map,
    want_node_id,
)


class _WireMessage:
    """to_wire()/from_wire() shared by every message type."""

    __slots__ = ()
    KIND: ClassVar[str]
    # Declared (never set here) so that the type checker sees every subclass, each a
    # dataclass, as one; dataclasses.fields() then accepts a _WireMessage.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_wire(self) -> dict[str, Any]:
        return _fields_to_wire(self)

    @classmethod
    def from_wire(cls, value: Any) -> Any:
        message = message_from_wire(value)
        if not isinstance(message, cls):
            raise ValueError(f"expected a {cls.KIND} message, got {message.KIND}")
        return message


@dataclass(frozen=True, slots=True)
class AppendEntries(_WireMessage):
    KIND: ClassVar[str] = "append"
    src: int
    dst: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse(_WireMessage):
    """Success: the follower's log matches through `index`. Reject: `index` is the rejected
    prev_index, and (hint_index, hint_term) is where the follower suggests probing next."""

    KIND: ClassVar[str] = "append_resp"
    src: int
    dst: int
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote(_WireMessage):
    KIND: ClassVar[str] = "vote"
    src: int
    dst: int
    term: int  # for a pre-vote: the term the candidate would campaign in
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # leadership transfer: voters skip their leader lease


@dataclass(frozen=True, slots=True)
class VoteResponse(_WireMessage):
    KIND: ClassVar[str] = "vote_resp"
    src: int
    dst: int
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat(_WireMessage):
    KIND: ClassVar[str] = "heartbeat"
    src: int
    dst: int
    term: int
    commit: int
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse(_WireMessage):
    KIND: ClassVar[str] = "heartbeat_resp"
    src: int
    dst: int
    term: int
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot(_WireMessage):
    KIND: ClassVar[str] = "snapshot"
    src: int
    dst: int
    term: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow(_WireMessage):
    KIND: ClassVar[str] = "timeout_now"
    src: int
    dst: int
    term: int


@dataclass(frozen=True, slots=True)
class ReadIndexRequest(_WireMessage):
    KIND: ClassVar[str] = "read_index"
    src: int
    dst: int
    term: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse(_WireMessage):
    KIND: ClassVar[str] = "read_index_resp"
    src: int
    dst: int
    term: int
    index: int
    ctx: bytes


Message = (
    AppendEntries
    | AppendResponse
    | RequestVote
    | VoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)
_BY_KIND: dict[str, type[Message]] = {cls.KIND: cls for cls in MESSAGE_TYPES}


def _entries_from_wire(value: Any, what: str) -> tuple[Entry, ...]:
    entries = tuple(Entry.from_wire(item) for item in want_list(value, what))
    for before, after in itertools.pairwise(entries):
        if after.index != before.index + 1:
            raise ValueError(f"{what} are not consecutive ({before.index} then {after.index})")
    return entries


# Field names mean the same thing in every message type, so one decoder per name.
_DECODERS: dict[str, Callable[[Any, str], Any]] = {
    "src": want_node_id,
    "dst": want_node_id,
    "term": want_int,
    "prev_index": want_int,
    "prev_term": want_int,
    "commit": want_int,
    "index": want_int,
    "hint_index": want_int,
    "hint_term": want_int,
    "last_index": want_int,
    "last_term": want_int,
    "read_seq": want_int,
    "reject": want_bool,
    "granted": want_bool,
    "pre_vote": want_bool,
    "transfer": want_bool,
    "ctx": want_bytes,
    "entries": _entries_from_wire,
    "snapshot": lambda value, _what: Snapshot.from_wire(value),
}


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return [entry.to_wire() for entry in value]
    if isinstance(value, Snapshot):
        return value.to_wire()
    return value


def message_to_wire(message: Message) -> dict[str, Any]:
    return _fields_to_wire(message)


def _fields_to_wire(message: _WireMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"kind": message.KIND}
    for spec in dataclasses.fields(message):
        wire[spec.name] = _encode(getattr(message, spec.name))
    return wire


def message_from_wire(value: Any) -> Message:
    """Decode one message map; ValueError naming the bad field on anything malformed."""
    wire: Mapping[str, Any] = want_map(value, "raft message")
    kind = field(wire, "kind", "raft message")
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"raft message: unknown kind {kind!r}")
    what = f"raft {kind} message"
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in wire and spec.default is not dataclasses.MISSING:
            continue
        raw = field(wire, spec.name, what)
        values[spec.name] = _DECODERS[spec.name](raw, f"{what} field {spec.name!r}")
    message = cls(**values)
    if message.src == message.dst:
        raise ValueError(f"{what}: sender and receiver are both node {message.src}")
    return message
