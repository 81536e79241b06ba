"""Ring positions and intervals: the arithmetic every Chord rule is written in."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.core import chord
from backend.core.chord import (
    MASK,
    RING_SIZE,
    between,
    between_right,
    distance,
    finger_start,
    format_position,
    owner_index,
    successor_list_length,
    vnode_position,
)

positions = st.integers(min_value=0, max_value=MASK)


@given(positions, positions, positions)
def test_open_interval_is_what_lies_strictly_clockwise_between(x: int, a: int, b: int) -> None:
    if a != b:
        expected = 0 < distance(a, x) < distance(a, b)
        assert between(x, a, b) == expected


@given(positions, positions, positions)
def test_two_half_open_arcs_split_the_ring(x: int, a: int, b: int) -> None:
    if a != b:
        assert between_right(x, a, b) != between_right(x, b, a)


@given(positions, positions)
def test_equal_ends_cover_the_whole_ring(x: int, a: int) -> None:
    assert between_right(x, a, a)
    assert between(x, a, a) == (x != a)


def test_intervals_wrap_around_zero() -> None:
    top = RING_SIZE - 10
    assert between(0, top, 5)
    assert between(RING_SIZE - 1, top, 5)
    assert not between(5, top, 5)
    assert between_right(5, top, 5)
    assert not between_right(top, top, 5)
    assert not between(6, top, 5)


def test_finger_start_is_position_plus_power_of_two_mod_ring() -> None:
    assert finger_start(0, 0) == 1
    assert finger_start(0, 63) == 1 << 63
    assert finger_start(RING_SIZE - 1, 0) == 0
    assert finger_start(1 << 63, 63) == 0


def test_virtual_node_position_is_first_eight_bytes_of_sha256() -> None:
    digest = hashlib.sha256(b"cache-1#3").digest()
    assert vnode_position("cache-1", 3) == int.from_bytes(digest[:8], "big")
    assert len({vnode_position("cache-1", i) for i in range(8)}) == 8
    assert format_position(255) == "00000000000000ff"


@given(st.lists(positions, min_size=1, max_size=30, unique=True), positions)
def test_owner_is_the_first_position_at_or_after_the_key(ring: list[int], key: int) -> None:
    ring.sort()
    at_or_after = [p for p in ring if p >= key]
    expected = at_or_after[0] if at_or_after else ring[0]
    assert ring[owner_index(key, ring)] == expected


@pytest.mark.parametrize(
    ("positions_count", "r"), [(1, 3), (2, 3), (4, 4), (32, 10), (1000, 20), (1024, 20)]
)
def test_successor_list_length_is_twice_log2_and_at_least_three(
    positions_count: int, r: int
) -> None:
    assert successor_list_length(positions_count) == r


def test_public_api_is_exactly_what_all_lists() -> None:
    assert chord.__all__ == sorted(set(chord.__all__), key=chord.__all__.index)
    for name in chord.__all__:
        assert hasattr(chord, name), name
    public = {n for n in vars(chord) if not n.startswith("_") and n not in chord.__all__}
    modules = {"config", "fingers", "host", "ids", "liveness", "messages"}
    modules |= {"node", "outputs", "routing", "successors", "annotations"}
    assert public <= modules, public - modules
