"""The Chord paper's figures, measured on our ring in the simulator; prints Markdown tables.

    python -m backend.sim.chord_figures [--quick]

1. Lookup path length against the number of ring positions N (the paper: about
   ½·log2 N), counted as messages from the entry to the owner, and also up to
   the owner's predecessor, which is what the paper counts.
2. Keys per cache node with and without virtual nodes: the 1st and 99th
   percentile (and the maximum) over the mean, and how many keys move when a
   cache node joins.
3. Lookups right after a fraction of the nodes fail at once, for successor
   lists of length r = 2·log2 N and shorter: how many reach the key's true
   owner, and how long the ring takes to be exactly right again.

Every number comes from fixed seeds, so a rerun prints the same tables.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from bisect import bisect_left
from dataclasses import dataclass, replace

from backend.core.chord import ChordConfig, successor_list_length, vnode_position
from backend.core.model.identity import cid_for_name
from backend.sim.chord_sim import SIM_CONFIG, ChordSim

# ---- 1. path length -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathLengths:
    positions: int
    hops: list[int]  # entry to owner, one per lookup

    @property
    def mean(self) -> float:
        return statistics.fmean(self.hops)

    @property
    def mean_to_predecessor(self) -> float:
        """The paper's count: hops until the node that knows the owner."""
        return statistics.fmean(max(h - 1, 0) for h in self.hops)

    def percentile(self, p: float) -> int:
        ordered = sorted(self.hops)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def path_lengths(hosts: int, vnodes: int = 1, lookups: int = 1000, seed: int = 1) -> PathLengths:
    """Lookups for random keys from random cache nodes of a stable ring."""
    sim = ChordSim(seed, vnodes=vnodes, config=_config(hosts * vnodes))
    sim.install_ring(hosts)
    rng = random.Random(seed)
    keys = [rng.getrandbits(64) for _ in range(lookups)]
    results = sim.lookups(keys, timeout=30)
    wrong = [r for r in results if r.owner != sim.true_owner(r.key)]
    if wrong:
        raise AssertionError(f"seed {seed}: {len(wrong)} lookups missed the owner: {wrong[0]}")
    return PathLengths(hosts * vnodes, [r.hops for r in results])


# ---- 2. load ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    hosts: int
    vnodes: int
    keys: int
    p1: float  # 1st percentile of keys per cache node, over the mean
    p99: float
    max: float
    moved_on_join: float  # mean fraction of all keys that moved when one cache node joined
    moved_elsewhere: int  # keys that moved anywhere but to the newcomer (must be 0)


def client_keys(count: int) -> list[int]:
    """Ring positions of `count` clients, computed as the store computes CIDs."""
    return [cid_for_name(f"client {i}") for i in range(count)]


def owners(keys: list[int], hosts: list[str], vnodes: int) -> list[str]:
    ring = sorted((vnode_position(h, i), h) for h in hosts for i in range(vnodes))
    positions = [p for p, _ in ring]
    return [ring[bisect_left(positions, k) % len(ring)][1] for k in keys]


def load(hosts: int, vnodes: int, keys: list[int], joins: int = 10) -> Load:
    names = [f"cache-{i}" for i in range(hosts)]
    before = owners(keys, names, vnodes)
    counts = _counts(before, names)
    mean = len(keys) / hosts
    moved = elsewhere = 0
    for j in range(joins):  # one newcomer at a time, each into the same ring
        newcomer = f"cache-new-{j}"
        after = owners(keys, [*names, newcomer], vnodes)
        changed = [a for b, a in zip(before, after, strict=True) if a != b]
        moved += len(changed)
        elsewhere += sum(1 for a in changed if a != newcomer)
    return Load(
        hosts,
        vnodes,
        len(keys),
        counts[int(0.01 * hosts)] / mean,
        counts[min(hosts - 1, int(0.99 * hosts))] / mean,
        counts[-1] / mean,
        moved / joins / len(keys),
        elsewhere,
    )


def _counts(owned: list[str], names: list[str]) -> list[int]:
    tally = dict.fromkeys(names, 0)
    for h in owned:
        tally[h] += 1
    return sorted(tally.values())


# ---- 3. mass failure --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    hosts: int
    fraction: float
    r: int
    reached_owner: float  # of lookups sent right after the failure
    median_seconds: float  # how long those lookups took (failure detection included)
    lost_positions: int  # survivors whose whole successor list had failed
    settled_after: float | None  # seconds until every invariant held again (None: not in time)


def mass_failure(hosts: int, fraction: float, r: int, lookups: int = 300, seed: int = 1) -> Failure:
    """Fail `fraction` of a stable ring at once, then look up random keys at once."""
    sim = ChordSim(seed, config=replace(SIM_CONFIG, successors=r))
    sim.install_ring(hosts)
    sim.run(2.0)
    rng = random.Random(seed)
    for name in rng.sample(sorted(sim.hosts), int(fraction * hosts)):
        sim.crash(name)
    alive = set(sim.hosts)
    lost = sum(
        1 for h in sim.hosts.values() for n in h.nodes if not {p.host for p in n.successors} & alive
    )
    start = sim.now
    keys = [rng.getrandbits(64) for _ in range(lookups)]
    tokens = [(k, sim.lookup(k, retry_after=1e9)) for k in keys]
    sim.run_until_answered([t for _, t in tokens], 60.0)
    good, times = 0, []
    for key, token in tokens:
        owned = sim.results.get(token)
        if owned is not None and owned.route[-1] == sim.true_owner(key):
            good += 1
            times.append(sim.answered_at[token] - start)
    settled = sim.converge(120.0, every=1.0)
    return Failure(
        hosts,
        fraction,
        r,
        good / lookups,
        statistics.median(times) if times else math.inf,
        lost,
        sim.now - start if settled else None,
    )


def _config(positions: int) -> ChordConfig:
    return replace(SIM_CONFIG, successors=successor_list_length(positions))


# ---- printing ---------------------------------------------------------------------------


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def path_table(sizes: list[int], lookups: int) -> str:
    rows = []
    for n in sizes:
        plain = path_lengths(n, 1, lookups)
        virtual = path_lengths(n // 8, 8, lookups)
        rows.append(
            [
                n,
                f"{0.5 * math.log2(n):.2f}",
                f"{plain.mean_to_predecessor:.2f}",
                f"{plain.mean:.2f}",
                plain.percentile(99),
                max(plain.hops),
                f"{math.log2(n) + 2:.0f}",
                f"{virtual.mean:.2f}",
                max(virtual.hops),
            ]
        )
    header = [
        "positions N",
        "½·log2 N",
        "mean hops to predecessor (paper's count)",
        "mean hops to owner",
        "99th pct",
        "max",
        "bound log2 N + 2",
        "mean, N/8 nodes with 8 virtual each",
        "max, virtual",
    ]
    return table(header, rows)


def load_table(hosts: int, key_count: int, vnode_counts: list[int]) -> str:
    keys = client_keys(key_count)
    rows = []
    for v in vnode_counts:
        result = load(hosts, v, keys)
        rows.append(
            [
                v,
                f"{result.p1:.2f}",
                f"{result.p99:.2f}",
                f"{result.max:.2f}",
                f"{100 * result.moved_on_join:.2f}%",
                result.moved_elsewhere,
            ]
        )
    header = [
        "virtual nodes per cache node",
        "1st pct / mean",
        "99th pct / mean",
        "max / mean",
        "keys moved per join (mean of 10)",
        "moved anywhere but to it",
    ]
    return table(header, rows)


def failure_table(hosts: int, fractions: list[float], rs: list[int], lookups: int) -> str:
    rows = []
    for fraction in fractions:
        for r in rs:
            f = mass_failure(hosts, fraction, r, lookups)
            rows.append(
                [
                    f"{100 * fraction:.0f}%",
                    r,
                    f"{100 * f.reached_owner:.1f}%",
                    f"{f.median_seconds:.2f}",
                    f.lost_positions,
                    "no (120 s)" if f.settled_after is None else f"{f.settled_after:.0f}",
                ]
            )
    header = [
        "nodes failed at once",
        "r",
        "lookups reaching the true owner",
        "median lookup time (virtual s)",
        "survivors with every successor dead",
        "ring exact again after (virtual s)",
    ]
    return table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller rings, fewer lookups")
    args = parser.parse_args()
    quick = args.quick
    started = time.perf_counter()
    sizes = [16, 32, 64, 128, 256, 512] if quick else [16, 32, 64, 128, 256, 512, 1024, 2048]
    print("### Lookup path length\n")
    print(path_table(sizes, 300 if quick else 1000) + "\n")
    hosts = 200 if quick else 1000
    print(f"### Keys per cache node ({hosts} cache nodes, {100 * hosts:,} client keys)\n")
    print(f"A join should move about 1/(N+1) = {100 / (hosts + 1):.2f}% of the keys.\n")
    print(load_table(hosts, 100 * hosts, [1, 2, 4, 8, 16, 32]) + "\n")
    n = 200 if quick else 500
    rs = [1, 2, 4, successor_list_length(n)]
    print(f"### Lookups right after nodes fail at once ({n} nodes)\n")
    print(failure_table(n, [0.1, 0.2, 0.3, 0.4, 0.5], rs, 100 if quick else 300) + "\n")
    print(f"(computed in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
