"""LeanMqttBus's connection without a broker: one write per loop turn, a bounded buffer,
a bounded inbox, acknowledgements matched by packet id, malformed input ending the
connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend.adapters.bus.lean import FLUSH_POLL, OUTGOING_DROP, LeanMqttBus, _Connection
from backend.adapters.bus.transport import BusUnavailable
from backend.adapters.settings import BrokerAddress
from backend.core import mqtt_packets as mqtt
from backend.core.codec import pack, unpack
from backend.core.drops import Drops
from backend.core.metrics import RequestMetrics


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, _name: str) -> Any:
        return None

    def packets(self) -> list[bytes]:
        """What was written, cut into packets (all are short: one length byte)."""
        data, out = b"".join(self.writes), []
        while data:
            size = 2 + data[1]
            out.append(data[:size])
            data = data[size:]
        return out


def connected_bus(
    max_buffered: int = 1 << 20,
    max_inbox: int = 10_000,
    max_inbox_bytes: int = 1 << 20,
    drops: Drops | None = None,
) -> tuple[LeanMqttBus, _Connection, FakeTransport]:
    address = BrokerAddress.parse("mqtt://127.0.0.1:1")
    bus = LeanMqttBus(address, "unit", max_buffered=max_buffered, drops=drops)
    loop = asyncio.get_running_loop()
    connection = _Connection(loop, max_buffered, max_inbox, max_inbox_bytes)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    bus._connection = connection
    return bus, connection, transport


async def test_a_turn_s_messages_leave_in_one_write() -> None:
    bus, _, transport = connected_bus()
    for n in range(100):
        bus.send("t", {"n": n})
    assert transport.writes == []  # nothing until the turn ends
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    assert transport.packets() == [mqtt.publish("t", pack({"n": n})) for n in range(100)]
    bus.send("t", {"n": 100})
    await asyncio.sleep(0)
    assert len(transport.writes) == 2


async def test_flush_writes_what_is_queued_at_once_instead_of_polling() -> None:
    # A Raft leader flushes its AppendEntries before each fsync: waiting for the end of
    # the turn there would cost a whole poll interval per cycle.
    bus, _, transport = connected_bus()
    bus.send("t", {"n": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bus.flush(1.0)
    assert loop.time() - started < FLUSH_POLL
    assert transport.packets() == [mqtt.publish("t", pack({"n": 1}))]
    await asyncio.sleep(0)  # the flush scheduled for the turn's end finds nothing left
    assert len(transport.writes) == 1


async def test_past_the_bound_send_drops_and_counts_and_publish_waits() -> None:
    bus, connection, transport = connected_bus(max_buffered=1000)
    connection.pause_writing()
    for n in range(100):
        bus.send("t", {"n": n, "pad": "x" * 40})  # 57 bytes a packet
    await asyncio.sleep(0)
    assert transport.writes == []
    assert 1000 <= connection.buffered < 1000 + 57
    assert bus.outgoing_dropped == 100 - len(connection._out)
    waiting = asyncio.create_task(bus.publish("t", {"late": True}, qos=0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    connection.resume_writing()
    await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0)
    assert transport.packets()[-1] == mqtt.publish("t", pack({"late": True}))


async def test_a_qos1_publish_waits_for_its_own_puback() -> None:
    bus, connection, transport = connected_bus()
    first = asyncio.create_task(bus.publish("t", {"n": 1}))
    second = asyncio.create_task(bus.publish("t", {"n": 2}))
    await asyncio.sleep(0.01)
    assert transport.packets() == [
        mqtt.publish("t", pack({"n": 1}), qos=1, packet_id=1),
        mqtt.publish("t", pack({"n": 2}), qos=1, packet_id=2),
    ]
    connection.data_received(mqtt.puback(2))
    await asyncio.wait_for(second, 1)
    assert not first.done()
    connection.data_received(mqtt.puback(1))
    await asyncio.wait_for(first, 1)
    assert connection.acks == {}


async def test_a_lost_connection_fails_what_waits_and_refuses_what_comes() -> None:
    bus, connection, _ = connected_bus()
    waiting = asyncio.create_task(bus.publish("t", {"n": 1}))
    await asyncio.sleep(0)
    connection.connection_lost(None)
    with pytest.raises(BusUnavailable, match="closed the connection"):
        await waiting
    assert not bus.connected
    with pytest.raises(BusUnavailable):
        bus.send("t", {})


async def test_malformed_bytes_end_the_connection() -> None:
    bus, connection, transport = connected_bus()
    connection.data_received(b"\x30\x05\x00\x01a")  # a PUBLISH cut short: waits for the rest
    assert bus.connected and not connection.inbox
    connection.data_received(b"hi")
    assert list(connection.inbox) == [mqtt.Publish("a", b"hi")] and not transport.aborted
    connection.data_received(b"\x10\x00")  # a CONNECT from the broker
    assert transport.aborted and not bus.connected
    assert connection.error is not None and "unexpected packet type 1" in connection.error


async def test_received_messages_queue_in_order_and_qos1_ones_are_acknowledged() -> None:
    _, connection, transport = connected_bus()
    stream = mqtt.publish("a", b"1") + mqtt.publish("b", b"2", qos=1, packet_id=7)
    connection.data_received(stream[:5])
    connection.data_received(stream[5:])
    assert [(p.topic, p.payload) for p in connection.inbox] == [("a", b"1"), ("b", b"2")]
    await asyncio.sleep(0)
    assert transport.packets() == [mqtt.puback(7)]


async def test_dropped_sends_are_counted_in_drops_and_ride_in_heartbeats() -> None:
    metrics = RequestMetrics(Drops())
    bus, connection, _ = connected_bus(max_buffered=100, drops=metrics.drops)
    connection.pause_writing()
    for n in range(10):
        bus.send("t", {"n": n, "pad": "x" * 40})
    assert bus.outgoing_dropped == 10 - len(connection._out) > 0
    assert metrics.drops.counts == {OUTGOING_DROP: bus.outgoing_dropped}
    assert [*OUTGOING_DROP, bus.outgoing_dropped] in unpack(pack(metrics.to_wire()))["dropped"]


def messages(first: int, count: int, pad: int = 0) -> bytes:
    return b"".join(
        mqtt.publish("t", pack({"n": n, "pad": "x" * pad})) for n in range(first, first + count)
    )


async def test_a_full_inbox_pauses_reading_until_drained_below_half() -> None:
    _, connection, transport = connected_bus(max_inbox=10)
    connection.data_received(messages(0, 10))
    assert transport.reading  # at the bound, not past it
    connection.data_received(messages(10, 1))
    assert not transport.reading and connection.reading_paused
    for _ in range(5):
        connection.take()
    assert not transport.reading  # 6 left
    connection.take()
    assert transport.reading and not connection.reading_paused  # 5 left: half
    assert [unpack(p.payload)["n"] for p in connection.inbox] == [6, 7, 8, 9, 10]


async def test_the_inbox_is_bounded_in_bytes_too() -> None:
    _, connection, transport = connected_bus(max_inbox_bytes=1000)
    connection.data_received(messages(0, 1, pad=2000))
    assert not transport.reading and connection.inbox_bytes > 1000
    connection.take()
    assert transport.reading and connection.inbox_bytes == 0


async def test_reading_goes_on_while_an_acknowledgement_is_awaited() -> None:
    bus, connection, transport = connected_bus(max_inbox=2)
    connection.data_received(messages(0, 3))
    assert not transport.reading
    waiting = asyncio.create_task(bus.publish("t", {"n": "mine"}))
    await asyncio.sleep(0)
    assert transport.reading  # its PUBACK must get in, behind more messages
    connection.data_received(messages(3, 2))
    assert transport.reading
    connection.data_received(mqtt.puback(1))
    await asyncio.wait_for(waiting, 1)
    assert not transport.reading  # paused again at the next data
    assert len(connection.inbox) == 5


async def test_a_slow_handler_pushes_back_and_then_hears_everything_in_order() -> None:
    bus, connection, transport = connected_bus(max_inbox=4)
    heard: list[int] = []
    release = asyncio.Event()

    async def slow(_topic: str, message: dict[str, Any]) -> None:
        await release.wait()
        heard.append(message["n"])

    bus.subscribe("t", slow)
    reader = asyncio.create_task(bus._read(connection))
    connection.data_received(messages(0, 6))
    await asyncio.sleep(0)
    assert not transport.reading
    release.set()
    await asyncio.sleep(0.01)
    assert transport.reading and heard == list(range(6)) and transport.pauses == 1
    reader.cancel()


async def test_the_keepalive_does_not_take_a_paused_read_for_a_silent_broker() -> None:
    bus, connection, transport = connected_bus(max_inbox=1)
    bus.keepalive = 0.02  # type: ignore[assignment]
    connection.data_received(messages(0, 2))
    assert not transport.reading
    await asyncio.sleep(0.1)  # nothing received: silent, were we listening
    pinger = asyncio.create_task(bus._keep_alive(connection))
    await asyncio.sleep(0.1)
    assert connection.open and not transport.aborted
    connection.take()
    connection.take()
    assert transport.reading  # the keepalive counts from here
    await asyncio.sleep(0.01)
    assert connection.open
    await asyncio.sleep(0.1)
    assert not connection.open  # no PINGRESP since: the broker is silent
    pinger.cancel()
