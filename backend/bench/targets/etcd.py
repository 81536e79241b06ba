"""etcd as a comparison peer: a 3-member cluster on loopback, driven through its v3 JSON gateway.

The members (Debian's `etcd-server`, etcd 3.4) are started here, each in a
temporary directory on free ports. Every task is a key `/tasks/<cid>/<title>`:
a write is a put (acknowledged once a majority has fsynced it), a read is a
linearizable range read of the client's prefix (the gateway's default,
`serializable: false`, which goes through the leader's read index). The
admin workload puts and gets the key `/clients/<cid>`. Connections are spread
over the three members; followers forward writes to the leader.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import grpc

from backend.bench.channel import Channel, ChannelFailure
from backend.bench.targets.base import Session, TargetUnusable
from backend.bench.targets.http1 import Response, read_response, request
from backend.bench.targets.peers import PeerProcess, Say, ensure_program, free_port, wait_ready
from backend.bench.workload import (
    Kind,
    Op,
    WorkloadSpec,
    client_cid,
    initial_description,
    task_title,
)

PROGRAM, PACKAGE = "etcd", "etcd-server"
MEMBERS = 3
START_TIMEOUT = 30.0
LOAD_CONNECTIONS = 16
GRPC_CODES = {code.value[0]: code.name.lower() for code in grpc.StatusCode}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def task_key(cid: str, title: str) -> str:
    return f"/tasks/{cid}/{title}"


def prefix_range(prefix: str) -> dict[str, str]:
    """The range of every key starting with `prefix` (which ends in '/')."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return {"key": b64(prefix), "range_end": b64(end)}


def error_code(response: Response) -> str | None:
    if response.status == 200:
        json.loads(response.body)  # read the answer as a user would; malformed is a failure
        return None
    try:
        body: Any = json.loads(response.body)
        return GRPC_CODES.get(body.get("code"), f"http_{response.status}")
    except (ValueError, AttributeError):
        return f"http_{response.status}"


class EtcdSession:
    def __init__(self, channel: Channel, cids: list[str], admin: bool) -> None:
        self.channel = channel
        self.host = channel.address
        self.cids = cids
        self.admin = admin

    def payload(self, op: Op) -> bytes:
        cid = self.cids[op.client]
        if self.admin:
            key = f"/clients/{cid}"
            if op.kind is Kind.READ:
                return self.post("/v3/kv/range", {"key": b64(key)})
            return self.post("/v3/kv/put", {"key": b64(key), "value": b64(op.description)})
        if op.kind is Kind.READ:
            return self.post("/v3/kv/range", prefix_range(f"/tasks/{cid}/"))
        key = task_key(cid, task_title(op.task))
        return self.post("/v3/kv/put", {"key": b64(key), "value": b64(op.description)})

    def post(self, path: str, body: dict[str, str]) -> bytes:
        return request("POST", self.host, path, json.dumps(body).encode())

    async def perform(self, op: Op) -> str | None:
        try:
            return error_code(await self.channel.call(self.payload(op)))
        except ChannelFailure as exc:
            return exc.code
        except ValueError:
            return "bad_response"

    async def close(self) -> None:
        await self.channel.close()


class EtcdTarget:
    name = "etcd"

    def __init__(self, spec: WorkloadSpec, timeout: float, install: bool, say: Say) -> None:
        self.spec = spec
        self.timeout = timeout
        self.install = install
        self.say = say
        self.client_ports = [free_port() for _ in range(MEMBERS)]
        self.peer_ports = [free_port() for _ in range(MEMBERS)]
        self.directory: Path | None = None
        self.processes: list[PeerProcess] = []
        self.cids = [client_cid(n) for n in range(spec.clients)]

    async def prepare(self) -> None:
        program = await ensure_program(PROGRAM, PACKAGE, self.install, self.say)
        self.directory = Path(tempfile.mkdtemp(prefix="taskring-bench-etcd-"))
        for member in range(MEMBERS):
            log = self.directory / f"member-{member}.log"
            process = PeerProcess(f"etcd member {member}", self._args(program, member), log)
            self.processes.append(process)
            await process.start()
        await wait_ready(self._healthy, self.processes, "the etcd cluster", START_TIMEOUT)
        await self._load()

    def _args(self, program: str, member: int) -> list[str]:
        assert self.directory is not None
        cluster = ",".join(
            f"m{n}=http://127.0.0.1:{port}" for n, port in enumerate(self.peer_ports)
        )
        client_url = f"http://127.0.0.1:{self.client_ports[member]}"
        peer_url = f"http://127.0.0.1:{self.peer_ports[member]}"
        return [
            program,
            "--name", f"m{member}",
            "--data-dir", str(self.directory / f"m{member}"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "taskring-bench",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def _channel(self, member: int) -> Channel:
        return Channel(
            "127.0.0.1", self.client_ports[member % MEMBERS], read_response, self.timeout
        )

    async def _healthy(self) -> bool:
        for member in range(MEMBERS):
            channel = self._channel(member)
            try:
                response = await channel.call(request("GET", channel.address, "/health"))
            finally:
                await channel.close()
            if response.status != 200 or json.loads(response.body).get("health") != "true":
                return False
        return True

    async def _load(self) -> None:
        """Put every client's T tasks (and its record), over a few connections at once."""
        workers = min(LOAD_CONNECTIONS, len(self.cids))
        await asyncio.gather(*(self._load_share(w, workers) for w in range(workers)))

    async def _load_share(self, worker: int, workers: int) -> None:
        session = EtcdSession(self._channel(worker), self.cids, admin=False)
        try:
            for number in range(worker, len(self.cids), workers):
                cid = self.cids[number]
                puts = [(f"/clients/{cid}", "made by taskring bench")]
                puts += [
                    (task_key(cid, task_title(t)), initial_description(self.spec, number, t))
                    for t in range(self.spec.tasks)
                ]
                payload = b"".join(
                    session.post("/v3/kv/put", {"key": b64(k), "value": b64(v)}) for k, v in puts
                )
                for future in await session.channel.send(payload, len(puts)):
                    code = error_code(await session.channel.wait(future))
                    if code:
                        raise TargetUnusable(f"loading the initial tasks into etcd failed: {code}")
        except ChannelFailure as exc:
            raise TargetUnusable(f"loading the initial tasks into etcd failed: {exc}") from None
        finally:
            await session.close()

    async def session(self, number: int) -> Session:
        admin = self.spec.workload == "admin"
        return EtcdSession(self._channel(number), self.cids, admin)

    async def close(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes))
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
