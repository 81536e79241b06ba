"""Messages between portals and cache nodes, and between cache nodes beyond Chord's own.

Every message is a msgpack map with a type field `t`. Chord's maintenance and
routing messages (backend/core/chord/messages.py) travel on the same per-host topic;
the types below never collide with Chord's.

    request   portal -> any cache node's topic: run `op` on the owner of `key`
              {"t": "request", "corr", "reply_to", "key": int, "op": {...}, "trace": bool}
              The op is a backend/core/model/kv.py operation whose "cid" equals `key`.
              The request rides inside a Chord lookup as its payload until it
              reaches the owner; corr and reply_to ride in the lookup's token, so
              together they must stay under 500 characters (else bad_request).
              A node that cannot route it answers unavailable (not applied).
    reply     owner -> reply_to
              {"t": "reply", "corr", "ok": bool, "result": {...}|None,
               "error": {"code", "message"}|None, "route": [host ids], "owner": host id,
               "hops": int}
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


def request(corr: str, reply_to: str, key: int, op: dict[str, Any], trace: bool) -> dict[str, Any]:
    return {"t": REQUEST, "corr": corr, "reply_to": reply_to, "key": key, "op": op, "trace": trace}


def reply_ok(
    corr: str, result: dict[str, Any], route: list[str], owner: str, hops: int
) -> dict[str, Any]:
    return {
        "t": REPLY,
        "corr": corr,
        "ok": True,
        "result": result,
        "error": None,
        "route": route,
        "owner": owner,
        "hops": hops,
    }


def reply_error(
    corr: str, code: str, message: str, route: list[str] | None = None, owner: str = ""
) -> dict[str, Any]:
    return {
        "t": REPLY,
        "corr": corr,
        "ok": False,
        "result": None,
        "error": {"code": code, "message": message},
        "route": route or [],
        "owner": owner,
        "hops": 0,
    }


def scan(corr: str, reply_to: str, after: int, limit: int) -> dict[str, Any]:
    return {"t": SCAN, "corr": corr, "reply_to": reply_to, "after": after, "limit": limit}


def handover(
    from_host: str, keys: list[Any], hid: str = "", arcs: list[list[int]] | None = None
) -> dict[str, Any]:
    return {"t": HANDOVER, "from": from_host, "keys": keys, "id": hid, "arcs": arcs or []}


def handover_ack(from_host: str, hid: str) -> dict[str, Any]:
    return {"t": HANDOVER_ACK, "from": from_host, "id": hid}


def announce(host: str, incarnation: str, member: bool, positions: list[int]) -> dict[str, Any]:
    return {
        "t": ANNOUNCE,
        "host": host,
        "incarnation": incarnation,
        "member": member,
        "positions": positions,
    }


def host_gone(host: str, incarnation: str) -> dict[str, Any]:
    return {"t": HOST_GONE, "host": host, "incarnation": incarnation}


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


# ---- checks on what arrives -------------------------------------------------------------


def check_request(message: dict[str, Any]) -> None:
    """Raise ValueError naming the first malformed field of a request."""
    _text(message, "corr")
    _text(message, "reply_to")
    if not is_position(message.get("key")):
        raise ValueError("request key must be a ring position")
    if not isinstance(message.get("op"), dict) or not isinstance(message["op"].get("op"), str):
        raise ValueError("request op must be a map naming an operation")


def check_scan(message: dict[str, Any]) -> None:
    _text(message, "corr")
    _text(message, "reply_to")
    after, limit = message.get("after"), message.get("limit")
    if not isinstance(after, int) or after < -1 or after >= 1 << 64:
        raise ValueError("scan after must be -1 or a CID")
    if not isinstance(limit, int) or not 0 < limit <= MAX_SCAN_LIMIT:
        raise ValueError(f"scan limit must be 1 to {MAX_SCAN_LIMIT}")


def check_announce(message: dict[str, Any]) -> None:
    _text(message, "host")
    _text(message, "incarnation")
    positions = message.get("positions")
    if not isinstance(positions, list) or not all(is_position(p) for p in positions):
        raise ValueError("announce positions must be a list of ring positions")


def check_host_gone(message: dict[str, Any]) -> None:
    _text(message, "host")
    _text(message, "incarnation")


def check_handover(message: dict[str, Any]) -> None:
    """Raise ValueError naming the first malformed field of a handover (keys are checked
    one by one as they are imported)."""
    _text(message, "from")
    _text(message, "id")
    if not isinstance(message.get("keys"), list):
        raise ValueError("handover keys must be a list")
    arcs = message.get("arcs", [])
    if not isinstance(arcs, list) or not all(
        isinstance(a, list) and len(a) == 2 and all(is_position(p) for p in a) for a in arcs
    ):
        raise ValueError("handover arcs must be a list of [start, end] ring positions")


def check_handover_ack(message: dict[str, Any]) -> None:
    _text(message, "from")
    _text(message, "id")


def check_reply(message: dict[str, Any]) -> None:
    _text(message, "corr")
    ok = message.get("ok")
    if not isinstance(ok, bool):
        raise ValueError("reply ok must be a boolean")
    if ok and not isinstance(message.get("result"), dict):
        raise ValueError("a reply with ok must carry a result map")
    error = message.get("error")
    if not ok and not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        raise ValueError("a reply without ok must carry an error map of code and message")
    route = message.get("route", [])
    if not isinstance(route, list) or not all(isinstance(h, str) for h in route):
        raise ValueError("reply route must be a list of host ids")
    if not isinstance(message.get("owner", ""), str):
        raise ValueError("reply owner must be a host id")


def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValueError(f"{name} must be text of 1 to 512 characters")
    return value
