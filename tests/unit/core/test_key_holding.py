"""The two ways a cache node holds keys (backend/core/ring/key_holding.py), each on its own:
both offer the whole KeyHolding interface, memory answers at once and moves keys by
handover, replica groups answer later and move nothing."""

from __future__ import annotations

from typing import Any

from backend.core import topics
from backend.core.drops import Drops
from backend.core.errors import BAD_REQUEST
from backend.core.model.kv import KeyValueState
from backend.core.ring import wire
from backend.core.ring.jobs import Job
from backend.core.ring.key_holding import HANDOVER_TOKEN, KeyHolding, MemoryKeys, ReplicatedKeys
from tests.unit.core.durable_harness import Groups
from tests.unit.core.test_cache_core import create, insert

CID = 0x1234_5678_9ABC_DEF0


def memory() -> MemoryKeys:
    return MemoryKeys("n1", "i", KeyValueState(), cold_wait=2.0, drops=Drops("n1"))


def replicated() -> ReplicatedKeys:
    groups = Groups(["g1", "g2"]).members
    return ReplicatedKeys("n1", "i", groups, KeyValueState(), 0.0, Drops("n1"))


def job(op: dict[str, Any]) -> Job:
    return Job("context", op, 0.0)


def test_both_holdings_offer_the_whole_interface() -> None:
    wanted = {
        name
        for name in vars(KeyHolding)
        if not name.startswith("_") and name not in ("durable", "arrived", "imported")
    }
    for holding in (memory(), replicated()):
        assert not wanted - set(dir(holding)), type(holding).__name__
        assert holding.arrived is False and holding.imported is False
    typed: list[KeyHolding] = [memory(), replicated()]
    assert [h.durable for h in typed] == [False, True]


def test_memory_answers_at_once_and_a_malformed_create_leaves_no_key() -> None:
    keys = memory()
    answer = keys.submit(CID, job(create(CID, "alice")))
    assert answer is not None and answer.result["ok"] and answer.group == ""
    assert CID in keys.state.keys
    other = CID + 1
    bad = {**create(other, "bob"), "token_hash": "not bytes"}
    answer = keys.submit(other, job(bad))
    assert answer is not None and answer.result["error"]["code"] == BAD_REQUEST
    assert other not in keys.state.keys


def test_memory_sweeps_strays_to_their_owner_and_takes_them_back_if_the_lookup_fails() -> None:
    keys = memory()
    keys.submit(CID, job(create(CID, "alice")))
    keys.submit(CID, job(insert(CID, "t")))
    (lookup,) = keys.sweep(lambda _cid: False, now=1.0)
    assert lookup.key == CID and lookup.token.startswith(HANDOVER_TOKEN)
    assert lookup.payload["t"] == wire.HANDOVER and CID not in keys.state.keys
    assert keys.moving == 1 and keys.must_wait(CID, position=0, now=1.0)
    keys.lookup_dropped(lookup.token[len(HANDOVER_TOKEN) :])
    assert set(keys.state.keys[CID].tasks) == {"t"}, "taken back whole"
    assert keys.moving == 0 and keys.imported and keys.arrived


def test_memory_takes_a_handover_once_and_acknowledges_every_copy() -> None:
    giver = memory()
    giver.submit(CID, job(create(CID, "alice")))
    handed = giver.state.export_keys([CID])
    keys = memory()
    message = wire.Handover("n2", handed, "n2/x/1", [[1, 2]])
    ack = [(topics.ring_host("n2"), wire.HandoverAck("n1", "n2/x/1").to_wire())]
    assert [(s.topic, s.message) for s in keys.handover(message, 0.0)] == ack
    del keys.state.keys[CID]
    assert [(s.topic, s.message) for s in keys.handover(message, 0.0)] == ack
    assert CID not in keys.state.keys, "a redelivered handover is not applied again"


def test_replica_groups_answer_later_and_move_nothing() -> None:
    keys = replicated()
    assert keys.subscriptions() == [topics.raft_replies("n1", "i")]
    assert keys.submit(CID, job({"op": "nonsense", "cid": CID})) is None
    (finished,) = keys.take_finished()
    assert finished.result["error"]["code"] == BAD_REQUEST and keys.take_finished() == []
    assert not keys.must_wait(CID, position=0, now=0.0)
    giver = memory()
    giver.submit(CID, job(create(CID, "alice")))
    message = wire.Handover("n2", giver.state.export_keys([CID]), "n2/x/1")
    sends = keys.handover(message, 0.0)
    assert [(s.topic, s.message) for s in sends] == [
        (topics.ring_host("n2"), wire.HandoverAck("n1", "n2/x/1").to_wire())
    ]
    assert CID not in keys.durable_keys.state.keys, "memory holds only claimed keys"
    assert keys.arc_lost(1, 2, "n2", 0.0) == [] and keys.sweep(lambda _c: False, 0.0) == []
    assert keys.status() == {"durable": True, "groups": ["g1", "g2"]}
