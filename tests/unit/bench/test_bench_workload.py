"""The bench's pure parts: key choice, the operation mix, and the open-loop schedule."""

from __future__ import annotations

import collections
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.bench.results import Recorder
from backend.bench.schedule import OpenLoopSchedule, Window
from backend.bench.workload import (
    Kind,
    OpStream,
    UniformKeys,
    WorkloadSpec,
    ZipfKeys,
    client_cid,
    client_name,
    initial_description,
)
from backend.core.model.identity import cid_for_name, format_cid

DRAWS = 100_000


def frequencies(chooser, draws: int = DRAWS, seed: int = 7) -> collections.Counter[int]:
    rng = random.Random(seed)
    return collections.Counter(chooser.choose(rng) for _ in range(draws))


# ---- keys ----------------------------------------------------------------------------


def test_uniform_keys_cover_every_client_about_equally() -> None:
    counts = frequencies(UniformKeys(50))
    assert set(counts) == set(range(50))
    expected = DRAWS / 50
    assert all(abs(count - expected) < 0.15 * expected for count in counts.values())


def test_zipf_probabilities_follow_the_law() -> None:
    keys = ZipfKeys(100, 0.99)
    harmonic = sum(1 / (rank + 1) ** 0.99 for rank in range(100))
    for rank in (0, 1, 9, 99):
        assert keys.probability(rank) == pytest.approx(1 / (rank + 1) ** 0.99 / harmonic)
    assert sum(keys.probability(rank) for rank in range(100)) == pytest.approx(1.0)


def test_zipf_draws_match_the_probabilities_and_the_head_is_hot() -> None:
    keys = ZipfKeys(100, 0.99)
    counts = frequencies(keys)
    assert set(counts) <= set(range(100))
    for rank in (0, 1, 2, 10):
        expected = keys.probability(rank) * DRAWS
        assert abs(counts[rank] - expected) < 0.1 * expected + 30
    assert counts[0] > 2 * counts[2] > 2 * counts[10]
    # with s close to 1 the top 10% of 100 clients get well over half the traffic
    assert sum(counts[rank] for rank in range(10)) > 0.5 * DRAWS


def test_a_larger_exponent_skews_more() -> None:
    mild = frequencies(ZipfKeys(100, 0.5))[0]
    steep = frequencies(ZipfKeys(100, 1.5))[0]
    assert steep > 2 * mild


# ---- the operation mix ----------------------------------------------------------------


def ops(spec: WorkloadSpec, stream: int = 0, count: int = 2_000):
    generator = OpStream(spec, stream)
    return [generator.next() for _ in range(count)]


def test_write_and_read_workloads_are_pure() -> None:
    assert {op.kind for op in ops(WorkloadSpec(workload="write"))} == {Kind.WRITE}
    assert {op.kind for op in ops(WorkloadSpec(workload="read"))} == {Kind.READ}


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.9, 1.0])
def test_mixed_reads_in_the_given_ratio(ratio: float) -> None:
    drawn = ops(WorkloadSpec(workload="mixed", read_ratio=ratio), count=10_000)
    reads = sum(op.kind is Kind.READ for op in drawn) / len(drawn)
    assert reads == pytest.approx(ratio, abs=0.02)


def test_the_same_seed_and_stream_repeat_and_others_differ() -> None:
    spec = WorkloadSpec(workload="mixed", keys="zipfian", seed=42)
    assert ops(spec, stream=3) == ops(spec, stream=3)
    assert ops(spec, stream=3) != ops(spec, stream=4)
    assert ops(spec, stream=3) != ops(WorkloadSpec(workload="mixed", keys="zipfian", seed=43), 3)


def test_writes_stay_within_the_clients_and_tasks_and_have_the_asked_size() -> None:
    spec = WorkloadSpec(workload="write", clients=7, tasks=3, description_bytes=40)
    drawn = ops(spec)
    assert {op.client for op in drawn} == set(range(7))
    assert {op.task for op in drawn} == set(range(3))
    assert all(len(op.description.encode()) == 40 for op in drawn)
    assert len({op.description for op in drawn}) == len(drawn)  # every write changes something


@pytest.mark.parametrize("size", [0, 1, 3, 100, 16_384])
def test_descriptions_of_any_size(size: int) -> None:
    spec = WorkloadSpec(description_bytes=size)
    assert len(OpStream(spec, 0).description()) == size
    assert len(initial_description(spec, 5, 2)) == size


def test_clients_have_stable_names_and_the_portals_cids() -> None:
    assert client_name(12) == "bench-client-000012"
    assert client_cid(12) == format_cid(cid_for_name("bench-client-000012"))


@pytest.mark.parametrize(
    "fields",
    [
        {"workload": "delete"},
        {"keys": "gaussian"},
        {"read_ratio": 1.5},
        {"clients": 0},
        {"tasks": 0},
        {"zipf_s": 0},
        {"description_bytes": -1},
    ],
)
def test_bad_specs_are_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        WorkloadSpec(**fields)


# ---- the open-loop schedule and the measured window -------------------------------------------


@given(
    st.floats(min_value=1, max_value=100_000),
    st.integers(min_value=1, max_value=64),
)
def test_streams_interleave_into_one_evenly_spaced_sequence(rate: float, streams: int) -> None:
    schedule = OpenLoopSchedule(rate, streams, start=10.0)
    times = sorted(schedule.due(s, k) for s in range(streams) for k in range(5))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 10.0
    assert all(gap == pytest.approx(1 / rate) for gap in gaps)


@given(
    st.floats(min_value=0.5, max_value=5_000),
    st.integers(min_value=1, max_value=16),
    st.floats(min_value=-1, max_value=20),
)
def test_count_before_agrees_with_the_due_times(rate: float, streams: int, moment: float) -> None:
    schedule = OpenLoopSchedule(rate, streams, start=0.0)
    for stream in range(streams):
        counted = schedule.count_before(stream, moment)
        assert all(schedule.due(stream, k) < moment for k in range(counted))
        assert schedule.due(stream, counted) >= moment - 1e-9


def test_a_due_time_that_rounds_onto_the_moment_is_not_counted_before_it() -> None:
    schedule = OpenLoopSchedule(50.0, 1, start=0.0)  # 1.1 * 50 is 55.00000000000001
    assert schedule.count_before(0, 1.1) == 55
    assert schedule.due(0, 54) < 1.1 <= schedule.due(0, 55)


def test_a_second_at_a_rate_holds_that_many_operations() -> None:
    schedule = OpenLoopSchedule(1_000, 8, start=5.0)
    due = sum(schedule.count_before(s, 6.0) - schedule.count_before(s, 5.0) for s in range(8))
    assert due == 1_000


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError):
        OpenLoopSchedule(0, 4, 0.0)
    with pytest.raises(ValueError):
        OpenLoopSchedule(10, 0, 0.0)


def test_only_operations_finishing_in_the_window_are_counted_with_latency_from_the_start() -> None:
    window = Window(start=100.0, warmup=2.0, duration=10.0)
    assert (window.measure_from, window.end) == (102.0, 112.0)
    recorder = Recorder(window)
    recorder.record(101.0, 101.5, None)  # warm-up: not counted
    recorder.record(101.0, 102.5, None)  # due in warm-up, finished late: 1.5 s of latency
    recorder.record(103.0, 103.002, None)
    recorder.record(104.0, 104.1, "timeout")
    recorder.record(111.9, 112.0, None)  # finished at the end: not counted
    assert recorder.ok == 2
    assert recorder.errors == {"timeout": 1}
    assert recorder.latency.max == 1_500_000
    assert recorder.latency.min == 2_000
    assert recorder.live.done == 5 and recorder.live.errors == 1
