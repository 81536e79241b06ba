"""One ring position (a virtual node): Chord ring maintenance as a pure state machine.

Messages and ticks go in, outputs (messages to send, effects) come out; nothing
here reads a clock or touches a socket. It follows Zave's corrected rules (join,
stabilize, rectify, flush, failure, leave) plus repair and cross-check: see
docs/architecture.md, "Chord ring maintenance". Lookup forwarding is in
routing.py; this class answers the two questions routing asks of a position:
does it own a key, and what is the best next hop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from backend.core.chord.config import ChordConfig
from backend.core.chord.fingers import FingerTable
from backend.core.chord.ids import (
    MASK,
    RING_BITS,
    RING_SIZE,
    between,
    between_right,
    distance,
    finger_start,
    owner_index,
)
from backend.core.chord.liveness import Liveness
from backend.core.chord.messages import (
    Gone,
    LeaveToPredecessor,
    LeaveToSuccessor,
    Lookup,
    LookupReply,
    Message,
    Notify,
    Peer,
    Ping,
    Pong,
    StabilizeQuery,
    StabilizeReply,
)
from backend.core.chord.outputs import Joined, Output, RangeChanged, Send
from backend.core.chord.successors import successor_list

IDLE: Final = "idle"  # created, not yet in a ring
JOINING: Final = "joining"  # waiting for the owner of its position to answer
MEMBER: Final = "member"  # has a successor; routes and may own keys
LOST: Final = "lost"  # its join found no one: must join again
LEFT: Final = "left"  # left gracefully; answers nothing but Gone


class _Search:
    """A lookup for this position's own successor, through another cache node."""

    __slots__ = ("attempts", "contact", "deadline", "key", "token")

    def __init__(self, contact: str, key: int) -> None:
        self.contact = contact
        self.key = key
        self.attempts = 0
        self.deadline = 0.0
        self.token = ""


class ChordNode:
    """The state of one ring position: predecessor, successor list, fingers."""

    __slots__ = (
        "_counter",
        "_due_check",
        "_due_fix",
        "_due_stabilize",
        "_finger_wait",
        "_prefix",
        "_search",
        "_searches",
        "config",
        "fingers",
        "liveness",
        "me",
        "now",
        "pos",
        "predecessor",
        "state",
        "successors",
    )

    def __init__(
        self, me: Peer, config: ChordConfig, liveness: Liveness, token_prefix: str
    ) -> None:
        self.me = me
        self.pos = me.pos
        self.config = config
        self.liveness = liveness
        self.state: str = IDLE
        self.successors: list[Peer] = []
        self.predecessor: Peer | None = None
        self.fingers = FingerTable(me.pos)
        self.now = 0.0
        self._due_stabilize = self._due_fix = self._due_check = 0.0
        self._search: _Search | None = None
        self._searches = 0  # failed searches so far: which contact to ask next
        self._finger_wait: tuple[str, int, float] | None = None  # token, entry, deadline
        self._prefix = token_prefix
        self._counter = 0

    def __repr__(self) -> str:
        return f"ChordNode({self.pos:016x}@{self.me.host}, {self.state})"

    # ---- what routing asks ----------------------------------------------------------

    @property
    def is_member(self) -> bool:
        return self.state == MEMBER

    @property
    def needs_repair(self) -> bool:
        """A member whose every successor failed and that is not searching yet."""
        return self.state == MEMBER and not self.successors and self._search is None

    @property
    def searching(self) -> bool:
        return self._search is not None

    @property
    def failed_searches(self) -> int:
        return self._searches

    def owns(self, key: int) -> bool:
        """key in (predecessor, me]: the arc this position serves."""
        if self.state != MEMBER:
            return False
        p = self.predecessor
        return key == self.pos or (p is not None and between_right(key, p.pos, self.pos))

    def usable(self, avoid: frozenset[str] = frozenset()) -> Callable[[Peer], bool]:
        suspects = self.liveness.suspects
        return lambda p: p.host not in suspects and p.host not in avoid

    def next_hop(
        self, key: int, usable: Callable[[Peer], bool] | None = None
    ) -> tuple[Peer, bool] | None:
        """Where to send a lookup for `key`, and whether that peer should own it.

        The first usable successor if the key lies up to it; else the usable known
        position closest before the key (fingers and successor list: the closest
        preceding finger). With no usable successor at all, the nearest live
        finger; None when nothing ahead is known.
        """
        if self.state != MEMBER:
            return None
        usable = usable or self.usable()
        succ = next((s for s in self.successors if usable(s)), None)
        if succ is not None and between_right(key, self.pos, succ.pos):
            return succ, True
        best = self.fingers.closest_preceding(key, usable)
        best_d = RING_SIZE if best is None else distance(best.pos, key)
        for s in self.successors:
            if between(s.pos, self.pos, key) and usable(s) and distance(s.pos, key) < best_d:
                best, best_d = s, distance(s.pos, key)
        if best is not None:
            return best, False
        if succ is not None:
            return succ, True
        # No successor left: the nearest live finger lies past the key; it hands the
        # lookup back through its predecessors to the owner (see routing).
        ahead = [f for f in self.fingers.distinct() if usable(f) and f != self.me]
        if not ahead:
            return None
        return min(ahead, key=lambda f: distance(self.pos, f.pos)), True

    # ---- commands -------------------------------------------------------------------

    def bootstrap(self, ring: Sequence[Peer]) -> list[Output]:
        """Start as a member of a ring given whole: `ring` is every position, sorted.

        Zave's initialisation: a ring whose pointers are all correct from the start.
        The first cache node starts its own positions this way.
        """
        i = ring.index(self.me)
        n = len(ring)
        after = [ring[(i + k) % n] for k in range(1, n + 1)]
        self.successors = successor_list(self.me, after[0], after[1:], self.config.successors)
        self.state = MEMBER
        self._search = None
        self.fingers.clear()
        positions = [p.pos for p in ring]
        for f in range(RING_BITS):
            self.fingers.entries[f] = ring[owner_index(finger_start(self.pos, f), positions)]
        out: list[Output] = [Joined(self.pos)]
        self._set_predecessor(ring[i - 1], out)
        self._reset_timers()
        return out

    def join(self, contact: str) -> list[Output]:
        """Join the ring through any cache node `contact` that is in it."""
        out: list[Output] = []
        self.state = JOINING
        self.successors = []
        self._set_predecessor(None, out)
        self.fingers.clear()
        self._finger_wait = None
        self._search = _Search(contact, self.pos)
        self._send_search(out)
        return out

    def repair(self, contact: str) -> list[Output]:
        """Every successor failed (more than r - 1 in a row): find the true one again.

        Like a join, the position asks cache node `contact` to look up its key, here
        its own position + 1 with itself left out of the routing, so the answer is the
        first live position after it as the rest of the ring sees it. Unlike a join it
        stays a member meanwhile, so its predecessors keep pointing at it: the one
        broken spot is mended instead of unravelling the ring around it.
        """
        out: list[Output] = []
        self._search = _Search(contact, (self.pos + 1) & MASK)
        self._send_search(out)
        return out

    def cross_check(self, contact: str) -> list[Output]:
        """Ask cache node `contact` who follows this position in its view of the ring.

        If the ring ever split in two (a total collapse outside Zave's assumptions),
        the answer from the other part lies between this position and its successor;
        it is adopted like any stabilize candidate, only once it answers, and the two
        rings then merge the way concurrent joins do (Ghodsi's ring unification).
        """
        out: list[Output] = []
        if self.state == MEMBER and self.successors and self._search is None:
            self._search = _Search(contact, (self.pos + 1) & MASK)
            self._send_search(out)
        return out

    def leave(
        self,
        successor: Peer | None,
        new_predecessor: Peer | None,
        predecessor: Peer | None,
        new_successors: Sequence[Peer],
    ) -> list[Output]:
        """Leave gracefully: tell `successor` its new predecessor and `predecessor` its
        new successor list (the caller leaves out its own positions), then fall silent."""
        out: list[Output] = []
        if self.state == MEMBER:
            if successor is not None:
                msg = LeaveToSuccessor(successor.pos, self.me, new_predecessor)
                out.append(Send(successor.host, msg))
            if predecessor is not None:
                msg2 = LeaveToPredecessor(predecessor.pos, self.me, tuple(new_successors))
                out.append(Send(predecessor.host, msg2))
        self.state = LEFT
        self.successors = []
        self._set_predecessor(None, out)
        self.fingers.clear()
        return out

    def tick(self, now: float) -> list[Output]:
        """Run whatever periodic work is due: stabilize, check-predecessor, fix-fingers."""
        self.now = now
        out: list[Output] = []
        if self.state == JOINING or (self.state == MEMBER and not self.successors):
            self._retry_search(out)
        elif self.state == MEMBER:
            if self._search is not None and now >= self._search.deadline:
                self._search = None  # a cross-check that went unanswered: no matter
            cfg = self.config
            if now >= self._due_stabilize:
                self._due_stabilize = now + cfg.stabilize_interval
                self._stabilize(out)
            if now >= self._due_check:
                self._due_check = now + cfg.check_predecessor_interval
                self._check_predecessor(out)
            if now >= self._due_fix:
                self._due_fix = now + cfg.fix_fingers_interval
                self._fix_fingers(out)
        return out

    def handle(self, message: Message) -> list[Output]:
        """Ring-maintenance messages addressed to this position (lookups go to routing)."""
        out: list[Output] = []
        handler = _HANDLERS.get(type(message))
        if handler is not None:
            handler(self, message, out)
        return out

    def host_failed(self, host: str) -> list[Output]:
        """Cache node `host` is dead (or left): forget every position it hosts."""
        return self._forget(lambda p: p.host == host, lambda contact: contact == host)

    def position_failed(self, peer: Peer) -> list[Output]:
        """`peer` is not in the ring (it said Gone): forget it."""
        return self._forget(lambda p: p == peer, lambda contact: False)

    def rejoin_contact(self) -> str | None:
        """Another live cache node this position still knows of, to search through;
        each failed search moves on to the next one."""
        usable = self.usable()
        known = [*self.fingers.distinct(), *self.successors]
        if self.predecessor is not None:
            known.append(self.predecessor)
        hosts = list(dict.fromkeys(p.host for p in known if p.host != self.me.host and usable(p)))
        return hosts[self._searches % len(hosts)] if hosts else None

    # ---- join and repair ------------------------------------------------------------

    def _send_search(self, out: list[Output]) -> None:
        search = self._search
        assert search is not None
        search.token = self._new_token()
        search.attempts += 1
        search.deadline = self.now + self.config.peer_timeout
        token = search.token
        msg = Lookup(None, None, search.key, token, token, self.me, 0, (), False, None, True)
        out.append(Send(search.contact, msg))

    def _retry_search(self, out: list[Output]) -> None:
        search = self._search
        if search is None or self.now < search.deadline:
            return
        if search.attempts < self.config.join_attempts:
            self._send_search(out)
            return
        self._searches += 1  # the next search asks another cache node
        if self.state == JOINING:
            self._become_lost(out)
        else:
            self._search = None  # a member keeps its place meanwhile

    def _found(self, reply: LookupReply, out: list[Output]) -> None:
        """The owner of the searched key answered: it is our successor (Zave's join:
        copy its list as s + butLast(s.succList))."""
        owner = reply.src
        if owner == self.me:
            return
        self._search = None
        if self.state == MEMBER and self.successors:
            if between(owner.pos, self.pos, self.successors[0].pos):
                self._query(owner, out)  # a cross-check found a closer one: adopt it if it answers
            return
        r = self.config.successors
        self.successors = successor_list(self.me, owner, reply.successors, r, self.usable())
        if self.state == JOINING:
            self.state = MEMBER
            self._reset_timers()
            out.append(Joined(self.pos))
        else:
            self._due_stabilize = self.now

    # ---- stabilize, rectify, flush --------------------------------------------------

    def _stabilize(self, out: list[Output]) -> None:
        self._query(self.successors[0], out)

    def _query(self, peer: Peer, out: list[Output]) -> None:
        self.liveness.expect(peer, self.now)
        out.append(Send(peer.host, StabilizeQuery(peer.pos, self.me)))

    def _notify(self, peer: Peer, out: list[Output]) -> None:
        out.append(Send(peer.host, Notify(peer.pos, self.me)))

    def _on_stabilize_query(self, m: StabilizeQuery, out: list[Output]) -> None:
        if self.state != MEMBER:
            out.append(Send(m.src.host, Gone(m.src.pos, self.me.host, self.pos)))
            return
        reply = StabilizeReply(m.src.pos, self.me, self.predecessor, tuple(self.successors))
        out.append(Send(m.src.host, reply))

    def _on_stabilize_reply(self, m: StabilizeReply, out: list[Output]) -> None:
        if self.state != MEMBER or not self.successors:
            return
        x, s = m.src, self.successors[0]
        if x != s and not between(x.pos, self.pos, s.pos):
            return  # a stale answer from a former successor
        usable = self.usable()
        self._adopt(x, m.successors, usable)
        p = m.predecessor
        if p is not None and between(p.pos, self.pos, x.pos):
            # Adopt p only once it answers. Asking at once, rather than next round,
            # lets many positions that joined into one arc sort themselves out in
            # a few rounds instead of one position per round.
            self._query(p, out)
        else:
            self._notify(x, out)

    def _adopt(self, first: Peer, rest: Sequence[Peer], usable: Callable[[Peer], bool]) -> None:
        self.successors = successor_list(self.me, first, rest, self.config.successors, usable)

    def _on_notify(self, m: Notify, out: list[Output]) -> None:
        if self.state != MEMBER:
            return
        p, src = self.predecessor, m.src
        if (
            p is None
            or (src != p and between(src.pos, p.pos, self.pos))
            or self.liveness.suspected(p.host)
        ):
            self._set_predecessor(src, out)

    def _check_predecessor(self, out: list[Output]) -> None:
        p = self.predecessor
        if p is not None and p != self.me:
            self.liveness.expect(p, self.now)
            out.append(Send(p.host, Ping(p.pos, self.me)))

    def _on_ping(self, m: Ping, out: list[Output]) -> None:
        if self.state == MEMBER:
            out.append(Send(m.src.host, Pong(m.src.pos, self.me)))
        else:
            out.append(Send(m.src.host, Gone(m.src.pos, self.me.host, self.pos)))

    # ---- fingers --------------------------------------------------------------------

    def _fix_fingers(self, out: list[Output]) -> None:
        wait = self._finger_wait
        if wait is not None:
            if self.now < wait[2]:
                return
            self._finger_wait = None
            self.fingers.next = (wait[1] + 1) % RING_BITS  # skip it this round
        i = self.fingers.fill_from_successor(self.successors[0])
        if i >= RING_BITS:
            self.fingers.next = 0
            return
        token = self._new_token()
        self._finger_wait = (token, i, self.now + self.config.peer_timeout)
        start = finger_start(self.pos, i)
        msg = Lookup(self.pos, None, start, token, token, self.me, 0, (), False)
        out.append(Send(self.me.host, msg))

    def _on_lookup_reply(self, m: LookupReply, out: list[Output]) -> None:
        search, wait = self._search, self._finger_wait
        if search is not None and m.token == search.token:
            self._found(m, out)
        elif self.state == MEMBER and wait is not None and m.token == wait[0]:
            self._finger_wait = None
            self.fingers.learn(wait[1], m.src)

    # ---- leave and failure ----------------------------------------------------------

    def _on_leave_to_successor(self, m: LeaveToSuccessor, out: list[Output]) -> None:
        if self.state == MEMBER and self.predecessor == m.src:
            self._set_predecessor(m.predecessor, out)

    def _on_leave_to_predecessor(self, m: LeaveToPredecessor, out: list[Output]) -> None:
        if self.state != MEMBER or not self.successors or self.successors[0] != m.src:
            return
        rest = [p for p in m.successors if p.host != m.src.host]
        if not rest:
            return  # the failure of m.src's cache node clears it from the list
        self._adopt(rest[0], rest[1:], self.usable())
        self._notify(rest[0], out)

    def _forget(
        self, dead: Callable[[Peer], bool], dead_contact: Callable[[str], bool]
    ) -> list[Output]:
        out: list[Output] = []
        self.fingers.forget(dead)
        if self.predecessor is not None and dead(self.predecessor):
            self._set_predecessor(None, out)
        if any(dead(p) for p in self.successors):
            self.successors = [p for p in self.successors if not dead(p)]
            self._due_stabilize = self.now  # query the new first successor soon
        search = self._search
        if search is not None and dead_contact(search.contact):
            if self.state == JOINING:
                self._become_lost(out)
            else:
                self._search = None  # the next search asks elsewhere
        return out

    def _become_lost(self, out: list[Output]) -> None:
        self.state = LOST
        self.successors = []
        self._search = None
        self._finger_wait = None
        self._set_predecessor(None, out)

    # ---- helpers --------------------------------------------------------------------

    def _set_predecessor(self, peer: Peer | None, out: list[Output]) -> None:
        old = self.predecessor
        if old == peer:
            return
        self.predecessor = peer
        out.append(RangeChanged(self.pos, _pos(old), _pos(peer)))

    def _reset_timers(self) -> None:
        self._due_stabilize = self._due_check = self._due_fix = self.now
        self._finger_wait = None

    def _new_token(self) -> str:
        self._counter += 1
        return f"{self._prefix}.{self._counter}"


def _pos(peer: Peer | None) -> int | None:
    return None if peer is None else peer.pos


# Each handler takes the message type it is keyed by, which a Callable type cannot say.
_HANDLERS: dict[type, Callable[[ChordNode, Any, list[Output]], None]] = {
    StabilizeQuery: ChordNode._on_stabilize_query,
    StabilizeReply: ChordNode._on_stabilize_reply,
    Notify: ChordNode._on_notify,
    Ping: ChordNode._on_ping,
    LookupReply: ChordNode._on_lookup_reply,
    LeaveToSuccessor: ChordNode._on_leave_to_successor,
    LeaveToPredecessor: ChordNode._on_leave_to_predecessor,
}
