"""The restart benchmark's data: written directly, it must be what real replicas would hold.

The same proposals are run through a replica group of real ReplicaCores
(tests/unit/core/replica_harness.py) and compared with what a replica finds when it
starts on the generated files.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.disk import DurableRaftStorage
from backend.bench.restart_data import (
    LEADER,
    PROBE_NAME,
    TERM,
    DataSpec,
    clients,
    expected_tasks,
    generate,
    group_entries,
    reusable,
)
from backend.core.model.identity import token_matches
from backend.core.model.kv import KeyValueState
from backend.core.raft import RaftOptions
from backend.core.replica import wire
from backend.core.replica.core import ReplicaCore
from backend.core.replica.group import group_for
from backend.core.replica.state_machine import ReplicaStateMachine
from tests.unit.core.replica_harness import REPLY, Group

SMALL = DataSpec(
    tasks=300, clients=12, ops_per_proposal=4, renew_every=3, snapshot_every=10, seed=7
)


def started_replica(directory: Path, group: str, member: int) -> ReplicaCore:
    """A replica as `taskring replica` starts on the files: restored, log tail applied."""
    storage = DurableRaftStorage(directory / "replicas" / f"{group}-{member}")
    core = ReplicaCore(group, member, storage.state, str, random.Random(1), RaftOptions())
    ready = core.next_ready()
    assert ready is not None
    core.after_persist(ready, 0.0)
    storage.close()
    return core


def comparable(machine: ReplicaStateMachine) -> dict[str, Any]:
    """The state without the log positions, which differ between two histories."""
    return {
        "keys": machine.kv.keys,
        "owners": machine.owners,
        "requests": list(machine.requests.items()),
        "sessions": {c: (s.floor, s.results) for c, s in machine.sessions.items()},
        "leases": {o: lease.revoked for o, lease in machine.leases.items()},
    }


def replayed_by_a_group(spec: DataSpec, group: str) -> ReplicaStateMachine:
    """The same proposals, proposed to a live group of three ReplicaCores, entry by entry."""
    cores = Group(members=spec.replicas, snapshot_every=spec.snapshot_every)
    leader = cores.elect()
    for number, proposals in enumerate(group_entries(spec, group, clients(spec))):
        for position, proposal in enumerate(proposals):
            message = wire.Propose(
                f"c{number}.{position}",
                REPLY,
                proposal.client,
                proposal.request,
                proposal.acked,
                list(proposal.ops),
            ).to_wire()
            cores.deliver(leader, message)
        cores.settle()
        assert cores.leader() == leader
    assert all(answer["ok"] for answer in cores.answers)
    return cores.core(leader).machine


def test_a_replica_starts_on_the_generated_files_with_the_state_a_live_group_reaches(
    tmp_path: Path,
) -> None:
    summary = generate(SMALL, tmp_path)["groups"][0]
    assert summary["snapshot_index"] > 0 and summary["last_index"] > summary["snapshot_index"]
    live = replayed_by_a_group(SMALL, "g1")
    for member in SMALL.members:
        started = started_replica(tmp_path, "g1", member)
        assert started.machine.applied_index == summary["last_index"]
        assert comparable(started.machine) == comparable(live)


def test_every_member_holds_the_same_consistent_raft_history(tmp_path: Path) -> None:
    summary = generate(SMALL, tmp_path)["groups"][0]
    for member in SMALL.members:
        storage = DurableRaftStorage(tmp_path / "replicas" / f"g1-{member}")
        state = storage.state
        storage.close()
        assert (state.hard_state.term, state.hard_state.vote) == (TERM, LEADER)
        assert state.hard_state.commit == summary["last_index"]
        assert state.snapshot is not None
        assert state.snapshot.index == summary["snapshot_index"]
        assert sorted(state.snapshot.config.voters) == SMALL.members
        indices = [entry.index for entry in state.entries]
        assert indices == list(range(state.snapshot.index + 1, summary["last_index"] + 1))
        assert {entry.term for entry in state.entries} == {TERM}


def test_the_tasks_spread_over_the_clients_and_each_token_authenticates(tmp_path: Path) -> None:
    spec = DataSpec(tasks=1003, clients=10, seed=3)
    everyone = clients(spec)
    assert [c.tasks for c in everyone] == [101, 101, 101, 100, 100, 100, 100, 100, 100, 100, 0]
    assert everyone[-1].name == PROBE_NAME
    generate(spec, tmp_path)
    kv: KeyValueState = started_replica(tmp_path, "g1", 1).machine.kv
    for client in everyone:
        key = kv.keys[client.cid]
        assert list(key.tasks.items()) == expected_tasks(spec, client)
        assert all(len(description) == 100 for description in key.tasks.values())
        verifier, _ = kv.apply({"op": "verifier", "cid": client.cid})
        assert token_matches(client.token, verifier["salt"], verifier["hash"])


def test_clients_go_to_the_group_the_ring_sends_them_to(tmp_path: Path) -> None:
    spec = DataSpec(tasks=200, clients=40, replica_groups=2, replicas=1)
    summaries = generate(spec, tmp_path)["groups"]
    assert [s["group"] for s in summaries] == ["g1", "g2"]
    assert sum(s["tasks"] for s in summaries) == 200
    for group in spec.groups:
        keys = started_replica(tmp_path, group, 1).machine.kv.keys
        mine = {c.cid for c in clients(spec) if group_for(c.cid, spec.groups) == group}
        assert set(keys) == mine and mine


def test_the_same_spec_gives_the_same_files_and_is_reused_only_unchanged(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    generate(SMALL, first)
    generate(SMALL, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        if name.suffix in (".wal", ".snap"):
            assert (first / name).read_bytes() == (second / name).read_bytes()
    assert reusable(SMALL, first) is not None
    assert reusable(DataSpec(tasks=301, clients=12), first) is None
    with pytest.raises(ValueError, match="already holds replica files"):
        generate(DataSpec(tasks=1, clients=1), first)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"tasks": -1, "clients": 1}, "cannot be negative"),
        ({"tasks": 1, "clients": 0}, "at least one client"),
        ({"tasks": 1, "clients": 1, "replicas": 0}, "replicas must be at least 1"),
        ({"tasks": 1, "clients": 1, "description_bytes": 20_000}, "0 to 16384"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_problem(fields: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DataSpec(**fields)
