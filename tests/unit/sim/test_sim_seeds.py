"""The simulators' seed runner: ranges, totals, and a failure that names its seed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from backend.sim.seeds import replay_hint, run_seeds, seed_range


@dataclass
class Result:
    stats: Counter[str]


@dataclass
class FakeSim:
    seed: int
    fails: bool
    trace_lines: list[str] = field(default_factory=list)

    def run(self) -> Result:
        self.trace_lines = [f"event {n} of seed {self.seed}" for n in range(5)]
        if self.fails:
            raise AssertionError(f"two leaders in term 3 (seed {self.seed})")
        return Result(Counter(runs=1))


def test_seed_range_reads_one_seed_a_range_or_a_single_number() -> None:
    assert seed_range(7, "0-99") == range(7, 8)
    assert seed_range(None, "10-12") == range(10, 13)
    assert seed_range(None, "4") == range(4, 5)


def test_passing_seeds_add_up_their_statistics(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_seeds(range(3), lambda seed: FakeSim(seed, False), str)
    assert code == 0
    assert capsys.readouterr().out == "3 seeds passed: {'runs': 3}\n"


def test_the_first_failure_stops_the_run_and_says_how_to_replay_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran: list[int] = []

    def simulation(seed: int) -> FakeSim:
        ran.append(seed)
        return FakeSim(seed, seed == 2)

    hint = lambda seed: replay_hint(seed, "tests/sim/test_x.py", "backend.sim.x")  # noqa: E731
    code = run_seeds(range(5), simulation, hint, trace_tail=2)
    assert code == 1
    assert ran == [0, 1, 2]
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "event 3 of seed 2",
        "event 4 of seed 2",
        "FAILED: two leaders in term 3 (seed 2)",
        "replay with: TASKRING_SIM_SEED=2 .venv/bin/pytest -q tests/sim/test_x.py -k replay"
        "   or   .venv/bin/python -m backend.sim.x --seed 2 --trace",
    ]
