"""Compare the MQTT clients the bus can use: `python -m backend.bench.bus_clients`.

Starts a Mosquitto (TCP_NODELAY) on a free port and measures, for each client
(MqttBus on aiomqtt, LeanMqttBus), on uvloop when installed:

- CPU per publish: this process's CPU time over N awaited QoS-0 publishes,
  and over N fire-and-forget `send`s (then a flush);
- CPU per receive: this process's CPU time while it receives N QoS-0 messages
  that a raw-socket publisher in another process blasts at it;
- request/response rate: requests answered per second by a responder process
  (same client) with 64 requests in flight.

The publisher and responder run in other processes, so their CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.adapters.bus import BUS_CLIENTS, BrokerBus, open_bus
from backend.adapters.settings import BrokerAddress
from backend.bench.targets.peers import free_port
from backend.core import mqtt_packets as mqtt
from backend.core.codec import pack
from backend.processes.runtime import run

MESSAGE = {"t": "bench", "data": "x" * 180}  # about 200 bytes packed, as the measurements before
IN_FLIGHT = 64


@dataclass(frozen=True)
class Figures:
    client: str
    publish_us: float
    send_us: float
    receive_us: float
    round_trips_per_s: float


@contextlib.contextmanager
def mosquitto() -> Iterator[str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        conf = Path(directory) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "persistence false\nmax_queued_messages 0\n"
        )
        process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start")
                time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(5)


def _bus(url: str, client: str, client_id: str) -> BrokerBus:
    return open_bus(BrokerAddress.parse(url), client_id, client=client)


async def _connected(bus: BrokerBus) -> None:
    if not await bus.wait_connected(10):
        raise RuntimeError(f"cannot connect: {bus.last_error}")


async def _cpu_per_publish(url: str, client: str, count: int) -> tuple[float, float]:
    async with _bus(url, client, f"bench-pub-{client}") as bus:
        await _connected(bus)
        start = time.process_time()
        for _ in range(count):
            await bus.publish("bench/sink", MESSAGE, qos=0)
        await bus.flush(30)
        publish = (time.process_time() - start) / count
        start = time.process_time()
        for _ in range(count):
            bus.send("bench/sink", MESSAGE)
        await bus.flush(60)
        # MqttBus sends from tasks: the time they take counts too.
        await asyncio.sleep(0)
        send = (time.process_time() - start) / count
    return publish * 1e6, send * 1e6


def _blast(port: int, count: int) -> None:
    """Runs in its own process: publish `count` messages from a raw socket, fast."""
    packet = mqtt.publish("bench/in", pack(MESSAGE))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(mqtt.connect(f"bench-blast-{os.getpid()}", keepalive=60))
        sock.recv(4)
        for start in range(0, count, 1000):
            sock.sendall(packet * min(1000, count - start))
            time.sleep(0.0005)  # Mosquitto drops QoS-0 messages to a client it cannot feed
        sock.sendall(mqtt.DISCONNECT)


async def _cpu_per_receive(url: str, client: str, count: int) -> float:
    received = 0
    done = asyncio.Event()

    async def on_message(_topic: str, _message: dict[str, Any]) -> None:
        nonlocal received
        received += 1
        if received >= count:
            done.set()

    bus = _bus(url, client, f"bench-sub-{client}")
    bus.subscribe("bench/in", on_message)
    async with bus:
        await _connected(bus)
        port = BrokerAddress.parse(url).port
        blaster = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backend.bench.bus_clients", "--blast", str(port), str(count)
        )
        start = time.process_time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 120)
        used = time.process_time() - start
        await asyncio.wait_for(blaster.wait(), 30)
    if received < count * 0.9:
        print(f"  ({client}: only {received} of {count} messages arrived)", file=sys.stderr)
    return used / max(received, 1) * 1e6


async def _respond(url: str, client: str) -> None:
    """Runs in its own process: answer every request until killed."""
    bus = _bus(url, client, f"bench-responder-{client}")

    async def on_request(_topic: str, message: dict[str, Any]) -> None:
        bus.send(f"bench/resp/{message['from']}", {"n": message["n"]})

    bus.subscribe("bench/req", on_request)
    async with bus:
        await _connected(bus)
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _round_trips(url: str, client: str, seconds: float) -> float:
    responder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backend.bench.bus_clients",
        "--respond",
        url,
        client,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert responder.stdout is not None
        await asyncio.wait_for(responder.stdout.readline(), 30)
        answered = 0
        me = f"requester-{client}"
        bus = _bus(url, client, f"bench-{me}")

        async def on_response(_topic: str, message: dict[str, Any]) -> None:
            nonlocal answered
            answered += 1
            bus.send("bench/req", {"from": me, "n": message["n"] + IN_FLIGHT})

        bus.subscribe(f"bench/resp/{me}", on_response)
        async with bus:
            await _connected(bus)
            for n in range(IN_FLIGHT):
                bus.send("bench/req", {"from": me, "n": n})
            await asyncio.sleep(0.5)  # warm up
            first, start = answered, time.perf_counter()
            await asyncio.sleep(seconds)
            return (answered - first) / (time.perf_counter() - start)
    finally:
        responder.terminate()
        await asyncio.wait_for(responder.wait(), 10)


async def measure(url: str, client: str, count: int, seconds: float) -> Figures:
    publish_us, send_us = await _cpu_per_publish(url, client, count)
    receive_us = await _cpu_per_receive(url, client, count)
    rate = await _round_trips(url, client, seconds)
    return Figures(client, publish_us, send_us, receive_us, rate)


def table(rows: list[Figures]) -> str:
    lines = [
        f"{'client':<10}{'publish us':>12}{'send us':>10}{'receive us':>12}{'req/resp /s':>13}",
    ]
    for row in rows:
        lines.append(
            f"{row.client:<10}{row.publish_us:>12.1f}{row.send_us:>10.1f}"
            f"{row.receive_us:>12.1f}{row.round_trips_per_s:>13.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", default=",".join(BUS_CLIENTS))
    parser.add_argument("--count", type=int, default=20_000, help="messages per CPU figure")
    parser.add_argument("--seconds", type=float, default=3.0, help="request/response run")
    parser.add_argument("--blast", nargs=2, metavar=("PORT", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--respond", nargs=2, metavar=("URL", "CLIENT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.blast:
        _blast(int(args.blast[0]), int(args.blast[1]))
        return 0
    if args.respond:
        run(_respond(args.respond[0], args.respond[1]))
        return 0
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    # aiomqtt warns of every pending publish past its threshold: the bench makes thousands.
    logging.getLogger("backend.adapters.bus.paho").setLevel(logging.ERROR)
    with mosquitto() as url:
        rows = [run(measure(url, client, args.count, args.seconds)) for client in clients]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
