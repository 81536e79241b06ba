"""Both MQTT clients (aiomqtt's MqttBus and LeanMqttBus) against a real Mosquitto: order,
subscribe_now, reconnects, refused subscriptions, last wills, poison, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.bus import BUS_CLIENTS, BrokerBus, open_bus
from backend.adapters.bus.lean import MAX_BUFFERED, LeanMqttBus
from backend.adapters.bus.transport import BusUnavailable, LastWill
from backend.adapters.settings import BrokerAddress, BrokerAddresses
from backend.core import mqtt_packets as mqtt
from backend.core.codec import pack
from tests.conftest import MOSQUITTO, Processes, free_port, port_open, stop_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not os.access(MOSQUITTO, os.X_OK), reason="Mosquitto is not installed"
)

Received = list[tuple[str, dict[str, Any]]]


@pytest.fixture(params=BUS_CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_broker(
    processes: Processes, tmp_path: Path, port: int, extra: str = ""
) -> subprocess.Popen[bytes]:
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        f"persistence false\nlog_dest stdout\n{extra}"
    )
    process = processes.start([MOSQUITTO, "-c", str(conf)], f"mosquitto-{port}")
    wait_until(lambda: port_open(port), f"mosquitto on port {port}")
    return process


@asynccontextmanager
async def connected(
    client: str, port: int, client_id: str, *filters: str, **options: Any
) -> AsyncIterator[tuple[BrokerBus, Received]]:
    address = BrokerAddress.parse(f"mqtt://127.0.0.1:{port}")
    bus: BrokerBus
    if "max_buffered" in options:  # LeanMqttBus's own
        bus = LeanMqttBus(address, client_id, **options)
    else:
        bus = open_bus(address, client_id, client=client, **options)
    received: Received = []

    async def collect(topic: str, message: dict[str, Any]) -> None:
        received.append((topic, message))

    for topic_filter in filters:
        bus.subscribe(topic_filter, collect)
    async with bus:
        assert await bus.wait_connected(10), bus.last_error
        yield bus, received


async def eventually(condition: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def port(processes: Processes, tmp_path: Path) -> int:
    number = free_port()
    start_broker(processes, tmp_path, number)
    return number


async def test_messages_arrive_in_order_whichever_way_they_were_sent(client: str, port: int):
    async with (
        connected(client, port, "rx", "t/#") as (_, received),
        connected(client, port, "tx") as (sender, _),
    ):
        # In order: `send`s among themselves (MqttBus sends each from a task of its own),
        # then awaited publishes. (paho holds QoS-1 messages past 20 in flight back, so
        # MqttBus may reorder QoS 0 and 1 sent without waiting.)
        for n in range(100):
            sender.send("t/a", {"n": n})
        await sender.flush(5)
        for n in range(100, 300):
            await sender.publish("t/a", {"n": n}, qos=n % 2)
        await eventually(lambda: len(received) == 300, "300 messages")
        assert [m["n"] for _, m in received] == list(range(300))


async def test_subscribe_now_returns_once_the_broker_sends_matching_messages(
    client: str, port: int
):
    async with (
        connected(client, port, "rx") as (bus, received),
        connected(client, port, "tx") as (sender, _),
    ):

        async def collect(topic: str, message: dict[str, Any]) -> None:
            received.append((topic, message))

        await bus.subscribe_now("late/#", collect)
        await sender.publish("late/x", {"n": 1}, qos=0)
        await eventually(lambda: received == [("late/x", {"n": 1})], "the message")
        bus.unsubscribe("late/#", collect)
        await asyncio.sleep(0.2)  # the UNSUBSCRIBE reaches the broker
        await sender.publish("late/x", {"n": 2}, qos=1)
        await bus.subscribe_now("marker", collect)
        await sender.publish("marker", {"n": 3}, qos=1)
        await eventually(lambda: len(received) == 2, "the marker")
        assert received[1] == ("marker", {"n": 3})


async def test_reconnects_resubscribes_every_filter_and_runs_hooks(
    client: str, processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("backend.adapters.bus.mqtt.RECONNECT_DELAYS", (0.1,))
    monkeypatch.setattr("backend.adapters.bus.lean.RECONNECT_DELAYS", (0.1,))
    number = free_port()
    broker = start_broker(processes, tmp_path, number)
    hooks: list[int] = []
    async with (
        connected(client, number, "rx", "a/#", "b/+") as (bus, received),
        connected(client, number, "tx") as (sender, _),
    ):

        async def hook() -> None:
            hooks.append(len(hooks))

        bus.on_connect(hook)
        os.kill(broker.pid, signal.SIGKILL)
        broker.wait(5)
        await eventually(lambda: not bus.connected, "the bus to notice")
        with pytest.raises(BusUnavailable):
            await bus.publish("a/x", {})
        with pytest.raises(BusUnavailable):
            bus.send("a/x", {})
        start_broker(processes, tmp_path, number)
        assert await bus.wait_connected(15), bus.last_error
        assert await sender.wait_connected(15), sender.last_error
        assert hooks == [0]
        await sender.publish("a/1", {"n": 1})
        await sender.publish("b/2", {"n": 2})
        await eventually(lambda: len(received) == 2, "both filters")
        assert received == [("a/1", {"n": 1}), ("b/2", {"n": 2})]


def on_nodes(client: str, *ports: int) -> tuple[BrokerBus, Received, list[int]]:
    """A bus given the brokers on `ports` as one list, subscribed to a/#, counting its hooks."""
    urls = ",".join(f"mqtt://127.0.0.1:{port}" for port in ports)
    bus = open_bus(BrokerAddresses.parse(urls), "rx", client=client)
    received: Received = []
    hooks: list[int] = []

    async def collect(topic: str, message: dict[str, Any]) -> None:
        received.append((topic, message))

    async def hook() -> None:
        hooks.append(bus.address.port)

    bus.subscribe("a/#", collect)
    bus.on_connect(hook)
    return bus, received, hooks


async def test_a_killed_broker_s_clients_move_to_the_next_node(
    client: str, processes: Processes, tmp_path: Path
):
    first, second = free_port(), free_port()
    doomed = start_broker(processes, tmp_path, first)
    start_broker(processes, tmp_path, second)
    bus, received, hooks = on_nodes(client, first, second)
    async with bus, connected(client, second, "tx") as (sender, _):
        assert await bus.wait_connected(10), bus.last_error
        await eventually(lambda: hooks == [first], "the hook on the first node")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(5)
        on_second = lambda: bus.connected and bus.address.port == second  # noqa: E731
        await eventually(on_second, "the bus on the second node", timeout=5)
        await eventually(lambda: hooks == [first, second], "the hook again", timeout=5)
        await sender.publish("a/1", {"n": 1})
        await eventually(lambda: received == [("a/1", {"n": 1})], "a message on the second node")
        assert not bus.refused


async def test_a_list_whose_first_node_is_down_connects_to_the_second(client: str, port: int):
    bus, received, hooks = on_nodes(client, free_port(), port)
    async with bus, connected(client, port, "tx") as (sender, _):
        assert await bus.wait_connected(10), bus.last_error
        assert bus.address.port == port
        await eventually(lambda: hooks == [port], "the hook")
        await sender.publish("a/2", {"n": 2})
        await eventually(lambda: received == [("a/2", {"n": 2})], "the message")


async def serve_as_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Just enough of a broker to refuse subscriptions: Mosquitto 2.0's acl_file accepts
    every SUBSCRIBE and filters at delivery, so it never sends a SUBACK failure."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            first = (await reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                digit = (await reader.readexactly(1))[0]
                length |= (digit & 0x7F) << shift
                shift += 7
                if not digit & 0x80:
                    break
            body = await reader.readexactly(length)
            kind = first >> 4
            if kind == 1:  # CONNECT
                writer.write(b"\x20\x02\x00\x00")
            elif kind == 8:  # SUBSCRIBE: refuse filters under secret/
                codes, at = bytearray(), 2
                while at < len(body):
                    size = int.from_bytes(body[at : at + 2], "big")
                    topic_filter = body[at + 2 : at + 2 + size].decode()
                    codes.append(0x80 if topic_filter.startswith("secret/") else 0)
                    at += 2 + size + 1
                writer.write(bytes((0x90, 2 + len(codes))) + body[:2] + codes)
            elif kind == 12:  # PINGREQ
                writer.write(mqtt.PINGREQ.replace(b"\xc0", b"\xd0"))
            elif kind == 14:  # DISCONNECT
                break
            await writer.drain()
    writer.close()


async def test_a_refused_subscription_is_reported(client: str):
    server = await asyncio.start_server(serve_as_broker, "127.0.0.1", 0)
    number = server.sockets[0].getsockname()[1]
    async with server, connected(client, number, "rx", "open/#", "secret/a") as (bus, _):

        async def collect(_topic: str, _message: dict[str, Any]) -> None:
            pass

        with pytest.raises(BusUnavailable, match="secret/#"):
            await bus.subscribe_now("secret/#", collect)
        await bus.subscribe_now("open/b", collect)
        assert bus.connected


WILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from backend.adapters.bus import open_bus
    from backend.adapters.bus.transport import LastWill
    from backend.adapters.settings import BrokerAddress, BrokerAddresses

    async def main():
        will = LastWill("gone/x", {"gone": True})
        bus = open_bus(BrokerAddress.parse(sys.argv[1]), "dying", will=will, client=sys.argv[2])
        async with bus:
            assert await bus.wait_connected(10)
            print("connected", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_the_last_will_arrives_when_the_process_is_killed(
    client: str, port: int, processes: Processes
):
    async with connected(client, port, "rx", "gone/#") as (_, received):
        will = LastWill("gone/clean", {"gone": True})
        clean = open_bus(
            BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), "clean", will=will, client=client
        )
        async with clean:
            assert await clean.wait_connected(10)
        # A clean goodbye sends no will: had it, it would arrive before the other's.
        dying = processes.start(
            [sys.executable, "-c", WILL_SCRIPT, f"mqtt://127.0.0.1:{port}", client], "dying"
        )
        await eventually(lambda: "connected" in dying.log_path.read_text(), "the client", 20)
        os.kill(dying.pid, signal.SIGKILL)
        await eventually(lambda: received == [("gone/x", {"gone": True})], "the will")
        stop_process(dying)


def raw_publish(port: int, topic: str, payloads: list[bytes]) -> None:
    """Publish raw bytes, as a broken or hostile peer would."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(mqtt.connect("raw", keepalive=5))
        assert sock.recv(4)[:2] == b"\x20\x02"
        data = b"".join(
            mqtt.publish(topic, p, qos=1, packet_id=i + 1) for i, p in enumerate(payloads)
        )
        sock.sendall(data + mqtt.DISCONNECT)
        received = b""
        while len(received) < 4 * len(payloads):  # every PUBACK: the broker has them all
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk


async def test_garbage_is_counted_and_a_raising_handler_stops_nothing(client: str, port: int):
    async with connected(client, port, "rx", "p/#") as (bus, received):

        async def broken(_topic: str, _message: dict[str, Any]) -> None:
            raise KeyError("t")

        bus.subscribe("p/#", broken)
        garbage = [b"\xc1", b"\x81\xa1t", b"", b"\x91" * 5000]
        await asyncio.to_thread(raw_publish, port, "p/x", [*garbage, pack({"ok": 1})])
        await eventually(lambda: received == [("p/x", {"ok": 1})], "the good message")
        counts = {(what, why): n for what, why, n in bus.drops.to_wire()}
        assert counts[("payload", "not a msgpack map")] == len(garbage)
        assert counts[("message on p/#", "handler raised KeyError")] == 1


async def test_lean_bus_bounds_its_buffer_when_the_broker_stops_reading(
    processes: Processes, tmp_path: Path
):
    number = free_port()
    broker = start_broker(processes, tmp_path, number)
    limit = 256 * 1024
    async with connected("lean", number, "tx", max_buffered=limit) as (bus, _):
        assert isinstance(bus, LeanMqttBus)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            payload = {"data": "x" * 1000}
            for _ in range(50):
                for _ in range(200):
                    bus.send("flood", payload)
                await asyncio.sleep(0.01)
            connection = bus._connection
            assert connection is not None
            assert bus.outgoing_dropped > 0
            assert connection.buffered <= limit + 1100
            publishing = asyncio.create_task(bus.publish("flood", payload, qos=0))
            await asyncio.sleep(0.2)
            assert not publishing.done()  # waits for room rather than growing the buffer
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await asyncio.wait_for(publishing, 10)


async def test_lean_bus_stops_reading_while_its_handlers_lag_and_reads_on_after(
    processes: Processes, tmp_path: Path
):
    number = free_port()
    start_broker(processes, tmp_path, number)
    release = asyncio.Event()
    heard: list[int] = []

    async def slow(_topic: str, message: dict[str, Any]) -> None:
        await release.wait()
        heard.append(message["n"])

    bounds = {"max_buffered": MAX_BUFFERED, "max_inbox": 100}
    async with (
        connected("lean", number, "rx", **bounds) as (receiver, _),
        connected("lean", number, "tx", max_buffered=MAX_BUFFERED) as (sender, _),
    ):
        assert isinstance(receiver, LeanMqttBus)
        await receiver.subscribe_now("f/#", slow)
        connection = receiver._connection
        assert connection is not None
        for n in range(5000):
            sender.send("f/x", {"n": n})
        await sender.flush(5)
        await eventually(lambda: connection.reading_paused, "reading to pause")
        assert len(connection.inbox) < 5000
        release.set()
        await eventually(lambda: not connection.reading_paused, "reading to resume")
        await sender.publish("f/x", {"n": 5000})
        await eventually(lambda: heard[-1:] == [5000], "a message sent after", 15)
        assert heard == sorted(heard) and heard[0] == 0  # the broker may drop some
        assert receiver._connection is connection  # the pause cost no reconnect


async def test_a_silent_broker_is_taken_for_dead_and_reconnected_to(
    client: str, processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("backend.adapters.bus.mqtt.RECONNECT_DELAYS", (0.1,))
    monkeypatch.setattr("backend.adapters.bus.lean.RECONNECT_DELAYS", (0.1,))
    number = free_port()
    broker = start_broker(processes, tmp_path, number)
    async with connected(client, number, "rx", "k/#", keepalive=1) as (bus, received):
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: not bus.connected, "the keepalive to notice", 15)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert await bus.wait_connected(15), bus.last_error
        await bus.publish("k/x", {"n": 1})
        await eventually(lambda: received == [("k/x", {"n": 1})], "a message after it")


async def test_mqtts_with_a_password_and_a_private_ca(
    client: str, processes: Processes, tmp_path: Path
):
    from tests.e2e.test_broker_tls import hashed_password_file, make_certificate

    key, cert = make_certificate(tmp_path)
    passwords = hashed_password_file(tmp_path)
    number = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"listener {number} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\nuser root\n"
    )
    processes.start([MOSQUITTO, "-c", str(conf)], "mosquitto-tls")
    wait_until(lambda: port_open(number), "the TLS broker")
    received: Received = []

    async def collect(topic: str, message: dict[str, Any]) -> None:
        received.append((topic, message))

    url = f"mqtts://portal:s3cret@127.0.0.1:{number}?ca={cert}"
    async with open_bus(BrokerAddress.parse(url), "tls", client=client) as bus:
        bus.subscribe("tls/x", collect)
        assert await bus.wait_connected(10), bus.last_error
        await bus.subscribe_now("tls/x", collect)
        await bus.publish("tls/x", {"over": "tls"})
        await eventually(lambda: ("tls/x", {"over": "tls"}) in received, "the message")
    wrong = f"mqtts://portal:wrong@127.0.0.1:{number}?ca={cert}"
    async with open_bus(BrokerAddress.parse(wrong), "tls-wrong", client=client) as bus:
        assert not await bus.wait_connected(2)
        assert bus.last_error


def test_the_bus_client_bench_prints_a_table():
    done = subprocess.run(
        [sys.executable, "-m", "backend.bench.bus_clients", "--count", "300", "--seconds", "0.3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = done.stdout.splitlines()
    assert rows[0].split()[0] == "client" and [r.split()[0] for r in rows[1:]] == [
        "aiomqtt",
        "lean",
    ]
