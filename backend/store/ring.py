"""The `ring` storage mode, portal side: every key lives on its owner in the Chord cache ring.

A portal sends each operation as a `request` (backend/ring/wire.py) to the
cache node it believes owns the key (the first announced position at or after
the CID); a wrong or stale guess costs only Chord forwarding hops, never an
error. The owner applies the operation and replies to this portal's reply
topic. Owners publish change events, which this store hands to watchers (it
subscribes to the ring's events only while someone here watches a client).

Outcomes are honest: a reply of `unavailable` means "not applied", so it is
retried through another entry node until the deadline; a request that gets no
reply by the deadline answers `timeout` for a write (it may have been applied)
and is retried once for a read.

A cache node that dies is not waited out: the broker publishes its last will
(`host_gone`, on the announcement topic) as its connection drops, and the
portal forgets the node and at once retries, through another entry, whatever
repeatable attempt waited on it.

Every handler of what arrives is total: a message that is not well formed is
dropped and counted (`drops`, logged rate-limited), never raised.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..bus import topics
from ..bus.drops import Drops
from ..bus.transport import Bus, BusUnavailable, Message
from ..errors import CODES, INTERNAL, NOT_FOUND, TIMEOUT, UNAVAILABLE, OpError
from ..model.identity import hash_token, new_salt, token_matches
from ..model.kv import READ_OPS, record_from_wire
from ..model.records import (
    TOKEN_ROTATED,
    ClientRecord,
    Event,
    Task,
)
from ..ring import wire
from .interface import TRACE, EventSink, Unwatch
from .watchers import Watchers

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds until a request's outcome is declared unknown
HOST_FRESHNESS = 1.6  # announcements come twice a second; three missed ones mean gone
AUTH_CACHE_TTL = 1.0  # a positive authentication is reused this long (see authenticate)
RETRY_PAUSE = 0.05
ATTEMPT_WAIT = 1.0  # before a repeatable request tries another entry node
_ENTRY_GONE: Message = {"t": wire.HOST_GONE}  # an attempt's answer: its cache node died


@dataclass
class HostInfo:
    positions: list[int]
    member: bool
    heard: float
    durable: bool = False
    incarnation: str = ""


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
        self.hosts: dict[str, HostInfo] = {}
        self.pending: dict[str, asyncio.Future[Message]] = {}
        # corr -> (entry, key) of attempts that may be repeated, for a cache node's death
        self._attempts: dict[str, tuple[str, int]] = {}
        self._scans: dict[str, str] = {}  # corr -> the cache node a scan waits on
        self._gone: dict[str, tuple[str, float]] = {}  # host -> (incarnation, when its will came)
        self.watchers = Watchers()
        self.authenticated: dict[tuple[int, str], float] = {}
        self._ids = itertools.count()
        self._outbox: dict[str, list[tuple[dict[str, Any], asyncio.Future[None]]]] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        # Owners answer a repeated correlation id from their reply cache, so a portal
        # restarted under the same id must never reuse one from its previous run.
        self._corr_prefix = f"{portal_id}/{secrets.token_hex(4)}"
        bus.subscribe(topics.RING_ANNOUNCE, self._on_announce)
        bus.subscribe(self.reply_topic, self._on_reply)
        bus.subscribe(topics.RING_CLIENT_CHANGES, self._on_client_change)

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
        """Run `op` on the owner of `key`; return its result or raise OpError.

        An attempt answered `unavailable` (not applied) is retried through another
        entry node until the deadline. One that gets no answer within ATTEMPT_WAIT is
        retried too if repeating it is harmless: a read, or a write to a durable ring,
        whose replica groups apply each request id once (`req`, state_machine.py); so is
        one whose entry node, or the node owning its key, dies meanwhile (its will,
        `_on_host_gone`), at once. A write to a memory-only ring waits for its answer
        until the deadline instead.
        """
        deadline = self.clock() + self.request_timeout
        is_read = op["op"] in READ_OPS
        if not is_read:
            # Always: Chord may deliver one attempt to two owners in turn (a hop resent
            # and routed around a node), and a durable group then still applies it once.
            op = {**op, "req": f"{self._corr_prefix}/w{next(self._ids)}"}
        tried: set[str] = set()
        last_problem = "no cache node is in the ring"
        maybe_applied = False
        while self.clock() < deadline:
            entry = self._entry_for(key, avoid=tried)
            if entry is None:
                await asyncio.sleep(RETRY_PAUSE)
                tried.clear()
                continue
            tried.add(entry)
            repeatable = is_read or self._durable()
            wait = max(0.0, deadline - self.clock())
            try:
                reply = await self._exchange(
                    entry, key, op, min(wait, ATTEMPT_WAIT) if repeatable else wait, repeatable
                )
            except OpError as exc:
                last_problem = exc.message
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if reply is None:
                last_problem = f"cache node {entry} did not answer"
                maybe_applied = not is_read
                continue
            try:
                return self._result(reply)
            except OpError as exc:
                if exc.code != UNAVAILABLE:
                    raise
                last_problem = exc.message
                await asyncio.sleep(RETRY_PAUSE)
        if maybe_applied:
            raise OpError(
                TIMEOUT,
                f"no answer from the ring in {self.request_timeout:g}s; the change "
                "may or may not have been applied",
            )
        raise OpError(
            UNAVAILABLE, f"{op['op']} not applied in {self.request_timeout:g}s: {last_problem}"
        )

    async def _exchange(
        self, entry: str, key: int, op: dict[str, Any], wait: float, repeatable: bool = False
    ) -> Message | None:
        """One attempt through `entry`: its reply, or None if none came within `wait` or
        (`repeatable`) the cache node it waits on died."""
        corr = self._next_corr()
        trace = TRACE.get() is not None
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[corr] = future
        if repeatable:
            self._attempts[corr] = (entry, key)
        try:
            message = wire.request(corr, self.reply_topic, key, op, trace)
            await self._send(topics.ring_host(entry), message)
            reply = await asyncio.wait_for(future, wait)
            return None if reply is _ENTRY_GONE else reply
        except BusUnavailable as exc:
            raise OpError(UNAVAILABLE, f"cannot reach the ring: {exc}") from exc
        except TimeoutError:
            return None
        finally:
            self.pending.pop(corr, None)
            self._attempts.pop(corr, None)

    def _durable(self) -> bool:
        """Whether the ring's nodes keep their keys in replica groups."""
        hosts = self._member_hosts()
        return bool(hosts) and all(self.hosts[h].durable for h in hosts)

    def _result(self, reply: Message) -> dict[str, Any]:
        sink = TRACE.get()
        if sink is not None:
            sink.update(
                route=reply.get("route", []),
                owner=reply.get("owner", ""),
                group=str(reply.get("group", "")),
            )
        if reply.get("ok"):
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        error = reply.get("error") or {}
        code = error.get("code")
        raise OpError(code if code in CODES else INTERNAL, str(error.get("message", "")))

    async def _scan(self, host: str, after: int, limit: int) -> list[dict[str, Any]]:
        corr = self._next_corr()
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[corr] = future
        self._scans[corr] = host
        try:
            message = wire.scan(corr, self.reply_topic, after, limit)
            await self._send(topics.ring_host(host), message)
            reply = await asyncio.wait_for(future, self.request_timeout)
        except (BusUnavailable, TimeoutError) as exc:
            raise OpError(UNAVAILABLE, f"cache node {host} did not answer a scan") from exc
        finally:
            self.pending.pop(corr, None)
            self._scans.pop(corr, None)
        if reply is _ENTRY_GONE:
            raise OpError(UNAVAILABLE, f"cache node {host} died during a scan")
        return list(self._result(reply).get("clients", []))

    def _send(self, topic: str, message: dict[str, Any]) -> asyncio.Future[None]:
        """Publish `message` with everything else sent to `topic` in this turn of the
        event loop, as one batch; the future fails with BusUnavailable if it could not."""
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()
        if not self._outbox:
            loop.call_soon(self._flush_outbox)
        self._outbox.setdefault(topic, []).append((message, sent))
        return sent

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for topic, items in outbox.items():
            for start in range(0, len(items), wire.MAX_BATCH):
                chunk = items[start : start + wire.MAX_BATCH]
                message = chunk[0][0] if len(chunk) == 1 else wire.batch([m for m, _ in chunk])
                self._start_publishing(topic, message, [f for _, f in chunk])

    def _start_publishing(
        self, topic: str, message: dict[str, Any], waiting: list[asyncio.Future[None]]
    ) -> None:
        task = asyncio.create_task(self._publish(topic, message, waiting))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(
        self, topic: str, message: dict[str, Any], waiting: list[asyncio.Future[None]]
    ) -> None:
        failure: BusUnavailable | None = None
        try:
            await self.bus.publish(topic, message, qos=topics.MESSAGE_QOS)
        except BusUnavailable as exc:
            failure = exc
        for sent in waiting:
            if sent.done():
                continue  # its request was cancelled meanwhile
            if failure is None:
                sent.set_result(None)
            else:
                sent.set_exception(failure)

    def _next_corr(self) -> str:
        return f"{self._corr_prefix}/{next(self._ids)}"

    def _entry_for(self, key: int, avoid: set[str]) -> str | None:
        """The member host with the first position at or after `key` (wrapping), if any."""
        ring = sorted(
            (pos, host)
            for host in self._member_hosts()
            if host not in avoid
            for pos in self.hosts[host].positions
        )
        if not ring:
            return None
        index = bisect.bisect_left(ring, (key, ""))
        return ring[index % len(ring)][1]

    def _member_hosts(self) -> list[str]:
        now = self.clock()
        return [
            host
            for host, info in self.hosts.items()
            if info.member and now - info.heard < HOST_FRESHNESS
        ]

    # ---- what arrives --------------------------------------------------------------

    async def _on_announce(self, _topic: str, message: Message) -> None:
        if message.get("t") == wire.HOST_GONE:
            self._on_host_gone(message)
            return
        try:
            wire.check_announce(message)
        except ValueError as exc:
            self.drops.bad("announcement", exc)
            return
        host, incarnation = message["host"], message["incarnation"]
        gone = self._gone.pop(host, None)
        if gone is not None and gone[0] == incarnation and self.clock() - gone[1] < HOST_FRESHNESS:
            # Sent before it died, arriving after its will. Only for a while: a node whose
            # connection dropped (the broker sent its will) may reconnect and announce on.
            self._gone[host] = gone
            return
        info = HostInfo(
            list(message["positions"]),
            message.get("member") is True,
            self.clock(),
            message.get("durable") is True,
            incarnation,
        )
        self.hosts[host] = info

    def _on_host_gone(self, message: Message) -> None:
        """A cache node died (the broker published its will) or shut down: drop it, and
        send again at once, through another entry, every repeatable attempt waiting on
        it, as its entry or as its key's owner. A will of an incarnation other than the
        latest announced is an earlier run's, and changes nothing."""
        try:
            wire.check_host_gone(message)
        except ValueError as exc:
            self.drops.bad("host_gone", exc)
            return
        host, incarnation = message["host"], message["incarnation"]
        info = self.hosts.get(host)
        if info is None or info.incarnation != incarnation:
            return
        stranded = [
            corr
            for corr, (entry, key) in self._attempts.items()
            if host in (entry, self._entry_for(key, avoid=set()))
        ]
        stranded += [corr for corr, scanned in self._scans.items() if scanned == host]
        del self.hosts[host]
        self._gone[host] = (incarnation, self.clock())
        for corr in stranded:
            future = self.pending.get(corr)
            if future is not None and not future.done():
                future.set_result(_ENTRY_GONE)

    async def _on_reply(self, _topic: str, message: Message) -> None:
        try:
            replies = wire.unbatch(message)
        except ValueError as exc:
            self.drops.bad("batch of replies", exc)
            return
        for reply in replies:
            try:
                wire.check_reply(reply)
            except ValueError as exc:
                self.drops.bad("reply", exc)
                continue
            future = self.pending.get(reply["corr"])
            if future is not None and not future.done():
                future.set_result(reply)

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
