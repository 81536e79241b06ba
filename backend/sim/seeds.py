"""Running a simulator over seeds from the command line, and saying how to replay one.

The Raft simulator and the system simulator share this: a seed or a range
of seeds, a stop at the first failure with the seed named and, on request,
the last events of the failing run.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Protocol

SEED_ENV = "TASKRING_SIM_SEED"


class Outcome(Protocol):
    stats: Counter[str]


class Simulation(Protocol):
    trace_lines: list[str]

    def run(self) -> Outcome: ...


def seed_range(seed: int | None, seeds: str) -> range:
    """`--seed N` alone, else `--seeds LOW-HIGH` (or a single `--seeds N`)."""
    if seed is not None:
        return range(seed, seed + 1)
    low, _, high = seeds.partition("-")
    return range(int(low), int(high or low) + 1)


def replay_hint(seed: int, test_file: str, module: str) -> str:
    return (
        f"replay with: {SEED_ENV}={seed} .venv/bin/pytest -q {test_file} "
        f"-k replay   or   .venv/bin/python -m {module} --seed {seed} --trace"
    )


def run_seeds(
    seeds: range,
    simulation: Callable[[int], Simulation],
    hint: Callable[[int], str],
    trace_tail: int = 0,
) -> int:
    """Run each seed; at the first failure print it (with the last `trace_tail` events)
    and how to replay it, and return 1; else print the totals and return 0."""
    totals: Counter[str] = Counter()
    for seed in seeds:
        sim = simulation(seed)
        try:
            totals.update(sim.run().stats)
        except Exception as failure:  # any crash of a run is a finding; name the seed
            if trace_tail:
                print("\n".join(sim.trace_lines[-trace_tail:]), file=sys.stderr)
            print(f"FAILED: {failure}\n{hint(seed)}", file=sys.stderr)
            return 1
    print(f"{len(seeds)} seeds passed: {dict(sorted(totals.items()))}")
    return 0
