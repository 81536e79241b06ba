"""Ownership in the replicated state machine: cache nodes claim keys, renew a lease per
group, and the group refuses (fences) writes from anyone but a key's current owner.
Also the wire checks on the owner fields of claim, renew and owned writes."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from backend.adapters.random_secrets import new_salt
from backend.core.model.identity import hash_token
from backend.core.model.kv import key_to_wire
from backend.core.replica import state_machine, wire
from backend.core.replica.state_machine import Proposal, ReplicaStateMachine, encode_batch

CID = 0x9F86D081884C7D65
OTHER = 0x1234


def create(cid: int = CID, name: str = "alice") -> dict[str, Any]:
    salt = new_salt()
    return {
        "op": "create_client",
        "cid": cid,
        "name": name,
        "data": "",
        "created_at": 1,
        "token_salt": salt,
        "token_hash": hash_token("secret", salt),
    }


def insert(title: str, cid: int = CID, owner: str | None = None) -> dict[str, Any]:
    op = {"op": "insert_task", "cid": cid, "title": title, "description": f"about {title}"}
    if owner is not None:
        op["owner"] = owner
    return op


def claim(owner: object, cid: int = CID) -> dict[str, Any]:
    return {"op": "claim", "cid": cid, "owner": owner}


def renew(owner: object) -> dict[str, Any]:
    return {"op": "renew", "cid": 0, "owner": owner}


class Group:
    """A state machine fed one entry per call at consecutive indexes, as Raft would; each
    call is one proposal of `client`, numbered on from the client's last request id."""

    def __init__(self, machine: ReplicaStateMachine | None = None) -> None:
        self.machine = machine or ReplicaStateMachine()
        self.next_request: dict[str, int] = {}

    def run(self, client: str, *ops: dict[str, Any]) -> list[dict[str, Any]]:
        request = self.next_request.get(client, 1)
        self.next_request[client] = request + len(ops)
        return self.entry(Proposal(client, request, 1, ops))[0]

    def one(self, client: str, op: dict[str, Any]) -> dict[str, Any]:
        return self.run(client, op)[0]

    def entry(self, *proposals: Proposal) -> list[list[dict[str, Any]]]:
        index = self.machine.applied_index + 1
        return self.machine.apply_entry(index, encode_batch(proposals))

    def titles(self, cid: int = CID) -> list[str]:
        return list(self.machine.kv.keys[cid].tasks)


@pytest.fixture
def group() -> Group:
    g = Group()
    g.run("setup", create(), create(OTHER, "bob"))
    return g


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"] is True, result
    return result["result"]


# ---- claiming ----------------------------------------------------------------------------


def test_a_claim_of_an_unowned_key_returns_its_committed_state_and_no_previous_owner(
    group: Group,
) -> None:
    group.run("setup", insert("a"))
    result = ok(group.one("node-a", claim("a/1")))
    assert result["previous"] is None
    assert result["key"] == key_to_wire(CID, group.machine.kv.keys[CID])
    assert group.machine.owners[CID] == "a/1"


def test_a_claim_of_a_key_the_group_never_saw_returns_no_key() -> None:
    group = Group()
    result = ok(group.one("node-a", claim("a/1", cid=77)))
    assert result["key"] is None and result["previous"] is None
    assert group.machine.owners[77] == "a/1"


def test_a_claim_names_the_previous_owner_and_moves_the_key(group: Group) -> None:
    group.one("node-a", claim("a/1"))
    result = ok(group.one("node-b", claim("b/1")))
    assert result["previous"] == "a/1"
    assert group.machine.owners[CID] == "b/1"


def test_claiming_a_key_one_already_owns_names_oneself_and_revokes_nothing(
    group: Group,
) -> None:
    group.one("node-a", renew("a/1"))
    group.one("node-a", claim("a/1"))
    assert ok(group.one("node-a", claim("a/1")))["previous"] == "a/1"
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == []


# ---- fenced writes -----------------------------------------------------------------------


def test_the_owners_write_is_applied(group: Group) -> None:
    group.one("node-a", claim("a/1"))
    ok(group.one("node-a", insert("a", owner="a/1")))
    assert group.titles() == ["a"]


def test_a_write_from_a_node_that_does_not_own_the_key_is_fenced_and_not_applied(
    group: Group,
) -> None:
    group.one("node-a", claim("a/1"))
    group.one("node-b", claim("b/1"))
    result = group.one("node-a", insert("late", owner="a/1"))
    assert result["ok"] is False
    assert result["fenced"] is True
    assert result["error"]["code"] == "unavailable"
    assert "b/1" in result["error"]["message"]
    assert group.titles() == []


def test_an_owned_write_to_a_key_nobody_claimed_is_fenced(group: Group) -> None:
    result = group.one("node-a", insert("a", owner="a/1"))
    assert result["fenced"] is True
    assert "none" in result["error"]["message"]
    assert group.titles() == []


def test_a_write_without_an_owner_is_not_fenced(group: Group) -> None:
    group.one("node-b", claim("b/1"))
    ok(group.one("admin", insert("unowned")))
    assert group.titles() == ["unowned"]


def test_ownership_is_per_key(group: Group) -> None:
    group.one("node-a", claim("a/1", cid=CID))
    group.one("node-b", claim("b/1", cid=OTHER))
    ok(group.one("node-a", insert("a", cid=CID, owner="a/1")))
    assert group.one("node-a", insert("a", cid=OTHER, owner="a/1"))["fenced"] is True


def test_a_fenced_write_does_not_stop_the_rest_of_its_proposal(group: Group) -> None:
    group.one("node-b", claim("b/1", cid=OTHER))
    group.one("node-a", claim("a/1", cid=CID))
    results = group.run(
        "node-a", insert("x", cid=OTHER, owner="a/1"), insert("y", cid=CID, owner="a/1")
    )
    assert results[0]["fenced"] is True
    assert results[1]["ok"] is True
    assert group.titles(CID) == ["y"]


# ---- renewals and revoked lists ----------------------------------------------------------


def test_an_owner_unknown_to_the_group_hears_that_all_its_keys_are_revoked() -> None:
    group = Group()
    assert ok(group.one("node-a", renew("a/1")))["revoked"] is None


def test_an_owner_that_claimed_before_its_first_renewal_hears_all_revoked(group: Group) -> None:
    group.one("node-a", claim("a/1"))
    assert ok(group.one("node-a", renew("a/1")))["revoked"] is None
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == []


def test_a_renewal_lists_keys_claimed_from_the_owner_since_its_last_renewal_once(
    group: Group,
) -> None:
    group.one("node-a", renew("a/1"))
    group.one("node-a", claim("a/1", cid=CID))
    group.one("node-a", claim("a/1", cid=OTHER))
    group.one("node-b", claim("b/1", cid=OTHER))
    group.one("node-c", claim("c/1", cid=CID))
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == sorted([CID, OTHER])
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == []


def test_a_claim_revokes_only_from_the_previous_owner(group: Group) -> None:
    group.one("node-a", renew("a/1"))
    group.one("node-b", renew("b/1"))
    group.one("node-a", claim("a/1"))
    group.one("node-b", claim("b/1"))
    group.one("node-c", claim("c/1"))
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == [CID]
    assert ok(group.one("node-b", renew("b/1")))["revoked"] == [CID]


def test_a_key_its_owner_took_back_before_renewing_is_not_reported_revoked(
    group: Group,
) -> None:
    # Reporting it would make the owner drop a key it holds again in the group's log
    # order (durable_keys.py drops every listed key claimed before the renewal).
    group.one("node-a", renew("a/1"))
    group.one("node-a", claim("a/1"))
    group.one("node-b", claim("b/1"))
    group.one("node-a", claim("a/1"))
    assert group.machine.owners[CID] == "a/1"
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == []


def test_too_many_revoked_keys_become_all_revoked(
    group: Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_machine, "MAX_REVOKED", 2)
    group.one("node-a", renew("a/1"))
    for cid in (1, 2, 3):
        group.one("node-a", claim("a/1", cid=cid))
    for cid in (1, 2):
        group.one("node-b", claim("b/1", cid=cid))
    assert group.machine.leases["a/1"].revoked == {1, 2}
    group.one("node-b", claim("b/1", cid=3))
    assert group.machine.leases["a/1"].revoked is None
    assert ok(group.one("node-a", renew("a/1")))["revoked"] is None
    assert ok(group.one("node-a", renew("a/1")))["revoked"] == []


def test_owners_past_the_limit_are_forgotten_oldest_first_and_then_hear_all_revoked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_machine, "MAX_OWNERS", 2)
    group = Group()
    for name in ("a/1", "b/1", "c/1"):
        group.one(name, renew(name))
    assert sorted(group.machine.leases) == ["b/1", "c/1"]
    group.one("b/1", renew("b/1"))  # b is now the newest: d pushes out c
    group.one("d/1", renew("d/1"))
    assert sorted(group.machine.leases) == ["b/1", "d/1"]
    assert ok(group.one("a/1", renew("a/1")))["revoked"] is None  # and pushes out b
    assert sorted(group.machine.leases) == ["a/1", "d/1"]
    assert ok(group.one("d/1", renew("d/1")))["revoked"] == []


def test_a_forgotten_previous_owner_still_hears_all_revoked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_machine, "MAX_OWNERS", 1)
    group = Group()
    group.one("a/1", renew("a/1"))
    group.one("a/1", claim("a/1", cid=5))
    group.one("b/1", claim("b/1", cid=5))  # b's record pushes out a's
    assert list(group.machine.leases) == ["b/1"]
    assert ok(group.one("a/1", renew("a/1")))["revoked"] is None


def test_claims_and_renewals_keep_an_owner_fresh_in_log_order(group: Group) -> None:
    group.one("node-a", renew("a/1"))
    first = group.machine.leases["a/1"].last_index
    group.one("node-a", claim("a/1"))
    assert group.machine.leases["a/1"].last_index == first + 1
    assert group.machine.leases["a/1"].last_index == group.machine.applied_index


# ---- exactly once ------------------------------------------------------------------------


def test_a_retried_claim_is_answered_with_its_first_result_and_moves_nothing(
    group: Group,
) -> None:
    group.one("node-a", renew("a/1"))
    group.one("node-a", claim("a/1"))
    first = group.entry(Proposal("node-b", 1, 1, (claim("b/1"),)))[0][0]
    group.one("node-a", claim("a/1"))  # a takes it back
    again = group.entry(Proposal("node-b", 1, 1, (claim("b/1"),)))[0][0]
    assert again == first
    assert ok(again)["previous"] == "a/1"
    assert group.machine.owners[CID] == "a/1"


def test_a_retried_owned_write_is_applied_once(group: Group) -> None:
    group.one("node-a", claim("a/1"))
    write = Proposal("node-a", 10, 1, (insert("once", owner="a/1"),))
    first = group.entry(write)[0][0]
    again = group.entry(write)[0][0]
    assert again == first
    assert group.titles() == ["once"]


def test_a_retried_write_that_was_fenced_stays_fenced_even_after_the_owner_returns(
    group: Group,
) -> None:
    group.one("node-a", claim("a/1"))
    group.one("node-b", claim("b/1"))
    write = Proposal("node-a", 10, 1, (insert("late", owner="a/1"),))
    assert group.entry(write)[0][0]["fenced"] is True
    group.entry(Proposal("node-a", 11, 1, (claim("a/1"),)))
    assert group.entry(write)[0][0]["fenced"] is True
    assert group.titles() == []


def test_a_retried_renewal_repeats_its_revoked_list(group: Group) -> None:
    group.one("node-a", renew("a/1"))
    group.one("node-a", claim("a/1"))
    group.one("node-b", claim("b/1"))
    renewal = Proposal("node-a", 50, 1, (renew("a/1"),))
    first = group.entry(renewal)[0][0]
    assert ok(first)["revoked"] == [CID]
    assert group.entry(renewal)[0][0] == first


# ---- snapshots ---------------------------------------------------------------------------


def test_a_snapshot_restores_owners_and_leases(group: Group) -> None:
    group.one("node-a", renew("a/1"))
    group.one("node-a", claim("a/1"))
    group.one("node-b", claim("b/1"))  # a's revoked list: [CID]; b never renewed: None
    group.one("node-c", renew("c/1"))
    restored = ReplicaStateMachine.restore(group.machine.snapshot())
    assert restored.owners == group.machine.owners
    assert restored.leases == group.machine.leases
    again = Group(restored)
    again.next_request = dict(group.next_request)
    assert ok(again.one("node-a", renew("a/1")))["revoked"] == [CID]
    assert ok(again.one("node-b", renew("b/1")))["revoked"] is None
    assert ok(again.one("node-c", renew("c/1")))["revoked"] == []
    assert again.one("node-a", insert("x", owner="a/1"))["fenced"] is True
    ok(again.one("node-b", insert("x", owner="b/1")))


def test_a_version_1_snapshot_restores_with_no_owners_and_no_leases(group: Group) -> None:
    group.run("setup", insert("a"))
    state = msgpack.unpackb(group.machine.snapshot(), raw=False, strict_map_key=False)
    state["version"] = 1
    del state["owners"], state["leases"]
    restored = ReplicaStateMachine.restore(msgpack.packb(state, use_bin_type=True))
    assert restored.applied_index == group.machine.applied_index
    assert list(restored.kv.keys[CID].tasks) == ["a"]
    assert restored.owners == {}
    assert restored.leases == {}
    again = Group(restored)
    assert ok(again.one("node-a", renew("a/1")))["revoked"] is None
    assert ok(again.one("node-a", claim("a/1")))["previous"] is None


def test_a_snapshot_of_an_unknown_version_is_refused_with_a_clear_error() -> None:
    data = msgpack.packb({"version": 99, "applied": 0, "keys": [], "sessions": []})
    with pytest.raises(ValueError, match="unknown snapshot version 99"):
        ReplicaStateMachine.restore(data)


# ---- wire checks -------------------------------------------------------------------------


def propose(*ops: dict[str, Any]) -> dict[str, Any]:
    return wire.Propose("c1", "taskring/v1/raft/g1/reply/x", "x", 1, 1, list(ops)).to_wire()


def test_claim_renew_and_owned_writes_pass_the_wire_check() -> None:
    proposal = wire.Propose.from_wire(propose(claim("a/1"), renew("a/1"), insert("t", owner="a/1")))
    assert [op["op"] for op in proposal.ops] == ["claim", "renew", "insert_task"]


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        ({"op": "claim", "cid": CID}, "claim: owner must be str"),
        ({"op": "renew", "cid": 0}, "renew: owner must be str"),
        (claim(5), "claim: owner must be str"),
        (claim(b"a/1"), "claim: owner must be str"),
        (renew(["a/1"]), "renew: owner must be str"),
        (claim(""), "owner must be text of 1 to 256"),
        (claim("x" * 257), "owner must be text of 1 to 256"),
        (insert("t", owner=""), "insert_task: owner must be text"),
        ({**insert("t"), "owner": 7}, "insert_task: owner must be text"),
        ({**insert("t"), "owner": True}, "insert_task: owner must be text"),
        ({"op": "claim", "cid": -1, "owner": "a/1"}, "cid must be an integer"),
        ({"op": "claim", "cid": "1", "owner": "a/1"}, "cid must be an integer"),
    ],
)
def test_bad_owner_fields_are_refused_naming_the_field(op: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        wire.Propose.from_wire(propose(op))


def test_a_write_whose_owner_is_null_is_refused() -> None:
    # `owner: null` is neither an owner (it would pass the fence of a key nobody
    # owns) nor no owner (it is fenced on a key somebody owns).
    with pytest.raises(ValueError, match="owner"):
        wire.Propose.from_wire(propose({**insert("t"), "owner": None}))


def test_claim_and_renew_are_not_reads() -> None:
    for op in (claim("a/1"), renew("a/1")):
        with pytest.raises(ValueError, match="not a read operation"):
            wire.Read.from_wire(wire.Read("c1", "taskring/v1/raft/g1/reply/x", [op]).to_wire())


def test_a_read_naming_an_owner_is_refused_as_a_read() -> None:
    op = {"op": "get_client", "cid": CID, "owner": "a/1"}
    with pytest.raises(ValueError, match="not a read operation"):
        wire.Read.from_wire(wire.Read("c1", "taskring/v1/raft/g1/reply/x", [op]).to_wire())


# ---- writes a portal retried through another cache node --------------------------------


def test_a_portal_request_retried_through_a_new_owner_is_applied_once() -> None:
    group = Group()
    group.run("a", claim("a/1"), create())
    first = group.run("a", {**insert("x", owner="a/1"), "req": "portal/1/w7"})[0]
    assert first["ok"] and "repeat" not in first
    group.run("b", claim("b/1"))
    again = group.run("b", {**insert("x", owner="b/1"), "req": "portal/1/w7"})[0]
    assert again["ok"] and again["repeat"] is True  # not `exists`: nothing ran twice
    assert list(group.machine.kv.keys[CID].tasks) == ["x"]


def test_a_fenced_attempt_does_not_use_up_its_request_id() -> None:
    group = Group()
    group.run("a", claim("a/1"), create())
    group.run("b", claim("b/1"))
    refused = group.run("a", {**insert("x", owner="a/1"), "req": "portal/1/w8"})[0]
    assert refused.get("fenced") is True
    applied = group.run("b", {**insert("x", owner="b/1"), "req": "portal/1/w8"})[0]
    assert applied["ok"] and "repeat" not in applied


def test_request_ids_are_forgotten_oldest_first_and_survive_a_snapshot(monkeypatch) -> None:
    monkeypatch.setattr(state_machine, "MAX_REQUESTS", 2)
    group = Group()
    group.run("a", claim("a/1"), create())
    for n in range(3):
        group.run("a", {**insert(f"t{n}", owner="a/1"), "req": f"r{n}"})
    assert list(group.machine.requests) == ["r1", "r2"]
    restored = ReplicaStateMachine.restore(group.machine.snapshot())
    assert list(restored.requests) == ["r1", "r2"]


def test_a_version_2_snapshot_with_answers_as_maps_still_answers_repeats() -> None:
    group = Group()
    group.run("a", claim("a/1"), create())
    first = group.run("a", {**insert("x", owner="a/1"), "req": "r1"})[0]
    state = msgpack.unpackb(group.machine.snapshot(), raw=False, strict_map_key=False)
    state["version"] = 2
    state["requests"] = [[req, _unpacked(answer)] for req, answer in state["requests"]]
    for _client, session in state["sessions"]:
        session[2] = [[rid, _unpacked(answer)] for rid, answer in session[2]]
    restored = ReplicaStateMachine.restore(msgpack.packb(state, use_bin_type=True))
    assert restored.snapshot() == group.machine.snapshot()
    again = Group(restored)
    again.next_request = dict(group.next_request)
    repeat = again.run("a", {**insert("x", owner="a/1"), "req": "r1"})[0]
    assert repeat == {**first, "repeat": True}


def _unpacked(answer: bytes) -> dict:
    return msgpack.unpackb(answer, raw=False, strict_map_key=False)


def test_a_request_id_must_be_text() -> None:
    with pytest.raises(ValueError, match="req must be text"):
        wire.check_write_or_read_op({**insert("x"), "req": 7})
