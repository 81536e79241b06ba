"""ClusterView against random and mutated heartbeats: nothing but HeartbeatError comes out.

Heartbeats arrive from the broker, so any login can send any map on any topic. Whatever
observe() is given, it either records a heartbeat or raises HeartbeatError, and every
query afterwards answers without raising. Seeded (derandomize) so a failure repeats.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.adapters.heartbeats import heartbeat_message
from backend.core.cluster_view import KNOWN_KINDS, ClusterView, HeartbeatError
from backend.core.metrics import RequestMetrics
from backend.core.ring.cache_core import CacheNode

KINDS = sorted(KNOWN_KINDS)
IDS = ["a", "client-portal-1", "cache-node-1", "replica-g1-1", ""]


def real_beats() -> list[tuple[str, dict[str, Any]]]:
    """(topic, message) of one heartbeat of every kind, as the components send them."""
    metrics = RequestMetrics()
    metrics.observe("ping", "ok", 0.001)
    node = CacheNode("cache-node-1", incarnation="i", bootstrap=True, groups={"g1": [1, 2, 3]})
    node.tick(10.0)
    beats = []
    for kind, component_id, address in [
        ("client-portal", "client-portal-1", "127.0.0.1:7001"),
        ("admin-portal", "admin-portal-1", "127.0.0.1:50051"),
        ("cache-node", "cache-node-1", ""),
        ("replica", "replica-g1-1", ""),
        ("web", "web-1", "127.0.0.1:8000"),
    ]:
        message = heartbeat_message(component_id, kind, address, 1000.0, None, metrics)
        if kind == "cache-node":
            message["ring"] = node.ring_status()
        if kind == "replica":
            message["raft"] = {"group": "g1", "member": 1, "role": "leader", "term": 2}
        beats.append((f"taskring/v1/heartbeat/{kind}/{component_id}", message))
    return beats


REAL = real_beats()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(["0" * 16, "ffffffffffffffff", "127.0.0.1:7001", "member", "leader"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
topics = st.one_of(
    st.sampled_from([topic for topic, _ in REAL]),
    st.builds(
        lambda kind, component_id: f"taskring/v1/heartbeat/{kind}/{component_id}",
        st.sampled_from([*KINDS, "mystery", ""]),
        st.sampled_from(IDS),
    ),
    st.text(max_size=40),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any]:
    """A real heartbeat with a few of its fields, at any depth, replaced or removed, or a
    field added; sometimes on another topic."""
    topic, message = copy.deepcopy(draw(st.sampled_from(REAL)))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        topic = draw(topics)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        container, key = draw(st.sampled_from(_slots(message)))
        action = draw(st.integers(min_value=0, max_value=5))
        if action == 0 and isinstance(container, dict):
            container.pop(key, None)
        elif action == 1 and isinstance(container, dict):
            container[draw(st.text(max_size=8))] = draw(values)
        else:
            container[key] = draw(values)
    return topic, message


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a nested map: the places a mutation can hit."""
    slots: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in list(items):
        slots.append((value, key))
        if isinstance(inner, dict | list) and inner:
            slots.extend(_slots(inner))
    return slots


heartbeats = st.one_of(mutated(), st.tuples(topics, values))


def ask_everything(view: ClusterView, now: float) -> None:
    view.missing(now)
    view.unconverged(now)
    view.portals(now)
    view.cache_nodes(now)
    view.replica_groups(now)
    view.expected_groups(now)
    view.request_totals(now)
    for kind in KINDS:
        view.ready_portals(now, kind)
    for component in view.components(now):
        component.summary(now)
        for latency in component.heartbeat.metrics.latency:
            latency.cumulative()


@pytest.mark.slow
@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(heartbeats, min_size=1, max_size=6))
def test_random_and_mutated_heartbeats_raise_only_heartbeat_error(
    batch: list[tuple[Any, Any]],
) -> None:
    view = ClusterView()
    for topic, message in REAL:  # a healthy cluster first, so mutations replace real entries
        view.observe(topic, message, 1.0)
    for topic, message in batch:
        with contextlib.suppress(HeartbeatError):
            view.observe(topic, message, 1.5)
        ask_everything(view, 2.0)
