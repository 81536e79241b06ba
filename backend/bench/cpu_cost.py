"""The CPU an operation costs over all of a system's processes, from readings around a window.

Pure: the bench's CPU watch (cpu_watch.py) collects the readings, this module
turns them into CPU per operation by component kind. Each process's CPU seconds
so far are read now and then: a component's from its heartbeats (about once a
second), the broker's from /proc, the bench's own from its clock. The CPU at a
window edge is interpolated between the readings just before and just after
it, so it is off by at most what the process used between those two readings
(one heartbeat interval); `error_seconds` adds these bounds up. A process whose
pid or start time differs across an edge restarted there and is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BROKER = "broker"
BENCH = "bench"  # the load generator itself: shown, never part of the system's total
# How the kinds are listed; kinds not named here follow in alphabetical order.
KIND_ORDER = ("client-portal", "admin-portal", "cache-node", "replica", "web", BROKER)

ProcessKey = tuple[str, str]  # (kind, id)


@dataclass(frozen=True)
class CpuSample:
    """One reading of a process's CPU seconds so far, timed on the bench's clock."""

    at: float
    cpu_seconds: float
    incarnation: tuple[int, float]  # (pid, start time): another one means it restarted


@dataclass(frozen=True)
class CpuReading:
    """A process's CPU seconds at a moment: within `error` of `cpu_seconds`."""

    cpu_seconds: float
    error: float
    incarnation: tuple[int, float]


Snapshot = Mapping[ProcessKey, CpuReading | str]  # a reading, or why there is none


def reading_at(samples: Sequence[CpuSample], moment: float) -> CpuReading | str:
    """The CPU seconds at `moment`, interpolated between the samples around it, or why
    they cannot be had. Samples are in the order they were taken."""
    before = next((s for s in reversed(samples) if s.at <= moment), None)
    after = next((s for s in samples if s.at >= moment), None)
    if before is None:
        return "no CPU reading before the window began"
    if after is None:
        return "no CPU reading after the window ended"
    if before.incarnation != after.incarnation:
        return "restarted during the window"
    if after.at == before.at:
        return CpuReading(before.cpu_seconds, 0.0, before.incarnation)
    share = (moment - before.at) / (after.at - before.at)
    low, high = before.cpu_seconds, max(before.cpu_seconds, after.cpu_seconds)
    estimate = low + share * (high - low)
    # The CPU at `moment` lies between the two readings, so this far off at most.
    return CpuReading(estimate, max(estimate - low, high - estimate), before.incarnation)


def snapshot(series: Mapping[ProcessKey, Sequence[CpuSample]], moment: float) -> Snapshot:
    """Every process's reading at `moment`."""
    return {key: reading_at(samples, moment) for key, samples in series.items()}


@dataclass(frozen=True)
class KindCost:
    """The CPU the processes of one kind used in the window."""

    kind: str
    processes: int
    cpu_seconds: float
    error_seconds: float


@dataclass(frozen=True)
class CpuCost:
    """CPU used in the measured window by kind, and what could not be measured."""

    ops: int  # operations that succeeded in the window
    window_seconds: float
    kinds: tuple[KindCost, ...]  # the system's processes, in KIND_ORDER
    bench: KindCost | None  # the load generator, apart
    unmeasured: tuple[tuple[str, str], ...]  # (process or kind, why)

    @property
    def cpu_seconds(self) -> float:
        return sum(kind.cpu_seconds for kind in self.kinds)

    @property
    def error_seconds(self) -> float:
        return sum(kind.error_seconds for kind in self.kinds)

    def ms_per_op(self, seconds: float) -> float | None:
        return seconds * 1000 / self.ops if self.ops else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON `taskring bench --json` writes under each result's "cpu"."""
        return {
            "ms_per_op": _rounded(self.ms_per_op(self.cpu_seconds)),
            "error_ms_per_op": _rounded(self.ms_per_op(self.error_seconds)),
            "cpu_seconds": round(self.cpu_seconds, 4),
            "window_seconds": self.window_seconds,
            "ops": self.ops,
            "by_kind": {kind.kind: self._kind_dict(kind) for kind in self.kinds},
            "bench": self._kind_dict(self.bench) if self.bench else None,
            "unmeasured": dict(self.unmeasured),
        }

    def _kind_dict(self, kind: KindCost) -> dict[str, Any]:
        return {
            "processes": kind.processes,
            "cpu_seconds": round(kind.cpu_seconds, 4),
            "ms_per_op": _rounded(self.ms_per_op(kind.cpu_seconds)),
            "error_ms_per_op": _rounded(self.ms_per_op(kind.error_seconds)),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def cost_by_kind(
    start: Snapshot,
    end: Snapshot,
    ops: int,
    window_seconds: float,
    unmeasured: Iterable[tuple[str, str]] = (),
) -> CpuCost:
    """The CPU each kind used between the `start` and `end` snapshots of its processes.

    A process counts when it has a reading at both edges of the same incarnation;
    every other one is listed as unmeasured with why, after those given."""
    totals: dict[str, list[float]] = {}  # kind -> [processes, seconds, error]
    missing = list(unmeasured)
    for key in sorted(set(start) | set(end)):
        used = _used(start.get(key), end.get(key))
        if isinstance(used, str):
            missing.append((f"{key[0]} {key[1]}", used))
            continue
        total = totals.setdefault(key[0], [0, 0.0, 0.0])
        total[0] += 1
        total[1] += used[0]
        total[2] += used[1]
    kinds = [KindCost(kind, int(n), seconds, error) for kind, (n, seconds, error) in totals.items()]
    bench = next((kind for kind in kinds if kind.kind == BENCH), None)
    system = sorted((kind for kind in kinds if kind.kind != BENCH), key=_kind_rank)
    return CpuCost(ops, window_seconds, tuple(system), bench, tuple(missing))


def _used(
    start: CpuReading | str | None, end: CpuReading | str | None
) -> tuple[float, float] | str:
    """(CPU seconds used, error bound) between two readings of one process, or why not."""
    if start is None:
        return "not heard from before the window began"
    if end is None:
        return "not heard from after the window ended"
    if isinstance(start, str):
        return start
    if isinstance(end, str):
        return end
    if start.incarnation != end.incarnation:
        return "restarted during the window"
    return max(0.0, end.cpu_seconds - start.cpu_seconds), start.error + end.error


def _kind_rank(kind: KindCost) -> tuple[int, str]:
    rank = KIND_ORDER.index(kind.kind) if kind.kind in KIND_ORDER else len(KIND_ORDER)
    return rank, kind.kind


def proc_stat_cpu(stat: str, ticks_per_second: int) -> tuple[float, int]:
    """(CPU seconds, start time in ticks) from the text of /proc/<pid>/stat: utime and
    stime are its 14th and 15th fields, starttime its 22nd, counted after the command
    name in parentheses (which may hold spaces and parentheses itself)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is the 3rd field (state)
    utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
    return (utime + stime) / ticks_per_second, starttime
