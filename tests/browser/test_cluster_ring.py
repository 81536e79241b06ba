"""The cluster page in a real Chromium against a real Chord ring.

Four real cache nodes, the portals and the web process run in ring storage;
the page must draw what they report: every node with its key count, the
fingers of the node a person selects, the route of a request traced from the
client page ending at the key's owner, and a cache node killed with kill -9
gone from the drawing within seconds.

The ring keeps adjusting itself for a while after it forms, and the page
polls once a second, so each comparison between the page and /api/cluster
reads both afresh until they agree (or the deadline passes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Deployment, Pages, deploy, screenshot
from tests.conftest import Processes
from tests.support.waiting import wait_until

CACHE_NODES = [f"cache-node-{number}" for number in range(1, 5)]
CLIENTS = 6
AGREE_SECONDS = 20.0


@pytest.fixture
def ring(processes: Processes, tmp_path: Path) -> Deployment:
    """Mosquitto, four cache nodes, two client portals, an admin portal and the web process."""
    deployment = deploy(processes, tmp_path, storage="ring")
    wait_until(lambda: formed(deployment), "all four cache nodes in the ring", timeout=30)
    return deployment


def cache_nodes(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """The cache nodes /api/cluster lists, by id."""
    body = httpx.get(deployment.url + "/api/cluster", timeout=5).json()
    return {node["id"]: node for node in body["cache_nodes"]}


def formed(deployment: Deployment) -> bool:
    nodes = cache_nodes(deployment)
    return sorted(nodes) == CACHE_NODES and all(
        node["member"] and node["fingers"] for node in nodes.values()
    )


def owner_of(cid: str, nodes: dict[str, dict[str, Any]]) -> str:
    """The contract's owner: the first cache-node position at or after the CID, wrapping."""
    points = sorted((int(p, 16), node_id) for node_id, n in nodes.items() for p in n["positions"])
    key = int(cid, 16)
    return next((node_id for position, node_id in points if position >= key), points[0][1])


def agree(deployment: Deployment, what: str, check: Any) -> None:
    """Wait until `check(nodes)` holds for the page and a fresh /api/cluster read together."""

    def holds() -> bool:
        return bool(check(cache_nodes(deployment)))

    wait_until(holds, what, timeout=AGREE_SECONDS, interval=0.2)


def shown_keys(page: Page) -> dict[str, str]:
    rows = page.locator("table[aria-label='Cache nodes'] tbody tr")
    return {
        row.get_attribute("data-node") or "": row.locator(".keys").inner_text()
        for row in rows.all()
    }


def drawn_keys(page: Page) -> dict[str, str]:
    marks = page.locator("svg.ring g.node").all()
    return {
        mark.get_attribute("data-node") or "": mark.get_attribute("data-keys") or ""
        for mark in marks
    }


def shown_fingers(page: Page) -> list[str]:
    items = page.get_by_test_id("fingers").locator("li").all()
    return [item.get_attribute("data-target") or "" for item in items]


def finger_arrows_expected(node: dict[str, Any]) -> int:
    """One arrow per distinct finger position other than the node's own first position."""
    return len({f["position"] for f in node["fingers"]} - {node["positions"][0]})


def add_task_traced(page: Page, cid: str, token: str, title: str) -> None:
    """Sign in on the client page and add a task; the page traces every request it sends."""
    page.fill("#cid", cid)
    page.fill("#token", token)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("connection")).to_contain_text("Live")
    page.fill("#new-title", title)
    page.keyboard.press("Enter")
    expect(page.locator("li.task", has_text=title)).to_be_visible()
    expect(page.locator("#new-title")).to_have_value("")


def test_a_real_ring_its_fingers_a_route_and_a_node_killed(ring: Deployment, pages: Pages) -> None:
    clients = [ring.create_client(f"Ring Person {number}") for number in range(CLIENTS)]
    # Every client record is one key on the ring, held by its owner.
    wait_until(
        lambda: sum(n["keys"] for n in cache_nodes(ring).values()) == CLIENTS,
        f"the cache nodes to report {CLIENTS} keys in all",
        timeout=AGREE_SECONDS,
    )

    # Sign in and add a task on the client page; the cluster page opens in the same
    # browser, so it reads the trace the client page kept.
    client_page = pages.open(ring.url + "/")
    traced = clients[0]
    add_task_traced(client_page, traced.cid, traced.token, "water the plants")
    page = client_page.context.new_page()
    pages.watch.attach(page)
    page.goto(ring.url + "/cluster")

    # Four cache nodes, each drawn and listed with the key count it reports.
    expect(page.locator("svg.ring g.node")).to_have_count(4)
    expect(page.locator("svg.ring circle.vnode")).not_to_have_count(0)
    expect(page.get_by_test_id("empty-ring")).to_have_count(0)
    agree(
        ring,
        "the drawn and listed key counts to match /api/cluster",
        lambda nodes: (
            shown_keys(page) == drawn_keys(page) == {i: str(n["keys"]) for i, n in nodes.items()}
        ),
    )
    expect(page.get_by_test_id("ring-summary")).to_contain_text(f"4 cache nodes · {CLIENTS} keys")

    # Selecting a node shows its fingers: listed, and drawn as arrows from its first position.
    chosen = "cache-node-3"
    page.locator(f"svg.ring g.node[data-node='{chosen}']").focus()
    page.keyboard.press("Enter")
    details = page.get_by_test_id("node-details")
    expect(details.get_by_role("heading", name=chosen)).to_be_visible()
    expect(page.locator(f"svg.ring g.node[data-node='{chosen}']")).to_have_attribute(
        "aria-pressed", "true"
    )
    agree(
        ring,
        f"the fingers of {chosen} on the page to match /api/cluster",
        lambda nodes: (
            shown_fingers(page) == [f["node"] for f in nodes[chosen]["fingers"]]
            and page.locator("svg.ring path.finger").count()
            == finger_arrows_expected(nodes[chosen])
        ),
    )
    assert shown_fingers(page), "a cache node in a ring of four has fingers"

    # The route of the traced request, ending at the owner of the client's key.
    owner = owner_of(traced.cid, cache_nodes(ring))
    trace = page.get_by_test_id("trace")
    expect(trace).to_contain_text("insert_task")
    expect(page.get_by_test_id("trace-key")).to_have_text(traced.cid)
    steps = trace.locator("ol.route-steps li")
    expect(steps).not_to_have_count(0)
    expect(steps.last).to_have_attribute("data-node", owner)
    expect(steps.last).to_contain_text("owner")
    for step in steps.all():
        assert step.get_attribute("data-node") in CACHE_NODES
    # Until replica groups run, the trace names none; the page says so rather than showing "".
    group = page.evaluate("JSON.parse(localStorage.getItem('taskring.last-trace')).group")
    expect(page.get_by_test_id("trace-group")).to_contain_text(group or "none yet")
    expect(page.locator("svg.ring path.route")).to_have_count(1)
    expect(page.locator("svg.ring circle.route-owner")).to_have_attribute("data-node", owner)
    expect(page.locator("svg.ring g.route-key")).to_have_attribute("data-key", traced.cid)
    screenshot(page, "cluster-ring-live")

    # kill -9 a cache node: within 10 s the page draws three, and says which one left.
    victim = next(n for n in reversed(CACHE_NODES) if n != owner)
    ring.kill(victim)
    killed = time.monotonic()
    expect(page.locator("svg.ring g.node")).to_have_count(3, timeout=10_000)
    assert time.monotonic() - killed < 10
    expect(page.locator(f"svg.ring g.node[data-node='{victim}']")).to_have_count(0)
    expect(page.locator(f"table[aria-label='Cache nodes'] tr[data-node='{victim}']")).to_have_count(
        0
    )
    expect(page.get_by_test_id("change-log")).to_contain_text(f"cache node {victim} left")
    expect(page.get_by_test_id("ring-summary")).to_contain_text("3 cache nodes")
    screenshot(page, "cluster-ring-after-kill")
