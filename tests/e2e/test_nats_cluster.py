"""`taskring broker cluster`: three NATS servers as one broker, and taskring on it.

One test, so the cluster starts once: a component's login on node 1 reaches
a subscriber on node 3, what a role may not do is refused, and `taskring up`
pointed at node 1 (with the cluster's data directory, so each component logs
in as itself, a replica behind the ring too) becomes ready and serves the admin and
client CLIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.adapters.broker_logins import broker_url_for
from backend.adapters.bus.lean import LeanMqttBus
from backend.adapters.bus.transport import BusUnavailable
from backend.adapters.settings import BrokerAddress
from backend.core import topics
from backend.processes.nats_cluster import nats_binary
from tests.conftest import Processes, free_port
from tests.e2e.stack import client_round_trip
from tests.support.waiting import log_text, wait_until

pytestmark = pytest.mark.skipif(nats_binary() is None, reason="nats-server is not installed")

NODES = 3


def start_cluster(processes: Processes, data: Path) -> list[int]:
    """`taskring broker cluster` on free ports; the nodes' MQTT ports once it is ready."""
    ports = {kind: [free_port() for _ in range(NODES)] for kind in ("client", "cluster", "mqtt")}
    flags = [f"--{kind}-ports={','.join(map(str, ports[kind]))}" for kind in ports]
    process = processes.taskring(
        "broker", "cluster", "--nodes", str(NODES), "--data-dir", str(data), *flags, name="cluster"
    )
    wait_until(
        lambda: "cluster of 3 nodes is ready" in log_text(process),
        "the NATS cluster to let taskring in",
        timeout=30,
        alive=[process],
    )
    for port in ports["mqtt"]:
        assert f"mqtt://127.0.0.1:{port}" in log_text(process)
    return ports["mqtt"]


class Receiving(LeanMqttBus):
    received: asyncio.Queue[tuple[str, Any]]


@asynccontextmanager
async def bus_on(data: Path, login: str, port: int, *filters: str) -> AsyncIterator[Receiving]:
    """`login`'s bus, connected to the node on `port`, collecting what `filters` bring."""
    bus = Receiving(BrokerAddress.parse(broker_url_for(login, "127.0.0.1", port, data)), login)
    bus.received = asyncio.Queue()

    async def collect(topic: str, message: Any) -> None:
        await bus.received.put((topic, message))

    for topic_filter in filters:
        bus.subscribe(topic_filter, collect)
    async with bus:
        assert await bus.wait_connected(10), f"{login}: {bus.last_error}"
        yield bus


async def next_message(bus: Receiving) -> tuple[str, Any]:
    return await asyncio.wait_for(bus.received.get(), 5)


async def roles_hold_across_nodes(data: Path, first: int, third: int) -> None:
    beat = topics.heartbeat("client-portal", "client-portal-1")
    async with (
        bus_on(data, "web-1", third, topics.HEARTBEATS) as web,
        bus_on(data, "client-portal-1", first) as portal,
    ):
        # (a) allowed: a portal's heartbeat on node 1 reaches the web process on node 3,
        # once the routes carry the subscription over (QoS 0 keeps no copy before).
        async def delivered() -> bool:
            await portal.publish(beat, {"n": 1}, qos=0)
            try:
                return await asyncio.wait_for(web.received.get(), 0.5) == (beat, {"n": 1})
            except TimeoutError:
                return False

        for _ in range(20):
            if await delivered():
                break
        else:
            raise AssertionError("a heartbeat from node 1 never reached node 3")
        await portal.publish(beat, {"n": 2})  # QoS 1: stored by the gateway, then sent on
        assert await next_message(web) == (beat, {"n": 2})
        # A Raft snapshot's size: over NATS's default max_payload (enforced from 2.14).
        big = {"blob": bytes(3 << 20)}
        await portal.publish(beat, big, qos=0)
        assert await next_message(web) == (beat, big)

        # (b) refused: the web process may neither read the storage's changes (SUBACK
        # 0x80) nor forge a portal's heartbeat (dropped: the marker after it comes first).
        with pytest.raises(BusUnavailable, match="refused the subscription"):
            await web.subscribe_now(topics.SYNC_CHANGES, lambda _t, _m: asyncio.sleep(0))
        await web.publish(beat, {"forged": True}, qos=0)
        await portal.publish(beat, {"marker": True}, qos=0)
        assert await next_message(web) == (beat, {"marker": True})
        assert web.received.empty()


def test_taskring_runs_on_a_three_node_nats_cluster(processes: Processes, tmp_path: Path):
    data = tmp_path / "data"
    mqtt_ports = start_cluster(processes, data)
    asyncio.run(roles_hold_across_nodes(data, mqtt_ports[0], mqtt_ports[2]))

    # (c) `taskring up` on node 1: the broker answers, refuses anonymous logins and takes
    # this data directory's `status` login, so every component logs in as itself.
    client_port, admin_port, web_port = free_port(), free_port(), free_port()
    up = processes.taskring(
        "up",
        "--data-dir", str(data),
        "--broker-port", str(mqtt_ports[0]),
        "--storage", "ring", "--cache-nodes", "1", "--replica-groups", "1", "--replicas", "1",
        "--client-ports", str(client_port),
        "--admin-ports", str(admin_port),
        "--web-port", str(web_port),
        name="up",
        env={"TASKRING_ADMIN_TOKEN": "", "TASKRING_BROKER": "", "TASKRING_STORAGE": ""},
    )  # fmt: skip

    def ready() -> bool:
        return httpx.get(f"http://127.0.0.1:{web_port}/readyz", timeout=2).status_code == 200

    wait_until(ready, "taskring on NATS to report ready", timeout=40, interval=0.2, alive=[up])
    # The banner follows the supervisor's own /readyz check, a moment after ours.
    wait_until(
        lambda: "logins from the data directory" in log_text(up),
        "taskring up to say it uses the cluster with the data directory's logins",
        alive=[up],
    )
    client_round_trip(
        f"127.0.0.1:{admin_port}",
        (data / "admin-token").read_text().strip(),
        f"127.0.0.1:{client_port}",
    )
