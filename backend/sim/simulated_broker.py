"""A simulated MQTT broker over virtual time: topics, subscriptions, QoS 0 and QoS 1.

The whole-system simulator (system_sim.py) runs every process of a deployment
on this broker instead of Mosquitto: connections, topic filters, per-copy
delays, losses, duplicates, last wills and partitions, every random choice from
the simulator's one random.Random. The faults it allows, and why:
docs/architecture.md, "The simulated broker".
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from backend.core import topics
from backend.core.codec import pack, unpack
from backend.sim.network import Scheduler

Deliver = Callable[[str, dict[str, Any]], None]
Will = tuple[str, dict[str, Any], int]  # topic, message, QoS


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    latency: float = 0.0005  # seconds, publisher to subscriber, the least a message takes
    jitter: float = 0.002  # mean of the exponential delay on top (reorders)
    stall: float = 0.0  # chance a delivery stalls
    stall_delay: float = 0.5  # a stall adds up to this much
    loss: float = 0.0  # chance a QoS 0 message is lost
    duplicate: float = 0.0  # chance a message arrives twice

    def __post_init__(self) -> None:
        if min(self.latency, self.jitter, self.stall_delay) < 0:
            raise ValueError("delays cannot be negative")
        for name in ("stall", "loss", "duplicate"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} is a probability in [0, 1)")


class Connection:
    """One process incarnation's session with the broker."""

    __slots__ = ("alive", "deliver", "name", "outbox_lost", "will")

    def __init__(self, name: str, deliver: Deliver, will: Will | None = None) -> None:
        self.name = name  # the endpoint: which side of a partition it is on
        self.deliver = deliver
        self.will = will
        self.alive = True
        self.outbox_lost = False


class Broker:
    def __init__(self, scheduler: Scheduler, rng: random.Random, config: BrokerConfig) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.config = config
        self.counts: Counter[str] = Counter()
        self._subscriptions: list[tuple[str, Connection]] = []
        self._matches: dict[str, list[Connection]] = {}  # topic -> subscribers, cached
        # called with (sender, topic, message) for every publish, e.g. to time a fault
        self.watch: Callable[[str, str, dict[str, Any]], None] | None = None
        self._partitions: list[tuple[dict[str, int], bool]] = []

    # ---- sessions -----------------------------------------------------------------------

    def connect(self, name: str, deliver: Deliver, will: Will | None = None) -> Connection:
        return Connection(name, deliver, will)

    def subscribe(self, connection: Connection, topic_filter: str) -> None:
        self._subscriptions.append((topic_filter, connection))
        self._matches.clear()

    def close(self, connection: Connection, lose_outbox: bool = False, clean: bool = False) -> None:
        """The process died (or, `clean`, disconnected on purpose): its subscriptions go,
        what is on its way to it is lost, and unless `clean` its will goes out."""
        if not connection.alive:
            return
        connection.alive = False
        connection.outbox_lost = lose_outbox
        self._subscriptions = [(f, c) for f, c in self._subscriptions if c is not connection]
        self._matches.clear()
        if connection.will is not None and not clean:
            topic, message, qos = connection.will
            self.counts["wills"] += 1
            self._fan_out(connection, topic, message, qos, will=True)

    # ---- partitions ---------------------------------------------------------------------

    def partition(self, sides: Iterable[Iterable[str]], bridged: bool = False) -> object:
        """Only endpoints on the same side reach each other until `heal` is given what this
        returns. Endpoints on no side form one more side, or with `bridged` reach every
        side (a partial partition: two halves that still share some third party)."""
        cut = {name: i for i, side in enumerate(sides, 1) for name in side}
        self._partitions.append((cut, bridged))
        return cut

    def heal(self, partition: object | None = None) -> None:
        """End one partition, or all of them."""
        self._partitions = [p for p in self._partitions if partition not in (None, p[0])]

    def cut(self, a: str, b: str) -> bool:
        for sides, bridged in self._partitions:
            side_a, side_b = sides.get(a, 0), sides.get(b, 0)
            if side_a != side_b and not (bridged and 0 in (side_a, side_b)):
                return True
        return False

    @property
    def partitioned(self) -> bool:
        return bool(self._partitions)

    # ---- messages -----------------------------------------------------------------------

    def publish(self, sender: Connection, topic: str, message: dict[str, Any], qos: int) -> None:
        if not sender.alive:
            return
        if self.watch is not None:
            self.watch(sender.name, topic, message)
        self._fan_out(sender, topic, message, qos)

    def _fan_out(
        self, sender: Connection, topic: str, message: dict[str, Any], qos: int, will: bool = False
    ) -> None:
        subscribers = self._subscribers(topic)
        if not subscribers:
            return
        payload = pack(message)
        cfg, rng, counts = self.config, self.rng, self.counts
        counts["published"] += 1
        for receiver in subscribers:
            if self.cut(sender.name, receiver.name):
                counts["cut"] += 1
                continue
            if qos == 0 and cfg.loss and rng.random() < cfg.loss:
                counts["lost"] += 1
                continue
            copies = 1
            if cfg.duplicate and rng.random() < cfg.duplicate:
                copies = 2
                counts["duplicated"] += 1
            for _ in range(copies):
                delay = cfg.latency + (rng.expovariate(1 / cfg.jitter) if cfg.jitter else 0.0)
                if cfg.stall and rng.random() < cfg.stall:
                    delay += rng.random() * cfg.stall_delay
                    counts["stalled"] += 1
                self.scheduler.after(delay, self._deliver, sender, receiver, topic, payload, will)

    def _subscribers(self, topic: str) -> list[Connection]:
        found = self._matches.get(topic)
        if found is None:
            found = [c for f, c in self._subscriptions if f == topic or topics.matches(f, topic)]
            self._matches[topic] = found
        return found

    def _deliver(
        self, sender: Connection, receiver: Connection, topic: str, payload: bytes, will: bool
    ) -> None:
        if not receiver.alive or (sender.outbox_lost and not sender.alive and not will):
            self.counts["lost with a process"] += 1
            return
        if self.cut(sender.name, receiver.name):
            self.counts["cut"] += 1
            return
        self.counts["delivered"] += 1
        receiver.deliver(topic, unpack(payload))
