"""The pure parts of the web process's bridges: gRPC-Web framing, message checks, portal order."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.adapters.settings import ConfigError
from web.grpc_web import (
    FrameError,
    GrpcWebLimits,
    data_frame,
    decode_request,
    encode_grpc_message,
    parse_timeout,
    trailer_frame,
)
from web.security import origin_allowed, parse_origins
from web.server import WS_MAX_SIZE
from web.ws_bridge import (
    CLOSE_TOO_BIG,
    Answer,
    BridgeLimits,
    Forward,
    PortalChooser,
    check_message,
    close_reason,
    create_ws_router,
    is_response,
)

MAX_LINE = 65_536


# ---- gRPC-Web --------------------------------------------------------------------------


def frame(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def test_a_unary_request_is_one_data_frame() -> None:
    assert decode_request(frame(b"\x08\x01"), text=False) == b"\x08\x01"
    assert decode_request(frame(b""), text=False) == b""
    assert decode_request(base64.b64encode(frame(b"abc")), text=True) == b"abc"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 3, "no gRPC-Web frame"),
        (b"\x00\x00\x00", 3, "no gRPC-Web frame"),
        (b"\x00\x00\x00\x00\x05ab", 3, "announces 5 bytes but holds 2"),
        (frame(b"a") + frame(b"b"), 3, "exactly one message"),
        (frame(b"a", flags=0x80), 3, "trailer frame"),
        (frame(b"a", flags=0x01), 12, "compressed"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body: bytes, status: int, words: str) -> None:
    with pytest.raises(FrameError) as error:
        decode_request(body, text=False)
    assert error.value.status == status and words in str(error.value)


def test_text_mode_needs_base64() -> None:
    with pytest.raises(FrameError, match="base64"):
        decode_request(b"not base64!", text=True)


def test_response_frames() -> None:
    assert data_frame(b"xyz") == b"\x00\x00\x00\x00\x03xyz"
    trailer = trailer_frame(5, "no such client")
    assert trailer[0] == 0x80
    (length,) = struct.unpack(">I", trailer[1:5])
    assert trailer[5:] == b"grpc-status:5\r\ngrpc-message:no such client\r\n"
    assert length == len(trailer) - 5


def test_grpc_message_is_percent_encoded_as_the_spec_says() -> None:
    assert encode_grpc_message("plain text: ok (1/2)!") == "plain text: ok (1/2)!"
    assert encode_grpc_message("ü 100%\r\n") == "%C3%BC 100%25%0D%0A"


def test_grpc_timeout_header() -> None:
    limits = GrpcWebLimits(default_deadline=10.0, max_deadline=60.0)
    assert parse_timeout(None, limits) == 10.0
    assert parse_timeout("5S", limits) == 5.0
    assert parse_timeout("250m", limits) == 0.25
    assert parse_timeout("2H", limits) == 60.0
    with pytest.raises(FrameError, match="grpc-timeout"):
        parse_timeout("soon", limits)


# ---- WebSocket messages ---------------------------------------------------------------------


def test_a_text_line_is_forwarded_unchanged_with_its_newline() -> None:
    assert check_message({"text": '{"op":"ping"}'}) == Forward(b'{"op":"ping"}\n')
    assert check_message({"text": '{"op":"ping"}\n'}) == Forward(b'{"op":"ping"}\n')
    assert check_message({"text": "not json"}) == Forward(b"not json\n")  # the portal says why
    assert check_message({"text": "é"}) == Forward("é\n".encode())


def test_binary_and_multi_line_messages_are_answered_by_the_bridge() -> None:
    binary = check_message({"bytes": b'{"op":"ping"}'})
    assert isinstance(binary, Answer) and binary.close_code is None
    assert json.loads(binary.line)["error"]["code"] == "bad_request"
    two_lines = check_message({"text": '{"id": "x",\n"op": "ping"}'})
    assert isinstance(two_lines, Answer) and two_lines.close_code is None
    reply = json.loads(two_lines.line)
    assert reply["id"] == "x" and reply["error"]["code"] == "bad_request"


def test_the_line_limit_is_the_protocols() -> None:
    assert isinstance(check_message({"text": "x" * MAX_LINE}), Forward)
    too_long = check_message({"text": "x" * (MAX_LINE + 1)})
    assert isinstance(too_long, Answer) and too_long.close_code == CLOSE_TOO_BIG
    assert json.loads(too_long.line)["error"]["code"] == "too_large"
    # The limit counts bytes, not characters.
    assert isinstance(check_message({"text": "é" * (MAX_LINE // 2 + 1)}), Answer)


def test_events_are_told_from_responses() -> None:
    assert is_response(b'{"id":1,"ok":true}\n')
    assert is_response(b'{"id":null,"ok":false,"error":{"code":"bad_request","message":"m"}}\n')
    assert not is_response(b'{"event":"tasks_cleared","cid":"0000000000000000"}\n')
    assert is_response(b"garbage\n")


def test_close_reasons_fit_a_close_frame() -> None:
    assert close_reason("short") == "short"
    long = close_reason("ü" * 200)
    assert len(long.encode()) <= 123 and long.endswith("...")


# ---- choosing portals ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sockets_take_the_portals_in_turn_and_recently_failed_ones_last() -> None:
    clock = Clock()
    chooser = PortalChooser(lambda: [], BridgeLimits(avoid_failed_for=5.0), clock)
    portals = ["a:1", "b:2", "c:3"]
    assert [chooser.order(portals)[0] for _ in range(4)] == ["a:1", "b:2", "c:3", "a:1"]
    chooser.mark_failed("b:2")
    for _ in range(3):
        assert chooser.order(portals)[-1] == "b:2"
    clock.now += 5.0
    assert "b:2" in [chooser.order(portals)[0] for _ in range(3)]
    chooser.mark_failed("c:3")
    chooser.mark_ok("c:3")
    assert "c:3" in [chooser.order(portals)[0] for _ in range(3)]
    assert chooser.order([]) == []


async def test_an_empty_portal_list_is_awaited_briefly() -> None:
    answers = iter([[], [], ["a:1"]])
    limits = BridgeLimits(wait_for_portals=1.0, poll_interval=0.01)
    chooser = PortalChooser(lambda: next(answers), limits)
    assert await chooser.addresses() == ["a:1"]
    nothing = PortalChooser(lambda: [], BridgeLimits(wait_for_portals=0.05, poll_interval=0.01))
    assert await nothing.addresses() == []


# ---- the WebSocket edge, in process --------------------------------------------------------


class FakePortal:
    """A TCP listener that records every connection and line, answering each line ok."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self.lines: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                self.lines.append(line)
                request_id = json.loads(line).get("id")
                conn.sendall(json.dumps({"id": request_id, "ok": True}).encode() + b"\n")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def portal() -> Iterator[FakePortal]:
    fake = FakePortal()
    yield fake
    fake.close()


@contextlib.asynccontextmanager
async def bridge_server(
    addresses: list[str], origins: frozenset[str] = frozenset(), max_sockets: int = 500
) -> AsyncIterator[str]:
    """The client bridge alone, served by uvicorn on a free port: yields its ws:// URL."""
    app = FastAPI()
    limits = BridgeLimits(wait_for_portals=0.05, poll_interval=0.01, max_sockets=max_sockets)
    router = create_ws_router(
        lambda: addresses, limits, explain=lambda: "none allowed here", origins=origins
    )
    app.include_router(router)
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="off", ws_max_size=WS_MAX_SIZE)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws/client"
    finally:
        server.should_exit = True
        await serving


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    async with asyncio.timeout(5):
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_the_portal_connection_opens_at_the_first_message(portal: FakePortal) -> None:
    async with bridge_server([portal.address]) as url, connect(url) as ws:
        await asyncio.sleep(0.3)
        assert portal.connections == 0  # an idle page holds no portal connection
        await ws.send('{"id": 1, "op": "ping"}')
        assert json.loads(await ws.recv()) == {"id": 1, "ok": True}
        await ws.send('{"id": 2, "op": "ping"}')
        assert json.loads(await ws.recv()) == {"id": 2, "ok": True}
    assert portal.connections == 1 and len(portal.lines) == 2


async def test_no_usable_portal_answers_the_first_request_unavailable() -> None:
    async with bridge_server([]) as url, connect(url) as ws:
        await ws.send('{"id": "a", "op": "auth", "cid": "0000000000000000", "token": "t"}')
        reply = json.loads(await ws.recv())
        code, _ = await closed_with(ws)
    assert reply["id"] == "a" and reply["error"]["code"] == "unavailable"
    assert "none allowed here" in reply["error"]["message"]
    assert code == 1013


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://127.0.0.1:{port}", True),
        ("HTTP://127.0.0.1:{port}/", True),
        ("http://127.0.0.1:1", False),
        # Only host:port are compared: behind a TLS proxy the page is https, the hop ws.
        ("https://127.0.0.1:{port}", True),
        ("http://evil.example", False),
        ("null", False),
        ("https://tasks.example.com", True),  # allowed by the setting
    ],
)
async def test_a_socket_from_another_origin_is_refused_before_accept(
    portal: FakePortal, origin: str | None, allowed: bool
) -> None:
    origins = frozenset({"https://tasks.example.com:443"})
    async with bridge_server([portal.address], origins) as url:
        port = url.split(":")[2].split("/")[0]
        headers = {} if origin is None else {"origin": origin.format(port=port)}
        if allowed:
            async with connect(url, additional_headers=headers) as ws:
                await ws.send('{"id": 1, "op": "ping"}')
                assert json.loads(await ws.recv())["ok"] is True
            return
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers=headers)
    assert refused.value.response.status_code == 403
    assert portal.connections == 0


def test_origins_setting() -> None:
    assert parse_origins("https://a.example, http://b.example:8080") == {
        "https://a.example:443",
        "http://b.example:8080",
    }
    assert parse_origins("*") == {"*"}
    with pytest.raises(ConfigError, match="origin"):
        parse_origins("a.example")
    assert origin_allowed("http://x:1", "y:2", frozenset({"*"}))
    # Behind a TLS proxy: an https page, a Host header without a port.
    assert origin_allowed("https://tasks.example", "tasks.example", frozenset())
    assert not origin_allowed("https://tasks.example", "tasks.example:8443", frozenset())
    assert origin_allowed("http://[::1]:8000", "[::1]:8000", frozenset())


async def test_sockets_beyond_the_limit_are_closed_with_1013(portal: FakePortal) -> None:
    async with bridge_server([portal.address], max_sockets=2) as url:
        async with connect(url), connect(url), connect(url) as third:
            code, reason = await closed_with(third)
        assert code == 1013 and "too many" in reason
        async with connect(url) as again:  # the count went down again
            await again.send('{"id": 1, "op": "ping"}')
            assert json.loads(await again.recv())["ok"] is True


async def test_frames_far_past_the_line_limit_are_refused_by_the_server(
    portal: FakePortal,
) -> None:
    async with bridge_server([portal.address]) as url, connect(url, max_size=None) as ws:
        await ws.send("x" * (MAX_LINE + 1))  # a little too long: the bridge answers
        assert json.loads(await ws.recv())["error"]["code"] == "too_large"
        assert (await closed_with(ws))[0] == 1009
    async with bridge_server([portal.address]) as url, connect(url, max_size=None) as ws:
        await ws.send("x" * (WS_MAX_SIZE + 1))  # uvicorn refuses it before buffering it
        assert (await closed_with(ws))[0] == 1009
    assert portal.lines == []
