"""ClusterView: liveness, the portal list, readiness reasons and metrics, from heartbeats alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from backend.adapters.heartbeats import heartbeat_message
from backend.core.cluster_view import (
    MAX_RING_REASONS,
    STALE_INTERVALS,
    ClusterView,
    Component,
    HeartbeatError,
    cumulative_buckets,
    parse_heartbeat,
)
from backend.core.metrics import LATENCY_BUCKETS, RequestMetrics
from backend.core.ring.cache_core import CacheNode


def beat(
    component_id: str = "client-portal-1",
    kind: str = "client-portal",
    address: str = "127.0.0.1:7001",
    problem: str | None = None,
    counted: RequestMetrics | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    message = heartbeat_message(component_id, kind, address, 1000.0, problem, counted)
    message.update(overrides)
    return message


def topic_of(message: dict[str, Any]) -> str:
    return f"taskring/v1/heartbeat/{message['kind']}/{message['id']}"


def see(view: ClusterView, message: dict[str, Any], received: float) -> Component:
    """Observe a heartbeat on the topic its sender would publish it on."""
    return view.observe(topic_of(message), message, received)


def ready_cluster(now: float = 100.0) -> ClusterView:
    view = ClusterView()
    see(view, beat(), now)
    see(view, beat("admin-portal-1", "admin-portal", "127.0.0.1:50051"), now)
    return view


# ---- liveness -----------------------------------------------------------------------


def test_a_component_is_alive_up_to_three_intervals_after_its_last_heartbeat() -> None:
    view = ClusterView()
    component = see(view, beat(interval=2.0), received=10.0)
    assert component.alive(10.0 + STALE_INTERVALS * 2.0)
    assert not component.alive(10.0 + STALE_INTERVALS * 2.0 + 0.001)
    assert [c.id for c in view.alive(15.0)] == ["client-portal-1"]
    assert view.alive(16.5) == []


def test_a_newer_heartbeat_replaces_the_older_one() -> None:
    view = ClusterView()
    see(view, beat(problem="starting"), 1.0)
    see(view, beat(), 2.0)
    (component,) = view.components(2.0)
    assert component.heartbeat.ready and component.received == 2.0


def test_components_silent_for_ten_minutes_are_forgotten() -> None:
    view = ClusterView()
    see(view, beat(), 0.0)
    assert len(view.components(600.0)) == 1
    assert view.components(600.1) == []


def test_same_id_of_different_kinds_are_different_components() -> None:
    view = ClusterView()
    see(view, beat("x", "client-portal"), 1.0)
    see(view, beat("x", "admin-portal"), 1.0)
    assert [(c.kind, c.id) for c in view.components(1.0)] == [
        ("admin-portal", "x"),
        ("client-portal", "x"),
    ]


# ---- portals ------------------------------------------------------------------------


def test_portals_lists_live_portals_only_with_string_fields() -> None:
    view = ready_cluster(now=100.0)
    see(view, beat("web-1", "web", "127.0.0.1:8000"), 100.0)
    see(view, beat("client-portal-2", address="127.0.0.1:7002"), 90.0)  # stale by 100
    assert view.portals(100.0) == [
        {"id": "admin-portal-1", "kind": "admin-portal", "address": "127.0.0.1:50051"},
        {"id": "client-portal-1", "kind": "client-portal", "address": "127.0.0.1:7001"},
    ]
    for portal in view.portals(100.0):
        assert all(isinstance(value, str) for value in portal.values())


def test_ready_portals_prefers_the_longest_running() -> None:
    view = ClusterView()
    see(view, beat("client-portal-1", started=50.0, sent=60.0), 1.0)
    see(view, beat("client-portal-2", started=10.0, sent=60.0), 1.0)
    see(view, beat("client-portal-3", problem="catching up"), 1.0)
    ids = [c.id for c in view.ready_portals(1.0, "client-portal")]
    assert ids == ["client-portal-2", "client-portal-1"]


# ---- readiness ----------------------------------------------------------------------


def test_nothing_heard_means_both_kinds_of_portal_are_missing() -> None:
    assert ClusterView().missing(0.0) == ["no client portal is up", "no admin portal is up"]


def test_ready_when_one_live_ready_portal_of_each_kind() -> None:
    assert ready_cluster().missing(100.0) == []


def test_a_portal_that_is_not_ready_is_named_with_its_problem() -> None:
    view = ready_cluster()
    see(view, beat(problem="the portal is not connected to the MQTT broker"), 100.0)
    assert view.missing(100.0) == [
        "client-portal-1: the portal is not connected to the MQTT broker"
    ]


def test_one_ready_portal_of_a_kind_is_enough() -> None:
    view = ready_cluster()
    see(view, beat("client-portal-2", problem="catching up"), 100.0)
    assert view.missing(100.0) == []


def test_a_silent_portal_is_reported_with_how_long_ago_it_was_heard() -> None:
    view = ready_cluster(now=100.0)
    see(view, beat(), 95.0)  # the client portal's last word came 5 s before `now`
    assert view.missing(100.0) == [
        "no client portal is up (last heard from client-portal-1 5.0s ago)"
    ]


def test_web_and_other_kinds_do_not_count_towards_readiness() -> None:
    view = ClusterView()
    see(view, beat("web-1", "web", "127.0.0.1:8000"), 1.0)
    assert view.missing(1.0) == ["no client portal is up", "no admin portal is up"]


# ---- summaries and metrics ----------------------------------------------------------


def test_summary_of_a_live_and_a_dead_component() -> None:
    metrics = RequestMetrics()
    metrics.observe("ping", "ok", 0.001)
    metrics.observe("auth", "unauthorized", 0.002)
    view = ClusterView()
    component = see(view, beat(counted=metrics, started=1000.0, sent=1042.5, pid=4242), 10.0)
    live = component.summary(10.5)
    assert live == {
        "id": "client-portal-1",
        "kind": "client-portal",
        "address": "127.0.0.1:7001",
        "pid": 4242,
        "alive": True,
        "ready": True,
        "problem": None,
        "uptime": 42.5,
        "uptime_seconds": 42.5,
        "last_heard_seconds": 0.5,
        "requests": 2,
    }
    dead = component.summary(20.0)
    assert dead["alive"] is False and dead["ready"] is False
    assert dead["problem"] == "no heartbeat for 10.0s"


def test_request_totals_sum_live_components_by_kind_op_and_outcome() -> None:
    first, second = RequestMetrics(), RequestMetrics()
    first.observe("ping", "ok", 0.001)
    second.observe("ping", "ok", 0.001)
    second.observe("ping", "ok", 0.001)
    second.observe("auth", "unauthorized", 0.001)
    view = ClusterView()
    see(view, beat("client-portal-1", counted=first), 1.0)
    see(view, beat("client-portal-2", counted=second), 1.0)
    assert view.request_totals(1.0) == {
        ("client-portal", "ping", "ok"): 3,
        ("client-portal", "auth", "unauthorized"): 1,
    }
    assert view.request_totals(100.0) == {}


def test_latency_buckets_become_cumulative_ending_at_inf() -> None:
    metrics = RequestMetrics()
    for seconds in (0.0001, 0.0004, 0.003, 0.003, 99.0):
        metrics.observe("ping", "ok", seconds)
    view = ClusterView()
    component = see(view, beat(counted=metrics), 1.0)
    (latency,) = component.heartbeat.metrics.latency
    pairs = latency.cumulative()
    assert pairs[0] == ("0.0005", 2)
    assert dict(pairs)["0.005"] == 4
    assert pairs[-2] == ("5.0", 4)
    assert pairs[-1] == ("+Inf", 5)
    assert [count for _, count in pairs] == sorted(count for _, count in pairs)
    assert latency.total_seconds == pytest.approx(99.0065)


def test_cumulative_buckets_rejects_a_layout_of_the_wrong_length() -> None:
    with pytest.raises(ValueError):
        cumulative_buckets([1] * len(LATENCY_BUCKETS))


# ---- bad heartbeats -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("id", "", "'id'"),
        ("id", 7, "'id'"),
        ("kind", None, "'kind'"),
        ("address", b"x", "'address'"),
        ("pid", "12", "'pid'"),
        ("pid", True, "'pid'"),
        ("ready", 1, "'ready'"),
        ("problem", 3, "'problem'"),
        ("started", "now", "'started'"),
        ("sent", float("nan"), "'sent'"),
        ("interval", 0, "'interval'"),
        ("interval", -1.0, "'interval'"),
        ("interval", 1e9, "'interval'"),
        ("metrics", [], "'metrics'"),
        ("metrics", {"requests": "many"}, "'requests'"),
        ("metrics", {"requests": [["ping", "ok", -1]]}, "'requests'"),
        ("metrics", {"requests": [["ping", "ok"]]}, "'requests'"),
        ("metrics", {"latency": [["ping", [1, 2], 0.1]]}, "'latency'"),
        ("metrics", {"latency": [["ping", [0] * 14, "x"]]}, "'latency'"),
        ("cpu_seconds", "1.5", "'cpu_seconds'"),
        ("cpu_seconds", True, "'cpu_seconds'"),
        ("cpu_seconds", -0.5, "'cpu_seconds'"),
        ("cpu_seconds", float("inf"), "'cpu_seconds'"),
        ("cpu_seconds", float("nan"), "'cpu_seconds'"),
        ("cpu_seconds", [1.0], "'cpu_seconds'"),
    ],
)
def test_a_malformed_heartbeat_is_rejected_naming_the_field(
    field: str, value: Any, named: str
) -> None:
    view = ClusterView()
    with pytest.raises(HeartbeatError, match=named):
        view.observe(topic_of(beat()), beat(**{field: value}), 1.0)
    assert view.components(1.0) == []


def test_a_heartbeat_without_metrics_is_accepted() -> None:
    message = beat()
    del message["metrics"]
    assert parse_heartbeat(message).metrics.served == 0


def test_a_heartbeat_carries_the_cpu_seconds_of_its_process() -> None:
    heartbeat = parse_heartbeat(beat())
    assert heartbeat.cpu_seconds is not None and heartbeat.cpu_seconds > 0
    assert parse_heartbeat(beat(cpu_seconds=0)).cpu_seconds == 0.0
    assert parse_heartbeat(beat(cpu_seconds=12)).cpu_seconds == 12.0


def test_a_heartbeat_without_cpu_seconds_is_accepted_as_from_an_older_version() -> None:
    message = beat()
    del message["cpu_seconds"]
    assert parse_heartbeat(message).cpu_seconds is None
    assert parse_heartbeat(beat(cpu_seconds=None)).cpu_seconds is None


def test_a_heartbeat_missing_a_field_is_rejected() -> None:
    message = beat()
    del message["pid"]
    with pytest.raises(HeartbeatError, match="'pid'"):
        parse_heartbeat(message)


# ---- replica groups -----------------------------------------------------------------


def replica(member: int, role: str, term: int, group: str = "g1") -> dict[str, Any]:
    raft = {"group": group, "member": member, "role": role, "term": term, "leader": None,
            "commit_index": 7, "applied_index": 7}  # fmt: skip
    return beat(f"{group}-{member}", "replica", "", raft=raft)


def test_a_group_lists_its_members_and_the_leader_of_the_highest_term() -> None:
    view = ready_cluster()
    see(view, replica(1, "leader", 3), 100.0)  # an old leader, cut off, still thinks so
    see(view, replica(2, "leader", 4), 100.0)
    see(view, replica(3, "follower", 4), 100.0)
    [group] = view.replica_groups(100.0)
    assert group["id"] == "g1" and group["leader"] == "g1-2"
    assert [m["id"] for m in group["members"]] == ["g1-1", "g1-2", "g1-3"]
    assert view.missing(100.0) == []


def test_a_group_without_a_leader_makes_the_cluster_unready() -> None:
    view = ready_cluster()
    see(view, replica(1, "candidate", 5), 100.0)
    see(view, replica(2, "follower", 5), 100.0)
    see(view, replica(1, "leader", 1, group="g2"), 100.0)
    assert view.missing(100.0) == ["replica group g1 has no leader"]
    assert [g["leader"] for g in view.replica_groups(100.0)] == ["", "g2-1"]


def test_a_silent_leader_no_longer_counts() -> None:
    view = ready_cluster(130.0)
    see(view, replica(1, "leader", 2), 100.0)
    see(view, replica(2, "follower", 2), 129.0)
    assert view.missing(130.0) == ["replica group g1 has no leader"]


def cache_node_beat(durable: bool, **ring: Any) -> dict[str, Any]:
    """A cache node's heartbeat with the ring map its core really reports."""
    groups = {"g1": [1, 2, 3]} if durable else None
    node = CacheNode("cache-node-1", incarnation="i", bootstrap=True, groups=groups)
    return beat("cache-node-1", "cache-node", "", ring={**node.ring_status(), **ring})


def test_durable_cache_nodes_that_name_no_groups_still_wait_for_a_replica() -> None:
    view = ready_cluster()
    see(view, cache_node_beat(durable=True, groups=None), 100.0)
    assert view.missing(100.0) == [
        "the cache nodes keep their keys in replica groups, and no replica has been heard from yet"
    ]


def test_a_durable_ring_is_not_ready_before_any_replica_is_heard() -> None:
    view = ready_cluster()
    see(view, cache_node_beat(durable=True), 100.0)
    assert view.missing(100.0) == ["replica group g1 has no live replica"]
    see(view, replica(1, "follower", 1), 101.0)
    assert view.missing(101.0) == ["replica group g1 has no leader"]
    see(view, replica(2, "leader", 1), 101.5)
    assert view.missing(101.5) == []


def test_a_memory_only_ring_needs_no_replica() -> None:
    view = ready_cluster()
    see(view, cache_node_beat(durable=False), 100.0)
    assert view.missing(100.0) == []


def test_a_group_whose_replicas_all_fell_silent_is_not_ready() -> None:
    view = ready_cluster(100.0)
    see(view, cache_node_beat(durable=True), 100.0)
    see(view, replica(1, "leader", 2), 100.0)
    see(view, replica(1, "leader", 1, group="g2"), 100.0)
    view = _refresh_portals(view, 130.0)
    see(view, replica(1, "leader", 1, group="g2"), 130.0)
    assert view.missing(130.0) == ["replica group g1 has no live replica"]
    assert [g["id"] for g in view.replica_groups(130.0)] == ["g2"]


def test_every_group_the_cache_nodes_name_needs_a_leader() -> None:
    view = ready_cluster()
    see(view, cache_node_beat(durable=True, groups=["g1", "g2", "g10"]), 100.0)
    see(view, replica(1, "leader", 1), 100.0)
    assert view.missing(100.0) == [
        "replica group g2 has no live replica",
        "replica group g10 has no live replica",
    ]


def _refresh_portals(view: ClusterView, now: float) -> ClusterView:
    see(view, beat(), now)
    see(view, beat("admin-portal-1", "admin-portal", "127.0.0.1:50051"), now)
    see(view, cache_node_beat(durable=True), now)
    return view


# ---- who sent it: the topic, not the body -------------------------------------------


def test_a_forged_heartbeat_on_another_topic_does_not_change_the_real_portal() -> None:
    view = ready_cluster(now=100.0)
    forged = beat("admin-portal-1", "admin-portal", "10.6.6.6:50051", started=0.0, sent=1e6)
    with pytest.raises(HeartbeatError, match="topic"):
        view.observe("taskring/v1/heartbeat/admin-portal/evil", forged, 100.5)
    [real] = [c for c in view.components(100.5) if c.kind == "admin-portal"]
    assert (real.id, real.heartbeat.address, real.received) == (
        "admin-portal-1",
        "127.0.0.1:50051",
        100.0,
    )
    assert [c.id for c in view.ready_portals(100.5, "admin-portal")] == ["admin-portal-1"]


def test_a_heartbeat_whose_body_kind_differs_from_its_topic_is_dropped() -> None:
    view = ClusterView()
    message = beat("portal-x", "admin-portal", "127.0.0.1:50051")
    with pytest.raises(HeartbeatError, match=r"admin-portal .*client-portal"):
        view.observe("taskring/v1/heartbeat/client-portal/portal-x", message, 1.0)
    assert view.components(1.0) == []


@pytest.mark.parametrize(
    "topic",
    [
        "taskring/v1/heartbeat/client-portal",
        "taskring/v1/heartbeat/client-portal/",
        "taskring/v1/heartbeat/client-portal/a/b",
        "taskring/v1/heartbeat/mystery/client-portal-1",
        "taskring/v1/sync/changes",
        "",
    ],
)
def test_only_known_kinds_heartbeat_topics_are_accepted(topic: str) -> None:
    view = ClusterView()
    with pytest.raises(HeartbeatError):
        view.observe(topic, beat(), 1.0)
    assert view.components(1.0) == []


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:7001", "portal-1.example.com:7001", "[::1]:7001", "localhost:65535"],
)
def test_portal_addresses_are_plain_host_port(address: str) -> None:
    view = ClusterView()
    see(view, beat(address=address), 1.0)
    assert view.portals(1.0)[0]["address"] == address


@pytest.mark.parametrize(
    "address",
    [
        "",
        "127.0.0.1",
        "http://127.0.0.1:7001",
        "127.0.0.1:7001/path",
        "unix:/tmp/portal.sock",
        "user@127.0.0.1:7001",
        "127.0.0.1 :7001",
        "127.0.0.1:7001\n",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "[::1:7001",
    ],
)
def test_a_portal_at_anything_but_host_port_is_rejected(address: str) -> None:
    view = ClusterView()
    with pytest.raises(HeartbeatError, match="host:port"):
        see(view, beat(address=address), 1.0)
    with pytest.raises(HeartbeatError, match="host:port"):
        see(view, beat("admin-portal-1", "admin-portal", address), 1.0)
    assert view.components(1.0) == []


def test_other_kinds_may_have_no_address() -> None:
    view = ClusterView()
    see(view, beat("cache-node-1", "cache-node", ""), 1.0)
    assert [c.id for c in view.components(1.0)] == ["cache-node-1"]


# ---- ring convergence ---------------------------------------------------------------


def pos(number: int) -> str:
    return f"{number:016x}"


def ring_node(node_id: str, links: dict[int, tuple[str, int] | None], member: bool = True) -> Any:
    """A cache node's heartbeat: each of its positions with its first successor."""
    vnodes = [
        {
            "position": pos(position),
            "state": "member",
            "predecessor": None,
            "successors": [] if successor is None else [[successor[0], pos(successor[1])]],
            "fingers": [],
        }
        for position, successor in sorted(links.items())
    ]
    ring = {
        "member": member,
        "positions": [v["position"] for v in vnodes],
        "successors": vnodes[0]["successors"],
        "fingers": [],
        "keys": 0,
        "vnodes": vnodes,
        "durable": False,
        "groups": [],
    }
    return beat(node_id, "cache-node", "", ring=ring)


def converged_ring(view: ClusterView, now: float) -> None:
    """Three nodes at 0x10, 0x20, 0x30 (node a has two positions: 0x10 and 0x40)."""
    see(view, ring_node("a", {0x10: ("b", 0x20), 0x40: ("a", 0x10)}), now)
    see(view, ring_node("b", {0x20: ("c", 0x30)}), now)
    see(view, ring_node("c", {0x30: ("a", 0x40)}), now)


def test_a_ring_whose_successors_are_the_next_positions_has_converged() -> None:
    view = ready_cluster()
    converged_ring(view, 100.0)
    assert view.unconverged(100.0) == []
    assert view.missing(100.0) == []


def test_a_successor_that_skips_a_live_position_is_named() -> None:
    view = ready_cluster()
    converged_ring(view, 100.0)
    see(view, ring_node("d", {0x25: ("c", 0x30)}), 100.0)  # joined; b does not know yet
    assert view.missing(100.0) == [
        f"ring not converged: b at {pos(0x20)} has successor c at {pos(0x30)},"
        f" expected d at {pos(0x25)}"
    ]


def test_a_successor_that_is_dead_or_missing_is_named() -> None:
    view = ready_cluster(now=110.0)
    converged_ring(view, 110.0)
    see(view, ring_node("b", {0x20: ("c", 0x30)}), 100.0)  # b fell silent; a still points at it
    see(view, ring_node("c", {0x30: None}), 110.0)
    assert view.unconverged(110.0) == [
        f"ring not converged: a at {pos(0x10)} has successor b at {pos(0x20)},"
        f" expected c at {pos(0x30)}",
        f"ring not converged: c at {pos(0x30)} has no successor, expected a at {pos(0x40)}",
    ]


def test_nodes_not_yet_members_do_not_count() -> None:
    view = ready_cluster()
    converged_ring(view, 100.0)
    see(view, ring_node("d", {0x25: None}, member=False), 100.0)
    assert view.unconverged(100.0) == []


def test_a_lone_node_is_its_own_successor() -> None:
    view = ClusterView()
    see(view, ring_node("a", {0x10: ("a", 0x10)}), 1.0)
    assert view.unconverged(1.0) == []
    see(view, ring_node("a", {0x10: ("a", 0x10), 0x90: ("a", 0x90)}), 1.0)
    assert view.unconverged(1.0) == [
        f"ring not converged: a at {pos(0x10)} has successor a at {pos(0x10)},"
        f" expected a at {pos(0x90)}",
        f"ring not converged: a at {pos(0x90)} has successor a at {pos(0x90)},"
        f" expected a at {pos(0x10)}",
    ]


def test_a_long_list_of_unconverged_positions_is_cut_short() -> None:
    view = ClusterView()
    see(view, ring_node("a", {n: None for n in range(1, 21)}), 1.0)
    reasons = view.unconverged(1.0)
    assert len(reasons) == MAX_RING_REASONS + 1
    assert reasons[-1] == f"ring not converged: {20 - MAX_RING_REASONS} more positions"


def test_a_real_cache_nodes_ring_map_is_understood() -> None:
    """A bootstrapped node's eight positions, as its core reports them, form a ring."""
    node = CacheNode("cache-node-1", incarnation="i", bootstrap=True)
    node.tick(10.0)
    ring = node.ring_status()
    assert ring["member"] is True and len(ring["vnodes"]) == 8
    view = ClusterView()
    see(view, beat("cache-node-1", "cache-node", "", ring=ring), 1.0)
    assert view.unconverged(1.0) == []
    # Point the first position past the second: now it is named.
    broken = copy.deepcopy(ring)
    broken["vnodes"][0]["successors"] = broken["vnodes"][2]["successors"]
    see(view, beat("cache-node-1", "cache-node", "", ring=broken), 1.0)
    [reason] = view.unconverged(1.0)
    first, second = ring["positions"][:2]
    assert reason.startswith(f"ring not converged: cache-node-1 at {first} has successor")
    assert reason.endswith(f"expected cache-node-1 at {second}")


# ---- refused subscriptions -------------------------------------------------------------

REPLY = "taskring/ring/reply/client-portal-1"


def test_a_portal_the_broker_refused_a_subscription_is_not_ready_and_says_why() -> None:
    view = ClusterView()
    see(view, beat(refused=[REPLY]), 100.0)
    see(view, beat("admin-portal-1", "admin-portal", "127.0.0.1:50051"), 100.0)
    assert view.missing(100.0) == [
        f"client-portal-1 is connected but the broker refused its subscription to {REPLY}"
    ]
    assert view.ready_portals(100.0, "client-portal") == []
    (portal,) = [c for c in view.alive(100.0) if c.id == "client-portal-1"]
    assert not portal.ready(100.0)
    summary = portal.summary(100.0)
    assert summary["ready"] is False
    assert summary["problem"] == f"connected but the broker refused its subscription to {REPLY}"


def test_a_refused_component_is_named_even_when_another_of_its_kind_is_ready() -> None:
    view = ready_cluster()
    see(view, beat("client-portal-2", "client-portal", "127.0.0.1:7002", refused=["a", "b"]), 100)
    see(view, beat("cache-node-1", "cache-node", "", refused=["ring/host/x"]), 100.0)
    assert view.missing(100.0) == [
        "cache-node-1 is connected but the broker refused its subscription to ring/host/x",
        "client-portal-2 is connected but the broker refused its subscription to a, b",
    ]  # by kind, then id
    assert [c.id for c in view.ready_portals(100.0, "client-portal")] == ["client-portal-1"]


def test_heartbeats_with_and_without_the_refused_field_are_accepted() -> None:
    view = ClusterView()
    with_none = beat()
    assert with_none["refused"] == []
    assert see(view, with_none, 1.0).heartbeat.refused == ()
    older = beat()
    del older["refused"]
    assert see(view, older, 1.0).heartbeat.refused == ()
    assert see(view, beat(refused=None), 1.0).heartbeat.usable
    assert see(view, beat(refused=["x/#"]), 1.0).heartbeat.refused == ("x/#",)


@pytest.mark.parametrize("refused", ["x/#", [1], ["ok", None], {"x": 1}, ["f"] * 257])
def test_a_malformed_refused_field_is_rejected(refused: Any) -> None:
    with pytest.raises(HeartbeatError, match="refused"):
        see(ClusterView(), beat(refused=refused), 1.0)


def test_the_heartbeat_lists_the_filters_its_bus_says_were_refused() -> None:
    message = heartbeat_message("c", "client-portal", "h:1", 0.0, None, None, {"b", "a"})
    assert message["refused"] == ["a", "b"] and message["ready"] is True
