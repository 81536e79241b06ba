"""The domain's records: clients, tasks, and the change events clients can watch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.core.model.identity import parse_cid

TASK_INSERTED = "task_inserted"
TASK_UPDATED = "task_updated"
TASK_DELETED = "task_deleted"
TASKS_CLEARED = "tasks_cleared"
CLIENT_DELETED = "client_deleted"
TOKEN_ROTATED = "token_rotated"  # internal: never sent to clients
EVENT_KINDS = frozenset(
    (TASK_INSERTED, TASK_UPDATED, TASK_DELETED, TASKS_CLEARED, CLIENT_DELETED, TOKEN_ROTATED)
)


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

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> Event:
        """The event `to_wire` made; ValueError on anything else (it comes off the bus)."""
        kind, cid = message.get("event"), parse_cid(message.get("cid"))
        if not isinstance(kind, str) or kind not in EVENT_KINDS:
            raise ValueError("event must name a known kind of event")
        if cid is None:
            raise ValueError("event cid must be 16 lowercase hex digits")
        title, description = message.get("title"), message.get("description")
        if not (title is None or isinstance(title, str)):
            raise ValueError("event title must be text")
        if not (description is None or isinstance(description, str)):
            raise ValueError("event description must be text")
        return cls(kind, cid, title, description)
