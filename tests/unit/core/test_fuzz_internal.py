"""Fuzzing every handler of an internal message: nothing a peer sends may raise.

Each test feeds a component random msgpack-shaped maps and mutations of valid
messages of every type it hears (built with the real wire builders), then
checks that no exception got out and that the component still does its job
with a valid message. Runs are derandomized, so a failure repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.adapters.bus.memory import MemoryBus, MemoryHub
from backend.adapters.store.local_store import LocalStore
from backend.adapters.store.ring_store import RingStore
from backend.core import topics
from backend.core.chord.messages import (
    Gone,
    LeaveToPredecessor,
    LeaveToSuccessor,
    Lookup,
    LookupAck,
    LookupReply,
    Notify,
    Peer,
    Ping,
    Pong,
    StabilizeQuery,
    StabilizeReply,
)
from backend.core.codec import DecodeError, pack, unpack
from backend.core.model.hlc import HybridClock
from backend.core.model.kv import Key, key_to_wire
from backend.core.model.lww_tables import LwwTables, entry_to_wire
from backend.core.model.records import ClientRecord, Event
from backend.core.replica import wire as group_wire
from backend.core.replica.core import Send
from backend.core.ring import wire
from backend.core.ring.cache_core import Publish
from tests.unit.core.replica_harness import REPLY, Group
from tests.unit.core.test_cache_core import REPLY_TO, Cluster, DurableNode, insert

FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CID = 0x8000_0000_0000_0000

# ---- what arrives: random maps, and valid messages with something changed ---------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.sampled_from([0, 1, -1, 2, 1 << 63, (1 << 64) - 1])
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "t", "g1", "n1", "request", "batch", "raft", "proposed", "append"])
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=12,
)
KINDS = [
    wire.REQUEST,
    wire.REPLY,
    wire.SCAN,
    wire.HANDOVER,
    wire.HANDOVER_ACK,
    wire.ANNOUNCE,
    wire.HOST_GONE,
    wire.BATCH,
    group_wire.RAFT,
    group_wire.PROPOSE,
    group_wire.PROPOSED,
    group_wire.READ,
    group_wire.READ_RESULT,
    "stabilize",
    "stabilize_reply",
    "notify",
    "ping",
    "pong",
    "lookup",
    "lookup_ack",
    "lookup_reply",
    "leave_to_successor",
    "leave_to_predecessor",
    "gone",
]
random_maps = st.builds(
    lambda kind, fields: {"t": kind, **fields},
    st.sampled_from(KINDS) | values,
    st.dictionaries(st.text(max_size=10), values, max_size=6),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a message a mutation may hit."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _mutated(message: Any, rng: random.Random, replacement: Any) -> Any:
    """A copy of `message` with one place replaced, removed, or given an extra key."""
    message = unpack(pack(message))  # a deep copy, and what the bus would deliver
    path = rng.choice(_paths(message)[1:] or [()])
    if not path:
        return replacement
    parent = message
    for step in path[:-1]:
        parent = parent[step]
    action = rng.randrange(3)
    if action == 0 or not isinstance(parent, dict):
        parent[path[-1]] = replacement
    elif action == 1:
        del parent[path[-1]]
    else:
        parent[f"x{rng.randrange(9)}"] = replacement
    return message


def arriving(valid: list[dict[str, Any]]) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A few messages: random maps, and valid ones mutated (once or twice)."""

    def mutate(index: int, seed: int, times: int, replacements: list[Any]) -> dict[str, Any]:
        rng = random.Random(seed)
        message: Any = valid[index % len(valid)]
        for replacement in replacements[:times]:
            message = _mutated(message, rng, replacement)
        return message if isinstance(message, dict) else {"t": message}

    mutants = st.builds(
        mutate,
        st.integers(0, 10_000),
        st.integers(0, 1 << 32),
        st.integers(1, 2),
        st.lists(values, min_size=2, max_size=2),
    )
    return st.lists(mutants | random_maps, min_size=1, max_size=6).map(
        lambda messages: [_through_msgpack(m) for m in messages]
    )


def _through_msgpack(message: dict[str, Any]) -> dict[str, Any]:
    try:
        return unpack(pack(message))
    except (DecodeError, TypeError, ValueError, OverflowError):
        return {"t": "unpackable"}


# ---- valid messages of every type ---------------------------------------------------------

PEER = Peer(5, "n9")
RECORD = ClientRecord(CID, "alice", "", 1, b"salt", b"hash")


def chord_messages(dst: int) -> list[dict[str, Any]]:
    request = wire.Request("fz0", REPLY_TO, CID, insert(CID, "t"), False).to_wire()
    lookup = Lookup(dst, PEER, CID, "l1", f"r{len(REPLY_TO)}:{REPLY_TO}fz0", None, 1, (PEER,), True)
    return [
        m.to_wire()
        for m in (
            StabilizeQuery(dst, PEER),
            StabilizeReply(dst, PEER, PEER, (PEER,)),
            Notify(dst, PEER),
            Ping(dst, PEER),
            Pong(dst, PEER),
            Lookup(**{**_fields(lookup), "payload": request}),
            LookupAck(dst, PEER, "l1", 1),
            LookupReply(dst, PEER, "t", (PEER,)),
            LeaveToSuccessor(dst, PEER, PEER),
            LeaveToPredecessor(dst, PEER, (PEER,)),
            Gone(dst, "n9", 5, "l1", 1),
        )
    ]


def _fields(message: Any) -> dict[str, Any]:
    return {name: getattr(message, name) for name in message.__slots__}


def ring_messages(dst: int) -> list[dict[str, Any]]:
    request = wire.Request("fz1", REPLY_TO, CID, _create(CID), True).to_wire()
    handover = wire.Handover(
        "n9", [key_to_wire(CID, Key(RECORD, {"a": "b"}))], "h1", [[1, 2]]
    ).to_wire()
    return [
        request,
        wire.Scan("fz2", REPLY_TO, -1, 10).to_wire(),
        handover,
        wire.HandoverAck("n9", "h1").to_wire(),
        wire.batch(
            [request, wire.Request("fz3", REPLY_TO, CID, insert(CID, "x"), False).to_wire()]
        ),
        *chord_messages(dst),
    ]


def announcements() -> list[dict[str, Any]]:
    return [wire.Announce("n9", "i9", True, [5, 9]).to_wire(), wire.HostGone("n9", "i9").to_wire()]


def replies() -> list[dict[str, Any]]:
    ok = wire.Reply.success("c1", {"client": {"cid": CID}}, ["n1"], "n1", 0).to_wire()
    error = wire.Reply.failure("c2", "exists", "it exists", ["n1"], "n1").to_wire()
    return [ok, error, wire.batch([ok, error])]


def events() -> list[dict[str, Any]]:
    inserted = Event("task_inserted", CID, "t", "d").to_wire()
    return [inserted, Event("token_rotated", CID).to_wire(), wire.batch([inserted])]


# ---- the codec ------------------------------------------------------------------------------


@FUZZ
@example(bytes.fromhex("81910101"))  # the reported one: a map keyed by an array
@example(b"\xc1")
@example(b"\x91" * 5000)  # nested deeper than the unpacker's stack
@example(bytes.fromhex("818101a10101"))  # a map keyed by a map
@example(b"\xdd\xff\xff\xff\xff")  # an array claiming 4 billion items
@given(
    st.binary(max_size=64) | st.builds(lambda m, i: pack(m)[:i], random_maps, st.integers(0, 64))
)
def test_unpack_gives_a_map_or_decode_error_for_any_bytes(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        assert isinstance(unpack(payload), dict)


@FUZZ
@given(random_maps, st.integers(0, 1 << 32), st.lists(st.binary(min_size=1, max_size=3)))
def test_unpack_is_total_on_corrupted_valid_payloads(
    message: dict[str, Any], seed: int, inserts: list[bytes]
) -> None:
    rng = random.Random(seed)
    payload = bytearray(_pack_or_empty(message))
    for piece in inserts:
        at = rng.randrange(len(payload) + 1)
        payload[at : at + rng.randrange(3)] = piece
    with contextlib.suppress(DecodeError):
        assert isinstance(unpack(bytes(payload)), dict)


def _pack_or_empty(message: dict[str, Any]) -> bytes:
    try:
        return pack(message)
    except (TypeError, ValueError, OverflowError):
        return b"\x80"


# ---- cache nodes --------------------------------------------------------------------------


def _memory_ring() -> Cluster:
    cluster = Cluster()
    cluster.add("n1", bootstrap=True)
    cluster.run(1.0)
    assert cluster.nodes["n1"].member
    return cluster


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_a_memory_only_cache_node_survives_anything_and_still_serves(data: st.DataObject) -> None:
    cluster = _memory_ring()
    node = cluster.nodes["n1"]
    dst = node.host.positions[0]
    host_topic = topics.ring_host("n1")
    messages = data.draw(arriving(ring_messages(dst) + announcements()))
    for message in messages:
        topic = (
            topics.RING_ANNOUNCE if message.get("t") in (wire.ANNOUNCE, "host_gone") else host_topic
        )
        cluster.emit("n1", node.receive(topic, message, cluster.now))
    cluster.run(0.5)
    _still_serves(cluster.call)


def _still_serves(call: Callable[..., dict[str, Any]]) -> None:
    """A valid request is answered: served, or refused as unavailable (a forged peer may
    stand in Chord's way for a while: the ring has no authentication of its own)."""
    cid = 0x1234_5678_9ABC_DEF0
    reply = call("n1", cid, _create(cid))
    assert reply["t"] == wire.REPLY
    assert reply["ok"] or reply["error"]["code"] in ("unavailable", "exists"), reply


class _FuzzedAnswers(DurableNode):
    """A durable node whose groups' answers arrive after a mutated copy of each."""

    def __init__(self, mutate: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
        super().__init__()
        self.mutate = mutate

    def route(self, publishes: list[Publish]) -> None:
        queue = list(publishes)
        while queue:
            item = queue.pop(0)
            message = unpack(pack(item.message))
            if message.get("t") in (group_wire.PROPOSE, group_wire.READ):
                answer = self.groups.commit(Send(item.topic, message))
                for fake in self.mutate(answer):
                    queue += self.node.receive(message["reply_to"], fake, self.now)
                queue += self.node.receive(message["reply_to"], answer, self.now)
                continue
            super().route([item])
            if not queue:
                queue += self.node.flush(self.now)


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_a_durable_cache_node_survives_anything_and_still_serves(data: st.DataObject) -> None:
    answers = [
        group_wire.AnswerOk(
            group_wire.PROPOSED, "x", "g1", 1, 3, [{"ok": True, "result": {}}]
        ).to_wire(),
        group_wire.AnswerError(
            group_wire.READ_RESULT, "x", "g1", 1, "unavailable", "no", 1
        ).to_wire(),
    ]
    fakes = data.draw(st.lists(arriving(answers), max_size=3))
    remaining = list(fakes)

    def mutate(answer: dict[str, Any]) -> list[dict[str, Any]]:
        # Each fake carries the real answer's corr, so it reaches the waiting request.
        batch = remaining.pop(0) if remaining else []
        return [{**fake, "corr": answer["corr"]} if fake.get("corr") else fake for fake in batch]

    durable = _FuzzedAnswers(mutate)
    durable.run(1.0)
    node = durable.node
    assert node.member
    dst = node.host.positions[0]
    reply_topic = topics.raft_reply("g1", node.id, node.incarnation)
    for message in data.draw(arriving(ring_messages(dst) + announcements() + answers)):
        kind = message.get("t")
        topic = (
            topics.RING_ANNOUNCE
            if kind in (wire.ANNOUNCE, "host_gone")
            else reply_topic
            if kind in (group_wire.PROPOSED, group_wire.READ_RESULT)
            else topics.ring_host("n1")
        )
        durable.route(node.receive(topic, message, durable.now))
    durable.run(0.5)
    cid = 0x1234_5678_9ABC_DEF0
    for attempt in range(5):
        reply = durable.call(cid, _create(cid), f"after{attempt}")
        if reply["ok"] or reply["error"]["code"] == "exists":
            break
        assert reply["error"]["code"] in ("unavailable", "timeout"), reply
        durable.run(2.0)
    else:
        raise AssertionError(f"the durable node no longer serves: {reply}")


# ---- replicas -----------------------------------------------------------------------------


class _RecordingGroup(Group):
    """A group that keeps the Raft messages its members send each other."""

    def __init__(self) -> None:
        self.raft_seen: list[dict[str, Any]] = []
        super().__init__()

    def deliver(self, to: int, message: dict[str, Any], sender: int | None = None) -> None:
        if message.get("t") == group_wire.RAFT and len(self.raft_seen) < 40:
            self.raft_seen.append(message)
        super().deliver(to, message, sender)


def _replica_messages(group: _RecordingGroup) -> list[dict[str, Any]]:
    op = {"op": "insert_task", "cid": 42, "title": "t", "description": ""}
    return [
        *group.raft_seen,
        group_wire.Propose("p", REPLY, "fuzz", 1, 1, [op]).to_wire(),
        group_wire.Read("r", REPLY, [{"op": "list_tasks", "cid": 42}]).to_wire(),
    ]


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_a_replica_survives_anything_and_the_group_still_commits(data: st.DataObject) -> None:
    group = _RecordingGroup()
    leader = group.elect()
    group.deliver(leader, group_wire.Propose("p0", REPLY, "c0", 1, 1, [_create(7)]).to_wire())
    group.settle()
    for message in data.draw(arriving(_replica_messages(group))):
        for member in group.ids:
            group.deliver(member, message)
    group.step(40)
    leader = group.elect()
    group.deliver(
        leader, group_wire.Propose("after", REPLY, "c-after", 1, 1, [_create(42)]).to_wire()
    )
    group.settle()
    group.step(20)
    answer = group.answer("after")
    assert answer is not None and answer["ok"] is True, answer


def _create(cid: int) -> dict[str, Any]:
    return {
        "op": "create_client",
        "cid": cid,
        "name": f"client {cid}",
        "data": "",
        "created_at": 1,
        "token_salt": b"s",
        "token_hash": b"h",
    }


# ---- portals ------------------------------------------------------------------------------


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_the_ring_store_handlers_survive_anything(data: st.DataObject) -> None:
    hub = MemoryHub()
    bus = hub.attach()
    store = RingStore(bus, "p1")
    handlers = {
        "announce": (store._on_announce, announcements()),
        "reply": (store._on_reply, replies()),
        "events": (store._on_events, events()),
        "change": (store._on_client_change, events()),
    }
    drawn = data.draw(arriving([m for _, valid in handlers.values() for m in valid]))

    async def run() -> None:
        for message in drawn:
            for handler, _ in handlers.values():
                await handler("topic", message)
        # Still works: a valid announcement, reply and event each do what they should.
        await store._on_announce("topic", wire.Announce("n1", "i1", True, [7]).to_wire())
        assert store.hosts["n1"].positions == [7]
        listing = asyncio.create_task(store._scan("n1", -1, 10))
        await asyncio.sleep(0)  # the scan is sent; the reply comes before the bus fails it
        [scan] = store.core.flush()
        corr = scan[1]["corr"]
        await store._on_reply(
            "topic", wire.Reply.success(corr, {"clients": []}, ["n1"], "n1", 0).to_wire()
        )
        assert await listing == []
        seen: list[Event] = []
        unwatch = await store.watch(CID, seen.append)
        await store._on_events("topic", Event("task_deleted", CID, "t").to_wire())
        assert seen == [Event("task_deleted", CID, "t")]
        unwatch()

    asyncio.run(run())


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_the_local_store_sync_handlers_survive_anything(data: st.DataObject) -> None:
    hub = MemoryHub()
    store = LocalStore(hub.attach(), "p1", wall_ms=lambda: 1000)
    tables, clock = LwwTables(), HybridClock("p2", lambda: 1000)
    entries = tables.create_client(CID, "bob", "", (b"s", b"h"), 1, clock.now())
    change = {"origin": "p2", "entries": [entry_to_wire(e) for e in entries]}
    messages = data.draw(arriving([change, {"origin": "p3"}]))

    async def run() -> None:
        assert isinstance(store.bus, MemoryBus)
        await store.bus.connect()
        for message in messages:
            await store._on_changes("topic", message)
            await store._on_snapshot_request("topic", message)
        await store._on_changes("topic", change)
        assert store.tables.client(CID) is not None
        await store.create_client(1, "carol", "", "token")
        assert store.tables.client(1) is not None

    asyncio.run(run())
