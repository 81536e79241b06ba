"""The cluster page in a real Chromium: the ring drawing, replica groups, routes, and crashes.

Until the ring storage lands, the real /api/cluster lists portals only; the
ring drawing is checked against a ring described by a stand-in /api/cluster
(served by the browser's request routing), so the page is ready for it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import PHONE, Deployment, Pages, fits_width, screenshot


def ring(node_ids: list[str]) -> dict[str, Any]:
    """A four-node Chord ring as /api/cluster would describe it, fingers and all."""
    positions = {
        "cache-node-1": ["1000000000000000", "9000000000000000"],
        "cache-node-2": ["4000000000000000", "c800000000000000"],
        "cache-node-3": ["7000000000000000"],
        "cache-node-4": ["b000000000000000", "e000000000000000"],
    }
    live = {n: positions[n] for n in node_ids}
    points = sorted((p, n) for n, ps in live.items() for p in ps)

    def owner(position: int) -> str:
        text = f"{position % 2**64:016x}"
        return next((n for p, n in points if p >= text), points[0][1])

    nodes = []
    for number, node in enumerate(node_ids):
        first = int(live[node][0], 16)
        fingers = [
            {"start": f"{(first + 2**k) % 2**64:016x}", "node": owner(first + 2**k)}
            for k in range(56, 64)
        ]
        nodes.append(
            {
                "id": node,
                "positions": live[node],
                "successors": [owner(first + 1)],
                "fingers": fingers,
                "keys": 100 * (number + 1),
            }
        )
    members = [
        {"id": "replica-1", "role": "leader", "commit_index": 120},
        {"id": "replica-2", "role": "follower", "commit_index": 120},
        {"id": "replica-3", "role": "follower", "commit_index": 118},
    ]
    return {
        "cache_nodes": nodes,
        "replica_groups": [{"id": "group-1", "members": members, "leader": "replica-1"}],
        "portals": [{"id": "client-portal-1", "kind": "client-portal", "address": "127.0.0.1:1"}],
    }


def serve_cluster(page: Page, body: dict[str, Any]) -> dict[str, Any]:
    """Answer the page's /api/cluster polls with `body` (change it in place to change them)."""
    current = {"body": body}

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(current["body"]))

    page.route("**/api/cluster", answer)
    return current


def test_the_ring_is_drawn_and_follows_the_cluster(shared: Deployment, pages: Pages) -> None:
    page = pages.open(shared.url + "/")
    all_four = ["cache-node-1", "cache-node-2", "cache-node-3", "cache-node-4"]
    served = serve_cluster(page, ring(all_four))
    trace = {
        "op": "list_tasks", "ok": True, "at": int(time.time() * 1000), "cid": "0" * 16,
        "route": ["cache-node-1", "cache-node-3", "cache-node-4"], "owner": "cache-node-4",
        "group": "group-1",
    }  # fmt: skip
    page.evaluate("t => localStorage.setItem('taskring.last-trace', JSON.stringify(t))", trace)
    page.goto(shared.url + "/cluster")

    nodes = page.locator("svg.ring g.node")
    expect(nodes).to_have_count(4)
    expect(page.locator("svg.ring circle.vnode")).to_have_count(3)  # the second positions
    expect(page.get_by_test_id("node-details")).to_contain_text("cache-node-1")
    # Fingers of the selected node, one arrow per distinct target other than itself.
    expect(page.locator("svg.ring path.finger")).not_to_have_count(0)
    expect(page.locator("svg.ring path.route")).to_have_count(1)
    expect(page.get_by_test_id("trace")).to_contain_text("cache-node-4")
    expect(page.get_by_test_id("replica-groups")).to_contain_text("leader replica-1")
    expect(page.locator("table", has_text="cache-node-3")).to_contain_text("300")

    # Selecting another node with the keyboard shows its fingers.
    page.locator("svg.ring g.node[data-node='cache-node-3']").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("node-details")).to_contain_text("cache-node-3")
    expect(page.get_by_test_id("node-details")).to_contain_text("Keys300")
    screenshot(page, "cluster-ring")

    # A node dies and a new leader is elected: the drawing and the log follow within seconds.
    body = ring(["cache-node-1", "cache-node-2", "cache-node-3"])
    body["replica_groups"][0]["leader"] = "replica-2"
    served["body"] = body
    expect(nodes).to_have_count(3, timeout=5000)
    log = page.get_by_test_id("change-log")
    expect(log).to_contain_text("cache node cache-node-4 left")
    expect(log).to_contain_text("group group-1: replica-2 is the leader (was replica-1)")

    phone = pages.open(shared.url + "/")
    phone.set_viewport_size(PHONE)
    serve_cluster(phone, ring(all_four))
    phone.goto(shared.url + "/cluster")
    expect(phone.locator("svg.ring g.node")).to_have_count(4)
    assert fits_width(phone)
    screenshot(phone, "cluster-ring-phone")


def test_local_mode_and_a_portal_killed_with_kill_9(own: Deployment, pages: Pages) -> None:
    page = pages.open(own.url + "/cluster")
    expect(page.get_by_test_id("empty-ring")).to_contain_text(
        "No cache nodes: this system runs in local storage mode"
    )
    portals = page.get_by_test_id("portals")
    for portal in ("client-portal-1", "client-portal-2", "admin-portal-1"):
        expect(portals).to_contain_text(portal)
    expect(page.get_by_test_id("cluster-status")).to_contain_text("Updated")
    screenshot(page, "cluster-local")

    own.kill("client-portal-2")
    killed = time.monotonic()
    expect(portals.locator("[data-portal='client-portal-2']")).to_have_count(0, timeout=10_000)
    assert time.monotonic() - killed < 10
    expect(page.get_by_test_id("change-log")).to_contain_text("portal client-portal-2 left")
    expect(portals).to_contain_text("client-portal-1")
    screenshot(page, "cluster-after-kill")
