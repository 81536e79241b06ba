"""Deterministic simulation of a whole durable deployment: cache ring, replica groups,
portals and their clients, under faults, checking Raft's safety and that every client
history is linearizable.

It runs production's own cores (CacheNode, ReplicaCore through ReplicaDriver,
PortalCore) the way their processes drive them, over the simulated broker, with
virtual time; one seed fixes everything, so a failing seed replays exactly:

    TASKRING_SIM_SEED=1234 .venv/bin/pytest -q tests/sim/test_system_sim.py -k replay
    .venv/bin/python -m backend.sim.system_sim --seed 1234 --trace

What runs, the faults and the checks: docs/architecture.md, "The system simulator".
"""

from __future__ import annotations

import argparse
import itertools
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from backend.core import topics
from backend.core.drops import Drops
from backend.core.errors import EXISTS, UNAVAILABLE, OpError
from backend.core.raft import Entry, RaftOptions, Ready, Snapshot, bootstrap_state
from backend.core.replica.core import ReplicaCore, Send, SnapshotJob
from backend.core.replica.driver import Cycle, ReplicaDriver
from backend.core.replica.group import default_groups, group_for
from backend.core.replica.state_machine import decode_batch
from backend.core.ring import wire
from backend.core.ring.cache_core import TICK_INTERVAL as CACHE_TICK
from backend.core.ring.cache_core import CacheNode, Publish, coalesce
from backend.core.ring.portal_core import (
    REFUSED,
    REQUEST_TIMEOUT,
    RETRY_PAUSE,
    WILL,
    CallId,
    Completed,
    PortalCore,
)
from backend.core.storage_records import encode_entry, encode_hard_state, records_for_ready, replay
from backend.sim import linearizability, seeds
from backend.sim.linearizability import Operation, TaskBagModel
from backend.sim.network import Scheduler
from backend.sim.raft_safety import RaftSafety
from backend.sim.raft_sim import SimDisk
from backend.sim.seeds import SEED_ENV
from backend.sim.simulated_broker import Broker, BrokerConfig, Connection

REPLICA_TICK = 0.05  # `taskring replica --tick`'s default
WARM_UP = 3.0  # the ring forms and the groups elect before the clients start
TITLES = ("a", "b", "c")
FINAL_DEADLINE = 60.0  # after the faults stop, every key must be listed within this
CHECK_TIMEOUT = 30.0  # seconds of real time the linearizability search may take
DIGEST_EVERY = 8  # compare members' state machines at every this many applied indexes
SNAPSHOT_WRITE = 0.3  # mean seconds a replica's background snapshot writer takes
SNAPSHOT_READ = 0.005  # mean seconds reading a snapshot file back for a follower takes


class SystemFailure(AssertionError):
    """A check failed; the message names the seed and how to replay it."""


@dataclass(frozen=True)
class Scenario:
    seed: int
    cache_nodes: int
    vnodes: int
    groups: int
    replicas: int
    portals: int
    keys: int
    users: int
    chaos: float  # seconds of load and faults
    broker: BrokerConfig
    clock_drift: float  # cache node clocks run at 1 +- this
    replica_crashes: float  # expected faults per second of chaos, of each kind
    leader_kills: float
    cache_kills: float
    partitions: float
    fsync: float  # mean seconds a replica's persist takes
    snapshot_every: int
    think: float  # mean seconds a client waits between operations

    @classmethod
    def from_seed(cls, seed: int, chaos: float | None = None) -> Scenario:
        rng = random.Random(f"system-scenario-{seed}")
        cache_nodes = rng.randint(2, 5)
        keys = rng.randint(2, 4)
        return cls(
            seed=seed,
            cache_nodes=cache_nodes,
            vnodes=rng.choice([1, 2, 4, 8]),
            groups=rng.choice([1, 2, 2, 3]),
            replicas=rng.choice([1, 3, 3, 3, 5]),
            portals=rng.choice([1, 2, 2, 3]),
            keys=keys,
            users=keys + rng.randint(1, 2 * keys),
            chaos=rng.choice([6.0, 10.0, 15.0]) if chaos is None else chaos,
            broker=BrokerConfig(
                latency=rng.choice([0.0002, 0.001]),
                jitter=rng.choice([0.0005, 0.002, 0.01]),
                stall=rng.choice([0.0, 0.001, 0.01]),
                stall_delay=rng.choice([0.2, 1.0]),
                loss=rng.choice([0.0, 0.0, 0.01, 0.05]),
                duplicate=rng.choice([0.0, 0.01, 0.1]),
            ),
            clock_drift=rng.choice([0.0, 0.001, 0.01]),
            replica_crashes=rng.choice([0.0, 0.1, 0.3]),
            leader_kills=rng.choice([0.0, 0.1, 0.2]),
            cache_kills=rng.choice([0.0, 0.05, 0.15]),
            partitions=rng.choice([0.0, 0.3, 0.6]),
            fsync=rng.choice([0.0005, 0.002, 0.01]),
            snapshot_every=rng.choice([8, 32, 10_000]),
            think=rng.choice([0.01, 0.05, 0.2]),
        )

    def calm(self) -> Scenario:
        """The same deployment without random faults (for scripted scenarios)."""
        return replace(self, replica_crashes=0.0, leader_kills=0.0, cache_kills=0.0, partitions=0.0)


@dataclass
class SimResult:
    seed: int
    stats: Counter[str] = field(default_factory=Counter)
    history: list[Operation] = field(default_factory=list)


# ---- replicas ---------------------------------------------------------------------------


class SimReplicaStorage:
    """The replica driver's storage over a SimDisk: a Ready's records are written at
    once and fsynced when its persist completes; a snapshot written in the background
    is durable when its writer finishes."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk

    def save(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.disk.snapshot = ready.snapshot  # saved and fsynced before its record
        self.disk.write(records_for_ready(ready))

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """The background writer is done; a restart finds the newest snapshot."""
        if self.disk.snapshot is None or self.disk.snapshot.index < snapshot.index:
            self.disk.snapshot = snapshot

    def snapshot_written(self, index: int) -> None:
        """Free the log through `index`, as the real one drops its segments: the fsynced
        records become the entries after `index` and the hard state; a restart needs a
        snapshot at `index` or later to follow them."""
        disk = self.disk
        state = replay(disk.snapshot, disk.records[: disk.synced])
        kept = [encode_entry(e) for e in state.entries if e.index > index]
        disk.records[: disk.synced] = [*kept, encode_hard_state(state.hard_state)]
        disk.synced = len(kept) + 1

    def load_snapshot(self, index: int) -> Snapshot | None:
        """The saved snapshot at `index`, or None if a newer one replaced it."""
        snapshot = self.disk.snapshot
        return snapshot if snapshot is not None and snapshot.index == index else None


class ReplicaProcess:
    """`taskring replica`: one member of one group, with a disk that survives it, run by
    the product's ReplicaDriver as backend/processes/replica.py runs it."""

    def __init__(self, sim: SystemSim, group: str, member: int, disk: SimDisk) -> None:
        self.sim = sim
        self.group = group
        self.member = member
        self.name = f"replica/{group}/{member}"
        self.disk = disk
        self.storage = SimReplicaStorage(disk)
        self.core: ReplicaCore | None = None
        self.driver: ReplicaDriver | None = None
        self.connection: Connection | None = None
        self.incarnation = 0
        self.busy = False
        self.leader_term = 0
        self.seen_commit = 0

    @property
    def alive(self) -> bool:
        return self.core is not None

    def start(self) -> None:
        sim = self.sim
        self.incarnation += 1
        self.core = ReplicaCore(
            self.group,
            self.member,
            self.disk.load(),
            partial(topics.raft_member, self.group),
            random.Random(sim.rng.getrandbits(64)),
            RaftOptions(election_ticks=10),
            snapshot_every=sim.scenario.snapshot_every,
        )
        self.driver = ReplicaDriver(self.core, self.storage, self._publish)
        self.busy = False
        self.leader_term = 0
        self.seen_commit = self.core.node.log.snapshot.index
        self.connection = sim.broker.connect(self.name, self._deliver)
        sim.broker.subscribe(self.connection, topics.raft_member(self.group, self.member))
        node = self.core.node
        sim.trace(f"{self.name} starts: term {node.term}, log to {node.last_index}")
        sim.scheduler.after(sim.rng.random() * REPLICA_TICK, self._tick, self.incarnation)
        self._observe()

    def crash(self, lose_outbox: bool | None = None) -> None:
        """Gone at once with what it had not fsynced, and with a snapshot its writer had
        not finished; what it sent may still arrive."""
        if self.core is None or self.connection is None:
            return
        sim = self.sim
        if lose_outbox is None:
            lose_outbox = sim.rng.random() < 0.5
        sim.broker.close(self.connection, lose_outbox)
        if self.driver is not None and self.driver.snapshot_job is not None:
            sim.stats["snapshots lost unfinished"] += 1
        self.core = None
        self.driver = None
        self.incarnation += 1
        lost = self.disk.crash(sim.rng)
        sim.stats["replica crashes"] += 1
        sim.stats["unsynced records lost"] += lost
        sim.trace(f"{self.name} crashes, losing {lost} unsynced records")

    def _running(self, incarnation: int) -> ReplicaDriver | None:
        """The driver, if the incarnation that scheduled an event is still the one up."""
        return self.driver if incarnation == self.incarnation else None

    # ---- inputs -----------------------------------------------------------------------

    def _deliver(self, _topic: str, message: dict[str, Any]) -> None:
        assert self.driver is not None
        self.driver.receive(message, self.sim.now)
        self._observe()

    def _tick(self, incarnation: int) -> None:
        driver = self._running(incarnation)
        if driver is None:
            return
        driver.tick(self.sim.now)
        self._observe()
        self.sim.scheduler.after(REPLICA_TICK, self._tick, incarnation)

    # ---- the Ready cycle: the driver's, with the disk's write and fsync apart -------------

    def _kick(self) -> None:
        if self.core is not None and not self.busy:
            self.busy = True
            self.sim.scheduler.after(0.0, self._cycle, self.incarnation)

    def _cycle(self, incarnation: int) -> None:
        driver = self._running(incarnation)
        if driver is None:
            return
        self._start_background_work(driver, incarnation)  # between Readys, as the process
        cycle = driver.next_cycle(self.sim.now)
        if cycle is None:
            self.busy = False
            return
        driver.persist(cycle)
        delay = self.sim.rng.expovariate(1 / self.sim.scenario.fsync)
        self.sim.scheduler.after(delay, self._persisted, incarnation, cycle)

    def _persisted(self, incarnation: int, cycle: Cycle) -> None:
        driver = self._running(incarnation)
        if driver is None:
            return
        ready = cycle.ready
        if ready.must_sync:
            self.disk.fsync()
        self._check_applies(ready)
        driver.persisted(cycle, self.sim.now)
        if ready.committed_entries or ready.snapshot is not None:
            self.sim.compare_state(self)
        self._observe()
        self.sim.scheduler.after(0.0, self._cycle, incarnation)

    # ---- snapshots in the background, as the forked writer and the reading thread ---------

    def _start_background_work(self, driver: ReplicaDriver, incarnation: int) -> None:
        rng, after, now = self.sim.rng, self.sim.scheduler.after, self.sim.now
        job = driver.snapshot_to_start(now)
        if job is not None:
            snapshot = job.encode()  # the state as of the fork
            after(
                rng.expovariate(1 / SNAPSHOT_WRITE),
                self._snapshot_written,
                incarnation,
                job,
                snapshot,
            )
        wanted = driver.snapshot_to_load(now)
        if wanted is not None:
            after(rng.expovariate(1 / SNAPSHOT_READ), self._snapshot_read, incarnation, wanted)

    def _snapshot_written(self, incarnation: int, job: SnapshotJob, snapshot: Snapshot) -> None:
        driver = self._running(incarnation)
        if driver is None:
            return  # the writer died with its replica; its file was never taken
        self.storage.write_snapshot(snapshot)
        if driver.snapshot_written(job):
            self.sim.stats["compactions"] += 1
        self._observe()

    def _snapshot_read(self, incarnation: int, index: int) -> None:
        driver = self._running(incarnation)
        if driver is None:
            return
        snapshot = self.storage.load_snapshot(index)
        if snapshot is None:
            driver.snapshot_load_failed(self.sim.now)
        else:
            self.sim.stats["snapshots read for a follower"] += 1
            driver.snapshot_loaded(snapshot)
        self._observe()

    def _check_applies(self, ready: Ready) -> None:
        """Entries are applied in index order without gaps, and are the committed ones."""
        assert self.core is not None
        applied = self.core.machine.applied_index
        if ready.snapshot is not None:
            applied = ready.snapshot.index
            self.sim.stats["snapshots installed"] += 1
        safety = self.sim.safety[self.group]
        for entry in ready.committed_entries:
            if entry.index != applied + 1:
                self.sim.fail(
                    f"{self.name} applies index {entry.index} after {applied}: "
                    "entries must be applied in log order without gaps"
                )
            safety.check_applied(self.member, entry)
            self.sim.count_retries(self.group, entry)
            applied = entry.index

    def _observe(self) -> None:
        if self.core is None:
            return
        node = self.core.node
        safety = self.sim.safety[self.group]
        if node.is_leader and self.leader_term != node.term:
            self.leader_term = node.term
            self.sim.stats["elections"] += 1
            self.sim.trace(f"{self.name} leads term {node.term}")
            safety.new_leader(self.member, node)
        if node.commit_index > self.seen_commit:
            self.seen_commit = safety.record_commits(self.member, node, self.seen_commit)
        self._kick()  # the adapter wakes its Ready cycle after every message and tick

    def _publish(self, sends: list[Send]) -> None:
        assert self.connection is not None
        for send in sends:
            self.sim.broker.publish(self.connection, send.topic, send.message, send.qos)


# ---- cache nodes ------------------------------------------------------------------------


class CacheProcess:
    """`taskring cache-node --replica-groups G`: its memory dies with it."""

    def __init__(self, sim: SystemSim, host_id: str, bootstrap: bool) -> None:
        self.sim = sim
        self.host_id = host_id
        self.name = f"cache/{host_id}"
        self.bootstrap = bootstrap
        self.node: CacheNode | None = None
        self.connection: Connection | None = None
        self.gone: dict[str, Any] = {}  # the host_gone of the running incarnation
        self.incarnation = 0
        drift = sim.scenario.clock_drift
        self.rate = 1.0 + sim.rng.uniform(-drift, drift)
        self.offset = sim.rng.uniform(0.0, 1000.0)  # monotonic clocks start anywhere
        self.flush_due = False
        self.outgoing: list[Publish] = []

    @property
    def alive(self) -> bool:
        return self.node is not None

    def clock(self) -> float:
        return self.offset + self.rate * self.sim.now

    def start(self) -> None:
        sim = self.sim
        self.incarnation += 1
        incarnation = f"{self.incarnation}x{sim.rng.getrandbits(32):08x}"
        self.node = CacheNode(
            self.host_id,
            incarnation=incarnation,
            vnodes=sim.scenario.vnodes,
            bootstrap=self.bootstrap,
            now=self.clock(),
            seed=sim.rng.getrandbits(32),
            groups=sim.group_members,
        )
        self.flush_due = False
        self.outgoing = []
        # the adapter's MQTT last will (backend/processes/cache_node.py)
        self.gone = wire.HostGone(self.host_id, incarnation).to_wire()
        will = (topics.RING_ANNOUNCE, self.gone, 1)
        self.connection = sim.broker.connect(self.name, self._deliver, will)
        for topic_filter in self.node.subscriptions():
            sim.broker.subscribe(self.connection, topic_filter)
        sim.trace(f"{self.name} starts as incarnation {incarnation}")
        sim.scheduler.after(sim.rng.random() * CACHE_TICK, self._tick, self.incarnation)

    def kill(self, lose_outbox: bool | None = None, clean: bool = False) -> None:
        """Gone at once; what it sent may still arrive, or (`lose_outbox`) not. The broker
        publishes its will unless it disconnected `clean`ly."""
        if self.node is None or self.connection is None:
            return
        if lose_outbox is None:
            lose_outbox = self.sim.rng.random() < 0.5
        self.sim.broker.close(self.connection, lose_outbox, clean)
        self.node = None
        self.incarnation += 1
        self.sim.stats["cache node kills"] += 1
        self.sim.trace(f"{self.name} killed")

    def leave(self) -> None:
        """SIGTERM: the node leaves the ring, answers what it had queued, and stops."""
        if self.node is None:
            return
        self.sim.stats["cache node leaves"] += 1
        self.sim.trace(f"{self.name} leaves the ring")
        self._publish(coalesce(self.node.leave(self.clock())))
        self.sim.scheduler.after(0.05, self._stop, self.incarnation)

    def _stop(self, incarnation: int) -> None:
        if incarnation == self.incarnation and self.connection is not None:
            # a clean disconnect sends no will, so the adapter says it itself, last
            self.sim.broker.publish(self.connection, topics.RING_ANNOUNCE, self.gone, 1)
            self.kill(lose_outbox=False, clean=True)

    def _deliver(self, topic: str, message: dict[str, Any]) -> None:
        node = self.node
        assert node is not None
        self.outgoing.extend(node.receive(topic, message, self.clock()))
        if not self.flush_due:
            # the adapter flushes once the event loop has taken the burst that arrived,
            # and sends what it produced together (one batch per cache node or portal)
            self.flush_due = True
            delay = self.sim.rng.random() * 0.001
            self.sim.scheduler.after(delay, self._flush, self.incarnation)

    def _flush(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.node is None:
            return
        self.flush_due = False
        self.outgoing.extend(self.node.flush(self.clock()))
        outgoing, self.outgoing = self.outgoing, []
        self._publish(coalesce(outgoing))

    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.node is None:
            return
        self._publish(coalesce(self.node.tick(self.clock())))
        self.sim.scheduler.after(CACHE_TICK, self._tick, incarnation)

    def _publish(self, publishes: list[Publish]) -> None:
        assert self.connection is not None
        for item in publishes:
            self.sim.broker.publish(self.connection, item.topic, item.message, item.qos)


# ---- portals and clients ----------------------------------------------------------------

Output = tuple[str, Any]  # ("ok", result) or ("error", code), as TaskBagModel reads them


class PortalProcess:
    """A portal's ring store: the PortalCore that RingStore
    (backend/adapters/store/ring_store.py) drives, driven here over the simulated broker
    and scheduler. What one burst sends leaves shortly after as one batch per topic, as
    RingStore flushes once per event-loop turn; the core is ticked when it asks to be."""

    def __init__(self, sim: SystemSim, number: int) -> None:
        self.sim = sim
        self.portal_id = f"portal-{number}"
        self.name = f"portal/{number}"
        self.reply_topic = topics.ring_reply(self.portal_id)
        self.core = PortalCore(self.portal_id, self.reply_topic, drops=Drops(self.name))
        self.done: dict[CallId, Callable[[Output, str], None]] = {}
        self.flush_due = False
        self.wake: float | None = None  # the earliest tick scheduled
        self.connection = sim.broker.connect(self.name, self._deliver)
        sim.broker.subscribe(self.connection, topics.RING_ANNOUNCE)
        sim.broker.subscribe(self.connection, self.reply_topic)

    def call(self, key: int, op: dict[str, Any], done: Callable[[Output, str], None]) -> None:
        """Run `op` on the owner of `key`; `done(output, owner)` once its outcome is known."""
        self.done[self.core.call(key, op, self.sim.now)] = done
        self._drive()

    def _deliver(self, topic: str, message: dict[str, Any]) -> None:
        dropped = self.core.drops.total
        self.core.receive(topic, message, self.sim.now)
        if self.core.drops.total != dropped:  # the product's processes send nothing malformed
            self.sim.fail(f"{self.name} dropped a malformed message: {self.core.drops.to_wire()}")
        self._drive()

    def _tick(self, at: float) -> None:
        if at != self.wake:
            return  # an earlier tick took its place
        self.wake = None
        self.core.tick(self.sim.now)
        self._drive()

    def _drive(self) -> None:
        sim = self.sim
        for output in self.core.take():
            if isinstance(output, Completed):
                self._complete(output)
            elif output.why == WILL:
                sim.stats["attempts retried on a will"] += 1
            elif output.why == REFUSED:
                sim.stats[_unavailable_kind(output.message)] += 1
        if self.core.has_outbox() and not self.flush_due:
            self.flush_due = True
            sim.scheduler.after(sim.rng.random() * 0.001, self._flush)
        wake = self.core.next_tick()
        if wake is not None and (self.wake is None or wake < self.wake):
            self.wake = wake
            sim.scheduler.at(wake, self._tick, wake)

    def _complete(self, completed: Completed) -> None:
        done = self.done.pop(completed.call)
        result = completed.result
        if isinstance(result, OpError):
            done(("error", result.code), completed.owner)
        else:
            done(("ok", result), completed.owner)

    def _flush(self) -> None:
        self.flush_due = False
        for topic, message in self.core.flush():
            self.sim.broker.publish(self.connection, topic, message, topics.MESSAGE_QOS)


def _unavailable_kind(message: str) -> str:
    if "moved to another cache node" in message:
        return "fenced or moved"
    if "not ready within" in message:
        return "unavailable: key not ready"
    return "unavailable: other"


class User:
    """One client of the store: one operation at a time, each through a random portal
    (or always `portal`); `ops` is "mixed", or "writes" or "reads" only."""

    def __init__(
        self,
        sim: SystemSim,
        number: int,
        cid: int,
        creator: bool,
        portal: PortalProcess | None = None,
        ops: str = "mixed",
    ) -> None:
        self.sim = sim
        self.number = number
        self.cid = cid
        self.creator = creator
        self.created = not creator
        self.portal = portal
        self.ops = ops
        self.busy = False
        self.final = False  # the one list at the end
        self.listed = False

    def start(self, delay: float) -> None:
        self.busy = True
        self.sim.scheduler.after(delay, self._next)

    def _next(self) -> None:
        sim = self.sim
        if not self.final and not sim.workload:
            self.busy = False
            return
        self.busy = True
        op = self._choose()
        portal = self.portal or sim.rng.choice(sim.portals)
        call = sim.now
        portal.call(self.cid, op, lambda output, owner: self._done(op, call, output, owner))

    def _done(self, op: dict[str, Any], call: float, output: Output, owner: str) -> None:
        sim = self.sim
        sim.history.append(Operation(self.number, call, sim.now, op, output))
        sim.stats[f"{op['op']} {output[0] if output[0] == 'ok' else output[1]}"] += 1
        sim.trace(
            f"client {self.number} {_describe_op(op)} [{call:.3f}] -> {_describe(output)}"
            f"{f' by {owner}' if owner else ''}"
        )
        if op["op"] == "create_client" and (output[0] == "ok" or output == ("error", EXISTS)):
            self.created = True
        if self.final:
            if output != ("error", UNAVAILABLE):
                self.listed = True
                self.busy = False
                return
            sim.scheduler.after(RETRY_PAUSE, self._next)
            return
        sim.scheduler.after(sim.rng.expovariate(1 / sim.scenario.think), self._next)

    def _choose(self) -> dict[str, Any]:
        cid, rng = self.cid, self.sim.rng
        if self.final:
            return {"op": "list_tasks", "cid": cid}
        if not self.created:
            return create_client_op(cid)
        roll = rng.random()
        if self.ops == "reads":
            return {"op": "list_tasks", "cid": cid}
        if self.ops == "writes":
            roll = roll * 0.65 if roll < 0.95 else roll  # no lists
        title = rng.choice(TITLES)
        description = f"d{next(self.sim.descriptions)}"
        if roll < 0.3:
            return {"op": "insert_task", "cid": cid, "title": title, "description": description}
        if roll < 0.5:
            return {"op": "update_task", "cid": cid, "title": title, "description": description}
        if roll < 0.65:
            return {"op": "delete_task", "cid": cid, "title": title}
        if roll < 0.95:
            return {"op": "list_tasks", "cid": cid}
        return {"op": "delete_tasks", "cid": cid}


def create_client_op(cid: int) -> dict[str, Any]:
    return {
        "op": "create_client",
        "cid": cid,
        "name": f"client {cid:016x}",
        "data": "",
        "created_at": 0,
        "token_salt": b"salt",
        "token_hash": b"hash",
    }


def _describe_op(op: dict[str, Any]) -> str:
    args = " ".join(str(op[f]) for f in ("title", "description") if f in op)
    return f"{op['op']} {op['cid']:016x} {args}".rstrip()


def _describe(output: Output) -> str:
    status, value = output
    if status == "ok" and isinstance(value, dict) and "tasks" in value:
        return "ok " + ",".join(f"{t['title']}={t['description']}" for t in value["tasks"])
    return f"{status} {value if status == 'error' else ''}".rstrip()


# ---- the simulation ---------------------------------------------------------------------


class SystemSim:
    def __init__(self, scenario: Scenario, trace: bool = False) -> None:
        self.scenario = scenario
        self.rng = random.Random(f"system-run-{scenario.seed}")
        self.scheduler = Scheduler()
        self.broker = Broker(self.scheduler, self.rng, scenario.broker)
        self.tracing = trace
        self.trace_lines: list[str] = []
        self.label = f"{SEED_ENV}={scenario.seed}"  # how a failure names the run
        self.stats: Counter[str] = Counter()
        self.history: list[Operation] = []
        self.descriptions = itertools.count(1)
        self.faults = False
        self.workload = False
        groups = default_groups(scenario.groups)
        self.group_members = {g: list(range(1, scenario.replicas + 1)) for g in groups}
        self.safety = {g: RaftSafety(self.fail, f"{g} member") for g in groups}
        self.digests: dict[tuple[str, int], int] = {}
        self._counted: dict[str, int] = {}  # group -> highest log index looked at
        self._proposed: dict[str, set[tuple[str, int]]] = {}  # group -> (client, request id)
        founders = bootstrap_state(range(1, scenario.replicas + 1))
        self.replicas = [
            ReplicaProcess(self, g, m, SimDisk(founders))
            for g in groups
            for m in self.group_members[g]
        ]
        self.caches = [
            CacheProcess(self, f"cache-node-{n}", bootstrap=n == 1)
            for n in range(1, scenario.cache_nodes + 1)
        ]
        self.portals = [PortalProcess(self, n) for n in range(1, scenario.portals + 1)]
        self.cids = sorted(self.rng.getrandbits(64) for _ in range(scenario.keys))
        self.users: list[User] = []
        for n in range(scenario.users):
            self.add_user(self.cids[n % scenario.keys], creator=n < scenario.keys)

    @property
    def now(self) -> float:
        return self.scheduler.now

    # ---- reporting ----------------------------------------------------------------------

    def trace(self, line: str) -> None:
        if self.tracing:
            self.trace_lines.append(f"t={self.now:9.4f} {line}")

    def fail(self, what: str) -> None:
        self.trace(f"FAILED: {what.splitlines()[0]}")
        raise SystemFailure(f"{self.label} (t={self.now:.4f}): {what}")

    # ---- running ------------------------------------------------------------------------

    def run(self) -> SimResult:
        """The whole seeded run: start, load and faults, then the end checks."""
        self.start()
        self.advance(WARM_UP + self.scenario.chaos)
        return self.finish()

    def start(self) -> None:
        """Every process up; the clients begin once the ring had time to form."""
        for replica in self.replicas:
            replica.start()
        for cache in self.caches:
            cache.start()
        self.workload = True
        self.faults = True
        for user in self.users:
            later = 0.0 if user.creator else 1.0  # creators go first
            user.start(WARM_UP + later + self.rng.random())
        self.scheduler.after(WARM_UP, self._chaos)

    def add_user(
        self,
        cid: int,
        *,
        creator: bool = False,
        portal: PortalProcess | None = None,
        ops: str = "mixed",
    ) -> User:
        """A client for `cid`; `start` it (users made before `start()` start with it)."""
        user = User(self, len(self.users), cid, creator, portal, ops)
        self.users.append(user)
        return user

    def advance(self, seconds: float) -> None:
        self.scheduler.run_until(self.now + seconds)

    def run_until(self, condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        end = self.now + timeout
        while not condition():
            if self.now >= end:
                return False
            self.advance(step)
        return True

    def finish(self) -> SimResult:
        """Faults stop, everything comes back and settles, a last list per key; the checks."""
        self.faults = False
        self.workload = False
        self.heal()
        self.broker.config = replace(self.broker.config, loss=0.0, duplicate=0.0, stall=0.0)
        restartable: list[ReplicaProcess | CacheProcess] = [*self.replicas, *self.caches]
        for process in restartable:
            if not process.alive:
                process.start()
        self.trace("faults stop; every process is up")
        self.run_until(lambda: not any(u.busy for u in self.users), 3 * REQUEST_TIMEOUT)
        self.advance(2.0)
        finals = [self.add_user(cid) for cid in self.cids]
        for user in finals:
            user.final = True
            user.start(0.0)
        if not self.run_until(lambda: all(u.listed for u in finals), FINAL_DEADLINE):
            unlisted = [f"{u.cid:016x}" for u in finals if not u.listed]
            self.fail(f"liveness: keys {unlisted} not listed {FINAL_DEADLINE:g}s after the faults")
        self.check()
        for what, count in self.broker.counts.items():
            self.stats[f"broker: {what}"] += count
        return SimResult(self.scenario.seed, self.stats, self.history)

    def check(self) -> None:
        for group, safety in self.safety.items():
            nodes = [
                (r.member, r.core.node)
                for r in self.replicas
                if r.group == group and r.core is not None
            ]
            safety.check_log_matching(nodes)
        result = linearizability.check(self.history, TaskBagModel(), timeout_s=CHECK_TIMEOUT)
        if not result.ok:
            self.fail(result.explain())

    def count_retries(self, group: str, entry: Entry) -> None:
        """Count proposals whose request ids reached the log before (retries, duplicates):
        the answer table must have absorbed them."""
        if entry.index <= self._counted.get(group, 0):
            return
        self._counted[group] = entry.index
        if not entry.data or entry.config is not None:
            return
        seen = self._proposed.setdefault(group, set())
        for proposal in decode_batch(entry.data):
            first = (proposal.client, proposal.request)
            if first in seen:
                self.stats["proposals in the log again"] += 1
            seen.add(first)

    def compare_state(self, replica: ReplicaProcess) -> None:
        """Members at the same applied index hold the same state machine, byte for byte."""
        assert replica.core is not None
        machine = replica.core.machine
        index = machine.applied_index
        if index % DIGEST_EVERY:
            return
        digest = zlib.crc32(machine.snapshot())
        known = self.digests.setdefault((replica.group, index), digest)
        if known != digest:
            self.fail(f"{replica.name} reached a different state at index {index} than another")

    # ---- faults -------------------------------------------------------------------------

    def _chaos(self) -> None:
        if not self.faults:
            return
        scenario, roll, step = self.scenario, self.rng.random, 0.1
        if roll() < scenario.replica_crashes * step:
            self._crash_replica()
        if roll() < scenario.leader_kills * step:
            self._kill_leader()
        if roll() < scenario.cache_kills * step:
            self._kill_cache()
        if roll() < scenario.partitions * step:
            self._partition()
        self.scheduler.after(step, self._chaos)

    def _crash_replica(self) -> None:
        live = [r for r in self.replicas if r.alive]
        if live:
            victim = self.rng.choice(live)
            victim.crash()
            self.scheduler.after(self.rng.uniform(0.1, 3.0), self._restart, victim)

    def _kill_leader(self) -> None:
        group = self.rng.choice(sorted(self.group_members))
        leader = self.leader(group)
        if leader is not None:
            self.stats["leader kills"] += 1
            leader.crash()
            self.scheduler.after(self.rng.uniform(0.1, 2.0), self._restart, leader)

    def _kill_cache(self) -> None:
        live = [c for c in self.caches if c.alive]
        if len(live) > 1:
            victim = self.rng.choice(live)
            if self.rng.random() < 0.3:
                victim.leave()
            else:
                victim.kill()
            self.scheduler.after(self.rng.uniform(0.5, 5.0), self._restart, victim)

    def _restart(self, process: ReplicaProcess | CacheProcess) -> None:
        if self.faults and not process.alive:
            process.start()

    def _partition(self) -> None:
        rng = self.rng
        everyone: list[ReplicaProcess | CacheProcess | PortalProcess] = [
            *self.replicas,
            *self.caches,
            *self.portals,
        ]
        names = sorted(p.name for p in everyone)
        bridged = False
        kind = rng.random()
        if kind < 0.25:  # two halves, as a broken bridge between two brokers would make
            sides = [[n for n in names if rng.random() < 0.5]]
            lasting = rng.uniform(0.2, 6.0)
        elif kind < 0.45:  # the ring and the portals split in two; the replicas reach both
            front = sorted(p.name for p in everyone if not isinstance(p, ReplicaProcess))
            half = [n for n in front if rng.random() < 0.5]
            sides, bridged = [half, [n for n in front if n not in half]], True
            lasting = rng.uniform(0.5, 6.0)
        elif kind < 0.65:  # a cache node keeps some portals but loses everyone else
            portals = [p.name for p in self.portals]
            kept = rng.sample(portals, rng.randint(1, max(1, len(portals) - 1)))
            sides = [[rng.choice(self.caches).name, *kept]]
            lasting = rng.uniform(0.5, 6.0)
        elif kind < 0.8:  # a few processes lose the broker, each on its own
            sides = [[n] for n in rng.sample(names, rng.randint(1, 2))]
            lasting = rng.uniform(0.2, 4.0)
        else:  # a blip: one connection drops and comes back at once
            sides = [[rng.choice(names)]]
            lasting = rng.uniform(0.01, 0.3)
        self.scheduler.after(lasting, self.heal, self.partition(sides, bridged))

    def partition(self, sides: list[list[str]], bridged: bool = False) -> object:
        """Cut `sides` from each other and, unless `bridged`, from everyone else (see
        Broker.partition); `heal` takes what this returns."""
        self.stats["partitions"] += 1
        rest = "the rest reach both" if bridged else "the rest"
        self.trace(f"partition: {' | '.join(','.join(s) for s in sides)} | {rest}")
        return self.broker.partition(sides, bridged)

    def heal(self, partition: object | None = None) -> None:
        """End one partition, or all of them."""
        if self.broker.partitioned:
            self.trace("partition heals" if partition is not None else "every partition heals")
        self.broker.heal(partition)

    # ---- looking around (for scripted scenarios) -------------------------------------

    def leader(self, group: str) -> ReplicaProcess | None:
        leaders = [
            (r.core.node.term, r)
            for r in self.replicas
            if r.group == group and r.core is not None and r.core.node.is_leader
        ]
        return max(leaders, key=lambda pair: pair[0], default=(0, None))[1]

    def replica(self, group: str, member: int) -> ReplicaProcess:
        return next(r for r in self.replicas if r.group == group and r.member == member)

    def cache(self, host_id: str) -> CacheProcess:
        return next(c for c in self.caches if c.host_id == host_id)

    def group_of(self, cid: int) -> str:
        return group_for(cid, sorted(self.group_members))

    def holders(self, cid: int) -> list[CacheProcess]:
        """Cache nodes that hold `cid` in memory (as its owner) right now."""
        return [c for c in self.caches if c.node is not None and cid in c.node.state.keys]


# ---- running seeds ----------------------------------------------------------------------


def run_seed(seed: int, trace: bool = False, chaos: float | None = None) -> SimResult:
    return SystemSim(Scenario.from_seed(seed, chaos), trace=trace).run()


def check_seed(seed: int, chaos: float | None = None) -> tuple[int, str | None, Counter[str]]:
    """Run one seed; (seed, what failed or None, statistics). Safe in a worker process."""
    sim = SystemSim(Scenario.from_seed(seed, chaos))
    try:
        return seed, None, sim.run().stats
    except SystemFailure as failure:
        return seed, str(failure), sim.stats
    except Exception as failure:  # any crash of a run is a finding: name the seed
        return seed, f"{SEED_ENV}={seed}: {type(failure).__name__}: {failure}", sim.stats


def replay_hint(seed: int) -> str:
    return seeds.replay_hint(seed, "tests/sim/test_system_sim.py", "backend.sim.system_sim")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole-system simulator on seeds.")
    parser.add_argument("--seed", type=int, help="one seed to run")
    parser.add_argument("--seeds", default="0-19", help="a range of seeds, e.g. 0-999")
    parser.add_argument("--chaos", type=float, help="seconds of faults (default: the seed's)")
    parser.add_argument("--trace", action="store_true", help="print the events of a failing run")
    args = parser.parse_args(argv)
    return seeds.run_seeds(
        seeds.seed_range(args.seed, args.seeds),
        lambda seed: SystemSim(Scenario.from_seed(seed, args.chaos), trace=args.trace),
        replay_hint,
        trace_tail=600 if args.trace else 0,
    )


if __name__ == "__main__":
    raise SystemExit(main())
