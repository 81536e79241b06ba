"""POST /taskring.admin.v1.AdminService/<Rpc>: gRPC-Web from the browser to an admin portal.

The browser cannot speak HTTP/2 gRPC, so this bridge unwraps the gRPC-Web
request frame, makes the same call on an admin portal over real gRPC with the
raw message bytes (it never decodes the protobuf, so it follows the proto file
without code of its own), and wraps the answer in a data frame and a trailer
frame. Portals come from the live ones the web process may use (web/security.py:
the `authorization` header is an admin token and goes nowhere else). Content
types, failures and fail-over (a call that may have changed something is never
sent twice): docs/protocol.md, gRPC-Web.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

log = logging.getLogger(__name__)

SERVICE = "taskring.admin.v1.AdminService"
# The RPCs of docs/protocol.md, Admin service; any other name is UNIMPLEMENTED without a round trip.
RPCS = frozenset(
    {"CreateClient", "GetClient", "UpdateClient", "DeleteClient", "ListClients", "RotateToken"}
)

# Calls that change nothing, so asking the next portal after an UNAVAILABLE is harmless.
READ_ONLY_RPCS = frozenset({"GetClient", "ListClients"})

BINARY_TYPES = frozenset({"application/grpc-web", "application/grpc-web+proto"})
TEXT_TYPES = frozenset({"application/grpc-web-text", "application/grpc-web-text+proto"})

DATA_FLAG = 0x00
COMPRESSED_FLAG = 0x01
TRAILER_FLAG = 0x80
FRAME_HEADER = struct.Struct(">BI")

# gRPC status codes (grpc/doc/statuscodes.md)
OK = 0
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14

CHANNEL_OPTIONS = (
    # A restarted portal should be found again within a second, not after gRPC's
    # default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

PortalList = Callable[[], list[str]]
Explain = Callable[[], str]  # why no portal may be used, when the list is empty


@dataclass(frozen=True)
class GrpcWebLimits:
    max_request_bytes: int = 1 << 20  # a client's data is at most 16 KiB
    connect_timeout: float = 1.5  # per admin portal
    default_deadline: float = 10.0
    max_deadline: float = 60.0


class FrameError(ValueError):
    """The request body is not one well-formed gRPC-Web message; carries a status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---- framing (pure) ------------------------------------------------------------------


def decode_request(body: bytes, text: bool) -> bytes:
    """The one message of a unary request body; raise FrameError naming what is wrong."""
    if text:
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise FrameError(INVALID_ARGUMENT, "the request body is not valid base64") from None
    if len(body) < FRAME_HEADER.size:
        raise FrameError(INVALID_ARGUMENT, "the request body holds no gRPC-Web frame")
    flags, length = FRAME_HEADER.unpack_from(body)
    if flags & TRAILER_FLAG:
        raise FrameError(INVALID_ARGUMENT, "the request starts with a trailer frame, not data")
    if flags & COMPRESSED_FLAG:
        raise FrameError(UNIMPLEMENTED, "compressed messages are not supported; send identity")
    end = FRAME_HEADER.size + length
    if len(body) < end:
        raise FrameError(
            INVALID_ARGUMENT,
            f"the request frame announces {length} bytes but holds {len(body) - FRAME_HEADER.size}",
        )
    if len(body) > end:
        raise FrameError(INVALID_ARGUMENT, "a unary call takes exactly one message frame")
    return body[FRAME_HEADER.size : end]


def data_frame(message: bytes) -> bytes:
    return FRAME_HEADER.pack(DATA_FLAG, len(message)) + message


def trailer_frame(status: int, message: str) -> bytes:
    block = f"grpc-status:{status}\r\ngrpc-message:{encode_grpc_message(message)}\r\n".encode()
    return FRAME_HEADER.pack(TRAILER_FLAG, len(block)) + block


def encode_grpc_message(message: str) -> str:
    """Percent-encode as the gRPC spec says: UTF-8, then every byte outside 0x20-0x7E and '%'."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8")


_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(header: str | None, limits: GrpcWebLimits) -> float:
    """The call's deadline in seconds from a `grpc-timeout` header like "5S" or "250m"."""
    if not header:
        return limits.default_deadline
    match = _TIMEOUT.match(header.strip())
    if not match:
        raise FrameError(INVALID_ARGUMENT, f"grpc-timeout {header[:20]!r} is not like 5S or 250m")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return min(seconds, limits.max_deadline)


# ---- talking to admin portals --------------------------------------------------------


class AdminChannels:
    """One grpc.aio channel per admin portal address, made on first use."""

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self.channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self.channels[address] = channel
        return channel

    async def close(self) -> None:
        # Portal addresses are few and stable, so channels are kept until the process ends.
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()


async def connected(channel: grpc.aio.Channel, timeout: float) -> bool:
    """Whether the channel is (or within `timeout` gets) READY; False at once if it is failing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return False
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await channel.wait_for_state_change(state)
        except TimeoutError:
            return False
        state = channel.get_state(try_to_connect=True)
    return True


@dataclass(frozen=True)
class Outcome:
    status: int
    message: str
    reply: bytes | None = None


class AdminBridge:
    def __init__(
        self, portals: PortalList, limits: GrpcWebLimits, explain: Explain | None = None
    ) -> None:
        self.portals = portals
        self.limits = limits
        self.explain = explain
        self.channels = AdminChannels()

    async def call(
        self, rpc: str, message: bytes, metadata: list[tuple[str, str]], deadline: float
    ) -> Outcome:
        addresses = self.portals()
        failures: list[str] = []
        for address in addresses:
            channel = self.channels.get(address)
            if not await connected(channel, self.limits.connect_timeout):
                failures.append(f"{address}: cannot connect")
                continue
            outcome = await self._call_on(channel, rpc, message, metadata, deadline)
            if outcome.status == UNAVAILABLE and rpc in READ_ONLY_RPCS:
                failures.append(f"{address}: {outcome.message}")
                continue
            return outcome
        if not failures:
            why = self.explain() if self.explain else "no admin portal is up (no heartbeat heard)"
            return Outcome(UNAVAILABLE, f"{why}; try again")
        return Outcome(
            UNAVAILABLE, "no admin portal is reachable (" + "; ".join(failures) + "); try again"
        )

    async def _call_on(
        self,
        channel: grpc.aio.Channel,
        rpc: str,
        message: bytes,
        metadata: list[tuple[str, str]],
        deadline: float,
    ) -> Outcome:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{SERVICE}/{rpc}", request_serializer=None, response_deserializer=None
        )
        try:
            reply = await method(message, metadata=metadata, timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            return Outcome(exc.code().value[0], exc.details() or "")
        return Outcome(OK, "", reply)


# ---- HTTP ------------------------------------------------------------------------


def grpc_web_response(outcome: Outcome, text: bool) -> Response:
    body = b"" if outcome.reply is None else data_frame(outcome.reply)
    body += trailer_frame(outcome.status, outcome.message)
    media_type = "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
    if text:
        body = base64.b64encode(body)
    return Response(body, media_type=media_type, headers={"cache-control": "no-store"})


async def read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FrameError(RESOURCE_EXHAUSTED, f"the request is larger than {limit:,} bytes")
    return bytes(body)


def forwarded_metadata(request: Request) -> list[tuple[str, str]]:
    authorization = request.headers.get("authorization")
    return [("authorization", authorization)] if authorization is not None else []


async def handle(bridge: AdminBridge, rpc: str, request: Request) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in BINARY_TYPES | TEXT_TYPES:
        return PlainTextResponse(
            f"unsupported content type {content_type or '(none)'!r}; "
            "send application/grpc-web+proto",
            status_code=415,
        )
    text = content_type in TEXT_TYPES
    try:
        deadline = parse_timeout(request.headers.get("grpc-timeout"), bridge.limits)
        message = decode_request(await read_body(request, bridge.limits.max_request_bytes), text)
    except FrameError as exc:
        return grpc_web_response(Outcome(exc.status, str(exc)), text)
    if rpc not in RPCS:
        return grpc_web_response(Outcome(UNIMPLEMENTED, f"unknown method {SERVICE}/{rpc}"), text)
    outcome = await bridge.call(rpc, message, forwarded_metadata(request), deadline)
    if outcome.status == UNAVAILABLE:
        log.warning("gRPC-Web %s: %s", rpc, outcome.message)
    return grpc_web_response(outcome, text)


def create_grpc_web_router(
    portals: PortalList, limits: GrpcWebLimits | None = None, explain: Explain | None = None
) -> APIRouter:
    """An APIRouter serving gRPC-Web for AdminService over the admin portals `portals()`
    names; `explain()` says why when it names none."""
    bridge = AdminBridge(portals, limits or GrpcWebLimits(), explain)
    router = APIRouter()

    @router.post(f"/{SERVICE}/{{rpc}}")
    async def admin_rpc(rpc: str, request: Request) -> Response:
        return await handle(bridge, rpc, request)

    return router
