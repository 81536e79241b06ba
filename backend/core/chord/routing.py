"""Lookup forwarding for one cache node: from any entry to the owner of a key.

A node serves a lookup one of its positions owns, else forwards it by the
closest preceding finger over all its positions; stale guesses are handed back,
hops are acknowledged, resent and routed around dead nodes, so delivery is at
least once. The rules: docs/architecture.md, "Chord ring maintenance".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.core.chord.ids import distance
from backend.core.chord.messages import Gone, Lookup, LookupAck, LookupReply, Peer
from backend.core.chord.outputs import Dropped, Output, Owned, Send

if TYPE_CHECKING:
    from backend.core.chord.host import ChordHost
    from backend.core.chord.node import ChordNode

SEEN_LIMIT = 4096  # (lookup, hop) pairs remembered to drop duplicates


class _Hop:
    __slots__ = ("arrived", "attempts", "avoid", "deadline", "sent", "to")

    def __init__(
        self, arrived: Lookup, sent: Lookup, to: str, deadline: float, avoid: frozenset[str]
    ) -> None:
        self.arrived = arrived  # the lookup as it reached us, to route again
        self.sent = sent
        self.to = to
        self.deadline = deadline
        self.attempts = 1
        self.avoid = avoid


class Router:
    __slots__ = ("_counter", "_seen", "host", "parked", "pending")

    def __init__(self, host: ChordHost) -> None:
        self.host = host
        self.pending: dict[tuple[str, int], _Hop] = {}
        self.parked: dict[str, tuple[Lookup, float]] = {}
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._counter = 0

    def start(self, key: int, token: str, payload: Any, out: list[Output]) -> None:
        """A request enters the ring here."""
        self._counter += 1
        lid = f"{self.host.token_prefix}.r{self._counter}"
        self.route(Lookup(None, None, key, lid, token, None, 0, (), False, payload), out)

    def on_lookup(self, m: Lookup, out: list[Output]) -> None:
        src = m.src
        if src is not None and src.host != self.host.id:
            if self._refuse(m, src, out):
                return
            ack_from = Peer(m.dst if m.dst is not None else self.host.nodes[0].pos, self.host.id)
            out.append(Send(src.host, LookupAck(src.pos, ack_from, m.lid, m.hops)))
            if self._duplicate((m.lid, m.hops)):
                return
        self.route(m, out)

    def _refuse(self, m: Lookup, src: Peer, out: list[Output]) -> bool:
        """Say Gone for a hop to a position (or a cache node) that is not in the ring:
        it restarted or is rejoining, so the sender forgets it and routes around."""
        target = self.host.node_at(m.dst)
        if self.host.members() and (m.dst is None or (target is not None and target.is_member)):
            return False
        position = m.dst if target is not None and self.host.members() else None
        out.append(Send(src.host, Gone(src.pos, self.host.id, position, m.lid, m.hops)))
        return True

    def on_ack(self, m: LookupAck) -> None:
        self.pending.pop((m.lid, m.hops), None)

    def on_gone(self, m: Gone, out: list[Output]) -> None:
        hop = self.pending.pop((m.lid, m.hops), None) if m.lid else None
        if hop is not None:
            avoid = hop.avoid | {m.host} if m.position is None else hop.avoid
            self.route(hop.arrived, out, avoid)

    def host_failed(self, host: str, out: list[Output]) -> None:
        for key, hop in list(self.pending.items()):
            if hop.to == host:
                del self.pending[key]
                self.route(hop.arrived, out, hop.avoid | {host})

    def host_gone(self, host: str, out: list[Output]) -> None:
        """`host` is known dead (it is suspected now, so no route picks it): route its
        pending hops again at once. It joins no hop's `avoid`, which is for nodes that
        fell silent and makes a route wait rather than settle on a position here."""
        for key, hop in list(self.pending.items()):
            if hop.to == host:
                del self.pending[key]
                self.route(hop.arrived, out, hop.avoid)

    def tick(self, now: float, out: list[Output]) -> None:
        cfg = self.host.config
        parked, self.parked = self.parked, {}
        for m, since in parked.values():
            self.route(m, out, since=since)
        for key, hop in list(self.pending.items()):
            if hop.deadline > now:
                continue
            host = hop.to
            if hop.attempts < cfg.hop_attempts:
                hop.attempts += 1
                hop.deadline = now + cfg.hop_timeout
                assert hop.sent.dst is not None  # a hop is sent to a node, never broadcast
                self.host.liveness.expect(Peer(hop.sent.dst, host), now)
                out.append(Send(host, hop.sent))
            else:
                del self.pending[key]
                self.route(hop.arrived, out, hop.avoid | {host})

    # ---- the routing decision -------------------------------------------------------

    def route(
        self,
        m: Lookup,
        out: list[Output],
        avoid: frozenset[str] = frozenset(),
        since: float | None = None,
    ) -> None:
        """Serve `m` here, send it one hop on, or hold it until a route appears.
        `avoid`: cache nodes that did not acknowledge it; `since`: when it was parked."""
        # A search never comes back to the position that asked: it must find the
        # first position after it as the rest of the ring sees it.
        skip = m.origin if m.skip_origin else None
        members = [v for v in self.host.members() if v.me != skip]
        usable = self._usable(members, avoid, skip)
        if self._served_here(members, m, out, usable, avoid, since):
            return
        best = self._best_hop(members, m.key, usable)
        if best is not None and best[1] == best[0].me:
            if not avoid:
                self._deliver(best[0], m, out)  # it knows of no live position nearer the key
                return
            best = None  # only because a silent node is skipped: wait, then try it again
        if best is not None:
            self._forward(*best, m, out, avoid)
        elif m.skip_origin and members and not avoid:
            # A search (join, repair, cross-check) here knows no live position past this
            # cache node: like a lone survivor, answer with the own position first at
            # or after the key; stabilize walks the asker on from there.
            self._deliver(min(members, key=lambda v: distance(m.key, v.pos)), m, out)
        else:
            self._park(m, out, since)

    def _served_here(
        self,
        members: list[ChordNode],
        m: Lookup,
        out: list[Output],
        usable: Callable[[Peer], bool],
        avoid: frozenset[str],
        since: float | None,
    ) -> bool:
        """An own position owns the key, or was told it does and settles that."""
        for v in members:
            if v.owns(m.key):
                self._deliver(v, m, out)
                return True
        target = self.host.node_at(m.dst) if m.final else None
        if target is None or target not in members:
            return False
        return self._settle_final(target, m, out, usable, avoid, since)

    def _usable(
        self, members: list[ChordNode], avoid: frozenset[str], origin: Peer | None
    ) -> Callable[[Peer], bool]:
        """Peers a hop may go to: own positions in the ring, others not suspected; never
        the position that asked."""
        here, suspects = self.host.id, self.host.liveness.suspects
        local = {v.pos for v in members}
        return lambda p: (
            p != origin
            and (
                p.pos in local if p.host == here else p.host not in suspects and p.host not in avoid
            )
        )

    @staticmethod
    def _best_hop(
        members: list[ChordNode], key: int, usable: Callable[[Peer], bool]
    ) -> tuple[ChordNode, Peer, bool] | None:
        """The next hop, from the own position nearest before the key or, if another
        own position knows a peer nearer still, from that one. A hop must get closer
        to the key than any own position already is, so lookups cannot circle."""
        if not members:
            return None
        nearest = min(members, key=lambda v: distance(v.pos, key))
        hop = nearest.next_hop(key, usable)
        if hop is not None and hop[1]:
            return nearest, hop[0], True  # the key lies just after it: its successor owns it
        best: tuple[int, ChordNode, Peer] | None = None
        limit = distance(nearest.pos, key)
        for v in members:
            hop = v.next_hop(key, usable)
            if hop is None or hop[1]:
                continue  # a farther position's "its successor owns it" is stale
            d = distance(hop[0].pos, key)
            if d < limit and (best is None or d < best[0]):
                best = (d, v, hop[0])
        return None if best is None else (best[1], best[2], False)

    def _park(self, m: Lookup, out: list[Output], since: float | None) -> None:
        """No usable route now (every successor suspected, or not in the ring yet):
        hold the lookup and try again each tick, for up to `route_wait`."""
        now = self.host.now
        since = now if since is None else since
        if now - since < self.host.config.route_wait:
            self.parked[m.lid] = (m, since)
        else:
            self._cannot_route(m, out, "no route to the owner")

    def _settle_final(
        self,
        v: ChordNode,
        m: Lookup,
        out: list[Output],
        usable: Callable[[Peer], bool],
        avoid: frozenset[str],
        since: float | None,
    ) -> bool:
        """`v` was sent the key as its owner but does not own it by its predecessor."""
        p = v.predecessor
        if p is not None and p.host in avoid:
            self._park(m, out, since)  # p is silent, not known dead: try it again later
            return True
        if p is None or not usable(p):
            self._deliver(v, m, out)  # no live predecessor known: v is the best owner
            return True
        if distance(m.key, p.pos) < distance(m.key, v.pos):
            self._forward(v, p, True, m, out, frozenset())  # p is nearer: hand it back
            return True
        return False

    def _deliver(self, v: ChordNode, m: Lookup, out: list[Output]) -> None:
        route = (*m.route, v.me)
        if m.origin is None:
            out.append(Owned(v.pos, m.key, m.token, m.payload, route, m.hops))
        else:
            reply = LookupReply(m.origin.pos, v.me, m.token, tuple(v.successors))
            out.append(Send(m.origin.host, reply))

    def _forward(
        self,
        v: ChordNode,
        peer: Peer,
        final: bool,
        m: Lookup,
        out: list[Output],
        avoid: frozenset[str],
    ) -> None:
        cfg = self.host.config
        if m.hops >= cfg.max_hops:
            self._cannot_route(m, out, f"more than {cfg.max_hops} hops")
            return
        sent = Lookup(
            peer.pos,
            v.me,
            m.key,
            m.lid,
            m.token,
            m.origin,
            m.hops + 1,
            (*m.route, v.me),
            final,
            m.payload,
            m.skip_origin,
        )
        out.append(Send(peer.host, sent))
        if peer.host != self.host.id:
            now = self.host.now
            self.host.liveness.expect(peer, now)
            hop = _Hop(m, sent, peer.host, now + cfg.hop_timeout, avoid)
            self.pending[(m.lid, m.hops + 1)] = hop

    def _cannot_route(self, m: Lookup, out: list[Output], reason: str) -> None:
        if m.origin is None:
            out.append(Dropped(m.key, m.token, reason, m.route))
        # internal lookups (joins, finger repairs) time out and retry on their own

    def _duplicate(self, key: tuple[str, int]) -> bool:
        seen = self._seen
        if key in seen:
            return True
        seen[key] = None
        if len(seen) > SEEN_LIMIT:
            seen.popitem(last=False)
        return False
