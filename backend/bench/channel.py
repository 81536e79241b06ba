"""One TCP connection that may carry several requests at once and answers them in order.

Every protocol the bench speaks (taskring's JSON lines, Redis's RESP, HTTP/1.1
with keep-alive) answers requests on a connection in the order they were
sent. So a channel writes request bytes, queues one future per expected
reply, and a single reader task resolves them first in, first out, with
whatever the protocol's reply reader returns.

A request that times out is given up on, but its reply is still read and
dropped when it comes, so the order stays right. When the connection breaks,
every waiting request fails with `disconnected`, and the next request opens
a new connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

ReplyReader = Callable[[asyncio.StreamReader], Awaitable[Any]]

DISCONNECTED = "disconnected"
TIMEOUT = "timeout"
READ_LIMIT = 1 << 22


class ChannelFailure(Exception):
    """A request got no reply: `code` is `disconnected` or `timeout`."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class ProtocolViolation(ValueError):
    """The peer sent something its protocol does not allow; the connection is dropped."""


_LOST = object()  # what the futures of a broken connection resolve to


class Channel:
    def __init__(self, host: str, port: int, read_reply: ReplyReader, timeout: float) -> None:
        self.host = host
        self.port = port
        self.read_reply = read_reply
        self.timeout = timeout
        self.writer: asyncio.StreamWriter | None = None
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.reader_task: asyncio.Task[None] | None = None
        self.opening = asyncio.Lock()
        self.generation = 0  # counts connections opened, so a session sees a reconnect

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self) -> None:
        """Connect if not connected; raise ChannelFailure when nothing answers."""
        if self.writer is not None:
            return
        async with self.opening:
            if self.writer is None:
                await self._connect()

    async def _connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=READ_LIMIT), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise ChannelFailure(DISCONNECTED, f"{self.address}: {exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writer = writer
        self.generation += 1
        self.reader_task = asyncio.create_task(self._read_loop(reader, writer))

    async def send(self, payload: bytes, replies: int = 1) -> list[asyncio.Future[Any]]:
        """Write one or more requests at once; return one future per reply they expect."""
        await self.open()
        assert self.writer is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self.pending.extend(futures)
        self.writer.write(payload)
        return futures

    async def wait(self, future: asyncio.Future[Any]) -> Any:
        """The reply a future stands for; raise ChannelFailure on timeout or a broken link."""
        try:
            async with asyncio.timeout(self.timeout):
                reply = await future
        except TimeoutError:
            raise ChannelFailure(TIMEOUT, f"no reply from {self.address}") from None
        if reply is _LOST:
            raise ChannelFailure(DISCONNECTED, f"{self.address} closed the connection")
        return reply

    async def call(self, payload: bytes) -> Any:
        """Send one request and return its reply."""
        (future,) = await self.send(payload)
        return await self.wait(future)

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                reply = await self.read_reply(reader)
                if not self.pending:
                    raise ProtocolViolation("a reply came that no request asked for")
                future = self.pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError):
            pass  # the connection is unusable: fail what waits, reconnect on the next send
        finally:
            self._broken(writer)

    def _broken(self, writer: asyncio.StreamWriter) -> None:
        if self.writer is writer:
            self.writer = None
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_result(_LOST)
        writer.close()

    async def close(self) -> None:
        writer, task = self.writer, self.reader_task
        self.writer = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
