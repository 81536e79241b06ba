"""When each operation is meant to start, as pure arithmetic.

Closed loop: a stream starts its next operation when the previous one
answered. Open loop: operations are due at a fixed total rate, the streams
interleaved into one evenly spaced sequence, and latency counts from when an
operation was due (no coordinated omission). Why, and what is counted:
docs/operating.md, Measuring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """The phases of a run in loop-clock seconds: warm-up from `start`, measuring to `end`."""

    start: float
    warmup: float
    duration: float

    @property
    def measure_from(self) -> float:
        return self.start + self.warmup

    @property
    def end(self) -> float:
        return self.measure_from + self.duration

    def measures(self, finished: float) -> bool:
        """Whether an operation that finished at `finished` is counted."""
        return self.measure_from <= finished < self.end


@dataclass(frozen=True)
class OpenLoopSchedule:
    """Due times for `streams` interleaved streams at `rate` operations per second in total."""

    rate: float
    streams: int
    start: float

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("the target rate must be positive")
        if self.streams < 1:
            raise ValueError("there must be at least one stream")

    def due(self, stream: int, k: int) -> float:
        """When stream `stream`'s k-th operation (k from 0) is due."""
        return self.start + (k * self.streams + stream) / self.rate

    def count_before(self, stream: int, moment: float) -> int:
        """How many of stream `stream`'s operations are due before `moment`."""
        # k is due before `moment` exactly when k * streams < slots; the estimate can be one
        # off where rounding puts a due time right on `moment`, so it is settled with `due`.
        slots = (moment - self.start) * self.rate - stream
        count = max(0, math.ceil(slots / self.streams))
        while count > 0 and self.due(stream, count - 1) >= moment:
            count -= 1
        while self.due(stream, count) < moment:
            count += 1
        return count
