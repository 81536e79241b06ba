"""The nemesis's plan: seeded, within the run, every kind asked for, faults alone and mixed."""

from __future__ import annotations

import itertools

import pytest

from backend.chaos.schedule import (
    KINDS,
    QUIET_END,
    QUIET_START,
    ROLES,
    SECONDS,
    parse_kinds,
    plan,
)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    kinds = ["pause", "partition", "kill", "netem"]
    assert plan(7, 60, kinds) == plan(7, 60, kinds)
    assert plan(7, 60, kinds) != plan(8, 60, kinds)


@pytest.mark.parametrize("seed", range(30))
def test_faults_stay_inside_the_quiet_start_and_end(seed: int) -> None:
    faults = plan(seed, 40, list(KINDS))
    assert faults
    for fault in faults:
        assert fault.at >= QUIET_START
        assert fault.end <= 40 - QUIET_END
        assert fault.role in ROLES[fault.kind]
        assert fault.seconds in SECONDS[fault.kind]


def test_every_kind_asked_for_is_drawn_in_a_long_enough_run() -> None:
    kinds = ["pause", "partition", "kill", "netem", "disk", "clock"]
    for seed in range(10):
        assert {f.kind for f in plan(seed, 60, kinds)} == set(kinds)


def test_only_the_kinds_asked_for_are_drawn() -> None:
    for seed in range(10):
        assert {f.kind for f in plan(seed, 60, ["pause"])} == {"pause"}


def test_some_rounds_mix_two_kinds_on_different_roles() -> None:
    mixed = 0
    for seed in range(20):
        faults = plan(seed, 60, ["pause", "kill", "partition"])
        for a, b in itertools.pairwise(faults):
            if b.at < a.end:
                mixed += 1
                assert a.kind != b.kind and a.role != b.role
    assert mixed > 0


def test_pauses_span_the_lease_and_the_election_timeout() -> None:
    lasted = {f.seconds for seed in range(20) for f in plan(seed, 60, ["pause"])}
    assert min(lasted) < 0.5  # shorter than an election timeout and the lease
    assert max(lasted) > 2.0  # past the owner's lease keep


def test_a_run_too_short_for_any_fault_plans_none() -> None:
    assert plan(1, QUIET_START + QUIET_END, ["kill"]) == []


def test_parse_kinds_keeps_order_drops_repeats_and_refuses_unknown_ones() -> None:
    assert parse_kinds("pause, kill,pause") == ["pause", "kill"]
    with pytest.raises(ValueError, match="unknown fault 'flood'"):
        parse_kinds("pause,flood")
    with pytest.raises(ValueError, match="at least one"):
        parse_kinds(" , ")
