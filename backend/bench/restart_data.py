"""A durable ring's data directory written directly: N tasks over K clients, as if the
ring had stored them through its portals.

Storing a million tasks through the portals takes many minutes; measuring a full
restart needs them on disk in seconds. So this module makes the operations a real
deployment would have committed (claims, `create_client`, `insert_task`s, lease
renewals), applies them through ReplicaStateMachine and writes every member's log
and snapshots with DurableRaftStorage, so a replica started there finds exactly
what it would have written itself. Everything random derives from the seed, so
the caller can recompute each client's token and tasks (`clients`,
`expected_tasks`). How the data is laid out: docs/operating.md, Measuring.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backend.adapters.collector import collector_paused
from backend.adapters.disk import DurableRaftStorage
from backend.bench.workload import WorkloadSpec, client_name, initial_description, task_title
from backend.core.chord.ids import vnode_position
from backend.core.model.identity import cid_for_name, hash_token
from backend.core.raft import Config, Entry, HardState, Ready, Snapshot
from backend.core.replica.core import SNAPSHOT_EVERY
from backend.core.replica.group import default_groups, group_for
from backend.core.replica.state_machine import (
    Operation,
    Proposal,
    ReplicaStateMachine,
    encode_batch,
)
from backend.core.ring.durable_keys import client_name as proposer_name

MANIFEST = "restart-data.json"
FORMAT = 1  # raise when the generated layout changes, so an older directory is not reused
PROBE_NAME = "restart-probe"  # a client with no tasks, for writes after the restart
TERM = 2  # the term of the one election every member saw
LEADER = 1
CREATED_AT_MS = 1_700_000_000_000
CLIENT_DATA = "made by taskring bench --restart-tasks"
KEEP_SNAPSHOTS = 2  # what DurableRaftStorage keeps; older snapshots would be pruned anyway
WRITE_CHUNK = 256  # entries per Ready written to the log


@dataclass(frozen=True)
class DataSpec:
    """What to generate: `tasks` over `clients`, for a deployment of this shape."""

    tasks: int
    clients: int
    replica_groups: int = 1
    replicas: int = 3
    cache_nodes: int = 4
    vnodes: int = 8
    description_bytes: int = 100
    seed: int = 1
    ops_per_proposal: int = 4
    renew_every: int = 8  # entries between two lease renewals of every cache node
    snapshot_every: int = SNAPSHOT_EVERY

    def __post_init__(self) -> None:
        if self.tasks < 0:
            raise ValueError(f"the number of tasks cannot be negative, not {self.tasks}")
        if self.clients < 1:
            raise ValueError(f"need at least one client, not {self.clients}")
        for name in ("replica_groups", "replicas", "cache_nodes", "vnodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
        for name in ("ops_per_proposal", "renew_every", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
        if not 0 <= self.description_bytes <= 16_384:
            raise ValueError("descriptions hold 0 to 16384 bytes")

    @property
    def groups(self) -> list[str]:
        return default_groups(self.replica_groups)

    @property
    def members(self) -> list[int]:
        return list(range(1, self.replicas + 1))

    @property
    def hosts(self) -> list[str]:
        """The cache nodes `taskring up` starts."""
        return [f"cache-node-{n}" for n in range(1, self.cache_nodes + 1)]

    def tasks_of(self, number: int) -> int:
        """How many tasks client `number` holds: N / K, the remainder to the first ones."""
        base, extra = divmod(self.tasks, self.clients)
        return base + (1 if number < extra else 0)


@dataclass(frozen=True)
class Client:
    number: int  # 0 .. K-1; the probe client is number K
    name: str
    cid: int
    token: str
    tasks: int


def _derive(spec: DataSpec, label: str, size: int) -> bytes:
    """Seeded bytes standing in for what the system draws at random."""
    return hashlib.blake2b(f"{spec.seed}:{label}".encode(), digest_size=size).digest()


def token_for(spec: DataSpec, name: str) -> str:
    """A token of the shape `random_secrets.new_token` gives (43 URL-safe characters),
    from the seed."""
    return base64.urlsafe_b64encode(_derive(spec, f"token:{name}", 32)).rstrip(b"=").decode()


def make_client(spec: DataSpec, number: int, name: str, tasks: int) -> Client:
    return Client(number, name, cid_for_name(name), token_for(spec, name), tasks)


def clients(spec: DataSpec) -> list[Client]:
    """The K clients holding the tasks (bench-client-NNNNNN), then the probe client."""
    made = [make_client(spec, n, client_name(n), spec.tasks_of(n)) for n in range(spec.clients)]
    made.append(make_client(spec, spec.clients, PROBE_NAME, 0))
    if len({c.cid for c in made}) != len(made):
        raise ValueError("two generated client names share a CID")
    return made


def expected_tasks(spec: DataSpec, client: Client) -> list[tuple[str, str]]:
    """Client's bag of tasks, (title, description) in insertion order, as list_tasks gives it."""
    shape = WorkloadSpec(description_bytes=spec.description_bytes)
    return [
        (task_title(task), initial_description(shape, client.number, task))
        for task in range(client.tasks)
    ]


class Ring:
    """Which cache node owns a key when all of them are up: the first ring position at or
    after the key, wrapping (backend/core/chord/ids.py)."""

    def __init__(self, spec: DataSpec) -> None:
        ring = sorted((vnode_position(h, i), h) for h in spec.hosts for i in range(spec.vnodes))
        self.positions = [position for position, _ in ring]
        self.hosts = [host for _, host in ring]

    def owner(self, key: int) -> str:
        return self.hosts[bisect.bisect_left(self.positions, key) % len(self.hosts)]


def incarnation(spec: DataSpec, host: str) -> str:
    """The earlier incarnation of `host` that wrote the data (12 hex digits, as the node's)."""
    return _derive(spec, f"incarnation:{host}", 6).hex()


def client_ops(spec: DataSpec, client: Client, owner: str) -> Iterator[Operation]:
    """What the key's owner committed for `client`: its claim, then the portals' writes."""
    yield {"op": "claim", "cid": client.cid, "owner": owner}
    salt = _derive(spec, f"salt:{client.name}", 16)
    yield {
        "op": "create_client",
        "cid": client.cid,
        "name": client.name,
        "data": CLIENT_DATA,
        "created_at": CREATED_AT_MS + client.number,
        "token_salt": salt,
        "token_hash": hash_token(client.token, salt),
        "owner": owner,
        "req": f"admin-portal-1/{spec.seed:08x}/w{client.number}",
    }
    portal = f"client-portal-{1 + client.number % 2}/{spec.seed:08x}"
    for task, (title, description) in enumerate(expected_tasks(spec, client)):
        yield {
            "op": "insert_task",
            "cid": client.cid,
            "title": title,
            "description": description,
            "owner": owner,
            "req": f"{portal}/w{client.number}.{task}",
        }


class _Proposer:
    """One cache node incarnation towards one group: its request ids and `acked`."""

    def __init__(self, spec: DataSpec, host: str) -> None:
        self.client = proposer_name(host, incarnation(spec, host))
        self.owner = f"{host}/{incarnation(spec, host)}"
        self.next_request = 1

    def proposal(self, ops: list[Operation]) -> Proposal:
        # Every earlier proposal was answered (one in flight per group), and the first
        # says acked=1 since the group does not know this client yet.
        request = self.next_request
        self.next_request += len(ops)
        return Proposal(self.client, request, request, tuple(ops))


def _host_clients(spec: DataSpec, group: str, everyone: list[Client]) -> dict[str, list[Client]]:
    ring = Ring(spec)
    by_host: dict[str, list[Client]] = {host: [] for host in spec.hosts}
    for client in everyone:
        if group_for(client.cid, spec.groups) == group:
            by_host[ring.owner(client.cid)].append(client)
    return by_host


def entry_count(spec: DataSpec, group: str, everyone: list[Client]) -> int:
    """How many data entries `group_entries` yields (known before generating them)."""
    by_host = _host_clients(spec, group, everyone)
    ops = [sum(2 + c.tasks for c in hosted) for hosted in by_host.values()]
    return max(math.ceil(n / spec.ops_per_proposal) for n in ops)


def group_entries(spec: DataSpec, group: str, everyone: list[Client]) -> Iterator[list[Proposal]]:
    """The data entries of `group`'s log in order (indices 3, 4, ...): each one proposal
    per cache node with operations left, and now and then every node's lease renewal."""
    streams: dict[str, Iterator[Operation]] = {}
    proposers: dict[str, _Proposer] = {}
    for host, hosted in _host_clients(spec, group, everyone).items():
        proposer = proposers[host] = _Proposer(spec, host)
        streams[host] = (op for c in hosted for op in client_ops(spec, c, proposer.owner))
    number = 0
    while streams:
        batch: list[Proposal] = []
        renew = number % spec.renew_every == 0
        for host, proposer in proposers.items():
            if renew:
                batch.append(
                    proposer.proposal([{"op": "renew", "cid": 0, "owner": proposer.owner}])
                )
            stream = streams.get(host)
            ops = (
                [op for _, op in zip(range(spec.ops_per_proposal), stream, strict=False)]
                if stream
                else []
            )
            if ops:
                batch.append(proposer.proposal(ops))
            else:
                streams.pop(host, None)
        if not streams:
            return
        yield batch
        number += 1


@dataclass(frozen=True)
class GroupSummary:
    group: str
    clients: int
    tasks: int
    last_index: int
    snapshot_index: int


def snapshot_points(spec: DataSpec, last_index: int) -> set[int]:
    """Where the replicas' snapshots are: every `snapshot_every` applied entries
    (ReplicaDriver.snapshot_to_start); only the newest ones survive pruning."""
    points = range(spec.snapshot_every, last_index + 1, spec.snapshot_every)
    return set(points[-KEEP_SNAPSHOTS:])


def _ready(entries: list[Entry]) -> Ready:
    hard = HardState(TERM, LEADER, entries[-1].index)
    return Ready(None, hard, tuple(entries), None, (), (), (), False)


def write_group(
    spec: DataSpec, group: str, everyone: list[Client], directory: Path
) -> GroupSummary:
    """Every member's log and snapshots of `group` under DIRECTORY/replicas/<group>-<m>/."""
    config = Config.of(spec.members)
    storages = [
        DurableRaftStorage(directory / "replicas" / f"{group}-{member}") for member in spec.members
    ]
    for storage in storages:
        if not storage.state.is_empty:
            raise ValueError(f"{storage.directory} already holds a Raft log")
        storage.bootstrap(spec.members)
    last_index = 2 + entry_count(spec, group, everyone)
    snapshots = snapshot_points(spec, last_index)
    machine = ReplicaStateMachine()
    machine.skip(1)  # the founding configuration
    machine.apply_entry(2, b"")  # the leader's no-op
    pending = [Entry(2, TERM)]
    index = 2
    for proposals in group_entries(spec, group, everyone):
        index += 1
        data = encode_batch(proposals)
        _check_applied(index, machine.apply_entry(index, data))
        pending.append(Entry(index, TERM, data))
        if len(pending) >= WRITE_CHUNK or index in snapshots:
            for storage in storages:
                storage.save(_ready(pending))
            pending = []
        if index in snapshots:
            with collector_paused():  # many objects, none of them garbage
                snapshot = Snapshot(index, TERM, config, machine.snapshot())
            for storage in storages:
                storage.sync()
                storage.save_snapshot(snapshot)
    if index != last_index:
        raise AssertionError(f"generated {index} log entries for {group}, planned {last_index}")
    for storage in storages:
        if pending:
            storage.save(_ready(pending))
        storage.sync()
        storage.close()
    mine = [c for c in everyone if group_for(c.cid, spec.groups) == group]
    return GroupSummary(
        group, len(mine), sum(c.tasks for c in mine), last_index, max(snapshots, default=0)
    )


def _check_applied(index: int, results: list[list[dict[str, Any]]]) -> None:
    for proposal in results:
        for result in proposal:
            if not result.get("ok"):
                raise AssertionError(f"generated entry {index} was refused: {result}")


def manifest(spec: DataSpec, summaries: list[GroupSummary]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "spec": asdict(spec),
        "groups": [asdict(summary) for summary in summaries],
    }


def reusable(spec: DataSpec, directory: Path) -> dict[str, Any] | None:
    """The manifest of data generated earlier in `directory` from this same spec, if any."""
    try:
        found = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    if found.get("format") != FORMAT or found.get("spec") != asdict(spec):
        return None
    return found


def generate(spec: DataSpec, directory: Path) -> dict[str, Any]:
    """Write the replicas' files for `spec` into the data directory `directory` (which
    must hold no replica files yet) and a manifest beside them; returns the manifest."""
    replicas = directory / "replicas"
    if replicas.exists() and any(replicas.iterdir()):
        raise ValueError(f"{replicas} already holds replica files")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    everyone = clients(spec)
    summaries = [write_group(spec, group, everyone, directory) for group in spec.groups]
    document = manifest(spec, summaries)
    (directory / MANIFEST).write_text(json.dumps(document, indent=2) + "\n")
    return document
