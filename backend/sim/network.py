"""A seeded in-memory network over virtual time: the simulator's only source of delay,
loss, duplication and reordering.

No real time and no asyncio: a discrete-event scheduler pops the earliest event
from a heap and runs it, so a simulated minute of thousands of nodes takes as
long as its events take to compute. Every random choice comes from the one
random.Random the simulator seeds, so a run replays exactly from its seed.

Delays are a fixed latency plus an exponential jitter, which reorders messages
between the same two endpoints. An endpoint that is detached (crashed) swallows
what is sent to it; partitions drop messages between groups.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    latency: float = 0.001  # seconds, one way, the least a message takes
    jitter: float = 0.002  # mean of the exponential delay added on top (reorders)
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter cannot be negative")
        if not (0 <= self.drop < 1 and 0 <= self.duplicate < 1):
            raise ValueError("drop and duplicate are probabilities in [0, 1)")


class Scheduler:
    """Virtual time and the events waiting for it."""

    __slots__ = ("_heap", "_seq", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0

    def at(self, time: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(time, self.now), self._seq, fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run_until(self, end: float) -> None:
        """Run every event due at or before `end`; the clock then reads `end`."""
        heap = self._heap
        while heap and heap[0][0] <= end:
            time, _, fn, args = heapq.heappop(heap)
            self.now = time
            fn(*args)
        self.now = max(self.now, end)

    @property
    def pending(self) -> int:
        return len(self._heap)


class Network:
    """Endpoints by name; `send` schedules delivery subject to the configured faults."""

    __slots__ = ("_groups", "_receivers", "config", "counts", "rng", "scheduler")

    def __init__(self, scheduler: Scheduler, rng: random.Random, config: NetworkConfig) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.config = config
        self._receivers: dict[str, Callable[[Any], None]] = {}
        self._groups: dict[str, int] | None = None
        self.counts = {"sent": 0, "dropped": 0, "duplicated": 0, "delivered": 0}

    def attach(self, name: str, receiver: Callable[[Any], None]) -> None:
        self._receivers[name] = receiver

    def detach(self, name: str) -> None:
        """The endpoint crashed: everything on its way to it is lost."""
        self._receivers.pop(name, None)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only endpoints in the same group reach each other (unlisted ones: group -1)."""
        self._groups = {name: i for i, group in enumerate(groups) for name in group}

    def heal(self) -> None:
        self._groups = None

    def send(self, src: str, dst: str, message: Any) -> None:
        cfg, rng, counts = self.config, self.rng, self.counts
        counts["sent"] += 1
        if self._cut(src, dst) or (cfg.drop and rng.random() < cfg.drop):
            counts["dropped"] += 1
            return
        copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
        counts["duplicated"] += copies - 1
        for _ in range(copies):
            delay = cfg.latency + (rng.expovariate(1 / cfg.jitter) if cfg.jitter else 0.0)
            self.scheduler.after(delay, self._deliver, dst, message)

    def _cut(self, src: str, dst: str) -> bool:
        groups = self._groups
        return groups is not None and groups.get(src, -1) != groups.get(dst, -1)

    def _deliver(self, dst: str, message: Any) -> None:
        receiver = self._receivers.get(dst)
        if receiver is not None:
            self.counts["delivered"] += 1
            receiver(message)
