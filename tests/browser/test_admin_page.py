"""The admin page in a real Chromium: sign-in, create, copy, edit, rotate, delete, search, pages.

Then the newcomer's journey of the issue: create a client on the admin page,
sign in as that client in another tab with what was copied, manage tasks,
and watch the request's route on the cluster page.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from playwright.sync_api import Page, expect

from backend.admin_pb import admin_pb2
from tests.browser.conftest import (
    PHONE,
    Deployment,
    Pages,
    fits_width,
    portal_line,
    screenshot,
)
from tests.e2e.stack import ADMIN_TOKEN

CLIPBOARD: dict[str, Any] = {"permissions": ["clipboard-read", "clipboard-write"]}


def admin_sign_in(page: Page) -> None:
    page.fill("#admin-token", ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Clients")).to_be_visible()


def rows(page: Page) -> list[str]:
    return page.locator("table.clients-table tbody .client-name").all_inner_texts()


def create_in_dialog(page: Page, name: str, data: str) -> tuple[str, str]:
    page.get_by_role("button", name="New client").first.click()
    page.fill("#new-client-name", name)
    page.fill("#new-client-data", data)
    page.get_by_role("button", name="Create client").click()
    secret = page.get_by_test_id("secret")
    expect(secret).to_contain_text("Client created")
    return (
        secret.get_by_test_id("secret-cid").inner_text(),
        secret.get_by_test_id("secret-token").inner_text(),
    )


def clipboard(page: Page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


def token_works(deployment: Deployment, cid: str, token: str) -> bool:
    reply = portal_line(
        deployment.stack.client_ports[0], {"op": "auth", "cid": cid, "token": token}
    )
    return reply[0]["ok"]


def test_every_admin_operation(own: Deployment, pages: Pages) -> None:
    page = pages.open(own.url + "/admin", **CLIPBOARD)
    screenshot(page, "admin-sign-in")
    page.fill("#admin-token", "not-the-token")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("admin-signin-error")).to_contain_text("not accepted")
    admin_sign_in(page)
    expect(page.get_by_test_id("empty-clients")).to_contain_text("No clients yet")

    # Create: the CID and token are shown once, each with a copy button.
    cid, token = create_in_dialog(page, "Alice Example", "first client")
    assert len(cid) == 16 and len(token) >= 22
    screenshot(page, "admin-created")
    page.get_by_role("button", name="Copy the CID").click()
    expect(page.get_by_role("button", name="Copy the CID")).to_have_text("Copied")
    assert clipboard(page) == cid
    page.get_by_role("button", name="Copy the token").click()
    assert clipboard(page) == token
    page.get_by_role("button", name="Done").click()
    expect(page.locator("table.clients-table tbody tr")).to_have_count(1)
    assert token_works(own, cid, token)

    # The name is unique, whatever its case and outer spaces.
    page.get_by_role("button", name="New client").first.click()
    page.fill("#new-client-name", "  alice EXAMPLE ")
    page.get_by_role("button", name="Create client").click()
    expect(page.locator("#new-client-name-error")).to_contain_text("already exists")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)

    # Edit data.
    page.get_by_role("button", name="Edit data of Alice Example").click()
    page.fill("#edit-client-data", "changed data")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("tr", has_text="Alice Example")).to_contain_text("changed data")

    # Rotate: asks first, shows the new token once, and the old one stops working.
    page.get_by_role("button", name="Rotate token of Alice Example").click()
    page.get_by_role("dialog").get_by_role("button", name="Rotate token").click()
    new_token = page.get_by_test_id("secret-token").inner_text()
    assert new_token != token
    page.get_by_role("button", name="Done").click()
    assert not token_works(own, cid, token) and token_works(own, cid, new_token)

    # Paging and search over more clients than one page holds.
    for number in range(11):
        own.create_client(f"Client {number:02}", f"number {number}")
    page.get_by_role("button", name="Reload the list").click()
    page.select_option(".page-size select", "10")
    expect(page.locator("table.clients-table tbody tr")).to_have_count(10)
    first_page = rows(page)
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("table.clients-table tbody tr")).to_have_count(2)
    assert not set(rows(page)) & set(first_page)
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(page.locator("table.clients-table tbody tr")).to_have_count(10)
    assert rows(page) == first_page

    names = page.locator("table.clients-table tbody .client-name")
    page.fill("#client-search", "client 07")
    expect(names).to_have_text(["Client 07"])
    expect(page.get_by_test_id("search-status")).to_contain_text("1 match")
    page.fill("#client-search", cid)
    expect(names).to_have_text(["Alice Example"])
    page.fill("#client-search", "nobody by this name")
    expect(page.get_by_text("No client matches")).to_be_visible()
    page.fill("#client-search", "")
    expect(page.locator("table.clients-table tbody tr")).to_have_count(10)
    screenshot(page, "admin-clients")

    phone = pages.open(own.url + "/admin", viewport=PHONE)
    admin_sign_in(phone)
    expect(phone.locator("table.clients-table tbody tr").first).to_be_visible()
    assert fits_width(phone)
    screenshot(phone, "admin-clients-phone")

    # Delete asks first; cancel keeps the client.
    page.fill("#client-search", "alice")
    page.get_by_role("button", name="Delete Alice Example").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(page.locator("tr", has_text="Alice Example")).to_have_count(1)
    page.get_by_role("button", name="Delete Alice Example").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete client").click()
    expect(page.locator("tr", has_text="Alice Example")).to_have_count(0)
    with pytest.raises(grpc.RpcError) as missing:
        own.admin().GetClient(
            admin_pb2.GetClientRequest(cid=cid),
            metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")],
            timeout=10,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert not token_works(own, cid, new_token)


def test_newcomer_journey(shared: Deployment, pages: Pages) -> None:
    admin = pages.open(shared.url + "/admin", **CLIPBOARD)
    admin_sign_in(admin)
    cid, _ = create_in_dialog(admin, "Newcomer", "met at the front desk")
    admin.get_by_role("button", name="Copy the token").click()
    token = clipboard(admin)
    admin.get_by_role("button", name="Done").click()

    # Another tab of the same browser: the client page, then the cluster page.
    client = admin.context.new_page()
    client.goto(shared.url + "/")
    client.fill("#cid", cid)
    client.fill("#token", token)
    client.keyboard.press("Enter")
    expect(client.get_by_test_id("connection")).to_contain_text("Live")
    client.fill("#new-title", "learn taskring")
    client.keyboard.press("Enter")
    expect(client.locator("li.task")).to_have_count(1)

    client.get_by_role("navigation", name="Pages").get_by_role("link", name="Cluster").click()
    expect(client).to_have_url(shared.url + "/cluster")
    trace = client.get_by_test_id("trace")
    expect(trace).to_contain_text("insert_task")
    expect(trace).to_contain_text("client-portal-")
    expect(client.get_by_test_id("empty-ring")).to_contain_text("local storage mode")
    client.get_by_role("navigation", name="Pages").get_by_role("link", name="Tasks").click()
    expect(client.locator("li.task")).to_have_count(1)  # still signed in, still live
