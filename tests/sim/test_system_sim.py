"""The whole durable deployment in the deterministic simulator: cache nodes and replica groups
together under crashes, partitions, losses and duplicates, with clients whose histories
must be linearizable per key and groups that must keep Raft's safety properties.

Each seed is a different deployment and fault schedule (backend/sim/system_sim.py says
what runs and what is checked). A failure names its seed; replay it with

    TASKRING_SIM_SEED=1234 .venv/bin/pytest -q tests/sim/test_system_sim.py -k replay
    .venv/bin/python -m backend.sim.system_sim --seed 1234 --trace

(with TASKRING_SIM_SEED set, the sweep below runs that seed alone). TASKRING_SYSTEM_SIM_SEEDS
sets how many seeds the sweep runs. The scripted scenarios after the sweep put one fault
exactly where it hurts most, and the last tests break the product on purpose to show the
checks notice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from backend.core.raft import RaftNode
from backend.core.raft.messages import RequestVote, VoteResponse
from backend.core.replica import state_machine
from backend.core.ring import durable_keys
from backend.sim.seeds import SEED_ENV
from backend.sim.simulated_broker import BrokerConfig
from backend.sim.system_sim import (
    Scenario,
    SystemFailure,
    SystemSim,
    check_seed,
    replay_hint,
)

_replay = os.environ.get(SEED_ENV)
SEEDS = int(os.environ.get("TASKRING_SYSTEM_SIM_SEEDS", "1000"))
SWEEP = [int(_replay)] if _replay else list(range(SEEDS))
LONG_SEEDS = [7, 1001]  # a minute of faults each
LONG_CHAOS = 60.0


def pinned(seed: int, broker: dict[str, float], **fields: Any) -> Scenario:
    """A scenario written out in full, so that it outlives changes to `from_seed`."""
    return Scenario(seed=seed, broker=BrokerConfig(**broker), **fields)


# Runs that once found a bug, pinned as they were, with what they found; they stay here.
REGRESSIONS = {
    "claim-run-again-skipped-the-lease-wait": pinned(
        # A claim set aside because a renewal of unknown outcome made it doubtful ran
        # again, found `previous` = itself (its own first claim, which had displaced a
        # live owner 13 ms before) and served at once: the displaced owner, its lease
        # still running, answered a stale read (fixed in 1bd1748).
        125,
        {"latency": 0.0002, "jitter": 0.01, "stall_delay": 1.0, "duplicate": 0.1},
        cache_nodes=5,
        vnodes=1,
        groups=1,
        replicas=1,
        portals=3,
        keys=4,
        users=5,
        chaos=15.0,
        clock_drift=0.001,
        replica_crashes=0.1,
        leader_kills=0.0,
        cache_kills=0.05,
        partitions=0.6,
        fsync=0.002,
        snapshot_every=16,
        think=0.05,
    ),
    "write-without-request-id-applied-twice": pinned(
        # A portal that had heard no cache node for a while (a partition had just healed)
        # took the ring for memory-only and sent a write without `req`. Its Chord lookup
        # reached the owner, whose hop acknowledgement was lost in a new partition; the
        # entry node routed around it, became the owner itself and proposed the same
        # write again: applied twice, the client got `exists` for its own insert
        # (fixed in 3cdb6cb: every write carries its request id).
        1076,
        {"latency": 0.001, "jitter": 0.01, "stall": 0.001, "stall_delay": 1.0},
        cache_nodes=2,
        vnodes=2,
        groups=2,
        replicas=3,
        portals=2,
        keys=4,
        users=5,
        chaos=15.0,
        clock_drift=0.0,
        replica_crashes=0.1,
        leader_kills=0.2,
        cache_kills=0.0,
        partitions=0.3,
        fsync=0.002,
        snapshot_every=64,
        think=0.05,
    ),
}

CHUNK = 20  # seeds per test, so each stays far below the per-test timeout on a busy machine
CHUNKS = [SWEEP[i : i + CHUNK] for i in range(0, len(SWEEP), CHUNK)]
# What every chunk of the sweep must exercise (a replayed seed alone need not).
EXERCISED = (
    "replica crashes",
    "unsynced records lost",
    "leader kills",
    "cache node kills",
    "partitions",
    "snapshots installed",
    "snapshots read for a follower",
    "proposals in the log again",
    "fenced or moved",
    "broker: duplicated",
    "broker: lost",
    "insert_task timeout",
    "attempts retried on a will",
)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as executor:
        yield executor


def _sweep(pool: ProcessPoolExecutor, seeds: list[int], chaos: float | None) -> Counter[str]:
    totals: Counter[str] = Counter()
    failures: list[str] = []
    for seed, failure, stats in pool.map(check_seed, seeds, [chaos] * len(seeds)):
        totals.update(stats)
        if failure is not None:
            failures.append(f"{failure}\n  {replay_hint(seed)}")
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed:\n" + "\n".join(
        failures[:5]
    )
    return totals


@pytest.mark.parametrize("seeds", CHUNKS, ids=lambda s: f"seeds-{s[0]}-{s[-1]}")
def test_every_history_is_linearizable_and_raft_stays_safe(
    pool: ProcessPoolExecutor, seeds: list[int]
) -> None:
    totals = _sweep(pool, seeds, None)
    if len(seeds) == CHUNK:  # the sweep must exercise what it claims to check
        missing = [what for what in EXERCISED if not totals[what]]
        assert not missing, f"seeds {seeds[0]}-{seeds[-1]} never saw: {', '.join(missing)}"


def test_a_minute_of_faults(pool: ProcessPoolExecutor) -> None:
    _sweep(pool, LONG_SEEDS, LONG_CHAOS)


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_runs_that_once_found_bugs(name: str) -> None:
    SystemSim(REGRESSIONS[name]).run()


def test_replay() -> None:
    """Replays the seed in TASKRING_SIM_SEED with a trace; without it, a fixed one."""
    seed = int(os.environ.get(SEED_ENV, "3"))
    sim = SystemSim(Scenario.from_seed(seed), trace=True)
    try:
        sim.run()
    except Exception:
        print("\n".join(sim.trace_lines[-400:]))
        print(Scenario.from_seed(seed))
        raise


def test_a_seed_replays_exactly_in_another_process() -> None:
    """Same seed, same run, event for event, whatever the interpreter's hash seed."""
    seed = 11
    first = SystemSim(Scenario.from_seed(seed), trace=True)
    first.run()
    second = SystemSim(Scenario.from_seed(seed), trace=True)
    second.run()
    assert first.trace_lines == second.trace_lines
    code = (
        "import zlib\n"
        "from backend.sim.system_sim import Scenario, SystemSim\n"
        f"sim = SystemSim(Scenario.from_seed({seed}), trace=True); sim.run()\n"
        "print(zlib.crc32('\\n'.join(sim.trace_lines).encode()), sim.now)\n"
        "print(sorted(sim.stats.items()))"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=repo,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.splitlines()
    digest = zlib.crc32("\n".join(first.trace_lines).encode())
    assert out == [f"{digest} {first.now}", str(sorted(first.stats.items()))]


# ---- scripted scenarios ---------------------------------------------------------------


def scripted(seed: int, **shape: Any) -> SystemSim:
    """A small deployment without random faults, on a quiet network; one key."""
    defaults: dict[str, Any] = {
        "cache_nodes": 3,
        "vnodes": 2,
        "groups": 1,
        "replicas": 3,
        "portals": 2,
        "keys": 1,
        "users": 1,
        "think": 0.02,
        "chaos": 0.0,
        "broker": BrokerConfig(),
    }
    sim = SystemSim(replace(Scenario.from_seed(seed).calm(), **{**defaults, **shape}))
    sim.label = f"scripted scenario, seed {seed} (rerun its test)"
    return sim


def started(sim: SystemSim) -> int:
    """Start `sim`, let its one creator create the client; the key, once someone owns it."""
    sim.start()
    cid = sim.cids[0]
    assert sim.run_until(lambda: sim.users[0].created, 10.0), "the client was never created"
    assert sim.run_until(lambda: len(sim.holders(cid)) == 1, 10.0), "nobody owns the key"
    return cid


def finish_and_check(sim: SystemSim) -> None:
    try:
        sim.finish()
    except SystemFailure:
        print("\n".join(sim.trace_lines[-300:]))
        raise


def proposes_write(sender: str, message: dict[str, Any], cid: int) -> bool:
    """Whether `message` from cache node `sender` proposes a write of `cid` to a group."""
    if not sender.startswith("cache/") or message.get("t") != "propose":
        return False
    ops = message.get("ops") or []
    return any(op.get("cid") == cid and op.get("op") not in ("claim", "renew") for op in ops)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_owner_dies_with_a_write_in_its_group(seed: int) -> None:
    """The owner proposes a write and dies before the answer comes back: the portal retries
    through another cache node, which claims the key and proposes the write again under the
    portal's request id; the group applies it once."""
    sim = scripted(seed)
    cid = started(sim)
    owner = sim.holders(cid)[0]
    killed: list[float] = []

    def kill_the_owner(sender: str, _topic: str, message: dict[str, Any]) -> None:
        if not killed and sender == owner.name and proposes_write(sender, message, cid):
            killed.append(sim.now)
            sim.scheduler.after(0.0, owner.kill, False)  # the proposal itself gets out

    for _ in range(3):
        sim.add_user(cid, ops="writes").start(0.0)
    sim.broker.watch = kill_the_owner
    assert sim.run_until(lambda: bool(killed), 5.0), "the owner proposed no write"
    sim.broker.watch = None
    sim.advance(6.0)  # the ring notices (2 s), the new owner claims and waits out the lease
    assert owner not in sim.holders(cid) and sim.holders(cid), "no new owner took the key"
    finish_and_check(sim)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_leader_dies_with_a_write_not_yet_committed(seed: int) -> None:
    """The group's leader takes a write into its log and crashes before it commits, losing
    what it had not fsynced; a new leader is elected and the write's fate is whatever the
    owner's retries find."""
    sim = scripted(seed)
    cid = started(sim)
    group = sim.group_of(cid)
    crashed: list[int] = []

    def crash_the_leader() -> None:
        leader = sim.leader(group)
        if leader is not None and leader.core is not None and not crashed:
            node = leader.core.node
            crashed.append(node.last_index - node.commit_index)
            leader.crash(lose_outbox=True)
            sim.scheduler.after(1.0, leader.start)

    def on_publish(sender: str, _topic: str, message: dict[str, Any]) -> None:
        if not crashed and proposes_write(sender, message, cid):
            sim.scheduler.after(0.003, crash_the_leader)  # it has appended, not committed

    for _ in range(3):
        sim.add_user(cid).start(0.0)
    sim.broker.watch = on_publish
    assert sim.run_until(lambda: bool(crashed), 5.0), "no write reached the leader"
    sim.broker.watch = None
    sim.advance(4.0)
    finish_and_check(sim)
    assert sim.stats["replica crashes"] == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_owner_cut_off_with_a_portal_while_another_takes_its_keys(seed: int) -> None:
    """The owner keeps one portal but loses the groups and the other cache nodes: the ring
    on the other side gives its key to another node, which claims it and, after the old
    owner's lease, writes. The old owner must stop answering reads when its lease lapses."""
    sim = scripted(seed)
    cid = started(sim)
    owner = sim.holders(cid)[0]
    near, far = sim.portals
    sim.users[0].ops = "reads"  # no write of the owner's is in flight when the cut comes
    sim.add_user(cid, portal=near, ops="reads").start(0.0)
    sim.advance(0.5)
    cut = sim.partition([[owner.name, near.name]])
    sim.add_user(cid, portal=far, ops="writes").start(0.0)
    sim.add_user(cid, portal=far).start(0.0)
    sim.advance(6.0)
    assert any(c is not owner for c in sim.holders(cid)), "nobody took the key over"
    sim.heal(cut)
    finish_and_check(sim)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cache_nodes_split_in_two_with_the_groups_reaching_both(seed: int) -> None:
    """Both halves of the ring reach the replica groups but not each other, and each thinks
    it owns the key: claims revoke each other, the losing side learns it at its next lease
    renewal, its writes are fenced, and the winner waits out the loser's lease."""
    sim = scripted(seed, cache_nodes=4)
    cid = started(sim)
    owner = sim.holders(cid)[0]
    near, far = sim.portals
    others = [c.name for c in sim.caches if c is not owner]
    for portal in (near, far):
        sim.add_user(cid, portal=portal, ops="writes").start(0.0)
        sim.add_user(cid, portal=portal, ops="reads").start(0.0)
    sim.advance(0.5)
    cut = sim.partition([[owner.name, near.name], [*others, far.name]], bridged=True)
    sim.advance(8.0)
    sim.heal(cut)
    finish_and_check(sim)
    assert sim.stats["fenced or moved"] > 0, "the two owners never met in the group"


@pytest.mark.parametrize("seed", [1, 2])
def test_duplicated_and_retried_proposals_apply_once(seed: int) -> None:
    """Every message may arrive twice and some answers stall past the proposers' attempt
    timeout, so the same request ids reach the log in several entries."""
    network = BrokerConfig(jitter=0.003, stall=0.02, stall_delay=2.5, duplicate=0.3)
    sim = scripted(seed, broker=network, keys=2, users=6, cache_nodes=3)
    sim.start()
    sim.advance(15.0)
    finish_and_check(sim)
    assert sim.stats["proposals in the log again"] > 0
    assert sim.stats["broker: duplicated"] > 100


# ---- the checks notice broken products --------------------------------------------------


def test_the_checks_catch_reads_served_after_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """An owner that answers reads from memory without a live lease serves stale data once
    another node has taken its key."""
    forever = float("inf")

    def renewed(self: durable_keys.DurableKeys, batch: Any, result: Any, index: int) -> None:
        self._renewing.discard(batch.group)
        self._lease_until[batch.group] = forever  # and nothing is ever revoked

    monkeypatch.setattr(durable_keys.DurableKeys, "_on_renewed", renewed)
    with pytest.raises(SystemFailure, match="not linearizable"):
        for seed in (1, 2, 3):
            test_an_owner_cut_off_with_a_portal_while_another_takes_its_keys(seed)


def test_the_checks_catch_a_takeover_that_does_not_wait_out_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that serves a key it took from a live owner at once, while that owner may
    still answer reads from memory under its lease, lets the old owner read stale data."""
    claimed = durable_keys.DurableKeys._on_claimed

    def at_once(
        self: durable_keys.DurableKeys, cid: int, result: Any, index: int, now: float
    ) -> None:
        claimed(self, cid, result, index, now)
        key = self.keys.get(cid)
        if key is not None and key.status == durable_keys.WAITING:
            key.status = durable_keys.READY

    monkeypatch.setattr(durable_keys.DurableKeys, "_on_claimed", at_once)
    with pytest.raises(SystemFailure, match="not linearizable"):
        for seed in range(1, 10):  # 11 of seeds 1-15 catch it
            test_cache_nodes_split_in_two_with_the_groups_reaching_both(seed)


def test_the_checks_catch_a_claim_that_trusts_itself_as_the_previous_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rule before 1bd1748: a claim naming this node as the previous owner served at
    once, even when that earlier claim had displaced a live owner."""

    def trusting(
        self: durable_keys.DurableKeys, cid: int, previous: str | None, now: float
    ) -> float:
        if previous in (None, self.owner) or previous.startswith(f"{self.host_id}/"):
            return now
        return now + self.lease + durable_keys.LEASE_MARGIN

    monkeypatch.setattr(durable_keys.DurableKeys, "_serve_from", trusting)
    # The run that found it (seed 125) no longer meets it since leases are renewed only
    # while reads come (fewer renewals, fewer claims made doubtful); seed 2621 of the same
    # scenario does (the first of seeds 0-2621 since replicas snapshot in the background).
    scenario = REGRESSIONS["claim-run-again-skipped-the-lease-wait"]
    with pytest.raises(SystemFailure, match="not linearizable"):
        SystemSim(replace(scenario, seed=2621)).run()


def test_the_checks_catch_a_group_applying_a_retried_write_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the portal request ids in the answer table, a write retried through a new
    owner is applied again."""
    monkeypatch.setattr(
        state_machine.ReplicaStateMachine, "_run_request", state_machine.ReplicaStateMachine._run
    )
    with pytest.raises(SystemFailure, match="not linearizable"):
        for seed in (1, 2, 3):
            test_the_owner_dies_with_a_write_in_its_group(seed)


def test_the_checks_catch_a_replica_that_votes_twice_in_a_term(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def vote_for_anyone(self: RaftNode, message: RequestVote) -> None:
        self._send(VoteResponse(self.id, message.src, message.term, True, message.pre_vote))

    monkeypatch.setattr(RaftNode, "_on_vote_request", vote_for_anyone)
    failures = []
    for seed in range(30):
        failures.append(check_seed(seed)[1] or "")
        if "election safety" in failures[-1] or "leader completeness" in failures[-1]:
            return
    pytest.fail(f"no seed noticed: {failures}")
