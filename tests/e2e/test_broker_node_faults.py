"""Losing one node of a three-node NATS broker costs seconds, not the service.

`taskring broker cluster` runs three NATS nodes, and `taskring up --broker
<the three URLs>` runs taskring on them (ring storage, one replica group of
three, three cache nodes): each component logs in as itself on every node, its
list starting at another node, so every node has components connected. The
deployment is started once for this module; each test then loads fresh
clients through both portals (backend/chaos/recorder.py) and strikes, in the
middle of the load, the node the Raft leader's replica is connected to (every
write passes through it):

- partition: drop the traffic on its route connections (nftables, in a table of
  this test's own; skipped without nft or root) for PAUSE seconds, then heal:
  its components stay connected to a node cut off from the others.
- pause: SIGSTOP it for PAUSE seconds, then SIGCONT: its connections stay open
  but nothing answers, which only the buses' keepalive can tell
  (backend/adapters/bus/failover.py, `liveness`).
- kill: SIGKILL its nats-server (`taskring broker cluster` starts it again, as a
  service manager would); its components move to the next node at once.

They run in that order: components stay on the node they moved to, so after a
pause or a kill most of them share one node, and cutting that node off would
separate nobody. Each checks that no acknowledged write is lost and every
client's history is linearizable (backend/sim/linearizability.py), that writes
are served again within RECOVERY_DEADLINE (the gap is printed as a `[figures]`
line: run pytest with -s), and that afterwards every component is heard again
through its heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.broker_logins import STATUS_LOGIN, broker_url_for, load_credentials
from backend.adapters.bus.lean import LeanMqttBus
from backend.adapters.bus.probe import CONNACK_ACCEPTED, probe_broker
from backend.adapters.port_holders import TcpSocket
from backend.adapters.settings import BrokerAddresses
from backend.chaos import network
from backend.chaos.recorder import Account, Load, linearizability_failures
from backend.core import topics
from backend.core.cluster_view import ClusterView, HeartbeatError
from backend.processes.nats_cluster import nats_binary
from tests.conftest import Processes, free_port
from tests.e2e.stack import run_cli
from tests.support.waiting import eventually, log_text, wait_until

pytestmark = pytest.mark.skipif(nats_binary() is None, reason="nats-server is not installed")

NODES = 3
CLIENTS = 3
FAULT_AT = 2.5  # seconds into the load
PAUSE = 5.0  # how long a node stays paused or partitioned
LOAD_SECONDS = FAULT_AT + PAUSE + 3.0
RECOVERY_DEADLINE = 15.0
GROUP = "g1"


@dataclass
class Deployment:
    processes: Processes
    data: Path
    cluster: subprocess.Popen[bytes]
    mqtt_ports: list[int]
    route_ports: list[int]
    client_ports: list[int]
    admin_port: int

    def admin_env(self) -> dict[str, str]:
        return {
            "TASKRING_ADMIN_TOKEN": (self.data / "admin-token").read_text().strip(),
            "TASKRING_ADMIN_PORTAL": f"127.0.0.1:{self.admin_port}",
        }

    def node_pid(self, index: int) -> int:
        """The pid of node `index`'s nats-server, a child of `taskring broker cluster`."""
        conf = f"taskring-{index + 1}.conf"
        for child in children_of(self.cluster.pid):
            if any(arg.endswith(conf) for arg in command_line(child)):
                return child
        raise AssertionError(f"no nats-server with {conf} under pid {self.cluster.pid}")

    def status_url(self) -> str:
        more = [("127.0.0.1", port) for port in self.mqtt_ports[1:]]
        return broker_url_for(STATUS_LOGIN, "127.0.0.1", self.mqtt_ports[0], self.data, more)


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(child) for child in text.split()]
    return found


def command_line(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return []


def clients_on(port: int) -> int:
    """How many connections the node listening on `port` has accepted and holds now."""
    return sum(1 for s in sockets() if s.local_port == port)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("broker-node-faults")
    processes = Processes(directory)
    try:
        yield start_deployment(processes, directory / "data")
    finally:
        processes.stop_all()


def start_deployment(processes: Processes, data: Path) -> Deployment:
    ports = {kind: [free_port() for _ in range(NODES)] for kind in ("client", "cluster", "mqtt")}
    flags = [f"--{kind}-ports={','.join(map(str, ports[kind]))}" for kind in ports]
    cluster = processes.taskring(
        "broker", "cluster", "--nodes", str(NODES), "--data-dir", str(data), *flags, name="cluster"
    )
    wait_until(
        lambda: "cluster of 3 nodes is ready" in log_text(cluster),
        "the NATS cluster to let taskring in",
        timeout=30,
        alive=[cluster],
    )
    client_ports, admin_port, web_port = [free_port(), free_port()], free_port(), free_port()
    nodes = ",".join(f"mqtt://127.0.0.1:{port}" for port in ports["mqtt"])
    up = processes.taskring(
        "up",
        "--data-dir", str(data),
        "--broker", nodes,
        "--storage", "ring", "--cache-nodes", "3", "--replica-groups", "1", "--replicas", "3",
        "--client-ports", ",".join(map(str, client_ports)),
        "--admin-ports", str(admin_port),
        "--web-port", str(web_port),
        name="up",
        env={"TASKRING_ADMIN_TOKEN": "", "TASKRING_BROKER": "", "TASKRING_STORAGE": ""},
    )  # fmt: skip
    wait_until(
        lambda: "taskring is up." in log_text(up),
        "taskring on the NATS cluster to be ready",
        timeout=60,
        interval=0.2,
        alive=[up, cluster],
    )
    assert "logins from the data directory" in log_text(up)
    return Deployment(
        processes, data, cluster, ports["mqtt"], ports["cluster"], client_ports, admin_port
    )


class Heartbeats:
    """The cluster as its heartbeats tell it, heard live as `status` on every node."""

    def __init__(self, url: str) -> None:
        self.view = ClusterView()
        client_id = f"{STATUS_LOGIN}-{secrets.token_hex(3)}"
        self.bus = LeanMqttBus(BrokerAddresses.parse(url), client_id)
        self.bus.subscribe(topics.HEARTBEATS, self._on_heartbeat)

    async def _on_heartbeat(self, topic: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(HeartbeatError):
            self.view.observe(topic, message, time.monotonic())

    def leader_pid(self, group: str) -> int | None:
        now = time.monotonic()
        summary = next((g for g in self.view.replica_groups(now) if g["id"] == group), None)
        if summary is None or not summary["leader"]:
            return None
        leader = [c for c in self.view.alive(now, "replica") if c.id == summary["leader"]]
        return leader[0].heartbeat.pid if leader else None

    def alive(self) -> list[str]:
        return [c.id for c in self.view.alive(time.monotonic())]

    def silent_since(self, components: list[str], since: float) -> list[str]:
        now = time.monotonic()
        heard = {c.id for c in self.view.components(now) if now - c.age(now) > since}
        return [c for c in components if c not in heard]


Fault = Callable[["Run"], Awaitable[None]]


class Run:
    """One test's clients, load and heartbeat listener on the shared deployment."""

    def __init__(self, deployment: Deployment, directory: Path) -> None:
        self.deployment = deployment
        self.directory = directory
        self.figures: list[str] = []
        self.failures: list[str] = []
        self.fault_at = 0.0

    async def start(self) -> None:
        # Every node lets taskring in (one killed by the test before is back and caught up).
        password = load_credentials(self.deployment.data)[STATUS_LOGIN]
        for port in self.deployment.mqtt_ports:
            await eventually(
                functools.partial(lets_status_in, port, password),
                f"the node on {port} to let `status` in",
                RECOVERY_DEADLINE,
            )
        env = self.deployment.admin_env()
        names = [f"node-fault-{secrets.token_hex(3)}" for _ in range(CLIENTS)]
        created = await asyncio.gather(
            *(asyncio.to_thread(run_cli, "admin", "--json", "create", n, env=env) for n in names)
        )
        for result in created:
            assert result.returncode == 0, result.stderr
        self.accounts = [Account(**pick(json.loads(r.stdout))) for r in created]
        self.load = Load(self.deployment.client_ports, self.accounts)
        self.heartbeats = Heartbeats(self.deployment.status_url())

    async def run(self, fault: Fault) -> None:
        async with self.heartbeats.bus:
            await eventually(
                lambda: len(self.heartbeats.alive()) >= 10, "heartbeats of the components", 10
            )
            self.components = self.heartbeats.alive()
            self.load.start()
            try:
                await self.load.ran_for(FAULT_AT)
                assert self.load.acknowledged_writes() > 0, self.load.summary()
                self.fault_at = time.monotonic()
                await fault(self)
                await self.load.ran_for(LOAD_SECONDS)
            finally:
                await self.load.stop()
            gap = self.load.longest_gap(self.fault_at, time.monotonic())
            self.note(f"longest stretch without a successful call after the fault: {gap:.2f}s")
            await self.every_component_back(time.monotonic())
        await self.finish()

    async def served_again(self, what: str) -> None:
        """How long the fault kept writes from succeeding (`[figures]` line)."""
        try:
            gap = await self.load.served_again(self.fault_at, None, RECOVERY_DEADLINE, True)
        except AssertionError as exc:
            self.failures.append(f"{what}: {exc}")
            self.note(f"{what}: not within {RECOVERY_DEADLINE}s")
            return
        self.note(f"{what}: {gap:.2f}s")

    async def every_component_back(self, since: float) -> None:
        """Every component heard from after `since`, once the fault is over."""
        try:
            await eventually(
                lambda: not self.heartbeats.silent_since(self.components, since),
                "heartbeats",
                RECOVERY_DEADLINE,
            )
        except AssertionError:
            silent = self.heartbeats.silent_since(self.components, since)
            self.failures.append(f"no heartbeat after the fault from {silent}")
            return
        self.note(f"every one of {len(self.components)} components heard again")

    async def finish(self) -> None:
        await self.load.final_reads()
        self.note(f"load: {self.load.summary()}")
        results, failures = linearizability_failures(self.load, self.directory / "histories")
        self.note(f"checked {len(results)} clients' histories")
        print(f"\n[figures] {os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}")
        for line in self.figures:
            print(f"[figures]   {line}")
        if self.load.problems:
            failures.append(f"answers no correct run gives: {self.load.problems[:5]}")
        if self.failures or failures:
            pytest.fail("\n\n".join([*self.failures, *failures]), pytrace=False)

    def note(self, text: str) -> None:
        self.figures.append(text)


def lets_status_in(port: int, password: str) -> bool:
    answer = probe_broker("127.0.0.1", port, STATUS_LOGIN, password, timeout=2.0)
    return answer == CONNACK_ACCEPTED


def pick(created: dict[str, Any]) -> dict[str, str]:
    return {"cid": created["cid"], "token": created["token"]}


async def struck_node(run: Run) -> tuple[int, int, int]:
    """The node the Raft leader's replica is connected to (every write passes through
    it): its index, nats-server pid and MQTT port."""
    ports = run.deployment.mqtt_ports
    leader = await eventually(lambda: run.heartbeats.leader_pid(GROUP), "a Raft leader", 10)
    for local_port in network.connections_of(leader, set(ports)):
        for index, port in enumerate(ports):
            if any(s.local_port == port and s.remote_port == local_port for s in sockets()):
                return index, run.deployment.node_pid(index), port
    raise AssertionError(f"the Raft leader (pid {leader}) is connected to no node of {ports}")


def sockets() -> list[TcpSocket]:
    return [s for s in network.tcp_sockets() if s.state == "ESTABLISHED"]


async def kill_node(run: Run) -> None:
    _, pid, port = await struck_node(run)
    run.note(f"killing nats-server on {port} with {clients_on(port)} connections")
    os.kill(pid, signal.SIGKILL)
    await run.served_again("first write made after the kill acknowledged after")


async def pause_node(run: Run) -> None:
    _, pid, port = await struck_node(run)
    run.note(f"pausing nats-server on {port} with {clients_on(port)} connections")
    os.kill(pid, signal.SIGSTOP)
    await heal_while_measuring(
        run, "first write made after the pause acknowledged after", lambda: resume(pid)
    )


def resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


async def partition_node(run: Run) -> None:
    index, pid, port = await struck_node(run)
    routes = run.deployment.route_ports
    own = routes[index]
    # Its own route port (the peers' connections to it) and the local ports of its
    # connections to the peers' route ports.
    local = {own, *network.connections_of(pid, set(routes) - {own})}
    ports = "{ " + ", ".join(map(str, sorted(local))) + " }"
    rules = [f"tcp sport {ports} drop", f"tcp dport {ports} drop"]
    table = f"taskring_node_fault_{secrets.token_hex(3)}"
    run.note(f"cutting nats-server on {port} off its peers (ports {sorted(local)})")
    try:
        nft(network.partition_script(table, rules, True))
    except network.NetworkToolMissing as exc:
        pytest.skip(str(exc))
    await heal_while_measuring(
        run,
        "first write made after the partition acknowledged after",
        lambda: nft(network.delete_table_script(table)),
    )


def nft(script: str) -> None:
    network.run(["nft", "-f", "-"], script)


async def heal_while_measuring(run: Run, what: str, heal: Callable[[], None]) -> None:
    """Measure how soon writes are served again while the fault lasts PAUSE seconds and
    then is healed (whether or not writes came back before)."""

    async def heal_in_time() -> None:
        await asyncio.sleep(max(0.0, run.fault_at + PAUSE - time.monotonic()))
        await asyncio.to_thread(heal)
        run.note(f"healed {time.monotonic() - run.fault_at:.2f}s after the fault")

    healing = asyncio.create_task(heal_in_time())
    try:
        await run.served_again(what)
    finally:
        await healing


async def strike(deployment: Deployment, directory: Path, fault: Fault) -> None:
    run = Run(deployment, directory)
    await run.start()
    await run.run(fault)


def test_partitioning_a_broker_node_from_its_peers_loses_no_acknowledged_write(
    deployment: Deployment, tmp_path: Path
) -> None:
    asyncio.run(strike(deployment, tmp_path, partition_node))


def test_pausing_a_broker_node_loses_no_acknowledged_write(
    deployment: Deployment, tmp_path: Path
) -> None:
    asyncio.run(strike(deployment, tmp_path, pause_node))


def test_killing_a_broker_node_loses_no_acknowledged_write(
    deployment: Deployment, tmp_path: Path
) -> None:
    asyncio.run(strike(deployment, tmp_path, kill_node))
