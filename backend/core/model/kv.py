"""The ring's key-value state: per CID, one client record and its ordered bag of tasks.

This is the state machine a key's owner runs (and, with the durable tier, the
one every replica applies in log order). It is pure and deterministic:
anything random or time-dependent (token salt and hash, creation time) is
computed by the caller and carried inside the operation, so applying the same
operations in the same order gives the same state and results everywhere.

An operation is a map `{"op": <name>, "cid": <int>, ...}`; `apply` returns
`(result, events)` or raises OpError with a contract code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.core.errors import BAD_REQUEST, EXISTS, NOT_FOUND, OpError
from backend.core.model.records import (
    CLIENT_DELETED,
    TASK_DELETED,
    TASK_INSERTED,
    TASK_UPDATED,
    TASKS_CLEARED,
    TOKEN_ROTATED,
    ClientRecord,
    Event,
)

Operation = dict[str, Any]
Result = dict[str, Any]

READ_OPS = frozenset({"get_client", "verifier", "list_tasks"})
WRITE_OPS = frozenset(
    {
        "create_client",
        "update_client",
        "delete_client",
        "rotate_token",
        "insert_task",
        "update_task",
        "delete_task",
        "delete_tasks",
    }
)


@dataclass
class Key:
    """Everything stored under one ring position: a client and its tasks."""

    record: ClientRecord | None = None
    tasks: dict[str, str] = field(default_factory=dict)  # dicts keep insertion order


class KeyValueState:
    def __init__(self) -> None:
        self.keys: dict[int, Key] = {}

    def apply(self, op: Operation) -> tuple[Result, list[Event]]:
        name = op.get("op")
        if name not in READ_OPS and name not in WRITE_OPS:
            raise OpError(BAD_REQUEST, f"unknown operation {name!r}")
        handler: Callable[[Operation], tuple[Result, list[Event]]] = getattr(self, f"_{name}")
        return handler(op)

    # ---- clients ---------------------------------------------------------------

    def _create_client(self, op: Operation) -> tuple[Result, list[Event]]:
        cid = op["cid"]
        key = self.keys.setdefault(cid, Key())
        if key.record is not None:
            raise OpError(EXISTS, f"a client named {op['name']!r} already exists")
        key.record = ClientRecord(
            cid, op["name"], op["data"], op["created_at"], op["token_salt"], op["token_hash"]
        )
        key.tasks = {}
        return {"client": record_to_wire(key.record)}, []

    def _get_client(self, op: Operation) -> tuple[Result, list[Event]]:
        record = self.keys.get(op["cid"], Key()).record
        return {"client": record_to_wire(record) if record else None}, []

    def _update_client(self, op: Operation) -> tuple[Result, list[Event]]:
        key = self._client_key(op["cid"])
        key.record = _replace(key.record, data=op["data"])
        return {"client": record_to_wire(key.record)}, []

    def _rotate_token(self, op: Operation) -> tuple[Result, list[Event]]:
        key = self._client_key(op["cid"])
        key.record = _replace(key.record, token_salt=op["token_salt"], token_hash=op["token_hash"])
        # Not a client-facing event: portals use it to forget cached authentications.
        return {"client": record_to_wire(key.record)}, [Event(TOKEN_ROTATED, op["cid"])]

    def _delete_client(self, op: Operation) -> tuple[Result, list[Event]]:
        cid = op["cid"]
        self._client_key(cid)
        del self.keys[cid]
        return {}, [Event(CLIENT_DELETED, cid)]

    def _verifier(self, op: Operation) -> tuple[Result, list[Event]]:
        # The salted hash, never a token: the caller compares it with the token it holds,
        # so no token crosses the bus, and what does cannot be used to log in.
        record = self._client_key(op["cid"]).record
        assert record is not None
        return {"salt": record.token_salt, "hash": record.token_hash}, []

    def _client_key(self, cid: int) -> Key:
        key = self.keys.get(cid)
        if key is None or key.record is None:
            raise OpError(NOT_FOUND, f"no client with CID {cid:016x}")
        return key

    # ---- tasks -----------------------------------------------------------------

    def _insert_task(self, op: Operation) -> tuple[Result, list[Event]]:
        cid, title = op["cid"], op["title"]
        tasks = self._client_key(cid).tasks
        if title in tasks:
            raise OpError(EXISTS, f"a task titled {title!r} already exists")
        tasks[title] = op["description"]
        return {}, [Event(TASK_INSERTED, cid, title, op["description"])]

    def _update_task(self, op: Operation) -> tuple[Result, list[Event]]:
        cid, title = op["cid"], op["title"]
        tasks = self._existing_tasks(cid, title)
        tasks[title] = op["description"]
        return {}, [Event(TASK_UPDATED, cid, title, op["description"])]

    def _delete_task(self, op: Operation) -> tuple[Result, list[Event]]:
        cid, title = op["cid"], op["title"]
        del self._existing_tasks(cid, title)[title]
        return {}, [Event(TASK_DELETED, cid, title)]

    def _delete_tasks(self, op: Operation) -> tuple[Result, list[Event]]:
        key = self._client_key(op["cid"])
        count = len(key.tasks)
        key.tasks = {}
        return {"deleted": count}, [Event(TASKS_CLEARED, op["cid"])]

    def _list_tasks(self, op: Operation) -> tuple[Result, list[Event]]:
        tasks = self._client_key(op["cid"]).tasks
        return {"tasks": [{"title": t, "description": d} for t, d in tasks.items()]}, []

    def _existing_tasks(self, cid: int, title: str) -> dict[str, str]:
        tasks = self._client_key(cid).tasks
        if title not in tasks:
            raise OpError(NOT_FOUND, f"no task titled {title!r}")
        return tasks

    def clients_after(self, after: int, limit: int) -> list[ClientRecord]:
        """Up to `limit` client records with a CID above `after`, in CID order."""
        cids = sorted(c for c, k in self.keys.items() if k.record is not None and c > after)
        return [record for c in cids[:limit] if (record := self.keys[c].record) is not None]

    # ---- moving keys between owners ----------------------------------------------

    def export_keys(self, cids: list[int]) -> list[Any]:
        """The given keys in wire form, for handing them to another owner."""
        return [key_to_wire(cid, self.keys[cid]) for cid in cids if cid in self.keys]

    def import_keys(self, wire: list[Any]) -> None:
        for item in wire:
            cid, key = key_from_wire(item)
            self.keys[cid] = key


def _replace(record: ClientRecord | None, **changes: Any) -> ClientRecord:
    assert record is not None
    return ClientRecord(**{**record.__dict__, **changes})


def record_to_wire(record: ClientRecord) -> dict[str, Any]:
    return {
        "cid": record.cid,
        "name": record.name,
        "data": record.data,
        "created_at": record.created_at_ms,
        "token_salt": record.token_salt,
        "token_hash": record.token_hash,
    }


def record_from_wire(wire: dict[str, Any]) -> ClientRecord:
    return ClientRecord(
        wire["cid"],
        wire["name"],
        wire["data"],
        wire["created_at"],
        wire["token_salt"],
        wire["token_hash"],
    )


def key_to_wire(cid: int, key: Key) -> list[Any]:
    record = record_to_wire(key.record) if key.record else None
    return [cid, record, list(key.tasks.items())]


def key_from_wire(item: Any) -> tuple[int, Key]:
    """The (cid, key) of key_to_wire's form; ValueError on anything else (a handover or a
    claim's answer comes from the bus, so it is checked whole before it is used)."""
    if not isinstance(item, list | tuple) or len(item) != 3:
        raise ValueError("a key must be [cid, record, tasks]")
    cid, record, tasks = item
    if type(cid) is not int or not 0 <= cid < 1 << 64:
        raise ValueError("a key's cid must be a ring position")
    if record is not None and not _is_record(record, cid):
        raise ValueError("a key's record must be a client record of its cid")
    if not isinstance(tasks, list | tuple) or not all(_is_task_pair(t) for t in tasks):
        raise ValueError("a key's tasks must be a list of [title, description] texts")
    return cid, Key(record_from_wire(record) if record else None, dict(map(tuple, tasks)))


_RECORD_FIELDS = (
    ("name", str),
    ("data", str),
    ("created_at", int),
    ("token_salt", bytes),
    ("token_hash", bytes),
)


def _is_record(wire: Any, cid: int) -> bool:
    return (
        isinstance(wire, dict)
        and wire.get("cid") == cid
        and all(isinstance(wire.get(name), kind) for name, kind in _RECORD_FIELDS)
    )


def _is_task_pair(item: Any) -> bool:
    return (
        isinstance(item, list | tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], str)
    )
