"""The web process's bridges, against real processes: WS /ws/client and gRPC-Web.

Everything is real: Mosquitto, client portals, admin portals and `taskring
web`, each its own process on free ports. The WebSocket side speaks with the
`websockets` client, the gRPC-Web side with httpx and frames built by hand
here, decoded with the generated protobuf classes, so the test does not
share the bridge's own framing code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.heartbeats import run_heartbeat
from backend.adapters.settings import BrokerAddress
from backend.admin_pb import admin_pb2
from tests.conftest import Processes, free_port, port_open
from tests.e2e.stack import ADMIN_TOKEN, Stack, start_stack
from tests.support.waiting import log_text, wait_until

SERVICE = "/taskring.admin.v1.AdminService"
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
GRPC_WEB = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
MAX_LINE = 65_536


# ---- processes ------------------------------------------------------------------------


@dataclass
class Deployment:
    stack: Stack
    web: subprocess.Popen[bytes]
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/client"

    def cluster(self) -> dict[str, Any]:
        return httpx.get(self.http + "/api/cluster", timeout=5).json()

    def wait_for_portals(self, *ids: str) -> None:
        def listed() -> bool:
            return set(ids) <= {p["id"] for p in self.cluster()["portals"]}

        wait_until(listed, f"the web process to hear from {', '.join(ids)}", timeout=20)


def start_web(
    processes: Processes, stack: Stack, more_portals: tuple[int, ...] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """`taskring web`, allowed to use the stack's portals and those on `more_portals`."""
    port = free_port()
    ports = (*stack.client_ports, stack.admin_port, *more_portals)
    allow = ",".join(f"127.0.0.1:{p}" for p in ports)
    env = {**stack.env, "TASKRING_ALLOW_PORTALS": allow}
    web = processes.taskring("web", "--listen", f"127.0.0.1:{port}", name=f"web-{port}", env=env)
    wait_until(lambda: port_open(port), f"the web process on port {port}", timeout=20)
    return web, port


def deploy(processes: Processes, tmp_path: Path, more_portals: tuple[int, ...] = ()) -> Deployment:
    stack = start_stack(processes, tmp_path)
    web, port = start_web(processes, stack, more_portals)
    deployment = Deployment(stack, web, port)
    deployment.wait_for_portals("client-portal-1", "client-portal-2", "admin-portal-1")
    return deployment


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment for the tests that do not kill anything."""
    tmp_path = tmp_path_factory.mktemp("bridges")
    processes = Processes(tmp_path)
    try:
        yield deploy(processes, tmp_path)
    finally:
        processes.stop_all()


@pytest.fixture
def own(processes: Processes, tmp_path: Path) -> Deployment:
    """A deployment of this test's own, for tests that kill portals."""
    return deploy(processes, tmp_path)


def start_admin_portal(processes: Processes, stack: Stack, number: int, port: int) -> int:
    processes.taskring(
        "admin-portal", "--id", f"admin-portal-{number}", "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(processes.log_dir / "data"), name=f"admin-portal-{number}", env=stack.env,
    )  # fmt: skip
    wait_until(lambda: port_open(port), f"admin-portal-{number} on port {port}", timeout=20)
    return port


def kill_portal(processes: Processes, portal_id: str) -> None:
    """kill -9 the portal process started under that name."""
    for process in processes.started:
        if Path(process.log_path).stem == portal_id:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            return
    raise AssertionError(f"no process named {portal_id}")


# ---- WebSocket helpers -------------------------------------------------------------------


async def open_socket(deployment: Deployment) -> ClientConnection:
    return await connect(deployment.ws, max_size=None, open_timeout=10)


async def receive(ws: Connection, timeout: float = 10.0) -> str:
    async with asyncio.timeout(timeout):
        message = await ws.recv()
    assert isinstance(message, str), f"expected a text message, got {message!r}"
    return message


async def ask(ws: Connection, request: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(request))
    return json.loads(await receive(ws))


async def sign_in(ws: Connection, client: dict[str, Any]) -> None:
    reply = await ask(
        ws, {"id": "auth", "op": "auth", "cid": client["cid"], "token": client["token"]}
    )
    assert reply == {"id": "auth", "ok": True}, reply


async def closed_with(ws: Connection, timeout: float = 10.0) -> tuple[int, str]:
    """Wait for the server to close the socket; its close code and reason."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the connection ended without a close frame"
            return closed.rcvd.code, closed.rcvd.reason


async def tcp_exchange(port: int, lines: list[bytes]) -> list[bytes]:
    """Send lines straight to a client portal; its answers, one per line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(lines))
        async with asyncio.timeout(10):
            return [await reader.readline() for _ in lines]
    finally:
        writer.close()


# ---- WS /ws/client -------------------------------------------------------------------------


async def test_lines_pass_through_unchanged(shared: Deployment) -> None:
    requests = [
        '{"id": "é ✓", "op": "ping"}',
        '{"id": 7, "op": "no_such_op"}',
        '{"op": "list_tasks", "cid": "0000000000000000"}',
        "not json at all",
        "",
    ]
    direct = await tcp_exchange(
        shared.stack.client_ports[0], [r.encode() + b"\n" for r in requests]
    )
    async with await open_socket(shared) as ws:
        for request, expected in zip(requests, direct, strict=True):
            await ws.send(request)
            assert await receive(ws) == expected.decode().removesuffix("\n")
        # A trailing newline is the line's own end, not a second line.
        await ws.send('{"id": 1, "op": "ping"}\n')
        assert json.loads(await receive(ws)) == {"id": 1, "ok": True, "pong": True}


async def test_tasks_and_live_events_through_the_bridge(shared: Deployment) -> None:
    client = shared.stack.create_client("bridge-events")
    cid = client["cid"]
    async with await open_socket(shared) as watcher, await open_socket(shared) as writer:
        await sign_in(watcher, client)
        assert await ask(watcher, {"id": 1, "op": "watch", "cid": cid}) == {"id": 1, "ok": True}
        await sign_in(writer, client)
        reply = await ask(
            writer,
            {"id": 2, "op": "insert_task", "cid": cid, "title": "buy milk", "description": "2 l"},
        )
        assert reply == {"id": 2, "ok": True}
        event = json.loads(await receive(watcher))
        assert event == {
            "event": "task_inserted", "cid": cid, "title": "buy milk", "description": "2 l"
        }  # fmt: skip
        # A change made straight on a portal, not through the bridge, arrives too.
        auth = json.dumps({"op": "auth", "cid": cid, "token": client["token"]}).encode() + b"\n"
        delete = json.dumps({"op": "delete_tasks", "cid": cid}).encode() + b"\n"
        answers = await tcp_exchange(shared.stack.client_ports[1], [auth, delete])
        assert json.loads(answers[1])["deleted"] == 1
        assert json.loads(await receive(watcher)) == {"event": "tasks_cleared", "cid": cid}
        listed = await ask(writer, {"id": 3, "op": "list_tasks", "cid": cid, "trace": True})
        assert listed["tasks"] == [] and listed["trace"]["group"] == "local"


async def test_pipelined_requests_are_answered_in_order(shared: Deployment) -> None:
    async with await open_socket(shared) as ws:
        for number in range(200):
            await ws.send(json.dumps({"id": number, "op": "ping"}))
        ids = [json.loads(await receive(ws))["id"] for _ in range(200)]
    assert ids == list(range(200))


async def test_malformed_messages_get_bad_request_in_order(shared: Deployment) -> None:
    async with await open_socket(shared) as ws:
        # Many requests ahead of the bad ones, so an answer that jumped the queue would show.
        for number in range(100):
            await ws.send(json.dumps({"id": number, "op": "ping"}))
        await ws.send(b'{"id": 100, "op": "ping"}')  # binary: not a line of text
        await ws.send('{"id": 101,\n "op": "ping"}')  # two lines in one message
        await ws.send('{"id": 102, "op": "ping"')  # not JSON: the portal's own answer
        await ws.send('{"id": 103, "op": "ping"}')
        replies = [json.loads(await receive(ws)) for _ in range(104)]
    assert [r["id"] for r in replies] == [*range(100), None, 101, None, 103]
    assert all(r["ok"] for r in replies[:100]) and replies[103]["ok"]
    bad = replies[100:103]
    assert [(r["ok"], r["error"]["code"]) for r in bad] == [(False, "bad_request")] * 3
    assert "text message" in bad[0]["error"]["message"]
    assert "newline" in bad[1]["error"]["message"]
    assert "not valid JSON" in bad[2]["error"]["message"]


async def test_line_limit_is_the_protocols(shared: Deployment) -> None:
    async with await open_socket(shared) as ws:
        padding = MAX_LINE - len('{"id":1,"op":"ping","pad":""}')
        longest = '{"id":1,"op":"ping","pad":"' + "x" * padding + '"}'
        assert len(longest.encode()) == MAX_LINE
        await ws.send(longest)
        assert json.loads(await receive(ws)) == {"id": 1, "ok": True, "pong": True}
        await ws.send(longest[:-2] + 'x"}')
        reply = json.loads(await receive(ws))
        assert reply["ok"] is False and reply["error"]["code"] == "too_large"
        code, _ = await closed_with(ws)
    assert code == 1009


async def test_many_concurrent_sockets_spread_over_the_portals(shared: Deployment) -> None:
    client = shared.stack.create_client("bridge-crowd")
    cid = client["cid"]

    async def one(number: int) -> str:
        async with await open_socket(shared) as ws:
            await sign_in(ws, client)
            request = {"id": number, "op": "insert_task", "cid": cid, "title": f"task {number}"}
            reply = await ask(ws, request | {"description": "", "trace": True})
            assert reply["ok"] is True, reply
            return reply["trace"]["route"][0]

    portals = await asyncio.gather(*(one(n) for n in range(150)))
    assert set(portals) == {"client-portal-1", "client-portal-2"}
    async with await open_socket(shared) as ws:
        await sign_in(ws, client)

        # The portals converge over MQTT: look until all 150 are listed, for at most 10 s.
        for _ in range(200):
            listed = await ask(ws, {"id": "l", "op": "list_tasks", "cid": cid})
            if len(listed["tasks"]) == 150:
                break
            await asyncio.sleep(0.05)
        assert len(listed["tasks"]) == 150


async def test_no_reachable_portal_is_unavailable_and_1013(
    processes: Processes, tmp_path: Path
) -> None:
    stack = start_stack(processes, tmp_path, client_portals=1)
    web, port = start_web(processes, stack)
    deployment = Deployment(stack, web, port)
    deployment.wait_for_portals("client-portal-1")
    kill_portal(processes, "client-portal-1")
    async with await open_socket(deployment) as ws:
        await ws.send(json.dumps({"id": "p", "op": "ping"}))  # the bridge connects only now
        reply = json.loads(await receive(ws))
        code, reason = await closed_with(ws)
    assert reply["id"] == "p"
    assert reply["ok"] is False and reply["error"]["code"] == "unavailable"
    assert "no client portal is reachable" in reply["error"]["message"]
    assert code == 1013 and "no client portal" in reason


async def test_a_dead_portal_fails_over_to_the_other(processes: Processes, own: Deployment) -> None:
    client = own.stack.create_client("bridge-failover")
    cid = client["cid"]
    async with await open_socket(own) as ws:
        await sign_in(ws, client)
        reply = await ask(ws, {"id": 1, "op": "ping", "trace": True})
        victim = reply["trace"]["route"][0]
        kill_portal(processes, victim)
        code, reason = await closed_with(ws)
    assert code == 1012 and "reconnect" in reason
    # The dead portal still looks alive from its last heartbeats; new sockets go elsewhere.
    for number in range(6):
        async with await open_socket(own) as ws:
            await sign_in(ws, client)
            request = {"id": number, "op": "insert_task", "cid": cid, "title": f"after {number}"}
            reply = await ask(ws, request | {"description": "", "trace": True})
            assert reply["ok"] is True, reply
            assert reply["trace"]["route"][0] != victim


# ---- gRPC-Web -------------------------------------------------------------------------


def frame(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def unframe(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Data frames and the trailers of a gRPC-Web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        payload = body[offset + 5 : offset + 5 + length]
        assert len(payload) == length, "a truncated frame"
        offset += 5 + length
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def grpc_web(
    deployment: Deployment,
    rpc: str,
    request: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[list[bytes], int, str]:
    response = httpx.post(
        f"{deployment.http}{SERVICE}/{rpc}",
        content=frame(request),
        headers=GRPC_WEB | AUTH | (headers or {}),
        timeout=15,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/grpc-web+proto"
    messages, trailers = unframe(response.content)
    return messages, int(trailers["grpc-status"]), unquote(trailers.get("grpc-message", ""))


def create(deployment: Deployment, name: str, data: str = "") -> admin_pb2.Client:
    request = admin_pb2.CreateClientRequest(name=name, data=data).SerializeToString()
    messages, status, message = grpc_web(deployment, "CreateClient", request)
    assert status == 0, message
    return admin_pb2.Client.FromString(messages[0])


def test_grpc_web_round_trip(shared: Deployment) -> None:
    created = create(shared, "Grpc Web Ünïcode", "some data")
    assert len(created.cid) == 16 and len(created.token) >= 22
    assert created.name == "Grpc Web Ünïcode" and created.data == "some data"
    request = admin_pb2.GetClientRequest(cid=created.cid).SerializeToString()
    messages, status, _ = grpc_web(shared, "GetClient", request)
    fetched = admin_pb2.Client.FromString(messages[0])
    assert status == 0 and fetched.cid == created.cid and fetched.token == ""
    request = admin_pb2.UpdateClientRequest(cid=created.cid, data="new").SerializeToString()
    messages, status, _ = grpc_web(shared, "UpdateClient", request)
    assert status == 0 and admin_pb2.Client.FromString(messages[0]).data == "new"
    messages, status, _ = grpc_web(shared, "RotateToken", request)
    assert status == 0 and admin_pb2.Client.FromString(messages[0]).token != created.token
    messages, status, _ = grpc_web(shared, "ListClients", b"")
    listed = admin_pb2.ListClientsResponse.FromString(messages[0])
    assert status == 0 and created.cid in [c.cid for c in listed.clients]
    request = admin_pb2.DeleteClientRequest(cid=created.cid).SerializeToString()
    messages, status, _ = grpc_web(shared, "DeleteClient", request)
    assert status == 0 and len(messages) == 1
    messages, status, message = grpc_web(shared, "DeleteClient", request)
    assert (messages, status) == ([], 5) and message


def test_grpc_web_errors_travel_in_the_trailers(shared: Deployment) -> None:
    create(shared, "Taken Name")
    request = admin_pb2.CreateClientRequest(name="  taken name ").SerializeToString()
    messages, status, message = grpc_web(shared, "CreateClient", request)
    assert (messages, status) == ([], 6) and message
    messages, status, message = grpc_web(shared, "ListClients", b"", {"authorization": "Bearer no"})
    assert (messages, status) == ([], 16) and message
    messages, status, message = grpc_web(shared, "NoSuchRpc", b"")
    assert (messages, status) == ([], 12) and "NoSuchRpc" in message


def test_grpc_web_refuses_malformed_requests(shared: Deployment) -> None:
    url = f"{shared.http}{SERVICE}/ListClients"
    bodies = {
        b"\x00\x00\x00\x00\x09abc": 3,  # announces 9 bytes, holds 3
        b"\x00\x00": 3,  # no whole frame header
        frame(b"") + frame(b""): 3,  # two messages for a unary call
        frame(b"", flags=1): 12,  # compressed
        frame(b"", flags=0x80): 3,  # a trailer instead of a message
    }
    for body, expected in bodies.items():
        response = httpx.post(url, content=body, headers=GRPC_WEB | AUTH, timeout=10)
        _, trailers = unframe(response.content)
        assert response.status_code == 200
        assert int(trailers["grpc-status"]) == expected, (body, trailers)
    wrong_type = httpx.post(url, content=frame(b""), headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    huge = httpx.post(url, content=frame(b"x" * (2 << 20)), headers=GRPC_WEB | AUTH, timeout=10)
    assert int(unframe(huge.content)[1]["grpc-status"]) == 8


def test_grpc_web_text_is_base64(shared: Deployment) -> None:
    response = httpx.post(
        f"{shared.http}{SERVICE}/ListClients",
        content=base64.b64encode(
            frame(admin_pb2.ListClientsRequest(page_size=1).SerializeToString())
        ),
        headers={"content-type": "application/grpc-web-text"} | AUTH,
        timeout=10,
    )
    assert response.headers["content-type"] == "application/grpc-web-text+proto"
    messages, trailers = unframe(base64.b64decode(response.content))
    assert trailers["grpc-status"] == "0"
    assert len(admin_pb2.ListClientsResponse.FromString(messages[0]).clients) == 1


def test_grpc_web_message_is_percent_encoded(shared: Deployment) -> None:
    request = admin_pb2.GetClientRequest(cid="not a cid: ü%").SerializeToString()
    response = httpx.post(
        f"{shared.http}{SERVICE}/GetClient",
        content=frame(request),
        headers=GRPC_WEB | AUTH,
        timeout=10,
    )
    _, trailers = unframe(response.content)
    assert trailers["grpc-status"] == "3"
    assert all(0x20 <= ord(c) <= 0x7E for c in trailers["grpc-message"])
    assert "ü%" in unquote(trailers["grpc-message"])


def test_grpc_web_fails_over_to_another_admin_portal(processes: Processes, tmp_path: Path) -> None:
    second = free_port()
    own = deploy(processes, tmp_path, more_portals=(second,))
    start_admin_portal(processes, own.stack, 2, second)
    own.wait_for_portals("admin-portal-2")
    create(own, "before the crash")
    kill_portal(processes, "admin-portal-1")
    # At once, while admin-portal-1 still looks alive from its last heartbeats.
    created = create(own, "after the crash")
    assert len(created.token) >= 22
    kill_portal(processes, "admin-portal-2")
    messages, status, message = grpc_web(own, "ListClients", b"")
    assert (messages, status) == ([], 14)
    assert "admin portal" in message


async def test_web_stops_cleanly_with_bridges_open(processes: Processes, own: Deployment) -> None:
    client = own.stack.create_client("bridge-shutdown")
    create(own, "shutdown admin call")  # leaves a gRPC channel open in the web process
    async with await open_socket(own) as ws:
        await sign_in(ws, client)
        assert await ask(ws, {"id": 1, "op": "watch", "cid": client["cid"]}) == {
            "id": 1,
            "ok": True,
        }
        own.web.send_signal(signal.SIGTERM)
        code, _ = await closed_with(ws)
    assert code in (1001, 1012)  # going away / service restart: the browser reconnects
    assert await asyncio.to_thread(own.web.wait, 10) == 0
    log = log_text(own.web)
    assert "Traceback" not in log, log


# ---- what the bridges will not do ----------------------------------------------------------


class Recorder:
    """A TCP listener posing as a client portal: records every byte, answers every line ok."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while line := await reader.readline():
            self.received += line
            request_id = json.loads(line).get("id")
            writer.write(json.dumps({"id": request_id, "ok": True}).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_portal_heard_at_an_address_not_allowed_gets_no_traffic(
    shared: Deployment,
) -> None:
    """Anyone who may publish heartbeats could announce a client portal of their own; the
    bridge must never send it a browser's sign-in."""
    fake = Recorder()
    address = await fake.start()
    bus = MqttBus(BrokerAddress.parse(shared.stack.broker), "client-portal-fake")
    async with bus:
        beating = asyncio.create_task(
            run_heartbeat(bus, "client-portal", "client-portal-fake", address, lambda: None)
        )
        try:
            await asyncio.to_thread(shared.wait_for_portals, "client-portal-fake")
            for number in range(6):  # round robin would reach the fake at least twice
                async with await open_socket(shared) as ws:
                    auth = {"id": number, "op": "auth", "cid": "0" * 16, "token": "secret"}
                    reply = await ask(ws, auth)
                    assert reply["id"] == number and reply["ok"] is False, reply
        finally:
            beating.cancel()
            await fake.stop()
    assert (fake.connections, bytes(fake.received)) == (0, b"")


async def test_a_socket_from_another_origin_is_refused(shared: Deployment) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(shared.ws, additional_headers={"origin": "http://evil.example"})
    assert refused.value.response.status_code == 403
    same = {"origin": shared.http}
    async with await connect(shared.ws, additional_headers=same, open_timeout=10) as ws:
        assert await ask(ws, {"id": 1, "op": "ping"}) == {"id": 1, "ok": True, "pong": True}
