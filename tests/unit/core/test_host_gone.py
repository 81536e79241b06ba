"""A cache node's death told by the broker: its MQTT last will (`host_gone`) reaching the
other cache nodes (backend/core/ring/cache_core.py) and the portals
(backend/adapters/store/ring_store.py).

The cache nodes are wired in one process as in test_cache_core.py; the portal runs
on the in-memory bus against stand-in cache nodes that answer or stay silent. A
will must take effect at once, and only for the incarnation that died.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.adapters.bus.memory import MemoryBus, MemoryHub
from backend.adapters.store import ring_store
from backend.adapters.store.ring_store import RingStore
from backend.core import topics
from backend.core.errors import TIMEOUT, OpError
from backend.core.model.kv import KeyValueState, record_to_wire
from backend.core.ring import wire
from backend.core.ring.cache_core import Publish
from backend.core.ring.portal_core import ATTEMPT_WAIT, HOST_FRESHNESS
from tests.unit.core.test_cache_core import Cluster, create, four_nodes

CID = 0x8000_0000_0000_0000


def will(host: str, incarnation: str) -> Publish:
    return Publish(topics.RING_ANNOUNCE, wire.HostGone(host, incarnation).to_wire())


def mentions(cluster: Cluster, host: str) -> list[str]:
    """The live nodes whose ring pointers still name `host`."""
    named = []
    for node in cluster.nodes.values():
        for vnode in node.host.nodes:
            peers = [*vnode.successors, *vnode.fingers.distinct(), vnode.predecessor]
            if any(p is not None and p.host == host for p in peers):
                named.append(node.id)
    return named


# ---- cache nodes ----------------------------------------------------------------------


def test_a_will_makes_every_node_drop_the_dead_one_at_once() -> None:
    cluster = four_nodes()
    cluster.crash("n2")
    assert mentions(cluster, "n2")
    cluster.emit("broker", [will("n2", "i")])
    cluster.pump()  # delivered, and no time passed: no timeout could have fired
    assert mentions(cluster, "n2") == []
    assert all(n.host.liveness.suspected("n2") for n in cluster.nodes.values())
    assert all(not n.peers["n2"].member for n in cluster.nodes.values())
    cluster.settle()


def test_a_will_of_an_earlier_incarnation_changes_nothing() -> None:
    cluster = four_nodes()
    cluster.crash("n2")
    cluster.run(1.0)
    cluster.add("n2", incarnation="again")
    cluster.settle()
    cluster.run(1.0)  # everyone hears the new incarnation announce itself
    assert all(n.peers["n2"].incarnation == "again" for n in cluster.nodes.values() if n.id != "n2")
    cluster.emit("broker", [will("n2", "i")])  # the first run's, late
    cluster.pump()
    assert not any(n.host.liveness.suspected("n2") for n in cluster.nodes.values())
    assert cluster.settled()


def test_a_malformed_will_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    cluster = four_nodes()
    cluster.emit("broker", [Publish(topics.RING_ANNOUNCE, {"t": wire.HOST_GONE, "host": ""})])
    cluster.pump()
    assert "malformed host_gone" in caplog.text
    assert cluster.settled()


# ---- portals --------------------------------------------------------------------------


class StandIn:
    """A cache node that owns the keys its positions say and answers, or stays silent."""

    def __init__(self, bus: MemoryBus, host: str, position: int, durable: bool) -> None:
        self.bus, self.host, self.position, self.durable = bus, host, position, durable
        self.state = KeyValueState()
        self.silent = False
        self.requests: list[dict] = []
        self.asked = asyncio.Event()
        bus.subscribe(topics.ring_host(host), self.on_message)

    async def announce(self, incarnation: str = "1") -> None:
        message = wire.Announce(self.host, incarnation, True, [self.position]).to_wire()
        message["durable"] = self.durable
        await self.bus.publish(topics.RING_ANNOUNCE, message)

    async def on_message(self, _topic: str, message: dict) -> None:
        self.requests.append(message)
        self.asked.set()
        if self.silent:
            return
        if message["t"] == wire.SCAN:
            clients = [record_to_wire(c) for c in self.state.clients_after(-1, 100)]
            result = {"clients": clients, "host": self.host}
            reply = wire.Reply.success(message["corr"], result, [self.host], self.host, 0).to_wire()
            await self.bus.publish(message["reply_to"], reply)
            return
        try:
            result, _events = self.state.apply(message["op"])
            reply = wire.Reply.success(message["corr"], result, [self.host], self.host, 0).to_wire()
        except OpError as exc:
            reply = wire.Reply.failure(message["corr"], exc.code, exc.message).to_wire()
        await self.bus.publish(message["reply_to"], reply)


async def portal(durable: bool, timeout: float = 5.0) -> tuple[RingStore, StandIn, StandIn]:
    """`owner` holds the position at CID, so the portal sends CID's requests there;
    `other` follows it (wrapping round to position 0)."""
    hub = MemoryHub()
    owner = StandIn(hub.attach(), "cache-1", CID, durable)
    other = StandIn(hub.attach(), "cache-2", 0, durable)
    store = RingStore(hub.attach(), "portal-1", request_timeout=timeout)
    for bus in (owner.bus, other.bus, store.bus):
        assert isinstance(bus, MemoryBus)
        await bus.connect()
    await owner.announce()
    await other.announce()
    return store, owner, other


async def test_a_read_waiting_on_a_dead_node_goes_elsewhere_at_once() -> None:
    store, owner, other = await portal(durable=False)
    owner.silent = True
    other.state.apply(create(CID, "alice"))
    call = asyncio.create_task(store.list_tasks(CID))
    await asyncio.wait_for(owner.asked.wait(), 1.0)
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "1").to_wire())
    async with asyncio.timeout(ATTEMPT_WAIT / 2):  # well before the ordinary retry
        assert await call == []
    assert "cache-1" not in store.hosts and len(other.requests) == 1


async def test_a_listing_waiting_on_a_dead_node_asks_another_at_once(monkeypatch) -> None:
    store, owner, other = await portal(durable=True)
    owner.silent = True
    other.state.apply(create(CID, "alice"))
    monkeypatch.setattr(ring_store.random, "sample", lambda hosts, n: sorted(hosts)[:n])
    call = asyncio.create_task(store.list_clients(None, 10))
    await asyncio.wait_for(owner.asked.wait(), 1.0)
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "1").to_wire())
    async with asyncio.timeout(1.0):  # not the 5 s a silent node would cost
        assert [c.name for c in await call] == ["alice"]


async def test_a_durable_write_is_sent_again_with_its_request_id() -> None:
    store, owner, other = await portal(durable=True)
    owner.silent = True
    call = asyncio.create_task(store.create_client(CID, "alice", "", "secret"))
    await asyncio.wait_for(owner.asked.wait(), 1.0)
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "1").to_wire())
    async with asyncio.timeout(ATTEMPT_WAIT / 2):
        record = await call
    assert record.cid == CID
    first, again = owner.requests[0]["op"], other.requests[0]["op"]
    assert first["req"] == again["req"]  # the groups apply it once, whoever got it first


async def test_a_memory_only_write_is_not_repeated_and_times_out_honestly() -> None:
    store, owner, other = await portal(durable=False, timeout=0.3)
    owner.silent = True
    call = asyncio.create_task(store.create_client(CID, "alice", "", "secret"))
    await asyncio.wait_for(owner.asked.wait(), 1.0)
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "1").to_wire())
    with pytest.raises(OpError) as outcome:
        await call
    assert outcome.value.code == TIMEOUT  # it may have been applied before the node died
    assert other.requests == []


async def test_a_will_of_another_incarnation_or_late_news_of_a_dead_one_is_ignored() -> None:
    store, owner, _other = await portal(durable=True)
    await owner.announce("2")
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "1").to_wire())
    assert store.hosts["cache-1"].incarnation == "2"
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "2").to_wire())
    assert "cache-1" not in store.hosts
    await owner.announce("2")  # sent before it died, arriving after its will
    assert "cache-1" not in store.hosts
    await owner.announce("3")  # it came back
    assert store.hosts["cache-1"].incarnation == "3"


async def test_a_node_whose_connection_dropped_is_heard_again_once_it_reconnects() -> None:
    now = [0.0]
    hub = MemoryHub()
    owner = StandIn(hub.attach(), "cache-1", CID, durable=True)
    store = RingStore(hub.attach(), "portal-1", clock=lambda: now[0])
    for bus in (owner.bus, store.bus):
        assert isinstance(bus, MemoryBus)
        await bus.connect()
    await owner.announce("1")
    await owner.bus.publish(topics.RING_ANNOUNCE, wire.HostGone("cache-1", "1").to_wire())
    now[0] += HOST_FRESHNESS  # the same incarnation, announcing after it reconnected
    await owner.announce("1")
    assert store._member_hosts() == ["cache-1"]
