"""The messages ring positions exchange, and their wire form (msgpack-friendly dicts).

Every message names its target position `dst` on the receiving cache node (None on a
Lookup means "route it from whichever of your positions is best") and, except Gone,
its sender `src`, a Peer: a ring position and the cache node that hosts it.
`to_wire()` gives a dict of str, int, bool, None and lists; `decode(wire)` turns
one back into a message and raises ValueError naming the first thing wrong.

Messages are treated as immutable once built: the simulator may deliver one object
twice to model duplication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

from backend.core.chord.ids import is_position

MAX_HOST_CHARS = 256
MAX_TOKEN_CHARS = 512
MAX_PEERS = 256  # successor lists and lookup routes on the wire
MAX_HOPS = 10_000


class Peer(NamedTuple):
    """A ring position and the cache node (host) that hosts it."""

    pos: int
    host: str


Wire = dict[str, Any]


# ---- validation helpers -------------------------------------------------------------


def _field(wire: Wire, name: str) -> Any:
    if name not in wire:
        raise ValueError(f"chord message lacks field {name!r}")
    return wire[name]


def _position(value: Any, name: str) -> int:
    if not is_position(value):
        raise ValueError(f"{name} must be a ring position (an int in [0, 2**64)), got {value!r}")
    return value


def _opt_position(value: Any, name: str) -> int | None:
    return None if value is None else _position(value, name)


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{name} must be text of at most {limit} characters")
    return value


def _count(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_HOPS:
        raise ValueError(f"{name} must be an int in [0, {MAX_HOPS}], got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _peer(value: Any, name: str) -> Peer:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a [position, host] pair, got {value!r}")
    host = _text(value[1], f"{name} host", MAX_HOST_CHARS)
    if not host:
        raise ValueError(f"{name} host must not be empty")
    return Peer(_position(value[0], f"{name} position"), host)


def _opt_peer(value: Any, name: str) -> Peer | None:
    return None if value is None else _peer(value, name)


def _peers(value: Any, name: str) -> tuple[Peer, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_PEERS:
        raise ValueError(f"{name} must be a list of at most {MAX_PEERS} peers")
    return tuple(_peer(item, name) for item in value)


def _peer_wire(peer: Peer | None) -> list[Any] | None:
    return None if peer is None else [peer.pos, peer.host]


def _peers_wire(peers: tuple[Peer, ...]) -> list[list[Any]]:
    return [[p.pos, p.host] for p in peers]


# ---- messages -----------------------------------------------------------------------


@dataclass(slots=True)
class StabilizeQuery:
    """Stabilize: "tell me your predecessor and your successor list"."""

    KIND: ClassVar[str] = "stabilize"
    dst: int
    src: Peer

    def to_wire(self) -> Wire:
        return {"t": self.KIND, "dst": self.dst, "src": _peer_wire(self.src)}

    @classmethod
    def from_wire(cls, wire: Wire) -> StabilizeQuery:
        return cls(_position(_field(wire, "dst"), "dst"), _peer(_field(wire, "src"), "src"))


@dataclass(slots=True)
class StabilizeReply:
    """The answer to StabilizeQuery; also what a joining position copies its list from."""

    KIND: ClassVar[str] = "stabilize_reply"
    dst: int
    src: Peer
    predecessor: Peer | None
    successors: tuple[Peer, ...]

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "src": _peer_wire(self.src),
            "predecessor": _peer_wire(self.predecessor),
            "successors": _peers_wire(self.successors),
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> StabilizeReply:
        return cls(
            _position(_field(wire, "dst"), "dst"),
            _peer(_field(wire, "src"), "src"),
            _opt_peer(_field(wire, "predecessor"), "predecessor"),
            _peers(_field(wire, "successors"), "successors"),
        )


@dataclass(slots=True)
class Notify:
    """Notify: "I believe I am your predecessor" (Zave's rectify runs on receipt)."""

    KIND: ClassVar[str] = "notify"
    dst: int
    src: Peer

    def to_wire(self) -> Wire:
        return {"t": self.KIND, "dst": self.dst, "src": _peer_wire(self.src)}

    @classmethod
    def from_wire(cls, wire: Wire) -> Notify:
        return cls(_position(_field(wire, "dst"), "dst"), _peer(_field(wire, "src"), "src"))


@dataclass(slots=True)
class Ping:
    """Check-predecessor's probe."""

    KIND: ClassVar[str] = "ping"
    dst: int
    src: Peer

    def to_wire(self) -> Wire:
        return {"t": self.KIND, "dst": self.dst, "src": _peer_wire(self.src)}

    @classmethod
    def from_wire(cls, wire: Wire) -> Ping:
        return cls(_position(_field(wire, "dst"), "dst"), _peer(_field(wire, "src"), "src"))


@dataclass(slots=True)
class Pong:
    KIND: ClassVar[str] = "pong"
    dst: int
    src: Peer

    def to_wire(self) -> Wire:
        return {"t": self.KIND, "dst": self.dst, "src": _peer_wire(self.src)}

    @classmethod
    def from_wire(cls, wire: Wire) -> Pong:
        return cls(_position(_field(wire, "dst"), "dst"), _peer(_field(wire, "src"), "src"))


@dataclass(slots=True)
class Lookup:
    """A request travelling to the owner of `key`, one hop at a time.

    `lid` names this attempt (unique per entry; hop acks and duplicate suppression use
    it), `token` is the caller's. `origin` is the position waiting for a LookupReply
    (joins, repairs, finger repairs) or None for a request the owner serves itself.
    `final` says the sender believes `dst` owns the key. `route` holds the positions
    that forwarded it so far; `payload` rides along untouched. `skip_origin` keeps the
    origin out of the routing: a position searching for its own successor must not
    be told that it is its own answer.
    """

    KIND: ClassVar[str] = "lookup"
    dst: int | None
    src: Peer | None
    key: int
    lid: str
    token: str
    origin: Peer | None
    hops: int
    route: tuple[Peer, ...]
    final: bool
    payload: Any = None
    skip_origin: bool = False

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "src": _peer_wire(self.src),
            "key": self.key,
            "lid": self.lid,
            "token": self.token,
            "origin": _peer_wire(self.origin),
            "hops": self.hops,
            "route": _peers_wire(self.route),
            "final": self.final,
            "payload": self.payload,
            "skip_origin": self.skip_origin,
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> Lookup:
        return cls(
            _opt_position(_field(wire, "dst"), "dst"),
            _opt_peer(_field(wire, "src"), "src"),
            _position(_field(wire, "key"), "key"),
            _text(_field(wire, "lid"), "lid", MAX_TOKEN_CHARS),
            _text(_field(wire, "token"), "token", MAX_TOKEN_CHARS),
            _opt_peer(_field(wire, "origin"), "origin"),
            _count(_field(wire, "hops"), "hops"),
            _peers(_field(wire, "route"), "route"),
            _flag(_field(wire, "final"), "final"),
            wire.get("payload"),
            _flag(wire.get("skip_origin", False), "skip_origin"),
        )


@dataclass(slots=True)
class LookupAck:
    """Hop `hops` of lookup `lid` arrived: the forwarder stops retrying it."""

    KIND: ClassVar[str] = "lookup_ack"
    dst: int
    src: Peer
    lid: str
    hops: int

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "src": _peer_wire(self.src),
            "lid": self.lid,
            "hops": self.hops,
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> LookupAck:
        return cls(
            _position(_field(wire, "dst"), "dst"),
            _peer(_field(wire, "src"), "src"),
            _text(_field(wire, "lid"), "lid", MAX_TOKEN_CHARS),
            _count(_field(wire, "hops"), "hops"),
        )


@dataclass(slots=True)
class LookupReply:
    """The owner `src` answers a lookup's origin, with its own successor list."""

    KIND: ClassVar[str] = "lookup_reply"
    dst: int
    src: Peer
    token: str
    successors: tuple[Peer, ...]

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "src": _peer_wire(self.src),
            "token": self.token,
            "successors": _peers_wire(self.successors),
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> LookupReply:
        return cls(
            _position(_field(wire, "dst"), "dst"),
            _peer(_field(wire, "src"), "src"),
            _text(_field(wire, "token"), "token", MAX_TOKEN_CHARS),
            _peers(_field(wire, "successors"), "successors"),
        )


@dataclass(slots=True)
class LeaveToSuccessor:
    """Graceful leave: "I am going; your predecessor is now `predecessor`"."""

    KIND: ClassVar[str] = "leave_to_successor"
    dst: int
    src: Peer
    predecessor: Peer | None

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "src": _peer_wire(self.src),
            "predecessor": _peer_wire(self.predecessor),
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> LeaveToSuccessor:
        return cls(
            _position(_field(wire, "dst"), "dst"),
            _peer(_field(wire, "src"), "src"),
            _opt_peer(_field(wire, "predecessor"), "predecessor"),
        )


@dataclass(slots=True)
class LeaveToPredecessor:
    """Graceful leave: "I am going; take my successor list as yours"."""

    KIND: ClassVar[str] = "leave_to_predecessor"
    dst: int
    src: Peer
    successors: tuple[Peer, ...]

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "src": _peer_wire(self.src),
            "successors": _peers_wire(self.successors),
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> LeaveToPredecessor:
        return cls(
            _position(_field(wire, "dst"), "dst"),
            _peer(_field(wire, "src"), "src"),
            _peers(_field(wire, "successors"), "successors"),
        )


@dataclass(slots=True)
class Gone:
    """Position `position` of cache node `host` is not in the ring (None: none of its
    positions is). Sent instead of an answer by a restarted, rejoining or departed
    position, so peers drop it at once instead of waiting for a timeout. `lid` and
    `hops` name the lookup hop it refuses ("" and 0 when it refuses no lookup).
    """

    KIND: ClassVar[str] = "gone"
    dst: int
    host: str
    position: int | None
    lid: str = ""
    hops: int = 0

    def to_wire(self) -> Wire:
        return {
            "t": self.KIND,
            "dst": self.dst,
            "host": self.host,
            "position": self.position,
            "lid": self.lid,
            "hops": self.hops,
        }

    @classmethod
    def from_wire(cls, wire: Wire) -> Gone:
        host = _text(_field(wire, "host"), "host", MAX_HOST_CHARS)
        if not host:
            raise ValueError("host must not be empty")
        return cls(
            _position(_field(wire, "dst"), "dst"),
            host,
            _opt_position(_field(wire, "position"), "position"),
            _text(_field(wire, "lid"), "lid", MAX_TOKEN_CHARS),
            _count(_field(wire, "hops"), "hops"),
        )


Message = (
    StabilizeQuery
    | StabilizeReply
    | Notify
    | Ping
    | Pong
    | Lookup
    | LookupAck
    | LookupReply
    | LeaveToSuccessor
    | LeaveToPredecessor
    | Gone
)


class MessageType(Protocol):
    """A message class, as decode() uses it."""

    def from_wire(self, wire: Wire) -> Message: ...


MESSAGE_TYPES: dict[str, MessageType] = {
    cls.KIND: cls
    for cls in (
        StabilizeQuery,
        StabilizeReply,
        Notify,
        Ping,
        Pong,
        Lookup,
        LookupAck,
        LookupReply,
        LeaveToSuccessor,
        LeaveToPredecessor,
        Gone,
    )
}


def decode(wire: object) -> Message:
    """A message from its wire dict; ValueError (naming the problem) on anything else."""
    if not isinstance(wire, dict):
        raise ValueError(f"a chord message must be a map, got {type(wire).__name__}")
    kind = wire.get("t")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown chord message type {kind!r}")
    return cls.from_wire(wire)


def sender_host(message: Message) -> str | None:
    """The cache node a message came from, if it says."""
    if isinstance(message, Gone):
        return message.host
    return None if message.src is None else message.src.host
