"""The nemesis's plan: which fault strikes which role, when, and for how long. Pure and seeded.

A plan is a list of `PlannedFault`s over a run of `duration` seconds: a quiet
start (the workload settles and the cluster is seen whole), then rounds of one
fault alone or, when more than one kind is asked for, two of different kinds at
once on different roles, each followed by a quiet gap, and a quiet end in which
the system must recover before the final reads. The same seed, duration and
kinds always give the same plan.

How long each fault lasts is drawn around the timeouts it tests (read from the
code): an owner's lease is 0.6 s and it keeps its keys for 2 s without a renewal
(backend/core/ring/durable_keys.py, LEASE and LEASE_KEEP); a Raft follower waits
10 ticks of 0.05 s, randomised up to twice that, 0.5 to 1 s, before it stands for
election (backend/core/raft/node.py, backend/processes/replica.py). A pause
shorter than both, one between them, and ones past both are all drawn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

KILL, PAUSE, PARTITION, NETEM, DISK, CLOCK = "kill", "pause", "partition", "netem", "disk", "clock"
KINDS = (KILL, PAUSE, PARTITION, NETEM, DISK, CLOCK)

LEADER, FOLLOWER, OWNER, PORTAL, BROKER = "leader", "follower", "owner", "portal", "broker"
# Which roles each kind strikes: the broker is paused, never killed or cut off (it is the
# network itself here); disk faults hit the write-ahead logs, which only replicas keep.
ROLES: dict[str, tuple[str, ...]] = {
    KILL: (LEADER, FOLLOWER, OWNER, PORTAL),
    PAUSE: (LEADER, OWNER, PORTAL, BROKER),
    PARTITION: (LEADER, FOLLOWER, OWNER, PORTAL),
    NETEM: (LEADER, FOLLOWER, OWNER, PORTAL),
    DISK: (LEADER, FOLLOWER),
    CLOCK: (LEADER, OWNER),
}
# Seconds each kind lasts: around the lease (0.6 s), the election timeout (0.5-1 s) and
# the lease keep (2 s). A kill lasts until its victim is back; this is how long we wait.
SECONDS: dict[str, tuple[float, ...]] = {
    KILL: (4.0,),
    PAUSE: (0.3, 0.8, 1.5, 3.0),
    PARTITION: (0.8, 1.5, 3.0),
    NETEM: (2.0, 3.0),
    DISK: (1.5, 3.0),
    CLOCK: (2.0, 3.0),
}
# The variant of each kind: a partition's direction, the delay/jitter, the failpoint line.
OPTIONS: dict[str, tuple[str, ...]] = {
    KILL: ("",),
    PAUSE: ("",),
    PARTITION: ("both", "inbound", "outbound"),
    NETEM: ("100ms/20ms", "300ms/100ms"),
    DISK: ("wal.fsync=error", "wal.write=enospc", "wal.unsynced=lose"),
    CLOCK: ("clock.rate=1.5", "clock.rate=0.7"),
}
QUIET_START = 2.0  # seconds before the first fault
QUIET_END = 3.0  # seconds after the last heal, to recover before the final reads
GAP = (1.0, 2.5)  # quiet seconds between rounds, drawn uniformly
MIXED_CHANCE = 0.35  # the chance a round strikes with two kinds at once


@dataclass(frozen=True)
class PlannedFault:
    at: float  # seconds after the workload started
    kind: str
    role: str
    seconds: float  # how long until it is healed
    option: str = ""

    @property
    def end(self) -> float:
        return self.at + self.seconds

    def describe(self) -> str:
        option = f" ({self.option})" if self.option else ""
        return f"{self.kind} {self.role}{option} at {self.at:.1f}s for {self.seconds:g}s"


def parse_kinds(text: str) -> list[str]:
    """`pause,partition` -> the kinds in the order given, each once; ValueError if unknown."""
    kinds: list[str] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part not in KINDS:
            raise ValueError(f"unknown fault {part!r} (known: {', '.join(KINDS)})")
        if part not in kinds:
            kinds.append(part)
    if not kinds:
        raise ValueError(f"name at least one fault ({', '.join(KINDS)})")
    return kinds


def plan(seed: int, duration: float, kinds: Sequence[str]) -> list[PlannedFault]:
    """The faults of one run, by start time; none starts before QUIET_START or lasts past
    `duration - QUIET_END`. Each kind asked for is drawn in turn first, so a short run still
    tries every kind it has room for."""
    rng = random.Random(f"taskring-chaos/{seed}")
    last_end = duration - QUIET_END
    faults: list[PlannedFault] = []
    now = QUIET_START
    round_number = 0
    while True:
        first = kinds[round_number % len(kinds)] if round_number < len(kinds) else None
        chosen = _round(rng, now, kinds, first)
        if not chosen or max(f.end for f in chosen) > last_end:
            # one more try with the shortest of each, else the plan is full
            chosen = [_shortest(f) for f in chosen]
            if not chosen or max(f.end for f in chosen) > last_end:
                break
        faults += chosen
        now = max(f.end for f in chosen) + rng.uniform(*GAP)
        round_number += 1
    return sorted(faults, key=lambda f: (f.at, f.kind))


def _round(
    rng: random.Random, now: float, kinds: Sequence[str], first: str | None
) -> list[PlannedFault]:
    kind = first or rng.choice(list(kinds))
    chosen = [_fault(rng, now, kind, exclude=())]
    others = [k for k in kinds if k != kind]
    if others and rng.random() < MIXED_CHANCE:
        second = rng.choice(others)
        roles = [r for r in ROLES[second] if r != chosen[0].role]
        if roles:
            start = now + round(rng.uniform(0.0, 0.5), 2)
            chosen.append(_fault(rng, start, second, exclude=(chosen[0].role,)))
    return chosen


def _fault(rng: random.Random, at: float, kind: str, exclude: tuple[str, ...]) -> PlannedFault:
    role = rng.choice([r for r in ROLES[kind] if r not in exclude])
    return PlannedFault(
        at=round(at, 2),
        kind=kind,
        role=role,
        seconds=rng.choice(SECONDS[kind]),
        option=rng.choice(OPTIONS[kind]),
    )


def _shortest(fault: PlannedFault) -> PlannedFault:
    return PlannedFault(fault.at, fault.kind, fault.role, min(SECONDS[fault.kind]), fault.option)
