"""A deterministic simulator of a whole Chord ring in one process.

Hundreds to thousands of cache nodes (ChordHost, each with V ring positions)
exchange messages over the seeded in-memory network of network.py: joins,
graceful leaves, crashes, message loss, duplication and reordering, all drawn
from one seed so that a failing run replays exactly. `ring_violations` checks
Zave's invariants on the live positions; `lookup` sends a request in at any
cache node and records where it ended and how many hops it took.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from backend.core.chord import (
    MEMBER,
    RING_SIZE,
    ChordConfig,
    ChordHost,
    ChordNode,
    Dropped,
    Isolated,
    Message,
    Output,
    Owned,
    Peer,
    Send,
    decode,
    distance,
    owner_index,
)
from backend.sim.network import Network, NetworkConfig, Scheduler

# Timing the simulated ring runs with: like the default cache node, a bit brisker.
SIM_CONFIG = ChordConfig(
    stabilize_interval=0.5,
    fix_fingers_interval=0.5,
    check_predecessor_interval=1.0,
    peer_timeout=1.5,
    hop_timeout=0.5,
    cross_check_interval=5.0,
)


@dataclass(slots=True)
class LookupResult:
    key: int
    entry: str
    owner: Peer | None  # where it ended, None if dropped or still travelling
    hops: int
    route: tuple[Peer, ...]


class ChordSim:
    """Cache nodes on a simulated network. All randomness comes from `seed`."""

    def __init__(
        self,
        seed: int,
        *,
        vnodes: int = 1,
        config: ChordConfig = SIM_CONFIG,
        net: NetworkConfig | None = None,
        tick: float = 0.25,
        check_wire: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.vnodes = vnodes
        self.config = config
        self.tick = tick
        self.check_wire = check_wire
        self.scheduler = Scheduler()
        self.network = Network(self.scheduler, self.rng, net or NetworkConfig())
        self.hosts: dict[str, ChordHost] = {}
        self.results: dict[str, Owned] = {}
        self.dropped: dict[str, Dropped] = {}  # the last attempt that was dropped
        self.entries: dict[str, str] = {}  # token -> the cache node it last entered at
        self.answered_at: dict[str, float] = {}  # token -> when it first reached an owner
        self._next_host = 0
        self._next_token = 0

    @property
    def now(self) -> float:
        return self.scheduler.now

    # ---- membership -----------------------------------------------------------------

    def add_host(self, host_id: str | None = None, contact: str | None = None) -> str:
        """Start a cache node: it bootstraps the ring if it is the first, else joins."""
        if host_id is None:
            host_id = f"n{self._next_host}"
            self._next_host += 1
        incarnation = f"{self.rng.getrandbits(32):08x}"
        host = ChordHost(host_id, self.vnodes, self.config, incarnation)
        host.now = self.now
        first = not self.hosts
        self.hosts[host_id] = host
        self.network.attach(host_id, functools.partial(self._receive, host))
        self.scheduler.after(self.rng.random() * self.tick, self._tick, host)
        self._tell_known_hosts()
        in_ring = [h for h, other in self.hosts.items() if h != host_id and other.in_ring]
        if first:
            self._process(host, host.bootstrap())
        elif contact is not None or in_ring:
            self._process(host, host.join(contact or self.rng.choice(sorted(in_ring))))
        # else: no cache node is in the ring; the rescue on its first tick decides
        return host_id

    def add_hosts(self, count: int, per_round: int = 8, pause: float = 1.0) -> list[str]:
        """Add cache nodes `per_round` at a time, `pause` apart, as an operator would."""
        added: list[str] = []
        while len(added) < count:
            for _ in range(min(per_round, count - len(added))):
                added.append(self.add_host())
            self.run(pause)
        return added

    def crash(self, host_id: str) -> None:
        """Stop a cache node dead: no goodbye, its messages in flight vanish."""
        self.hosts.pop(host_id)
        self.network.detach(host_id)
        self._tell_known_hosts()

    def leave(self, host_id: str) -> None:
        host = self.hosts.pop(host_id)
        self._process(host, host.leave())
        self.network.detach(host_id)
        self._tell_known_hosts()

    def install_ring(self, hosts: int) -> None:
        """Create `hosts` cache nodes whose pointers are all already correct (the state a
        long-stable ring reaches), for measuring lookups without waiting for it."""
        created = [
            ChordHost(f"n{i}", self.vnodes, self.config, "0")
            for i in range(self._next_host, self._next_host + hosts)
        ]
        self._next_host += hosts
        for host in created:
            self.hosts[host.id] = host
            self.network.attach(host.id, functools.partial(self._receive, host))
            self.scheduler.after(self.rng.random() * self.tick, self._tick, host)
        ring = sorted((n.me for h in self.hosts.values() for n in h.nodes), key=lambda p: p.pos)
        for host in self.hosts.values():
            host.now = self.now
            for node in host.nodes:
                node.now = self.now
                node.bootstrap(ring)
        self._tell_known_hosts()

    def random_host(self, exclude: str | None = None) -> str:
        names = [h for h, host in self.hosts.items() if h != exclude and host.in_ring]
        if not names:
            raise RuntimeError("no cache node in the ring to join through")
        return self.rng.choice(sorted(names))

    # ---- running --------------------------------------------------------------------

    def run(self, duration: float) -> None:
        self.scheduler.run_until(self.now + duration)

    def converge(self, timeout: float, every: float = 1.0) -> bool:
        """Run until the ring is exactly right (no invariant violated) or `timeout` passes."""
        end = self.now + timeout
        while True:
            if not self.violations():
                return True
            if self.now >= end:
                return False
            self.run(every)

    def lookup(self, key: int, entry: str | None = None, retry_after: float = 4.0) -> str:
        """Send a request for `key` in at `entry` (a random cache node in the ring if
        None) and return its token. Like a portal, the sender retries through another
        cache node every `retry_after` until the request reaches an owner."""
        self._next_token += 1
        token = f"t{self._next_token}"
        self._send_request(key, token, entry, retry_after)
        return token

    def lookups(
        self, keys: Iterable[int], timeout: float = 10.0, entries: Iterable[str] | None = None
    ) -> list[LookupResult]:
        """Send many requests at once, run until all ended (or `timeout`); the results."""
        keys = list(keys)
        entry_list = list(entries) if entries is not None else [None] * len(keys)
        tokens = [(key, self.lookup(key, e)) for key, e in zip(keys, entry_list, strict=True)]
        self.run_until_answered([t for _, t in tokens], timeout)
        return [self._result(key, token) for key, token in tokens]

    def run_until_answered(self, tokens: list[str], timeout: float) -> bool:
        end = self.now + timeout
        while not all(t in self.results for t in tokens):
            if self.now >= end:
                return False
            self.run(min(self.tick, 0.05))
        return True

    def _send_request(self, key: int, token: str, entry: str | None, retry_after: float) -> None:
        if token in self.results:
            return
        in_ring = sorted(h for h, host in self.hosts.items() if host.in_ring)
        if entry is None and in_ring:
            entry = self.rng.choice(in_ring)
        if entry is not None:
            self.entries[token] = entry
            host = self.hosts[entry]
            host.now = self.now
            self._process(host, host.lookup(key, token, None))
        self.scheduler.after(retry_after, self._send_request, key, token, None, retry_after)

    # ---- the oracle -----------------------------------------------------------------

    def live_positions(self) -> list[Peer]:
        return sorted((n.me for h in self.hosts.values() for n in h.nodes), key=lambda p: p.pos)

    def true_owner(self, key: int) -> Peer:
        ring = self.live_positions()
        return ring[owner_index(key, [p.pos for p in ring])]

    def violations(self) -> list[str]:
        return ring_violations(
            [n for h in self.hosts.values() for n in h.nodes], self.config.successors
        )

    # ---- plumbing -------------------------------------------------------------------

    def _tell_known_hosts(self) -> None:
        """What the operator (heartbeats) knows: which cache nodes are up."""
        names = list(self.hosts)
        for host in self.hosts.values():
            host.set_known_hosts(names)

    def _tick(self, host: ChordHost) -> None:
        if self.hosts.get(host.id) is not host:
            return  # crashed or left: its clock stops
        self._process(host, host.tick(self.now))
        if not host.in_ring:
            self._rescue(host)
        self.scheduler.after(self.tick, self._tick, host)

    def _receive(self, host: ChordHost, message: Message) -> None:
        if self.hosts.get(host.id) is not host:
            return
        host.now = self.now
        self._process(host, host.handle(message))

    def _process(self, host: ChordHost, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                message = self._through_wire(out.message) if self.check_wire else out.message
                self.network.send(host.id, out.host, message)
            elif isinstance(out, Owned) and out.token not in self.results:
                self.results[out.token] = out
                self.answered_at[out.token] = self.now
            elif isinstance(out, Dropped):
                self.dropped[out.token] = out
            elif isinstance(out, Isolated):
                self._rescue(host)

    def _rescue(self, host: ChordHost) -> None:
        """What the operator (the cache node's process, watching heartbeats) does for a
        cache node outside the ring: if it is isolated, join through a cache node in
        the ring; if no cache node is in a ring at all, the lowest-named one starts a
        new ring and the others then join it."""
        if self.hosts.get(host.id) is not host:
            return
        in_ring = sorted(h for h, other in self.hosts.items() if other.in_ring)
        if in_ring and host.isolated:
            self._process(host, host.join(self.rng.choice(in_ring)))
        elif not in_ring and host.id == min(self.hosts):
            self._process(host, host.bootstrap())

    @staticmethod
    def _through_wire(message: Message) -> Message:
        return decode(msgpack.unpackb(msgpack.packb(message.to_wire()), raw=False))

    def _result(self, key: int, token: str) -> LookupResult:
        entry = self.entries.get(token, "")
        owned = self.results.get(token)
        if owned is None:
            return LookupResult(key, entry, None, -1, ())
        return LookupResult(key, entry, owned.route[-1], owned.hops, owned.route)


def ring_violations(nodes: list[ChordNode], r: int) -> list[str]:
    """Every way the live positions `nodes` differ from a correct, fully stabilized ring,
    each named after the invariant it breaks (Zave's names where she has one)."""
    members = [n for n in nodes if n.state == MEMBER]
    problems = [f"AllMembers: {n!r} is not a ring member" for n in nodes if n.state != MEMBER]
    if not members:
        return [*problems, "AtLeastOneRing: no ring member at all"]
    problems += _ring_shape(members)
    ring = sorted((n.me for n in nodes), key=lambda p: p.pos)
    index = {p: i for i, p in enumerate(ring)}
    size = len(ring)
    for n in members:
        i = index[n.me]
        expected = [ring[(i + k) % size] for k in range(1, min(r, size) + 1)]
        if n.successors != expected:
            problems.append(f"ValidSuccessorList: {n!r} has {_short(n.successors)}")
        if n.predecessor != ring[i - 1]:
            problems.append(f"CorrectPredecessor: {n!r} has {n.predecessor}")
    return problems


def _ring_shape(members: list[ChordNode]) -> list[str]:
    """AtLeastOneRing, AtMostOneRing and OrderedRing over first-successor pointers."""
    by_peer = {n.me: n for n in members}
    walk_of: dict[Peer, int] = {}  # which walk first visited a position
    cycles: list[list[Peer]] = []
    for walk, start in enumerate(members):
        path: list[Peer] = []
        node: ChordNode | None = start
        while node is not None and node.me not in walk_of and node.successors:
            walk_of[node.me] = walk
            path.append(node.me)
            node = by_peer.get(node.successors[0])
        if node is not None and walk_of.get(node.me) == walk:
            cycles.append(path[path.index(node.me) :])  # this walk closed a new cycle
    problems = []
    if not cycles:
        problems.append("AtLeastOneRing: first successors form no cycle")
    if len(cycles) > 1:
        problems.append(f"AtMostOneRing: {len(cycles)} separate cycles")
    for cycle in cycles:
        loop = sum(distance(p.pos, by_peer[p].successors[0].pos) for p in cycle)
        if len(cycle) > 1 and loop != RING_SIZE:
            winds = loop / RING_SIZE
            problems.append(f"OrderedRing: a cycle of {len(cycle)} winds {winds:g} times")
    return problems


def _short(peers: list[Peer]) -> str:
    return "[" + ", ".join(f"{p.pos:016x}@{p.host}" for p in peers) + "]"
