"""The client page in a real Chromium: sign in, every task operation, live updates, errors, keys."""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from tests.browser.conftest import (
    PHONE,
    Deployment,
    Pages,
    fits_width,
    portal_line,
    screenshot,
)


def sign_in(page: Page, cid: str, token: str) -> None:
    page.fill("#cid", cid)
    page.fill("#token", token)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("connection")).to_contain_text("Live")


def titles(page: Page) -> list[str]:
    return page.locator("li.task .task-title").all_inner_texts()


def add_task(page: Page, title: str, description: str = "") -> None:
    page.fill("#new-title", title)
    page.fill("#new-description", description)
    page.get_by_role("button", name="Add task").click()
    expect(page.locator("li.task", has_text=title).first).to_be_visible()
    expect(page.locator("#new-title")).to_have_value("")  # the answer is in, not just the event


def listed_by_portal(deployment: Deployment, cid: str, token: str, portal: int = 1) -> Any:
    """The client's tasks as a portal (not the browser) sees them."""
    port = deployment.stack.client_ports[portal]
    replies = portal_line(
        port,
        {"op": "auth", "cid": cid, "token": token},
        {"op": "list_tasks", "cid": cid},
    )
    return [(t["title"], t["description"]) for t in replies[1]["tasks"]]


def test_sign_in_refuses_bad_credentials_then_signs_in(shared: Deployment, pages: Pages) -> None:
    client = shared.create_client("Signin Person")
    page = pages.open(shared.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "client-sign-in")
    page.fill("#cid", "not-a-cid")
    page.fill("#token", "whatever")
    page.keyboard.press("Enter")
    expect(page.locator("#cid-error")).to_contain_text("16 hex digits")
    page.fill("#cid", client.cid.upper())  # capitals are forgiven
    page.fill("#token", "wrong-token")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("signin-error")).to_contain_text("do not match a client")
    sign_in(page, client.cid, client.token)
    expect(page.get_by_test_id("signed-in-cid")).to_have_text(client.cid)
    expect(page.get_by_test_id("empty-tasks")).to_contain_text("No tasks yet")
    # A reload keeps the tab signed in.
    page.reload()
    expect(page.get_by_test_id("connection")).to_contain_text("Live")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_every_task_operation(shared: Deployment, pages: Pages) -> None:
    client = shared.create_client("Task Person")
    page = pages.open(shared.url + "/")
    sign_in(page, client.cid, client.token)

    add_task(page, "buy milk", "2 litres")
    page.fill("#new-title", "write report")
    page.keyboard.press("Enter")
    expect(page.locator("li.task")).to_have_count(2)
    assert titles(page) == ["buy milk", "write report"]
    expect(page.get_by_test_id("task-count")).to_contain_text("2 tasks")

    # The title is checked before sending, and taken titles are refused by the portal.
    page.fill("#new-title", "")
    page.get_by_role("button", name="Add task").click()
    expect(page.locator("#new-title-error")).to_have_text("Give the task a title.")
    page.fill("#new-title", "buy milk")
    page.get_by_role("button", name="Add task").click()
    expect(page.locator("#new-title-error")).to_contain_text("already exists")

    # Edit inline: save, and cancel.
    page.get_by_role("button", name="Edit buy milk").click()
    page.locator("li.task textarea").fill("3 litres, oat")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("li.task", has_text="buy milk")).to_contain_text("3 litres, oat")
    page.get_by_role("button", name="Edit write report").click()
    page.locator("li.task textarea").fill("never saved")
    page.keyboard.press("Escape")
    expect(page.locator("li.task textarea")).to_have_count(0)
    expect(page.locator("li.task", has_text="write report")).to_contain_text("No description")
    assert listed_by_portal(shared, client.cid, client.token) == [
        ("buy milk", "3 litres, oat"),
        ("write report", ""),
    ]

    # Filter.
    page.fill("#task-filter", "oat")
    expect(page.locator("li.task")).to_have_count(1)
    page.fill("#task-filter", "")

    # Delete, then undo.
    page.get_by_role("button", name="Delete write report").click()
    expect(page.locator("li.task")).to_have_count(1)
    page.get_by_test_id("toast").get_by_role("button", name="Undo").click()
    expect(page.locator("li.task", has_text="write report")).to_be_visible()

    screenshot(page, "client-tasks")
    phone = pages.open(shared.url + "/", viewport=PHONE)
    sign_in(phone, client.cid, client.token)
    expect(phone.locator("li.task")).to_have_count(2)
    assert fits_width(phone)
    screenshot(phone, "client-tasks-phone")

    # Delete all asks first: cancel keeps everything, confirm clears.
    page.get_by_role("button", name="Delete all").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete all tasks?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator("li.task")).to_have_count(2)
    page.get_by_role("button", name="Delete all").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete all 2 tasks").click()
    expect(page.get_by_test_id("empty-tasks")).to_be_visible()
    assert listed_by_portal(shared, client.cid, client.token) == []


def test_live_updates_across_pages_the_cli_and_the_other_portal(
    shared: Deployment, pages: Pages
) -> None:
    client = shared.create_client("Live Person")
    first = pages.open(shared.url + "/")
    second = pages.open(shared.url + "/")
    sign_in(first, client.cid, client.token)
    sign_in(second, client.cid, client.token)

    add_task(first, "from the first page", "hello")
    expect(second.locator("li.task", has_text="from the first page")).to_contain_text("hello")

    second.get_by_role("button", name="Edit from the first page").click()
    second.locator("li.task textarea").fill("edited on the second page")
    second.keyboard.press("Control+Enter")
    expect(first.locator("li.task")).to_contain_text("edited on the second page")

    # As the CLI would, straight to each portal in turn.
    for portal, title in ((0, "via portal one"), (1, "via portal two")):
        replies = portal_line(
            shared.stack.client_ports[portal],
            {"op": "auth", "cid": client.cid, "token": client.token},
            {"op": "insert_task", "cid": client.cid, "title": title, "description": ""},
        )
        assert replies[1]["ok"], replies
    for page in (first, second):
        expect(page.locator("li.task")).to_have_count(3)
    portal_line(
        shared.stack.client_ports[1],
        {"op": "auth", "cid": client.cid, "token": client.token},
        {"op": "delete_task", "cid": client.cid, "title": "via portal one"},
    )
    for page in (first, second):
        expect(page.locator("li.task", has_text="via portal one")).to_have_count(0)

    first.get_by_role("button", name="Delete all").click()
    first.get_by_role("dialog").get_by_role("button", name="Delete all 2 tasks").click()
    expect(second.get_by_test_id("empty-tasks")).to_be_visible()

    # A rotated token ends both sessions at once: the portal closes every watch of the
    # client in order with its events, and signing in again with the old token fails.
    # Deleting the client ends them at once too.
    rotated = shared.rotate_token(client.cid)
    for page in (first, second):
        expect(page.get_by_role("status").filter(has_text="no longer works")).to_be_visible()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    for page in (first, second):
        sign_in(page, client.cid, rotated.token)
    shared.delete_client(client.cid)
    for page in (first, second):
        notice = page.get_by_role("status").filter(has_text="deleted this client")
        expect(notice).to_be_visible()


def inject_errors(page: Page) -> None:
    """Between page and bridge: an insert_task titled "fail:<code>" is answered with that code."""

    def handler(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            request = json.loads(message)
            title = str(request.get("title", ""))
            if request.get("op") == "insert_task" and title.startswith("fail:"):
                code = title.removeprefix("fail:")
                error = {"code": code, "message": f"injected {code}"}
                ws.send(json.dumps({"id": request["id"], "ok": False, "error": error}))
            elif request.get("op") == "insert_task" and title == "drop the connection":
                ws.close(code=1012, reason="client portal went away; reconnect")
            else:
                server.send(message)

        ws.on_message(from_page)

    page.route_web_socket("**/ws/client", handler)


def test_every_error_code_reads_clearly(shared: Deployment, pages: Pages) -> None:
    client = shared.create_client("Error Person")
    page = pages.open(shared.url + "/")
    inject_errors(page)
    sign_in(page, client.cid, client.token)
    page.reload()  # so the injecting route is in place from the first message on
    expect(page.get_by_test_id("connection")).to_contain_text("Live")

    def fail_with(code: str) -> None:
        page.fill("#new-title", f"fail:{code}")
        page.get_by_role("button", name="Add task").click()

    expected_banner = {
        "bad_request": "The server did not accept the request. Injected bad_request.",
        "not_found": "That task does not exist (any more).",
        "too_large": "That is too large to send.",
        "unavailable": "The service is unavailable right now; nothing was changed, try again.",
        "internal": "Something went wrong on the server.",
    }
    for code, text in expected_banner.items():
        fail_with(code)
        expect(page.locator(".add-form .banner-error")).to_contain_text(text)
    fail_with("exists")
    expect(page.locator("#new-title-error")).to_contain_text("already exists")
    fail_with("timeout")
    expect(page.get_by_test_id("toast").filter(has_text="No answer in time")).to_be_visible()

    # A connection lost mid-request: the outcome is unknown, and the page reconnects.
    page.fill("#new-title", "drop the connection")
    page.get_by_role("button", name="Add task").click()
    expect(page.get_by_test_id("toast").filter(has_text="connection was lost")).to_be_visible()
    expect(page.get_by_test_id("toast").filter(has_text="Reconnected")).to_be_visible()
    expect(page.get_by_test_id("connection")).to_contain_text("Live")

    fail_with("unauthorized")
    expect(page.get_by_role("status").filter(has_text="token no longer works")).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_keyboard_alone(shared: Deployment, pages: Pages) -> None:
    client = shared.create_client("Keyboard Person")
    page = pages.open(shared.url + "/")
    keys = page.keyboard

    def focus_on(locator: Locator) -> None:
        expect(locator).to_be_focused()

    def button(name: str) -> Locator:
        return page.get_by_role("button", name=name, exact=True)

    focus_on(page.locator("#cid"))  # the sign-in form starts with the focus
    keys.type(client.cid)
    keys.press("Tab")
    focus_on(page.locator("#token"))
    keys.type(client.token)
    keys.press("Enter")
    expect(page.get_by_test_id("connection")).to_contain_text("Live")
    focus_on(page.locator("#new-title"))

    keys.type("first")
    keys.press("Tab")
    keys.type("by keyboard")
    keys.press("Control+Enter")
    expect(page.locator("li.task")).to_have_count(1)
    focus_on(page.locator("#new-title"))
    expect(page.locator("#new-title")).to_have_value("")
    keys.type("second")
    keys.press("Enter")
    expect(page.locator("li.task")).to_have_count(2)
    expect(page.locator("#new-title")).to_have_value("")

    keys.press("Shift+Tab")  # out of the text field, so shortcuts apply
    keys.press("/")
    focus_on(page.locator("#task-filter"))
    keys.press("Tab")
    focus_on(button("Delete all"))
    keys.press("Tab")
    focus_on(button("Edit first"))
    keys.press("Enter")
    focus_on(page.locator("li.task textarea"))
    keys.press("End")
    keys.type(", edited")
    keys.press("Control+Enter")
    expect(page.locator("li.task", has_text="first")).to_contain_text("by keyboard, edited")
    focus_on(button("Edit first"))
    keys.press("Tab")
    focus_on(button("Delete first"))
    keys.press("Enter")
    expect(page.locator("li.task")).to_have_count(1)
    focus_on(button("Delete second"))

    keys.press("n")
    focus_on(page.locator("#new-title"))
    keys.press("Shift+Tab")
    keys.press("/")
    keys.press("Tab")
    focus_on(button("Delete all"))
    keys.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    focus_on(page.get_by_role("dialog").get_by_role("button", name="Delete 1 task"))
    keys.press("Enter")
    expect(page.get_by_test_id("empty-tasks")).to_be_visible()
    focus_on(page.locator("#new-title"))
