"""Faults under load, judged by the linearizability checker: real processes, real crashes.

Each scenario starts a real stack (tests/e2e/stack.py): Mosquitto, three
cache nodes, two client portals, an admin portal, and in durable mode one
replica group of three replicas. Three clients are loaded for about eight
seconds through both portals by backend/chaos/recorder.py, which records every
call; a fault strikes in the middle. Then every client is listed through
every portal, and each client's history, final lists included, must be
linearizable (backend/sim/linearizability.py, TaskBagModel): every answer is
one the task store could give with each call taking effect at one instant
while it was outstanding, and so every acknowledged write shows in the final
lists. The faults are SIGKILLs: nothing gets a chance to say goodbye. A killed
Raft leader and a killed cache node are started again later in the load, as a
supervisor would, and must rejoin (the cache node taking its keys back).

The scenarios print what they measured (how long the fault kept clients
from being served, the longest stretch without a successful call); run
pytest with -s to see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
import pytest

from backend.adapters.broker_logins import may
from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.settings import BrokerAddress
from backend.chaos.recorder import Account, Load, linearizability_failures
from backend.chaos.roles import traced_owner
from backend.core import topics
from backend.core.cluster_view import REPLICA, ClusterView, HeartbeatError
from tests.conftest import MOSQUITTO, Processes, port_open, start_mosquitto
from tests.e2e.stack import Stack, start_stack
from tests.support.waiting import eventually

CACHE_NODES = 3
CLIENTS = 3
LOAD_SECONDS = 8.0
FAULT_AT = 3.5  # seconds into the load
RECOVERY_DEADLINE = 15.0  # a fault must stop hurting within this long
GROUP = "g1"

Fault = Callable[["Scenario"], Awaitable[None]]


class Heartbeats:
    """The cluster as its heartbeats tell it (backend/core/cluster_view.py), heard live."""

    def __init__(self, broker: str) -> None:
        self.view = ClusterView()
        self.bus = MqttBus(BrokerAddress.parse(broker), f"fault-test-{secrets.token_hex(3)}")
        self.bus.subscribe(topics.HEARTBEATS, self._on_heartbeat)

    async def _on_heartbeat(self, topic: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(HeartbeatError):
            self.view.observe(topic, message, time.monotonic())

    def group(self, group: str) -> dict[str, Any]:
        groups = self.view.replica_groups(time.monotonic())
        return next((g for g in groups if g["id"] == group), {"members": [], "leader": ""})

    def leader(self, group: str) -> tuple[str, int] | None:
        """The leader's component id and term, once its heartbeat says it leads."""
        summary = self.group(group)
        for member in summary["members"]:
            if member["id"] == summary["leader"]:
                return member["id"], member["term"]
        return None

    def pid(self, kind: str, component_id: str) -> int | None:
        for component in self.view.alive(time.monotonic(), kind):
            if component.id == component_id:
                return component.heartbeat.pid
        return None


class Scenario:
    """One stack, its clients, a heartbeat listener and the load, for one test."""

    def __init__(
        self,
        processes: Processes,
        tmp_path: Path,
        replica_groups: int,
        logins: tuple[str, ...] | None = None,
    ) -> None:
        self.processes, self.tmp_path, self.replica_groups = processes, tmp_path, replica_groups
        self.logins = logins
        self.figures: list[str] = []
        self.failures: list[str] = []
        self.fault_at = 0.0

    async def start(self) -> None:
        self.stack = await asyncio.to_thread(self.launch)
        names = [f"fault-client-{n}" for n in range(1, CLIENTS + 1)]
        created = await asyncio.gather(
            *(asyncio.to_thread(self.stack.create_client, name) for name in names)
        )
        self.accounts = [Account(c["cid"], c["token"]) for c in created]
        self.load = Load(self.stack.client_ports, self.accounts)
        self.heartbeats = Heartbeats(self.stack.broker)

    def launch(self) -> Stack:
        return start_stack(
            self.processes,
            self.tmp_path,
            storage="ring",
            cache_nodes=CACHE_NODES,
            replica_groups=self.replica_groups,
            replicas=3,
            logins=self.logins,
        )

    async def run(self, fault: Fault | None) -> None:
        """Load, the fault in the middle, the final reads, the check."""
        async with self.heartbeats.bus:
            self.load.start()
            try:
                await self.load.ran_for(FAULT_AT)
                assert self.load.acknowledged_writes() > 0, self.load.summary()
                if fault is not None:
                    self.fault_at = time.monotonic()
                    await fault(self)
                await self.load.ran_for(LOAD_SECONDS)
            finally:
                await self.load.stop()
        if fault is not None:
            gap = self.load.longest_gap(self.fault_at, time.monotonic())
            self.note(f"longest stretch without a successful call after the fault: {gap:.2f}s")
        await self.finish()

    async def finish(self) -> None:
        """The final reads and the check; fail with everything that went wrong."""
        finals = await self.load.final_reads()
        self.note(f"load: {self.load.summary()}")
        counts = ["refused" if t is None else len(t) for t in finals.values()]
        self.note(f"final tasks per client: {counts}")
        started = time.monotonic()
        results, failures = linearizability_failures(self.load, self.tmp_path / "histories")
        self.note(f"checked {len(results)} clients in {time.monotonic() - started:.2f}s")
        self.report()
        if self.load.problems:
            shown = "\n  ".join(self.load.problems[:10])
            failures.append(
                f"{len(self.load.problems)} answers no correct run gives, the first:\n  {shown}"
            )
        if self.failures or failures:
            pytest.fail("\n\n".join([*self.failures, *failures]), pytrace=False)

    def note(self, text: str) -> None:
        self.figures.append(text)

    def report(self) -> None:
        print(f"\n[figures] {os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}")
        for line in self.figures:
            print(f"[figures]   {line}")

    async def kill_pid(self, pid: int, what: str) -> None:
        """SIGKILL a process this test started (its whole process group) and reap it."""
        process = next((p for p in self.processes.started if p.pid == pid), None)
        assert process is not None, f"{what} (pid {pid}) is not a process this test started"
        os.killpg(pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)

    async def served_again(self, cid: str | None, what: str, writes: bool = False) -> None:
        """Measure how long the fault kept calls (on `cid`; writes) from succeeding."""
        delay = await self.expect(
            self.load.served_again(self.fault_at, cid, RECOVERY_DEADLINE, writes), what
        )
        if delay is not None:
            self.note(f"{what}: {delay:.2f}s")

    async def expect(self, waiting: Awaitable[Any], what: str) -> Any:
        """Await a recovery; one that does not come in time is a failure, reported with the
        check's verdict after the load rather than cutting the load short. None then."""
        try:
            return await waiting
        except AssertionError as exc:
            self.failures.append(f"{what}: {exc}")
            self.note(f"{what}: not within {RECOVERY_DEADLINE}s")
            return None


async def scenario(
    processes: Processes,
    tmp_path: Path,
    replica_groups: int,
    logins: tuple[str, ...] | None = None,
) -> Scenario:
    run = Scenario(processes, tmp_path, replica_groups, logins)
    await run.start()
    return run


# ---- the faults -------------------------------------------------------------------------


async def kill_leader(run: Scenario) -> None:
    hb = run.heartbeats
    old_id, old_term = await eventually(lambda: hb.leader(GROUP), f"a leader of {GROUP}", 10)
    pid = hb.pid(REPLICA, old_id)
    assert pid is not None, f"no heartbeat pid for replica {old_id}"
    run.fault_at = time.monotonic()
    await run.kill_pid(pid, f"the leader of {GROUP}, replica {old_id}")

    def new_leader() -> tuple[str, int] | None:
        leader = hb.leader(GROUP)
        return leader if leader and leader[1] > old_term and leader[0] != old_id else None

    elected = await run.expect(
        eventually(new_leader, "its heartbeat", RECOVERY_DEADLINE), f"a new leader of {GROUP}"
    )
    if elected is not None:
        run.note(
            f"killed leader {old_id} (term {old_term}); heartbeats show {elected[0]} leading "
            f"term {elected[1]} {time.monotonic() - run.fault_at:.2f}s later"
        )
    await run.served_again(None, "first write made after the kill acknowledged after", True)
    await restart(run, pid, REPLICA, old_id)


async def kill_follower(run: Scenario) -> None:
    hb = run.heartbeats
    leader_id, _ = await eventually(lambda: hb.leader(GROUP), f"a leader of {GROUP}", 10)
    followers = [m["id"] for m in hb.group(GROUP)["members"] if m["id"] != leader_id]
    assert followers, f"no follower of {GROUP} heard from: {hb.group(GROUP)}"
    pid = hb.pid(REPLICA, followers[0])
    assert pid is not None
    run.fault_at = time.monotonic()
    await run.kill_pid(pid, f"follower {followers[0]} of {GROUP}")
    run.note(f"killed follower {followers[0]} (leader {leader_id})")
    await run.served_again(None, "first write made after the kill acknowledged after", True)


async def kill_owner(run: Scenario) -> None:
    account = run.accounts[0]
    owner = await eventually(
        lambda: traced_owner(run.stack.client_ports[0], account),
        f"a traced answer naming the owner of {account.cid}",
        10,
    )
    pid = run.heartbeats.pid("cache-node", owner)
    assert pid is not None, f"no heartbeat pid for cache node {owner}"
    run.fault_at = time.monotonic()
    await run.kill_pid(pid, f"cache node {owner}, owner of {account.cid}")
    run.note(f"killed cache node {owner}, the owner of client {account.cid}")
    await run.served_again(account.cid, f"the killed owner's client {account.cid} served again")
    await restart(run, pid, "cache-node", owner)

    async def owner_again() -> bool:
        return await traced_owner(run.stack.client_ports[0], account) == owner

    since = time.monotonic()
    back = eventually(owner_again, "a traced answer naming it", RECOVERY_DEADLINE)
    if await run.expect(back, f"{owner} owning {account.cid} again"):
        run.note(f"{owner} owns {account.cid} again {time.monotonic() - since:.2f}s after that")


async def restart(run: Scenario, pid: int, kind: str, component_id: str) -> None:
    """Start a killed replica or cache node again, as a supervisor would, with its command
    line and data directory, and wait for its heartbeat."""
    name = next(
        n for n, p in {**run.stack.replicas, **run.stack.cache_nodes}.items() if p.pid == pid
    )
    since = time.monotonic()
    fresh = await asyncio.to_thread(run.stack.restart, name)
    beating = await run.expect(
        eventually(
            lambda: run.heartbeats.pid(kind, component_id) == fresh.pid,
            f"a heartbeat with pid {fresh.pid}",
            RECOVERY_DEADLINE,
        ),
        f"a heartbeat from the restarted {name}",
    )
    if beating:
        run.note(f"restarted {name}: heartbeating after {time.monotonic() - since:.2f}s")


def argv(process: subprocess.Popen[bytes]) -> list[str]:
    """A started process's command line (always a list here, never a shell string)."""
    args = process.args
    assert isinstance(args, list | tuple), args
    return [str(a) for a in args]


async def kill_broker(run: Scenario) -> None:
    port = BrokerAddress.parse(run.stack.broker).port
    conf = f"mosquitto-{port}.conf"
    broker = next(
        p
        for p in run.processes.started
        if argv(p)[0] == MOSQUITTO and any(a.endswith(conf) for a in argv(p)) and p.poll() is None
    )
    components = [c.id for c in run.heartbeats.view.alive(time.monotonic())]
    run.fault_at = time.monotonic()
    await run.kill_pid(broker.pid, f"Mosquitto on port {port}")
    await asyncio.to_thread(start_mosquitto, run.processes, run.tmp_path, port)
    run.note(
        f"killed Mosquitto; listening again on {port} after {time.monotonic() - run.fault_at:.2f}s"
    )
    await run.served_again(None, "first successful write made after the kill, returned after", True)
    await every_component_back(run, components, time.monotonic())


async def every_component_back(run: Scenario, components: list[str], since: float) -> None:
    """Each component heard from after `since` (a write committed through the new broker),
    and each replica applying what its group had committed by then: their subscriptions
    were restored, not only their connections (a follower that only reconnected would
    publish heartbeats and apply nothing)."""
    view = run.heartbeats.view

    def silent() -> list[str]:
        now = time.monotonic()
        heard = {c.id for c in view.components(now) if now - c.age(now) > since}
        return [c for c in components if c not in heard]

    def members() -> dict[str, list[dict[str, Any]]]:
        return {g["id"]: g["members"] for g in view.replica_groups(time.monotonic())}

    await run.expect(
        eventually(lambda: not silent(), "heartbeats", RECOVERY_DEADLINE),
        f"a heartbeat after the restart from each of {components}",
    )
    # Every heartbeat now is newer than the write: the commit index they carry includes
    # it, so an applied index that reaches it was delivered after the restart.
    targets = {gid: max(m["commit_index"] for m in ms) for gid, ms in members().items()}

    def behind() -> list[str]:
        return [
            m["id"]
            for gid, ms in members().items()
            for m in ms
            if m["applied_index"] < targets.get(gid, 0)
        ]

    await run.expect(
        eventually(lambda: not behind(), "replicas applying", RECOVERY_DEADLINE),
        f"every replica applying what its group committed after the restart ({targets})",
    )
    run.note(f"every one of {len(components)} components heard again; replicas applying")


async def kill_portal(run: Scenario) -> None:
    portal = "client-portal-1"
    pid = run.heartbeats.pid("client-portal", portal)
    assert pid is not None, f"no heartbeat pid for {portal}"
    run.fault_at = time.monotonic()
    await run.kill_pid(pid, portal)
    run.note(f"killed {portal}; its connections' calls in flight have unknown outcomes")
    await run.served_again(None, "first successful call made after the kill, returned after")
    # started again on its port, as the supervisor would, for the final reads through it
    port = run.stack.client_ports[0]
    listen = ("--id", portal, "--listen", f"127.0.0.1:{port}")
    run.processes.taskring(
        "client-portal", *listen, name=f"{portal}-again", env=run.stack.env_for(portal)
    )
    since = time.monotonic()
    if await run.expect(
        eventually(lambda: port_open(port), f"{portal} listening again", RECOVERY_DEADLINE),
        f"{portal} restarted",
    ):
        run.note(f"restarted {portal}: listening after {time.monotonic() - since:.2f}s")


async def poison_every_topic(run: Scenario) -> None:
    """Publish undecodable and malformed payloads on every internal topic, for a few
    seconds, with a login of every role (POISONERS: the broker knows them, no component
    uses them), as an insider holding any one login would. The broker's ACL lets each
    login through where its role may publish; every component must drop what arrives
    (counting it) and go on serving."""
    targets = await internal_topics(run)
    allowed = {login: [t for t in targets if may(login, "write", t)] for login in POISONERS}
    reached = sorted({t for topics_ in allowed.values() for t in topics_})
    run.note(f"poisoning {len(reached)} of {len(targets)} topics, {len(POISON)} payloads each")
    assert set(reached) == set(targets), f"no login may write {set(targets) - set(reached)}"
    run.fault_at = time.monotonic()
    for login, writable in allowed.items():
        address = BrokerAddress.parse(run.stack.login_url(login))
        async with aiomqtt.Client(
            address.host, address.port, username=address.username, password=address.password
        ) as client:
            for _ in range(POISON_ROUNDS):
                for topic in writable:
                    for payload in POISON:
                        await client.publish(topic, payload, qos=0)
    await run.served_again(None, "first write made after the poison acknowledged after", True)
    alive = [p for p in run.processes.started if p.poll() is None]
    assert len(alive) == len(run.processes.started), "a component died of the poison"


async def internal_topics(run: Scenario) -> list[str]:
    """Every topic the stack's components listen on (the cache nodes' reply topics named
    after their incarnations, which their announcements tell)."""
    stack = run.stack
    portals = [f"client-portal-{n}" for n in range(1, len(stack.client_ports) + 1)]
    portals.append("admin-portal-1")
    found = [
        topics.RING_ANNOUNCE,
        topics.RING_CLIENT_CHANGES,
        topics.SYNC_CHANGES,
        topics.SYNC_SNAPSHOT_REQUEST,
        *(topics.ring_host(n) for n in stack.cache_nodes),
        topics.ring_events("cache-node-99"),  # portals hear every node's events topic
        *(topics.ring_reply(p) for p in portals),
        *(topics.raft_member(GROUP, m) for m in range(1, 4)),
    ]
    for host, incarnation in (await incarnations(run)).items():
        found.append(topics.raft_reply(GROUP, host, incarnation))
    # Heartbeats: each login may publish its own only, which the web process must judge.
    for login in POISONERS:
        kind, component = login.rsplit("-", 1)[0], login
        if kind == "replica-g1":
            kind, component = "replica", f"{GROUP}-99"
        found.append(topics.heartbeat(kind, component))
    return found


async def incarnations(run: Scenario) -> dict[str, str]:
    """host -> incarnation, from the cache nodes' announcements."""
    address = BrokerAddress.parse(run.stack.login_url("cache-node-99"))
    heard: dict[str, str] = {}
    async with aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password
    ) as client:
        await client.subscribe(topics.RING_ANNOUNCE)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POISON_LISTEN):
                async for message in client.messages:
                    announcement = msgpack.unpackb(bytes(message.payload))
                    heard[announcement["host"]] = announcement["incarnation"]
                    if len(heard) == len(run.stack.cache_nodes):
                        break
    return heard


def poison_payloads() -> list[bytes]:
    """Bytes no decoder should choke on: not msgpack, msgpack that unpacks to something
    other than a map (or raises other than a decode error), and maps of the wrong shape."""
    raw = [
        b"",
        b"\x81\x91\x01\x01",  # a map whose key is an array: TypeError in unpackb
        b"\x81\x81\x01\x01\x01",  # a map whose key is a map
        b"\xc1",  # a byte msgpack never uses
        b"\x91" * 5000 + b"\xc0",  # nested deeper than the unpacker's stack
        b"\xdb\xff\xff\xff\xff",  # a string claiming 4 GiB
        b"\xdd\x7f\xff\xff\xff",  # an array claiming 2**31 items
        bytes(range(256)),
    ]
    shapes: list[Any] = [
        [1, 2, 3],
        {"t": "batch", "msgs": [1, "x", None, {"t": "batch", "msgs": []}]},
        {"t": "request", "corr": 7, "reply_to": ["x"], "key": -1, "op": "insert_task"},
        {"t": "reply", "corr": "nobody", "ok": "yes", "result": [1]},
        {"t": "announce", "host": 5, "incarnation": None, "positions": "all"},
        {"t": "host_gone", "host": ["cache-node-1"], "incarnation": {}},
        {"t": "handover", "from": "x", "id": "y", "keys": [[1, 2], "k"], "arcs": [[1]]},
        {"t": "raft", "group": "g1", "msgs": [{"type": "append", "term": "one"}, 4]},
        {"t": "propose", "corr": "c", "reply_to": "r", "client": "x", "request": -3},
        {"t": "read", "corr": "c", "reply_to": "r", "ops": [{"op": "load_keys", "cids": 1}]},
        {"t": "proposed", "corr": 1, "ok": True, "results": "none"},
        {"event": "task_inserted", "cid": "not-hex", "title": 3},
        {"id": 5, "kind": ["web"], "address": {"x": 1}, "metrics": "lots", "ring": 1},
        {"t": "snapshot", "table": None, "rows": [[1]]},
    ]
    return raw + [msgpack.packb(shape) for shape in shapes]


POISON = poison_payloads()
# A login of every role that no component of the stack uses.
POISONERS = ("client-portal-99", "admin-portal-99", "cache-node-99", "replica-g1-99", "web-99")
POISON_LISTEN = 3.0  # seconds to hear every cache node announce itself
POISON_ROUNDS = 3


# ---- the scenarios ----------------------------------------------------------------------


async def test_memory_ring_without_faults_is_linearizable(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=0)
    await run.run(None)


async def test_killing_the_raft_leader_loses_no_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(kill_leader)


async def test_killing_a_follower_replica_loses_no_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(kill_follower)


async def test_killing_a_keys_owner_loses_nothing_and_the_keys_come_back(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(kill_owner)


async def test_killing_and_restarting_the_broker_loses_no_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(kill_broker)


async def test_killing_a_client_portal_loses_no_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1)
    await run.run(kill_portal)


async def test_garbage_on_every_internal_topic_loses_nothing_and_stops_nothing(
    processes: Processes, tmp_path: Path
) -> None:
    run = await scenario(processes, tmp_path, replica_groups=1, logins=POISONERS)
    await run.run(poison_every_topic)


async def test_a_full_restart_brings_back_every_acknowledged_task(
    processes: Processes, tmp_path: Path
) -> None:
    """SIGKILL every process under load, start the stack again on the same data
    directory, load it again, and check one history across both lives."""
    run = await scenario(processes, tmp_path, replica_groups=1)
    load = run.load
    load.start()
    try:
        await load.ran_for(FAULT_AT)
        assert load.acknowledged_writes() > 0, load.summary()
        run.fault_at = time.monotonic()
        alive = [p for p in processes.started if p.poll() is None]
        for process in alive:
            await run.kill_pid(process.pid, " ".join(argv(process)))
    finally:
        await load.stop()
    before = load.acknowledged_writes()
    run.stack = await asyncio.to_thread(run.launch)
    restarted = time.monotonic() - run.fault_at
    run.note(f"killed all {len(alive)} processes; the new stack took writes after {restarted:.2f}s")
    load.ports = run.stack.client_ports
    load.start()
    try:
        await run.served_again(None, "first successful call after the restart, returned after")
        await load.ran_for(LOAD_SECONDS - FAULT_AT)
    finally:
        await load.stop()
    run.note(f"{before} writes acknowledged before the crash")
    await run.finish()
