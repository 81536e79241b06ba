"""Failure detection, per cache node: by timeouts, or by being told.

The core is pure, so a failure is a silence: a cache node we wait on (for an
answer to a query, a probe or a lookup hop) that says nothing at all for
`peer_timeout` is declared dead. While we wait, it is probed a few times, so a
single lost message does not make a live node look dead. Any message from it
clears both the wait and a suspicion. The unit is the cache node, not the
position: its positions live and die together, and hearing from any of them
proves the process alive.

A death may also be told rather than inferred: when a cache node's connection
to the broker drops, the broker publishes its last will, and the caller hands
that to ChordHost.peer_gone, which declares the node dead here at once.
"""

from __future__ import annotations

from backend.core.chord.messages import Peer

PROBES = 3  # probes sent while waiting, spread over the timeout


class _Wait:
    __slots__ = ("next_probe", "peer", "since")

    def __init__(self, peer: Peer, since: float) -> None:
        self.peer = peer
        self.since = since
        self.next_probe = since


class Liveness:
    __slots__ = ("awaiting", "me", "suspects")

    def __init__(self, me: str) -> None:
        self.me = me
        self.awaiting: dict[str, _Wait] = {}  # host -> our oldest unanswered request to it
        self.suspects: dict[str, float] = {}  # host -> when it was declared dead

    def expect(self, peer: Peer, now: float) -> None:
        """We sent `peer` something it must answer."""
        host = peer.host
        if host != self.me and host not in self.awaiting:
            self.awaiting[host] = _Wait(peer, now)

    def heard(self, host: str) -> None:
        self.awaiting.pop(host, None)
        self.suspects.pop(host, None)

    def suspected(self, host: str) -> bool:
        return host in self.suspects

    def declare_dead(self, host: str, now: float) -> None:
        self.awaiting.pop(host, None)
        if host != self.me:
            self.suspects[host] = now

    def probes(self, now: float, timeout: float) -> list[Peer]:
        """Positions to probe now: hosts silent for a while that we still wait on."""
        step = timeout / (PROBES + 1)
        due = []
        for wait in self.awaiting.values():
            if now - wait.since >= step and now >= wait.next_probe:
                wait.next_probe = now + step
                due.append(wait.peer)
        return due

    def expire(self, now: float, timeout: float, ttl: float) -> list[str]:
        """Hosts that just timed out (now suspected); old suspicions are forgotten."""
        dead = [h for h, wait in self.awaiting.items() if now - wait.since >= timeout]
        for host in dead:
            self.declare_dead(host, now)
        for host in [h for h, since in self.suspects.items() if now - since >= ttl]:
            del self.suspects[host]
        return dead
