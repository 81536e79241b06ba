"""What one run against one target measured, and the live counts the progress bar shows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from backend.bench.cpu_cost import CpuCost
from backend.bench.histogram import Histogram
from backend.bench.schedule import Window


@dataclass
class Live:
    """Counts since the start of the run, warm-up included, for the progress display."""

    done: int = 0
    errors: int = 0
    phase: str = "connecting"


@dataclass
class Recorder:
    """Collects the operations that fall in the measured window."""

    window: Window
    latency: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)
    ok: int = 0
    live: Live = field(default_factory=Live)

    def record(self, started: float, finished: float, error: str | None) -> None:
        """One operation that started (or was due) at `started` and ended at `finished`."""
        self.live.done += 1
        if error is not None:
            self.live.errors += 1
        if not self.window.measures(finished):
            return
        if error is None:
            self.ok += 1
            self.latency.record(round((finished - started) * 1_000_000))
        else:
            self.errors[error] += 1


@dataclass
class RunResult:
    target: str
    duration: float
    ok: int
    latency: Histogram
    errors: dict[str, int]
    rate: float | None = None  # the open-loop target rate; None for closed loop
    missed: int = 0  # open loop: operations due before the end that never started
    window: Window | None = None  # on the event loop's clock
    cpu: CpuCost | None = None  # what the system's processes used in the window
    cpu_not_shown: str | None = None  # why `cpu` is None when it was asked for

    @classmethod
    def of(cls, target: str, recorder: Recorder, rate: float | None, missed: int) -> RunResult:
        return cls(
            target=target,
            duration=recorder.window.duration,
            ok=recorder.ok,
            latency=recorder.latency,
            errors=dict(recorder.errors.most_common()),
            rate=rate,
            missed=missed,
            window=recorder.window,
        )

    @property
    def ops_per_second(self) -> float:
        return self.ok / self.duration if self.duration else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "duration_s": self.duration,
            "ops": self.ok,
            "ops_per_second": round(self.ops_per_second, 1),
            "target_rate": self.rate,
            "missed": self.missed,
            "latency_ms": {name: round(value, 3) for name, value in self.latency.summary().items()},
            "errors": self.errors,
            "cpu": self.cpu.to_dict() if self.cpu else None,
            **({"cpu_not_shown": self.cpu_not_shown} if self.cpu_not_shown else {}),
        }
