"""A portal's side of the `ring` storage mode as a pure core: routing, retries, batching.

RingStore (backend/adapters/store/ring_store.py) and the system simulator both
drive this one object, so the simulator's seeds check the code production runs.
Time comes in with every input; the driver publishes what comes out.

    core = PortalCore(corr_prefix, reply_topic)
    call = core.call(key, op, now)          # an operation on the owner of `key`
    scan = core.scan(host, after, limit, now)   # one cache node's clients (listings)
    core.on_announce(message, now)          # what arrives on RING_ANNOUNCE
    core.on_reply(message, now)             # what arrives on the reply topic
    core.tick(now)                          # at core.next_tick(), or later
    core.unsent(message, problem, now)      # a flushed message could not be published
    core.flush() -> [(topic, message)]      # what to publish, batched per topic
    core.take() -> [Completed | AttemptFailed]

Retries and honest outcomes: docs/architecture.md, "Request ids and honest outcomes".
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from backend.core import topics
from backend.core.drops import Drops
from backend.core.errors import CODES, INTERNAL, TIMEOUT, UNAVAILABLE, OpError
from backend.core.model.kv import READ_OPS
from backend.core.ring import wire

REQUEST_TIMEOUT = 5.0  # seconds until a request's outcome is declared unknown
HOST_FRESHNESS = 1.6  # announcements come twice a second; three missed ones mean gone
RETRY_PAUSE = 0.05
ATTEMPT_WAIT = 1.0  # before a repeatable request tries another entry node

Message = dict[str, Any]
CallId = int

# Why an attempt ended without an outcome (AttemptFailed.why).
SILENCE = "silence"  # no answer within its wait
WILL = "will"  # its entry node, or its key's owner, died
REFUSED = "refused"  # answered `unavailable`: not applied
UNSENT = "unsent"  # it could not be published


@dataclass(slots=True)
class HostInfo:
    positions: list[int]
    member: bool
    heard: float
    durable: bool = False
    incarnation: str = ""


@dataclass(frozen=True, slots=True)
class Completed:
    """A call's outcome: the owner's result map, or the error it ends with. `reply` is
    the last reply the call read (its route, for tracing); `owner` names the cache node
    whose reply decided the outcome ("" when the portal itself gave up)."""

    call: CallId
    result: dict[str, Any] | OpError
    reply: Message | None = None
    owner: str = ""


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An attempt of `call` ended without an outcome (`why`: SILENCE, WILL, REFUSED or
    UNSENT; `message` is the refusal's or the publishing error's text). The call goes
    on; this is for counting."""

    call: CallId
    why: str
    message: str = ""


Output = Completed | AttemptFailed


@dataclass(slots=True)
class _Request:
    key: int
    op: dict[str, Any]
    deadline: float
    trace: bool
    tried: set[str] = field(default_factory=set)
    last_problem: str = "no cache node is in the ring"
    maybe_applied: bool = False
    last_reply: Message | None = None
    corr: str | None = None  # the attempt in flight
    entry: str = ""  # the cache node it was sent to
    repeatable: bool = False
    expires: float = math.inf  # when the attempt in flight ends unanswered
    resume: float | None = None  # when a pausing request tries again

    @property
    def is_read(self) -> bool:
        return self.op["op"] in READ_OPS


@dataclass(slots=True)
class _Scan:
    host: str
    corr: str
    expires: float


class PortalCore:
    def __init__(
        self,
        corr_prefix: str,
        reply_topic: str,
        request_timeout: float = REQUEST_TIMEOUT,
        drops: Drops | None = None,
    ) -> None:
        self.corr_prefix = corr_prefix
        self.reply_topic = reply_topic
        self.request_timeout = request_timeout
        self.drops = drops or Drops(f"portal {corr_prefix}")
        self.hosts: dict[str, HostInfo] = {}
        self._gone: dict[str, tuple[str, float]] = {}  # host -> (incarnation, when its will came)
        self._calls: dict[CallId, _Request | _Scan] = {}
        self._waiting: dict[str, CallId] = {}  # corr of an attempt or scan in flight -> call
        self._outbox: dict[str, list[Message]] = {}
        self._outputs: list[Output] = []
        # (time, call) for each time a call becomes due; an entry whose call is gone or
        # due at another time by now is stale, and skipped.
        self._timers: list[tuple[float, CallId]] = []
        self._ids = itertools.count()  # correlation and request ids
        self._call_ids = itertools.count()

    # ---- starting operations ---------------------------------------------------------

    def call(self, key: int, op: dict[str, Any], now: float, trace: bool = False) -> CallId:
        """Start `op` on the owner of `key`; its Completed comes out of `take`."""
        if op["op"] not in READ_OPS:
            # Always: Chord may deliver one attempt to two owners in turn (a hop resent
            # and routed around a node), and a durable group then still applies it once.
            op = {**op, "req": f"{self.corr_prefix}/w{next(self._ids)}"}
        call_id = next(self._call_ids)
        request = _Request(key, op, now + self.request_timeout, trace)
        self._calls[call_id] = request
        self._try(call_id, request, now)
        return call_id

    def scan(self, host: str, after: int, limit: int, now: float) -> CallId:
        """Ask cache node `host` for its clients after `after` (-1: from the start)."""
        call_id = next(self._call_ids)
        corr = self.next_corr()
        self._calls[call_id] = _Scan(host, corr, now + self.request_timeout)
        self._waiting[corr] = call_id
        self._due_at(call_id, now + self.request_timeout)
        self._send(host, wire.Scan(corr, self.reply_topic, after, limit).to_wire())
        return call_id

    def cancel(self, call_id: CallId) -> None:
        """Stop a call nobody waits for any more; a late answer to it is ignored."""
        call = self._calls.pop(call_id, None)
        if call is not None and call.corr is not None:
            self._waiting.pop(call.corr, None)

    def next_corr(self) -> str:
        return f"{self.corr_prefix}/{next(self._ids)}"

    # ---- outputs ---------------------------------------------------------------------

    def flush(self) -> list[tuple[str, Message]]:
        """What was sent since the last flush, one batch per topic (wire.batched)."""
        outbox, self._outbox = self._outbox, {}
        return wire.batched(outbox)

    def has_outbox(self) -> bool:
        return bool(self._outbox)

    def take(self) -> list[Output]:
        outputs, self._outputs = self._outputs, []
        return outputs

    def next_tick(self) -> float | None:
        """When `tick` has something to do next (an attempt's wait ends, a pause ends)."""
        timers = self._timers
        while timers and not self._is_due_at(*timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # ---- time --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, call_id = heapq.heappop(timers)
            if not self._is_due_at(at, call_id):
                continue
            call = self._calls[call_id]
            if isinstance(call, _Scan):
                self._fail_scan(call_id, call, f"cache node {call.host} did not answer a scan")
            elif call.corr is not None:
                self._unanswered(call_id, call, SILENCE, now)
            else:
                call.resume = None
                self._try(call_id, call, now)

    def unsent(self, message: Message, problem: str, now: float) -> None:
        """A message from `flush` could not be published: what it carried failed."""
        try:
            sent = wire.unbatch(message)
        except ValueError:
            return  # not one this core made
        for item in sent:
            call_id = self._waiting.get(str(item.get("corr")))
            if call_id is None:
                continue  # it ended meanwhile
            call = self._calls[call_id]
            if isinstance(call, _Scan):
                self._fail_scan(call_id, call, f"cache node {call.host} did not answer a scan")
                continue
            self._end_attempt(call)
            call.last_problem = f"cannot reach the ring: {problem}"
            self._outputs.append(AttemptFailed(call_id, UNSENT, problem))
            self._pause(call_id, call, now)

    # ---- what arrives ------------------------------------------------------------------

    def receive(self, topic: str, message: Message, now: float) -> None:
        if topic == topics.RING_ANNOUNCE:
            self.on_announce(message, now)
        elif topic == self.reply_topic:
            self.on_reply(message, now)
        else:
            self.drops.drop("message", "not on a topic a portal hears", topic)

    def on_announce(self, message: Message, now: float) -> None:
        if message.get("t") == wire.HOST_GONE:
            self._on_host_gone(message, now)
            return
        try:
            announce = wire.Announce.from_wire(message)
        except ValueError as exc:
            self.drops.bad("announcement", exc)
            return
        host, incarnation = announce.host, announce.incarnation
        gone = self._gone.pop(host, None)
        if gone is not None and gone[0] == incarnation and now - gone[1] < HOST_FRESHNESS:
            # Sent before it died, arriving after its will. Only for a while: a node whose
            # connection dropped (the broker sent its will) may reconnect and announce on.
            self._gone[host] = gone
            return
        self.hosts[host] = HostInfo(
            list(announce.positions), announce.member, now, announce.durable is True, incarnation
        )

    def on_reply(self, message: Message, now: float) -> None:
        try:
            replies = wire.unbatch(message)
        except ValueError as exc:
            self.drops.bad("batch of replies", exc)
            return
        for message in replies:
            try:
                reply = wire.Reply.from_wire(message)
            except ValueError as exc:
                self.drops.bad("reply", exc)
                continue
            call_id = self._waiting.get(reply.corr)
            if call_id is not None:  # else a repeat, or one nobody waits for any more
                self._answered(call_id, self._calls[call_id], reply, message, now)

    def _on_host_gone(self, message: Message, now: float) -> None:
        """A cache node died (the broker published its will) or shut down: drop it, and
        send again at once, through another entry, every repeatable attempt waiting on
        it, as its entry or as its key's owner. A will of an incarnation other than the
        latest announced is an earlier run's, and changes nothing."""
        try:
            gone = wire.HostGone.from_wire(message)
        except ValueError as exc:
            self.drops.bad("host_gone", exc)
            return
        host, incarnation = gone.host, gone.incarnation
        info = self.hosts.get(host)
        if info is None or info.incarnation != incarnation:
            return
        stranded = [
            call_id
            for call_id in self._waiting.values()
            if self._waits_on(self._calls[call_id], host, now)
        ]
        del self.hosts[host]
        self._gone[host] = (incarnation, now)
        for call_id in stranded:
            call = self._calls[call_id]
            if isinstance(call, _Scan):
                self._fail_scan(call_id, call, f"cache node {host} died during a scan")
            else:
                self._unanswered(call_id, call, WILL, now)

    def _waits_on(self, call: _Request | _Scan, host: str, now: float) -> bool:
        if isinstance(call, _Scan):
            return call.host == host
        return call.repeatable and host in (call.entry, self.entry_for(call.key, set(), now))

    # ---- the ring as heard ---------------------------------------------------------------

    def member_hosts(self, now: float) -> list[str]:
        return [
            host
            for host, info in self.hosts.items()
            if info.member and now - info.heard < HOST_FRESHNESS
        ]

    def durable(self, now: float) -> bool:
        """Whether the ring's nodes keep their keys in replica groups."""
        hosts = self.member_hosts(now)
        return bool(hosts) and all(self.hosts[h].durable for h in hosts)

    def entry_for(self, key: int, avoid: set[str], now: float) -> str | None:
        """The member host with the first position at or after `key` (wrapping), if any."""
        ring = sorted(
            (pos, host)
            for host in self.member_hosts(now)
            if host not in avoid
            for pos in self.hosts[host].positions
        )
        if not ring:
            return None
        index = bisect.bisect_left(ring, (key, ""))
        return ring[index % len(ring)][1]

    # ---- a request's attempts ------------------------------------------------------------

    def _try(self, call_id: CallId, call: _Request, now: float) -> None:
        """The next attempt, a pause, or the verdict once the deadline has come.

        An attempt that is repeatable (a read, or a write while the ring is durable)
        waits ATTEMPT_WAIT at most; a write to a memory-only ring waits for its answer
        until the deadline instead.
        """
        if now >= call.deadline:
            self._finish(call_id, self._verdict(call), call.last_reply)
            return
        entry = self.entry_for(call.key, call.tried, now)
        if entry is None:
            call.tried.clear()
            self._pause(call_id, call, now)
            return
        call.tried.add(entry)
        call.repeatable = call.is_read or self.durable(now)
        wait = max(0.0, call.deadline - now)
        call.corr, call.entry = self.next_corr(), entry
        call.expires = now + (min(wait, ATTEMPT_WAIT) if call.repeatable else wait)
        self._due_at(call_id, call.expires)
        self._waiting[call.corr] = call_id
        request = wire.Request(call.corr, self.reply_topic, call.key, call.op, call.trace)
        self._send(entry, request.to_wire())

    def _unanswered(self, call_id: CallId, call: _Request, why: str, now: float) -> None:
        """No answer in time, or none will come: try again at once."""
        self._end_attempt(call)
        call.last_problem = f"cache node {call.entry} did not answer"
        call.maybe_applied = call.maybe_applied or not call.is_read
        self._outputs.append(AttemptFailed(call_id, why))
        self._try(call_id, call, now)

    def _answered(
        self,
        call_id: CallId,
        call: _Request | _Scan,
        reply: wire.Reply,
        message: Message,
        now: float,
    ) -> None:
        """`reply` decoded from `message`, the map Completed carries for tracing."""
        if isinstance(call, _Scan):
            self._waiting.pop(call.corr, None)
            self._finish(call_id, _result(reply), message, reply.owner)
            return
        self._end_attempt(call)
        call.last_reply = message
        result = _result(reply)
        if isinstance(result, OpError) and result.code == UNAVAILABLE:
            call.last_problem = result.message
            self._outputs.append(AttemptFailed(call_id, REFUSED, result.message))
            self._pause(call_id, call, now)
            return
        self._finish(call_id, result, message, reply.owner)

    def _end_attempt(self, call: _Request) -> None:
        if call.corr is not None:
            self._waiting.pop(call.corr, None)
        call.corr, call.expires = None, math.inf

    def _verdict(self, call: _Request) -> OpError:
        if call.maybe_applied:
            return OpError(
                TIMEOUT,
                f"no answer from the ring in {self.request_timeout:g}s; the change "
                "may or may not have been applied",
            )
        return OpError(
            UNAVAILABLE,
            f"{call.op['op']} not applied in {self.request_timeout:g}s: {call.last_problem}",
        )

    # ---- endings -------------------------------------------------------------------------

    def _fail_scan(self, call_id: CallId, scan: _Scan, problem: str) -> None:
        self._waiting.pop(scan.corr, None)
        self._finish(call_id, OpError(UNAVAILABLE, problem))

    def _finish(
        self,
        call_id: CallId,
        result: dict[str, Any] | OpError,
        reply: Message | None = None,
        owner: str = "",
    ) -> None:
        del self._calls[call_id]
        self._outputs.append(Completed(call_id, result, reply, owner))

    def _send(self, host: str, message: Message) -> None:
        self._outbox.setdefault(topics.ring_host(host), []).append(message)

    def _pause(self, call_id: CallId, call: _Request, now: float) -> None:
        call.resume = now + RETRY_PAUSE
        self._due_at(call_id, call.resume)

    def _due_at(self, call_id: CallId, at: float) -> None:
        heapq.heappush(self._timers, (at, call_id))

    def _is_due_at(self, at: float, call_id: CallId) -> bool:
        call = self._calls.get(call_id)
        if call is None:
            return False
        if isinstance(call, _Scan) or call.corr is not None:
            return call.expires == at
        return call.resume == at


def _result(reply: wire.Reply) -> dict[str, Any] | OpError:
    """A reply's result map, or its error."""
    if reply.ok:
        return reply.result if reply.result is not None else {}
    return OpError(reply.code if reply.code in CODES else INTERNAL, reply.text)
