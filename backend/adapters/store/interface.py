"""What a portal needs from the data tier, whichever storage mode serves it.

`local` (stage 1) keeps full tables in every portal and converges over MQTT;
`ring` routes each key to its owner on the Chord ring. Portals see only this
interface. Every method raises `OpError` with a contract code on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from backend.core.model.records import ClientRecord, Event, Task

EventSink = Callable[[Event], None]
Unwatch = Callable[[], None]

# A portal that wants a request traced sets a dict here; a store that routes requests
# fills in "route", "owner" and "group" for the call made in the same task.
TRACE: ContextVar[dict[str, Any] | None] = ContextVar("taskring_trace", default=None)


class Store(Protocol):
    # -- clients (admin portal) --
    async def create_client(self, cid: int, name: str, data: str, token: str) -> ClientRecord: ...
    async def get_client(self, cid: int) -> ClientRecord | None: ...
    async def update_client(self, cid: int, data: str) -> ClientRecord: ...
    async def delete_client(self, cid: int) -> None: ...
    async def rotate_token(self, cid: int, token: str) -> ClientRecord: ...
    async def list_clients(self, after: int | None, limit: int) -> list[ClientRecord]:
        """Clients in CID order, starting after the CID `after`, at most `limit` of them."""
        ...

    # -- tasks (client portal) --
    async def authenticate(self, cid: int, token: str) -> bool: ...
    async def insert_task(self, cid: int, title: str, description: str) -> None: ...
    async def update_task(self, cid: int, title: str, description: str) -> None: ...
    async def list_tasks(self, cid: int) -> list[Task]: ...
    async def delete_task(self, cid: int, title: str) -> None: ...
    async def delete_tasks(self, cid: int) -> int: ...

    # -- change events --
    async def watch(self, cid: int, sink: EventSink) -> Unwatch:
        """Call `sink(event)` for every later change to this client's data, in apply order."""
        ...

    def readiness(self) -> str | None:
        """None when a write can be taken now, else what is missing, for /readyz."""
        ...
