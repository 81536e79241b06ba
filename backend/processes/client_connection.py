"""One TCP connection to the client portal: read lines, answer in order, push change events.

A connection splits bytes into lines (backend/core/protocol/framing.py), answers
each line before the next, so responses go out in request order however many a
client pipelines, and writes `watch` events between whole responses. The rules it
enforces (binding by `auth`, token re-checks, watches, framing) are in
docs/protocol.md, Client protocol; its limits (connections, idle time, failed
`auth`s, watch memory, slow senders and readers) are in SECURITY.md, Limits, and
their bookkeeping in backend/core/portal_limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from backend.adapters.store.interface import TRACE, Store, Unwatch
from backend.core.errors import INTERNAL, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE, OpError
from backend.core.metrics import RequestMetrics
from backend.core.model.identity import format_cid
from backend.core.model.records import CLIENT_DELETED, TOKEN_ROTATED, Event
from backend.core.portal_limits import AuthFailureBudget, WatchBudget
from backend.core.protocol import (
    MAX_LINE_BYTES,
    InvalidRequest,
    LineSplitter,
    LineTooLong,
    Request,
    error_line,
    event_line,
    ok_line,
    parse_request,
)

log = logging.getLogger(__name__)

READ_CHUNK = 65_536
LINGER_SECONDS = 1.0  # after too_large: how long to swallow the rest before closing
INVALID_OP = "invalid"  # metrics label for lines that name no known op
TOO_LARGE_MESSAGE = (
    f"request line is longer than {MAX_LINE_BYTES:,} bytes; the connection is closed"
)
INTERNAL_MESSAGE = "internal error in the portal; it has been logged, please report it"
AUTH_TIMEOUT = "no auth in time"  # _read_deadline's reason, which also earns an error line
OVER_BUDGET_GRACE = 1.0  # seconds a connection over its watch budget has to take its last line


@dataclass(frozen=True)
class Limits:
    """How long and how much a connection may take; the defaults suit production."""

    idle_timeout: float = 300.0
    auth_timeout: float = 10.0  # idle limit before a successful auth
    line_timeout: float = 30.0
    write_buffer: int = 1 << 20
    write_buffer_hard: int = 32 << 20
    stall_timeout: float = 10.0
    max_held_events: int = 10_000
    revalidate_interval: float = 1.0
    max_connections: int = 4_000
    max_connections_per_ip: int = 1_000
    auth_failure_burst: int = 20
    auth_failure_rate: float = 5.0  # failed auths a second per source IP, past the burst
    watch_buffer: int = 1 << 20  # bytes of events queued for one watching connection
    watch_buffer_client: int = 16 << 20  # ... for all the watching connections of a client


@dataclass(frozen=True)
class PortalContext:
    """What every connection of one portal shares."""

    store: Store
    portal_id: str
    metrics: RequestMetrics
    limits: Limits
    auth_failures: AuthFailureBudget = field(init=False)
    watch_budget: WatchBudget = field(init=False)

    def __post_init__(self) -> None:
        limits = self.limits
        budget = AuthFailureBudget(limits.auth_failure_burst, limits.auth_failure_rate)
        object.__setattr__(self, "auth_failures", budget)
        watch = WatchBudget(limits.watch_buffer, limits.watch_buffer_client)
        object.__setattr__(self, "watch_budget", watch)

    def trace(self) -> dict[str, Any]:
        # Local storage has no cache ring: this portal alone served the request.
        return {"route": [self.portal_id], "owner": self.portal_id, "group": "local"}


@dataclass(frozen=True)
class Binding:
    cid: int
    token: str


class Connection:
    def __init__(
        self, context: PortalContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.context = context
        self.store = context.store
        self.limits = context.limits
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.peer = _peer_name(writer)
        self.ip = peer_ip(writer)
        self.held_bytes = 0  # wire size of the events in `held`
        self.splitter = LineSplitter()
        self.line_started: float | None = None
        self.binding: Binding | None = None
        self.unwatch: Unwatch | None = None
        self.held: list[Event] | None = None  # events waiting for a token check
        self.recheck: asyncio.Task[None] | None = None
        self.checked_at = float("-inf")
        self.stall_timer: asyncio.TimerHandle | None = None
        self.closing = False  # set once nothing more may be written
        self.unsent: list[bytes] = []  # answers kept back to go out with the next write
        self.transport.set_write_buffer_limits(high=self.limits.write_buffer)
        _enable_keepalive(writer)

    async def serve(self) -> None:
        """Answer requests until the client leaves, times out or breaks the protocol."""
        graceful = False
        try:
            await self._read_loop()
            graceful = True
        except OSError as exc:  # resets, and keepalive giving up on a vanished peer
            log.debug("%s: connection lost: %s", self.peer, exc)
        finally:
            self._teardown(graceful)

    # ---- reading -------------------------------------------------------------

    async def _read_loop(self) -> None:
        while data := await self._receive():
            received_at = time.monotonic()
            events = self.splitter.feed(data)
            for number, event in enumerate(events, 1):
                if isinstance(event, LineTooLong):
                    await self._refuse_too_large()
                    return
                # Lines that came in one read are answered with one write: a client
                # that sends `auth` and an operation together gets both answers in one
                # packet, and the portal makes one send instead of two.
                await self._answer(event.data, last=number == len(events))
            self._track_line_start(received_at, bool(events))

    async def _receive(self) -> bytes:
        timeout, why = self._read_deadline()
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(READ_CHUNK)
        except TimeoutError:
            level = logging.INFO if self.line_started is not None else logging.DEBUG
            log.log(level, "%s: closing the connection: %s", self.peer, why)
            if why == AUTH_TIMEOUT:  # say why: a client may simply have forgotten `auth`
                message = f"no auth within {self.limits.auth_timeout:g}s; the connection is closed"
                self._write(error_line(None, UNAUTHORIZED, message))
            return b""

    def _read_deadline(self) -> tuple[float | None, str]:
        if self.line_started is not None:
            remaining = self.line_started + self.limits.line_timeout - time.monotonic()
            return max(remaining, 0.0), f"a line took longer than {self.limits.line_timeout}s"
        if self.unwatch is not None:
            return None, ""
        if self.binding is None and self.limits.auth_timeout < self.limits.idle_timeout:
            return self.limits.auth_timeout, AUTH_TIMEOUT
        return self.limits.idle_timeout, f"idle for {self.limits.idle_timeout}s"

    def _track_line_start(self, received_at: float, completed_lines: bool) -> None:
        if self.splitter.pending == 0:
            self.line_started = None
        elif completed_lines or self.line_started is None:
            self.line_started = received_at

    async def _refuse_too_large(self) -> None:
        self.context.metrics.observe(INVALID_OP, TOO_LARGE, 0.0)
        self._unbind()  # no events after the answer: the write side is about to shut
        await self._send(error_line(None, TOO_LARGE, TOO_LARGE_MESSAGE))
        self.closing = True
        await self._linger()

    async def _linger(self) -> None:
        """Half-close, then swallow what the client still sends, so our answer is not lost.

        Closing with unread bytes makes the kernel send a reset, which can
        destroy the too_large answer before the client reads it.
        """
        if self.transport.can_write_eof():
            self.transport.write_eof()
        with contextlib.suppress(OSError):  # timeouts and resets alike end the wait
            async with asyncio.timeout(LINGER_SECONDS):
                while await self.reader.read(READ_CHUNK):
                    pass

    # ---- answering -------------------------------------------------------------

    async def _answer(self, line: bytes, last: bool = True) -> None:
        started = time.perf_counter()
        op, outcome, response = await self._dispatch(line)
        self.context.metrics.observe(op, outcome, time.perf_counter() - started)
        if last:
            await self._send(response)
        else:
            self.unsent.append(response)

    async def _dispatch(self, line: bytes) -> tuple[str, str, bytes]:
        """Return (op for metrics, outcome, response line) for one request line."""
        try:
            request = parse_request(line)
        except InvalidRequest as exc:
            return exc.op or INVALID_OP, exc.code, error_line(exc.request_id, exc.code, exc.message)
        sink: dict[str, Any] | None = {} if request.trace else None
        reset = TRACE.set(sink)
        try:
            result = await self._perform(request)
        except OpError as exc:
            trace = self._trace(sink)
            return request.op, exc.code, error_line(request.id, exc.code, exc.message, trace)
        except Exception:
            log.exception("%s: %s failed unexpectedly", self.peer, request.op)
            trace = self._trace(sink)
            return request.op, INTERNAL, error_line(request.id, INTERNAL, INTERNAL_MESSAGE, trace)
        finally:
            TRACE.reset(reset)
        return request.op, "ok", ok_line(request.id, result, self._trace(sink))

    def _trace(self, sink: dict[str, Any] | None) -> dict[str, Any] | None:
        """The trace a store filled in, else this portal's own (no routing happened)."""
        if sink is None:
            return None
        return sink if sink else self.context.trace()

    async def _perform(self, request: Request) -> dict[str, Any]:
        if request.op == "ping":
            return {"pong": True}
        if request.op == "auth":
            return await self._auth(request)
        await self._authorize(request)
        return await _OPERATIONS[request.op](self, request)

    async def _auth(self, request: Request) -> dict[str, Any]:
        if not await self._throttled_authenticate(request.cid, request.token):
            self._unbind()
            raise OpError(UNAUTHORIZED, "unknown cid or wrong token")
        if self.binding is not None and self.binding.cid != request.cid:
            self._stop_watch()
        self.binding = Binding(request.cid, request.token)
        self.checked_at = time.monotonic()
        return {}

    async def _throttled_authenticate(self, cid: int, token: str) -> bool:
        """authenticate, within this source IP's budget of failures (portal_limits.py).

        Over budget this connection alone waits for its turn, so a guesser's attempts
        reach the store at the refill rate while other connections go on."""
        budget = self.context.auth_failures
        wait = budget.reserve(self.ip, time.monotonic())
        if wait == float("inf"):
            raise OpError(UNAVAILABLE, "too many failed auth attempts from your address; "
                          "try again in a minute")  # fmt: skip
        if wait is not None:
            await asyncio.sleep(wait)
        valid = True  # no answer (the store unavailable, the portal closing) is no failure
        try:
            valid = await self.store.authenticate(cid, token)
        finally:
            if wait is None and not valid:
                budget.failed(self.ip, time.monotonic())
            elif wait is not None and valid:
                budget.refund(self.ip, time.monotonic())
        return valid

    async def _authorize(self, request: Request) -> None:
        cid = format_cid(request.cid)
        if self.binding is None:
            raise OpError(UNAUTHORIZED, f"not authenticated; send auth with cid {cid} first")
        if self.binding.cid != request.cid:
            bound = format_cid(self.binding.cid)
            raise OpError(UNAUTHORIZED, f"this connection is authenticated as {bound}, not {cid}")
        if not await self.store.authenticate(request.cid, self.binding.token):
            self._unbind()
            raise OpError(
                UNAUTHORIZED,
                "the token no longer works (rotated, or the client was deleted); auth again",
            )
        self.checked_at = time.monotonic()

    async def _insert_task(self, request: Request) -> dict[str, Any]:
        await self.store.insert_task(request.cid, request.title, request.description)
        return {}

    async def _update_task(self, request: Request) -> dict[str, Any]:
        await self.store.update_task(request.cid, request.title, request.description)
        return {}

    async def _list_tasks(self, request: Request) -> dict[str, Any]:
        tasks = await self.store.list_tasks(request.cid)
        return {"tasks": [{"title": t.title, "description": t.description} for t in tasks]}

    async def _delete_task(self, request: Request) -> dict[str, Any]:
        await self.store.delete_task(request.cid, request.title)
        return {}

    async def _delete_tasks(self, request: Request) -> dict[str, Any]:
        return {"deleted": await self.store.delete_tasks(request.cid)}

    async def _watch(self, request: Request) -> dict[str, Any]:
        if self.unwatch is None:
            self.unwatch = await self.store.watch(request.cid, self._on_event)
        return {}

    # ---- events ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        # Called inside the store's write path: a failure here must not fail that write.
        try:
            self._route_event(event)
        except Exception:
            log.exception("%s: could not pass on an event", self.peer)
            self._abort("event delivery failed")

    def _route_event(self, event: Event) -> None:
        if event.kind == TOKEN_ROTATED:
            self._revoked()
        elif self.held is not None:
            self._hold(event)
        elif time.monotonic() - self.checked_at < self.limits.revalidate_interval:
            self._push_event(event)
        else:
            self.held = [event]
            self.recheck = asyncio.create_task(self._recheck_token())

    def _hold(self, event: Event) -> None:
        assert self.held is not None
        self.held.append(event)
        self.held_bytes += _event_size(event)
        if len(self.held) > self.limits.max_held_events:
            self._abort(f"more than {self.limits.max_held_events} events held back")
        else:
            self._check_watch_budget()

    async def _recheck_token(self) -> None:
        binding = self.binding
        try:
            valid = binding is not None and await self.store.authenticate(
                binding.cid, binding.token
            )
        except Exception as exc:
            # The store cannot tell right now; the watch was granted, so keep it going.
            log.warning("%s: could not check the watcher's token: %s", self.peer, exc)
            valid = True
        held, self.held, self.recheck = self.held or [], None, None
        self.held_bytes = 0
        if valid:
            self.checked_at = time.monotonic()
            self._push_events(held)
        else:
            self._revoke(held)

    def _revoked(self) -> None:
        """The store says the token was rotated, in order with the events: nothing after
        it may reach this connection. What was held back goes too: the client must
        authenticate (and list) again anyway."""
        self._unbind()
        log.info("%s: closing a watch: its client's token was rotated", self.peer)
        self.transport.close()

    def _revoke(self, held: list[Event]) -> None:
        """The watcher's token stopped working; deliver up to a deletion, else disconnect."""
        kinds = [event.kind for event in held]
        if CLIENT_DELETED in kinds:
            self._push_events(held[: kinds.index(CLIENT_DELETED) + 1])
            return
        self._unbind()
        log.info("%s: closing a watch whose token no longer works", self.peer)
        self.transport.close()

    def _push_events(self, events: list[Event]) -> None:
        for event in events:
            if self.unwatch is None:
                return  # the watch ended part way (the client was deleted)
            self._push_event(event)

    def _push_event(self, event: Event) -> None:
        self._write(event_line(event.to_wire()))
        if event.kind == CLIENT_DELETED:
            self._unbind()
        else:
            self._check_watch_budget()

    def _check_watch_budget(self) -> None:
        """Events for a client that does not read must not pile up in the portal's memory:
        past the budget (per connection, per client) the connection is closed."""
        if self.binding is None or self.unwatch is None or self.transport.is_closing():
            return
        queued = self.transport.get_write_buffer_size() + self.held_bytes
        problem = self.context.watch_budget.update(self, self.binding.cid, queued)
        if problem is not None:
            self._close_over_budget(problem)

    def _close_over_budget(self, problem: str) -> None:
        log.warning("%s: closing a watching connection: %s", self.peer, problem)
        self._unbind()
        self.writer.write(error_line(None, UNAVAILABLE, f"{problem}; the connection is closed"))
        self.closing = True
        self.transport.close()
        # close() waits for the queue to leave, which a client that does not read never
        # lets happen: then drop it, freeing the queue.
        loop = asyncio.get_running_loop()
        loop.call_later(OVER_BUDGET_GRACE, self.transport.abort)

    def _stop_watch(self) -> None:
        if self.unwatch is not None:
            self.unwatch()
            self.unwatch = None
            self.context.watch_budget.release(self)
        if self.recheck is not None:
            self.recheck.cancel()
            self.recheck = None
        self.held = None
        self.held_bytes = 0

    def _unbind(self) -> None:
        self._stop_watch()
        self.binding = None

    # ---- writing -------------------------------------------------------------------

    async def _send(self, line: bytes) -> None:
        """Write a response, then wait while the client is behind on reading."""
        self._write(line)
        await self.writer.drain()

    def _write(self, line: bytes) -> None:
        if self.closing or self.transport.is_closing():
            return
        if self.unsent:  # answers kept back go first: responses stay before later events
            line = b"".join([*self.unsent, line])
            self.unsent.clear()
        self.writer.write(line)
        queued = self.transport.get_write_buffer_size()
        if queued > self.limits.write_buffer_hard:
            self._abort(f"{queued} bytes queued for a client that does not read")
        elif queued > self.limits.write_buffer and self.stall_timer is None:
            loop = asyncio.get_running_loop()
            self.stall_timer = loop.call_later(self.limits.stall_timeout, self._check_stall)

    def _check_stall(self) -> None:
        self.stall_timer = None
        queued = self.transport.get_write_buffer_size()
        if queued > self.limits.write_buffer:
            self._abort(f"still {queued} bytes queued after {self.limits.stall_timeout}s")

    def _abort(self, why: str) -> None:
        log.warning("%s: dropping the connection: %s", self.peer, why)
        self._unbind()
        self.transport.abort()

    def _teardown(self, graceful: bool) -> None:
        self._unbind()
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        if not graceful:
            self.transport.abort()
            return
        self.transport.close()
        if self.transport.get_write_buffer_size() == 0:
            return
        # close() waits for queued bytes to leave; a client that never reads must not keep us.
        loop = asyncio.get_running_loop()
        loop.call_later(self.limits.stall_timeout, self.transport.abort)


_Operation = Callable[[Connection, Request], Awaitable[dict[str, Any]]]
_OPERATIONS: dict[str, _Operation] = {
    "insert_task": Connection._insert_task,
    "update_task": Connection._update_task,
    "list_tasks": Connection._list_tasks,
    "delete_task": Connection._delete_task,
    "delete_tasks": Connection._delete_tasks,
    "watch": Connection._watch,
}


def _event_size(event: Event) -> int:
    """About what an event costs while held: its text and a line's worth of overhead."""
    return 96 + len(event.title or "") + len(event.description or "")


def peer_ip(writer: asyncio.StreamWriter) -> str:
    """The source address a connection's limits are counted against."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "local"  # a Unix socket, or a transport that does not say


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _enable_keepalive(writer: asyncio.StreamWriter) -> None:
    """Let the kernel find peers that vanished without closing (about 2 minutes)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
