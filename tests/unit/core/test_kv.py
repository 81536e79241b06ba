"""The ring's key-value state machine: results, errors, events, and moving keys."""

from __future__ import annotations

import pytest

from backend.core.errors import BAD_REQUEST, EXISTS, NOT_FOUND, OpError
from backend.core.model.identity import hash_token, token_matches
from backend.core.model.kv import KeyValueState

CID = 42
SALT = b"0123456789abcdef"


def create(state: KeyValueState, cid: int = CID, token: str = "tok") -> None:
    state.apply(
        {
            "op": "create_client",
            "cid": cid,
            "name": "Alice",
            "data": "",
            "created_at": 1,
            "token_salt": SALT,
            "token_hash": hash_token(token, SALT),
        }
    )


def code_of(state: KeyValueState, op: dict) -> str:
    with pytest.raises(OpError) as raised:
        state.apply(op)
    return raised.value.code


def test_task_operations_follow_the_contract_and_keep_insertion_order() -> None:
    state = KeyValueState()
    create(state)
    for title in ["b", "a", "c"]:
        state.apply({"op": "insert_task", "cid": CID, "title": title, "description": title})
    state.apply({"op": "update_task", "cid": CID, "title": "b", "description": "B"})
    result, _ = state.apply({"op": "list_tasks", "cid": CID})
    assert [t["title"] for t in result["tasks"]] == ["b", "a", "c"]
    assert result["tasks"][0]["description"] == "B"
    assert (
        code_of(state, {"op": "insert_task", "cid": CID, "title": "a", "description": ""}) == EXISTS
    )
    assert code_of(state, {"op": "delete_task", "cid": CID, "title": "zz"}) == NOT_FOUND
    result, events = state.apply({"op": "delete_tasks", "cid": CID})
    assert result == {"deleted": 3} and events[0].kind == "tasks_cleared"


def verifies(state: KeyValueState, cid: int, token: str) -> bool:
    verifier, _ = state.apply({"op": "verifier", "cid": cid})
    return token_matches(token, verifier["salt"], verifier["hash"])


def test_the_verifier_is_the_salted_hash_and_follows_rotation() -> None:
    state = KeyValueState()
    create(state)
    assert verifies(state, CID, "tok")
    assert not verifies(state, CID, "bad")
    assert code_of(state, {"op": "verifier", "cid": 7}) == NOT_FOUND
    state.apply(
        {
            "op": "rotate_token",
            "cid": CID,
            "token_salt": SALT,
            "token_hash": hash_token("new", SALT),
        }
    )
    assert not verifies(state, CID, "tok")
    assert verifies(state, CID, "new")


def test_deleting_a_client_deletes_its_tasks_and_an_unknown_op_is_refused() -> None:
    state = KeyValueState()
    create(state)
    state.apply({"op": "insert_task", "cid": CID, "title": "t", "description": ""})
    _, events = state.apply({"op": "delete_client", "cid": CID})
    assert [e.kind for e in events] == ["client_deleted"]
    create(state)
    assert state.apply({"op": "list_tasks", "cid": CID})[0] == {"tasks": []}
    assert code_of(state, {"op": "drop_tables", "cid": CID}) == BAD_REQUEST
    assert code_of(state, {"op": "list_tasks", "cid": 9}) == NOT_FOUND


def test_keys_move_between_owners_unchanged() -> None:
    old, new = KeyValueState(), KeyValueState()
    create(old)
    create(old, cid=43)
    old.apply({"op": "insert_task", "cid": CID, "title": "t", "description": "d"})
    new.import_keys(old.export_keys([CID, 43, 99]))
    assert new.keys == old.keys
