"""Thousands of seeded runs of a Raft group under faults, each checked for Raft's safety properties.

Each seed is a different scenario (1, 3 or 5 founders, spare servers to add,
drop/duplicate/delay rates, partitions, crashes that lose unsynced writes,
membership changes, compaction, ReadIndex reads). See backend/sim/raft_sim.py
for the checks. A failure prints its seed and how to replay it:

    TASKRING_SIM_SEED=1234 .venv/bin/pytest -q tests/sim/test_raft_sim.py -k replay
    .venv/bin/python -m backend.sim.raft_sim --seed 1234 --trace

TASKRING_SIM_SEEDS sets how many seeds the sweep runs (default 4000).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from backend.core.raft import RaftNode
from backend.core.raft.log import RaftLog
from backend.core.raft.messages import RequestVote, VoteResponse
from backend.sim.raft_sim import (
    RaftSim,
    SafetyViolation,
    Scenario,
    as_first_found,
    check_seed,
    replay_hint,
    run_seed,
)
from backend.sim.seeds import SEED_ENV

SEEDS = int(os.environ.get("TASKRING_SIM_SEEDS", "4000"))

# Seeds that once found a bug stay here, with what they found. They run the scenario as it was
# then (`as_first_found`: without fault kinds added since). Each Raft bug also has a unit test.
REGRESSION_SEEDS = {
    33: "a leader removing itself sent the removal's commit to itself",
    56: "a removed leader's successor could not be elected while the removal was uncommitted",
    61: "the final value went to a deposed leader (the check now retries like a client)",
    2267: "a slow catch-up over a reordering network was taken for a stall",
    4108: "one-entry-per-round-trip catch-up was taken for a stall",
    15527: "a candidate below a voter's term was never told the term: election livelock",
}


CHUNK = 500  # seeds per test, so each stays far below the per-test timeout on a busy machine
CHUNKS = [range(low, min(low + CHUNK, SEEDS)) for low in range(0, SEEDS, CHUNK)]
EXERCISED = (
    "elections",
    "crashes",
    "unsynced records lost",
    "partitions",
    "dropped",
    "duplicated",
    "snapshots sent",
    "compactions",
    "membership changes proposed",
    "reads",
)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as executor:
        yield executor


@pytest.mark.parametrize("seeds", CHUNKS, ids=lambda r: f"seeds-{r.start}-{r.stop - 1}")
def test_raft_safety_holds_across_thousands_of_seeds(
    pool: ProcessPoolExecutor, seeds: range
) -> None:
    totals: Counter[str] = Counter()
    failures: list[str] = []
    for seed, failure, stats in pool.map(check_seed, seeds, chunksize=25):
        totals.update(stats)
        if failure is not None:
            failures.append(f"seed {seed}: {failure}\n  {replay_hint(seed)}")
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed:\n" + "\n".join(
        failures[:10]
    )
    for what in EXERCISED:  # the sweep must exercise what it claims to check
        assert totals[what] > len(seeds) // 100, f"only {totals[what]} {what} in {len(seeds)} seeds"


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_seeds_that_once_found_bugs(seed: int) -> None:
    RaftSim(as_first_found(seed)).run()


def test_replay() -> None:
    """Replays the seed in TASKRING_SIM_SEED with a trace; without it, a fixed one."""
    seed = int(os.environ.get(SEED_ENV, "1"))
    sim = RaftSim(Scenario.from_seed(seed), trace=True)
    try:
        sim.run()
    except Exception:
        print("\n".join(sim.trace_lines[-300:]))
        print(Scenario.from_seed(seed))
        raise


def test_a_seed_replays_exactly_in_another_process() -> None:
    """Same seed, same run, event for event, whatever the interpreter's hash seed."""
    seed = 7
    first = RaftSim(Scenario.from_seed(seed), trace=True)
    first.run()
    second = RaftSim(Scenario.from_seed(seed), trace=True)
    second.run()
    assert first.trace_lines == second.trace_lines
    code = (
        "from backend.sim.raft_sim import RaftSim, Scenario\n"
        f"sim = RaftSim(Scenario.from_seed({seed}), trace=True); sim.run()\n"
        "print(len(sim.trace_lines), sim.now)\n"
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
    assert out == [f"{len(first.trace_lines)} {first.now}", str(sorted(first.stats.items()))]


def _first_violation(seeds: range) -> str | None:
    for seed in seeds:
        try:
            run_seed(seed)
        except SafetyViolation as violation:
            return str(violation)
    return None


def test_the_checks_catch_a_server_that_votes_twice_in_a_term(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break "each server will vote for at most one candidate in a given term" (§5.2):
    the election-safety check must notice."""

    def vote_for_anyone(self: RaftNode, message: RequestVote) -> None:
        self._send(VoteResponse(self.id, message.src, message.term, True, message.pre_vote))

    monkeypatch.setattr(RaftNode, "_on_vote_request", vote_for_anyone)
    found = _first_violation(range(300))
    assert found is not None and "election safety" in found


def test_the_checks_catch_a_voter_that_ignores_the_election_restriction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break §5.4.1 (grant votes to candidates with stale logs): committed entries get lost,
    which the leader-completeness and state-machine checks must notice."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    found = _first_violation(range(300))
    assert found is not None
    assert any(check in found for check in ("leader completeness", "state machine safety"))
