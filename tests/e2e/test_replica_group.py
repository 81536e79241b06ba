"""A replica group as real processes: `taskring replica` x 3 on a real Mosquitto.

The test is the group's user, as a cache node will be: a GroupProposer
(backend/core/replica/proposer.py) over an MqttBus proposes operations and reads
them back, and the replicas' heartbeats say who leads. The replicas are
killed with SIGKILL (no goodbye, unsynced writes lost) under a stream of
proposals; every acknowledged write must be there afterwards, and nothing
answered `unavailable` may be. Snapshots are taken every 50 entries so
restarts recover from a snapshot plus the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.random_secrets import new_salt
from backend.adapters.settings import BrokerAddress
from backend.core import topics
from backend.core.model.identity import cid_for_name, hash_token
from backend.core.replica import wire
from backend.core.replica.proposer import Done, GroupProposer
from tests.conftest import TASKRING, Processes
from tests.support.waiting import eventually, log_text, wait_until

GROUP = "g1"
MEMBERS = [1, 2, 3]
CID = cid_for_name("replica-test")
DEADLINE = 60.0  # generous: the machine may be busy with other work
POLL = 0.05  # seconds between looks at the heartbeats


class GroupUser:
    """Proposals and reads to one replica group over the broker, and its heartbeats."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client_id = client_id
        self.bus = MqttBus(BrokerAddress.parse(url), client_id)
        self.proposer = GroupProposer(
            client_id,
            {GROUP: MEMBERS},
            topics.raft_member,
            lambda group: topics.raft_reply(group, client_id, "1"),
            attempt_timeout=0.3,
            deadline=8.0,
        )
        self.waiting: dict[str, asyncio.Future[Done]] = {}
        self.raw: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.beats: dict[int, dict[str, Any]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.bus.subscribe(topics.raft_replies(client_id, "1"), self._on_reply)
        self.bus.subscribe(topics.heartbeat("replica", "+"), self._on_heartbeat)

    async def __aenter__(self) -> GroupUser:
        await self.bus.__aenter__()
        assert await self.bus.wait_connected(10), "the test cannot reach the broker"
        self.ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.ticker
        await self.bus.__aexit__(*exc)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._handle(*self.proposer.tick(loop.time()))
            await asyncio.sleep(0.02)

    async def _on_reply(self, _topic: str, message: dict[str, Any]) -> None:
        raw = self.raw.pop(message.get("corr", ""), None)
        if raw is not None and not raw.done():
            raw.set_result(message)
            return
        self._handle(*self.proposer.receive(message, asyncio.get_running_loop().time()))

    async def _on_heartbeat(self, _topic: str, message: dict[str, Any]) -> None:
        raft = message.get("raft") or {}
        if raft.get("group") == GROUP:
            self.beats[raft["member"]] = {**raft, "ready": message["ready"], "at": time.time()}

    def _handle(self, done: list[Done], sends: list[Any]) -> None:
        for item in done:
            future = self.waiting.pop(item.handle, None)
            if future is not None and not future.done():
                future.set_result(item)
        for send in sends:
            task = asyncio.create_task(self._publish(send.topic, send.message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _publish(self, topic: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError):
            await self.bus.publish(topic, message)

    async def _wait(self, handle: str, sends: list[Any]) -> Done:
        future = asyncio.get_running_loop().create_future()
        self.waiting[handle] = future
        self._handle([], sends)
        return await asyncio.wait_for(future, 30)

    async def propose(self, *ops: dict[str, Any]) -> Done:
        loop = asyncio.get_running_loop()
        return await self._wait(*self.proposer.propose(GROUP, list(ops), loop.time()))

    async def read(self, *ops: dict[str, Any]) -> Done:
        loop = asyncio.get_running_loop()
        return await self._wait(*self.proposer.read(GROUP, list(ops), loop.time()))

    async def send_raw(self, member: int, message: dict[str, Any]) -> dict[str, Any]:
        """One message straight to a member; its answer (bypassing the proposer)."""
        future = asyncio.get_running_loop().create_future()
        self.raw[message["corr"]] = future
        await self.bus.publish(topics.raft_member(GROUP, member), message)
        return await asyncio.wait_for(future, 10)

    def leader(self, among: Callable[[int], bool] = lambda _m: True) -> int | None:
        """The member every fresh heartbeat agrees leads, if any."""
        fresh = [b for m, b in self.beats.items() if among(m) and time.time() - b["at"] < 2.5]
        leaders = {b["leader"] for b in fresh}
        if len(leaders) == 1 and fresh and None not in leaders:
            return leaders.pop()
        return None

    async def titles(self) -> list[str]:
        done = await self.read({"op": "list_tasks", "cid": CID})
        assert done.ok, done
        return [task["title"] for task in done.results[0]["result"]["tasks"]]


def start_replica(processes: Processes, url: str, data: Path, member: int) -> subprocess.Popen:
    return processes.taskring(
        "replica",
        "--group",
        GROUP,
        "--member",
        str(member),
        "--members",
        ",".join(map(str, MEMBERS)),
        "--data-dir",
        str(data),
        "--broker",
        url,
        "--snapshot-every",
        "50",
        name=f"replica-{member}",
    )


def kill9(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def create_op() -> dict[str, Any]:
    salt = new_salt()
    return {
        "op": "create_client",
        "cid": CID,
        "name": "replica-test",
        "data": "",
        "created_at": int(time.time() * 1000),
        "token_salt": salt,
        "token_hash": hash_token("token", salt),
    }


def insert_op(title: str) -> dict[str, Any]:
    return {"op": "insert_task", "cid": CID, "title": title, "description": f"about {title}"}


class Stream:
    """Writers inserting numbered tasks until stopped, recording every outcome."""

    def __init__(self, user: GroupUser, writers: int = 4) -> None:
        self.user = user
        self.acked: dict[str, tuple[float, int | None]] = {}  # title -> (when, leader)
        self.refused: set[str] = set()  # answered unavailable: certainly not applied
        self.unknown: set[str] = set()  # answered timeout
        self.numbers = itertools.count()
        self.stopped = False
        self.tasks = [asyncio.create_task(self._write()) for _ in range(writers)]

    async def _write(self) -> None:
        while not self.stopped:
            title = f"s{next(self.numbers)}"
            done = await self.user.propose(insert_op(title))
            if done.ok:
                assert done.results[0]["ok"], done.results
                leader = self.user.proposer.leaders.get(GROUP)
                self.acked[title] = (time.monotonic(), leader)
            elif done.code == "unavailable":
                self.refused.add(title)
            else:
                assert done.code == "timeout", done
                self.unknown.add(title)

    def acked_by(self, leader: int, since: float) -> int:
        return sum(1 for when, by in self.acked.values() if by == leader and when > since)

    async def stop(self) -> None:
        self.stopped = True
        await asyncio.gather(*self.tasks)


async def test_a_group_keeps_every_acknowledged_write_through_crashes(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    replicas = {m: start_replica(processes, mosquitto, data, m) for m in MEMBERS}
    async with GroupUser(mosquitto, "replica-test-user") as user:
        first = await eventually(
            lambda: (
                len(user.beats) == 3
                and all(b["ready"] for b in user.beats.values())
                and user.leader()
            ),
            "three replicas agreeing on a leader",
            DEADLINE,
            POLL,
        )
        created = await user.propose(create_op(), insert_op("first"))
        assert created.ok and [r["ok"] for r in created.results] == [True, True]

        # a duplicate (same client id and request id) is applied once: two copies in flight
        # together both reach the log, a later copy is answered from the answer table
        message = wire.Propose(
            "dup-1", topics.raft_reply(GROUP, user.client_id, "1"), "dup", 1, 1, [insert_op("dup")]
        ).to_wire()
        copies = await asyncio.gather(
            user.send_raw(first, message), user.send_raw(first, {**message, "corr": "dup-2"})
        )
        late = await user.send_raw(first, {**message, "corr": "dup-3"})
        for answer in (*copies, late):
            assert answer["ok"] and answer["results"] == copies[0]["results"], answer
        assert copies[0]["results"][0]["ok"] is True  # the others are not "exists"
        assert await user.titles() == ["first", "dup"]

        # kill -9 the leader under a stream of proposals
        stream = Stream(user)
        await eventually(
            lambda: len(stream.acked) >= 30,
            "proposals acknowledged before the crash",
            DEADLINE,
            POLL,
        )
        killed_at = time.monotonic()
        kill9(replicas[first])
        await eventually(
            lambda: any(stream.acked_by(m, killed_at) >= 5 for m in MEMBERS if m != first),
            "a new leader committing proposals",
            DEADLINE,
            POLL,
        )
        new = next(m for m in MEMBERS if m != first and stream.acked_by(m, killed_at))
        failover = min(when for when, by in stream.acked.values() if by == new) - killed_at
        print(f"failover: new leader {new} committing {failover:.2f}s after kill -9")
        assert failover < 10

        # the old leader restarts from its disk and rejoins while the writes go on
        replicas[first] = start_replica(processes, mosquitto, data, first)
        restarted = time.time()
        await eventually(
            lambda: (
                first in user.beats
                and user.beats[first]["at"] > restarted
                and user.beats[first]["leader"] == new
            ),
            "the restarted replica following the new leader",
            DEADLINE,
            POLL,
        )
        mark = len(stream.acked)
        await eventually(
            lambda: len(stream.acked) >= mark + 20, "writes with all three back", DEADLINE, POLL
        )
        await stream.stop()
        stopped = time.time()
        await eventually(
            lambda: (
                min(user.beats[first]["at"], user.beats[new]["at"]) > stopped
                and user.beats[first]["applied_index"] >= user.beats[new]["commit_index"]
            ),
            "the restarted replica catching up",
            DEADLINE,
            POLL,
        )
        titles = set(await user.titles())
        assert set(stream.acked) <= titles, sorted(set(stream.acked) - titles)
        assert not stream.refused & titles, sorted(stream.refused & titles)

        # a majority down: proposals are never acknowledged
        survivor = new
        for member in MEMBERS:
            if member != survivor:
                kill9(replicas[member])
        done = await user.propose(insert_op("no-quorum"))
        assert not done.ok and done.code in ("timeout", "unavailable"), done

        # kill -9 everything, restart everything: the state comes back from disk
        kill9(replicas[survivor])
        for member in MEMBERS:
            replicas[member] = start_replica(processes, mosquitto, data, member)
        await eventually(
            lambda: user.leader(), "a leader after restarting every replica", DEADLINE, POLL
        )
        recovered = await user.titles()
        assert set(stream.acked) | {"first", "dup"} <= set(recovered)
        assert not stream.refused & set(recovered)
        assert recovered[:2] == ["first", "dup"]
        # snapshots were taken and are used
        assert any((data / "replicas" / f"{GROUP}-{m}" / "snap").glob("*.snap") for m in MEMBERS)
        assert "Traceback" not in "".join(log_text(p) for p in replicas.values())


def test_a_replica_owns_its_files_and_stops_cleanly_on_sigterm(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    replica = start_replica(processes, mosquitto, tmp_path / "data", 1)
    wait_until(
        lambda: "replica 1 of group g1" in log_text(replica),
        "replica 1 to log that it serves group g1",
        DEADLINE,
        POLL,
        alive=[replica],
    )
    # a second process on the same files is turned away
    second = processes.taskring(
        "replica", "--data-dir", str(tmp_path / "data"), "--broker", mosquitto, name="second"
    )
    assert second.wait(30) == 1
    assert "another replica is using" in log_text(second)
    os.killpg(replica.pid, signal.SIGTERM)
    assert replica.wait(15) == 0, log_text(replica)
    assert "Traceback" not in log_text(replica)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--group", "a/b"], "group id"),
        (["--members", "one,two"], "member numbers"),
        (["--member", "0"], "--member"),
        (["--tick", "0"], "--tick"),
    ],
)
def test_bad_arguments_are_refused_clearly(args: list[str], complaint: str) -> None:
    result = subprocess.run(
        [TASKRING, "replica", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert complaint in result.stderr and "Traceback" not in result.stderr
