"""A broker node that stops answering without closing anything (paused, cut off): how soon
a bus with other nodes to go to gives up on it (backend/adapters/bus/failover.py)."""

from __future__ import annotations

import asyncio

import pytest

from backend.adapters.bus import failover
from backend.adapters.bus.failover import FAILOVER_SILENCE, Liveness, liveness
from backend.adapters.bus.lean import LeanMqttBus, _Connection
from backend.adapters.settings import BrokerAddresses
from backend.core import mqtt_packets as mqtt
from tests.unit.adapters.test_lean_bus import FakeTransport


def test_one_broker_keeps_the_keepalive_it_always_had() -> None:
    assert liveness(10, 1) == Liveness(ping_every=5.0, silent_limit=15.0)
    assert liveness(0, 1) is None and liveness(0, 3) is None


def test_several_nodes_give_up_on_a_silent_one_within_seconds() -> None:
    timing = liveness(10, 3)
    assert timing is not None
    assert timing.silent_limit == FAILOVER_SILENCE < 15.0
    assert timing.ping_every == FAILOVER_SILENCE / failover.PINGS_PER_SILENCE


def test_a_short_keepalive_is_never_lengthened() -> None:
    assert liveness(1, 3) == Liveness(ping_every=0.5, silent_limit=1.5)


def bus_on(nodes: str) -> tuple[LeanMqttBus, _Connection, FakeTransport]:
    bus = LeanMqttBus(BrokerAddresses.parse(nodes), "unit")
    connection = _Connection(asyncio.get_running_loop(), 1 << 20)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return bus, connection, transport


async def test_a_bus_with_another_node_drops_a_silent_one_that_keeps_its_socket_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(failover, "FAILOVER_SILENCE", 0.06)
    bus, connection, transport = bus_on("mqtt://a:1883,mqtt://b:1883")
    pinger = asyncio.create_task(bus._keep_alive(connection))
    await asyncio.sleep(0.05)
    assert connection.open and mqtt.PINGREQ in transport.writes  # pinged, not yet given up
    await asyncio.wait_for(pinger, 1.0)  # the keepalive of 10 s would wait 15 s
    assert not connection.open and transport.aborted
    assert "silent" in (connection.error or "")


async def test_a_node_that_answers_the_pings_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failover, "FAILOVER_SILENCE", 0.06)
    bus, connection, _ = bus_on("mqtt://a:1883,mqtt://b:1883")
    pinger = asyncio.create_task(bus._keep_alive(connection))
    for _ in range(10):
        await asyncio.sleep(0.02)
        connection.data_received(b"\xd0\x00")  # PINGRESP
    assert connection.open and not pinger.done()
    pinger.cancel()
