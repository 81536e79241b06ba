"""`taskring replica`: one replica of a replica group, as its own process.

A thin asyncio adapter around backend/replica/core.py's ReplicaCore: it feeds
the core what arrives on this replica's inbox, ticks it, and runs the Ready
cycle in the order Raft requires: persist (one fsync per Ready, in a worker
thread so messages keep arriving and batch up for the next one), send, apply,
advance; then a snapshot when one is due.

    taskring replica --group g1 --member 2 [--members 1,2,3] [--data-dir DIR]
                     [--broker URL] [--tick 0.05] [--election-ticks 10]
                     [--snapshot-every 10000]

Files: DIR/replicas/<group>-<member>/ (wal/ and snap/, see backend/storage;
LOCK keeps a second process off the same files).
On an empty directory the replica founds the group with --members as its
voters; later starts recover from the log and snapshot, and --members is
ignored (the membership lives in the log).

Subscriptions: topics.raft_member(group, member): Raft messages from the other
members, proposals and reads (formats in backend/replica/wire.py). Publishes:
Raft messages to the other members' inboxes, answers to each request's
reply_to, and a heartbeat every second on topics.heartbeat("replica",
"<group>-<member>"): telemetry.heartbeat_message's fields (ready while the
group has a leader; metrics count the operations this replica answered) plus

    "raft": {"group", "member", "role", "term", "leader" (member id or None),
             "commit_index", "applied_index", "last_index", "snapshot_index",
             "voters": [member ids], "keys": keys held, "waiting": proposals
             not yet answered}

SIGTERM or SIGINT: finish the write in progress, close the log, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import IO

import click

from ..bus import topics
from ..bus.mqtt import MqttBus
from ..bus.publisher import Publisher
from ..bus.transport import BusUnavailable, Message
from ..cli_common import broker_option
from ..config import BrokerAddress, data_dir
from ..raft import LogCorruptedError, RaftOptions
from ..replica.core import SNAPSHOT_EVERY, ReplicaCore
from ..replica.group import check_group_id
from ..storage import DurableRaftStorage, StorageCorruptError
from ..telemetry import HEARTBEAT_INTERVAL, heartbeat_message
from .process import run, stop_on_signals

log = logging.getLogger(__name__)

KIND = "replica"
FLUSH_WAIT = 2.0
EARLY_SEND_WAIT = 0.05  # for the leader's AppendEntries to leave before its own fsync
EXIT_FAILED, EXIT_USAGE = 1, 2


class Replica:
    """The process state: the core, its disk, and the tasks that drive them."""

    def __init__(self, core: ReplicaCore, storage: DurableRaftStorage, bus: MqttBus) -> None:
        self.core = core
        self.storage = storage
        self.publisher = Publisher(bus)
        self.wake = asyncio.Event()
        self.stopping = False
        self.loop = asyncio.get_running_loop()

    async def on_message(self, _topic: str, message: Message) -> None:
        self.publisher.send(self.core.receive(message, self.loop.time()))
        self.wake.set()

    async def tick(self, interval: float) -> None:
        while True:
            try:
                self.publisher.send(self.core.tick(self.loop.time()))
            except Exception:
                # a bug must not stop the ticks: without them the group loses its leader
                log.exception("group %s: a tick failed", self.core.group)
            self.wake.set()
            await asyncio.sleep(interval)

    async def drive(self) -> None:
        """The Ready cycle: persist, send, apply, advance; until stopped."""
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while not self.stopping:
                self.publisher.send(self.core.flush(self.loop.time()))
                ready = self.core.next_ready()
                if ready is None:
                    break
                early = self.core.sends_before_persist(ready)
                if early:
                    self.publisher.send(early)
                    # on the wire before the fsync below holds up the event loop
                    await self.publisher.flush(EARLY_SEND_WAIT)
                # In line, not in a worker thread: a thread hand-off per Ready cost more
                # CPU than the write and fsync; what arrives meanwhile waits in the socket
                # and is taken in one go afterwards.
                self.storage.save(ready)
                self.publisher.send(self.core.after_persist(ready, self.loop.time()))
                snapshot = self.core.maybe_compact()
                if snapshot is not None:
                    await asyncio.to_thread(self.storage.save_snapshot, snapshot)
                    log.info("group %s: snapshot at index %d", self.core.group, snapshot.index)

    async def heartbeat(self) -> None:
        started = time.time()
        component_id = f"{self.core.group}-{self.core.member}"
        topic = topics.heartbeat(KIND, component_id)
        while True:
            message = heartbeat_message(
                component_id, KIND, "", started, self.core.readiness(), self.core.metrics
            )
            message["raft"] = self.core.status()
            with contextlib.suppress(BusUnavailable):  # the bus logs its own trouble
                await self.publisher.bus.publish(topic, message, qos=0)
            await asyncio.sleep(HEARTBEAT_INTERVAL)


def lock_directory(directory: Path) -> IO[bytes]:
    """Hold DIR/LOCK for the life of the process: two replicas writing one log would
    corrupt it. The kernel drops the lock when the process dies, however it dies."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / "LOCK", "ab")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OSError(f"another replica is using {directory}") from None
    return handle


def open_storage(directory: Path, member: int, members: list[int]) -> DurableRaftStorage:
    """The replica's log and snapshots. On an empty directory a founding member writes the
    group's first entry; any other member starts empty and learns the log from the leader
    once a membership change adds it."""
    storage = DurableRaftStorage(directory)
    if storage.state.is_empty and member in members:
        storage.bootstrap(members)
        log.info("founded a new group log in %s with voters %s", directory, members)
    return storage


async def run_replica(
    group: str,
    member: int,
    members: list[int],
    directory: Path,
    broker: BrokerAddress,
    tick: float,
    options: RaftOptions,
    snapshot_every: int,
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    stop = stop_on_signals()
    try:
        lock = lock_directory(directory)
        storage = open_storage(directory, member, members)
        core = ReplicaCore(
            group,
            member,
            storage.state,
            partial(topics.raft_member, group),
            random.Random(),
            options,
            snapshot_every=snapshot_every,
        )
    except (OSError, StorageCorruptError, LogCorruptedError, ValueError) as exc:
        log.error("replica %s-%s cannot use %s: %s", group, member, directory, exc)
        return EXIT_FAILED
    gc.freeze()  # the restored state: as for the modules (process.run), and as large
    bus = MqttBus(broker, f"replica-{group}-{member}")
    replica = Replica(core, storage, bus)
    bus.subscribe(topics.raft_member(group, member), replica.on_message)
    async with bus:
        driver = asyncio.create_task(replica.drive())
        helpers = [
            asyncio.create_task(replica.tick(tick)),
            asyncio.create_task(replica.heartbeat()),
        ]
        log.info(
            "replica %s of group %s: term %d, log %d..%d, voters %s (broker %s)",
            member,
            group,
            core.node.term,
            core.node.log.first_index,
            core.node.last_index,
            sorted(core.node.config.voters),
            broker.redacted(),
        )
        await _until(stop, driver)
        replica.stopping = True
        replica.wake.set()
        for task in helpers:
            task.cancel()
        await asyncio.gather(driver, *helpers, return_exceptions=True)
        await replica.publisher.flush(FLUSH_WAIT)
    storage.close()
    lock.close()
    if driver.exception() is not None:
        return EXIT_FAILED
    log.info("replica %s of group %s stopped", member, group)
    return 0


async def _until(stop: asyncio.Event, driver: asyncio.Task[None]) -> None:
    """Wait for a stop signal, or for the Ready cycle to fail (a disk error)."""
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, driver}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if driver.done() and driver.exception() is not None:
        log.error("replica stopped: %s", driver.exception())


def _parse_members(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        members = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a list of member numbers like 1,2,3") from exc
    if not members or members[0] < 1:
        raise click.BadParameter(f"{value!r}: members are numbers from 1")
    return members


def _parse_group(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_group_id(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("replica")
@click.option(
    "--group",
    default="g1",
    show_default=True,
    envvar="TASKRING_GROUP",
    callback=_parse_group,
    help="Id of the replica group this replica belongs to.",
)
@click.option(
    "--member",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    envvar="TASKRING_MEMBER",
    help="This replica's member number in its group.",
)
@click.option(
    "--members",
    default="1,2,3",
    show_default=True,
    envvar="TASKRING_MEMBERS",
    callback=_parse_members,
    help="The group's founding voters (used only on an empty data directory).",
)
@click.option(
    "--data-dir",
    "data_dir_flag",
    envvar="TASKRING_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory; this replica's files go to DIR/replicas/<group>-<member> "
    "(default ./data).",
)
@broker_option
@click.option(
    "--tick",
    type=click.FloatRange(min=0.001, max=10.0),
    default=0.05,
    show_default=True,
    help="Seconds per Raft tick (the leader's heartbeat interval).",
)
@click.option(
    "--election-ticks",
    type=click.IntRange(min=2, max=1000),
    default=10,
    show_default=True,
    help="Ticks without a leader before a follower stands for election (randomised up to 2x).",
)
@click.option(
    "--snapshot-every",
    type=click.IntRange(min=1),
    default=SNAPSHOT_EVERY,
    show_default=True,
    help="Applied log entries between snapshots (the log is compacted at each).",
)
def command(
    group: str,
    member: int,
    members: list[int],
    data_dir_flag: Path | None,
    broker: BrokerAddress,
    tick: float,
    election_ticks: int,
    snapshot_every: int,
) -> None:
    """Run one replica of a replica group (Raft over MQTT, durable log and snapshots)."""
    directory = data_dir(str(data_dir_flag) if data_dir_flag else None)
    directory = directory / "replicas" / f"{group}-{member}"
    if member not in members:
        click.echo(
            f"warning: member {member} is not among --members {members}; "
            "on an empty data directory it waits to be added to the group",
            err=True,
        )
    options = RaftOptions(election_ticks=election_ticks)
    code = run(
        run_replica(group, member, members, directory, broker, tick, options, snapshot_every)
    )
    sys.exit(code)
