"""What the Chord core hands back to its caller: messages to send and effects to act on.

The core does no I/O. Every call returns a list of outputs; the caller sends each
Send to the named cache node and acts on the effects:

- Owned: a lookup reached the position owning its key; serve the request there.
- RangeChanged: the arc a position owns changed; keys may have to move.
- Joined: a position became a ring member (it can route and own keys).
- Dropped: a lookup could not go on (no route, or too many hops); the caller's
  request timeout answers the user, and a retry takes a fresh route.
- Isolated: this cache node has no ring member left and nobody to rejoin through;
  call ChordHost.join(<another cache node>).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.chord.messages import Message, Peer


@dataclass(slots=True)
class Send:
    """Deliver `message` to the cache node `host` (it dispatches on message.dst)."""

    host: str
    message: Message


@dataclass(slots=True)
class Owned:
    """The position `position` owns `key` and should serve the request `token`.

    `route` lists the positions that handled the request, the entry first and the
    owner last; `hops` counts the messages it took. May repeat for one token when a
    hop was retried (delivery is at least once): serve idempotently.
    """

    position: int
    key: int
    token: str
    payload: Any
    route: tuple[Peer, ...]
    hops: int

    def hosts(self) -> list[str]:
        """The cache nodes visited, in order, each once per visit (the trace's route)."""
        return hosts_visited(self.route)


@dataclass(slots=True)
class RangeChanged:
    """Position `position` now owns the arc (new_predecessor, position].

    None means the predecessor is unknown (just joined, or it failed): the position
    then owns only what the ring routes to it until a predecessor notifies it.
    """

    position: int
    old_predecessor: int | None
    new_predecessor: int | None


@dataclass(slots=True)
class Joined:
    position: int


@dataclass(slots=True)
class Dropped:
    key: int
    token: str
    reason: str
    route: tuple[Peer, ...]


@dataclass(slots=True)
class Isolated:
    host: str


Effect = Owned | RangeChanged | Joined | Dropped | Isolated
Output = Send | Effect


def hosts_visited(route: tuple[Peer, ...] | list[Peer]) -> list[str]:
    """Cache node ids along a route, collapsing consecutive positions of one node."""
    hosts: list[str] = []
    for peer in route:
        if not hosts or hosts[-1] != peer.host:
            hosts.append(peer.host)
    return hosts
