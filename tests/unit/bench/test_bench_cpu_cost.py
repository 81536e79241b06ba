"""CPU per operation from made-up readings: interpolation at the window's edges, the
bound on its error, the sums by kind, and what is left unmeasured and why."""

from __future__ import annotations

import pytest

from backend.bench.cpu_cost import (
    CpuReading,
    CpuSample,
    cost_by_kind,
    proc_stat_cpu,
    reading_at,
    snapshot,
)

ONE = (100, 5.0)  # (pid, start time) of a process
RESTARTED = (200, 50.0)


def samples(*points: tuple[float, float], incarnation: tuple[int, float] = ONE) -> list[CpuSample]:
    return [CpuSample(at, cpu, incarnation) for at, cpu in points]


def test_a_reading_between_two_samples_is_interpolated_within_a_bound() -> None:
    reading = reading_at(samples((10.0, 2.0), (11.0, 3.0)), 10.25)
    assert isinstance(reading, CpuReading)
    assert reading.cpu_seconds == pytest.approx(2.25)
    # the true value lies between 2.0 and 3.0: at most 0.75 from the estimate
    assert reading.error == pytest.approx(0.75)
    assert reading.incarnation == ONE


def test_a_sample_at_the_moment_itself_is_exact() -> None:
    reading = reading_at(samples((9.0, 1.0), (10.0, 2.0), (11.0, 3.0)), 10.0)
    assert reading == CpuReading(2.0, 0.0, ONE)


def test_the_samples_nearest_the_moment_are_used() -> None:
    series = samples((8.0, 0.0), (9.0, 1.0), (10.0, 1.5), (11.0, 4.0))
    reading = reading_at(series, 9.5)
    assert isinstance(reading, CpuReading)
    assert reading.cpu_seconds == pytest.approx(1.25)
    assert reading.error == pytest.approx(0.25)


def test_no_reading_without_a_sample_on_each_side() -> None:
    series = samples((10.0, 1.0), (11.0, 2.0))
    assert reading_at(series, 9.0) == "no CPU reading before the window began"
    assert reading_at(series, 12.0) == "no CPU reading after the window ended"
    assert reading_at([], 1.0) == "no CPU reading before the window began"


def test_a_restart_between_the_samples_around_a_moment_gives_no_reading() -> None:
    series = [CpuSample(10.0, 5.0, ONE), CpuSample(11.0, 0.1, RESTARTED)]
    assert reading_at(series, 10.5) == "restarted during the window"


def test_cpu_per_operation_is_summed_by_kind_in_a_fixed_order() -> None:
    series = {
        ("replica", "g1-1"): samples((0.5, 10.0), (1.5, 11.0), (3.5, 13.0)),
        ("replica", "g1-2"): samples((0.0, 1.0), (4.0, 1.4)),
        ("client-portal", "client-portal-1"): samples((1.0, 0.0), (3.0, 2.0)),
        ("broker", "pid 7"): samples((1.0, 3.0), (3.0, 3.5)),
    }
    start, end = snapshot(series, 1.0), snapshot(series, 3.0)
    cost = cost_by_kind(start, end, ops=1000, window_seconds=2.0)
    assert [kind.kind for kind in cost.kinds] == ["client-portal", "replica", "broker"]
    portal, replicas, broker = cost.kinds
    assert (portal.processes, portal.cpu_seconds, portal.error_seconds) == (1, 2.0, 0.0)
    # g1-1: 10.5 (within 0.5) -> 12.5 (within 1.5); g1-2: 1.1 -> 1.3 (each within 0.3)
    assert replicas.processes == 2
    assert replicas.cpu_seconds == pytest.approx(2.2)
    assert replicas.error_seconds == pytest.approx(2.6)
    assert broker.cpu_seconds == pytest.approx(0.5)
    assert cost.cpu_seconds == pytest.approx(4.7)
    assert cost.ms_per_op(cost.cpu_seconds) == pytest.approx(4.7)
    assert cost.ms_per_op(replicas.cpu_seconds) == pytest.approx(2.2)
    assert cost.unmeasured == ()
    assert cost.bench is None


def test_the_bench_itself_is_shown_apart_from_the_system() -> None:
    series = {
        ("bench", "this process"): samples((0.0, 0.0), (2.0, 4.0)),
        ("cache-node", "cache-node-1"): samples((0.0, 0.0), (2.0, 1.0)),
    }
    cost = cost_by_kind(snapshot(series, 0.0), snapshot(series, 2.0), 500, 2.0)
    assert [kind.kind for kind in cost.kinds] == ["cache-node"]
    assert cost.cpu_seconds == pytest.approx(1.0)
    assert cost.bench is not None and cost.bench.cpu_seconds == pytest.approx(4.0)
    assert cost.to_dict()["bench"]["ms_per_op"] == pytest.approx(8.0)


def test_processes_without_readings_at_both_edges_are_listed_with_why() -> None:
    series = {
        ("replica", "late"): samples((5.0, 1.0), (7.0, 2.0)),
        ("replica", "gone"): samples((0.0, 1.0), (2.0, 2.0)),
        ("replica", "restarted"): [CpuSample(0.0, 9.0, ONE), CpuSample(10.0, 1.0, RESTARTED)],
        ("web", "web-1"): samples((0.0, 0.0), (10.0, 1.0)),
    }
    start, end = snapshot(series, 1.0), snapshot(series, 6.0)
    extra = [("broker", "not measured: it runs on another host (mqtt.example)")]
    cost = cost_by_kind(start, end, 100, 5.0, extra)
    assert [kind.kind for kind in cost.kinds] == ["web"]
    assert dict(cost.unmeasured) == {
        "broker": "not measured: it runs on another host (mqtt.example)",
        "replica gone": "no CPU reading after the window ended",
        "replica late": "no CPU reading before the window began",
        "replica restarted": "restarted during the window",
    }


def test_a_restart_inside_the_window_is_caught_across_the_edges() -> None:
    start = {("replica", "g1-1"): CpuReading(5.0, 0.1, ONE)}
    end = {("replica", "g1-1"): CpuReading(0.5, 0.1, RESTARTED)}
    cost = cost_by_kind(start, end, 10, 1.0)
    assert cost.kinds == ()
    assert cost.unmeasured == (("replica g1-1", "restarted during the window"),)


def test_a_process_in_one_snapshot_only_is_unmeasured() -> None:
    reading = CpuReading(1.0, 0.0, ONE)
    cost = cost_by_kind({("web", "w"): reading}, {("replica", "r"): reading}, 10, 1.0)
    assert dict(cost.unmeasured) == {
        "replica r": "not heard from before the window began",
        "web w": "not heard from after the window ended",
    }


def test_no_operation_means_no_figure_per_operation() -> None:
    series = {("web", "web-1"): samples((0.0, 0.0), (1.0, 1.0))}
    cost = cost_by_kind(snapshot(series, 0.0), snapshot(series, 1.0), 0, 1.0)
    assert cost.ms_per_op(cost.cpu_seconds) is None
    assert cost.to_dict()["ms_per_op"] is None


def test_the_json_form_lists_every_kind_and_the_total() -> None:
    series = {
        ("client-portal", "p1"): samples((0.0, 1.0), (2.0, 1.5)),
        ("client-portal", "p2"): samples((0.0, 2.0), (2.0, 2.5)),
    }
    cost = cost_by_kind(snapshot(series, 0.0), snapshot(series, 2.0), 2000, 2.0)
    assert cost.to_dict() == {
        "ms_per_op": 0.5,
        "error_ms_per_op": 0.0,
        "cpu_seconds": 1.0,
        "window_seconds": 2.0,
        "ops": 2000,
        "by_kind": {
            "client-portal": {
                "processes": 2,
                "cpu_seconds": 1.0,
                "ms_per_op": 0.5,
                "error_ms_per_op": 0.0,
            }
        },
        "bench": None,
        "unmeasured": {},
    }


def test_proc_stat_gives_user_plus_system_time_and_the_start_time() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice threads itrealvalue starttime ...
    stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 7 3 20 0 1 0 98765 1"
    assert proc_stat_cpu(stat, 100) == (3.0, 98765)
