"""Chord ring maintenance and routing on small rings, each test named after the invariant
or rule it checks (Zave, "How to Make Chord Correct"; Stoica et al., "Chord").

The cache nodes here are wired together in-process: every message is delivered at
once and in order, unless the test cuts a node off. Time moves only when a test
ticks it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from backend.core.chord import (
    LEFT,
    MEMBER,
    ChordConfig,
    ChordHost,
    ChordNode,
    Dropped,
    Isolated,
    Lookup,
    Notify,
    Output,
    Owned,
    Peer,
    RangeChanged,
    Send,
    StabilizeReply,
    between_right,
    finger_start,
    owner_index,
)
from backend.sim.chord_sim import ring_violations

CONFIG = ChordConfig(successors=4, peer_timeout=1.0, hop_timeout=0.3)
OutputT = TypeVar("OutputT", bound=Output)
STEP = 0.1


class Wires:
    """Cache nodes joined by instant, ordered delivery; `cut` hosts hear nothing."""

    def __init__(self, vnodes: int = 1, config: ChordConfig = CONFIG) -> None:
        self.vnodes = vnodes
        self.config = config
        self.hosts: dict[str, ChordHost] = {}
        self.cut: set[str] = set()
        self.effects: list[tuple[str, Output]] = []
        self.now = 0.0

    def add(self, host_id: str, contact: str | None = None) -> ChordHost:
        host = ChordHost(host_id, self.vnodes, self.config)
        host.now = self.now
        self.hosts[host_id] = host
        self.deliver(host_id, host.join(contact) if contact else host.bootstrap())
        return host

    def crash(self, host_id: str) -> None:
        del self.hosts[host_id]

    def deliver(self, host_id: str, outputs: list[Output]) -> None:
        queue = deque((host_id, o) for o in outputs)
        while queue:
            sender, out = queue.popleft()
            if not isinstance(out, Send):
                self.effects.append((sender, out))
                continue
            target = self.hosts.get(out.host)
            if target is None or out.host in self.cut or sender in self.cut:
                continue
            queue.extend((out.host, o) for o in target.handle(out.message))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += STEP
            for host_id, host in list(self.hosts.items()):
                if host_id in self.hosts:
                    self.deliver(host_id, host.tick(self.now))

    def settle(self, limit: float = 60.0) -> None:
        end = self.now + limit
        while self.violations():
            assert self.now < end, f"ring did not converge: {self.violations()[:3]}"
            self.run(0.5)

    def nodes(self) -> list[ChordNode]:
        return [n for h in self.hosts.values() for n in h.nodes]

    def violations(self) -> list[str]:
        return ring_violations(self.nodes(), self.config.successors)

    def ring(self) -> list[Peer]:
        return sorted((n.me for n in self.nodes()), key=lambda p: p.pos)

    def true_owner(self, key: int) -> Peer:
        ring = self.ring()
        return ring[owner_index(key, [p.pos for p in ring])]

    def node(self, peer: Peer) -> ChordNode:
        node = self.hosts[peer.host].node_at(peer.pos)
        assert node is not None
        return node

    def lookup(self, key: int, entry: str, token: str = "req") -> Owned:
        self.effects.clear()
        self.deliver(entry, self.hosts[entry].lookup(key, token, {"op": "get"}))
        for _ in range(100):
            owned = [e for _, e in self.effects if isinstance(e, Owned) and e.token == token]
            if owned:
                return owned[0]
            self.run(STEP)
        raise AssertionError(f"lookup of {key:016x} from {entry} never reached an owner")

    def effects_of(self, kind: type[OutputT]) -> list[tuple[str, OutputT]]:
        return [(h, e) for h, e in self.effects if isinstance(e, kind)]


def ring_of(count: int, vnodes: int = 1, config: ChordConfig = CONFIG) -> Wires:
    wires = Wires(vnodes, config)
    wires.add("c0")
    for i in range(1, count):
        wires.add(f"c{i}", "c0")
        wires.run(0.5)
    wires.settle()
    return wires


KEYS = [(i * 0x9E3779B97F4A7C15) % 2**64 for i in range(1, 41)]


# ---- a ring of one ------------------------------------------------------------------


def test_a_lone_position_owns_every_key() -> None:
    wires = Wires()
    host = wires.add("solo")
    (node,) = host.nodes
    assert node.successors == [node.me] and node.predecessor == node.me
    for key in KEYS:
        assert wires.lookup(key, "solo").position == node.pos


def test_bootstrap_gives_an_ordered_ring_with_valid_successor_lists() -> None:
    wires = Wires(vnodes=8)
    wires.add("c0")
    assert wires.violations() == []


# ---- join ---------------------------------------------------------------------------


def test_join_copies_the_successor_list_from_the_owner_of_its_position() -> None:
    wires = ring_of(6)
    newcomer = ChordHost("late", 1, CONFIG)
    (node,) = newcomer.nodes
    wires.hosts["late"] = newcomer
    wires.deliver("late", newcomer.join("c0"))
    succ = wires.node(node.successors[0])
    assert node.state == MEMBER
    assert node.successors == [succ.me, *succ.successors[: CONFIG.successors - 1]]
    assert node.predecessor is None  # learnt only when a predecessor notifies it


@pytest.mark.parametrize("vnodes", [1, 3])
def test_at_least_one_and_at_most_one_ordered_ring_after_concurrent_joins(vnodes: int) -> None:
    wires = Wires(vnodes)
    wires.add("c0")
    for i in range(1, 12):
        wires.add(f"c{i}", "c0")  # all at once, through one contact
    wires.settle()
    assert wires.violations() == []  # AtLeastOneRing, AtMostOneRing, OrderedRing, lists


def test_valid_successor_lists_hold_the_next_r_positions() -> None:
    wires = ring_of(8)
    ring = wires.ring()
    for i, peer in enumerate(ring):
        expected = [ring[(i + k) % len(ring)] for k in range(1, CONFIG.successors + 1)]
        assert wires.node(peer).successors == expected


def test_a_ring_smaller_than_r_lists_everyone_and_ends_with_itself() -> None:
    wires = ring_of(3)
    ring = wires.ring()
    first = wires.node(ring[0])
    assert first.successors == [ring[1], ring[2], ring[0]]


# ---- stabilize, rectify, flush ------------------------------------------------------


def test_stabilize_adopts_a_new_successor_only_once_it_answers() -> None:
    wires = ring_of(4)
    ring = wires.ring()
    node, succ = wires.node(ring[0]), ring[1]
    ghost = Peer((ring[0].pos + 1) % 2**64, "ghost")  # between node and succ, never answers
    reply = StabilizeReply(node.pos, succ, ghost, tuple(wires.node(succ).successors))
    wires.deliver(node.me.host, wires.hosts[node.me.host].handle(reply))
    assert node.successors[0] == succ  # asked the ghost, adopted nothing yet
    wires.run(3 * CONFIG.peer_timeout)
    assert node.successors[0] == succ
    assert wires.violations() == []


def test_rectify_takes_a_notifier_only_if_it_is_closer() -> None:
    wires = ring_of(5)
    ring = wires.ring()
    node = wires.node(ring[2])
    farther = wires.node(ring[0])
    wires.effects.clear()
    wires.deliver(farther.me.host, [Send(node.me.host, _notify(node, farther.me))])
    assert node.predecessor == ring[1]
    assert wires.effects_of(RangeChanged) == []


def _notify(node: ChordNode, src: Peer) -> Notify:
    return Notify(node.pos, src)


def test_flush_forgets_a_predecessor_that_stops_answering() -> None:
    wires = ring_of(5)
    ring = wires.ring()
    pred, node = ring[1], wires.node(ring[2])
    wires.effects.clear()
    wires.crash(pred.host)
    wires.run(2 * CONFIG.peer_timeout)
    changes = [e for h, e in wires.effects_of(RangeChanged) if e.position == node.pos]
    assert changes[0] == RangeChanged(node.pos, pred.pos, None)
    wires.settle()
    assert node.predecessor == ring[0]
    changes = [e for h, e in wires.effects_of(RangeChanged) if e.position == node.pos]
    assert changes[-1] == RangeChanged(node.pos, None, ring[0].pos)  # grew over the dead arc


# ---- failures -----------------------------------------------------------------------


def test_a_failed_successor_is_replaced_by_the_next_in_the_list() -> None:
    wires = ring_of(6)
    ring = wires.ring()
    node = wires.node(ring[0])
    wires.crash(ring[1].host)
    wires.run(2 * CONFIG.peer_timeout)
    assert node.successors[0] == ring[2]
    wires.settle()


def test_the_ring_survives_r_minus_1_consecutive_failures() -> None:
    wires = ring_of(10)
    ring = wires.ring()
    for peer in ring[1 : CONFIG.successors]:  # r - 1 neighbours in a row
        wires.crash(peer.host)
    wires.settle()
    for key in KEYS:
        assert wires.lookup(key, ring[0].host).route[-1] == wires.true_owner(key)


def test_a_lone_survivor_becomes_a_ring_of_one() -> None:
    wires = ring_of(3)
    for name in ["c1", "c2"]:
        wires.crash(name)
    wires.settle()
    (node,) = wires.hosts["c0"].nodes
    assert node.successors == [node.me] and node.predecessor == node.me


def test_a_position_whose_every_successor_failed_finds_the_next_live_one() -> None:
    wires = ring_of(12)
    ring = wires.ring()
    node = wires.node(ring[0])
    for peer in ring[1 : CONFIG.successors + 1]:  # r in a row: beyond Zave's bound
        wires.crash(peer.host)
    wires.run(2 * CONFIG.peer_timeout)
    assert node.state == MEMBER  # it kept its place while it searched
    wires.settle()
    assert node.successors[0] == ring[CONFIG.successors + 1]


def test_two_rings_merge_once_they_know_of_each_other() -> None:
    wires = Wires(config=replace(CONFIG, cross_check_interval=2.0))
    for side in "ab":
        wires.add(f"{side}0")
        for i in range(1, 5):
            wires.add(f"{side}{i}", f"{side}0")
    wires.run(10)
    assert any("AtMostOneRing" in v for v in wires.violations())
    for host in wires.hosts.values():
        host.set_known_hosts(wires.hosts)
    wires.settle()
    assert wires.violations() == []


def test_fingers_converge_to_the_owners_of_their_starts() -> None:
    wires = ring_of(16)
    wires.run(40)
    for node in wires.nodes():
        for i, finger in enumerate(node.fingers.entries):
            assert finger == wires.true_owner(finger_start(node.pos, i)), (node, i)


# ---- graceful leave -----------------------------------------------------------------


def test_a_graceful_leave_hands_its_arc_to_the_successor_at_once() -> None:
    wires = ring_of(6)
    ring = wires.ring()
    pred, leaver, succ = (wires.node(p) for p in ring[1:4])
    wires.effects.clear()
    outputs = wires.hosts[leaver.me.host].leave()
    del wires.hosts[leaver.me.host]
    wires.deliver(leaver.me.host, outputs)  # no time passes: no timeout is involved
    assert leaver.state == LEFT
    assert succ.predecessor == pred.me
    assert pred.successors[0] == succ.me
    grown = [e for _, e in wires.effects_of(RangeChanged) if e.position == succ.pos]
    assert grown == [RangeChanged(succ.pos, leaver.pos, pred.pos)]
    wires.settle()


def test_join_and_leave_move_only_the_neighbouring_arc() -> None:
    wires = ring_of(8)
    wires.effects.clear()
    newcomer = wires.add("c-new", "c0")
    wires.settle()
    (new,) = newcomer.nodes
    changed = {e.position for _, e in wires.effects_of(RangeChanged)}
    successor = wires.node(new.successors[0])
    assert changed == {new.pos, successor.pos}
    assert successor.predecessor == new.me
    # keys move from the successor's arc to the newcomer and nowhere else
    for key in KEYS:
        if wires.true_owner(key) == new.me:
            assert new.predecessor is not None
            assert between_right(key, new.predecessor.pos, new.pos)


# ---- routing ------------------------------------------------------------------------


@pytest.mark.parametrize(("hosts", "vnodes"), [(12, 1), (4, 8)])
def test_lookup_reaches_the_true_successor_from_every_entry(hosts: int, vnodes: int) -> None:
    wires = ring_of(hosts, vnodes, replace(CONFIG, successors=6))
    wires.run(30)  # let the fingers fill in
    for entry in wires.hosts:
        for key in KEYS[:10]:
            owned = wires.lookup(key, entry)
            assert owned.route[-1] == wires.true_owner(key)
            assert owned.position == wires.true_owner(key).pos


def test_lookup_path_is_at_most_log2_positions_plus_two() -> None:
    wires = ring_of(4, 8, replace(CONFIG, successors=10))  # the default cluster: 32 positions
    wires.run(30)
    bound = math.log2(len(wires.ring())) + 2
    hops = [wires.lookup(key, entry).hops for entry in wires.hosts for key in KEYS]
    assert max(hops) <= bound
    assert sum(hops) / len(hops) <= math.log2(len(wires.ring())) / 2 + 1


def test_the_trace_lists_the_entry_first_and_the_owner_last() -> None:
    wires = ring_of(8)
    wires.run(20)
    key = KEYS[0]
    entry = next(h for h in wires.hosts if h != wires.true_owner(key).host)
    owned = wires.lookup(key, entry)
    hosts = owned.hosts()
    assert hosts[0] == entry and hosts[-1] == wires.true_owner(key).host
    assert len(hosts) == owned.hops + 1
    assert owned.payload == {"op": "get"}


def test_a_stale_guess_is_handed_back_to_the_true_owner() -> None:
    wires = ring_of(6)
    ring = wires.ring()
    owner, later = ring[2], ring[3]
    key = owner.pos  # owned by `owner`; we tell `later` that it owns it
    wrong = Lookup(later.pos, ring[0], key, "l-stale", "stale", None, 1, (ring[0],), True)
    wires.effects.clear()
    wires.deliver(ring[0].host, [Send(later.host, wrong)])
    owned = [e for _, e in wires.effects_of(Owned)]
    assert [o.position for o in owned] == [owner.pos]
    assert owned[0].hosts() == [ring[0].host, later.host, owner.host]
    assert wires.effects_of(Dropped) == []


def test_a_lookup_routes_around_a_node_that_stopped_answering() -> None:
    wires = ring_of(8)
    wires.run(20)
    ring = wires.ring()
    silent = ring[4].host
    wires.cut.add(silent)
    key = ring[5].pos
    owned = wires.lookup(key, ring[0].host)
    assert owned.route[-1] == ring[5]
    assert silent not in owned.hosts()


def test_a_duplicated_hop_is_acknowledged_but_served_once() -> None:
    wires = ring_of(4)
    ring = wires.ring()
    hop = Lookup(ring[1].pos, ring[0], ring[1].pos, "l-dup", "dup", None, 1, (ring[0],), True)
    wires.effects.clear()
    for _ in range(2):
        wires.deliver(ring[0].host, [Send(ring[1].host, hop)])
    assert len(wires.effects_of(Owned)) == 1


# ---- deaths told by the broker (a cache node's last will) ---------------------------


def tell_everyone_gone(wires: Wires, dead: str) -> None:
    """Every live host hears, at the same instant, that `dead` is gone."""
    for host_id, host in list(wires.hosts.items()):
        wires.deliver(host_id, host.peer_gone(dead, wires.now))


def mentions(node: ChordNode, host: str) -> bool:
    peers = [*node.successors, *node.fingers.distinct(), node.predecessor]
    return any(p is not None and p.host == host for p in peers)


def test_a_node_told_dead_leaves_successor_lists_fingers_and_predecessors_at_once() -> None:
    wires = ring_of(6, vnodes=2)
    wires.run(20)  # fingers filled
    dead = wires.ring()[3].host
    others = [n for n in wires.nodes() if n.me.host != dead]
    assert any(mentions(n, dead) for n in others)
    heirs = [n.pos for n in others if n.predecessor is not None and n.predecessor.host == dead]
    wires.crash(dead)
    wires.effects.clear()
    tell_everyone_gone(wires, dead)  # no time passes: no timeout could have fired
    for host in wires.hosts.values():
        assert host.liveness.suspected(dead)
        assert not any(mentions(n, dead) for n in host.nodes)
    changed = [e.position for _, e in wires.effects_of(RangeChanged) if e.new_predecessor is None]
    assert heirs and sorted(changed) == sorted(heirs)  # they stop trusting it at once
    wires.settle()


def test_a_hop_waiting_on_a_node_told_dead_is_routed_around_at_once() -> None:
    wires = ring_of(8)
    wires.run(20)
    ring = wires.ring()
    dead, heir = ring[4], ring[5]
    wires.crash(dead.host)  # its hops vanish unacknowledged
    wires.effects.clear()
    wires.deliver(ring[0].host, wires.hosts[ring[0].host].lookup(dead.pos, "req", {}))
    waiting = [hop.to for h in wires.hosts.values() for hop in h.router.pending.values()]
    assert waiting == [dead.host] and not wires.effects_of(Owned)
    tell_everyone_gone(wires, dead.host)
    owned = [e for _, e in wires.effects_of(Owned) if e.token == "req"]
    assert [o.route[-1] for o in owned] == [heir]  # before any hop timeout (or tick)
    assert all(not h.router.pending for h in wires.hosts.values())


def test_a_node_told_dead_by_mistake_is_trusted_again_once_it_speaks() -> None:
    wires = ring_of(5)
    ring = wires.ring()
    alive = ring[2].host
    for host_id, host in list(wires.hosts.items()):
        if host_id != alive:
            wires.deliver(host_id, host.peer_gone(alive, wires.now))
    assert wires.hosts[ring[1].host].liveness.suspected(alive)
    wires.settle()  # its stabilize and notify reach the others, which hear it again
    assert not any(h.liveness.suspected(alive) for h in wires.hosts.values())
    for key in KEYS[:10]:
        assert wires.lookup(key, ring[0].host).route[-1] == wires.true_owner(key)


def test_news_of_its_own_death_or_after_leaving_changes_nothing() -> None:
    wires = ring_of(3)
    host = wires.hosts["c1"]
    assert host.peer_gone("c1", wires.now) == []
    assert not host.liveness.suspected("c1")
    wires.deliver("c1", host.leave())
    assert host.peer_gone("c0", wires.now) == []


# ---- restarts, isolation, bad input -------------------------------------------------


def test_a_restarted_node_is_refused_until_it_rejoins_at_its_position() -> None:
    wires = ring_of(6)
    ring = wires.ring()
    victim = ring[3].host
    wires.crash(victim)
    wires.add(victim, "c0" if victim != "c0" else "c1")  # same id: same position, no state
    wires.settle(limit=20)  # well before any timeout could have removed the old one
    for key in KEYS[:10]:
        assert wires.lookup(key, ring[0].host).route[-1] == wires.true_owner(key)


def test_a_node_whose_ring_vanished_says_it_is_isolated_and_rejoins_when_told() -> None:
    wires = Wires()
    wires.add("c0")
    wires.add("c1", "c0")  # c1's only successor is c0 until it stabilizes
    wires.crash("c0")
    wires.run(3 * CONFIG.peer_timeout)
    assert ("c1", Isolated("c1")) in wires.effects
    c1 = wires.hosts["c1"]
    assert c1.isolated and c1.nodes[0].successors == []
    wires.add("c2")  # someone starts a new ring; c1 is told to join it
    wires.deliver("c1", c1.join("c2"))
    wires.settle()
    assert not c1.isolated


def test_a_request_at_a_node_outside_the_ring_is_dropped_not_lost() -> None:
    host = ChordHost("alone", 2, CONFIG)
    outputs = host.lookup(5, "tok")
    assert outputs == [Dropped(5, "tok", "this cache node is not in the ring", ())]


@pytest.mark.parametrize(
    ("call", "complaint"),
    [
        (lambda h: h.lookup(-1, "t"), "ring position"),
        (lambda h: h.lookup(2**64, "t"), "ring position"),
        (lambda h: h.lookup(1, 5), "token must be text"),
        (lambda h: h.join(h.id), "cannot join through itself"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    call: Callable[[ChordHost], object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        call(ChordHost("c", 1, CONFIG))


def test_bad_configuration_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="successor list"):
        ChordConfig(successors=0)
    with pytest.raises(ValueError, match="at least one ring position"):
        ChordHost("c", 0)
    with pytest.raises(ValueError, match="1 to 256 characters"):
        ChordHost("")
