"""The `ring` storage mode, portal side: every key lives on its owner in the Chord cache ring.

Each operation goes as a `request` (backend/core/ring/wire.py) to the cache node
believed to own the key, which replies to this portal's reply topic; change
events are handed to watchers (the ring's events are subscribed to only while
someone here watches a client). Routing, retries and honest outcomes are the
pure PortalCore's (backend/core/ring/portal_core.py); this class is its asyncio
adapter: it feeds the core what the bus delivers, publishes what it sends (one
batch per topic per event-loop turn), wakes it when asked, and resolves each
caller's future. Every handler is total: a malformed message is dropped and
counted (`drops`), never raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from backend.adapters.bus.transport import Bus, BusUnavailable, Message
from backend.adapters.random_secrets import new_salt
from backend.adapters.store.interface import TRACE, EventSink, Unwatch
from backend.adapters.store.watchers import Watchers
from backend.core import topics
from backend.core.drops import Drops
from backend.core.errors import INTERNAL, NOT_FOUND, UNAVAILABLE, OpError
from backend.core.model.identity import hash_token, token_matches
from backend.core.model.kv import record_from_wire
from backend.core.model.records import TOKEN_ROTATED, ClientRecord, Event, Task
from backend.core.ring import wire
from backend.core.ring.portal_core import REQUEST_TIMEOUT, CallId, Completed, HostInfo, PortalCore

log = logging.getLogger(__name__)

AUTH_CACHE_TTL = 1.0  # a positive authentication is reused this long (see authenticate)


class RingStore:
    def __init__(
        self,
        bus: Bus,
        portal_id: str,
        clock: Callable[[], float] = time.monotonic,
        request_timeout: float = REQUEST_TIMEOUT,
        drops: Drops | None = None,
    ) -> None:
        self.bus = bus
        self.drops = drops or Drops(f"portal {portal_id}")
        self.portal_id = portal_id
        self.clock = clock
        self.request_timeout = request_timeout
        self.reply_topic = topics.ring_reply(portal_id)
        # Owners answer a repeated correlation id from their reply cache, so a portal
        # restarted under the same id must never reuse one from its previous run.
        corr_prefix = f"{portal_id}/{secrets.token_hex(4)}"
        self.core = PortalCore(corr_prefix, self.reply_topic, request_timeout, self.drops)
        self.waiting: dict[CallId, asyncio.Future[Completed]] = {}
        self.watchers = Watchers()
        self.authenticated: dict[tuple[int, str], float] = {}
        self._flush_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        bus.subscribe(topics.RING_ANNOUNCE, self._on_announce)
        bus.subscribe(self.reply_topic, self._on_reply)
        bus.subscribe(topics.RING_CLIENT_CHANGES, self._on_client_change)

    @property
    def hosts(self) -> dict[str, HostInfo]:
        """The cache nodes heard from, as the core keeps them."""
        return self.core.hosts

    # ---- clients -------------------------------------------------------------

    async def create_client(self, cid: int, name: str, data: str, token: str) -> ClientRecord:
        salt = new_salt()
        op = {
            "op": "create_client",
            "cid": cid,
            "name": name,
            "data": data,
            "created_at": time.time_ns() // 1_000_000,
            "token_salt": salt,
            "token_hash": hash_token(token, salt),
        }
        return record_from_wire((await self._call(cid, op))["client"])

    async def get_client(self, cid: int) -> ClientRecord | None:
        client = (await self._call(cid, {"op": "get_client", "cid": cid}))["client"]
        return record_from_wire(client) if client else None

    async def update_client(self, cid: int, data: str) -> ClientRecord:
        result = await self._call(cid, {"op": "update_client", "cid": cid, "data": data})
        return record_from_wire(result["client"])

    async def delete_client(self, cid: int) -> None:
        await self._call(cid, {"op": "delete_client", "cid": cid})

    async def rotate_token(self, cid: int, token: str) -> ClientRecord:
        salt = new_salt()
        op = {"op": "rotate_token", "cid": cid, "token_salt": salt}
        op["token_hash"] = hash_token(token, salt)
        return record_from_wire((await self._call(cid, op))["client"])

    async def list_clients(self, after: int | None, limit: int) -> list[ClientRecord]:
        """Ask every cache node for its clients after `after`, and merge the answers; a
        durable node answers for all of them at once, from the replica groups."""
        hosts = self._member_hosts()
        if not hosts:
            raise OpError(UNAVAILABLE, "no cache node is in the ring yet")
        floor = -1 if after is None else after
        durable = [h for h in hosts if self.hosts[h].durable]
        if durable:
            return await self._list_durable(durable, floor, limit)
        answers = await asyncio.gather(*(self._scan(h, floor, limit) for h in hosts))
        merged = {c["cid"]: c for answer in answers for c in answer}
        return [record_from_wire(merged[cid]) for cid in sorted(merged)[:limit]]

    async def _list_durable(self, hosts: list[str], after: int, limit: int) -> list[ClientRecord]:
        problem: OpError | None = None
        for host in random.sample(hosts, min(len(hosts), 2)):
            try:
                clients = await self._scan(host, after, limit)
            except OpError as exc:
                if exc.code != UNAVAILABLE:
                    raise
                problem = exc
                continue
            return [record_from_wire(c) for c in clients[:limit]]
        assert problem is not None
        raise problem

    # ---- tasks ---------------------------------------------------------------

    async def authenticate(self, cid: int, token: str) -> bool:
        # Portals check the token before every operation; a success is reused for a
        # moment, and forgotten at once when the owner reports a rotation or deletion.
        # The owner sends the salted verifier and the comparison happens here, so the
        # token never crosses the broker, where other logins could read it.
        expires = self.authenticated.get((cid, token))
        if expires is not None and expires > self.clock():
            return True
        try:
            verifier = await self._call(cid, {"op": "verifier", "cid": cid})
        except OpError as exc:
            if exc.code == NOT_FOUND:
                return False
            raise
        salt, digest = verifier.get("salt"), verifier.get("hash")
        if not isinstance(salt, bytes) or not isinstance(digest, bytes):
            raise OpError(INTERNAL, f"the owner of {cid:016x} sent a malformed verifier")
        if not token_matches(token, salt, digest):
            return False
        self.authenticated[(cid, token)] = self.clock() + AUTH_CACHE_TTL
        return True

    async def insert_task(self, cid: int, title: str, description: str) -> None:
        op = {"op": "insert_task", "cid": cid, "title": title, "description": description}
        await self._call(cid, op)

    async def update_task(self, cid: int, title: str, description: str) -> None:
        op = {"op": "update_task", "cid": cid, "title": title, "description": description}
        await self._call(cid, op)

    async def list_tasks(self, cid: int) -> list[Task]:
        result = await self._call(cid, {"op": "list_tasks", "cid": cid})
        return [Task(t["title"], t["description"]) for t in result["tasks"]]

    async def delete_task(self, cid: int, title: str) -> None:
        await self._call(cid, {"op": "delete_task", "cid": cid, "title": title})

    async def delete_tasks(self, cid: int) -> int:
        return int((await self._call(cid, {"op": "delete_tasks", "cid": cid}))["deleted"])

    # ---- events and health -----------------------------------------------------

    async def watch(self, cid: int, sink: EventSink) -> Unwatch:
        """The ring's events are subscribed to only while someone here watches a client."""
        first = not self.watchers.sinks
        unwatch = self.watchers.add(cid, sink)
        if first:
            await self.bus.subscribe_now(topics.RING_EVENTS, self._on_events)

        def stop() -> None:
            unwatch()
            if not self.watchers.sinks:
                self.bus.unsubscribe(topics.RING_EVENTS, self._on_events)

        return stop

    def readiness(self) -> str | None:
        if not self.bus.connected:
            return "the portal is not connected to the MQTT broker"
        if not self._member_hosts():
            return "no cache node of the ring has been heard from"
        return None

    # ---- talking to the ring -----------------------------------------------------

    async def _call(self, key: int, op: dict[str, Any]) -> dict[str, Any]:
        """Run `op` on the owner of `key` (PortalCore.call); its result, or OpError."""
        trace = TRACE.get() is not None
        return self._result(await self._run(self.core.call(key, op, self.clock(), trace)))

    async def _scan(self, host: str, after: int, limit: int) -> list[dict[str, Any]]:
        completed = await self._run(self.core.scan(host, after, limit, self.clock()))
        return list(self._result(completed).get("clients", []))

    async def _run(self, call: CallId) -> Completed:
        """Wait for the outcome of a call just started in the core."""
        future: asyncio.Future[Completed] = asyncio.get_running_loop().create_future()
        self.waiting[call] = future
        self._drive()
        try:
            return await future
        finally:
            del self.waiting[call]
            self.core.cancel(call)  # if the caller gave up (cancelled), so does the core

    def _result(self, completed: Completed) -> dict[str, Any]:
        sink = TRACE.get()
        reply = completed.reply
        if sink is not None and reply is not None:
            sink.update(
                route=reply.get("route", []),
                owner=reply.get("owner", ""),
                group=str(reply.get("group", "")),
            )
        if isinstance(completed.result, OpError):
            raise completed.result
        return completed.result

    def _drive(self) -> None:
        """After every input to the core: hand out outcomes, publish what it sends once
        this turn of the event loop is over, and wake it when it asked to be."""
        for output in self.core.take():
            if isinstance(output, Completed):
                future = self.waiting.get(output.call)
                if future is not None and not future.done():
                    future.set_result(output)
        loop = asyncio.get_running_loop()
        if self.core.has_outbox() and not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        wake = self.core.next_tick()
        if wake == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, wake
        if wake is not None:
            self._timer = loop.call_later(max(0.0, wake - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self.core.tick(self.clock())
        self._drive()

    def _flush(self) -> None:
        """Hand this turn's batches to the bus's fire-and-forget `send` (no task per batch);
        what it refuses goes back to the core as unsent, which retries its calls."""
        self._flush_due = False
        unsent = False
        for topic, message in self.core.flush():
            try:
                self.bus.send(topic, message, topics.MESSAGE_QOS)
            except BusUnavailable as exc:
                self.core.unsent(message, str(exc), self.clock())
                unsent = True
        if unsent:
            self._drive()

    def _member_hosts(self) -> list[str]:
        return self.core.member_hosts(self.clock())

    # ---- what arrives --------------------------------------------------------------

    async def _on_announce(self, _topic: str, message: Message) -> None:
        self.core.on_announce(message, self.clock())
        self._drive()

    async def _on_reply(self, _topic: str, message: Message) -> None:
        self.core.on_reply(message, self.clock())
        self._drive()

    async def _on_events(self, _topic: str, message: Message) -> None:
        try:
            batch = wire.unbatch(message)
        except ValueError as exc:
            self.drops.bad("batch of events", exc)
            return
        events = [e for e in map(self._parse_event, batch) if e is not None]
        for event in events:
            if event.kind == TOKEN_ROTATED:  # it may come before its copy on client-changes
                self._forget_authentications(event.cid)
        # A token_rotated among them ends the watches of its client before what follows it
        # (watchers.py); it never reaches a client's wire.
        self.watchers.deliver(events)

    async def _on_client_change(self, _topic: str, message: Message) -> None:
        event = self._parse_event(message)
        if event is not None:
            self._forget_authentications(event.cid)

    def _parse_event(self, message: Message) -> Event | None:
        try:
            return Event.from_wire(message)
        except ValueError as exc:
            self.drops.bad("event", exc)
            return None

    def _forget_authentications(self, cid: int) -> None:
        for key in [k for k in self.authenticated if k[0] == cid]:
            del self.authenticated[key]
