"""The ring's messages: each kind's map is the one on the wire, and decodes back."""

from __future__ import annotations

from typing import Any

import pytest

from backend.core.ring import wire

OP = {"op": "list_tasks", "cid": 7}


def test_each_kind_is_the_map_on_the_wire() -> None:
    assert wire.Request("c", "r", 7, OP, True).to_wire() == {
        "t": "request", "corr": "c", "reply_to": "r", "key": 7, "op": OP, "trace": True
    }  # fmt: skip
    assert wire.Reply.success("c", {"x": 1}, ["a"], "a", 2).to_wire() == {
        "t": "reply", "corr": "c", "ok": True, "result": {"x": 1}, "error": None,
        "route": ["a"], "owner": "a", "hops": 2,
    }  # fmt: skip
    assert wire.Reply.failure("c", "exists", "there").to_wire() == {
        "t": "reply", "corr": "c", "ok": False, "result": None,
        "error": {"code": "exists", "message": "there"}, "route": [], "owner": "", "hops": 0,
    }  # fmt: skip
    assert wire.Reply.failure("c", "x", "y", group="g1").to_wire()["group"] == "g1"
    assert wire.Scan("c", "r", -1, 10).to_wire() == {
        "t": "scan", "corr": "c", "reply_to": "r", "after": -1, "limit": 10
    }  # fmt: skip
    assert wire.Handover("a", [], "a/1").to_wire() == {
        "t": "handover", "from": "a", "keys": [], "id": "a/1", "arcs": []
    }  # fmt: skip
    assert wire.HandoverAck("b", "a/1").to_wire() == {"t": "handover_ack", "from": "b", "id": "a/1"}
    assert wire.Announce("a", "i", True, [5]).to_wire() == {
        "t": "announce", "host": "a", "incarnation": "i", "member": True, "positions": [5]
    }  # fmt: skip
    assert wire.Announce("a", "i", True, [5], False).to_wire()["durable"] is False
    assert wire.HostGone("a", "i").to_wire() == {"t": "host_gone", "host": "a", "incarnation": "i"}


@pytest.mark.parametrize(
    "message",
    [
        wire.Request("c", "r", 7, OP, True),
        wire.Reply.success("c", {"x": 1}, ["a"], "a", 2),
        wire.Reply.failure("c", "exists", "there", ["a"], "a", 1, "g1"),
        wire.Scan("c", "r", 3, 10),
        wire.Handover("a", [["k"]], "a/1", [[1, 2]]),
        wire.HandoverAck("b", "a/1"),
        wire.Announce("a", "i", False, [5, 9], True),
        wire.HostGone("a", "i"),
    ],
)
def test_each_kind_decodes_to_itself(message: Any) -> None:
    assert type(message).from_wire(message.to_wire()) == message


@pytest.mark.parametrize(
    ("kind", "message", "problem"),
    [
        (wire.Request, {"corr": "c", "reply_to": "r", "key": -1, "op": OP}, "key"),
        (wire.Request, {"corr": "c", "reply_to": "r", "key": 7, "op": {}}, "op"),
        (wire.Request, {"corr": "", "reply_to": "r", "key": 7, "op": OP}, "corr"),
        (wire.Reply, {"corr": "c", "ok": True}, "result"),
        (wire.Reply, {"corr": "c", "ok": False, "error": {"code": 1}}, "error"),
        (wire.Reply, {"corr": "c", "ok": True, "result": {}, "route": [1]}, "route"),
        (wire.Reply, {"corr": "c", "ok": True, "result": {}, "owner": 1}, "owner"),
        (wire.Scan, {"corr": "c", "reply_to": "r", "after": -2, "limit": 1}, "after"),
        (wire.Scan, {"corr": "c", "reply_to": "r", "after": -1, "limit": 10_001}, "limit"),
        (wire.Handover, {"from": "a", "id": "h", "keys": {}}, "keys"),
        (wire.Handover, {"from": "a", "id": "h", "keys": [], "arcs": [[1]]}, "arcs"),
        (wire.HandoverAck, {"from": "a"}, "id"),
        (wire.Announce, {"host": "a", "incarnation": "i", "positions": ["x"]}, "positions"),
        (wire.HostGone, {"host": "a" * 513, "incarnation": "i"}, "host"),
    ],
)
def test_a_malformed_message_names_what_is_wrong(
    kind: Any, message: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        kind.from_wire(message)
