"""What a bench run prints and saves: the results table, the ratios between targets, JSON.

The first result is the baseline of the ratios: taskring when it ran, else
the first peer. A throughput ratio above 1 means the baseline did more
operations per second; a latency ratio above 1 means it was slower.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from backend.bench.cpu_cost import CpuCost, KindCost
from backend.bench.histogram import PERCENTILES
from backend.bench.results import RunResult

LATENCY_COLUMNS = [f"p{q:g}" for q in PERCENTILES] + ["max"]
KIND_NAMES = {
    "client-portal": "client portals",
    "admin-portal": "admin portals",
    "cache-node": "cache nodes",
    "replica": "replicas",
    "web": "web",
    "broker": "broker",
}


def results_table(results: list[RunResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("target")
    table.add_column("ops/s", justify="right")
    for name in LATENCY_COLUMNS:
        table.add_column(f"{name} ms", justify="right")
    table.add_column("errors", justify="right")
    with_cpu = any(result.cpu for result in results)
    if with_cpu:
        table.add_column("CPU ms/op", justify="right")
    for result in results:
        latency = result.latency.summary()
        cells = [
            result.target,
            f"{result.ops_per_second:,.0f}",
            *(f"{latency[name]:.2f}" for name in LATENCY_COLUMNS),
            str(result.error_count),
        ]
        if with_cpu:
            cells.append(_ms(result.cpu.ms_per_op(result.cpu.cpu_seconds)) if result.cpu else "-")
        table.add_row(*cells)
    return table


def cpu_table(target: str, cost: CpuCost) -> Table:
    """What each kind of process used in the measured window, per operation."""
    table = Table(
        title=f"{target}: CPU per operation",
        title_justify="left",
        caption=f"over all processes, {cost.ops:,} operations in {cost.window_seconds:g} s;"
        " CPU seconds from each process's heartbeats (one a second) or /proc,"
        " interpolated to the window's edges; ± bounds what falls between two readings",
        caption_justify="left",
    )
    for name in ("kind", "processes", "CPU s", "ms/op", "± ms/op", "share"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    total = cost.cpu_seconds
    for kind in cost.kinds:
        table.add_row(*_cpu_row(cost, kind, total))
    processes = sum(kind.processes for kind in cost.kinds)
    table.add_row(*_cpu_row(cost, KindCost("total", processes, total, cost.error_seconds), total))
    return table


def _cpu_row(cost: CpuCost, kind: KindCost, total: float) -> list[str]:
    return [
        KIND_NAMES.get(kind.kind, kind.kind),
        str(kind.processes),
        f"{kind.cpu_seconds:.3f}",
        _ms(cost.ms_per_op(kind.cpu_seconds)),
        _ms(cost.ms_per_op(kind.error_seconds)),
        f"{kind.cpu_seconds / total:.0%}" if total else "-",
    ]


def cpu_lines(result: RunResult) -> list[Text]:
    """Why CPU is not shown, what was not measured, and what the bench itself used."""
    if result.cpu_not_shown:
        return [Text(f"{result.target}: CPU per operation not shown: {result.cpu_not_shown}")]
    cost = result.cpu
    if cost is None:
        return []
    lines = [Text(f"{name}: {why}") for name, why in cost.unmeasured]
    if cost.bench is not None:
        used = _ms(cost.ms_per_op(cost.bench.cpu_seconds))
        lines.append(Text(f"the bench itself: {used} ms/op (not in the total)"))
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def error_lines(results: list[RunResult]) -> list[Text]:
    """One line per target that had errors or missed its schedule."""
    lines = []
    for result in results:
        parts = [f"{code} {count:,}" for code, count in result.errors.items()]
        if result.missed:
            parts.append(f"{result.missed:,} due operations never started (open loop behind)")
        if parts:
            lines.append(Text(f"{result.target}: " + ", ".join(parts)))
    return lines


def ratios(results: list[RunResult]) -> list[dict[str, Any]]:
    """The baseline (first result) against each other target."""
    if len(results) < 2:
        return []
    base = results[0]
    base_latency = base.latency.summary()
    rows = []
    for other in results[1:]:
        latency = other.latency.summary()
        row: dict[str, Any] = {
            "baseline": base.target,
            "versus": other.target,
            "throughput": _ratio(base.ops_per_second, other.ops_per_second),
        }
        for name in ("p50", "p99", "p99.9"):
            row[name] = _ratio(base_latency[name], latency[name])
        rows.append(row)
    return rows


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="ratios",
        title_justify="left",
        caption="throughput above 1x: the first did more ops/s; latency below 1x: it was faster",
        caption_justify="left",
    )
    for name in ("", "throughput", "p50", "p99", "p99.9"):
        table.add_column(name, justify="right" if name else "left")
    for row in rows:
        cells = [_times(row[name]) for name in ("throughput", "p50", "p99", "p99.9")]
        table.add_row(f"{row['baseline']} / {row['versus']}", *cells)
    return table


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def document(
    command: str,
    parameters: dict[str, Any],
    results: list[RunResult],
    machine: dict[str, Any],
    commit: str | None,
    skipped: dict[str, str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything about a run, for `--json`."""
    return {
        "command": command,
        "date": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "machine": machine,
        "commit": commit,
        "parameters": parameters,
        "results": [result.to_dict() for result in results],
        "ratios": ratios(results),
        "skipped": skipped,
    }
