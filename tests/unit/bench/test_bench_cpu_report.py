"""How CPU per operation is printed next to throughput and latency, and saved as JSON."""

from __future__ import annotations

from rich.console import Console

from backend.bench import report
from backend.bench.cpu_cost import CpuSample, cost_by_kind, snapshot
from backend.bench.histogram import Histogram
from backend.bench.results import RunResult


def rendered(*things: object) -> str:
    console = Console(width=200, record=True, color_system=None)
    for thing in things:
        console.print(thing)
    return console.export_text()


def measured() -> RunResult:
    one = (1, 0.0)
    series = {
        ("client-portal", "p1"): [CpuSample(0.0, 0.0, one), CpuSample(2.0, 0.4, one)],
        ("cache-node", "c1"): [CpuSample(0.0, 0.0, one), CpuSample(2.0, 0.3, one)],
        ("replica", "g1-1"): [CpuSample(0.0, 0.0, one), CpuSample(2.0, 0.3, one)],
        ("bench", "this process"): [CpuSample(0.0, 0.0, one), CpuSample(2.0, 0.5, one)],
    }
    cost = cost_by_kind(
        snapshot(series, 0.0),
        snapshot(series, 2.0),
        1000,
        2.0,
        [("broker", "not measured: it runs on another host (mqtt.example)")],
    )
    result = RunResult("taskring", 2.0, 1000, Histogram(), {})
    result.cpu = cost
    return result


def test_the_results_table_has_the_total_cpu_per_operation() -> None:
    text = rendered(report.results_table([measured()], "write"))
    assert "CPU ms/op" in text
    assert "1.000" in text


def test_the_cpu_table_breaks_the_total_down_by_kind() -> None:
    result = measured()
    assert result.cpu is not None
    text = rendered(report.cpu_table(result.target, result.cpu), *report.cpu_lines(result))
    lines = text.splitlines()
    assert lines[0].strip() == "taskring: CPU per operation"
    assert any("client portals" in line and "0.400" in line for line in lines)
    assert any("cache nodes" in line and "0.300" in line for line in lines)
    assert any("replicas" in line and "0.300" in line for line in lines)
    assert any("total" in line and "1.000" in line for line in lines)
    assert "broker: not measured: it runs on another host (mqtt.example)" in text
    assert "the bench itself: 0.500 ms/op (not in the total)" in text


def test_without_cpu_figures_the_results_table_has_no_cpu_column() -> None:
    result = RunResult("redis", 2.0, 1000, Histogram(), {})
    assert "CPU" not in rendered(report.results_table([result], "write"))


def test_why_cpu_is_not_shown_is_said_and_saved() -> None:
    result = RunResult("taskring", 2.0, 10, Histogram(), {})
    result.cpu_not_shown = "cannot reach the MQTT broker at mqtt://127.0.0.1:1883"
    text = rendered(*report.cpu_lines(result))
    assert "CPU per operation not shown: cannot reach the MQTT broker" in text
    saved = result.to_dict()
    assert saved["cpu"] is None
    assert saved["cpu_not_shown"] == result.cpu_not_shown


def test_the_json_of_a_measured_result_holds_the_cpu_by_kind() -> None:
    saved = measured().to_dict()
    assert saved["cpu"]["ms_per_op"] == 1.0
    assert set(saved["cpu"]["by_kind"]) == {"client-portal", "cache-node", "replica"}
    assert "cpu_not_shown" not in saved
