"""The web application in one process: readiness decisions, probes, metrics rendering, errors.

The app runs over a MemoryBus with probes replaced by functions, so each
readiness rule can be driven exactly; tests/e2e/test_web.py runs the real
process against real portals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.adapters.bus.memory import MemoryBus, MemoryHub
from backend.adapters.heartbeats import heartbeat_message
from backend.adapters.settings import ConfigError
from backend.core.cluster_view import ADMIN_PORTAL, CLIENT_PORTAL
from backend.core.metrics import RequestMetrics
from backend.core.ring.cache_core import CacheNode
from web.security import PortalAllowList
from web.server import WebContext, create_app

EXPLODES = "127.0.0.99:9"  # the stand-in probe raises for this address
ALLOWED = f"127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:50051,127.0.0.1:50052,{EXPLODES}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probes:
    """Stand-in probes: every address answers unless listed in `silent`."""

    def __init__(self) -> None:
        self.silent: set[str] = set()
        self.asked: list[str] = []

    async def __call__(self, address: str) -> str | None:
        self.asked.append(address)
        if address == EXPLODES:
            raise RuntimeError("boom")
        return f"cannot connect to {address}" if address in self.silent else None


@pytest.fixture
async def bus() -> MemoryBus:
    bus = MemoryHub().attach()
    await bus.connect()
    return bus


@pytest.fixture
def probes() -> Probes:
    return Probes()


@pytest.fixture
def context(bus: MemoryBus, probes: Probes) -> WebContext:
    return WebContext(
        bus=bus,
        broker="mqtt://127.0.0.1:1883",
        address="127.0.0.1:8000",
        clock=Clock(),
        probes={CLIENT_PORTAL: probes, ADMIN_PORTAL: probes},
        allowed=PortalAllowList.parse(ALLOWED),
    )


@pytest.fixture
async def http(context: WebContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        yield client


async def heartbeat(
    context: WebContext,
    component_id: str,
    kind: str,
    address: str,
    problem: str | None = None,
    counted: RequestMetrics | None = None,
) -> None:
    message = heartbeat_message(component_id, kind, address, 0.0, problem, counted)
    await context.on_heartbeat(f"taskring/v1/heartbeat/{kind}/{component_id}", message)


async def both_portals(context: WebContext) -> None:
    await heartbeat(context, "client-portal-1", CLIENT_PORTAL, "127.0.0.1:7001")
    await heartbeat(context, "admin-portal-1", ADMIN_PORTAL, "127.0.0.1:50051")


async def readyz(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await http.get("/readyz")
    return response.status_code, response.json()


async def test_ready_when_both_kinds_are_up_and_answer(
    http: httpx.AsyncClient, context: WebContext, probes: Probes
) -> None:
    await both_portals(context)
    code, body = await readyz(http)
    assert code == 200
    assert body == {
        "status": "ready",
        "bus": {"connected": True, "broker": "mqtt://127.0.0.1:1883"},
        "portals": {CLIENT_PORTAL: "client-portal-1", ADMIN_PORTAL: "admin-portal-1"},
    }
    assert sorted(probes.asked) == ["127.0.0.1:50051", "127.0.0.1:7001"]


async def test_a_portal_that_does_not_answer_is_named_and_the_next_one_tried(
    http: httpx.AsyncClient, context: WebContext, probes: Probes
) -> None:
    await both_portals(context)
    await heartbeat(context, "admin-portal-2", ADMIN_PORTAL, "127.0.0.1:50052")
    probes.silent = {"127.0.0.1:7001", "127.0.0.1:50051"}
    code, body = await readyz(http)
    assert code == 503
    assert body["missing"] == ["client-portal-1: cannot connect to 127.0.0.1:7001"]
    assert body["portals"] == {ADMIN_PORTAL: "admin-portal-2"}


async def test_a_probe_that_raises_is_reported_not_raised(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    await both_portals(context)
    await heartbeat(context, "client-portal-1", CLIENT_PORTAL, EXPLODES)
    code, body = await readyz(http)
    assert code == 503
    assert body["missing"] == ["client-portal-1: the probe failed: boom"]


async def test_the_broker_being_down_comes_first(
    http: httpx.AsyncClient, context: WebContext, bus: MemoryBus
) -> None:
    await both_portals(context)
    bus.disconnect()
    code, body = await readyz(http)
    assert code == 503
    assert body["bus"]["connected"] is False
    assert body["missing"] == ["not connected to the MQTT broker at mqtt://127.0.0.1:1883"]


async def test_portals_that_fall_silent_stop_counting(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    await both_portals(context)
    assert isinstance(context.clock, Clock)
    context.clock.now += 3.5
    code, body = await readyz(http)
    assert code == 503
    assert body["missing"] == [
        "no client portal is up (last heard from client-portal-1 3.5s ago)",
        "no admin portal is up (last heard from admin-portal-1 3.5s ago)",
    ]
    assert (await http.get("/api/cluster")).json()["portals"] == []


async def test_components_are_a_json_list_with_the_contract_fields(
    http: httpx.AsyncClient,
) -> None:
    components = (await http.get("/api/components")).json()
    assert isinstance(components, list)
    [web] = components
    assert {"id", "kind", "pid", "uptime", "requests"} <= set(web)
    assert (web["id"], web["kind"]) == ("web-1", "web")
    assert isinstance(web["uptime"], float | int) and isinstance(web["requests"], int)


async def test_a_malformed_heartbeat_is_ignored(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    await context.on_heartbeat("taskring/v1/heartbeat/x/y", {"id": "y", "kind": "x"})
    components = (await http.get("/api/components")).json()
    assert [c["id"] for c in components] == ["web-1"]


async def test_metrics_render_heartbeat_counts_and_cumulative_histograms(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    counted = RequestMetrics()
    counted.observe("insert_task", "ok", 0.002)
    counted.observe("insert_task", "exists", 0.02)
    await heartbeat(context, "client-portal-1", CLIENT_PORTAL, "127.0.0.1:7001", counted=counted)
    await http.get("/healthz")
    response = await http.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = {
        (s.labels["component"], s.labels["op"], s.labels["outcome"]): s.value
        for s in families["taskring_requests"].samples
    }
    assert requests[("client-portal-1", "insert_task", "ok")] == 1
    assert requests[("client-portal-1", "insert_task", "exists")] == 1
    assert requests[("web-1", "GET /healthz", "ok")] == 1
    buckets = {
        s.labels["le"]: s.value
        for s in families["taskring_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["component"] == "client-portal-1"
    }
    assert buckets["0.001"] == 0 and buckets["0.0025"] == 1
    assert buckets["0.025"] == 2 and buckets["+Inf"] == 2
    up = {s.labels["component"]: s.value for s in families["taskring_component_up"].samples}
    assert up == {"client-portal-1": 1.0, "web-1": 1.0}


async def test_unknown_paths_and_failures_answer_json(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert (await http.delete("/readyz")).json()["error"]["code"] == "method_not_allowed"


async def test_an_internal_failure_answers_500_json_without_a_traceback(
    context: WebContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(now: float) -> list[dict[str, str]]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(context.view, "portals", broken)
    transport = httpx.ASGITransport(app=create_app(context), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        response = await client.get("/api/cluster")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert "secret" not in response.text and "Traceback" not in response.text


async def test_a_durable_ring_is_unready_until_its_group_has_a_leader(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    """After a restart the portals and cache nodes are up long before the replicas have
    restored their snapshots; /readyz must wait for the replicas too."""
    await both_portals(context)
    node = CacheNode("cache-node-1", incarnation="i", bootstrap=True, groups={"g1": [1, 2, 3]})
    cache_beat = heartbeat_message("cache-node-1", "cache-node", "", 0.0, None, None)
    cache_beat["ring"] = node.ring_status()
    await context.on_heartbeat("taskring/v1/heartbeat/cache-node/cache-node-1", cache_beat)
    code, body = await readyz(http)
    assert code == 503
    assert body["missing"] == ["replica group g1 has no live replica"]
    replica_beat = heartbeat_message("replica-g1-1", "replica", "", 0.0, None, None)
    replica_beat["raft"] = {"group": "g1", "member": 1, "role": "leader", "term": 1}
    await context.on_heartbeat("taskring/v1/heartbeat/replica/replica-g1-1", replica_beat)
    code, body = await readyz(http)
    assert code == 200, body


# ---- heartbeats are known by their topic; bridges use allowed portals only ----------------


async def test_a_forged_heartbeat_does_not_move_a_real_portal(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    """Any broker login could announce "admin-portal-1 is over here": the topic says who
    published, so a body naming another component is dropped."""
    await both_portals(context)
    forged = heartbeat_message("admin-portal-1", ADMIN_PORTAL, "10.6.6.6:50051", -1e6, None, None)
    await context.on_heartbeat("taskring/v1/heartbeat/admin-portal/evil", forged)
    portals = (await http.get("/api/cluster")).json()["portals"]
    assert portals == [
        {"id": "admin-portal-1", "kind": ADMIN_PORTAL, "address": "127.0.0.1:50051"},
        {"id": "client-portal-1", "kind": CLIENT_PORTAL, "address": "127.0.0.1:7001"},
    ]


async def test_a_heartbeat_whose_kind_differs_from_its_topic_is_dropped(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    claimed = heartbeat_message("cache-node-9", ADMIN_PORTAL, "127.0.0.1:50051", 0.0, None, None)
    await context.on_heartbeat("taskring/v1/heartbeat/cache-node/cache-node-9", claimed)
    assert (await http.get("/api/cluster")).json()["portals"] == []
    components = (await http.get("/api/components")).json()
    assert [c["id"] for c in components] == ["web-1"]


async def test_readyz_probes_only_allowed_portals(
    http: httpx.AsyncClient, context: WebContext, probes: Probes
) -> None:
    await heartbeat(context, "client-portal-9", CLIENT_PORTAL, "10.6.6.6:7001")
    await heartbeat(context, "admin-portal-1", ADMIN_PORTAL, "127.0.0.1:50051")
    code, body = await readyz(http)
    assert code == 503
    assert body["missing"] == [
        "no client portal at an address in --allow-portals (TASKRING_ALLOW_PORTALS) is up"
        " (heard client-portal-9 at 10.6.6.6:7001)"
    ]
    assert probes.asked == ["127.0.0.1:50051"]
    # It is still listed: the cluster page shows what the broker says.
    ids = [p["id"] for p in (await http.get("/api/cluster")).json()["portals"]]
    assert ids == ["admin-portal-1", "client-portal-9"]
    await heartbeat(context, "client-portal-1", CLIENT_PORTAL, "127.0.0.1:7001")
    code, body = await readyz(http)
    assert code == 200 and body["portals"][CLIENT_PORTAL] == "client-portal-1"
    assert "10.6.6.6:7001" not in probes.asked


async def test_without_allowed_portals_nothing_is_probed_and_readyz_names_the_setting(
    context: WebContext, probes: Probes
) -> None:
    context.allowed = PortalAllowList.parse(None)
    await both_portals(context)
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        code, body = await readyz(client)
        grpc = await client.post(
            "/taskring.admin.v1.AdminService/ListClients",
            content=b"\x00\x00\x00\x00\x00",
            headers={"content-type": "application/grpc-web+proto", "authorization": "Bearer t"},
        )
    assert code == 503 and probes.asked == []
    assert all("--allow-portals (TASKRING_ALLOW_PORTALS) is not set" in m for m in body["missing"])
    assert b"grpc-status:14" in grpc.content
    assert b"--allow-portals (TASKRING_ALLOW_PORTALS) is not set" in grpc.content


async def test_a_star_allows_any_heard_portal(context: WebContext, probes: Probes) -> None:
    context.allowed = PortalAllowList.parse("*")
    await heartbeat(context, "client-portal-9", CLIENT_PORTAL, "10.6.6.6:7001")
    await heartbeat(context, "admin-portal-1", ADMIN_PORTAL, "127.0.0.1:50051")
    transport = httpx.ASGITransport(app=create_app(context))
    async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
        code, _ = await readyz(client)
    assert code == 200 and sorted(probes.asked) == ["10.6.6.6:7001", "127.0.0.1:50051"]


@pytest.mark.parametrize(
    ("setting", "allowed", "refused"),
    [
        ("127.0.0.1:7001, [::1]:7002", ["127.0.0.1:7001", "[::1]:7002"], ["127.0.0.1:7002"]),
        ("*", ["10.0.0.1:1"], []),
        ("", [], ["127.0.0.1:7001"]),
    ],
)
def test_the_allow_list_setting(setting: str, allowed: list[str], refused: list[str]) -> None:
    allow = PortalAllowList.parse(setting)
    assert all(allow.allows(a) for a in allowed)
    assert not any(allow.allows(a) for a in refused)


@pytest.mark.parametrize("bad", ["http://127.0.0.1:7001", "127.0.0.1", "a b:1", "h:1/x"])
def test_the_allow_list_refuses_anything_but_host_port(bad: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        PortalAllowList.parse(f"127.0.0.1:7001,{bad}")


# ---- headers ---------------------------------------------------------------------------


async def test_every_response_carries_the_security_headers(http: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/nope", "/", "/metrics"):
        headers = (await http.get(path, headers={"host": "127.0.0.1:8000"})).headers
        policy = headers["content-security-policy"]
        for directive in (
            "default-src 'self'",
            "connect-src 'self' ws://127.0.0.1:8000 wss://127.0.0.1:8000",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'none'",
        ):
            assert directive in policy, (path, policy)
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"


async def test_a_strange_host_header_is_not_copied_into_the_policy(
    http: httpx.AsyncClient,
) -> None:
    headers = (await http.get("/healthz", headers={"host": "x; script-src *"})).headers
    policy = headers["content-security-policy"]
    assert "script-src *" not in policy and "connect-src 'self';" in policy


async def test_readyz_names_a_component_the_broker_refused_a_subscription(
    http: httpx.AsyncClient, context: WebContext, bus: MemoryBus
) -> None:
    await both_portals(context)
    reply = "taskring/ring/reply/client-portal-1"
    message = heartbeat_message(
        "client-portal-1", CLIENT_PORTAL, "127.0.0.1:7001", 0.0, None, None, [reply]
    )
    await context.on_heartbeat(f"taskring/v1/heartbeat/{CLIENT_PORTAL}/client-portal-1", message)
    code, body = await readyz(http)
    assert code == 503
    assert body["missing"] == [
        f"client-portal-1 is connected but the broker refused its subscription to {reply}"
    ]
    bus.refused.add("taskring/v1/heartbeat/#")
    code, body = await readyz(http)
    assert body["missing"][0] == (
        "web-1 is connected but the broker refused its subscription to taskring/v1/heartbeat/#"
    )


async def test_faults_from_taskring_chaos_show_in_the_cluster_until_healed(
    http: httpx.AsyncClient, context: WebContext
) -> None:
    assert (await http.get("/api/cluster")).json()["chaos"] == {"active": [], "recent": []}
    fault = {"id": "r-0", "kind": "kill", "role": "leader", "target": "g1-2", "option": "",
             "at": 1700000000.0}  # fmt: skip
    await context.on_chaos_notice("taskring/v1/chaos/events", {**fault, "state": "injected"})
    await context.on_chaos_notice("taskring/v1/chaos/events", {"state": "nonsense"})  # dropped
    active = (await http.get("/api/cluster")).json()["chaos"]["active"]
    assert [(f["kind"], f["target"]) for f in active] == [("kill", "g1-2")]
    healed = {**fault, "state": "healed", "at": 1700000002.5}
    await context.on_chaos_notice("taskring/v1/chaos/events", healed)
    chaos = (await http.get("/api/cluster")).json()["chaos"]
    assert chaos["active"] == [] and chaos["recent"][0]["healed_at"] == 1700000002.5
