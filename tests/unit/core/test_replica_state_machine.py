"""The replicated state machine: KeyValueState plus the answer table that makes a
retried request apply once; batches, bounds, snapshots, and the checks on proposals."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from backend.adapters.random_secrets import new_salt
from backend.core.model.identity import hash_token, token_matches
from backend.core.replica import wire
from backend.core.replica.state_machine import (
    Outcome,
    Proposal,
    ReplicaStateMachine,
    decode_batch,
    encode_batch,
)

CID = 0x9F86D081884C7D65


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


def insert(title: str, cid: int = CID) -> dict[str, Any]:
    return {"op": "insert_task", "cid": cid, "title": title, "description": f"about {title}"}


class Log:
    """Feeds a state machine entries at consecutive indexes, as Raft would."""

    def __init__(self, machine: ReplicaStateMachine | None = None) -> None:
        self.machine = machine or ReplicaStateMachine()

    def apply(self, *proposals: Proposal) -> list[list[dict[str, Any]]]:
        index = self.machine.applied_index + 1
        return self.machine.apply_entry(index, encode_batch(proposals))

    def titles(self, cid: int = CID) -> list[str]:
        return list(self.machine.kv.keys[cid].tasks)


def test_a_batch_applies_its_proposals_and_operations_in_order() -> None:
    log = Log()
    results = log.apply(
        Proposal("c1", 1, 1, (create(), insert("a"))),
        Proposal("c2", 1, 1, (insert("b"), insert("a"))),
    )
    assert [r["ok"] for r in results[0]] == [True, True]
    assert results[1][0]["ok"] is True
    assert results[1][1] == {
        "ok": False,
        "error": {"code": "exists", "message": "a task titled 'a' already exists"},
    }
    assert results[0][1]["events"] == [
        {"event": "task_inserted", "cid": f"{CID:016x}", "title": "a", "description": "about a"}
    ]
    assert log.titles() == ["a", "b"]
    assert log.machine.applied_index == 1


def test_a_retried_request_is_applied_once_and_answered_with_the_first_result() -> None:
    """Dissertation §6.3: the state machine discards duplicate requests by session."""
    log = Log()
    first = log.apply(Proposal("c1", 1, 1, (create(), insert("a"))))
    again = log.apply(Proposal("c1", 1, 1, (create(), insert("a"))))
    assert again == [first[0]]  # not "exists": the original answers, nothing reapplied
    # a retry that overlaps new work: only the new id runs
    mixed = log.apply(Proposal("c1", 2, 1, (insert("a"), insert("b"))))
    assert mixed[0][0] == first[0][1]
    assert mixed[0][1]["ok"] is True
    assert log.titles() == ["a", "b"]


def test_the_same_request_id_from_another_client_is_a_different_request() -> None:
    log = Log()
    log.apply(Proposal("c1", 1, 1, (create(),)))
    log.apply(Proposal("c1", 2, 1, (insert("a"),)))
    results = log.apply(Proposal("c2", 2, 1, (insert("b"),)))
    assert results[0][0]["ok"] is True
    assert log.titles() == ["a", "b"]


def test_acked_answers_are_forgotten_and_their_late_retries_are_not_applied() -> None:
    log = Log()
    log.apply(Proposal("c1", 1, 1, (create(),)))
    log.apply(Proposal("c1", 2, 1, (insert("a"),)))
    log.apply(Proposal("c1", 3, 3, (insert("b"),)))  # the client has the answers of 1 and 2
    session = log.machine.sessions["c1"]
    assert session.floor == 3 and set(session.results) == {3}
    # QoS 1 redelivers the proposal of request 2 long after: never applied twice
    late = log.apply(Proposal("c1", 2, 1, (insert("a"),)))
    assert late[0][0]["error"]["code"] == "timeout"
    assert log.titles() == ["a", "b"]
    assert log.machine.lookup("c1", 2) == (Outcome.UNKNOWN, None)
    assert log.machine.lookup("c1", 3)[0] == Outcome.APPLIED
    assert log.machine.lookup("c1", 4) == (Outcome.NOT_APPLIED, None)


def test_a_client_that_never_acknowledges_keeps_only_the_newest_answers() -> None:
    log = Log(ReplicaStateMachine(max_results=3))
    log.apply(Proposal("c1", 1, 1, (create(),)))
    for n in range(2, 8):
        log.apply(Proposal("c1", n, 1, (insert(f"t{n}"),)))
    session = log.machine.sessions["c1"]
    assert sorted(session.results) == [5, 6, 7] and session.floor == 5
    retry = log.apply(Proposal("c1", 3, 1, (insert("t3"),)))
    assert retry[0][0]["error"]["code"] == "timeout"
    assert log.titles() == [f"t{n}" for n in range(2, 8)]


def test_forgotten_clients_are_told_so_and_never_reapplied() -> None:
    log = Log(ReplicaStateMachine(max_clients=2))
    log.apply(Proposal("old", 1, 1, (create(),)))
    log.apply(Proposal("old", 2, 2, (insert("a"),)))
    log.apply(Proposal("b", 1, 1, (insert("b"),)))
    log.apply(Proposal("c", 1, 1, (insert("c"),)))  # "old" is the least recent: forgotten
    assert set(log.machine.sessions) == {"b", "c"}
    # "old" retries request 2 (its answer was lost): it had answers, so it must be forgotten
    retry = log.apply(Proposal("old", 2, 2, (insert("a"),)))
    assert retry[0][0]["error"]["code"] == "timeout"
    assert retry[0][0]["expired"] is True
    assert log.titles() == ["a", "b", "c"]
    assert "old" not in log.machine.sessions
    # a new client (acked 1) is welcome
    assert log.apply(Proposal("new", 1, 1, (insert("d"),)))[0][0]["ok"] is True


def test_malformed_operations_fail_alone_and_the_same_way_everywhere() -> None:
    log = Log()
    results = log.apply(
        Proposal("c1", 1, 1, (create(), {"op": "insert_task", "cid": CID}, {"op": "nope"}))
    )
    assert [r["ok"] for r in results[0]] == [True, False, False]
    assert results[0][1]["error"]["code"] == "bad_request"
    assert results[0][2]["error"]["code"] == "bad_request"


def test_no_ops_and_configuration_entries_consume_their_index() -> None:
    machine = ReplicaStateMachine()
    machine.skip(1)
    assert machine.apply_entry(2, b"") == []
    assert machine.applied_index == 2
    with pytest.raises(ValueError, match="out of order"):
        machine.apply_entry(4, b"")


def test_an_entry_that_is_not_a_batch_is_refused_but_consumed() -> None:
    machine = ReplicaStateMachine()
    with pytest.raises(ValueError, match="not a batch"):
        machine.apply_entry(1, b"\xc1")
    assert machine.applied_index == 1


def test_reads_see_the_applied_state_and_change_nothing() -> None:
    log = Log()
    log.apply(Proposal("c1", 1, 1, (create(), insert("a"), create(cid=5, name="bob"))))
    machine = log.machine
    listed = machine.read({"op": "list_tasks", "cid": CID})
    assert listed["result"]["tasks"] == [{"title": "a", "description": "about a"}]
    verifier = machine.read({"op": "verifier", "cid": CID})["result"]
    assert token_matches("secret", verifier["salt"], verifier["hash"])
    unknown = machine.read({"op": "verifier", "cid": 12345})
    assert unknown["error"]["code"] == "not_found"
    assert machine.read(insert("b"))["error"]["code"] == "bad_request"
    loaded = machine.read({"op": "load_keys", "cids": [CID, 12345]})["result"]["keys"]
    assert [item[0] for item in loaded] == [CID]
    clients = machine.read({"op": "clients_after", "after": -1, "limit": 10})["result"]["clients"]
    assert [c["cid"] for c in clients] == [5, CID]
    assert log.titles() == ["a"]


def test_a_snapshot_restores_the_keys_the_answers_and_the_index() -> None:
    """Raft §7: the snapshot stands for every entry up to its index."""
    log = Log(ReplicaStateMachine(max_results=4))
    log.apply(Proposal("c1", 1, 1, (create(), insert("a"))))
    log.apply(Proposal("c2", 1, 1, (insert("b"),)))
    data = log.machine.snapshot()
    restored = ReplicaStateMachine.restore(data, max_results=4)
    assert restored.applied_index == 2
    assert restored.snapshot() == data
    # the restored replica goes on exactly like the original, duplicates included
    for machine in (log.machine, restored):
        replay = Log(machine)
        assert replay.apply(Proposal("c1", 2, 1, (insert("a"),)))[0][0]["ok"] is True
        assert replay.apply(Proposal("c2", 2, 1, (insert("c"),)))[0][0]["ok"] is True
    assert restored.snapshot() == log.machine.snapshot()
    assert ReplicaStateMachine.restore(b"").applied_index == 0


@pytest.mark.parametrize(
    "data",
    [b"\x01", msgpack.packb({"version": 99}), msgpack.packb({"version": 1, "applied": 1})],
)
def test_a_damaged_snapshot_is_refused_with_a_clear_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="snapshot"):
        ReplicaStateMachine.restore(data)


def test_batches_round_trip() -> None:
    proposals = [Proposal("c1", 7, 3, (insert("a"), create())), Proposal("c2", 1, 1, ())]
    assert decode_batch(encode_batch(proposals)) == proposals


# ---- what a propose message must hold ---------------------------------------------------


def propose(**changes: Any) -> dict[str, Any]:
    message = wire.Propose(
        "corr-1", "taskring/v1/raft/g1/reply/x", "c1", 5, 2, [insert("a")]
    ).to_wire()
    message.update(changes)
    return message


def test_a_well_formed_proposal_is_accepted() -> None:
    decoded = wire.Propose.from_wire(propose())
    assert decoded.proposal() == Proposal("c1", 5, 2, (insert("a"),))
    assert (decoded.corr, decoded.reply_to) == ("corr-1", "taskring/v1/raft/g1/reply/x")
    assert decoded.to_wire() == propose()


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"client": ""}, "client"),
        ({"client": 5}, "client"),
        ({"request": 0}, "request"),
        ({"request": True}, "request"),
        ({"acked": 6}, "acked"),
        ({"acked": -1}, "acked"),
        ({"ops": []}, "ops"),
        ({"ops": "x"}, "ops"),
        ({"ops": [{"op": "insert_task", "cid": CID, "title": "a"}]}, "description"),
        ({"ops": [{"op": "insert_task", "cid": -1, "title": "a", "description": ""}]}, "cid"),
        ({"ops": [{"op": "drop_table", "cid": 1}]}, "unknown operation"),
        ({"ops": [[1, 2]]}, "map"),
        ({"ops": [dict(create(), token_salt="not bytes")]}, "token_salt"),
        ({"ops": [dict(create(), created_at=True)]}, "created_at"),
    ],
)
def test_a_malformed_proposal_is_refused_naming_the_field(
    changes: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(wire.BadRequest, match=complaint) as raised:
        wire.Propose.from_wire(propose(**changes))
    assert (raised.value.corr, raised.value.reply_to) == ("corr-1", "taskring/v1/raft/g1/reply/x")


@pytest.mark.parametrize("changes", [{"corr": ""}, {"reply_to": None}, {"corr": "x" * 300}])
def test_a_request_with_nowhere_to_answer_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as raised:
        wire.Propose.from_wire(propose(**changes))
    assert not isinstance(raised.value, wire.BadRequest)


def test_reads_accept_only_read_operations() -> None:
    ok = wire.Read(
        "r", "t", [{"op": "list_tasks", "cid": 1}, {"op": "load_keys", "cids": [1]}]
    ).to_wire()
    assert len(wire.Read.from_wire(ok).ops) == 2
    for bad in (
        [insert("a")],
        [{"op": "clients_after", "after": -2, "limit": 5}],
        [{"op": "load_keys", "cids": ["x"]}],
    ):
        with pytest.raises(ValueError):
            wire.Read.from_wire(wire.Read("r", "t", bad).to_wire())
