"""The monotonic clock that leases, elections and timeouts are measured on.

Every reading that a lease, a proposal or read timeout, or a tick's notion of
"now" depends on comes from `monotonic()`, and the periodic ticks sleep with
`sleep()`. Normally these are time.monotonic and asyncio.sleep. Under the
failpoint `clock.rate=R` (docs/operating.md, "Failpoints"; for fault testing)
the clock runs R times as fast as the real one from the moment the rate is
seen, without a jump when it changes, and a tick's sleep lasts 1/R as long in
real time, so the process's whole sense of time is skewed, as with a drifting
clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from backend.adapters import failpoints


class RatedClock:
    """A monotonic clock running at `rate()` times the real one; continuous when the
    rate changes (the time so far is kept, only its speed from now on changes)."""

    def __init__(
        self, rate: Callable[[], float], real: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate_source = rate
        self._real = real
        self._anchor_real = real()
        self._anchor = self._anchor_real  # starts equal to the real clock
        self._rate = 1.0

    def rate(self) -> float:
        """The rate in force, taking up a change."""
        real = self._real()
        rate = self._rate_source()
        if rate != self._rate:
            self._anchor += (real - self._anchor_real) * self._rate
            self._anchor_real = real
            self._rate = rate
        return self._rate

    def __call__(self) -> float:
        rate = self.rate()
        return self._anchor + (self._real() - self._anchor_real) * rate


def _failpoint_rate() -> float:
    return failpoints.current().clock_rate


_clock: RatedClock | None = RatedClock(_failpoint_rate) if failpoints.enabled() else None


def monotonic() -> float:
    """Seconds on this process's monotonic clock (time.monotonic unless skewed)."""
    if _clock is None:
        return time.monotonic()
    return _clock()


async def sleep(seconds: float) -> None:
    """Sleep `seconds` as this process's clock measures them."""
    rate = 1.0 if _clock is None else _clock.rate()
    await asyncio.sleep(seconds / rate)
