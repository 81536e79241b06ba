"""`taskring replica`: one replica of a replica group, as its own process.

A thin asyncio adapter around backend/core/replica/core.py's ReplicaCore, run by
backend/core/replica/driver.py's ReplicaDriver: this module does the I/O the
driver asks for (the MQTT inbox, the disk, a heartbeat every second with a "raft"
map) and takes snapshots in a forked child, as Redis's BGSAVE does
(docs/architecture.md, "Snapshots" and "Heartbeats").

    taskring replica --group g1 --member 2 [--members 1,2,3] [--data-dir DIR]
                     [--broker URL] [--tick 0.05] [--election-ticks 10]
                     [--snapshot-every 10000]    (or TASKRING_SNAPSHOT_EVERY)

Files: DIR/replicas/<group>-<member>/ (wal/, snap/, and LOCK against a second
process). An empty directory founds the group with --members as its voters;
later starts recover from the log and ignore --members. SIGTERM or SIGINT:
finish the write in progress, close the log, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, NoReturn

import click

from backend.adapters import clock
from backend.adapters.bus import BrokerBus, open_bus
from backend.adapters.bus.publisher import Publisher
from backend.adapters.bus.transport import BusUnavailable, Message
from backend.adapters.child_processes import die_with_parent
from backend.adapters.collector import collector_paused
from backend.adapters.critical_tasks import critical_task
from backend.adapters.disk import DurableRaftStorage, StorageCorruptError, SyncFailed, is_disk_full
from backend.adapters.heartbeats import (
    HEARTBEAT_INTERVAL,
    heartbeat_message,
    refused_subscriptions,
)
from backend.adapters.private_files import create_private, private_directory
from backend.adapters.settings import BrokerAddresses, data_dir
from backend.core import topics
from backend.core.errors import UNAVAILABLE
from backend.core.raft import LogCorruptedError, RaftOptions
from backend.core.replica import wire
from backend.core.replica.core import SNAPSHOT_EVERY, ReplicaCore, Send, SnapshotJob
from backend.core.replica.driver import SNAPSHOT_RETRY, Cycle, ReplicaDriver
from backend.core.replica.group import check_group_id
from backend.processes.options import broker_option
from backend.processes.runtime import run, stop_on_signals

log = logging.getLogger(__name__)

KIND = "replica"
FLUSH_WAIT = 2.0
EARLY_SEND_WAIT = 0.05  # for the leader's AppendEntries to leave before its own fsync
EXIT_FAILED, EXIT_USAGE = 1, 2
SNAPSHOT_NICE = 19  # the snapshot writer's priority: the lowest
DISK_FULL_RETRY = 0.5  # seconds between tries to write a Ready the full disk refused


class Replica:
    """The process state: the driver around the core, its disk, and the tasks that
    run them. The cycle's logic is the driver's (backend/core/replica/driver.py); this
    adapter does its I/O: the fsync in line, snapshot writers forked, snapshot files
    read in a worker thread."""

    def __init__(self, core: ReplicaCore, storage: DurableRaftStorage, bus: BrokerBus) -> None:
        self.core = core
        self.storage = storage
        self.publisher = Publisher(bus)
        self.driver = ReplicaDriver(core, storage, self.publisher.send)
        self.wake = asyncio.Event()
        self.stopping = False
        self.disk_full = False
        self._snapshotting: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None

    async def on_message(self, _topic: str, message: Message) -> None:
        if self.disk_full and message.get("t") in (wire.PROPOSE, wire.READ):
            self.publisher.send(self._refuse_for_full_disk(message))
            return
        self.driver.receive(message, clock.monotonic())
        self.wake.set()

    def _refuse_for_full_disk(self, message: Message) -> list[Send]:
        """`unavailable` (certainly not applied): while the disk is full nothing new can be
        made durable, and a read would wait behind the Ready that cannot be written."""
        try:
            corr, reply_to = str(message["corr"]), str(message["reply_to"])
        except KeyError:
            return []
        kind = wire.PROPOSED if message.get("t") == wire.PROPOSE else wire.READ_RESULT
        text = f"member {self.core.member} of group {self.core.group} cannot write: disk full"
        answer = wire.AnswerError(
            kind, corr, self.core.group, self.core.member, UNAVAILABLE, text, None
        )
        return [Send(reply_to, answer.to_wire())]

    async def tick(self, interval: float) -> None:
        while True:
            try:
                self.driver.tick(clock.monotonic())
            except Exception:
                # a bug must not stop the ticks: without them the group loses its leader
                log.exception("group %s: a tick failed", self.core.group)
            self.wake.set()
            await clock.sleep(interval)

    async def drive(self) -> None:
        """The Ready cycle: persist, send, apply, advance; until stopped."""
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            while not self.stopping:
                self._start_background_work()  # here, between Readys
                cycle = self.driver.next_cycle(clock.monotonic())
                if cycle is None:
                    break
                if cycle.sent_early:
                    # on the wire before the fsync below holds up the event loop
                    await self.publisher.flush(EARLY_SEND_WAIT)
                # In line, not in a worker thread: a thread hand-off per Ready cost more
                # CPU than the write and fsync; what arrives meanwhile waits in the socket
                # and is taken in one go afterwards.
                if not await self._persist(cycle):
                    return  # stopped while the disk was full
                # a snapshot from the leader is restored while applying: a bulk load
                restoring = collector_paused() if cycle.ready.snapshot else contextlib.nullcontext()
                with restoring:
                    self.driver.persisted(cycle, clock.monotonic())

    async def _persist(self, cycle: Cycle) -> bool:
        """Make `cycle` durable; False if stopped first. A failed fsync ends the process
        (SyncFailed raised): what it wrote may be lost, so going on would acknowledge
        what is not on disk, and retrying the fsync proves nothing (PostgreSQL's
        "fsyncgate"); the supervisor restarts it and it recovers from what is really on
        disk. A full disk is waited out: the same Ready is written again every
        DISK_FULL_RETRY seconds, and meanwhile proposals and reads answer `unavailable`."""
        while True:
            try:
                self.driver.persist(cycle)
            except SyncFailed as exc:
                log.critical(
                    "FATAL: group %s member %s: fsync of the log failed (%s); what was "
                    "written since the last good fsync may be lost, so this replica exits "
                    "and recovers from what is on disk when restarted",
                    self.core.group,
                    self.core.member,
                    exc,
                )
                raise
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                if not self.disk_full:
                    log.error(
                        "group %s member %s: cannot write the log (%s); answering "
                        "unavailable and trying again every %.1f s",
                        self.core.group,
                        self.core.member,
                        exc,
                        DISK_FULL_RETRY,
                    )
                self.disk_full = True
                await asyncio.sleep(DISK_FULL_RETRY)
                if self.stopping:
                    return False
                continue
            if self.disk_full:
                self.disk_full = False
                log.warning(
                    "group %s member %s: the log is writable again",
                    self.core.group,
                    self.core.member,
                )
            return True

    # ---- snapshots in the background ------------------------------------------------------

    def _start_background_work(self) -> None:
        """Fork a snapshot writer if a snapshot is due; read a snapshot file back if a
        follower needs its bytes."""
        now = clock.monotonic()
        job = self.driver.snapshot_to_start(now)
        if job is not None:
            self._fork_snapshot(job)
        wanted = self.driver.snapshot_to_load(now)
        if wanted is not None:
            self._loading = asyncio.create_task(self._load_snapshot(wanted))

    def _fork_snapshot(self, job: SnapshotJob) -> None:
        started = time.perf_counter()
        # made before the fork (it names this process as the parent); on other systems
        # than Linux there is none, and the replica kills its child when it stops
        arrange_death = die_with_parent()
        try:
            pid = os.fork()
        except OSError as exc:
            self._snapshot_failed(job, f"cannot fork: {exc}")
            return
        if pid == 0:
            write_snapshot_in_child(job, self.storage, arrange_death)
        forked = time.perf_counter() - started
        log.info(
            "group %s: snapshot at index %d being written by process %d (fork took %.1f ms)",
            self.core.group,
            job.index,
            pid,
            forked * 1000,
        )
        self._snapshotting = asyncio.create_task(self._await_snapshot(job, pid, started))

    async def _await_snapshot(self, job: SnapshotJob, pid: int, started: float) -> None:
        try:
            code = await wait_for_exit(pid)
        except asyncio.CancelledError:
            stop_child(pid)
            self.storage.discard_partial_snapshot(pid)
            self.driver.snapshot_failed(job, clock.monotonic())
            raise
        finally:
            self._snapshotting = None
        if code != 0:
            self.storage.discard_partial_snapshot(pid)
            self._snapshot_failed(job, f"the writer exited with {code}")
            return
        compacted = self.driver.snapshot_written(job)
        log.info(
            "group %s: snapshot at index %d saved in %.2f s%s",
            self.core.group,
            job.index,
            time.perf_counter() - started,
            "" if compacted else " (a newer snapshot replaced the log meanwhile)",
        )
        self.wake.set()

    def _snapshot_failed(self, job: SnapshotJob, why: str) -> None:
        self.driver.snapshot_failed(job, clock.monotonic())
        log.error(
            "group %s: snapshot at index %d failed: %s; trying again in %.0f s",
            self.core.group,
            job.index,
            why,
            SNAPSHOT_RETRY,
        )

    async def _load_snapshot(self, index: int) -> None:
        try:
            snapshot = await asyncio.to_thread(self.storage.load_snapshot, index)
        except (OSError, ValueError) as exc:
            self.driver.snapshot_load_failed(clock.monotonic())
            log.warning(
                "group %s: cannot read the snapshot at index %d for a follower: %s",
                self.core.group,
                index,
                exc,
            )
        else:
            self.driver.snapshot_loaded(snapshot)
            log.info(
                "group %s: read the snapshot at index %d for a follower", self.core.group, index
            )
        finally:
            self._loading = None
            self.wake.set()

    async def stop_background_work(self) -> None:
        """Kill a snapshot writer still running (its file is never taken as a snapshot)
        and stop reading a snapshot file."""
        tasks = [t for t in (self._snapshotting, self._loading) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def heartbeat(self) -> None:
        started = time.time()
        component_id = f"{self.core.group}-{self.core.member}"
        topic = topics.heartbeat(KIND, component_id)
        while True:
            core, refused = self.core, refused_subscriptions(self.publisher.bus)
            message = heartbeat_message(
                component_id, KIND, "", started, core.readiness(), core.metrics, refused
            )
            message["raft"] = self.core.status()
            with contextlib.suppress(BusUnavailable):  # the bus logs its own trouble
                await self.publisher.bus.publish(topic, message, qos=0)
            await asyncio.sleep(HEARTBEAT_INTERVAL)


def write_snapshot_in_child(
    job: SnapshotJob, storage: DurableRaftStorage, arrange_death: Callable[[], None] | None
) -> NoReturn:
    """In the forked child: encode `job` and write its file, then exit at once.

    Only os calls and the encoder run here: no logging, no event loop, no broker. The
    exit code says how it went (0: the file is durable); os._exit skips atexit handlers
    and the parent's buffered output."""
    code = 1
    try:
        if arrange_death is not None:
            arrange_death()  # not outliving the replica (proc.die_with_parent)
        signal.set_wakeup_fd(-1)  # the parent's event loop owns that descriptor
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        gc.disable()  # a collection would touch (and copy) every shared page
        # background work: the replica serving writes (and its peers on the same cores)
        # go first; a snapshot finishing later only means a longer log meanwhile
        os.nice(SNAPSHOT_NICE)
        # the broker socket, the log, LOCK: the parent's; a copy held here would keep a
        # dead replica's connection open and its directory locked
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        storage.write_snapshot(job.encode())
        code = 0
    finally:
        os._exit(code)


async def wait_for_exit(pid: int) -> int:
    """The exit code of child `pid` (negative: the signal that ended it), waiting
    without blocking the event loop: a pidfd becomes readable when the child exits."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, or an old kernel)
        _pid, status = await asyncio.to_thread(os.waitpid, pid, 0)
        return os.waitstatus_to_exitcode(status)
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return reap(pid)


def reap(pid: int) -> int:
    """The exit code of child `pid`, which has exited (so this does not block)."""
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def stop_child(pid: int) -> None:
    """Kill child `pid` and reap it (no zombie left)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reaped already (by a waiting thread)
        os.waitpid(pid, 0)


def staggered(snapshot_every: int, member: int, members: list[int]) -> int:
    """This member's snapshot period: the group's members do not all fork a snapshot
    writer at the same index (each child needs a core for seconds with a large state);
    the i-th member of R waits up to half a period longer, so their snapshots drift
    apart instead of landing together every time."""
    position = sorted(members).index(member) if member in members else 0
    return snapshot_every + snapshot_every * position // (2 * max(len(members), 1))


def lock_directory(directory: Path) -> IO[bytes]:
    """Hold DIR/LOCK for the life of the process: two replicas writing one log would
    corrupt it. The kernel drops the lock when the process dies, however it dies."""
    private_directory(directory.parent)  # DATA/replicas: tightened if others can read it
    private_directory(directory)
    # held until the process exits
    handle = os.fdopen(create_private(directory / "LOCK", os.O_WRONLY | os.O_APPEND), "ab")
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
    broker: BrokerAddresses,
    tick: float,
    options: RaftOptions,
    snapshot_every: int,
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    stop = stop_on_signals()
    try:
        lock = lock_directory(directory)
        storage = open_storage(directory, member, members)
        with collector_paused():  # the core restores the newest snapshot: a bulk load
            core = ReplicaCore(
                group,
                member,
                storage.state,
                partial(topics.raft_member, group),
                random.Random(),
                options,
                snapshot_every=staggered(snapshot_every, member, members),
            )
    except (OSError, StorageCorruptError, LogCorruptedError, ValueError) as exc:
        log.error("replica %s-%s cannot use %s: %s", group, member, directory, exc)
        return EXIT_FAILED
    gc.freeze()  # the restored state: as for the modules (process.run), and as large
    bus = open_bus(broker, f"replica-{group}-{member}", drops=core.drops)
    replica = Replica(core, storage, bus)
    bus.subscribe(topics.raft_member(group, member), replica.on_message)
    async with bus:
        driver = asyncio.create_task(replica.drive())
        # The driver ends on a stop or a disk error, and _until sees to both.
        helpers = [
            critical_task(replica.tick(tick), f"replica {group}-{member} ticker"),
            critical_task(replica.heartbeat(), f"replica {group}-{member} heartbeat"),
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
        await replica.stop_background_work()
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
    envvar="TASKRING_SNAPSHOT_EVERY",
    help="Applied log entries between snapshots (the log is compacted at each); the "
    "i-th of R members waits i/(2R) of that longer, so they do not all snapshot at once.",
)
def command(
    group: str,
    member: int,
    members: list[int],
    data_dir_flag: Path | None,
    broker: BrokerAddresses,
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
