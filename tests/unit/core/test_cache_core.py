"""The cache node's core, several of them wired together in one process.

Every publish goes through msgpack (as on the broker). By default it is delivered
at once and in order; with `latency`, each takes a random delay up to it, in
order per publisher and topic as MQTT keeps it. Time moves only when a test runs
the cluster. A crashed node simply stops receiving and ticking.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from backend.adapters.random_secrets import new_salt
from backend.core import topics
from backend.core.chord import owner_index
from backend.core.codec import pack, unpack
from backend.core.model.identity import cid_for_name, hash_token
from backend.core.replica import wire as group_wire
from backend.core.replica.core import Send
from backend.core.replica.group import group_for
from backend.core.replica.state_machine import Proposal, encode_batch
from backend.core.ring import wire
from backend.core.ring.cache_core import COLD_WAIT, CacheNode, Publish, event_publishes
from tests.unit.core.durable_harness import Groups

REPLY_TO = topics.ring_reply("test-portal")
HOST_PREFIX = topics.ring_host("")
STEP = 0.1
VNODES = 4


class Cluster:
    def __init__(self, latency: float = 0.0, seed: int = 0) -> None:
        self.now = 0.0
        self.latency = latency
        self.rng = random.Random(seed)
        self.nodes: dict[str, CacheNode] = {}
        self.queue: list[tuple[float, int, Publish]] = []  # a heap by delivery time
        self._seq = itertools.count()
        self._last: dict[tuple[str, str], float] = {}  # (publisher, topic) -> last delivery
        self.replies: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cut: set[str] = set()  # nodes whose incoming messages are dropped
        # Messages for which this says True wait in `held` until a test lets them go.
        self.hold: Callable[[str, dict[str, Any]], bool] = lambda _topic, _message: False
        self.held: list[Publish] = []
        self._corr = 0

    def add(
        self,
        node_id: str,
        bootstrap: bool = False,
        cold_wait: float = COLD_WAIT,
        incarnation: str = "i",
    ) -> CacheNode:
        node = CacheNode(
            node_id,
            incarnation=incarnation,
            vnodes=VNODES,
            bootstrap=bootstrap,
            join_wait=0.5,
            cold_wait=cold_wait,
            now=self.now,
            seed=len(self.nodes),
        )
        self.nodes[node_id] = node
        return node

    def crash(self, node_id: str) -> None:
        del self.nodes[node_id]

    def emit(self, publisher: str, items: Iterable[Publish]) -> None:
        for item in items:
            delay = self.rng.uniform(0, self.latency) if self.latency else 0.0
            key = (publisher, item.topic)
            at = max(self.now + delay, self._last.get(key, 0.0))
            self._last[key] = at
            heapq.heappush(self.queue, (at, next(self._seq), item))

    def pump(self, until: float | None = None) -> None:
        """Deliver everything due by `until` (now by default), moving the clock along."""
        until = self.now if until is None else until
        while self.queue and self.queue[0][0] <= until + 1e-12:
            at, _, item = heapq.heappop(self.queue)
            self.now = max(self.now, at)
            self._deliver(item)

    def _deliver(self, item: Publish) -> None:
        message = unpack(pack(item.message))
        if self.hold(item.topic, message):
            self.held.append(item)
        elif item.topic == topics.RING_ANNOUNCE:
            for node in list(self.nodes.values()):
                self.emit(node.id, node.receive(item.topic, message, self.now))
        elif item.topic.startswith(HOST_PREFIX):
            host = self.nodes.get(item.topic[len(HOST_PREFIX) :])
            if host is not None and host.id not in self.cut:
                self.emit(host.id, host.receive(item.topic, message, self.now))
        elif item.topic == REPLY_TO:
            self.replies[message["corr"]] = message
        else:
            self.events.append((item.topic, message))

    def release(self) -> None:
        self.hold = lambda _topic, _message: False
        held, self.held = self.held, []
        self.emit("test", held)
        self.pump()

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            step_end = self.now + STEP
            for node in list(self.nodes.values()):
                self.emit(node.id, node.tick(self.now))
            self.pump(step_end)
            self.now = step_end

    def members(self) -> list[CacheNode]:
        return [n for n in self.nodes.values() if n.member]

    def true_owner(self, key: int) -> str:
        ring = sorted((p, n.id) for n in self.nodes.values() for p in n.host.positions)
        return ring[owner_index(key, [p for p, _ in ring])][1]

    def settled(self) -> bool:
        """Every position has its true predecessor."""
        ring = sorted((p, n.id) for n in self.nodes.values() for p in n.host.positions)
        for node in self.nodes.values():
            for vnode in node.host.nodes:
                i = ring.index((vnode.pos, node.id))
                pred = vnode.predecessor
                if pred is None or (pred.pos, pred.host) != ring[i - 1]:
                    return False
        return True

    def settle(self, timeout: float = 30.0) -> None:
        end = self.now + timeout
        while not self.settled():
            assert self.now < end, "the ring did not settle"
            self.run(0.5)

    def send(self, entry: str, key: int, op: dict[str, Any], corr: str | None = None) -> str:
        if corr is None:
            self._corr += 1
            corr = f"c{self._corr}"
        message = wire.Request(corr, REPLY_TO, key, op, True).to_wire()
        self.emit("test", [Publish(topics.ring_host(entry), message)])
        self.pump()
        return corr

    def call(self, entry: str, key: int, op: dict[str, Any], wait: float = 10.0) -> dict:
        corr = self.send(entry, key, op)
        end = self.now + wait
        while corr not in self.replies:
            assert self.now < end, f"no reply to {op} through {entry}"
            self.run(STEP)
        return self.replies[corr]


def create(cid: int, name: str) -> dict[str, Any]:
    salt = new_salt()
    return {
        "op": "create_client",
        "cid": cid,
        "name": name,
        "data": "",
        "created_at": 1,
        "token_salt": salt,
        "token_hash": hash_token("secret", salt),
    }


def insert(cid: int, title: str) -> dict[str, Any]:
    return {"op": "insert_task", "cid": cid, "title": title, "description": f"about {title}"}


def list_tasks(cid: int) -> dict[str, Any]:
    return {"op": "list_tasks", "cid": cid}


def titles(reply: dict[str, Any]) -> list[str]:
    assert reply["ok"], reply
    return [t["title"] for t in reply["result"]["tasks"]]


def four_nodes() -> Cluster:
    """A settled ring of n1 (its founder) to n4."""
    cluster = Cluster()
    cluster.add("n1", bootstrap=True)
    cluster.run(1.0)
    for name in ("n2", "n3", "n4"):
        cluster.add(name)
    cluster.run(1.0)
    cluster.settle()
    return cluster


@pytest.fixture
def ring() -> Cluster:
    return four_nodes()


def fill(cluster: Cluster, count: int = 40) -> dict[int, str]:
    """Clients with one task each, created through rotating entry nodes."""
    names = {cid_for_name(f"client {i}"): f"client {i}" for i in range(count)}
    entries = sorted(cluster.nodes)
    for i, (cid, name) in enumerate(names.items()):
        entry = entries[i % len(entries)]
        assert cluster.call(entry, cid, create(cid, name))["ok"]
        assert cluster.call(entry, cid, insert(cid, "first"))["ok"]
    return names


def test_a_lone_node_without_bootstrap_waits_and_with_it_starts_a_ring() -> None:
    cluster = Cluster()
    waiting = cluster.add("w")
    cluster.run(3.0)
    assert not waiting.member and waiting.readiness() == "not yet in the ring"
    first = cluster.add("b", bootstrap=True)
    cluster.run(0.3)
    assert not first.member, "it must listen for --join-wait before starting a ring"
    cluster.run(1.0)
    assert first.member
    cluster.run(2.0)
    assert waiting.member, "the waiting node joins once a member announces itself"
    cluster.settle()


def test_requests_from_any_entry_reach_the_true_owner_in_few_hops(ring: Cluster) -> None:
    names = fill(ring, 30)
    positions = len(ring.nodes) * VNODES
    for cid in names:
        for entry in sorted(ring.nodes):
            reply = ring.call(entry, cid, list_tasks(cid))
            assert titles(reply) == ["first"]
            assert reply["route"][0] == entry and reply["route"][-1] == reply["owner"]
            assert reply["owner"] == ring.true_owner(cid)
            assert reply["hops"] <= math.log2(positions) + 2, reply
    held = sum(len(n.state.keys) for n in ring.nodes.values())
    assert held == len(names), "each key lives on exactly one node"


def test_a_repeated_request_is_answered_again_and_applied_once(ring: Cluster) -> None:
    cid = cid_for_name("repeat")
    assert ring.call("n1", cid, create(cid, "repeat"))["ok"]
    corr = ring.send("n2", cid, insert(cid, "once"))
    ring.run(1.0)
    first = ring.replies.pop(corr)
    ring.send("n3", cid, insert(cid, "once"), corr=corr)
    ring.run(1.0)
    assert ring.replies[corr] == first and first["ok"]
    inserted = [e for _, e in ring.events if e.get("event") == "task_inserted"]
    assert len(inserted) == 1 and inserted[0]["cid"] == f"{cid:016x}"
    assert ring.events[-1][0] == topics.ring_events(first["owner"])


def test_malformed_requests_get_bad_request_or_are_dropped(ring: Cluster) -> None:
    cid = cid_for_name("bad")
    bad = [
        {"t": "request", "corr": "b1", "reply_to": REPLY_TO, "key": -1, "op": list_tasks(cid)},
        {"t": "request", "corr": "b2", "reply_to": REPLY_TO, "key": cid, "op": "list"},
        wire.Request("b3", REPLY_TO, cid + 1, list_tasks(cid), False).to_wire(),  # key != cid
        wire.Request("b4", REPLY_TO, cid, {"op": "create_client", "cid": cid}, False).to_wire(),
        wire.Request("b5", REPLY_TO, cid, {"op": "drop_tables", "cid": cid}, False).to_wire(),
        {"t": "request", "corr": "b6", "key": cid},  # no reply address: dropped
        wire.Request("b8", "taskring/+/reply", cid, list_tasks(cid), False).to_wire(),  # dropped
        {"t": "scan", "corr": "b7", "reply_to": REPLY_TO, "after": -1, "limit": 0},
        {"t": "handover", "from": "x"},
        {"t": "stabilize", "dst": "nowhere"},
        {"t": "???"},
    ]
    for message in bad:
        ring.emit("test", [Publish(topics.ring_host("n2"), message)])
    ring.pump()
    ring.run(2.0)
    for corr in ("b1", "b2", "b3", "b4", "b5", "b7"):
        assert ring.replies[corr]["error"]["code"] == "bad_request", corr
    assert "b6" not in ring.replies
    assert not any("+" in topic for topic, _ in ring.events), "nothing sent to a wildcard"
    assert not any(cid in n.state.keys for n in ring.nodes.values()), "no empty key left"
    assert ring.call("n2", cid, list_tasks(cid))["error"]["code"] == "not_found"


def test_a_node_not_in_the_ring_answers_unavailable() -> None:
    cluster = Cluster()
    cluster.add("alone")
    cid = cid_for_name("x")
    reply = cluster.call("alone", cid, list_tasks(cid))
    assert reply["error"]["code"] == "unavailable" and "safe to retry" in reply["error"]["message"]


def test_a_joining_node_receives_its_keys_and_no_read_misses_one(ring: Cluster) -> None:
    names = fill(ring, 60)
    ring.add("n5")
    misses, answered = [], 0
    for round_ in range(20):  # read every key through every node throughout the join
        entry = sorted(ring.nodes)[round_ % len(ring.nodes)]
        corrs = {ring.send(entry, cid, list_tasks(cid)): cid for cid in names}
        ring.run(0.5)
        for corr, cid in corrs.items():
            reply = ring.replies.get(corr)
            if reply is None:
                continue
            answered += 1
            # A node not yet in the ring may say unavailable (safe to retry), nothing else.
            unavailable = not reply["ok"] and reply["error"]["code"] == "unavailable"
            if not reply["ok"] and not (unavailable and entry == "n5"):
                misses.append((cid, entry, reply["error"]))
    ring.settle()
    assert not misses, misses[:3]
    assert answered > 15 * len(names)
    moved = [c for c in names if ring.true_owner(c) == "n5"]
    assert moved, "some keys belong to the new node"
    assert sorted(ring.nodes["n5"].state.keys) == sorted(moved)
    for cid in names:
        reply = ring.call("n1", cid, list_tasks(cid))
        assert titles(reply) == ["first"] and reply["owner"] == ring.true_owner(cid)


def handovers_to(node_id: str) -> Callable[[str, dict[str, Any]], bool]:
    topic = topics.ring_host(node_id)
    return lambda t, m: t == topic and m.get("t") == "handover"


def test_a_new_owner_holds_requests_for_keys_still_on_their_way(ring: Cluster) -> None:
    names = fill(ring, 60)
    ring.hold = handovers_to("n5")
    ring.add("n5", cold_wait=20.0)  # long enough for the ring to settle meanwhile
    ring.settle()
    assert ring.held, "the old owners handed keys to the new node"
    moved = [c for c in names if ring.true_owner(c) == "n5"]
    corrs = {ring.send("n5", cid, list_tasks(cid)): cid for cid in moved}
    ring.run(0.5)
    early = [ring.replies[c] for c in corrs if c in ring.replies]
    assert all(r["ok"] for r in early), "no not_found before the keys arrive"
    ring.release()
    ring.run(0.5)
    for corr in corrs:
        assert titles(ring.replies[corr]) == ["first"]


def names_owned_by(cluster: Cluster, node_id: str, count: int) -> dict[int, str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        name = f"new {i}"
        i += 1
        if cluster.true_owner(cid_for_name(name)) == node_id:
            found[cid_for_name(name)] = name
    return found


def test_a_handover_that_covers_an_arc_ends_the_wait_for_it(ring: Cluster) -> None:
    fill(ring, 30)
    ring.add("n5", cold_wait=20.0)
    ring.settle()
    new = names_owned_by(ring, "n5", 5)
    corrs = [ring.send("n2", cid, create(cid, name)) for cid, name in new.items()]
    ring.run(0.5)
    assert all(ring.replies[c]["ok"] for c in corrs), "creates need not wait 20 s"


def test_a_late_copy_of_a_key_does_not_overwrite_the_new_owners(ring: Cluster) -> None:
    names = fill(ring, 60)
    acks: tuple[str, ...] = topics.ring_host("n1"), topics.ring_host("n2"), topics.ring_host("n3")
    acks += (topics.ring_host("n4"),)
    ring.hold = lambda t, m: t in acks and m.get("t") == "handover_ack"
    ring.add("n5")
    ring.settle()
    moved = [c for c in names if ring.true_owner(c) == "n5"]
    assert moved and all(c in ring.nodes["n5"].state.keys for c in moved)
    for cid in moved:
        assert ring.call("n5", cid, insert(cid, "second"))["ok"]
    ring.run(10.0)  # the senders take their keys back and send them again
    ring.held.clear()
    ring.release()
    ring.run(3.0)
    for cid in moved:
        assert titles(ring.call("n1", cid, list_tasks(cid))) == ["first", "second"]


def test_keys_held_by_a_node_that_does_not_own_them_find_their_owner(ring: Cluster) -> None:
    names = fill(ring, 30)
    stray = [c for c in names if ring.true_owner(c) != "n1"]
    keys = []
    for node in ring.nodes.values():
        keys += node.state.export_keys([c for c in stray if c in node.state.keys])
        for cid in stray:
            node.state.keys.pop(cid, None)
    ring.emit("test", [Publish(topics.ring_host("n1"), wire.Handover("x", keys, "x/1").to_wire())])
    ring.pump()
    assert all(c in ring.nodes["n1"].state.keys for c in stray)
    ring.run(3.0)
    for cid in names:
        assert cid in ring.nodes[ring.true_owner(cid)].state.keys
        assert titles(ring.call("n2", cid, list_tasks(cid))) == ["first"]


def test_keys_whose_handover_is_never_acknowledged_are_taken_back_and_resent(
    ring: Cluster,
) -> None:
    names = fill(ring, 60)
    ring.hold = handovers_to("n5")  # direct handovers vanish; routed ones get through
    ring.add("n5")
    ring.run(12.0)
    ring.held.clear()
    ring.release()
    ring.settle()
    for cid in names:
        assert titles(ring.call("n1", cid, list_tasks(cid))) == ["first"]
    assert sorted(ring.nodes["n5"].state.keys) == sorted(
        c for c in names if ring.true_owner(c) == "n5"
    )


def test_keys_handed_to_a_node_that_then_dies_are_kept_and_served(ring: Cluster) -> None:
    names = fill(ring, 60)
    ring.hold = handovers_to("n5")
    ring.add("n5")
    ring.settle()
    moved = [c for c in names if ring.true_owner(c) == "n5"]
    assert moved and ring.held
    ring.crash("n5")  # its handovers die with it, unacknowledged
    ring.held.clear()
    ring.release()
    corrs = {ring.send("n1", cid, list_tasks(cid)): cid for cid in moved}
    # The senders notice the crash (Chord's peer timeout, 2 s) and take the keys back
    # then, well before their acknowledgement deadline (5 s after sending).
    ring.run(4.0)
    for corr in corrs:
        assert titles(ring.replies[corr]) == ["first"], "served once taken back, never not_found"


def test_a_leaving_node_hands_every_key_over(ring: Cluster) -> None:
    names = fill(ring, 60)
    leaver = ring.nodes["n3"]
    held = set(leaver.state.keys)
    assert held
    ring.emit("n3", leaver.leave(ring.now))
    ring.pump()
    assert not leaver.state.keys and leaver.handovers_pending == 0, "all acknowledged"
    ring.crash("n3")
    for cid in names:  # at once: no waiting for the ring to notice
        reply = ring.call("n1", cid, list_tasks(cid))
        assert titles(reply) == ["first"], (cid in held, reply)
    ring.settle()
    assert sum(len(n.state.keys) for n in ring.nodes.values()) == len(names)


def test_a_crashed_nodes_keys_answer_not_found_and_the_rest_survive(ring: Cluster) -> None:
    names = fill(ring, 60)
    lost = set(ring.nodes["n2"].state.keys)
    assert lost
    ring.crash("n2")
    ring.run(4.0 + COLD_WAIT)
    for cid in names:
        reply = ring.call("n4", cid, list_tasks(cid), wait=10.0)
        if cid in lost:
            assert reply["error"]["code"] == "not_found", reply
        else:
            assert titles(reply) == ["first"]
    ring.settle()


def test_a_crashed_node_restarted_under_its_id_takes_its_arcs_back(ring: Cluster) -> None:
    names = fill(ring, 40)
    lost = set(ring.nodes["n2"].state.keys)
    ring.crash("n2")
    ring.run(1.0)
    ring.add("n2", incarnation="again")
    ring.settle()
    for cid in names:
        reply = ring.call("n3", cid, list_tasks(cid))
        if cid in lost:
            assert reply["error"]["code"] == "not_found"
        else:
            assert titles(reply) == ["first"] and reply["owner"] == ring.true_owner(cid)
    cid = next(iter(lost))
    assert ring.call("n1", cid, create(cid, names[cid]))["ok"]
    assert ring.call("n4", cid, list_tasks(cid))["owner"] == "n2"


def test_an_unacknowledged_handover_is_taken_back() -> None:
    cluster = Cluster()
    cluster.add("a", bootstrap=True)
    cluster.run(1.0)
    names = fill(cluster, 20)
    cluster.add("b")
    cluster.cut.add("b")  # b hears nothing: it never joins, and never acknowledges
    cluster.run(10.0)
    assert sum(len(n.state.keys) for n in cluster.nodes.values()) == len(names)
    assert cluster.nodes["a"].handovers_pending == 0


def test_scan_lists_only_the_clients_a_node_owns_in_cid_order(ring: Cluster) -> None:
    names = fill(ring, 30)
    seen: list[int] = []
    for node_id in sorted(ring.nodes):
        message = wire.Scan(f"s-{node_id}", REPLY_TO, -1, 1000).to_wire()
        ring.emit("test", [Publish(topics.ring_host(node_id), message)])
        ring.pump()
        result = ring.replies[f"s-{node_id}"]["result"]
        cids = [c["cid"] for c in result["clients"]]
        assert result["host"] == node_id and cids == sorted(cids)
        assert all(ring.true_owner(c) == node_id for c in cids)
        seen += cids
    assert sorted(seen) == sorted(names)
    first = sorted(names)[0]
    message = wire.Scan("page", REPLY_TO, first, 2).to_wire()
    ring.emit("test", [Publish(topics.ring_host(ring.true_owner(first)), message)])
    ring.pump()
    page = [c["cid"] for c in ring.replies["page"]["result"]["clients"]]
    assert len(page) <= 2 and all(c > first for c in page)


def test_the_ring_status_describes_positions_successors_and_keys(ring: Cluster) -> None:
    fill(ring, 10)
    node = ring.nodes["n1"]
    status = node.ring_status()
    assert status["member"] is True
    assert status["positions"] == sorted(f"{p:016x}" for p in node.host.positions)
    assert len(status["predecessors"]) == VNODES
    host, position = status["successors"][0]
    assert host in ring.nodes and len(position) == 16
    assert all(len(pair) == 2 for pair in status["fingers"])
    assert status["keys"] == len(node.state.keys)
    assert [v["state"] for v in status["vnodes"]] == ["member"] * VNODES


@pytest.mark.parametrize("seed", range(4))
def test_no_acknowledged_write_is_lost_through_joins_and_a_leave_on_a_slow_network(
    seed: int,
) -> None:
    cluster = Cluster(latency=0.05, seed=seed)
    cluster.add("n1", bootstrap=True)
    cluster.run(1.0)
    for name in ("n2", "n3", "n4"):
        cluster.add(name)
    cluster.run(1.0)
    cluster.settle()
    tasks = {cid: {"first"} for cid in fill(cluster, 40)}
    rng = random.Random(seed)
    counter = itertools.count()
    pending: dict[str, tuple[int, str]] = {}
    failures: list[Any] = []
    changes: dict[int, Callable[[], Any]] = {
        10: lambda: cluster.add("n5"),
        40: lambda: cluster.emit("n3", cluster.nodes["n3"].leave(cluster.now)),
        60: lambda: cluster.crash("n3"),  # the leaving process exits
        70: lambda: cluster.add("n6"),
    }
    for round_ in range(120):
        if round_ in changes:
            changes[round_]()
        entries = [n.id for n in cluster.nodes.values() if n.member]
        for _ in range(3):
            cid, title = rng.choice(sorted(tasks)), f"w{next(counter)}"
            pending[cluster.send(rng.choice(entries), cid, insert(cid, title))] = (cid, title)
        cluster.run(STEP)
        for corr in [c for c in pending if c in cluster.replies]:
            cid, title = pending.pop(corr)
            reply = cluster.replies[corr]
            if reply["ok"]:
                tasks[cid].add(title)
            elif reply["error"]["code"] != "unavailable":  # unavailable: not applied
                failures.append((title, reply["error"]))
    cluster.run(3.0)
    assert not failures, failures[:3]
    for cid, _title in pending.values():  # outcome unknown: nothing to check
        tasks.pop(cid, None)
    cluster.settle()
    assert len(tasks) > 30
    for cid, expected in tasks.items():
        assert set(titles(cluster.call("n1", cid, list_tasks(cid)))) == expected


# ---- durable mode ----------------------------------------------------------------------------


class DurableNode:
    """One durable cache node in a ring of its own; its replica groups are state machines
    that commit every proposal at once (tests/unit/core/durable_harness.py)."""

    def __init__(self) -> None:
        self.groups = Groups(["g1", "g2"])
        self.now = 0.0
        self.node = CacheNode(
            "d1",
            incarnation="i",
            vnodes=VNODES,
            bootstrap=True,
            join_wait=0.2,
            now=0.0,
            seed=0,
            groups=self.groups.members,
        )
        self.replies: dict[str, dict[str, Any]] = {}
        self.announcements: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def route(self, publishes: list[Publish]) -> None:
        queue = list(publishes)
        while queue:
            item = queue.pop(0)
            message = unpack(pack(item.message))
            if item.topic == topics.ring_host(self.node.id):
                queue += self.node.receive(item.topic, message, self.now)
            elif message.get("t") in (group_wire.PROPOSE, group_wire.READ):
                answer = self.groups.commit(Send(item.topic, message))
                queue += self.node.receive(message["reply_to"], answer, self.now)
            elif item.topic == REPLY_TO:
                self.replies[message["corr"]] = message
            elif item.topic == topics.RING_ANNOUNCE:
                self.announcements.append(message)
            else:
                self.events.append((item.topic, message))
            if not queue:
                queue += self.node.flush(self.now)  # after each burst, as the adapter does

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.route(self.node.tick(self.now))
            self.now = round(self.now + STEP, 6)

    def send(self, *messages: dict[str, Any]) -> None:
        self.route([Publish(topics.ring_host(self.node.id), m) for m in messages])

    def call(self, cid: int, op: dict[str, Any], corr: str) -> dict[str, Any]:
        self.send(wire.Request(corr, REPLY_TO, cid, op, True).to_wire())
        for _ in range(20):
            if corr in self.replies:
                return self.replies.pop(corr)
            self.run(STEP)
        raise AssertionError(f"no reply to {op}")


@pytest.fixture
def durable_node() -> DurableNode:
    ring = DurableNode()
    ring.run(1.0)
    assert ring.node.member
    return ring


def test_a_durable_node_commits_through_the_keys_group_and_names_it_in_the_reply(
    durable_node: DurableNode,
) -> None:
    cid = cid_for_name("durable")
    group = group_for(cid, ["g1", "g2"])
    assert durable_node.call(cid, create(cid, "durable"), "c1")["group"] == group
    reply = durable_node.call(cid, insert(cid, "kept"), "c2")
    assert reply["ok"] and reply["group"] == group and reply["owner"] == "d1"
    machine = durable_node.groups.machine(group)
    assert list(machine.kv.keys[cid].tasks) == ["kept"]
    assert machine.owners[cid] == "d1/i"
    assert titles(durable_node.call(cid, list_tasks(cid), "c3")) == ["kept"]
    assert (topics.ring_events("d1"), "task_inserted") in [
        (topic, event.get("event")) for topic, event in durable_node.events
    ]


def test_a_durable_node_loads_a_key_its_group_already_holds(durable_node: DurableNode) -> None:
    cid = cid_for_name("earlier")
    seed_op = insert(cid, "from the group")
    machine = durable_node.groups.machine(group_for(cid, ["g1", "g2"]))
    for op in (create(cid, "earlier"), seed_op):
        index = machine.applied_index + 1
        machine.apply_entry(index, encode_batch([Proposal("seed", index, 1, (op,))]))
    assert titles(durable_node.call(cid, list_tasks(cid), "c1")) == ["from the group"]


def test_a_durable_scan_reads_every_group_not_memory(durable_node: DurableNode) -> None:
    names = {cid_for_name(f"scan {i}"): f"scan {i}" for i in range(6)}
    for cid, name in names.items():  # written straight to the groups: not in memory
        machine = durable_node.groups.machine(group_for(cid, ["g1", "g2"]))
        index = machine.applied_index + 1
        machine.apply_entry(index, encode_batch([Proposal("seed", index, 1, (create(cid, name),))]))
    assert durable_node.node.state.keys == {}
    durable_node.send(wire.Scan("s1", REPLY_TO, -1, 4).to_wire())
    result = durable_node.replies["s1"]["result"]
    assert [c["cid"] for c in result["clients"]] == sorted(names)[:4]
    assert result["host"] == "d1" and result["complete"] is True
    assert {group_for(c, ["g1", "g2"]) for c in names} == {"g1", "g2"}


def test_a_durable_node_says_so_and_listens_for_its_groups_answers(
    durable_node: DurableNode,
) -> None:
    node = durable_node.node
    assert durable_node.announcements and all(a["durable"] for a in durable_node.announcements)
    assert node.ring_status()["durable"] is True
    assert topics.raft_replies("d1", "i") in node.subscriptions()
    memory_only = CacheNode("m1", incarnation="i", bootstrap=True)
    assert memory_only.ring_status()["durable"] is False
    assert len(memory_only.subscriptions()) == 2


def test_a_malformed_write_to_a_durable_node_fails_alone(durable_node: DurableNode) -> None:
    # Both requests reach the node in one burst, so their writes share one proposal; the
    # group refuses a proposal with a malformed operation as a whole.
    good, bad = cid_for_name("good"), cid_for_name("bad")
    assert group_for(good, ["g1", "g2"]) == group_for(bad, ["g1", "g2"])
    for cid, corr in ((good, "c1"), (bad, "c2")):
        durable_node.call(cid, create(cid, corr), corr)
    durable_node.send(
        wire.Request("w1", REPLY_TO, good, insert(good, "fine"), True).to_wire(),
        wire.Request("w2", REPLY_TO, bad, {"op": "insert_task", "cid": bad}, True).to_wire(),
    )
    durable_node.run(0.5)
    assert durable_node.replies["w2"]["error"]["code"] == "bad_request"
    assert durable_node.replies["w1"]["ok"] is True, durable_node.replies["w1"]


def test_a_token_rotation_goes_out_with_the_events_in_order_and_to_every_portal() -> None:
    rotated = {"event": "token_rotated", "cid": "0000000000000007"}
    assert [p.topic for p in event_publishes("cache-1", rotated)] == [
        topics.ring_events("cache-1"),
        topics.RING_CLIENT_CHANGES,
    ]
    inserted = {"event": "task_inserted", "cid": "0000000000000007", "title": "t"}
    assert [p.topic for p in event_publishes("cache-1", inserted)] == [
        topics.ring_events("cache-1")
    ]
