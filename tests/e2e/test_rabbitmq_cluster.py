"""`taskring broker cluster --kind rabbitmq`: three RabbitMQ nodes as one broker, taskring on it.

Opt-in (TASKRING_RABBITMQ_TESTS=1, which `make test-rabbitmq` sets): three Erlang
VMs take a minute or more to boot on two loaded cores, beyond CI's budget for
`make test`. One test, so the cluster starts once:

(a) a component's login on node 1 reaches a subscriber on node 3; what a role may
    not do is refused the RabbitMQ 3.10 way: a forbidden SUBSCRIBE gets no SUBACK
    at all (the binding is refused, and the plugin closes the connection), a
    forbidden PUBLISH is not routed (the node logs the refusal and closes the
    publisher's connection, which the bus reopens);
(b) `taskring up` pointed at node 1 with the cluster's data directory (each
    component logs in as itself) becomes ready and serves the admin and client CLIs;
(c) node 2 is killed with SIGKILL: a bus given nodes 2 and 3 (as `status`) fails
    over to node 3 and hears the components' heartbeats again, and writes are still
    served. `taskring up` gives each component node 1 only (one host and
    --broker-port), so losing the node taskring's own components use is not tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.adapters.broker_logins import broker_url_for
from backend.adapters.bus.lean import LeanMqttBus
from backend.adapters.bus.transport import BusUnavailable
from backend.adapters.settings import BrokerAddresses
from backend.core import topics
from backend.processes.rabbitmq_cluster import rabbitmq_script
from tests.conftest import Processes, free_port
from tests.e2e.stack import client_round_trip, run_cli
from tests.support.waiting import log_text, wait_until

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("TASKRING_RABBITMQ_TESTS") != "1",
        reason="three RabbitMQ nodes are too slow for make test: run make test-rabbitmq "
        "(or set TASKRING_RABBITMQ_TESTS=1)",
    ),
    pytest.mark.skipif(
        rabbitmq_script("rabbitmq-server") is None, reason="rabbitmq-server is not installed"
    ),
]

NODES = 3
BOOT_TIMEOUT = 300  # three Erlang VMs, one after another, on two loaded cores


def start_cluster(processes: Processes, data: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`taskring broker cluster --kind rabbitmq` on free ports; the nodes' MQTT ports."""
    ports = {kind: [free_port() for _ in range(NODES)] for kind in ("amqp", "mqtt", "dist")}
    flags = [f"--{kind}-ports={','.join(map(str, ports[kind]))}" for kind in ports]
    process = processes.taskring(
        "broker", "cluster", "--kind", "rabbitmq", "--nodes", str(NODES),
        "--data-dir", str(data), "--ready-timeout", str(BOOT_TIMEOUT), *flags,
        name="cluster",
    )  # fmt: skip
    wait_until(
        lambda: "RabbitMQ cluster of 3 nodes is ready" in log_text(process),
        "the RabbitMQ cluster to let taskring in",
        timeout=BOOT_TIMEOUT + 10,
        interval=0.5,
        alive=[process],
    )
    for port in ports["mqtt"]:
        assert f"mqtt://127.0.0.1:{port}" in log_text(process)
    return process, ports["mqtt"]


class Receiving(LeanMqttBus):
    received: asyncio.Queue[tuple[str, Any]]


@asynccontextmanager
async def bus_on(
    data: Path, login: str, port: int, *filters: str, more: tuple[int, ...] = ()
) -> AsyncIterator[Receiving]:
    """`login`'s bus (its client id the login), on the node at `port` (then those on
    `more`), collecting `filters`."""
    url = broker_url_for(login, "127.0.0.1", port, data, [("127.0.0.1", p) for p in more])
    bus = Receiving(BrokerAddresses.parse(url), login)
    bus.received = asyncio.Queue()

    async def collect(topic: str, message: Any) -> None:
        await bus.received.put((topic, message))

    for topic_filter in filters:
        bus.subscribe(topic_filter, collect)
    async with bus:
        assert await bus.wait_connected(15), f"{login}: {bus.last_error}"
        yield bus


async def next_message(bus: Receiving) -> tuple[str, Any]:
    return await asyncio.wait_for(bus.received.get(), 5)


async def roles_hold_across_nodes(data: Path, first: int, third: int) -> None:
    beat = topics.heartbeat("client-portal", "client-portal-1")
    async with (
        bus_on(data, "web-1", third, topics.HEARTBEATS) as web,
        bus_on(data, "client-portal-1", first) as portal,
    ):
        # (a) allowed: a portal's heartbeat on node 1 reaches the web process on node 3
        # once the binding has spread (QoS 0 keeps no copy before).
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
        while not web.received.empty():
            web.received.get_nowait()
        await portal.publish(beat, {"n": 2})  # QoS 1
        assert await next_message(web) == (beat, {"n": 2})
        big = {"blob": bytes(3 << 20)}  # a Raft snapshot's size
        await portal.publish(beat, big, qos=0)
        assert await next_message(web) == (beat, big)

        # (b) refused. RabbitMQ 3.10 answers a forbidden SUBSCRIBE with no SUBACK: the
        # queue.bind is refused (access_refused) and the plugin closes the connection.
        async with bus_on(data, "status", first) as status:
            with pytest.raises(BusUnavailable, match="closed the connection"):
                await status.subscribe_now(topics.SYNC_CHANGES, lambda _t, _m: asyncio.sleep(0))
        # A forbidden PUBLISH (the admin portal forging a client portal's heartbeat) is not
        # routed, and the publisher's connection is closed; the marker after it arrives alone.
        async with bus_on(data, "admin-portal-1", first) as forger:
            await forger.publish(beat, {"forged": True}, qos=0)
            await portal.publish(beat, {"marker": True}, qos=0)
            assert await next_message(web) == (beat, {"marker": True})
            await asyncio.sleep(1.0)
            assert web.received.empty()
        refusal = "in exchange 'amq.topic' in vhost 'taskring' refused for user 'admin-portal-1'"
        assert refusal in node_log(data, 1)


def node_log(data: Path, number: int) -> str:
    node = f"rabbit-{number}@localhost"
    return (data / "broker" / "rabbitmq" / f"rabbit-{number}" / "log" / f"{node}.log").read_text()


def rabbit_pid(data: Path, number: int) -> int:
    """The Erlang VM of node `number` (its pid file is in the node's Mnesia directory)."""
    node = f"rabbit-{number}@localhost"
    return int(
        (data / "broker" / "rabbitmq" / f"rabbit-{number}" / "mnesia" / f"{node}.pid").read_text()
    )


async def fails_over_when_its_node_dies(data: Path, node_2: int, node_3: int) -> None:
    """`status` on node 2, with node 3 in its list, hears heartbeats before and after
    node 2's Erlang VM is killed."""
    async with bus_on(data, "status", node_2, topics.HEARTBEATS, more=(node_3,)) as status:
        await asyncio.wait_for(status.received.get(), 15)
        assert status.address.port == node_2
        os.kill(rabbit_pid(data, 2), signal.SIGKILL)
        await asyncio.sleep(1.0)
        while not status.received.empty():
            status.received.get_nowait()
        await asyncio.wait_for(status.received.get(), 45)
        assert status.address.port == node_3


def stop_cluster(cluster: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait: the nodes stop one by one, longer than the fixture's grace."""
    if cluster.poll() is None:
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)


def test_taskring_runs_on_a_three_node_rabbitmq_cluster(processes: Processes, tmp_path: Path):
    data = tmp_path / "data"
    cluster, mqtt_ports = start_cluster(processes, data)
    try:
        asyncio.run(roles_hold_across_nodes(data, mqtt_ports[0], mqtt_ports[2]))
        run_taskring_on_node_1(processes, cluster, data, mqtt_ports)
    finally:
        stop_cluster(cluster)


def run_taskring_on_node_1(
    processes: Processes, cluster: subprocess.Popen[bytes], data: Path, mqtt_ports: list[int]
) -> None:
    client_port, admin_port, web_port = free_port(), free_port(), free_port()
    node_1, node_2, node_3 = mqtt_ports
    up = processes.taskring(
        "up",
        "--data-dir", str(data),
        "--broker-port", str(node_1),
        "--storage", "ring", "--cache-nodes", "1", "--replica-groups", "1", "--replicas", "1",
        "--client-ports", str(client_port),
        "--admin-ports", str(admin_port),
        "--web-port", str(web_port),
        name="up",
        env={"TASKRING_ADMIN_TOKEN": "", "TASKRING_BROKER": "", "TASKRING_STORAGE": ""},
    )  # fmt: skip

    def ready() -> bool:
        return httpx.get(f"http://127.0.0.1:{web_port}/readyz", timeout=2).status_code == 200

    wait_until(ready, "taskring on RabbitMQ to report ready", timeout=60, interval=0.2, alive=[up])
    wait_until(
        lambda: "logins from the data directory" in log_text(up),
        "taskring up to say it uses the cluster with the data directory's logins",
        alive=[up],
    )
    client_env = client_round_trip(
        f"127.0.0.1:{admin_port}",
        (data / "admin-token").read_text().strip(),
        f"127.0.0.1:{client_port}",
        sign_in_timeout=15,
    )

    # (c) node 2 dies at once: a bus on it fails over to node 3, and the components,
    # all on node 1, go on serving writes.
    asyncio.run(fails_over_when_its_node_dies(data, node_2, node_3))
    wait_until(
        lambda: "node 2 (rabbit-2@localhost) exited" in log_text(cluster),
        "the cluster command to see node 2 go",
        timeout=30,
    )
    assert cluster.poll() is None, "the cluster must outlive one node"
    wait_until(
        lambda: (
            run_cli("client", "add", "after node 2", "node 2 is gone", env=client_env).returncode
            == 0
        ),
        "a write after node 2 died",
        timeout=30,
        alive=[up],
    )
    listed = run_cli("client", "--json", "list", env=client_env)
    assert listed.returncode == 0, listed.stderr
    titles = [task["title"] for task in json.loads(listed.stdout)["tasks"]]
    assert titles[:1] == ["buy milk"] and "after node 2" in titles
