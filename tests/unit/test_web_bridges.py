"""The pure parts of the web process's bridges: gRPC-Web framing, message checks, portal order."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from web.grpc_web import (
    FrameError,
    GrpcWebLimits,
    data_frame,
    decode_request,
    encode_grpc_message,
    parse_timeout,
    trailer_frame,
)
from web.ws_bridge import (
    CLOSE_TOO_BIG,
    Answer,
    BridgeLimits,
    Forward,
    PortalChooser,
    check_message,
    close_reason,
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
