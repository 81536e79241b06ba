"""One bad message must not silence a component: the bus drops and counts it, its loop
reconnects after any error, and a loop that dies anyway takes the process down."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from backend.adapters.bus import BUS_CLIENTS, BrokerBus, open_bus
from backend.adapters.bus.lean import LeanMqttBus
from backend.adapters.bus.memory import MemoryHub
from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.bus.publisher import Publisher
from backend.adapters.bus.transport import LastWill
from backend.adapters.critical_tasks import EXIT_LOOP_DIED
from backend.adapters.settings import BrokerAddress
from backend.core.cluster_view import Component, Heartbeat, parse_metrics
from backend.core.codec import DecodeError, pack, unpack
from backend.core.drops import Drops
from backend.core.metrics import RequestMetrics
from web.metrics import ClusterCollector

POISON = [
    bytes.fromhex("81910101"),  # a map keyed by an array: TypeError inside msgpack
    b"\xc1",  # never used by msgpack
    b"\x91" * 5000,  # deeper than the unpacker's stack
    bytes.fromhex("818101a10101"),  # a map keyed by a map
    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
    b"\x81\xa1t",  # truncated
    pack({"t": "x"}) + b"\x00",  # trailing bytes
]


@pytest.mark.parametrize("payload", POISON, ids=lambda p: p[:6].hex())
def test_unpack_turns_every_poison_into_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(payload)


def test_drops_count_every_one_and_log_only_at_powers_of_ten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drops = Drops("node n1")
    with caplog.at_level(logging.WARNING):
        for _ in range(1000):
            drops.drop("announcement", "host must be text")
        drops.drop("reply", "corr must be text")
    assert drops.to_wire() == [
        ["announcement", "host must be text", 1000],
        ["reply", "corr must be text", 1],
    ]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # 1st, 10th, 100th, 1000th, and the other reason's 1st
    assert lines[3].endswith("[1000 so far]") and "node n1" in lines[3]


def test_the_memory_bus_drops_undecodable_payloads_and_hears_the_next() -> None:
    heard: list[dict[str, Any]] = []

    async def run() -> None:
        hub = MemoryHub()
        bus = hub.attach()

        async def handler(_topic: str, message: dict[str, Any]) -> None:
            heard.append(message)

        bus.subscribe("a/#", handler)
        await bus.connect()
        for payload in POISON:
            await hub.deliver("a/b", payload)
        await hub.deliver("a/b", pack({"t": "ok"}))
        assert bus.drops.total == len(POISON)

    asyncio.run(run())
    assert heard == [{"t": "ok"}]


def _bus(client: str = "aiomqtt") -> BrokerBus:
    return open_bus(BrokerAddress.parse("mqtt://127.0.0.1:1"), "test-bus", client=client)


async def _deliver(bus: BrokerBus, topic: str, payload: bytes) -> None:
    """What each client does with one received PUBLISH."""
    if isinstance(bus, MqttBus):
        await bus._dispatch(topic, payload)
    else:
        from backend.adapters.bus.dispatch import dispatch

        await dispatch(bus.handlers, bus.drops, topic, payload)


@pytest.mark.parametrize("client", BUS_CLIENTS)
def test_mqtt_dispatch_lets_nothing_out(client: str) -> None:
    heard: list[dict[str, Any]] = []

    async def run() -> BrokerBus:
        bus = _bus(client)

        async def broken(_topic: str, _message: dict[str, Any]) -> None:
            raise KeyError("t")

        async def handler(_topic: str, message: dict[str, Any]) -> None:
            heard.append(message)

        bus.subscribe("taskring/#", broken)
        bus.subscribe("taskring/#", handler)
        for payload in POISON:
            await _deliver(bus, "taskring/v1/ring/announce", payload)
        await _deliver(bus, "taskring/v1/ring/announce", pack({"t": "ok"}))
        return bus

    bus = asyncio.run(run())
    assert heard == [{"t": "ok"}]
    counts = {(what, why): n for what, why, n in bus.drops.to_wire()}
    assert counts[("payload", "not a msgpack map")] == len(POISON)
    assert counts[("message on taskring/#", "handler raised KeyError")] == 1


@pytest.mark.parametrize("client", BUS_CLIENTS)
def test_the_mqtt_loop_reconnects_after_any_error(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backend.adapters.bus.mqtt.RECONNECT_DELAYS", (0.0,))
    monkeypatch.setattr("backend.adapters.bus.lean.RECONNECT_DELAYS", (0.0,))
    sessions: list[int] = []

    async def run() -> None:
        bus = _bus(client)
        again = asyncio.Event()

        async def session() -> None:
            sessions.append(len(sessions))
            if len(sessions) < 3:
                raise TypeError("unhashable type: 'list'")  # what msgpack raised
            again.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(bus, "_session", session)
        async with bus:
            await asyncio.wait_for(again.wait(), 5)
            assert bus._runner is not None and not bus._runner.done()

    asyncio.run(run())
    assert len(sessions) == 3


def test_the_lean_bus_remembers_each_topic_s_handlers_until_a_subscription_changes() -> None:
    async def first(_topic: str, _message: dict[str, Any]) -> None:
        pass

    async def second(_topic: str, _message: dict[str, Any]) -> None:
        pass

    bus = _bus("lean")
    assert isinstance(bus, LeanMqttBus)
    bus.subscribe("a/#", first)
    assert bus._routes_of("a/b") == (("a/#", first),)
    assert bus._routes_of("b") == ()
    bus.subscribe("+/b", second)
    assert bus._routes_of("a/b") == (("a/#", first), ("+/b", second))
    bus.unsubscribe("a/#", first)
    assert bus._routes_of("a/b") == (("+/b", second),)


def test_the_factory_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    address = BrokerAddress.parse("mqtt://127.0.0.1:1")
    monkeypatch.delenv("TASKRING_BUS_CLIENT", raising=False)
    assert type(open_bus(address, "x")) is LeanMqttBus
    monkeypatch.setenv("TASKRING_BUS_CLIENT", "aiomqtt")
    assert type(open_bus(address, "x")) is MqttBus
    monkeypatch.setenv("TASKRING_BUS_CLIENT", "lean")
    bus = open_bus(address, "x", will=LastWill("t", {}), keepalive=3)
    assert isinstance(bus, LeanMqttBus) and bus.keepalive == 3 and bus.will == LastWill("t", {})
    monkeypatch.setenv("TASKRING_BUS_CLIENT", "paho")
    with pytest.raises(ValueError, match="TASKRING_BUS_CLIENT"):
        open_bus(address, "x")


@pytest.mark.parametrize("client", BUS_CLIENTS)
def test_send_refuses_while_disconnected_and_the_publisher_logs_it(client: str) -> None:
    from backend.adapters.bus.transport import BusUnavailable
    from backend.core.ring.cache_core import Publish

    async def run() -> None:
        bus = _bus(client)
        with pytest.raises(BusUnavailable):
            bus.send("a", {})
        Publisher(bus).send([Publish("a", {}, 0)])  # logged at debug, not raised
        await Publisher(bus).flush(0.1)

    asyncio.run(run())


def test_the_publisher_delivers_in_order_over_the_memory_bus() -> None:
    from backend.core.ring.cache_core import Publish

    heard: list[int] = []

    async def run() -> None:
        hub = MemoryHub()
        sender, receiver = hub.attach(), hub.attach()

        async def handler(_topic: str, message: dict[str, Any]) -> None:
            heard.append(message["n"])

        receiver.subscribe("a", handler)
        await sender.connect()
        await receiver.connect()
        publisher = Publisher(sender)
        publisher.send([Publish("a", {"n": n}, 0) for n in range(50)])
        await publisher.flush(5)

    asyncio.run(run())
    assert heard == list(range(50))


@pytest.mark.parametrize("ending", ["raise RuntimeError('boom')", "return"])
def test_a_critical_task_that_ends_exits_the_process(ending: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, logging
        from backend.adapters.critical_tasks import critical_task

        async def loop():
            await asyncio.sleep(0.01)
            {ending}

        async def main():
            critical_task(loop(), "the ticker")
            await asyncio.sleep(5)
            print("still alive")

        logging.basicConfig()
        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == EXIT_LOOP_DIED, done.stderr
    assert "the ticker" in done.stderr and "still alive" not in done.stdout


def test_a_cancelled_critical_task_leaves_the_process_alone() -> None:
    from backend.adapters.critical_tasks import critical_task

    async def run() -> None:
        task = critical_task(asyncio.Event().wait(), "a loop")
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_drops_ride_in_heartbeats_and_come_out_as_a_prometheus_counter() -> None:
    metrics = RequestMetrics(Drops())
    metrics.drops.drop("announcement", "host must be text")
    parsed = parse_metrics(unpack(pack({"m": metrics.to_wire()}))["m"])
    assert parsed.dropped == (("announcement", "host must be text", 1),)
    assert parse_metrics({"requests": [], "latency": []}).dropped == ()  # an older sender

    heartbeat = Heartbeat("cache-node-1", "cache-node", "", 1, True, None, 0.0, 0.0, 1.0, parsed)
    component = Component(heartbeat, received=0.0)
    families = {f.name: f for f in ClusterCollector(lambda: ([component], 0.0)).collect()}
    [sample] = [
        s for s in families["taskring_dropped_messages"].samples if s.name.endswith("_total")
    ]
    assert sample.labels == {
        "component": "cache-node-1",
        "kind": "cache-node",
        "message": "announcement",
        "reason": "host must be text",
    }
    assert sample.value == 1
