"""The bench's latency histogram: bucket layout, percentiles against sorted data, merging."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.bench.histogram import (
    EXACT_LIMIT,
    RELATIVE_ERROR,
    Histogram,
    bucket_bounds,
    bucket_of,
)


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(round(q * len(ordered) / 100, 9))) - 1]


def test_small_values_have_exact_buckets() -> None:
    for value in range(EXACT_LIMIT):
        assert bucket_bounds(bucket_of(value)) == (value, value)


def test_buckets_tile_the_integers_without_gaps_or_overlaps() -> None:
    for index in range(EXACT_LIMIT * 8):
        assert bucket_bounds(index)[1] + 1 == bucket_bounds(index + 1)[0]


@given(st.integers(min_value=0, max_value=10**12))
def test_every_value_lies_in_its_bucket_and_buckets_are_narrow(value: int) -> None:
    low, high = bucket_bounds(bucket_of(value))
    assert low <= value <= high
    assert high - low <= low * RELATIVE_ERROR


def test_percentiles_of_one_to_a_thousand_are_the_nearest_ranks() -> None:
    histogram = Histogram()
    for value in range(1, 1001):
        histogram.record(value)
    # 1..256 are exact; above, a percentile may read up to RELATIVE_ERROR high
    assert histogram.percentile(10) == 100
    assert 500 <= histogram.percentile(50) <= 500 * (1 + RELATIVE_ERROR)
    assert 999 <= histogram.percentile(99.9) <= 1000
    assert histogram.percentile(100) == histogram.max == 1000
    assert histogram.min == 1
    assert histogram.mean == pytest.approx(500.5)


@given(
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300),
    st.sampled_from([1.0, 50.0, 90.0, 99.0, 99.9, 100.0]),
)
def test_a_percentile_is_never_below_the_true_one_nor_more_than_the_error_above(
    values: list[int], q: float
) -> None:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    true = nearest_rank(values, q)
    reported = histogram.percentile(q)
    assert true <= reported <= max(true * (1 + RELATIVE_ERROR), true)
    assert reported <= max(values)


@given(st.lists(st.integers(0, 10**7)), st.lists(st.integers(0, 10**7)))
def test_merging_equals_recording_everything_in_one(left: list[int], right: list[int]) -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for value in left:
        a.record(value)
        both.record(value)
    for value in right:
        b.record(value)
        both.record(value)
    a.merge(b)
    assert a == both


def test_an_empty_histogram_reports_zeros_and_bad_percentiles_are_refused() -> None:
    histogram = Histogram()
    assert histogram.percentile(99) == 0
    assert histogram.summary() == {
        "p50": 0,
        "p90": 0,
        "p99": 0,
        "p99.9": 0,
        "max": 0,
        "mean": 0,
    }
    for bad in (0, -1, 100.5):
        with pytest.raises(ValueError):
            histogram.percentile(bad)


def test_summary_is_in_milliseconds_of_microsecond_samples() -> None:
    histogram = Histogram()
    for micros in (1_000, 2_000, 250_000):
        histogram.record(micros)
    summary = histogram.summary()
    assert summary["max"] == 250.0
    assert summary["p50"] == pytest.approx(2.0, rel=RELATIVE_ERROR)
    assert list(summary) == ["p50", "p90", "p99", "p99.9", "max", "mean"]
