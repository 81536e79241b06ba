"""The `local` storage mode: full tables in every portal, kept in step over MQTT.

A write is checked and applied to this portal's tables at once, then its
entries are published on the sync topic; every other portal merges them.
After each (re)connection a portal broadcasts its whole state and asks its
peers for theirs, so one that started late or lost the broker for a while
catches up. Merging is last-writer-wins by hybrid-clock version
(backend/core/model/lww_tables.py), so all portals converge whatever the delivery order.
This mode promises no durability. A malformed sync entry or request is
dropped and counted (`drops`), never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeGuard

from backend.adapters.bus.transport import Bus, BusUnavailable, Message
from backend.adapters.random_secrets import new_salt
from backend.adapters.store.interface import EventSink, Unwatch
from backend.adapters.store.watchers import Watchers
from backend.core import topics
from backend.core.drops import Drops
from backend.core.model.hlc import HybridClock
from backend.core.model.identity import hash_token, token_matches
from backend.core.model.lww_tables import Entry, LwwTables, entry_from_wire, entry_to_wire
from backend.core.model.records import ClientRecord, Task

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 2_000  # entries per message, to keep each MQTT payload small


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class LocalStore:
    def __init__(
        self,
        bus: Bus,
        portal_id: str,
        wall_ms: Callable[[], int] = _wall_ms,
        drops: Drops | None = None,
    ) -> None:
        self.bus = bus
        self.drops = drops or Drops(f"portal {portal_id}")
        self.portal_id = portal_id
        self.tables = LwwTables()
        self.clock = HybridClock(portal_id, wall_ms)
        self.wall_ms = wall_ms
        self.watchers = Watchers()
        self.dropped_publishes = 0
        bus.subscribe(topics.SYNC_CHANGES, self._on_changes)
        bus.subscribe(topics.SYNC_SNAPSHOT_REQUEST, self._on_snapshot_request)
        bus.subscribe(topics.sync_snapshot_reply(portal_id), self._on_changes)
        bus.on_connect(self._catch_up)

    # ---- clients -------------------------------------------------------------

    async def create_client(self, cid: int, name: str, data: str, token: str) -> ClientRecord:
        salt = new_salt()
        entries = self.tables.create_client(
            cid, name, data, (salt, hash_token(token, salt)), self.wall_ms(), self.clock.now()
        )
        await self._commit(entries)
        return self._client(cid)

    async def get_client(self, cid: int) -> ClientRecord | None:
        return self.tables.client(cid)

    async def update_client(self, cid: int, data: str) -> ClientRecord:
        await self._commit(self.tables.update_client(cid, data, self.clock.now()))
        return self._client(cid)

    async def delete_client(self, cid: int) -> None:
        await self._commit(self.tables.delete_client(cid, self.clock.now()))

    async def rotate_token(self, cid: int, token: str) -> ClientRecord:
        salt = new_salt()
        entries = self.tables.rotate_token(cid, (salt, hash_token(token, salt)), self.clock.now())
        await self._commit(entries)
        return self._client(cid)

    async def list_clients(self, after: int | None, limit: int) -> list[ClientRecord]:
        floor = -1 if after is None else after
        records = sorted((r for r in self.tables.clients() if r.cid > floor), key=lambda r: r.cid)
        return records[:limit]

    def _client(self, cid: int) -> ClientRecord:
        record = self.tables.client(cid)
        assert record is not None
        return record

    # ---- tasks ---------------------------------------------------------------

    async def authenticate(self, cid: int, token: str) -> bool:
        record = self.tables.client(cid)
        return record is not None and token_matches(token, record.token_salt, record.token_hash)

    async def insert_task(self, cid: int, title: str, description: str) -> None:
        await self._commit(self.tables.insert_task(cid, title, description, self.clock.now()))

    async def update_task(self, cid: int, title: str, description: str) -> None:
        await self._commit(self.tables.update_task(cid, title, description, self.clock.now()))

    async def list_tasks(self, cid: int) -> list[Task]:
        return self.tables.tasks(cid)

    async def delete_task(self, cid: int, title: str) -> None:
        await self._commit(self.tables.delete_task(cid, title, self.clock.now()))

    async def delete_tasks(self, cid: int) -> int:
        count, entries = self.tables.delete_tasks(cid, self.clock.now())
        await self._commit(entries)
        return count

    # ---- events and health ---------------------------------------------------

    async def watch(self, cid: int, sink: EventSink) -> Unwatch:
        return self.watchers.add(cid, sink)

    def readiness(self) -> str | None:
        return None if self.bus.connected else "the portal is not connected to the MQTT broker"

    # ---- replication -----------------------------------------------------------

    async def _commit(self, entries: list[Entry]) -> None:
        """Apply a write here, tell watchers, then send it to the other portals."""
        self.watchers.deliver(self.tables.merge(entries))
        message = {"origin": self.portal_id, "entries": [entry_to_wire(e) for e in entries]}
        try:
            await self.bus.publish(topics.SYNC_CHANGES, message)
        except BusUnavailable as exc:
            # Applied here already; the state broadcast after reconnecting carries it over.
            self.dropped_publishes += 1
            log.warning("change kept locally, peers get it after reconnect: %s", exc)

    async def _on_changes(self, _topic: str, message: Message) -> None:
        if message.get("origin") == self.portal_id:
            return
        entries = _decode_entries(message.get("entries"), self.drops)
        for _, _, version in entries:
            self.clock.observe(version)
        self.watchers.deliver(self.tables.merge(entries))

    async def _on_snapshot_request(self, _topic: str, message: Message) -> None:
        requester = message.get("origin")
        if not _is_portal_id(requester):
            self.drops.drop("snapshot request", "origin must be a portal id")
            return
        if requester == self.portal_id:
            return
        await self._send_snapshot(topics.sync_snapshot_reply(requester))

    async def _catch_up(self) -> None:
        await self._send_snapshot(topics.SYNC_CHANGES)
        await self.bus.publish(topics.SYNC_SNAPSHOT_REQUEST, {"origin": self.portal_id})

    async def _send_snapshot(self, topic: str) -> None:
        snapshot = self.tables.snapshot()
        for start in range(0, len(snapshot), SNAPSHOT_CHUNK):
            chunk = [entry_to_wire(e) for e in snapshot[start : start + SNAPSHOT_CHUNK]]
            await self.bus.publish(topic, {"origin": self.portal_id, "entries": chunk})


def _decode_entries(raw: Any, drops: Drops) -> list[Entry]:
    if not isinstance(raw, list):
        drops.drop("sync message", "entries must be a list")
        return []
    entries = []
    for item in raw:
        try:
            entries.append(entry_from_wire(item))
        except ValueError as exc:
            drops.drop("sync entry", "malformed entry", str(exc))
    return entries


def _is_portal_id(value: Any) -> TypeGuard[str]:
    """A requester's id names a reply topic: text without MQTT's wildcards (a publish to
    one would fail) or NUL."""
    return isinstance(value, str) and 0 < len(value) <= 256 and not any(c in value for c in "+#\0")
