"""`taskring cache-node`: one cache node of the Chord ring, as its own process.

A thin asyncio adapter around backend/core/ring/cache_core.py's CacheNode: it moves
msgpack maps between the MQTT broker and the core, ticks it every TICK_INTERVAL,
publishes what it returns in order, and sends a heartbeat every second (its
"ring" map: docs/architecture.md, Heartbeats). Its MQTT last will is a
`host_gone` of its incarnation (docs/architecture.md, "Dead cache nodes").

    taskring cache-node [--id cache-node-1] [--broker URL] [--vnodes 8]
                        [--bootstrap] [--join-wait 2.0]
                        [--replica-groups 0] [--replicas 3]

--replica-groups G > 0 keeps keys in groups g1..gG of members 1..R, else in
memory only. Without --bootstrap the node waits for a ring member to announce
itself and joins through it; with it, it starts a new ring when none has
within --join-wait seconds. SIGTERM or SIGINT: leave the ring (handing keys on
when they live in memory only), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import time

import click

from backend.adapters import clock, settings
from backend.adapters.bus import BrokerBus, LastWill, open_bus
from backend.adapters.bus.publisher import Publisher
from backend.adapters.bus.transport import BusUnavailable, Message
from backend.adapters.critical_tasks import critical_task
from backend.adapters.heartbeats import (
    HEARTBEAT_INTERVAL,
    RequestMetrics,
    heartbeat_message,
    refused_subscriptions,
)
from backend.adapters.settings import BrokerAddresses
from backend.core import topics
from backend.core.drops import Drops
from backend.core.replica.group import default_groups
from backend.core.ring import wire
from backend.core.ring.cache_core import TICK_INTERVAL, CacheNode, Publish, coalesce
from backend.processes.options import broker_option, component_id_option
from backend.processes.runtime import run, stop_on_signals

log = logging.getLogger(__name__)

KIND = "cache-node"
CONNECT_LOG_INTERVAL = 5.0
LEAVE_ACK_WAIT = 2.0  # how long a leaving node waits for its handovers' acknowledgements
FLUSH_WAIT = 2.0


def group_members(replica_groups: int, replicas: int) -> dict[str, list[int]] | None:
    """The groups `taskring up` starts: g1..gG, each of members 1..R; None for none."""
    if replica_groups == 0:
        return None
    return {group: list(range(1, replicas + 1)) for group in default_groups(replica_groups)}


async def run_cache_node(
    node_id: str,
    broker: BrokerAddresses,
    vnodes: int,
    bootstrap: bool,
    join_wait: float,
    groups: dict[str, list[int]] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; return the exit code."""
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    incarnation = secrets.token_hex(6)
    # Should the process die, the broker tells the ring and the portals at once.
    gone = LastWill(topics.RING_ANNOUNCE, wire.HostGone(node_id, incarnation).to_wire())
    metrics = RequestMetrics(Drops(f"cache node {node_id}"))
    bus = open_bus(broker, node_id, will=gone, drops=metrics.drops)
    publisher = Publisher(bus)
    holder: list[CacheNode] = []
    handed_over = asyncio.Event()  # set once a leaving node's handovers are acknowledged
    outgoing: list[Publish] = []
    flush_due = False

    def flush() -> None:
        # What the messages of one turn of the event loop produced leaves together: one
        # proposal per replica group, one MQTT message per cache node or portal.
        nonlocal flush_due
        flush_due = False
        outgoing.extend(holder[0].flush(clock.monotonic()))
        publisher.send(coalesce(outgoing))
        outgoing.clear()

    async def on_message(topic: str, message: Message) -> None:
        nonlocal flush_due
        if holder:
            node = holder[0]
            outgoing.extend(node.receive(topic, message, clock.monotonic()))
            if not flush_due:
                flush_due = True
                loop.call_soon(flush)
            if node.leaving and not node.handovers_pending:
                handed_over.set()

    bus.subscribe(topics.ring_host(node_id), on_message)
    bus.subscribe(topics.RING_ANNOUNCE, on_message)
    if groups:
        bus.subscribe(topics.raft_replies(node_id, incarnation), on_message)
    async with bus:
        if not await _connected(bus, stop, broker):
            return 0
        # The join wait starts once the node can hear announcements.
        node = CacheNode(
            node_id,
            incarnation=incarnation,
            vnodes=vnodes,
            bootstrap=bootstrap,
            join_wait=join_wait,
            now=clock.monotonic(),
            metrics=metrics,
            groups=groups,
            seed=secrets.randbits(64),  # nodes started together choose join contacts apart
        )
        holder.append(node)
        log.info(
            "cache node %s up with %d ring positions, %s (broker %s)",
            node_id,
            vnodes,
            f"durable in groups {', '.join(sorted(groups))}" if groups else "memory only",
            broker.redacted(),
        )
        ticker = critical_task(_tick(node, publisher), f"cache node {node_id} ticker")
        heartbeat = critical_task(_heartbeat(bus, node, metrics), f"cache node {node_id} heartbeat")
        await stop.wait()
        log.info("cache node %s leaving the ring", node_id)
        publisher.send(node.leave(clock.monotonic()))
        if node.handovers_pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handed_over.wait(), LEAVE_ACK_WAIT)
        if node.handovers_pending:
            log.warning(
                "%d handovers were not acknowledged in time; their keys may be lost",
                node.handovers_pending,
            )
        for task in (ticker, heartbeat):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A clean disconnect sends no will: say it, so no one waits on this node after it.
        publisher.send([Publish(gone.topic, gone.message, gone.qos)])
        await publisher.flush(FLUSH_WAIT)
    log.info("cache node %s stopped", node_id)
    return 0


async def _connected(bus: BrokerBus, stop: asyncio.Event, broker: BrokerAddresses) -> bool:
    """Wait for the broker (saying so now and then) or a stop; True once connected."""
    stopping = asyncio.create_task(stop.wait())
    try:
        while True:
            connecting = asyncio.create_task(bus.wait_connected(CONNECT_LOG_INTERVAL))
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                connecting.cancel()
                return False
            if connecting.result():
                return True
            log.info("waiting for the broker at %s", broker.redacted())
    finally:
        stopping.cancel()


async def _tick(node: CacheNode, publisher: Publisher) -> None:
    while True:
        try:
            publisher.send(coalesce(node.tick(clock.monotonic())))
        except Exception:
            # A bug must not stop the ticks: without them the node drops out of the ring.
            log.exception("cache node %s failed on a tick", node.id)
        await clock.sleep(TICK_INTERVAL)


async def _heartbeat(bus: BrokerBus, node: CacheNode, metrics: RequestMetrics) -> None:
    started = time.time()
    topic = topics.heartbeat(KIND, node.id)
    while True:
        refused = refused_subscriptions(bus)
        message = heartbeat_message(node.id, KIND, "", started, node.readiness(), metrics, refused)
        message["ring"] = node.ring_status()
        with contextlib.suppress(BusUnavailable):  # the bus logs its own connection trouble
            await bus.publish(topic, message, qos=0)
        await asyncio.sleep(HEARTBEAT_INTERVAL)


@click.command("cache-node")
@component_id_option("cache-node-1")
@broker_option
@click.option(
    "--vnodes",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    envvar="TASKRING_VNODES",
    help="Ring positions (virtual nodes) of this cache node.",
)
@click.option(
    "--bootstrap",
    is_flag=True,
    help="Start a new ring if no ring member announces itself within --join-wait seconds.",
)
@click.option(
    "--join-wait",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds to listen for ring members before --bootstrap starts a new ring.",
)
@click.option(
    "--replica-groups",
    type=click.IntRange(0, settings.MAX_REPLICA_GROUPS),
    default=0,
    show_default=True,
    envvar="TASKRING_REPLICA_GROUPS",
    help="Replica groups g1..gN holding the keys durably; 0 keeps keys in memory only.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, settings.MAX_REPLICAS),
    default=3,
    show_default=True,
    envvar="TASKRING_REPLICAS",
    help="Members per replica group (1..N).",
)
def command(
    component_id: str,
    broker: BrokerAddresses,
    vnodes: int,
    bootstrap: bool,
    join_wait: float,
    replica_groups: int,
    replicas: int,
) -> None:
    """Run one cache node of the Chord ring."""
    groups = group_members(replica_groups, replicas)
    sys.exit(run(run_cache_node(component_id, broker, vnodes, bootstrap, join_wait, groups)))
