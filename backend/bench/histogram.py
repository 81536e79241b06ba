"""A latency recorder in the style of HdrHistogram: log-linear buckets, bounded relative error.

Values are whole microseconds. Values below 2**SUB_BITS each have their own
bucket (exact); above that, each power of two is cut into 2**(SUB_BITS-1)
equal buckets, so a bucket is never wider than 1/2**(SUB_BITS-1) of the
values in it: with SUB_BITS = 8 every reported percentile is within 0.8% of
the true one, whatever the range, in a few hundred counters.

A percentile q is the nearest-rank value: the smallest recorded value with
at least q% of all values at or below it. The histogram reports the upper
end of that value's bucket (never less than the true value, like HdrHistogram's
"highest equivalent value"), capped at the exact maximum. Histograms merge by
adding counts, so each connection can keep its own.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

SUB_BITS = 8
EXACT_LIMIT = 1 << SUB_BITS
HALF = 1 << (SUB_BITS - 1)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
RELATIVE_ERROR = 1 / HALF


def bucket_of(value: int) -> int:
    """The bucket index of a value (values below 0 count as 0)."""
    if value < EXACT_LIMIT:
        return max(value, 0)
    shift = value.bit_length() - SUB_BITS
    return EXACT_LIMIT + (shift - 1) * HALF + ((value >> shift) - HALF)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that fall in bucket `index`."""
    if index < EXACT_LIMIT:
        return index, index
    shift, offset = divmod(index - EXACT_LIMIT, HALF)
    shift += 1
    low = (HALF + offset) << shift
    return low, low + (1 << shift) - 1


@dataclass
class Histogram:
    counts: Counter[int] = field(default_factory=Counter)
    total: int = 0
    sum: int = 0
    min: int | None = None
    max: int = 0

    def record(self, value: int) -> None:
        value = max(int(value), 0)
        self.counts[bucket_of(value)] += 1
        self.total += 1
        self.sum += value
        self.max = max(self.max, value)
        self.min = value if self.min is None else min(self.min, value)

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)
        self.total += other.total
        self.sum += other.sum
        self.max = max(self.max, other.max)
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)

    def percentile(self, q: float) -> int:
        """The nearest-rank q-th percentile (0 < q <= 100), within RELATIVE_ERROR above."""
        if not 0 < q <= 100:
            raise ValueError("a percentile is above 0 and at most 100")
        if not self.total:
            return 0
        # rounding first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point
        rank = max(1, math.ceil(round(q * self.total / 100, 9)))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def summary(self) -> dict[str, float]:
        """p50, p90, p99, p99.9, max and mean, in milliseconds."""
        result = {f"p{q:g}": self.percentile(q) / 1000 for q in PERCENTILES}
        result["max"] = self.max / 1000
        result["mean"] = self.mean / 1000
        return result
