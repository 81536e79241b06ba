"""The `local` storage mode's tables: a last-writer-wins map that converges by merging.

Each portal holds a full copy (docs/architecture.md, The local mode). A write
becomes entries `(key, value, version)`; per key the highest version (a
hybrid-clock tuple, ties broken by node id) wins, so merging is commutative,
associative and idempotent. Keys, and what their values mean:

    ("life", cid)           {"name", "created_at"} while the client exists, None once deleted
    ("data", cid)           the client's data text
    ("token", cid)          [salt, hash] of the client's current token
    ("cleared", cid)        None; its version is the last "delete all tasks"
    ("task", cid, title)    [description, created version], or None once deleted

A task is visible when its entry holds a value, the client is alive, and the
entry is newer than the client's creation and its last clear; listings order
by created version. Pure: versions in; results, entries and events out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from backend.core.errors import EXISTS, NOT_FOUND, OpError
from backend.core.model.hlc import ZERO, Version, as_version
from backend.core.model.records import (
    CLIENT_DELETED,
    TASK_DELETED,
    TASK_INSERTED,
    TASK_UPDATED,
    TASKS_CLEARED,
    TOKEN_ROTATED,
    ClientRecord,
    Event,
    Task,
)

Key = tuple[Any, ...]
Entry = tuple[Key, Any, Version]


class LwwTables:
    def __init__(self) -> None:
        self.entries: dict[Key, tuple[Any, Version]] = {}
        self.titles: dict[int, set[str]] = {}  # every title ever written per client

    # ---- reads -------------------------------------------------------------

    def version_of(self, key: Key) -> Version:
        entry = self.entries.get(key)
        return entry[1] if entry else ZERO

    def value_of(self, key: Key) -> Any:
        entry = self.entries.get(key)
        return entry[0] if entry else None

    def client(self, cid: int) -> ClientRecord | None:
        life = self.value_of(("life", cid))
        if life is None:
            return None
        salt, digest = self.value_of(("token", cid)) or (b"", b"")
        return ClientRecord(
            cid=cid,
            name=life["name"],
            data=self.value_of(("data", cid)) or "",
            created_at_ms=life["created_at"],
            token_salt=salt,
            token_hash=digest,
        )

    def clients(self) -> Iterator[ClientRecord]:
        for key, (value, _) in self.entries.items():
            if key[0] == "life" and value is not None:
                record = self.client(key[1])
                assert record is not None
                yield record

    def task(self, cid: int, title: str) -> Task | None:
        key = ("task", cid, title)
        entry = self.entries.get(key)
        if entry is None or not self._visible(cid, entry):
            return None
        return Task(title, entry[0][0])

    def tasks(self, cid: int) -> list[Task]:
        found = []
        for title in self.titles.get(cid, ()):
            entry = self.entries[("task", cid, title)]
            if self._visible(cid, entry):
                found.append((as_version(entry[0][1]), Task(title, entry[0][0])))
        found.sort(key=lambda pair: pair[0])
        return [task for _, task in found]

    def _visible(self, cid: int, entry: tuple[Any, Version]) -> bool:
        value, version = entry
        if value is None:
            return False
        life = self.entries.get(("life", cid))
        if life is None or life[0] is None or version <= life[1]:
            return False
        return version > self.version_of(("cleared", cid))

    # ---- writes made here: check, then produce entries ---------------------

    def create_client(
        self, cid: int, name: str, data: str, token: tuple[bytes, bytes], now_ms: int, v: Version
    ) -> list[Entry]:
        if self.client(cid) is not None:
            raise OpError(EXISTS, f"a client named {name!r} already exists")
        return [
            (("life", cid), {"name": name, "created_at": now_ms}, v),
            (("data", cid), data, v),
            (("token", cid), list(token), v),
        ]

    def update_client(self, cid: int, data: str, v: Version) -> list[Entry]:
        self._require_client(cid)
        return [(("data", cid), data, v)]

    def rotate_token(self, cid: int, token: tuple[bytes, bytes], v: Version) -> list[Entry]:
        self._require_client(cid)
        return [(("token", cid), list(token), v)]

    def delete_client(self, cid: int, v: Version) -> list[Entry]:
        self._require_client(cid)
        return [(("life", cid), None, v), (("cleared", cid), None, v)]

    def insert_task(self, cid: int, title: str, description: str, v: Version) -> list[Entry]:
        self._require_client(cid)
        if self.task(cid, title) is not None:
            raise OpError(EXISTS, f"a task titled {title!r} already exists")
        return [(("task", cid, title), [description, list(v)], v)]

    def update_task(self, cid: int, title: str, description: str, v: Version) -> list[Entry]:
        self._require_client(cid)
        if self.task(cid, title) is None:
            raise OpError(NOT_FOUND, f"no task titled {title!r}")
        created = self.entries[("task", cid, title)][0][1]
        return [(("task", cid, title), [description, created], v)]

    def delete_task(self, cid: int, title: str, v: Version) -> list[Entry]:
        self._require_client(cid)
        if self.task(cid, title) is None:
            raise OpError(NOT_FOUND, f"no task titled {title!r}")
        return [(("task", cid, title), None, v)]

    def delete_tasks(self, cid: int, v: Version) -> tuple[int, list[Entry]]:
        self._require_client(cid)
        return len(self.tasks(cid)), [(("cleared", cid), None, v)]

    def _require_client(self, cid: int) -> None:
        if self.client(cid) is None:
            raise OpError(NOT_FOUND, f"no client with CID {cid:016x}")

    # ---- merging entries from anywhere --------------------------------------

    def merge(self, entries: Iterable[Entry]) -> list[Event]:
        """Keep each entry that is newer than what is held; return what watchers should see."""
        events: list[Event] = []
        for key, value, version in entries:
            events.extend(self._merge_one(key, value, version))
        return events

    def _merge_one(self, key: Key, value: Any, version: Version) -> list[Event]:
        if version <= self.version_of(key):
            return []  # a duplicate or an older write: the held entry already wins
        kind, cid = key[0], key[1]
        if kind == "task":
            title = key[2]
            before = self.task(cid, title)
            self.entries[key] = (value, version)
            self.titles.setdefault(cid, set()).add(title)
            return _task_events(cid, title, before, self.task(cid, title))
        if kind == "cleared":
            self.entries[key] = (value, version)
            return [Event(TASKS_CLEARED, cid)] if self.client(cid) is not None else []
        if kind == "life":
            was_alive = self.client(cid) is not None
            self.entries[key] = (value, version)
            if was_alive and value is None:
                return [Event(CLIENT_DELETED, cid)]
            return []
        if kind == "token":
            # A new token of a live client: watchers of the old one must stop here.
            rotated = self.value_of(key) is not None and self.client(cid) is not None
            self.entries[key] = (value, version)
            return [Event(TOKEN_ROTATED, cid)] if rotated else []
        self.entries[key] = (value, version)
        return []

    def snapshot(self) -> list[Entry]:
        return [(key, value, version) for key, (value, version) in self.entries.items()]


def _task_events(cid: int, title: str, before: Task | None, after: Task | None) -> list[Event]:
    if before is None and after is not None:
        return [Event(TASK_INSERTED, cid, title, after.description)]
    if before is not None and after is None:
        return [Event(TASK_DELETED, cid, title)]
    if before is not None and after is not None and before != after:
        return [Event(TASK_UPDATED, cid, title, after.description)]
    return []


def entry_to_wire(entry: Entry) -> list[Any]:
    key, value, version = entry
    return [list(key), value, list(version)]


def entry_from_wire(raw: Any) -> Entry:
    """Decode one entry from a change message; raise ValueError on anything malformed."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        raise ValueError(f"not an entry: {raw!r}")
    key, value, version = raw
    # key[0] may be anything a peer sent, even a list: look it up only once it is text.
    if not isinstance(key, (list, tuple)) or not key or not isinstance(key[0], str):
        raise ValueError(f"unknown key: {key!r}")
    if key[0] not in _KEY_ARITY:
        raise ValueError(f"unknown key: {key!r}")
    if len(key) != _KEY_ARITY[key[0]] or not isinstance(key[1], int):
        raise ValueError(f"malformed key: {key!r}")
    if key[0] == "task" and not isinstance(key[2], str):
        raise ValueError(f"malformed key: {key!r}")
    if not _VALUE_CHECKS[key[0]](value):
        raise ValueError(f"malformed value for {key[0]}: {value!r}")
    return (tuple(key), value, as_version(version))


def _is_life(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict)
        and isinstance(value.get("name"), str)
        and isinstance(value.get("created_at"), int)
    )


def _is_token(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(part, bytes) for part in value)
    )


def _is_task(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], str):
        return False
    try:
        as_version(value[1])
    except ValueError:
        return False
    return True


_KEY_ARITY = {"life": 2, "data": 2, "token": 2, "cleared": 2, "task": 3}
_VALUE_CHECKS = {
    "life": _is_life,
    "data": lambda value: isinstance(value, str),
    "token": _is_token,
    "cleared": lambda value: value is None,
    "task": _is_task,
}
