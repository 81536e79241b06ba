"""Disk faults under load, through failpoints, judged by the linearizability checker.

A replica group of three real `taskring replica` processes on a real
Mosquitto, each with its own TASKRING_FAILPOINTS_FILE (docs/operating.md,
"Failpoints"). Writers insert tasks and a reader lists them through a
GroupProposer (the cache nodes' way in), recording every call; a fault strikes
in the middle; afterwards the group is restarted where the fault calls for it,
the tasks are listed once more, and the history must be linearizable
(backend/sim/linearizability.py, TaskBagModel) with every acknowledged insert
in the final list:

- an fsync that fails (with unsynced data held back, so a failed fsync loses
  it as Linux may): each replica exits at its first failed fsync, so nothing it
  could not make durable is acknowledged; then every replica is killed (power
  lost) and restarted;
- a full disk: writes answer `unavailable`, no replica exits, and service
  resumes by itself once space returns;
- unsynced data lost: every replica holds back what it did not fsync, and is
  killed -9 under load; recovery starts from the truncated files.

Each check fails on a deliberately broken build: PLANTED_BUGS below are
sitecustomize.py files put on the replicas' PYTHONPATH, and

    TASKRING_PLANTED_BUG=ignore-fsync-errors      (the fsync test fails)
    TASKRING_PLANTED_BUG=crash-on-full-disk       (the full disk test fails)
    TASKRING_PLANTED_BUG=acknowledge-before-fsync (the kill -9 test fails)

run every scenario here on one. In the normal run,
`test_the_fsync_check_catches_a_replica_that_ignores_fsync_errors` runs the
fsync scenario on the first and shows its check failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backend.chaos.recorder import CLIENT_WITHOUT_TASKS
from backend.core.errors import TIMEOUT
from backend.sim.linearizability import Operation, TaskBagModel, check
from tests.conftest import Processes
from tests.e2e.test_replica_group import (
    CID,
    GROUP,
    MEMBERS,
    GroupUser,
    create_op,
    insert_op,
    kill9,
)
from tests.support.waiting import eventually, log_text

pytestmark = pytest.mark.timeout(90)

DEADLINE = 30.0
POLL = 0.05
WRITERS = 3
WRITE_PAUSE = 0.02  # seconds a writer waits after an acknowledged insert
LOAD_BEFORE_FAULT = 1.2  # seconds of load before the fault
# A writer's proposal gives up (timeout or unavailable) after this long: past the
# restarts, so that calls in flight at a crash learn their outcome (a history with
# many calls of unknown outcome takes the checker long), but short under a full disk,
# where the answer `unavailable` is what the test waits for.
PROPOSAL_DEADLINE = 6.0
FULL_DISK_PROPOSAL_DEADLINE = 1.5

# Deliberately broken replicas, each planted by a sitecustomize.py on the replicas'
# PYTHONPATH: TASKRING_PLANTED_BUG=<name> runs every scenario here on one, and the
# scenario's check must then fail.
PLANTED_BUGS = {
    # a failed fsync is ignored: the replica goes on as if the data were safe
    "ignore-fsync-errors": """\
import backend.adapters.disk.durable_io as durable_io

_real_datasync = durable_io.datasync


def _ignoring_errors(fd):
    try:
        _real_datasync(fd)
    except OSError:
        pass


durable_io.datasync = _ignoring_errors
""",
    # a full disk is taken for any other disk error: the replica exits (a crash loop)
    "crash-on-full-disk": """\
import backend.processes.replica as replica

replica.is_disk_full = lambda exc: False
""",
    # a Ready is acknowledged once written, before it is fsynced
    "acknowledge-before-fsync": """\
from backend.adapters.disk import DurableRaftStorage

DurableRaftStorage.save = lambda self, ready: self.write(ready)
""",
}
PLANTED = os.environ.get("TASKRING_PLANTED_BUG") or None

LIST = {"op": "list_tasks", "cid": CID}


@dataclass
class Report:
    """What a scenario saw, for the test to judge."""

    history: list[Operation] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # acknowledged, missing at the end
    linearizability: str = ""  # the checker's explanation if not linearizable
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    logs: dict[int, str] = field(default_factory=dict)

    def outputs(self, since: float = 0.0, until: float = float("inf")) -> list[Any]:
        return [
            op.output
            for op in self.history
            if op.input["op"] == "insert_task" and since <= op.call <= until
        ]

    @property
    def acknowledged(self) -> int:
        return sum(1 for output in self.outputs() if output[0] == "ok")


class Group:
    """Three replicas, each with a failpoint file, and a user recording a history."""

    def __init__(
        self, processes: Processes, broker: str, tmp_path: Path, planted: str | None = None
    ) -> None:
        self.processes, self.broker = processes, broker
        self.data = tmp_path / "data"
        self.failpoints = tmp_path / "failpoints"
        self.failpoints.mkdir(mode=0o700, exist_ok=True)
        self.env: dict[str, str] = {}
        if planted:
            bug = tmp_path / "planted"
            bug.mkdir(exist_ok=True)
            (bug / "sitecustomize.py").write_text(PLANTED_BUGS[planted])
            self.env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(bug), os.environ.get("PYTHONPATH", "")) if p
            )
        self.replicas: dict[int, subprocess.Popen[bytes]] = {}
        self.report = Report()
        self.titles = itertools.count()
        self.stopped = False

    def set_failpoints(self, text: str, members: list[int] = MEMBERS) -> None:
        for member in members:
            path = self.failpoints / f"replica-{member}"
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(path)  # whole or not at all, as `taskring chaos` will

    def start(self, member: int) -> None:
        env = {**self.env, "TASKRING_FAILPOINTS_FILE": str(self.failpoints / f"replica-{member}")}
        self.replicas[member] = self.processes.taskring(
            "replica",
            "--group",
            GROUP,
            "--member",
            str(member),
            "--members",
            ",".join(map(str, MEMBERS)),
            "--data-dir",
            str(self.data),
            "--broker",
            self.broker,
            name=f"replica-{member}",
            env=env,
        )

    async def ready(self, user: GroupUser, since: float = 0.0) -> None:
        await eventually(
            lambda: (
                len(user.beats) == len(MEMBERS)
                and all(b["at"] > since and b["ready"] for b in user.beats.values())
                and user.leader()
            ),
            "three replicas agreeing on a leader",
            DEADLINE,
            POLL,
        )

    async def record(self, user: GroupUser, op: dict[str, Any], slot: int) -> Any:
        call = time.monotonic()
        if op["op"] == "list_tasks":
            done = await user.read(op)
        else:
            done = await user.propose(op)
        ret = time.monotonic()
        if done.ok:
            result = done.results[0]
            output = (
                ("ok", result["result"])
                if result.get("ok")
                else ("error", (result.get("error") or {}).get("code"))
            )
        else:
            output = ("error", done.code)
        self.report.history.append(Operation(slot, call, ret, op, output))
        return output

    async def writer(self, user: GroupUser, slot: int) -> None:
        while not self.stopped:
            title = f"w{slot}-{next(self.titles)}"
            output = await self.record(user, insert_op(title), slot)
            # Paced, as a client would be: a shorter history keeps the check within its
            # budget on a busy machine (one client's bag grows with every insert, and the
            # checker copies it at each step).
            await asyncio.sleep(0.05 if output[0] == "error" else WRITE_PAUSE)

    async def reader(self, user: GroupUser, slot: int) -> None:
        while not self.stopped:
            await self.record(user, LIST, slot)
            await asyncio.sleep(0.1)

    def load(self, user: GroupUser) -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(self.writer(user, slot)) for slot in range(WRITERS)]
        tasks.append(asyncio.create_task(self.reader(user, WRITERS)))
        return tasks

    async def stop_load(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stopped = True
        await asyncio.gather(*tasks)

    async def acknowledged_again(self, since: float) -> None:
        await eventually(
            lambda: any(o[0] == "ok" for o in self.report.outputs(since=since)),
            "an acknowledged write after the fault",
            DEADLINE,
            POLL,
        )

    async def finish(self, user: GroupUser, check_timeout: float = 60.0) -> Report:
        """List the tasks until a read succeeds; judge the history."""
        final = None
        for _ in range(20):
            final = await self.record(user, LIST, WRITERS + 1)
            if final[0] == "ok":
                break
        assert final is not None and final[0] == "ok", f"no final list: {final}"
        listed = {task["title"] for task in final[1]["tasks"]}
        acked = [
            op.input["title"]
            for op in self.report.history
            if op.input["op"] == "insert_task" and op.output[0] == "ok"
        ]
        self.report.lost = [title for title in acked if title not in listed]
        model = TaskBagModel(CLIENT_WITHOUT_TASKS)
        result = check(settled(self.report.history, listed), model, check_timeout)
        self.report.linearizability = "" if result.ok else result.explain()
        for member, process in self.replicas.items():
            self.report.exit_codes[member] = process.poll()
            self.report.logs[member] = log_text(process)
        return self.report


def settled(history: list[Operation], listed: set[str]) -> list[Operation]:
    """The history without the timed-out inserts the final list shows were never applied.

    The load only inserts (unique titles) and lists, so a title missing from the last
    list, read after every call ended, was never observed by any read: leaving its
    insert out changes no verdict. Each one left in is an operation the checker must
    try at every point after its call, which under a slow restart (many timeouts) can
    take it past its time budget."""
    return [
        op
        for op in history
        if not (
            op.input["op"] == "insert_task"
            and op.output == ("error", TIMEOUT)
            and op.input["title"] not in listed
        )
    ]


@contextlib.asynccontextmanager
async def running_group(
    processes: Processes,
    broker: str,
    tmp_path: Path,
    planted: str | None = PLANTED,
    proposal_deadline: float = PROPOSAL_DEADLINE,
) -> Any:
    group = Group(processes, broker, tmp_path, planted)
    group.set_failpoints("")
    for member in MEMBERS:
        group.start(member)
    async with GroupUser(broker, f"disk-faults-{os.getpid()}") as user:
        user.proposer.deadline = proposal_deadline
        await group.ready(user)
        created = await user.propose(create_op())
        assert created.ok and created.results[0]["ok"], created
        yield group, user


async def failed_fsync_scenario(
    processes: Processes, broker: str, tmp_path: Path, planted: str | None = PLANTED
) -> Report:
    async with running_group(processes, broker, tmp_path, planted) as (group, user):
        load = group.load(user)
        await asyncio.sleep(LOAD_BEFORE_FAULT)
        group.set_failpoints("wal.unsynced=lose\nwal.fsync=error\n")
        with contextlib.suppress(AssertionError):  # a broken build carries on
            await eventually(
                lambda: any(p.poll() is not None for p in group.replicas.values()),
                "a replica exiting at its failed fsync",
                2.0,
                POLL,
            )
        await asyncio.sleep(0.5)  # the others' next fsyncs (one that leads no more has none)
        exits = {m: p.poll() for m, p in group.replicas.items()}
        for process in group.replicas.values():
            with contextlib.suppress(ProcessLookupError):
                kill9(process)  # power lost: what was held back is gone
        group.set_failpoints("")
        restarted = time.time()
        for member in MEMBERS:
            group.start(member)
        await group.ready(user, since=restarted)
        await group.acknowledged_again(time.monotonic())
        await group.stop_load(load)
        # a broken build's history can take the checker long to refute: a verdict of
        # "undecided" after a few seconds is a failed check too
        report = await group.finish(user, check_timeout=3.0 if planted else 60.0)
        report.exit_codes = exits  # how they ended under the fault, not after restart
        return report


async def test_a_failed_fsync_stops_the_replica_and_loses_no_acknowledged_write(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    report = await failed_fsync_scenario(processes, mosquitto, tmp_path)
    print(f"failed fsync: {report.acknowledged} writes acknowledged, exits {report.exit_codes}")
    fatal = {m for m, text in report.logs.items() if "FATAL" in text and "fsync" in text}
    exited = {m for m, code in report.exit_codes.items() if code is not None}
    assert fatal and exited <= fatal, "a replica whose fsync failed must say so and exit"
    assert all(report.exit_codes[m] != 0 for m in exited)
    assert not report.lost, f"acknowledged writes lost: {report.lost}"
    assert not report.linearizability, report.linearizability
    assert report.acknowledged > 0


async def test_the_fsync_check_catches_a_replica_that_ignores_fsync_errors(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    report = await failed_fsync_scenario(
        processes, mosquitto, tmp_path, planted="ignore-fsync-errors"
    )
    print(f"planted bug: lost {len(report.lost)} acknowledged writes")
    assert any(code is None for code in report.exit_codes.values()), "the bug was not planted"
    assert report.lost and report.linearizability


async def test_a_full_disk_answers_unavailable_and_recovers_by_itself(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    async with running_group(
        processes, mosquitto, tmp_path, proposal_deadline=FULL_DISK_PROPOSAL_DEADLINE
    ) as (group, user):
        load = group.load(user)
        await asyncio.sleep(LOAD_BEFORE_FAULT)
        full_from = time.monotonic()
        group.set_failpoints("wal.write=enospc\n")
        await eventually(
            lambda: ("error", "unavailable") in group.report.outputs(since=full_from + 0.3),
            "writes answered unavailable while the disk is full",
            DEADLINE,
            POLL,
        )
        await asyncio.sleep(0.5)
        group.set_failpoints("")
        await group.acknowledged_again(time.monotonic())
        await group.stop_load(load)
        report = await group.finish(user)
    print(f"full disk: {report.acknowledged} writes acknowledged")
    assert report.exit_codes == {m: None for m in MEMBERS}, "a replica exited on a full disk"
    assert not report.lost, f"acknowledged writes lost: {report.lost}"
    assert not report.linearizability, report.linearizability
    assert any("cannot write the log" in text for text in report.logs.values())


async def test_unsynced_data_lost_in_a_kill_9_loses_no_acknowledged_write(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    async with running_group(processes, mosquitto, tmp_path) as (group, user):
        group.set_failpoints("wal.unsynced=lose\n")
        load = group.load(user)
        await asyncio.sleep(LOAD_BEFORE_FAULT + 0.5)
        for process in group.replicas.values():
            kill9(process)
        restarted = time.time()
        for member in MEMBERS:
            group.start(member)
        await group.ready(user, since=restarted)
        await group.acknowledged_again(time.monotonic())
        await group.stop_load(load)
        report = await group.finish(user)
    print(f"lost unsynced data: {report.acknowledged} writes acknowledged")
    assert report.acknowledged > 0
    assert not report.lost, f"acknowledged writes lost: {report.lost}"
    assert not report.linearizability, report.linearizability
