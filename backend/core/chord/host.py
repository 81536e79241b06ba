"""One cache node on the ring: its virtual positions, failure detector and router.

The object a cache-node process wraps: V ring positions (default 8, at
SHA-256("<id>#<i>")) that share one liveness view and die together. Messages
between its own positions never leave; everything it returns is addressed to
other cache nodes, or an effect (Send: publish; Owned: serve the request;
RangeChanged: the owned arc changed; Isolated: join a cache node that is
in_ring, or let one bootstrap). The caller's loop:

    host = ChordHost("cache-1", incarnation=<random text>)
    outputs = host.bootstrap()   # the first cache node; others: host.join("cache-0")
    host.set_known_hosts(ids)    # whenever heartbeats show which cache nodes are up
    outputs = host.tick(now), host.handle(decode(wire)), host.lookup(cid, token, payload)
    outputs = host.leave()       # before a graceful exit; host.peer_gone(id, now) on a will
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from backend.core.chord.config import ChordConfig
from backend.core.chord.ids import is_position, vnode_position
from backend.core.chord.liveness import Liveness
from backend.core.chord.messages import (
    Gone,
    LeaveToPredecessor,
    LeaveToSuccessor,
    Lookup,
    LookupAck,
    Message,
    Peer,
    Ping,
    StabilizeQuery,
    sender_host,
)
from backend.core.chord.node import LEFT, LOST, MEMBER, ChordNode
from backend.core.chord.outputs import Dropped, Isolated, Output, Send
from backend.core.chord.routing import Router

LOCAL_DELIVERY_LIMIT = 100_000  # a guard against a bug looping between own positions


class ChordHost:
    __slots__ = (
        "_by_pos",
        "_checks",
        "_due_check",
        "_isolated",
        "_left",
        "config",
        "id",
        "known_hosts",
        "liveness",
        "nodes",
        "now",
        "router",
        "token_prefix",
    )

    def __init__(
        self,
        host_id: str,
        vnodes: int = 8,
        config: ChordConfig | None = None,
        incarnation: str = "0",
    ) -> None:
        """`incarnation` must differ between runs of the same cache node (a random
        string will do): it keeps a restarted node's lookup ids from colliding."""
        if not host_id or len(host_id) > 256:
            raise ValueError("a cache node id must be 1 to 256 characters")
        if vnodes < 1:
            raise ValueError("a cache node needs at least one ring position")
        self.id = host_id
        self.config = config or ChordConfig()
        self.liveness = Liveness(host_id)
        self.token_prefix = f"{host_id}/{incarnation}"
        self.nodes = [
            ChordNode(
                Peer(vnode_position(host_id, i), host_id),
                self.config,
                self.liveness,
                f"{self.token_prefix}/{i}",
            )
            for i in range(vnodes)
        ]
        self._by_pos = {n.pos: n for n in self.nodes}
        self.router = Router(self)
        self.now = 0.0
        self._isolated = False
        self._left = False
        self.known_hosts: list[str] = []  # other cache nodes the operator knows are up
        self._due_check = 0.0
        self._checks = 0

    def __repr__(self) -> str:
        return f"ChordHost({self.id!r}, {len(self.members())}/{len(self.nodes)} members)"

    # ---- queries --------------------------------------------------------------------

    @property
    def positions(self) -> list[int]:
        return [n.pos for n in self.nodes]

    @property
    def in_ring(self) -> bool:
        """Some position here is a member with a live successor: others can join through it."""
        return any(n.state == MEMBER and n.successors for n in self.nodes)

    @property
    def isolated(self) -> bool:
        """No position has a successor or a search under way: unless known_hosts lets
        it search again by itself, only join(<another cache node>) or bootstrap() helps."""
        if self._left:
            return False
        return not any(n.successors or n.searching for n in self.nodes)

    def members(self) -> list[ChordNode]:
        return [n for n in self.nodes if n.state == MEMBER]

    def node_at(self, position: int | None) -> ChordNode | None:
        return None if position is None else self._by_pos.get(position)

    def owner_of(self, key: int) -> int | None:
        """The position here that owns `key` by its known predecessor, if any."""
        for n in self.nodes:
            if n.owns(key):
                return n.pos
        return None

    def describe(self) -> dict[str, Any]:
        """This cache node's view of the ring, for status pages (positions as ints)."""
        return {
            "id": self.id,
            "positions": sorted(self.positions),
            "vnodes": [_describe(n) for n in sorted(self.nodes, key=lambda n: n.pos)],
        }

    # ---- commands -------------------------------------------------------------------

    def bootstrap(self) -> list[Output]:
        """Start a new ring made of this cache node's own positions."""
        ring = sorted((n.me for n in self.nodes), key=lambda p: p.pos)
        out: list[Output] = []
        self._left = self._isolated = False
        for n in self.nodes:
            n.now = self.now
            out.extend(n.bootstrap(ring))
        return self._drain(out)

    def join(self, contact: str) -> list[Output]:
        """Bring every position not yet in the ring in, through cache node `contact`."""
        if contact == self.id and not self.members():
            raise ValueError("a cache node cannot join through itself before it is in a ring")
        out: list[Output] = []
        self._left = self._isolated = False
        for n in self.nodes:
            n.now = self.now
            if n.state != MEMBER:
                out.extend(n.join(contact))
            elif not n.successors:
                out.extend(n.repair(contact))
        return self._drain(out)

    def leave(self) -> list[Output]:
        """Leave gracefully: each position hands over to its neighbours on other nodes."""
        plans = [(n, self._handover(n)) for n in self.members()]
        out: list[Output] = []
        for n, plan in plans:
            out.extend(n.leave(*plan))
        for n in self.nodes:
            if n.state != MEMBER:
                n.state = LEFT
        self.router.pending.clear()
        self.router.parked.clear()
        self._left = True
        return out

    def set_known_hosts(self, hosts: Iterable[str]) -> None:
        """The other cache nodes known to be up (from heartbeats, say). The ring asks
        them when it has to find its way again, and cross-checks through them now and
        then, which merges the ring should it ever have split."""
        self.known_hosts = sorted({h for h in hosts if h != self.id})

    def lookup(self, key: int, token: str, payload: Any = None) -> list[Output]:
        """A request for `key` enters the ring here; ends in Owned at its owner."""
        if not is_position(key):
            raise ValueError(f"a key must be a ring position (int in [0, 2**64)), got {key!r}")
        if not isinstance(token, str):
            raise ValueError("a lookup token must be text")
        out: list[Output] = []
        if not self.members():
            return [Dropped(key, token, "this cache node is not in the ring", ())]
        self.router.start(key, token, payload, out)
        return self._drain(out)

    def tick(self, now: float) -> list[Output]:
        self.now = now
        out: list[Output] = []
        cfg = self.config
        for host in self.liveness.expire(now, cfg.peer_timeout, cfg.suspect_ttl):
            self._host_failed(host, out)
        self._probe(out)
        for n in self.nodes:
            out.extend(n.tick(now))
        self.router.tick(now, out)
        self._repair(out)
        self._cross_check(out)
        return self._drain(out)

    def peer_gone(self, host: str, now: float) -> list[Output]:
        """Cache node `host` is known to be gone (its connection to the broker dropped,
        or it said so as it shut down): declare it dead now instead of waiting for its
        silence to time out. Its positions leave successor lists, fingers and
        predecessors, and lookup hops waiting on it are routed around it at once. The
        caller makes sure the news is about the host's latest incarnation; any later
        message from `host` clears the suspicion, as after a timeout."""
        self.now = now
        out: list[Output] = []
        if host == self.id or self._left:
            return out
        self.liveness.declare_dead(host, now)
        for n in self.nodes:
            n.now = now
            out.extend(n.host_failed(host))
        self.router.host_gone(host, out)
        return self._drain(out)

    def handle(self, message: Message) -> list[Output]:
        """A message from another cache node (decoded with messages.decode)."""
        sender = sender_host(message)
        if sender is not None and sender != self.id:
            self.liveness.heard(sender)
        out: list[Output] = []
        self._dispatch(message, out)
        return self._drain(out)

    # ---- internals ------------------------------------------------------------------

    def _dispatch(self, m: Message, out: list[Output]) -> None:
        if isinstance(m, Lookup):
            self.router.on_lookup(m, out)
        elif isinstance(m, LookupAck):
            self.router.on_ack(m)
        elif isinstance(m, Gone):
            self._on_gone(m, out)
        else:
            node = self._by_pos.get(m.dst)
            if node is None:
                if isinstance(m, StabilizeQuery | Ping):
                    out.append(Send(m.src.host, Gone(m.src.pos, self.id, m.dst)))
                return
            out.extend(node.handle(m))
            if isinstance(m, LeaveToSuccessor | LeaveToPredecessor):
                self.liveness.declare_dead(m.src.host, self.now)
                self._host_failed(m.src.host, out)

    def _on_gone(self, m: Gone, out: list[Output]) -> None:
        for n in self.nodes:
            if m.position is None:
                out.extend(n.host_failed(m.host))
            else:
                out.extend(n.position_failed(Peer(m.position, m.host)))
        self.router.on_gone(m, out)

    def _host_failed(self, host: str, out: list[Output]) -> None:
        for n in self.nodes:
            out.extend(n.host_failed(host))
        self.router.host_failed(host, out)

    def _probe(self, out: list[Output]) -> None:
        members = self.members()
        if not members:
            return
        me = members[0].me
        for peer in self.liveness.probes(self.now, self.config.peer_timeout):
            out.append(Send(peer.host, Ping(peer.pos, me)))

    def _repair(self, out: list[Output]) -> None:
        """Positions that lost every successor search for one again, and joins that
        found no one start again: through another cache node they know, else through
        the other positions here. With no one at all, the cache node is isolated."""
        if self._left:
            return
        linked = [m for m in self.members() if m.successors]
        for n in self.nodes:
            if not (n.needs_repair or n.state == LOST):
                continue
            contact = n.rejoin_contact()
            if contact is None and any(m is not n for m in linked):
                contact = self.id
            if contact is None and self.known_hosts:
                contact = self.known_hosts[n.failed_searches % len(self.known_hosts)]
            if contact is not None:
                out.extend(n.repair(contact) if n.state == MEMBER else n.join(contact))
        if self.isolated and not self._isolated:
            self._isolated = True
            out.append(Isolated(self.id))

    def _cross_check(self, out: list[Output]) -> None:
        if self.now < self._due_check or not self.known_hosts or not self.in_ring:
            return
        self._due_check = self.now + self.config.cross_check_interval
        self._checks += 1
        contact = self.known_hosts[self._checks % len(self.known_hosts)]
        for n in self.members():
            out.extend(n.cross_check(contact))

    def _handover(self, n: ChordNode) -> tuple[Peer | None, Peer | None, Peer | None, list[Peer]]:
        """Who `n` tells what when this whole cache node leaves (own positions skipped)."""
        succ = n.successors[0] if n.successors else None
        pred = n.predecessor
        return (
            succ if succ is not None and succ.host != self.id else None,
            self._first_remote_predecessor(n),
            pred if pred is not None and pred.host != self.id else None,
            [p for p in n.successors if p.host != self.id],
        )

    def _first_remote_predecessor(self, n: ChordNode) -> Peer | None:
        p = n.predecessor
        for _ in self.nodes:
            if p is None or p.host != self.id:
                return p
            local = self._by_pos.get(p.pos)
            p = None if local is None else local.predecessor
        return None

    def _drain(self, out: list[Output]) -> list[Output]:
        """Deliver messages between own positions now; return the rest."""
        result: list[Output] = []
        queue = deque(out)
        steps = 0
        while queue:
            item = queue.popleft()
            if type(item) is Send and item.host == self.id:
                steps += 1
                if steps > LOCAL_DELIVERY_LIMIT:
                    raise RuntimeError("chord messages loop between one cache node's positions")
                more: list[Output] = []
                self._dispatch(item.message, more)
                queue.extend(more)
            else:
                result.append(item)
        return result


def _describe(n: ChordNode) -> dict[str, Any]:
    return {
        "position": n.pos,
        "state": n.state,
        "predecessor": None if n.predecessor is None else [n.predecessor.pos, n.predecessor.host],
        "successors": [[p.pos, p.host] for p in n.successors],
        "fingers": [[p.pos, p.host] for p in n.fingers.distinct()],
    }
