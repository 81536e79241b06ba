"""The MQTT transport without a client library: an asyncio protocol speaking MQTT 3.1.1.

It offers what MqttBus offers (see there: reconnecting forever, re-subscribing
every filter and then running the `on_connect` hooks, a last will on every
connect, handlers one at a time in arrival order, drops counted) at a
fraction of its CPU cost, because the hot path does almost nothing:

- A QoS-0 `send` or `publish` encodes one packet and appends it to the
  connection's outgoing buffer; the buffer goes out in one `transport.write`
  per turn of the event loop. No task, future or event per message.
- Received bytes feed a `PacketDecoder`; messages go to a deque that the
  session's own coroutine drains, calling handlers in order.
- QoS-1 publishes (last wills, a few control messages), SUBSCRIBE and
  UNSUBSCRIBE each wait for their acknowledgement on a future.

Backpressure, outgoing: while the transport asks us to pause (the broker
reads slower than we write), packets wait in our buffer. Past MAX_BUFFERED
bytes there, `send` drops the message and counts it (`outgoing_dropped`, and
in `drops` as ("outgoing", "broker cannot keep up"), so heartbeats and
/metrics report it), and `publish` waits until the buffer drains.

Backpressure, incoming: messages received but not yet handled wait in the
inbox. Past MAX_INBOX messages or MAX_INBOX_BYTES bytes of payload there (a
component slower than what it is sent), the connection stops reading from
the socket, so TCP pushes back on the broker instead of this process growing
without limit; it reads again once the inbox is below half of both bounds.
The broker then queues for us, and past its own per-client limits drops
(Mosquitto 2.0 holds up to max_queued_messages, 1000 by default, and
max_queued_bytes of packets for a client and drops further QoS-0 messages to
it): the protocols above retry what matters. Reading goes on while an
acknowledgement is awaited, so a handler that publishes at QoS 1 is never
stuck behind its own inbox; the keepalive does not count the paused time as
the broker's silence.

Keepalive: a PINGREQ goes out every keepalive / 2 seconds; a broker silent for
1.5 x keepalive is taken for dead and the connection is dropped and made again.
With several broker nodes, sooner (failover.liveness): a node silent for
FAILOVER_SILENCE seconds is left for the next.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from backend.adapters.bus.dispatch import Route, deliver, routes
from backend.adapters.bus.failover import liveness
from backend.adapters.bus.session import RECONNECT_DELAYS, BrokerSession
from backend.adapters.bus.transport import BusUnavailable, LastWill, Message
from backend.adapters.settings import BrokerAddress, BrokerAddresses
from backend.core import mqtt_packets as mqtt
from backend.core.codec import pack
from backend.core.drops import Drops, rate_limited

log = logging.getLogger(__name__)

__all__ = ["RECONNECT_DELAYS", "LeanMqttBus", "SessionEnded"]

CONNECT_TIMEOUT = 5.0  # TCP (and TLS) connect, then the CONNACK
ACK_TIMEOUT = 5.0  # a PUBACK, SUBACK or UNSUBACK
MAX_BUFFERED = 8 * 1024 * 1024  # bytes held while the broker cannot keep up
MAX_INBOX = 10_000  # messages received and not yet handled before reading pauses
MAX_INBOX_BYTES = 64 * 1024 * 1024  # their payload bytes before reading pauses
OUTGOING_DROP = ("outgoing", "broker cannot keep up")  # how `drops` counts a dropped `send`
FILTERS_PER_SUBSCRIBE = 64
FLUSH_POLL = 0.005
MAX_ROUTES = 4096  # topics whose matching handlers are remembered


class SessionEnded(ConnectionError):
    """The connection to the broker is gone or unusable; the text says why."""


class _Connection(asyncio.Protocol):
    """One connection to the broker: packets out once per loop turn, packets in as they come."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_buffered: int,
        max_inbox: int = MAX_INBOX,
        max_inbox_bytes: int = MAX_INBOX_BYTES,
    ) -> None:
        self.loop = loop
        self.max_buffered = max_buffered
        self.max_inbox = max_inbox
        self.max_inbox_bytes = max_inbox_bytes
        self.transport: asyncio.Transport | None = None
        self.decoder = mqtt.PacketDecoder()
        self.inbox: collections.deque[mqtt.Publish] = collections.deque()
        self.inbox_bytes = 0  # payload bytes in the inbox
        self.reading_paused = False  # by us, because the inbox is over its bound
        self.error: str | None = None  # set once the connection is lost
        self.last_received = loop.time()
        self.connack: asyncio.Future[mqtt.ConnAck] = loop.create_future()
        # Packet id -> what waits for its acknowledgement (None: nothing waits).
        self.acks: dict[int, asyncio.Future[mqtt.Packet] | None] = {}
        self._next_id = 0
        self._out: list[bytes] = []
        self.buffered = 0  # bytes in _out
        self._flush_due = False
        self._paused = False
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._room_waiters: list[asyncio.Future[None]] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack like one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Without TCP_NODELAY a QoS-1 round trip stalls on Nagle's algorithm.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        try:
            packets = self.decoder.feed(data)
        except mqtt.ProtocolError as exc:
            self.fail(f"the broker sent a malformed packet: {exc}")
            return
        for packet in packets:
            if type(packet) is mqtt.Publish:
                self.inbox.append(packet)
                self.inbox_bytes += len(packet.payload)
                if packet.packet_id is not None:
                    self.write(mqtt.puback(packet.packet_id))
            else:
                self._acknowledged(packet)
        if not self.reading_paused and (
            len(self.inbox) > self.max_inbox or self.inbox_bytes > self.max_inbox_bytes
        ):
            self._pause_reading()
        waiter = self._inbox_waiter
        if self.inbox and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = f"connection lost: {exc}" if exc else "the broker closed the connection"
        self.transport = None
        self._out.clear()
        self.buffered = 0
        lost = BusUnavailable(self.error)
        waiters = [self.connack, self._inbox_waiter, *self._room_waiters, *self.acks.values()]
        for future in waiters:
            if future is not None and not future.done():
                future.set_exception(lost)
                future.exception()  # retrieved: a waiter may be gone already
        self.acks.clear()
        self._room_waiters.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule_flush()

    # Reading backpressure

    def _pause_reading(self) -> None:
        transport = self.transport
        if self.acks or transport is None or transport.is_closing():
            return  # an acknowledgement is awaited: it must get in
        transport.pause_reading()
        self.reading_paused = True

    def _resume_reading(self) -> None:
        transport = self.transport
        self.reading_paused = False
        # The broker was not silent: we did not listen. The keepalive counts from now.
        self.last_received = self.loop.time()
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def take(self) -> mqtt.Publish:
        """The oldest message of the inbox; reading resumes once it is below half its bounds."""
        packet = self.inbox.popleft()
        self.inbox_bytes -= len(packet.payload)
        if (
            self.reading_paused
            and len(self.inbox) <= self.max_inbox // 2
            and self.inbox_bytes <= self.max_inbox_bytes // 2
        ):
            self._resume_reading()
        return packet

    # Writing

    @property
    def open(self) -> bool:
        return self.error is None

    def write(self, packet: bytes) -> None:
        self._out.append(packet)
        self.buffered += len(packet)
        if not self._flush_due and not self._paused:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def _schedule_flush(self) -> None:
        if self._out and not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def write_now(self) -> None:
        """Hand what is queued to the transport at once (the flush scheduled for the end
        of this turn then finds nothing to write)."""
        self._flush()

    def _flush(self) -> None:
        self._flush_due = False
        transport = self.transport
        if self._paused or transport is None or transport.is_closing() or not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self.buffered = 0
        transport.write(data)
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._room_waiters.clear()

    @property
    def full(self) -> bool:
        return self.buffered >= self.max_buffered

    async def room(self) -> None:
        """Wait until the outgoing buffer is below its bound again."""
        while self.full:
            waiter = self.loop.create_future()
            self._room_waiters.append(waiter)
            await waiter

    def drained(self) -> bool:
        transport = self.transport
        return not self._out and (transport is None or transport.get_write_buffer_size() == 0)

    def fail(self, why: str) -> None:
        """Give up on this connection (abort it): the session ends and reconnects."""
        if self.error is None:
            self.error = why
        if self.transport is not None:
            self.transport.abort()

    def close(self, goodbye: bool) -> None:
        """Close the connection; with `goodbye`, say DISCONNECT first (no last will)."""
        transport = self.transport
        if transport is None:
            return
        if goodbye and self.open:
            self._out.append(mqtt.DISCONNECT)
            self._paused = False  # the transport buffers the rest: the goodbye must go out
            self._flush()
            transport.close()  # after what is buffered is written
        else:
            transport.abort()

    # Acknowledgements

    def packet_id(self) -> int:
        if len(self.acks) >= mqtt.MAX_PACKET_ID:
            raise BusUnavailable("every MQTT packet id awaits its acknowledgement")
        while True:
            self._next_id = self._next_id % mqtt.MAX_PACKET_ID + 1
            if self._next_id not in self.acks:
                return self._next_id

    def expect(self, packet_id: int) -> asyncio.Future[mqtt.Packet]:
        future: asyncio.Future[mqtt.Packet] = self.loop.create_future()
        self.expect_unawaited(packet_id)
        self.acks[packet_id] = future
        return future

    def expect_unawaited(self, packet_id: int) -> None:
        """Note a packet id whose acknowledgement nobody waits for (but `flush` does)."""
        self.acks[packet_id] = None
        if self.reading_paused:
            self._resume_reading()  # the acknowledgement must get in; pauses again after

    async def acknowledgement(self, packet_id: int, future: asyncio.Future[mqtt.Packet]) -> Any:
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                return await future
        except TimeoutError:
            raise BusUnavailable(f"no acknowledgement within {ACK_TIMEOUT} s") from None
        finally:
            if self.acks.get(packet_id) is future:
                del self.acks[packet_id]

    def _acknowledged(self, packet: mqtt.Packet) -> None:
        if type(packet) is mqtt.ConnAck:
            if not self.connack.done():
                self.connack.set_result(packet)
            return
        packet_id = getattr(packet, "packet_id", None)
        if packet_id is None:
            return  # PINGRESP: last_received says enough
        if packet_id not in self.acks:
            return  # late: its waiter gave up
        future = self.acks.pop(packet_id)
        if future is not None and not future.done():
            future.set_result(packet)

    # Reading

    async def next_batch(self) -> None:
        """Wait until the inbox has messages; raise SessionEnded once the connection is lost
        and every message received before is taken."""
        while not self.inbox:
            if self.error is not None:
                raise SessionEnded(self.error)
            self._inbox_waiter = self.loop.create_future()
            with contextlib.suppress(BusUnavailable):
                await self._inbox_waiter
            self._inbox_waiter = None


class LeanMqttBus(BrokerSession[_Connection]):
    filters_per_subscribe = FILTERS_PER_SUBSCRIBE

    def __init__(
        self,
        address: BrokerAddress | BrokerAddresses,
        client_id: str,
        *,
        keepalive: int = 10,
        will: LastWill | None = None,
        drops: Drops | None = None,
        max_buffered: int = MAX_BUFFERED,
        max_inbox: int = MAX_INBOX,
        max_inbox_bytes: int = MAX_INBOX_BYTES,
    ) -> None:
        super().__init__(address, client_id, keepalive=keepalive, will=will, drops=drops, log=log)
        self.max_buffered = max_buffered
        self.max_inbox = max_inbox
        self.max_inbox_bytes = max_inbox_bytes
        self.outgoing_dropped = 0  # `send`s dropped while the broker could not keep up
        self._connection: _Connection | None = None
        # topic -> its matching handlers; forgotten whenever a subscription changes.
        self._routes: dict[str, tuple[Route, ...]] = {}

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and connection.open

    # Publishing

    def _open_connection(self) -> _Connection:
        connection = self._connection
        if connection is None or not connection.open:
            raise BusUnavailable(f"not connected to the broker at {self.address.redacted()}")
        return connection

    def send(self, topic: str, message: Message, qos: int = 0) -> None:
        connection = self._open_connection()
        if connection.full:
            self._drop_outgoing(topic)
            return
        if qos:
            packet_id = connection.packet_id()
            connection.expect_unawaited(packet_id)
            connection.write(mqtt.publish(topic, pack(message), qos=1, packet_id=packet_id))
        else:
            connection.write(mqtt.publish(topic, pack(message)))

    def _drop_outgoing(self, topic: str) -> None:
        """Count a `send` dropped for a full buffer, here and in `drops` (so it reaches the
        heartbeat's metrics["dropped"] and /metrics as taskring_dropped_messages_total)."""
        self.outgoing_dropped += 1
        count = self.drops.count(*OUTGOING_DROP)
        if rate_limited(count):
            log.warning(
                "bus %s: the broker cannot keep up; dropped a message to %s [%d so far]",
                self.client_id,
                topic,
                count,
            )

    async def flush(self, timeout: float) -> None:
        """Wait up to `timeout` s until what was sent is written and its PUBACKs are in."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (connection := self._connection) is not None and loop.time() < deadline:
            # What this turn queued goes to the socket now, not at the end of the turn:
            # otherwise the first check always fails and the caller sleeps a poll for
            # nothing (a Raft leader waits here before every fsync).
            connection.write_now()
            unacknowledged = any(future is None for future in connection.acks.values())
            if connection.drained() and not unacknowledged:
                return
            await asyncio.sleep(FLUSH_POLL)

    async def publish(self, topic: str, message: Message, *, qos: int = 1) -> None:
        connection = self._open_connection()
        if connection.full:
            await connection.room()
        payload = pack(message)
        if not qos:
            connection.write(mqtt.publish(topic, payload))
            return
        packet_id = connection.packet_id()
        future = connection.expect(packet_id)
        connection.write(mqtt.publish(topic, payload, qos=1, packet_id=packet_id))
        try:
            await connection.acknowledgement(packet_id, future)
        except BusUnavailable as exc:
            raise BusUnavailable(f"publish to {topic} failed: {exc}") from exc

    # Subscribing (the bookkeeping is BrokerSession's)

    def _link(self) -> _Connection | None:
        return self._connection

    def _attach(self, link: _Connection | None) -> None:
        self._connection = link

    def _subscriptions_changed(self) -> None:
        self._routes.clear()

    def _request_unsubscription(self, link: _Connection, topic_filter: str) -> None:
        # Written now, so it reaches the broker before any later SUBSCRIBE to the filter.
        packet_id = link.packet_id()
        link.expect_unawaited(packet_id)
        link.write(mqtt.unsubscribe(packet_id, [topic_filter]))

    async def _request_subscription(self, link: _Connection, filters: list[str]) -> Sequence[int]:
        """SUBSCRIBE at QoS 0 (every message is published at QoS 0, so a higher grant buys
        nothing) and wait for the SUBACK."""
        if not link.open:
            raise BusUnavailable(link.error or "not connected")
        packet_id = link.packet_id()
        future = link.expect(packet_id)
        link.write(mqtt.subscribe(packet_id, [(f, 0) for f in filters]))
        try:
            suback = await link.acknowledgement(packet_id, future)
        except BusUnavailable as exc:
            raise BusUnavailable(f"subscribe to {', '.join(filters)} failed: {exc}") from exc
        codes: Sequence[int] = suback.return_codes
        return codes

    # The connection (the loop around it is BrokerSession's)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[_Connection]:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop, self.max_buffered, self.max_inbox, self.max_inbox_bytes)
        tls = self.address.tls_context()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await loop.create_connection(
                lambda: connection, self.address.host, self.address.port, ssl=tls
            )
        goodbye = False
        try:
            await self._handshake(connection)
            pinger = asyncio.create_task(self._keep_alive(connection))
            try:
                yield connection
            finally:
                pinger.cancel()
        except asyncio.CancelledError:
            goodbye = True  # stopped on purpose: no last will
            raise
        finally:
            self._connection = None
            connection.close(goodbye)

    async def _handshake(self, connection: _Connection) -> None:
        will = self.will
        connection.write(
            mqtt.connect(
                self.client_id,
                username=self.address.username,
                password=self.address.password if self.address.username is not None else None,
                keepalive=self.keepalive,
                clean_session=True,
                will_topic=None if will is None else will.topic,
                will_payload=b"" if will is None else pack(will.message),
                will_qos=0 if will is None else will.qos,
            )
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                connack = await connection.connack
        except BusUnavailable as exc:
            raise SessionEnded(str(exc)) from None
        except TimeoutError:
            raise SessionEnded(f"no CONNACK within {CONNECT_TIMEOUT} s") from None
        if connack.return_code != mqtt.CONNACK_ACCEPTED:
            reason = mqtt.connack_reason(connack.return_code)
            raise SessionEnded(f"the broker refused the connection: {reason}")

    async def _read(self, connection: _Connection) -> None:
        """Hand each received message to its handlers, one at a time in arrival order."""
        inbox = connection.inbox
        while True:
            await connection.next_batch()
            while inbox:
                packet = connection.take()
                topic = packet.topic
                await deliver(self._routes_of(topic), self.drops, topic, packet.payload)

    def _routes_of(self, topic: str) -> tuple[Route, ...]:
        matched = self._routes.get(topic)
        if matched is None:
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()  # topics with ids in them must not grow this for good
            matched = self._routes[topic] = routes(self.handlers, topic)
        return matched

    async def _keep_alive(self, connection: _Connection) -> None:
        timing = liveness(self.keepalive, len(self.addresses))
        if timing is None:
            return
        loop = asyncio.get_running_loop()
        while connection.open:
            await asyncio.sleep(timing.ping_every)
            silent = loop.time() - connection.last_received
            if silent > timing.silent_limit and not connection.reading_paused:
                connection.fail(f"the broker was silent for {silent:.1f} s")
                return
            connection.write(mqtt.PINGREQ)
