"""Which replica group holds a key: rendezvous hashing over group ids."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from backend.core.replica.group import check_group_id, check_groups, default_groups, group_for

_RNG = random.Random(7)
KEYS = [_RNG.getrandbits(64) for _ in range(20_000)]


def owners(groups: list[str]) -> dict[int, str]:
    return {key: group_for(key, groups) for key in KEYS}


def test_every_caller_computes_the_same_group_whatever_the_order_of_the_ids() -> None:
    groups = default_groups(5)
    shuffled = list(reversed(groups))
    assert owners(groups) == owners(shuffled)
    # stable across releases: a changed hash would move every durable key
    assert group_for(0, groups) == group_for(0, ["g5", "g4", "g3", "g2", "g1"])
    assert [group_for(k, ["g1", "g2", "g3"]) for k in (0, 1, 2**64 - 1)] == [
        group_for(k, ["g3", "g1", "g2"]) for k in (0, 1, 2**64 - 1)
    ]


def test_keys_spread_evenly_over_the_groups() -> None:
    counts = Counter(owners(default_groups(4)).values())
    assert set(counts) == {"g1", "g2", "g3", "g4"}
    for count in counts.values():
        assert abs(count - len(KEYS) / 4) < 0.05 * len(KEYS)


def test_adding_a_group_moves_only_the_keys_it_now_holds() -> None:
    before = owners(default_groups(3))
    after = owners(default_groups(4))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "g4" for key in moved)
    assert abs(len(moved) - len(KEYS) / 4) < 0.05 * len(KEYS)


def test_removing_a_group_moves_only_that_groups_keys() -> None:
    before = owners(["g1", "g2", "g3"])
    after = owners(["g1", "g3"])
    for key in KEYS:
        if before[key] != "g2":
            assert after[key] == before[key]


def test_one_group_holds_everything() -> None:
    assert {group_for(key, ["solo"]) for key in KEYS[:100]} == {"solo"}


@pytest.mark.parametrize("key", [-1, 2**64, 1.5, "7", True, None])
def test_a_key_that_is_not_a_cid_is_refused(key: Any) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        group_for(key, ["g1"])


def test_no_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="no replica groups"):
        group_for(1, [])
    with pytest.raises(ValueError, match="no replica groups"):
        check_groups([])
    with pytest.raises(ValueError, match="at least one"):
        default_groups(0)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 65, "reply", 3, None, "é"])
def test_group_ids_must_be_usable_as_topic_levels(bad: object) -> None:
    with pytest.raises(ValueError):
        check_group_id(bad)


def test_group_ids_must_not_repeat() -> None:
    with pytest.raises(ValueError, match="repeat"):
        check_groups(["g1", "g2", "g1"])
    assert check_groups(["g1", "east_2", "A-9"]) == ("g1", "east_2", "A-9")
