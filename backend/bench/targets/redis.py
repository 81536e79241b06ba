"""Redis as a comparison peer: one durable redis-server, a hash per client.

The server is started here on a free loopback port in a temporary directory,
with `appendonly yes`, `appendfsync always` (every write is fsynced before it
is acknowledged, like a replica group's commit) and snapshots off. A client is
a hash keyed by its CID: a write is `HSET cid title description`, a read
`HGETALL cid`; the admin workload reads and writes a client record with
`HGET`/`HSET` on the hash `clients`.

The RESP client is a few lines over the shared pipelined channel, as lean as
the bench's taskring client, so both targets pay the same client-side cost.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from backend.bench.channel import Channel, ChannelFailure, ProtocolViolation
from backend.bench.targets.base import Session, TargetUnusable
from backend.bench.targets.peers import PeerProcess, Say, ensure_program, free_port, wait_ready
from backend.bench.workload import (
    Kind,
    Op,
    WorkloadSpec,
    client_cid,
    initial_description,
    task_title,
)

PROGRAM, PACKAGE = "redis-server", "redis-server"
START_TIMEOUT = 20.0


class RedisError(str):
    """An error reply (`-ERR ...`), kept apart from simple string replies."""


def command(*parts: str | bytes) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        return RedisError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [await read_reply(reader) for _ in range(size)]
    raise ProtocolViolation(f"not a RESP reply: {line[:40]!r}")


def error_code(reply: Any) -> str | None:
    if isinstance(reply, RedisError):
        return (reply.split(" ", 1)[0] or "error").lower()
    return None


class RedisSession:
    def __init__(self, channel: Channel, cids: list[str]) -> None:
        self.channel = channel
        self.cids = cids

    async def perform(self, op: Op) -> str | None:
        cid = self.cids[op.client]
        if op.kind is Kind.READ:
            request = command("HGETALL", cid)
        else:
            request = command("HSET", cid, task_title(op.task), op.description)
        try:
            return error_code(await self.channel.call(request))
        except ChannelFailure as exc:
            return exc.code

    async def close(self) -> None:
        await self.channel.close()


class AdminRedisSession(RedisSession):
    async def perform(self, op: Op) -> str | None:
        cid = self.cids[op.client]
        if op.kind is Kind.READ:
            request = command("HGET", "clients", cid)
        else:
            request = command("HSET", "clients", cid, op.description)
        try:
            return error_code(await self.channel.call(request))
        except ChannelFailure as exc:
            return exc.code


class RedisTarget:
    name = "redis"

    def __init__(self, spec: WorkloadSpec, timeout: float, install: bool, say: Say) -> None:
        self.spec = spec
        self.timeout = timeout
        self.install = install
        self.say = say
        self.port = free_port()
        self.directory: Path | None = None
        self.process: PeerProcess | None = None
        self.cids = [client_cid(n) for n in range(spec.clients)]

    async def prepare(self) -> None:
        program = await ensure_program(PROGRAM, PACKAGE, self.install, self.say)
        self.directory = Path(tempfile.mkdtemp(prefix="taskring-bench-redis-"))
        self.process = PeerProcess("redis-server", self._args(program), self.directory / "log")
        await self.process.start()
        await wait_ready(self._ping, [self.process], "redis-server", START_TIMEOUT)
        await self._load()

    def _args(self, program: str) -> list[str]:
        assert self.directory is not None
        return [
            program,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    async def _ping(self) -> bool:
        channel = self._channel()
        try:
            return await channel.call(command("PING")) == "PONG"
        finally:
            await channel.close()

    def _channel(self) -> Channel:
        return Channel("127.0.0.1", self.port, read_reply, self.timeout)

    async def _load(self) -> None:
        """Give every client hash its T tasks (and every client its record)."""
        channel = self._channel()
        try:
            for number, cid in enumerate(self.cids):
                fields: list[str] = []
                for task in range(self.spec.tasks):
                    fields += [task_title(task), initial_description(self.spec, number, task)]
                batch = [command("DEL", cid), command("HSET", cid, *fields)]
                batch.append(command("HSET", "clients", cid, "made by taskring bench"))
                for future in await channel.send(b"".join(batch), len(batch)):
                    reply = await channel.wait(future)
                    if error_code(reply):
                        raise TargetUnusable(
                            f"loading the initial tasks into redis failed: {reply}"
                        )
        except ChannelFailure as exc:
            raise TargetUnusable(f"loading the initial tasks into redis failed: {exc}") from None
        finally:
            await channel.close()

    async def session(self, number: int) -> Session:
        kind = AdminRedisSession if self.spec.workload == "admin" else RedisSession
        return kind(self._channel(), self.cids)

    async def close(self) -> None:
        if self.process is not None:
            await self.process.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
