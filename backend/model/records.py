"""The domain's records: clients, tasks, and the change events clients can watch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASK_INSERTED = "task_inserted"
TASK_UPDATED = "task_updated"
TASK_DELETED = "task_deleted"
TASKS_CLEARED = "tasks_cleared"
CLIENT_DELETED = "client_deleted"
TOKEN_ROTATED = "token_rotated"  # internal: never sent to clients


@dataclass(frozen=True)
class ClientRecord:
    cid: int
    name: str
    data: str
    created_at_ms: int
    token_salt: bytes = field(repr=False)
    token_hash: bytes = field(repr=False)


@dataclass(frozen=True)
class Task:
    title: str
    description: str


@dataclass(frozen=True)
class Event:
    """A change to one client's data, as the `watch` op delivers it."""

    kind: str
    cid: int
    title: str | None = None
    description: str | None = None

    def to_wire(self) -> dict[str, Any]:
        line: dict[str, Any] = {"event": self.kind, "cid": f"{self.cid:016x}"}
        if self.title is not None:
            line["title"] = self.title
        if self.description is not None:
            line["description"] = self.description
        return line
