"""Messages between portals and cache nodes, and between cache nodes beyond Chord's own.

One frozen dataclass per kind: `to_wire()` gives the map below, and `from_wire(map)`
is its one total decoder, raising ValueError naming the first malformed field.

Every message is a msgpack map with a type field `t`. Chord's maintenance and
routing messages (backend/core/chord/messages.py) travel on the same per-host topic;
the types below never collide with Chord's.

    request   portal -> any cache node's topic: run `op` on the owner of `key`
              {"t": "request", "corr", "reply_to", "key": int, "op": {...}, "trace": bool}
              The op is a backend/core/model/kv.py operation whose "cid" equals `key`.
              The request rides inside a Chord lookup as its payload until it
              reaches the owner; corr and reply_to ride in the lookup's token, so
              together, with a short prefix, they must fit its 512 characters
              (else bad_request).
              A node that cannot route it answers unavailable (not applied).
    reply     owner -> reply_to
              {"t": "reply", "corr", "ok": bool, "result": {...}|None,
               "error": {"code", "message"}|None, "route": [host ids], "owner": host id,
               "hops": int, "group": group id (durable mode only; else omitted)}
    scan      portal -> one cache node, directly: the clients it owns, in CID order
              {"t": "scan", "corr", "reply_to", "after": int (-1 for the start), "limit": int}
              answered by a reply whose result is {"clients": [record...], "host": id}
    handover  cache node -> cache node: keys whose owner is now the receiver
              {"t": "handover", "from": host id, "keys": [kv.key_to_wire(...)...],
               "id": text naming this handover, "arcs": [[start, end], ...]}
              Sent directly, or as the payload of a Chord lookup for one of its keys
              (routing then finds the owner). Each arc (start, end] in "arcs" is one the
              sender held no other keys in: a new owner waiting for that arc's keys
              stops waiting. The receiver keeps a key it already holds (its copy is the
              newer) and acknowledges with handover_ack; the sender keeps the keys
              aside until then and takes them back if no acknowledgement comes.
    handover_ack  receiver -> sender's host topic
              {"t": "handover_ack", "from": host id, "id": the handover's id}
    announce  cache node -> ANNOUNCE topic, twice a second
              {"t": "announce", "host", "incarnation", "member": bool, "positions": [int],
               "durable": bool (its keys live in replica groups; it answers scans for all)}
    host_gone cache node -> ANNOUNCE topic: that incarnation of the node is gone
              {"t": "host_gone", "host", "incarnation"}
              The node's MQTT last will, which the broker publishes the moment its
              connection drops (a crash closes the socket at once), and what it says
              itself just before a clean shutdown. Peers stop routing to it at once
              and portals retry what waits on it, rather than noticing the silence;
              one naming an incarnation other than the latest announced is stale.
    batch     anyone -> a cache node's host topic or a portal's reply topic: several of
              the messages above for the same topic in one MQTT message, in order
              {"t": "batch", "msgs": [message, ...]}   (at most MAX_BATCH, never nested)

Client change events are published by the owner on its own `ring_events(host)`
as the contract's event maps (Event.to_wire()), batched per turn like replies;
portals subscribe to them only while a connection watches a client. The
internal `{"event": "token_rotated", "cid"}` goes there too, in order with the
others, ending the watches granted to the old token before any later event
(it never reaches a client); it and each `client_deleted` also go to
`RING_CLIENT_CHANGES`, which every portal hears to forget cached authentications.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.core.chord.ids import is_position

REQUEST = "request"
REPLY = "reply"
SCAN = "scan"
HANDOVER = "handover"
HANDOVER_ACK = "handover_ack"
ANNOUNCE = "announce"
HOST_GONE = "host_gone"  # not "gone": that is Chord's own message type
TOKEN_ROTATED = "token_rotated"

BATCH = "batch"

MAX_SCAN_LIMIT = 10_000
MAX_BATCH = 1024


@dataclass(frozen=True, slots=True)
class Request:
    corr: str
    reply_to: str
    key: int
    op: dict[str, Any]
    trace: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": REQUEST,
            "corr": self.corr,
            "reply_to": self.reply_to,
            "key": self.key,
            "op": self.op,
            "trace": self.trace,
        }

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Request:
        corr = _text(message, "corr")
        reply_to = _text(message, "reply_to")
        key = message.get("key")
        if not is_position(key):
            raise ValueError("request key must be a ring position")
        op = message.get("op")
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise ValueError("request op must be a map naming an operation")
        return cls(corr, reply_to, key, op, message.get("trace") is True)


@dataclass(frozen=True, slots=True)
class Reply:
    """`ok` with a result map, or not with an error (`code`, `text`)."""

    corr: str
    ok: bool
    result: dict[str, Any] | None = None
    code: str = ""
    text: str = ""
    route: list[str] = field(default_factory=list)
    owner: str = ""
    hops: int = 0
    group: str = ""  # the replica group that applied it (durable mode); omitted if none

    @classmethod
    def success(
        cls,
        corr: str,
        result: dict[str, Any],
        route: list[str],
        owner: str,
        hops: int,
        group: str = "",
    ) -> Reply:
        return cls(corr, True, result, route=route, owner=owner, hops=hops, group=group)

    @classmethod
    def failure(
        cls,
        corr: str,
        code: str,
        text: str,
        route: list[str] | None = None,
        owner: str = "",
        hops: int = 0,
        group: str = "",
    ) -> Reply:
        return cls(corr, False, None, code, text, route or [], owner, hops, group)

    def to_wire(self) -> dict[str, Any]:
        message = {
            "t": REPLY,
            "corr": self.corr,
            "ok": self.ok,
            "result": self.result,
            "error": None if self.ok else {"code": self.code, "message": self.text},
            "route": self.route,
            "owner": self.owner,
            "hops": self.hops,
        }
        if self.group:
            message["group"] = self.group
        return message

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Reply:
        corr = _text(message, "corr")
        ok = message.get("ok")
        if not isinstance(ok, bool):
            raise ValueError("reply ok must be a boolean")
        result = message.get("result")
        if ok and not isinstance(result, dict):
            raise ValueError("a reply with ok must carry a result map")
        code = text = ""
        if not ok:
            error = message.get("error")
            if not (
                isinstance(error, dict)
                and isinstance(error.get("code"), str)
                and isinstance(error.get("message"), str)
            ):
                raise ValueError("a reply without ok must carry an error map of code and message")
            code, text = error["code"], error["message"]
        route = message.get("route", [])
        if not isinstance(route, list) or not all(isinstance(h, str) for h in route):
            raise ValueError("reply route must be a list of host ids")
        owner = message.get("owner", "")
        if not isinstance(owner, str):
            raise ValueError("reply owner must be a host id")
        # Neither is checked: only traces and logs read them.
        hops, group = message.get("hops"), message.get("group")
        return cls(
            corr,
            ok,
            result if ok else None,
            code,
            text,
            route,
            owner,
            hops if isinstance(hops, int) else 0,
            group if isinstance(group, str) else "",
        )


@dataclass(frozen=True, slots=True)
class Scan:
    corr: str
    reply_to: str
    after: int
    limit: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": SCAN,
            "corr": self.corr,
            "reply_to": self.reply_to,
            "after": self.after,
            "limit": self.limit,
        }

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Scan:
        corr = _text(message, "corr")
        reply_to = _text(message, "reply_to")
        after, limit = message.get("after"), message.get("limit")
        if not isinstance(after, int) or after < -1 or after >= 1 << 64:
            raise ValueError("scan after must be -1 or a CID")
        if not isinstance(limit, int) or not 0 < limit <= MAX_SCAN_LIMIT:
            raise ValueError(f"scan limit must be 1 to {MAX_SCAN_LIMIT}")
        return cls(corr, reply_to, after, limit)


@dataclass(frozen=True, slots=True)
class Handover:
    """`keys` are checked one by one as they are imported."""

    from_host: str
    keys: list[Any]
    id: str = ""
    arcs: list[list[int]] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": HANDOVER,
            "from": self.from_host,
            "keys": self.keys,
            "id": self.id,
            "arcs": self.arcs,
        }

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Handover:
        from_host = _text(message, "from")
        hid = _text(message, "id")
        keys = message.get("keys")
        if not isinstance(keys, list):
            raise ValueError("handover keys must be a list")
        arcs = message.get("arcs", [])
        if not isinstance(arcs, list) or not all(
            isinstance(a, list) and len(a) == 2 and all(is_position(p) for p in a) for a in arcs
        ):
            raise ValueError("handover arcs must be a list of [start, end] ring positions")
        return cls(from_host, keys, hid, arcs)


@dataclass(frozen=True, slots=True)
class HandoverAck:
    from_host: str
    id: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": HANDOVER_ACK, "from": self.from_host, "id": self.id}

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> HandoverAck:
        return cls(_text(message, "from"), _text(message, "id"))


@dataclass(frozen=True, slots=True)
class Announce:
    host: str
    incarnation: str
    member: bool
    positions: list[int]
    durable: bool | None = None  # None: not said (omitted from the map)

    def to_wire(self) -> dict[str, Any]:
        message = {
            "t": ANNOUNCE,
            "host": self.host,
            "incarnation": self.incarnation,
            "member": self.member,
            "positions": self.positions,
        }
        if self.durable is not None:
            message["durable"] = self.durable
        return message

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Announce:
        host = _text(message, "host")
        incarnation = _text(message, "incarnation")
        positions = message.get("positions")
        if not isinstance(positions, list) or not all(is_position(p) for p in positions):
            raise ValueError("announce positions must be a list of ring positions")
        return cls(
            host,
            incarnation,
            message.get("member") is True,
            positions,
            message.get("durable") is True,
        )


@dataclass(frozen=True, slots=True)
class HostGone:
    host: str
    incarnation: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": HOST_GONE, "host": self.host, "incarnation": self.incarnation}

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> HostGone:
        return cls(_text(message, "host"), _text(message, "incarnation"))


# ---- batches ------------------------------------------------------------------------------


def batch(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"t": BATCH, "msgs": messages}


def batched(outbox: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """What was queued per topic, as the messages to publish: one topic's messages in
    order, several as one batch (at most MAX_BATCH each), a lone one as itself."""
    out: list[tuple[str, dict[str, Any]]] = []
    for topic, messages in outbox.items():
        for start in range(0, len(messages), MAX_BATCH):
            chunk = messages[start : start + MAX_BATCH]
            out.append((topic, chunk[0] if len(chunk) == 1 else batch(chunk)))
    return out


def unbatch(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages a batch carries (a message that is not a batch: itself); ValueError
    if a batch is malformed."""
    if message.get("t") != BATCH:
        return [message]
    inner = message.get("msgs")
    if not isinstance(inner, list) or len(inner) > MAX_BATCH:
        raise ValueError(f"batch msgs must be a list of at most {MAX_BATCH} messages")
    for item in inner:
        if not isinstance(item, dict) or item.get("t") == BATCH:
            raise ValueError("a batch holds message maps, and no batches")
    return inner


def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValueError(f"{name} must be text of 1 to 512 characters")
    return value
