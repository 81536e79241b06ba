"""The little of HTTP/1.1 the bench needs to drive a JSON API over keep-alive connections.

Requests are POSTs (or GETs) with a JSON body; responses are read by their
Content-Length or chunked encoding, so several requests can be in flight on
one connection and are answered in order (HTTP/1.1 pipelining).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from backend.bench.channel import ProtocolViolation

MAX_HEADERS = 100


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def request(method: str, host: str, path: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_response(reader: asyncio.StreamReader) -> Response:
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolViolation(f"not an HTTP/1.1 response: {status_line[:40]!r}")
    status = int(parts[1])
    length, chunked = await _read_headers(reader)
    if chunked:
        body = await _read_chunks(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = b""  # keep-alive responses without a length have no body
    return Response(status, body)


async def _read_headers(reader: asyncio.StreamReader) -> tuple[int | None, bool]:
    length: int | None = None
    chunked = False
    for _ in range(MAX_HEADERS):
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return length, chunked
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    raise ProtocolViolation("too many response headers")


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return bytes(body)
        body += (await reader.readexactly(size + 2))[:-2]
