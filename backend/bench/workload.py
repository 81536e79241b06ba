"""What the load generator does next, as pure code: which client, which task, read or write.

A workload is a stream of operations over K clients, each holding T tasks
(titles `task-0000` .. `task-{T-1}`, created before the run). An operation
reads one client's whole bag of tasks or writes one task of it; `mixed`
reads with probability `read_ratio`. The client is chosen uniformly or by a
Zipf law (rank i drawn with weight 1 / (i+1)^s, the YCSB-style skew that
makes a few clients hot); the task to write is uniform over the client's T.

Every stream has its own seeded RNG, so a run with the same seed and the same
number of streams issues the same operations in the same order per stream.
"""

from __future__ import annotations

import bisect
import itertools
import random
import string
from dataclasses import dataclass
from enum import Enum

from backend.core.model.identity import cid_for_name, format_cid

WORKLOADS = ("write", "read", "mixed", "admin")
KEY_DISTRIBUTIONS = ("uniform", "zipfian")
CLIENT_NAME_PREFIX = "bench-client-"


class Kind(Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Op:
    """One operation: read or write, on client number `client`, task number `task`."""

    kind: Kind
    client: int
    task: int
    description: str = ""


@dataclass(frozen=True)
class WorkloadSpec:
    workload: str = "write"
    read_ratio: float = 0.9
    clients: int = 100
    tasks: int = 10
    keys: str = "uniform"
    zipf_s: float = 0.99
    description_bytes: int = 100
    seed: int = 1

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
        if self.keys not in KEY_DISTRIBUTIONS:
            raise ValueError(f"keys must be one of {', '.join(KEY_DISTRIBUTIONS)}")
        if not 0.0 <= self.read_ratio <= 1.0:
            raise ValueError("read ratio must be between 0 and 1")
        if self.clients < 1 or self.tasks < 1:
            raise ValueError("there must be at least one client and one task per client")
        if self.zipf_s <= 0:
            raise ValueError("the Zipf exponent must be positive")
        if self.description_bytes < 0:
            raise ValueError("the description size cannot be negative")

    @property
    def reads(self) -> float:
        """The share of reads this workload issues."""
        return {"write": 0.0, "read": 1.0}.get(self.workload, self.read_ratio)


def client_name(number: int) -> str:
    """The name of bench client `number`: the same names every run, so clients are reused."""
    return f"{CLIENT_NAME_PREFIX}{number:06d}"


def client_cid(number: int) -> str:
    """The CID of bench client `number`, as every portal derives it from the name."""
    return format_cid(cid_for_name(client_name(number)))


def task_title(number: int) -> str:
    return f"task-{number:04d}"


class UniformKeys:
    def __init__(self, count: int) -> None:
        self.count = count

    def choose(self, rng: random.Random) -> int:
        return rng.randrange(self.count)


class ZipfKeys:
    """Rank i in [0, count) with probability proportional to 1 / (i + 1) ** s."""

    def __init__(self, count: int, s: float) -> None:
        weights = (1.0 / (rank + 1) ** s for rank in range(count))
        self.cumulative = list(itertools.accumulate(weights))

    def choose(self, rng: random.Random) -> int:
        point = rng.random() * self.cumulative[-1]
        return min(bisect.bisect_right(self.cumulative, point), len(self.cumulative) - 1)

    def probability(self, rank: int) -> float:
        below = self.cumulative[rank - 1] if rank else 0.0
        return (self.cumulative[rank] - below) / self.cumulative[-1]


KeyChooser = UniformKeys | ZipfKeys


def key_chooser(spec: WorkloadSpec) -> KeyChooser:
    if spec.keys == "zipfian":
        return ZipfKeys(spec.clients, spec.zipf_s)
    return UniformKeys(spec.clients)


def stream_seed(seed: int, stream: int) -> int:
    # Distinct, reproducible seeds per stream without streams sharing a sequence.
    return seed * 1_000_003 + stream


class OpStream:
    """The operations of one stream (one in-flight slot of one connection), in order."""

    def __init__(self, spec: WorkloadSpec, stream: int, keys: KeyChooser | None = None) -> None:
        self.spec = spec
        self.keys = keys or key_chooser(spec)
        self.rng = random.Random(stream_seed(spec.seed, stream))
        self.reads = spec.reads
        self.sequence = 0
        self.filler = random_text(self.rng, spec.description_bytes)

    def next(self) -> Op:
        self.sequence += 1
        client = self.keys.choose(self.rng)
        if self.rng.random() < self.reads:
            return Op(Kind.READ, client, 0)
        task = self.rng.randrange(self.spec.tasks)
        return Op(Kind.WRITE, client, task, self.description())

    def description(self) -> str:
        """`description_bytes` of ASCII that differ from one write to the next."""
        stamp = f"{self.sequence:x}-"
        size = self.spec.description_bytes
        if size <= len(stamp):
            return stamp[:size]
        return stamp + self.filler[: size - len(stamp)]


def initial_description(spec: WorkloadSpec, client: int, task: int) -> str:
    """What task `task` of client `client` holds before the run."""
    text = f"initial {client}/{task} "
    size = spec.description_bytes
    return (text * (size // len(text) + 1))[:size]


def random_text(rng: random.Random, size: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choices(alphabet, k=size))
