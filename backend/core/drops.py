"""Counting and logging messages a component drops, without letting a flood fill the log.

Every handler of an internal message either handles it or drops it; a drop is
counted by (what, why) and logged on its 1st, 10th, 100th, 1000th, ...
occurrence with the running count. No clock is read, so a pure core (and the
seeded simulator) stays deterministic.

    drops = Drops("cache node cache-node-1")
    drops.drop("announce", "positions must be a list of ring positions")
    drops.to_wire()   # [[what, why, count], ...] for the heartbeat's metrics["dropped"]

`why` should be a short fixed reason (a category, not the offending value), so
the counts stay few; `detail` may carry the specifics for the log line.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

MAX_REASONS = 256  # distinct (what, why) pairs kept; further ones count under "other"
MAX_LABEL = 120  # characters of `what` or `why` kept


class Drops:
    def __init__(self, owner: str = "", logger: logging.Logger | None = None) -> None:
        self.owner = owner
        self.log = logger or log
        self.counts: dict[tuple[str, str], int] = {}

    def bad(self, what: str, exc: Exception) -> None:
        """Drop for a validation error: its text, cut before any quoted value, is the why."""
        why = reason(exc)
        self.drop(what, why, "" if why == str(exc) else str(exc))

    def drop(self, what: str, why: str, detail: str = "", exc: BaseException | None = None) -> None:
        """Count one dropped message; log it if its count is 1, 10, 100, ... (with `exc`'s
        traceback, if given: a handler that raised is a bug to fix)."""
        key, count = self._count(what, why)
        if rate_limited(count):
            prefix = f"{self.owner}: " if self.owner else ""
            suffix = f" ({detail[:200]})" if detail else ""
            self.log.warning(
                "%sdropped a malformed %s: %s%s [%d so far]",
                prefix,
                key[0],
                key[1],
                suffix,
                count,
                exc_info=exc,
            )

    def count(self, what: str, why: str) -> int:
        """Count one dropped message without logging it (the caller logs in its own words,
        e.g. for a message that was well formed); return its running count."""
        return self._count(what, why)[1]

    def _count(self, what: str, why: str) -> tuple[tuple[str, str], int]:
        key = (str(what)[:MAX_LABEL], str(why)[:MAX_LABEL])
        if key not in self.counts and len(self.counts) >= MAX_REASONS:
            key = ("other", "other")
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        return key, count

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_wire(self) -> list[list[Any]]:
        return [[what, why, n] for (what, why), n in self.counts.items()]


def rate_limited(n: int) -> bool:
    """Whether the n-th occurrence of something is worth a log line: 1, 10, 100, ..."""
    if n < 1:
        return False
    while n % 10 == 0:
        n //= 10
    return n == 1


def reason(exc: Exception) -> str:
    """A validation error's text without the offending value ("..., got 5"), so one kind
    of fault counts as one reason."""
    return str(exc).split(", got ", 1)[0][:MAX_LABEL] or type(exc).__name__
