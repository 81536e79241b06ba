"""The Chord cache ring as real processes: `taskring cache-node` x 4 (then 5) on a real Mosquitto.

The test talks to the ring as a portal would: it publishes wire.request messages
to any cache node's topic and waits for the reply on its own reply topic. It
learns every node's ring positions from their announcements, so it can name the
true owner of a key (the first position at or after it), and it reads the
nodes' heartbeats to know when the ring has settled.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.random_secrets import new_salt
from backend.adapters.settings import BrokerAddress
from backend.core import topics
from backend.core.chord import owner_index
from backend.core.model.identity import cid_for_name, hash_token
from backend.core.ring import wire
from tests.conftest import TASKRING, Processes
from tests.support.waiting import eventually, log_text

CLIENT_ID = "ring-test"
REPLY_TO = topics.ring_reply(CLIENT_ID)
VNODES = 8
CALL_TIMEOUT = 3.0
POLL = 0.1  # seconds between looks at the ring: some checks ask every key through it


class RingClient:
    """Requests to the ring over the broker, and what the nodes announce about themselves."""

    def __init__(self, url: str) -> None:
        self.bus = MqttBus(BrokerAddress.parse(url), CLIENT_ID)
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.positions: dict[str, list[int]] = {}  # member host -> its positions
        self.heartbeats: dict[str, dict[str, Any]] = {}
        self.corr = itertools.count()
        self.bus.subscribe(REPLY_TO, self._on_reply)
        self.bus.subscribe(topics.RING_ANNOUNCE, self._on_announce)
        self.bus.subscribe(topics.heartbeat("cache-node", "+"), self._on_heartbeat)

    async def _on_reply(self, _topic: str, message: dict[str, Any]) -> None:
        for reply in wire.unbatch(message):  # a node sends a portal's replies together
            future = self.waiting.pop(reply.get("corr", ""), None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _on_announce(self, _topic: str, message: dict[str, Any]) -> None:
        if message.get("member"):
            self.positions[message["host"]] = message["positions"]

    async def _on_heartbeat(self, _topic: str, message: dict[str, Any]) -> None:
        self.heartbeats[message["id"]] = message

    async def call(self, entry: str, key: int, op: dict[str, Any]) -> dict[str, Any]:
        """One request through `entry`; raises TimeoutError without a reply."""
        corr = f"q{next(self.corr)}"
        return await self.send(entry, wire.Request(corr, REPLY_TO, key, op, True).to_wire())

    async def send(self, entry: str, message: dict[str, Any]) -> dict[str, Any]:
        """Any message carrying a "corr", to `entry`; the reply to it."""
        future = asyncio.get_running_loop().create_future()
        self.waiting[message["corr"]] = future
        await self.bus.publish(topics.ring_host(entry), message)
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        finally:
            self.waiting.pop(message["corr"], None)

    async def write(self, hosts: list[str], key: int, op: dict[str, Any]) -> dict | None:
        """A write retried through other entries while it is safe to (unavailable, not
        applied); None if its outcome is unknown (a timeout)."""
        for _ in range(10):
            try:
                reply = await self.call(random.choice(hosts), key, op)
            except TimeoutError:
                return None
            if reply["ok"] or reply["error"]["code"] != "unavailable":
                return reply
            await asyncio.sleep(0.2)
        return reply

    def true_owner(self, key: int, hosts: list[str]) -> str:
        ring = sorted((p, h) for h in hosts for p in self.positions[h])
        return ring[owner_index(key, [p for p, _ in ring])][1]

    def settled(self, hosts: list[str]) -> bool:
        """Every live node's heartbeat shows each position's true predecessor and successor."""
        if not all(h in self.positions and h in self.heartbeats for h in hosts):
            return False
        ring = sorted((p, h) for h in hosts for p in self.positions[h])
        expected = {
            f"{p:016x}": ([ring[i - 1][1], f"{ring[i - 1][0]:016x}"], ring[(i + 1) % len(ring)])
            for i, (p, _) in enumerate(ring)
        }
        for host in hosts:
            beat = self.heartbeats[host]
            if not beat["ready"] or time.time() - beat["sent"] > 1.5:
                return False
            for vnode in beat["ring"]["vnodes"]:
                pred, succ = expected[vnode["position"]]
                first = vnode["successors"][0] if vnode["successors"] else None
                if vnode["predecessor"] != pred or first != [succ[1], f"{succ[0]:016x}"]:
                    return False
        return True


def create_op(cid: int, name: str) -> dict[str, Any]:
    salt = new_salt()
    return {
        "op": "create_client",
        "cid": cid,
        "name": name,
        "data": "",
        "created_at": int(time.time() * 1000),
        "token_salt": salt,
        "token_hash": hash_token("secret", salt),
    }


def insert_op(cid: int, title: str) -> dict[str, Any]:
    return {"op": "insert_task", "cid": cid, "title": title, "description": ""}


def list_op(cid: int) -> dict[str, Any]:
    return {"op": "list_tasks", "cid": cid}


def start_node(processes: Processes, broker: str, node_id: str, bootstrap: bool = False) -> Any:
    args = ["cache-node", "--id", node_id, "--broker", broker, "--vnodes", str(VNODES)]
    if bootstrap:
        args += ["--bootstrap", "--join-wait", "1.0"]
    return processes.taskring(*args, name=node_id)


async def check_all(
    client: RingClient, hosts: list[str], tasks: dict[int, list[str]], lost: set[int]
) -> list[str]:
    """Read every key through every live node; the problems found (empty when all is well)."""
    limit = math.log2(len(hosts) * VNODES) + 2
    calls = [(h, cid) for cid in tasks for h in hosts]
    replies = await asyncio.gather(
        *(client.call(h, cid, list_op(cid)) for h, cid in calls), return_exceptions=True
    )
    problems = []
    for (entry, cid), reply in zip(calls, replies, strict=True):
        if isinstance(reply, BaseException):
            problems.append(f"{cid:016x} via {entry}: {reply!r}")
            continue
        if cid in lost:
            if reply["ok"] or reply["error"]["code"] != "not_found":
                problems.append(f"{cid:016x} via {entry}: lost key answered {reply}")
            continue
        if not reply["ok"]:
            problems.append(f"{cid:016x} via {entry}: {reply['error']}")
            continue
        got = [t["title"] for t in reply["result"]["tasks"]]
        owner = client.true_owner(cid, hosts)
        if got != tasks[cid]:
            problems.append(f"{cid:016x} via {entry}: tasks {got} != {tasks[cid]}")
        elif reply["route"][0] != entry or reply["route"][-1] != owner != reply["owner"]:
            problems.append(f"{cid:016x} via {entry}: route {reply['route']}, owner {owner}")
        elif reply["owner"] != owner or reply["hops"] > limit:
            problems.append(f"{cid:016x} via {entry}: owner {reply['owner']}, {reply['hops']} hops")
    return problems


async def test_the_ring_serves_routes_heals_and_moves_keys(
    mosquitto: str, processes: Processes
) -> None:
    nodes: dict[str, Any] = {f"cache-node-{i}": None for i in range(1, 5)}
    nodes["cache-node-1"] = start_node(processes, mosquitto, "cache-node-1", bootstrap=True)
    for node_id in list(nodes)[1:]:
        nodes[node_id] = start_node(processes, mosquitto, node_id)
    client = RingClient(mosquitto)
    async with client.bus:
        assert await client.bus.wait_connected(5.0)
        hosts = list(nodes)
        await eventually(lambda: client.settled(hosts), "a settled ring of 4 nodes", 20.0, POLL)

        # Clients with a task each, written through random entries; every key answers
        # from every entry, from its true owner, in few hops.
        names = {cid_for_name(f"client {i}"): f"client {i}" for i in range(40)}
        tasks: dict[int, list[str]] = {}
        for cid, name in names.items():
            for op in (create_op(cid, name), insert_op(cid, "first")):
                answer = await client.write(hosts, cid, op)
                assert answer is not None and answer["ok"], answer
            tasks[cid] = ["first"]
        assert await check_all(client, hosts, tasks, set()) == []
        owners = {cid: client.true_owner(cid, hosts) for cid in tasks}

        # kill -9: the dead node's keys are gone, the rest answer, within seconds.
        victim = "cache-node-3"
        os.killpg(nodes.pop(victim).pid, signal.SIGKILL)
        hosts = list(nodes)
        lost = {cid for cid, owner in owners.items() if owner == victim}
        assert lost and len(lost) < len(tasks)

        async def healed() -> bool:
            return await check_all(client, hosts, tasks, lost) == []

        await eventually(healed, "every key to answer again after a crash", 15.0, POLL)
        for cid in lost:
            del tasks[cid]

        # A fifth node joins: the keys it now owns are handed to it.
        nodes["cache-node-5"] = start_node(processes, mosquitto, "cache-node-5")
        hosts = list(nodes)
        await eventually(lambda: client.settled(hosts), "the ring to take in node 5", 20.0, POLL)
        moved = [cid for cid in tasks if client.true_owner(cid, hosts) == "cache-node-5"]
        assert moved, "some keys belong to the new node"
        assert await check_all(client, hosts, tasks, set()) == []

        # SIGTERM one node while writes go on: every acknowledged write stays readable.
        leaver = "cache-node-2"
        stopping = nodes.pop(leaver)
        survivors = list(nodes)
        acked = await write_during(
            client, survivors, tasks, lambda: stopping.send_signal(signal.SIGTERM)
        )
        assert await asyncio.to_thread(stopping.wait, 10) == 0, log_text(stopping)
        assert acked > 0
        await eventually(lambda: client.settled(survivors), "the ring to close the gap", 20.0, POLL)
        assert await check_all(client, survivors, tasks, set()) == []
    assert "Traceback" not in "".join(log_text(p) for p in processes.started[1:])


async def write_during(
    client: RingClient, hosts: list[str], tasks: dict[int, list[str]], action: Callable[[], None]
) -> int:
    """Insert tasks through `hosts` before, during and after `action`; record the ones
    acknowledged in `tasks` (a write whose outcome is unknown is left out of both)."""
    counter = itertools.count()
    cids = sorted(tasks)
    acked = 0

    async def one() -> None:
        nonlocal acked
        cid = random.choice(cids)
        title = f"w{next(counter)}"
        reply = await client.write(hosts, cid, insert_op(cid, title))
        if reply is not None and reply["ok"]:
            tasks[cid].append(title)
            acked += 1
        elif reply is not None:
            raise AssertionError(f"write {title} to {cid:016x} failed: {reply['error']}")
        elif cid in tasks:
            cids.remove(cid)  # its tasks are now unknown: check it no more
            del tasks[cid]

    for round_ in range(15):
        if round_ == 3:
            action()
        await asyncio.gather(*(one() for _ in range(8)))
        await asyncio.sleep(0.1)
    return acked


async def test_a_node_outside_a_ring_waits_refuses_bad_input_and_stops(
    mosquitto: str, processes: Processes
) -> None:
    node = start_node(processes, mosquitto, "cache-node-9")  # no --bootstrap: it waits
    client = RingClient(mosquitto)
    cid = cid_for_name("anyone")
    async with client.bus:
        assert await client.bus.wait_connected(5.0)
        await eventually(lambda: "cache-node-9" in client.heartbeats, "a heartbeat", 10.0, POLL)
        beat = client.heartbeats["cache-node-9"]
        assert (beat["kind"], beat["ready"], beat["problem"]) == (
            "cache-node",
            False,
            "not yet in the ring",
        )
        assert beat["ring"]["member"] is False and len(beat["ring"]["positions"]) == VNODES
        reply = await client.call("cache-node-9", cid, list_op(cid))
        assert reply["error"]["code"] == "unavailable", reply
        bad = {"t": "request", "corr": "bad", "reply_to": REPLY_TO, "key": -5, "op": {}}
        reply = await client.send("cache-node-9", bad)
        assert reply["error"]["code"] == "bad_request" and "key" in reply["error"]["message"]
        scan = await client.send("cache-node-9", wire.Scan("scan", REPLY_TO, -1, 10).to_wire())
        assert scan["result"] == {"clients": [], "host": "cache-node-9"}
    node.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.wait, 10) == 0
    text = log_text(node)
    assert "waiting" in text and "for a ring member" in text and "Traceback" not in text


def test_bad_flags_are_usage_errors() -> None:
    result = subprocess.run(
        [TASKRING, "cache-node", "--vnodes", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "--vnodes" in result.stderr
