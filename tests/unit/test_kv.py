"""The ring's key-value state machine: results, errors, events, and moving keys."""

from __future__ import annotations

import pytest

from backend.errors import BAD_REQUEST, EXISTS, NOT_FOUND, UNAUTHORIZED, OpError
from backend.model.identity import hash_token
from backend.model.kv import KeyValueState

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


def test_authentication_and_token_rotation() -> None:
    state = KeyValueState()
    create(state)
    state.apply({"op": "authenticate", "cid": CID, "token": "tok"})
    assert code_of(state, {"op": "authenticate", "cid": CID, "token": "bad"}) == UNAUTHORIZED
    assert code_of(state, {"op": "authenticate", "cid": 7, "token": "tok"}) == UNAUTHORIZED
    state.apply(
        {
            "op": "rotate_token",
            "cid": CID,
            "token_salt": SALT,
            "token_hash": hash_token("new", SALT),
        }
    )
    assert code_of(state, {"op": "authenticate", "cid": CID, "token": "tok"}) == UNAUTHORIZED
    state.apply({"op": "authenticate", "cid": CID, "token": "new"})


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
