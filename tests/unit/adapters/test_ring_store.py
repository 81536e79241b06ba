"""The portal side of ring storage against a stand-in owner on the in-memory bus.

The stand-in answers requests with the real key-value state machine, and can
be told to stay silent or to say `unavailable`, so the store's retry and
outcome rules can be checked exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.adapters.bus.memory import MemoryBus, MemoryHub
from backend.adapters.random_secrets import new_token
from backend.adapters.store.interface import TRACE
from backend.adapters.store.ring_store import RingStore
from backend.core import topics
from backend.core.errors import EXISTS, TIMEOUT, UNAVAILABLE, OpError
from backend.core.model.kv import KeyValueState, record_to_wire
from backend.core.model.records import Event, Task
from backend.core.ring import wire
from backend.core.ring.cache_core import event_publishes

CID = 0x8000_0000_0000_0000


class StandInOwner:
    """A cache node that owns every key and serves requests on its inbox."""

    def __init__(self, bus: MemoryBus, host: str) -> None:
        self.bus, self.host = bus, host
        self.state = KeyValueState()
        self.mode = "serve"  # or "silent", "unavailable"
        self.requests = 0
        bus.subscribe(topics.ring_host(host), self.on_message)

    async def announce(self) -> None:
        await self.bus.publish(
            topics.RING_ANNOUNCE, wire.Announce(self.host, "1", True, [0]).to_wire()
        )

    async def on_message(self, _topic: str, message: dict) -> None:
        self.requests += 1
        if self.mode == "silent":
            return
        if message["t"] == wire.SCAN:
            clients = self.state.clients_after(message["after"], message["limit"])
            result = {"clients": [record_to_wire(c) for c in clients], "host": self.host}
            reply = wire.Reply.success(message["corr"], result, [self.host], self.host, 0).to_wire()
        elif self.mode == "unavailable":
            reply = wire.Reply.failure(message["corr"], UNAVAILABLE, "no route").to_wire()
        else:
            try:
                result, events = self.state.apply(message["op"])
                reply = wire.Reply.success(
                    message["corr"], result, ["entry", self.host], self.host, 1
                ).to_wire()
            except OpError as exc:
                reply = wire.Reply.failure(message["corr"], exc.code, exc.message).to_wire()
                events = []
            for event in events:
                for publish in event_publishes(self.host, event.to_wire()):
                    await self.bus.publish(publish.topic, publish.message)
        await self.bus.publish(message["reply_to"], reply)


@pytest.fixture
async def ring():
    hub = MemoryHub()
    owner = StandInOwner(hub.attach(), "cache-1")
    portal_bus = hub.attach()
    store = RingStore(portal_bus, "portal-1", request_timeout=0.3)
    await owner.bus.connect()
    await portal_bus.connect()
    await owner.announce()
    await store.create_client(CID, "alice", "", "secret")
    return owner, store


async def test_operations_reach_the_owner_and_results_come_back(ring) -> None:
    _owner, store = ring
    await store.insert_task(CID, "t", "d")
    assert await store.list_tasks(CID) == [Task("t", "d")]
    assert await store.authenticate(CID, "secret")
    assert not await store.authenticate(CID, "wrong")
    with pytest.raises(OpError) as taken:
        await store.insert_task(CID, "t", "again")
    assert taken.value.code == EXISTS
    assert [r.cid for r in await store.list_clients(None, 10)] == [CID]


async def test_no_token_crosses_the_bus_when_a_portal_authenticates(ring) -> None:
    # Every login that may read ring topics would otherwise collect every client's token.
    owner, store = ring
    token = new_token()
    await store.create_client(CID + 1, "bob", "", token)
    crossed: list[bytes] = []
    deliver = owner.bus.hub.deliver

    async def capture(topic: str, payload: bytes) -> None:
        crossed.append(payload)
        await deliver(topic, payload)

    owner.bus.hub.deliver = capture
    assert await store.authenticate(CID + 1, token)
    assert not await store.authenticate(CID + 1, token[::-1])
    assert not await store.authenticate(CID + 2, token)  # nobody: same answer, no error
    assert crossed  # the owner was asked each time
    for payload in crossed:
        assert token.encode() not in payload
        assert token not in payload.decode("latin-1")


async def test_a_traced_call_reports_the_route_the_owner_saw(ring) -> None:
    _, store = ring
    sink: dict = {}
    TRACE.set(sink)
    await store.list_tasks(CID)
    assert sink == {"route": ["entry", "cache-1"], "owner": "cache-1", "group": ""}


async def test_a_write_without_an_answer_is_a_timeout_never_a_false_failure(ring) -> None:
    owner, store = ring
    owner.mode = "silent"
    with pytest.raises(OpError) as unknown:
        await store.insert_task(CID, "t", "d")
    assert unknown.value.code == TIMEOUT
    assert owner.requests == 2  # the create in the fixture, then exactly one attempt


async def test_unavailable_is_retried_and_reported_only_when_never_applied(ring) -> None:
    owner, store = ring
    owner.mode = "unavailable"
    with pytest.raises(OpError) as refused:
        await store.insert_task(CID, "t", "d")
    assert refused.value.code == UNAVAILABLE
    assert owner.requests > 3
    owner.mode = "serve"
    assert await store.list_tasks(CID) == []


async def test_events_reach_watchers_and_a_rotation_forgets_cached_logins(ring) -> None:
    _owner, store = ring
    seen: list[Event] = []
    await store.watch(CID, seen.append)
    assert await store.authenticate(CID, "secret")
    await store.insert_task(CID, "t", "d")
    await store.rotate_token(CID, "new")
    assert not await store.authenticate(CID, "secret")
    assert [e.kind for e in seen] == ["task_inserted", "token_rotated"]


async def test_a_rotation_ends_the_watches_before_any_later_event(ring) -> None:
    _owner, store = ring
    seen: list[Event] = []
    await store.watch(CID, seen.append)
    batch = [
        {"event": "task_inserted", "cid": f"{CID:016x}", "title": "a", "description": ""},
        {"event": "token_rotated", "cid": f"{CID:016x}"},
        {"event": "task_inserted", "cid": f"{CID:016x}", "title": "b", "description": ""},
    ]
    await store._on_events("events", {"t": "batch", "msgs": batch})
    assert [(e.kind, e.title) for e in seen] == [("task_inserted", "a"), ("token_rotated", None)]
    assert CID not in store.watchers.sinks


async def test_a_rotation_reaches_a_portal_where_nobody_watches(ring) -> None:
    _owner, store = ring
    assert await store.authenticate(CID, "secret")
    await store.rotate_token(CID, "new")
    assert not await store.authenticate(CID, "secret")


async def test_events_are_subscribed_only_while_someone_watches(ring) -> None:
    _owner, store = ring
    topic = topics.RING_EVENTS
    first: list[Event] = []
    second: list[Event] = []
    stop_first = await store.watch(CID, first.append)
    stop_second = await store.watch(CID, second.append)
    await store.insert_task(CID, "a", "d")
    stop_first()
    assert topic in [f for f, _ in store.bus.handlers]
    await store.insert_task(CID, "b", "d")
    stop_second()
    assert topic not in [f for f, _ in store.bus.handlers]
    await store.insert_task(CID, "c", "d")
    assert [e.title for e in first] == ["a"]
    assert [e.title for e in second] == ["a", "b"]


async def test_no_cache_node_means_unavailable_and_not_ready() -> None:
    hub = MemoryHub()
    bus = hub.attach()
    await bus.connect()
    store = RingStore(bus, "portal-1", request_timeout=0.2)
    assert store.readiness() is not None
    with pytest.raises(OpError) as nothing:
        await store.insert_task(CID, "t", "d")
    assert nothing.value.code == UNAVAILABLE


async def test_a_restarted_portal_never_reuses_a_correlation_id() -> None:
    """Owners answer a repeated id from their reply cache: a portal restarted under the same
    id that reused one would get the answer to its previous run's operation."""
    hub = MemoryHub()
    before, after = RingStore(hub.attach(), "portal-1"), RingStore(hub.attach(), "portal-1")
    first_run = {before.core.next_corr() for _ in range(100)}
    second_run = {after.core.next_corr() for _ in range(100)}
    assert not first_run & second_run


async def test_a_cancelled_operation_stops_being_retried(ring) -> None:
    owner, store = ring
    owner.mode = "silent"
    call = asyncio.create_task(store.list_tasks(CID))
    await asyncio.sleep(0.01)
    assert owner.requests == 2 and store.core.next_tick() is not None
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert store.core.next_tick() is None and not store.waiting


async def test_what_the_bus_refuses_is_retried_once_it_is_connected_again(ring) -> None:
    owner, store = ring
    store.bus.disconnect()
    before = owner.requests
    inserting = asyncio.create_task(store.insert_task(CID, "t", "d"))
    await asyncio.sleep(0.1)
    assert owner.requests == before and not inserting.done()  # refused, paused, refused...
    await store.bus.connect()
    await asyncio.wait_for(inserting, 1)
    assert await store.list_tasks(CID) == [Task("t", "d")]


async def test_a_batch_goes_out_by_the_bus_s_fire_and_forget_send(ring) -> None:
    _, store = ring
    sent: list[str] = []
    send = store.bus.send

    def record(topic: str, message: dict, qos: int = 0) -> None:
        sent.append(topic)
        send(topic, message, qos)

    store.bus.send = record
    assert await store.list_tasks(CID) == []
    assert sent == [topics.ring_host("cache-1")]
