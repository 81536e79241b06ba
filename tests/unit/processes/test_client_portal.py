"""The client portal over real sockets: every op, every error, and clients that misbehave.

The portal runs in this process on a free port, on LocalStores joined by an
in-memory bus; every test talks to it through real TCP connections. Every
wait has a deadline, so a portal that fails to answer or to close fails the
test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from backend.adapters.bus.memory import MemoryHub
from backend.adapters.bus.publisher import Publisher
from backend.adapters.store.local_store import LocalStore
from backend.adapters.store.ring_store import RingStore
from backend.core import topics
from backend.core.errors import TIMEOUT, UNAVAILABLE, OpError
from backend.core.metrics import RequestMetrics
from backend.core.model.identity import cid_for_name, format_cid
from backend.core.ring.cache_core import CacheNode
from backend.processes.client_connection import Limits
from backend.processes.client_portal import ClientPortal, serve_client_portal
from tests.support.waiting import eventually

DEADLINE = 5.0
TOKEN = "alice-token-0123456789abcdef"


class Peer:
    """One client connection: send lines, read lines, all with deadlines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 0

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> Peer:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, *requests: dict[str, Any] | bytes) -> None:
        for request in requests:
            raw = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
            self.writer.write(raw)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            raw = await self.reader.readline()
        assert raw.endswith(b"\n"), f"connection closed or line cut: {raw!r}"
        return json.loads(raw)

    async def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.send({"id": self.next_id, "op": op, **arguments})
        response = await self.recv()
        assert response["id"] == self.next_id, response
        return response

    async def closed_by_portal(self, within: float = DEADLINE) -> bytes:
        """Wait for end of stream; return whatever arrived before it."""
        async with asyncio.timeout(within):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.close()


@dataclass
class World:
    hub: MemoryHub
    store: LocalStore
    portal: ClientPortal
    metrics: RequestMetrics
    cid: str
    peers: list[Peer]
    ring: InProcessRing | None = None

    @property
    def port(self) -> int:
        return self.portal.address[1]

    async def connect(self, rcvbuf: int | None = None) -> Peer:
        peer = await Peer.connect(self.port, rcvbuf)
        self.peers.append(peer)
        return peer

    async def authed(self, cid: str | None = None, token: str = TOKEN) -> Peer:
        peer = await self.connect()
        assert (await peer.call("auth", cid=cid or self.cid, token=token))["ok"]
        return peer


async def make_store(hub: MemoryHub, portal_id: str, cls: type = LocalStore):
    bus = hub.attach()
    store = cls(bus, portal_id)
    await bus.connect()
    return store


class InProcessRing:
    """Two cache nodes on the in-memory bus, driven by the same core as the real process."""

    def __init__(self, hub: MemoryHub, count: int = 2) -> None:
        loop = asyncio.get_running_loop()
        self.nodes = [
            CacheNode(f"cache-{n}", incarnation="t", vnodes=4, bootstrap=n == 1, join_wait=0.05,
                      now=loop.time(), seed=n)
            for n in range(1, count + 1)
        ]  # fmt: skip
        self.ticker: asyncio.Task[None] | None = None
        self.publishers = []
        for node in self.nodes:
            bus = hub.attach()
            publisher = Publisher(bus)
            self.publishers.append((bus, publisher))
            handler = self._handler(node, publisher)
            bus.subscribe(topics.ring_host(node.id), handler)
            bus.subscribe(topics.RING_ANNOUNCE, handler)

    @staticmethod
    def _handler(node: CacheNode, publisher: Publisher):
        async def on_message(topic: str, message: dict) -> None:
            publisher.send(node.receive(topic, message, asyncio.get_running_loop().time()))

        return on_message

    async def start(self) -> None:
        for bus, _ in self.publishers:
            await bus.connect()
        self.ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for node, (_, publisher) in zip(self.nodes, self.publishers, strict=True):
                publisher.send(node.tick(loop.time()))
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()


async def start_world(
    limits: Limits | None = None, store_class: type = LocalStore, storage: str = "local"
) -> World:
    hub = MemoryHub()
    ring = None
    if storage == "ring":
        ring = InProcessRing(hub)
        await ring.start()
        store_class = RingStore
    store = await make_store(hub, "portal-a", store_class)
    if ring is not None:
        await eventually(
            lambda: store.readiness() is None and all(n.member for n in ring.nodes),
            "the in-process ring to form",
            DEADLINE,
        )
    cid = cid_for_name("alice")
    await store.create_client(cid, "alice", "", TOKEN)
    metrics = RequestMetrics()
    portal = await serve_client_portal(store, "127.0.0.1", 0, "portal-a", metrics, limits)
    return World(hub, store, portal, metrics, format_cid(cid), [], ring)


# Over the ring each test first waits about half a second for the in-process ring to
# form; across every test here that is most of this file's time, hence `slow`.
@pytest.fixture(params=["local", pytest.param("ring", marks=pytest.mark.slow)])
async def world(request) -> AsyncIterator[World]:
    """The portal over each storage mode: the contract is the same for both."""
    w = await start_world(storage=request.param)
    yield w
    await stop_world(w)


async def stored_state(w: World) -> tuple:
    """Everything stored, read through the store's own interface (works in both modes)."""
    state = []
    for client in await w.store.list_clients(None, 1000):
        state.append((client, tuple(await w.store.list_tasks(client.cid))))
    return tuple(state)


async def stop_world(w: World) -> None:
    for peer in w.peers:
        peer.close()
    await w.portal.close()
    if w.ring is not None:
        w.ring.stop()


def error_code(response: dict[str, Any]) -> str:
    assert response["ok"] is False, response
    assert set(response) == {"id", "ok", "error"} and response["error"]["message"]
    return response["error"]["code"]


# ---- every op ------------------------------------------------------------------------


async def test_ping_needs_no_auth_and_trace_names_the_portal(world: World) -> None:
    peer = await world.connect()
    assert await peer.call("ping") == {"id": 1, "ok": True, "pong": True}
    traced = await peer.call("ping", trace=True)
    assert traced["trace"] == {"route": ["portal-a"], "owner": "portal-a", "group": "local"}


async def test_the_task_ops_do_what_the_contract_says(world: World) -> None:
    peer = await world.authed()
    cid = world.cid
    assert await peer.call("insert_task", cid=cid, title="b", description="two") == {
        "id": 2,
        "ok": True,
    }
    await peer.call("insert_task", cid=cid, title="a", description="one")
    await peer.call("insert_task", cid=cid, title="ünï 😀", description="")
    assert (await peer.call("update_task", cid=cid, title="a", description="uno"))["ok"]
    listed = await peer.call("list_tasks", cid=cid)
    assert listed["tasks"] == [
        {"title": "b", "description": "two"},
        {"title": "a", "description": "uno"},
        {"title": "ünï 😀", "description": ""},
    ]
    assert (await peer.call("delete_task", cid=cid, title="b"))["ok"]
    assert await peer.call("delete_tasks", cid=cid) == {"id": 8, "ok": True, "deleted": 2}
    assert (await peer.call("list_tasks", cid=cid))["tasks"] == []


async def test_ids_of_every_json_scalar_kind_are_echoed(world: World) -> None:
    peer = await world.connect()
    for request_id in ["x", "", 0, -5, 2**70, 1.5, True, False, None]:
        await peer.send({"id": request_id, "op": "ping"})
        assert (await peer.recv())["id"] == request_id
    await peer.send({"op": "ping"})
    assert (await peer.recv())["id"] is None


async def test_exists_and_not_found(world: World) -> None:
    peer = await world.authed()
    cid = world.cid
    await peer.call("insert_task", cid=cid, title="t", description="d")
    assert error_code(await peer.call("insert_task", cid=cid, title="t", description="x")) == (
        "exists"
    )
    assert error_code(await peer.call("update_task", cid=cid, title="no", description="")) == (
        "not_found"
    )
    assert error_code(await peer.call("delete_task", cid=cid, title="no")) == "not_found"
    assert (await peer.call("list_tasks", cid=cid))["tasks"] == [{"title": "t", "description": "d"}]


# ---- who may do what -----------------------------------------------------------------


async def test_every_op_but_ping_and_auth_needs_auth(world: World) -> None:
    peer = await world.connect()
    cid = world.cid
    for op, args in [
        ("insert_task", {"title": "t", "description": ""}),
        ("update_task", {"title": "t", "description": ""}),
        ("list_tasks", {}),
        ("delete_task", {"title": "t"}),
        ("delete_tasks", {}),
        ("watch", {}),
    ]:
        response = await peer.call(op, cid=cid, **args)
        assert error_code(response) == "unauthorized", op
        assert "send auth" in response["error"]["message"]
    assert await world.store.list_tasks(cid_for_name("alice")) == []


async def test_wrong_token_and_unknown_cid_are_told_alike(world: World) -> None:
    peer = await world.connect()
    wrong = await peer.call("auth", cid=world.cid, token="nope")
    unknown = await peer.call("auth", cid="0123456789abcdef", token=TOKEN)
    assert error_code(wrong) == error_code(unknown) == "unauthorized"
    assert wrong["error"] == unknown["error"]


async def test_a_connection_acts_only_for_the_cid_it_is_bound_to(world: World) -> None:
    bob = cid_for_name("bob")
    await world.store.create_client(bob, "bob", "", "bob-token")
    peer = await world.authed()
    denied = await peer.call("list_tasks", cid=format_cid(bob))
    assert error_code(denied) == "unauthorized"
    assert f"authenticated as {world.cid}" in denied["error"]["message"]
    assert (await peer.call("auth", cid=format_cid(bob), token="bob-token"))["ok"]
    assert (await peer.call("list_tasks", cid=format_cid(bob)))["ok"]
    assert error_code(await peer.call("list_tasks", cid=world.cid)) == "unauthorized"


async def test_a_failed_auth_unbinds_the_connection(world: World) -> None:
    peer = await world.authed()
    assert error_code(await peer.call("auth", cid=world.cid, token="wrong")) == "unauthorized"
    assert error_code(await peer.call("list_tasks", cid=world.cid)) == "unauthorized"


async def test_a_rotated_token_stops_working_on_open_connections(world: World) -> None:
    peer = await world.authed()
    await world.store.rotate_token(cid_for_name("alice"), "new-token")
    response = await peer.call("list_tasks", cid=world.cid)
    assert error_code(response) == "unauthorized"
    assert "auth again" in response["error"]["message"]
    assert (await peer.call("auth", cid=world.cid, token="new-token"))["ok"]
    assert (await peer.call("list_tasks", cid=world.cid))["ok"]


async def test_a_deleted_client_can_write_no_more(world: World) -> None:
    peer = await world.authed()
    await world.store.delete_client(cid_for_name("alice"))
    response = await peer.call("insert_task", cid=world.cid, title="t", description="")
    assert error_code(response) == "unauthorized"


# ---- malformed input -----------------------------------------------------------------

BAD_LINES = [
    b"garbage\n",
    b"\xff\xfe\x00\x01\n",
    b"\n",
    b"[1,2,3]\n",
    b'{"op": "ping"\n',
    b'{"id": {"a": 1}, "op": "ping"}\n',
    b'{"id": 1, "op": "explode"}\n',
    b'{"id": 1, "op": 42}\n',
    b'{"id": 1}\n',
    b'{"id": 1, "op": "insert_task", "cid": "XYZ", "title": "t", "description": ""}\n',
    b'{"id": 1, "op": "insert_task", "cid": "%s", "title": 5, "description": ""}\n',
    b'{"id": 1, "op": "insert_task", "cid": "%s", "title": "", "description": ""}\n',
    b'{"id": 1, "op": "insert_task", "cid": "%s", "title": "a\\u0000", "description": ""}\n',
    b'{"id": 1, "op": "insert_task", "cid": "%s", "title": "\\ud800", "description": ""}\n',
    b'{"id": 1, "op": "ping", "trace": 1}\n',
    b'{"id": 1, "op": "ping", "x": NaN}\n',
    b"[" * 60_000 + b"\n",
]


async def test_each_malformed_line_gets_bad_request_and_the_connection_stays_usable(
    world: World,
) -> None:
    peer = await world.authed()
    await peer.call("insert_task", cid=world.cid, title="keep", description="me")
    before = await stored_state(world)
    for raw in BAD_LINES:
        line = raw.replace(b"%s", world.cid.encode()) if b"%s" in raw else raw
        await peer.send(line)
        response = await peer.recv()
        assert error_code(response) == "bad_request", line[:80]
        assert (await peer.call("ping"))["pong"] is True
    assert await stored_state(world) == before
    tasks = (await peer.call("list_tasks", cid=world.cid))["tasks"]
    assert tasks == [{"title": "keep", "description": "me"}]


async def test_bad_request_keeps_a_usable_id_and_names_the_problem(world: World) -> None:
    peer = await world.authed()
    title = "x" * 300
    response = await peer.call("insert_task", cid=world.cid, title=title, description="")
    assert response["error"] == {
        "code": "bad_request",
        "message": "title must be 1 to 256 bytes of UTF-8, got 300 bytes",
    }


async def test_random_garbage_never_breaks_the_portal(world: World) -> None:
    import random

    rng = random.Random(20240607)
    peer = await world.connect()
    lines = 0
    for _ in range(50):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        lines += blob.count(b"\n")
        await peer.send(blob)
    await peer.send(b"\n")
    for _ in range(lines + 1):
        assert error_code(await peer.recv()) == "bad_request"
    assert (await peer.call("ping"))["pong"]


async def test_mutated_requests_get_contract_answers_and_the_connection_stays(
    world: World,
) -> None:
    import random

    from backend.core.errors import CODES

    rng = random.Random(20261207)
    peer = await world.authed()
    templates: list[dict[str, Any]] = [
        {"op": "insert_task", "cid": world.cid, "title": "t", "description": "d"},
        {"op": "update_task", "cid": world.cid, "title": "t", "description": "e"},
        {"op": "list_tasks", "cid": world.cid, "trace": True},
        {"op": "delete_task", "cid": world.cid, "title": "t"},
        {"op": "delete_tasks", "cid": world.cid},
        {"op": "ping"},
        {"op": "watch", "cid": world.cid},
    ]
    lines = []
    for n in range(300):
        raw = bytearray(json.dumps({"id": n, **rng.choice(templates)}).encode())
        for _ in range(rng.randrange(4)):  # flip, drop or insert a few bytes
            at = rng.randrange(len(raw))
            choice = rng.randrange(3)
            if choice == 0:
                raw[at] ^= 1 << rng.randrange(8)
            elif choice == 1:
                del raw[at]
            else:
                raw.insert(at, rng.choice(b'"{}[],:\\\x00\xff '))
        lines.append(bytes(raw).replace(b"\n", b"") + b"\n")
    await peer.send(b"".join(lines))
    answers = 0
    while answers < len(lines):
        message = await peer.recv()
        if "ok" not in message:
            continue  # an event: its own changes, watched
        answers += 1
        assert message["ok"] is True or message["error"]["code"] in CODES, message
        assert message["ok"] is True or message["error"]["code"] != "internal", message
    assert (await peer.call("ping"))["pong"]


# ---- too large -----------------------------------------------------------------------


def padded_ping(size: int, request_id: int = 1) -> bytes:
    """A valid ping request line of exactly `size` bytes before its newline."""
    body = json.dumps({"id": request_id, "op": "ping"}).encode()
    return body + b" " * (size - len(body)) + b"\n"


async def test_a_line_of_65536_bytes_is_answered(world: World) -> None:
    peer = await world.connect()
    await peer.send(padded_ping(65_536))
    assert (await peer.recv())["pong"] is True


async def test_a_line_of_65537_bytes_gets_too_large_and_the_connection_closes(
    world: World,
) -> None:
    peer = await world.connect()
    await peer.send(padded_ping(100, 1) + padded_ping(65_537, 2) + padded_ping(100, 3))
    assert (await peer.recv())["id"] == 1
    response = await peer.recv()
    assert response["id"] is None and error_code(response) == "too_large"
    assert await peer.closed_by_portal() == b""
    assert world.metrics.counts[("invalid", "too_large")] == 1


async def test_too_large_is_noticed_without_a_newline_and_while_still_sending(
    world: World,
) -> None:
    peer = await world.connect()
    peer.writer.write(b"x" * 300_000)  # no newline at all; the portal must not wait for one
    response = await peer.recv()
    assert error_code(response) == "too_large"
    assert await peer.closed_by_portal() == b""


async def test_changes_while_a_watcher_is_being_closed_for_too_large_still_succeed(
    world: World,
) -> None:
    watcher = await world.authed()
    await watcher.call("watch", cid=world.cid)
    watcher.writer.write(b"x" * 70_000)
    assert error_code(await watcher.recv()) == "too_large"
    writer = await world.authed()  # the portal is still swallowing the watcher's bytes
    response = await writer.call("insert_task", cid=world.cid, title="t", description="")
    assert response == {"id": 2, "ok": True}
    assert await watcher.closed_by_portal() == b""


# ---- pipelining and ordering ---------------------------------------------------------


async def test_100_pipelined_requests_come_back_in_order(world: World) -> None:
    peer = await world.authed()
    requests = []
    for n in range(100):
        if n % 3 == 0:
            requests.append({"id": n, "op": "insert_task", "cid": world.cid, "title": f"t{n}",
                             "description": str(n)})  # fmt: skip
        elif n % 3 == 1:
            requests.append({"id": n, "op": "list_tasks", "cid": world.cid})
        else:
            requests.append({"id": f"n{n}", "op": "delete_task", "cid": world.cid, "title": "no"})
    peer.writer.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
    responses = [await peer.recv() for _ in requests]
    assert [r["id"] for r in responses] == [r["id"] for r in requests]
    assert [len(r["tasks"]) for r in responses[1::3]] == list(range(1, 34))
    assert all(error_code(r) == "not_found" for r in responses[2::3])


async def test_pipelined_bad_lines_get_their_answers_in_place(world: World) -> None:
    peer = await world.connect()
    await peer.send(b'{"id":1,"op":"ping"}\nnot json\n{"id":3,"op":"ping"}\n')
    assert [(await peer.recv())["id"] for _ in range(3)] == [1, None, 3]


class GatedStore(LocalStore):
    """A LocalStore whose list_tasks waits until the test opens the gate."""

    gate: asyncio.Event

    async def list_tasks(self, cid: int) -> list:
        await self.gate.wait()
        return await super().list_tasks(cid)


async def test_answers_to_lines_read_together_go_out_together() -> None:
    w = await start_world(store_class=GatedStore)
    store = w.store
    assert isinstance(store, GatedStore)
    try:
        store.gate = asyncio.Event()
        peer = await w.authed()
        lines = [{"id": 1, "op": "ping"}, {"id": 2, "op": "list_tasks", "cid": w.cid}]
        await peer.send(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        # The ping is answered at once but kept back while the list waits on the store.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await peer.reader.readline()
        store.gate.set()
        assert [(await peer.recv())["id"] for _ in range(2)] == [1, 2]
    finally:
        await stop_world(w)


# ---- watch ---------------------------------------------------------------------------


async def test_watch_gets_every_change_from_another_connection_in_order(world: World) -> None:
    watcher = await world.authed()
    writer = await world.authed()
    cid = world.cid
    assert await watcher.call("watch", cid=cid) == {"id": 2, "ok": True}
    await writer.call("insert_task", cid=cid, title="a", description="1")
    await writer.call("update_task", cid=cid, title="a", description="2")
    await writer.call("insert_task", cid=cid, title="b", description="3")
    await writer.call("delete_task", cid=cid, title="a")
    await writer.call("delete_tasks", cid=cid)
    events = [await watcher.recv() for _ in range(5)]
    assert events == [
        {"event": "task_inserted", "cid": cid, "title": "a", "description": "1"},
        {"event": "task_updated", "cid": cid, "title": "a", "description": "2"},
        {"event": "task_inserted", "cid": cid, "title": "b", "description": "3"},
        {"event": "task_deleted", "cid": cid, "title": "a"},
        {"event": "tasks_cleared", "cid": cid},
    ]


async def test_watch_sees_changes_made_through_another_portal(world: World) -> None:
    other_store = await make_store(world.hub, "portal-b", type(world.store))
    other = await serve_client_portal(other_store, "127.0.0.1", 0, "portal-b")
    try:
        watcher = await world.authed()
        await watcher.call("watch", cid=world.cid)
        peer = await Peer.connect(other.address[1])
        world.peers.append(peer)
        assert (await peer.call("auth", cid=world.cid, token=TOKEN))["ok"]
        await peer.call("insert_task", cid=world.cid, title="remote", description="hi")
        assert await watcher.recv() == {
            "event": "task_inserted", "cid": world.cid, "title": "remote", "description": "hi"
        }  # fmt: skip
    finally:
        await other.close()


async def test_events_and_responses_interleave_as_whole_lines(world: World) -> None:
    watcher = await world.authed()
    writer = await world.authed()
    await watcher.call("watch", cid=world.cid)
    pings = [{"id": n, "op": "ping"} for n in range(200)]
    for n in range(200):
        await writer.send({"id": n, "op": "insert_task", "cid": world.cid, "title": f"t{n}",
                           "description": "d" * 500})  # fmt: skip
    await watcher.send(*pings)
    responses: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    while len(responses) < 200 or len(events) < 200:
        line = await watcher.recv()  # each one parses as JSON: no line was cut by another
        (events if "event" in line else responses).append(line)
    assert [r["id"] for r in responses] == list(range(200))
    assert [e["title"] for e in events] == [f"t{n}" for n in range(200)]


async def test_a_closed_watcher_is_unsubscribed(world: World) -> None:
    watcher = await world.authed()
    await watcher.call("watch", cid=world.cid)
    assert world.store.watchers.sinks
    watcher.close()
    await eventually(lambda: not world.store.watchers.sinks, "the watch to be dropped", DEADLINE)


async def test_watching_twice_delivers_each_event_once(world: World) -> None:
    watcher = await world.authed()
    await watcher.call("watch", cid=world.cid)
    await watcher.call("watch", cid=world.cid)
    await world.store.insert_task(cid_for_name("alice"), "once", "")
    assert (await watcher.recv())["title"] == "once"
    assert await watcher.call("ping") == {"id": 4, "ok": True, "pong": True}


async def test_client_deleted_is_delivered_then_the_connection_is_unbound(world: World) -> None:
    watcher = await world.authed()
    await watcher.call("watch", cid=world.cid)
    await world.store.delete_client(cid_for_name("alice"))
    assert await watcher.recv() == {"event": "client_deleted", "cid": world.cid}
    assert error_code(await watcher.call("list_tasks", cid=world.cid)) == "unauthorized"
    assert not world.store.watchers.sinks


async def test_rebinding_to_another_client_ends_the_watch(world: World) -> None:
    bob = cid_for_name("bob")
    await world.store.create_client(bob, "bob", "", "bob-token")
    watcher = await world.authed()
    await watcher.call("watch", cid=world.cid)
    await watcher.call("auth", cid=format_cid(bob), token="bob-token")
    await world.store.insert_task(cid_for_name("alice"), "secret", "")
    assert await watcher.call("ping") == {"id": 4, "ok": True, "pong": True}


@pytest.mark.parametrize(
    ("storage", "revalidate"),
    # With no token check of its own for a minute, the rotation must reach it in order;
    # with a check before every event, either may end the watch first.
    [("local", 60.0), ("ring", 60.0), ("local", 0.0)],
)
async def test_a_watcher_gets_no_event_after_its_token_is_rotated(
    storage: str, revalidate: float
) -> None:
    w = await start_world(Limits(revalidate_interval=revalidate), storage=storage)
    try:
        watcher = await w.authed()
        await watcher.call("watch", cid=w.cid)
        alice = cid_for_name("alice")
        await w.store.insert_task(alice, "before", "")
        assert (await watcher.recv())["title"] == "before"
        await w.store.rotate_token(alice, "new-token")
        await w.store.insert_task(alice, "after", "")
        assert await watcher.closed_by_portal() == b""  # nothing more: no "after", no rotation
        assert not w.store.watchers.sinks
    finally:
        await stop_world(w)


# ---- clients that misbehave ----------------------------------------------------------


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    w = await start_world(Limits(idle_timeout=0.3))
    try:
        peer = await w.connect()
        assert (await peer.call("ping"))["ok"]
        started = time.monotonic()
        assert await peer.closed_by_portal() == b""
        assert time.monotonic() - started >= 0.25
    finally:
        await stop_world(w)


async def test_a_half_open_connection_that_never_sends_is_closed() -> None:
    w = await start_world(Limits(idle_timeout=0.3))
    try:
        peer = await w.connect()
        await eventually(lambda: len(w.portal.connections) == 1, "the portal to accept", DEADLINE)
        assert await peer.closed_by_portal() == b""
        await eventually(lambda: not w.portal.connections, "the portal to let go of it", DEADLINE)
    finally:
        await stop_world(w)


async def test_a_watching_connection_is_not_idle() -> None:
    w = await start_world(Limits(idle_timeout=0.2))
    try:
        watcher = await w.authed()
        await watcher.call("watch", cid=w.cid)
        await asyncio.sleep(0.6)  # three idle timeouts pass with nothing sent
        await w.store.insert_task(cid_for_name("alice"), "still here", "")
        assert (await watcher.recv())["title"] == "still here"
    finally:
        await stop_world(w)


async def test_a_slow_loris_sending_one_byte_at_a_time_is_cut_off() -> None:
    w = await start_world(Limits(idle_timeout=60.0, line_timeout=0.5))
    try:
        peer = await w.connect()
        started = time.monotonic()
        closed = False
        for byte in b'{"op": "ping", "padding": "' + b"x" * 200:
            peer.writer.write(bytes([byte]))
            await asyncio.sleep(0.02)
            if not w.portal.connections:
                closed = True
                break
        assert closed, "the portal kept a line open for 4+ seconds"
        assert 0.45 <= time.monotonic() - started < 3.0
    finally:
        await stop_world(w)


async def test_a_partial_line_then_silence_is_closed_by_the_line_timeout() -> None:
    w = await start_world(Limits(idle_timeout=60.0, line_timeout=0.3))
    try:
        peer = await w.connect()
        await peer.send(b'{"id": 1, "op": "ping"}\n{"op": "pi')
        assert (await peer.recv())["id"] == 1
        assert await peer.closed_by_portal(within=3.0) == b""
    finally:
        await stop_world(w)


async def stuck_watchers_and_a_reader(w: World, stuck: int = 1) -> asyncio.Task[None]:
    """`stuck` watchers of alice that never read (tiny receive buffers), and one that
    reads everything; returns the reading task, for the test to cancel."""
    for _ in range(stuck):
        peer = await Peer.connect(w.port, rcvbuf=4096)
        w.peers.append(peer)
        assert (await peer.call("auth", cid=w.cid, token=TOKEN))["ok"]
        await peer.call("watch", cid=w.cid)
    healthy = await w.authed()
    await healthy.call("watch", cid=w.cid)
    return asyncio.create_task(drain_forever(healthy))


async def fill_until_dropped(w: World, peer_count: int, title_prefix: str) -> None:
    """Make changes with big descriptions until the portal drops its non-reading watchers."""
    alice = cid_for_name("alice")
    for n in range(5_000):
        await w.store.insert_task(alice, f"{title_prefix}{n}", "x" * 16_000)
        if len(w.portal.connections) < peer_count:
            return
        await asyncio.sleep(0)
    raise AssertionError("the portal kept a watcher that never reads")


async def test_a_watcher_that_never_reads_is_dropped_at_the_hard_limit() -> None:
    limits = Limits(write_buffer=64 << 10, write_buffer_hard=256 << 10, stall_timeout=60.0)
    w = await start_world(limits)
    try:
        reading = await stuck_watchers_and_a_reader(w)
        await fill_until_dropped(w, 2, "t")
        reading.cancel()
        assert len(w.portal.connections) == 1
        assert len(w.store.watchers.sinks[cid_for_name("alice")]) == 1  # the reading watcher stays
    finally:
        await stop_world(w)


async def drain_forever(peer: Peer) -> None:
    while await peer.reader.read(1 << 16):
        pass


async def test_a_watcher_stuck_above_the_soft_limit_is_dropped_after_the_stall_timeout() -> None:
    limits = Limits(write_buffer=64 << 10, write_buffer_hard=1 << 30, stall_timeout=0.3)
    w = await start_world(limits)
    try:
        stuck = await Peer.connect(w.port, rcvbuf=4096)
        w.peers.append(stuck)
        assert (await stuck.call("auth", cid=w.cid, token=TOKEN))["ok"]
        await stuck.call("watch", cid=w.cid)
        alice = cid_for_name("alice")
        for n in range(2_000):  # enough to fill the kernel buffers, then the soft limit
            await w.store.insert_task(alice, f"s{n}", "x" * 16_000)
            if not w.portal.connections:
                break
        await eventually(
            lambda: not w.portal.connections, "the stuck watcher to be dropped", DEADLINE
        )
    finally:
        await stop_world(w)


@pytest.mark.slow
async def test_a_pipeliner_that_never_reads_does_not_hold_up_others() -> None:
    limits = Limits(write_buffer=64 << 10, stall_timeout=1.5)
    w = await start_world(limits)
    try:
        alice = cid_for_name("alice")
        for n in range(100):
            await w.store.insert_task(alice, f"t{n}", "x" * 10_000)  # 1 MB per list_tasks
        stuck = await Peer.connect(w.port, rcvbuf=4096)
        w.peers.append(stuck)
        await stuck.call("auth", cid=w.cid, token=TOKEN)
        listing = json.dumps({"op": "list_tasks", "cid": w.cid}).encode() + b"\n"
        stuck.writer.write(listing * 200)
        other = await w.connect()
        started = time.monotonic()
        assert (await other.call("ping"))["pong"]
        assert time.monotonic() - started < 1.0  # well before the stuck one is dropped
        await eventually(
            lambda: len(w.portal.connections) == 1, "the stuck client to be dropped", DEADLINE
        )
    finally:
        await stop_world(w)


async def test_200_concurrent_connections_each_get_their_answers(world: World) -> None:
    async def one(n: int) -> list[dict[str, Any]]:
        peer = await world.authed()
        await peer.call("insert_task", cid=world.cid, title=f"c{n}", description=str(n))
        return [await peer.call("ping"), await peer.call("list_tasks", cid=world.cid)]

    results = await asyncio.gather(*(one(n) for n in range(200)))
    assert all(ping["pong"] for ping, _ in results)
    titles = {t["title"] for t in (await (await world.authed()).call("list_tasks", cid=world.cid))[
        "tasks"]}  # fmt: skip
    assert titles == {f"c{n}" for n in range(200)}
    assert len(world.portal.connections) == 201


async def test_connections_beyond_the_limit_are_turned_away_with_unavailable() -> None:
    w = await start_world(Limits(max_connections=2))
    try:
        first, second = await w.connect(), await w.connect()
        assert (await first.call("ping"))["ok"] and (await second.call("ping"))["ok"]
        third = await w.connect()
        response = await third.recv()
        assert response["id"] is None and error_code(response) == "unavailable"
        assert await third.closed_by_portal() == b""
    finally:
        await stop_world(w)


async def test_closing_the_portal_ends_every_connection(world: World) -> None:
    peers = [await world.authed() for _ in range(5)]
    await peers[0].call("watch", cid=world.cid)
    await world.portal.close()
    for peer in peers:
        assert await peer.closed_by_portal() == b""
    assert not world.portal.connections and not world.store.watchers.sinks


# ---- store failures ------------------------------------------------------------------


class FailingStore(LocalStore):
    """A LocalStore whose task writes raise whatever the test sets."""

    failure: BaseException | None = None

    async def insert_task(self, cid: int, title: str, description: str) -> None:
        if self.failure is not None:
            raise self.failure
        await super().insert_task(cid, title, description)


@pytest.mark.parametrize("code", [UNAVAILABLE, TIMEOUT, "not_found", "exists", "internal"])
async def test_store_error_codes_pass_through(code: str) -> None:
    w = await start_world(store_class=FailingStore)
    try:
        assert isinstance(w.store, FailingStore)
        w.store.failure = OpError(code, f"the store said {code}")
        peer = await w.authed()
        response = await peer.call("insert_task", cid=w.cid, title="t", description="")
        assert response["error"] == {"code": code, "message": f"the store said {code}"}
        assert w.metrics.counts[("insert_task", code)] == 1
    finally:
        await stop_world(w)


async def test_an_unexpected_exception_answers_internal_and_the_connection_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = await start_world(store_class=FailingStore)
    try:
        assert isinstance(w.store, FailingStore)
        w.store.failure = RuntimeError("disk on fire")
        peer = await w.authed()
        with caplog.at_level(logging.ERROR):
            response = await peer.call("insert_task", cid=w.cid, title="t", description="")
        assert error_code(response) == "internal"
        assert "disk on fire" not in response["error"]["message"]
        assert any("disk on fire" in r.exc_text for r in caplog.records if r.exc_text)
        assert (await peer.call("ping"))["pong"]
    finally:
        await stop_world(w)


async def test_auth_passes_store_unavailability_through(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(cid: int, token: str) -> bool:
        raise OpError(UNAVAILABLE, "replica group has no majority")

    monkeypatch.setattr(world.store, "authenticate", unavailable)
    peer = await world.connect()
    response = await peer.call("auth", cid=world.cid, token=TOKEN)
    assert error_code(response) == "unavailable"


# ---- metrics -------------------------------------------------------------------------


async def test_every_request_is_counted_by_op_and_outcome(world: World) -> None:
    peer = await world.authed()
    await peer.call("ping")
    await peer.call("insert_task", cid=world.cid, title="t", description="")
    await peer.call("insert_task", cid=world.cid, title="t", description="")
    await peer.send(b"nonsense\n")
    await peer.recv()
    await peer.call("list_tasks", cid="0000000000000000")
    counts = world.metrics.counts
    assert counts[("auth", "ok")] == 1 and counts[("ping", "ok")] == 1
    assert counts[("insert_task", "ok")] == 1 and counts[("insert_task", "exists")] == 1
    assert counts[("invalid", "bad_request")] == 1
    assert counts[("list_tasks", "unauthorized")] == 1
    assert sum(world.metrics.buckets["insert_task"]) == 2


# ---- floods --------------------------------------------------------------------------


async def test_connections_beyond_the_per_address_limit_are_turned_away_naming_it() -> None:
    w = await start_world(Limits(max_connections_per_ip=2))
    try:
        first, second = await w.connect(), await w.connect()
        assert (await first.call("ping"))["ok"] and (await second.call("ping"))["ok"]
        third = await w.connect()
        response = await third.recv()
        assert response["id"] is None and error_code(response) == "unavailable"
        assert "--max-connections-per-ip" in response["error"]["message"]
        assert await third.closed_by_portal() == b""
        first.close()
        await eventually(lambda: len(w.portal.connections) == 1, "the portal to let go", DEADLINE)
        assert (await (await w.connect()).call("ping"))["ok"]  # a freed place is taken again
    finally:
        await stop_world(w)


@pytest.mark.slow
async def test_an_unauthenticated_connection_is_closed_after_the_auth_timeout_with_a_line() -> None:
    w = await start_world(Limits(auth_timeout=0.3))
    try:
        silent = await w.connect()
        pinging = await w.connect()
        authed = await w.authed()
        started = time.monotonic()
        for _ in range(4):  # any request line starts the wait again
            await asyncio.sleep(0.15)
            assert (await pinging.call("ping"))["ok"]
        response = await silent.recv()
        assert response["id"] is None and error_code(response) == "unauthorized"
        assert "no auth within 0.3s" in response["error"]["message"]
        assert await silent.closed_by_portal() == b""
        assert time.monotonic() - started >= 0.25
        await asyncio.sleep(0.4)
        assert (await authed.call("ping"))["ok"]  # an authenticated one keeps idle_timeout
    finally:
        await stop_world(w)


@pytest.mark.slow
async def test_failed_auths_from_one_address_are_slowed_and_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = await start_world(Limits(auth_failure_burst=3, auth_failure_rate=10.0))
    calls: list[float] = []
    authenticate = w.store.authenticate

    async def counted(cid: int, token: str) -> bool:
        calls.append(time.monotonic())
        return await authenticate(cid, token)

    monkeypatch.setattr(w.store, "authenticate", counted)
    try:
        guessers = [await w.connect() for _ in range(4)]
        bystander = await w.connect()
        bad = {"op": "auth", "cid": w.cid, "token": "guess"}
        for guesser in guessers:
            await guesser.send(bad, bad, bad)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert (await bystander.call("ping"))["ok"]
        assert time.monotonic() - started < 0.2  # nobody else waits for the guessers
        answers = [await g.recv() for g in guessers for _ in range(3)]
        assert {error_code(a) for a in answers} == {"unauthorized"}
        # 3 at once, the other 9 no faster than 10 a second
        assert len(calls) == 12 and calls[-1] - calls[3] >= 0.7
        right = await w.connect()  # the same address: a right token still gets in
        assert (await right.call("auth", cid=w.cid, token=TOKEN))["ok"]
    finally:
        await stop_world(w)


@pytest.mark.slow
async def test_a_watcher_that_never_reads_is_closed_at_its_watch_budget() -> None:
    limits = Limits(watch_buffer=64 << 10, write_buffer_hard=1 << 30, stall_timeout=60.0)
    w = await start_world(limits)
    try:
        reading = await stuck_watchers_and_a_reader(w)
        alice = cid_for_name("alice")
        budget = w.portal.context.watch_budget
        for n in range(5_000):
            await w.store.insert_task(alice, f"t{n}", "x" * 16_000)
            assert max(queued for _, queued in budget.queued.values()) <= (64 << 10) + 17_000
            if len(w.store.watchers.sinks[alice]) == 1:
                break
            await asyncio.sleep(0)
        assert len(w.store.watchers.sinks[alice]) == 1  # the reader stays
        await eventually(
            lambda: len(w.portal.connections) == 1, "the stuck one to be dropped", DEADLINE
        )
        reading.cancel()
    finally:
        await stop_world(w)


async def test_a_clients_watchers_that_never_read_are_closed_at_its_total_budget() -> None:
    limits = Limits(watch_buffer=1 << 30, watch_buffer_client=256 << 10,
                    write_buffer_hard=1 << 30, stall_timeout=60.0)  # fmt: skip
    w = await start_world(limits)
    try:
        reading = await stuck_watchers_and_a_reader(w, stuck=4)
        alice = cid_for_name("alice")
        budget = w.portal.context.watch_budget
        for n in range(5_000):
            await w.store.insert_task(alice, f"t{n}", "x" * 16_000)
            assert budget.by_client[alice] <= (256 << 10) + 5 * 17_000
            if len(w.store.watchers.sinks.get(alice, ())) == 1:
                break
            await asyncio.sleep(0)
        reading.cancel()
        assert len(w.store.watchers.sinks[alice]) == 1  # only the reader is left watching
    finally:
        await stop_world(w)
