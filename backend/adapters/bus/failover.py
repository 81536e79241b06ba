"""Which broker node a bus tries next, and how long it waits first: a pure decision.

A bus given several broker URLs (the nodes of one clustered broker) starts with
the first. Whenever a connection attempt fails or a connection is lost it moves
on to the next, round robin, at once; only once every node has failed in a row
(a full round) does it wait, and those waits grow as RECONNECT_DELAYS says. So a
live node takes over within one connect after a loss, while a broker that is
down altogether is not hammered. A connection that stood for STABLE_AFTER
seconds starts a fresh round when lost; one dropped sooner counts as a failure
of its round, so nodes that accept and drop at once are not hammered either.
With one URL each failure is a full round: the waits are those a single-broker
bus has always made.

A node can also fail without closing anything: paused, or its host gone from
the network, it leaves the connection open and answers nothing. Only the
keepalive tells, and `liveness` says how soon: with one broker after 1.5 x
keepalive, as always (there is nowhere else to go, and reconnecting to a busy
broker costs it more); with several, after FAILOVER_SILENCE seconds at most,
so the components on a silent node move on to a live one within seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)  # seconds, after the 1st, 2nd, ... failed round
STABLE_AFTER = 1.0  # seconds a connection must stand for its loss to start a fresh round
FAILOVER_SILENCE = 2.0  # seconds of a node's silence after which a bus with others moves on
PINGS_PER_SILENCE = 3  # PINGREQs sent within the silence a broker is allowed


@dataclass
class BrokerRotation:
    """Round robin over `count` brokers, with backoff applied per full round of failures."""

    count: int
    delays: Sequence[float] = RECONNECT_DELAYS
    stable_after: float = STABLE_AFTER
    current: int = 0  # the index of the broker to try next (or connected to)
    failed_in_round: int = 0  # failures since the round started
    rounds: int = 0  # full rounds failed since the last clean end

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a rotation needs at least one broker")

    def ended_cleanly(self) -> None:
        """A session ended without failing: the backoff starts over."""
        self.failed_in_round = 0
        self.rounds = 0

    def failed(self, lasted: float | None = None) -> float:
        """The current broker failed (`lasted` None) or its connection was lost after
        `lasted` seconds: move to the next one and return the seconds to wait before
        trying it (0 within a round)."""
        if lasted is not None and lasted >= self.stable_after:
            self.failed_in_round = 0  # it stood: a fresh round starts with this loss
        self.current = (self.current + 1) % self.count
        self.failed_in_round += 1
        if self.failed_in_round < self.count:
            return 0.0
        self.failed_in_round = 0
        delay = self.delays[min(self.rounds, len(self.delays) - 1)]
        self.rounds += 1
        return delay


@dataclass(frozen=True)
class Liveness:
    """How often a bus pings the broker, and how long a silence it takes for a dead node."""

    ping_every: float
    silent_limit: float


def liveness(keepalive: float, nodes: int) -> Liveness | None:
    """The keepalive of a bus with `nodes` broker URLs and MQTT keepalive `keepalive`
    seconds; None when the keepalive is off (0). The broker's own limit, 1.5 x
    keepalive, is never exceeded: a PINGREQ goes out at least every keepalive / 2."""
    if keepalive <= 0:
        return None
    silent_limit = 1.5 * keepalive
    if nodes > 1:
        silent_limit = min(silent_limit, FAILOVER_SILENCE)
    ping_every = min(keepalive / 2, silent_limit / PINGS_PER_SILENCE)
    return Liveness(ping_every, silent_limit)
