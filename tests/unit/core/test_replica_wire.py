"""The replica groups' messages: the maps on the wire, key for key and in order, and
the one decoder of each kind."""

from __future__ import annotations

from typing import Any

import pytest

from backend.core.codec import pack, unpack
from backend.core.replica import wire

REPLY = "taskring/v1/raft/g1/reply/x"
OP = {"op": "list_tasks", "cid": 1}
RESULT = {"ok": True, "result": {"tasks": []}, "events": []}


def items(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return list(message.items())  # key order is part of the bytes msgpack writes


def test_every_kind_makes_the_same_map_as_before() -> None:
    raft = wire.RaftBatch("g1", [{"kind": "append"}]).to_wire()
    assert items(raft) == [("t", "raft"), ("group", "g1"), ("msgs", [{"kind": "append"}])]
    propose = wire.Propose("c1", REPLY, "cl", 5, 2, [OP]).to_wire()
    assert items(propose) == [
        ("t", "propose"),
        ("corr", "c1"),
        ("reply_to", REPLY),
        ("client", "cl"),
        ("request", 5),
        ("acked", 2),
        ("ops", [OP]),
    ]
    read = wire.Read("r1", REPLY, [OP]).to_wire()
    assert items(read) == [("t", "read"), ("corr", "r1"), ("reply_to", REPLY), ("ops", [OP])]
    ok = wire.AnswerOk(wire.PROPOSED, "c1", "g1", 2, 9, [RESULT]).to_wire()
    assert items(ok) == [
        ("t", "proposed"),
        ("corr", "c1"),
        ("group", "g1"),
        ("member", 2),
        ("ok", True),
        ("index", 9),
        ("results", [RESULT]),
    ]
    error = wire.AnswerError(wire.READ_RESULT, "r1", "g1", 2, "unavailable", "no", None)
    assert items(error.to_wire()) == [
        ("t", "read_result"),
        ("corr", "r1"),
        ("group", "g1"),
        ("member", 2),
        ("ok", False),
        ("error", {"code": "unavailable", "message": "no"}),
        ("leader", None),
    ]


def test_every_kind_decodes_what_it_encodes() -> None:
    raft = wire.RaftBatch("g1", [{"kind": "append"}])
    assert wire.RaftBatch.from_wire(raft.to_wire()) == raft
    propose = wire.Propose("c1", REPLY, "cl", 5, 2, [OP])
    assert wire.Propose.from_wire(propose.to_wire()) == propose
    read = wire.Read("r1", REPLY, [OP])
    assert wire.Read.from_wire(read.to_wire()) == read
    ok = wire.AnswerOk(wire.READ_RESULT, "r1", "g1", 2, 9, [RESULT])
    assert wire.AnswerOk.from_wire(ok.to_wire(), 1) == ok
    assert wire.answer_from_wire(pack_round_trip(ok.to_wire())) == ok
    error = wire.AnswerError(wire.PROPOSED, "c1", "g1", 2, "timeout", "maybe", 3)
    assert wire.AnswerError.from_wire(error.to_wire()) == error


def pack_round_trip(message: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = unpack(pack(message))
    return decoded


def test_a_propose_with_an_address_is_answerable_and_one_without_is_not() -> None:
    good = wire.Propose("c1", REPLY, "cl", 5, 2, [OP]).to_wire()
    with pytest.raises(wire.BadRequest, match="request") as raised:
        wire.Propose.from_wire({**good, "request": 0})
    assert (raised.value.corr, raised.value.reply_to) == ("c1", REPLY)
    with pytest.raises(ValueError, match="reply_to") as dropped:
        wire.Read.from_wire({**wire.Read("r1", REPLY, [OP]).to_wire(), "reply_to": ""})
    assert not isinstance(dropped.value, wire.BadRequest)


def test_a_raft_batch_needs_a_list_of_messages() -> None:
    with pytest.raises(ValueError, match="msgs is not a list"):
        wire.RaftBatch.from_wire({"t": "raft", "group": "g1", "msgs": {}})


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"corr": ""}, "corr"),
        ({"ok": 1}, "ok must be true or false"),
        ({"member": -1}, "member"),
        ({"leader": "2"}, "leader"),
        ({"index": True}, "index"),
        ({"group": 7}, "group"),
        ({"results": []}, "results must be a list of 1 op results"),
        ({"results": [{"ok": True}]}, "result map"),
        ({"results": [{"ok": False, "error": "x"}]}, "error map"),
        ({"ok": False}, "error must be a map"),
    ],
)
def test_a_malformed_answer_is_refused_naming_the_field(
    changes: dict[str, Any], complaint: str
) -> None:
    ok = wire.AnswerOk(wire.PROPOSED, "c1", "g1", 2, 9, [RESULT]).to_wire()
    with pytest.raises(ValueError, match=complaint):
        wire.answer_from_wire({**ok, **changes}, 1)


def test_an_answer_may_leave_out_group_member_and_index() -> None:
    answer = wire.answer_from_wire({"t": "proposed", "corr": "c1", "ok": True, "results": []})
    assert answer == wire.AnswerOk(wire.PROPOSED, "c1", None, None, None, [])
