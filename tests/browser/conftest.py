"""Fixtures for the browser tests: a real deployment and Debian's Chromium under Playwright.

The browser is /usr/bin/chromium (Debian's package), driven by Playwright's
sync API; Playwright never downloads a browser of its own. Every page a test
opens is watched: a console error or an uncaught exception fails the test.
Screenshots go to test-artifacts/ at the repository root, which CI keeps.

Playwright's sync API runs its own event loop, which counts as running in this
thread while it is open; the browser is therefore opened per module and closed
before other modules run, so these tests share one pytest run with the async
ones in any order. `pytest tests/browser` runs these alone. They need
the built UI (`make frontend`) and Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from backend.admin_pb import admin_pb2, admin_pb2_grpc
from tests.conftest import REPO, Processes, free_port, port_open
from tests.e2e.stack import ADMIN_TOKEN, Stack, start_stack
from tests.support.processes import LoggedProcess
from tests.support.waiting import wait_until

CHROMIUM = os.environ.get("TASKRING_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
DIST = REPO / "frontend" / "dist" / "index.html"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}

expect.set_options(timeout=10_000)


# ---- the deployment -----------------------------------------------------------------------


@dataclass
class Deployment:
    """Mosquitto, two client portals, one admin portal and the web process, all real."""

    stack: Stack
    processes: Processes
    port: int
    names: dict[str, LoggedProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.stack.admin_port}")
        return admin_pb2_grpc.AdminServiceStub(channel)

    def create_client(self, name: str, data: str = "") -> admin_pb2.Client:
        request = admin_pb2.CreateClientRequest(name=name, data=data)
        return self.admin().CreateClient(request, metadata=_admin_metadata(), timeout=10)

    def rotate_token(self, cid: str) -> admin_pb2.Client:
        request = admin_pb2.RotateTokenRequest(cid=cid)
        return self.admin().RotateToken(request, metadata=_admin_metadata(), timeout=10)

    def delete_client(self, cid: str) -> None:
        request = admin_pb2.DeleteClientRequest(cid=cid)
        self.admin().DeleteClient(request, metadata=_admin_metadata(), timeout=10)

    def portal_ids(self) -> set[str]:
        cluster = httpx.get(self.url + "/api/cluster", timeout=5).json()
        return {p["id"] for p in cluster["portals"]}

    def kill(self, name: str) -> None:
        """kill -9 one component by the name it was started under."""
        process = self.names[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)


def _admin_metadata() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {ADMIN_TOKEN}")]


def deploy(processes: Processes, tmp_path: Path, storage: str = "local") -> Deployment:
    if not DIST.exists():
        pytest.fail(f"the browser UI is not built ({DIST} is missing): run `make frontend`")
    stack = start_stack(processes, tmp_path, storage=storage)
    port = free_port()
    portals = ",".join(f"127.0.0.1:{p}" for p in (*stack.client_ports, stack.admin_port))
    env = {**stack.env, "TASKRING_ALLOW_PORTALS": portals}
    processes.taskring("web", "--listen", f"127.0.0.1:{port}", name="web", env=env)
    wait_until(lambda: port_open(port), f"the web process on port {port}", timeout=20)
    names = {Path(p.log_path).stem: p for p in processes.started}
    deployment = Deployment(stack, processes, port, names)
    wanted = {"client-portal-1", "client-portal-2", "admin-portal-1"}
    wait_until(lambda: wanted <= deployment.portal_ids(), "the web process to hear all portals")
    return deployment


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment for the tests that kill nothing."""
    processes = Processes(tmp_path_factory.mktemp("browser"))
    try:
        yield deploy(processes, processes.log_dir)
    finally:
        processes.stop_all()


@pytest.fixture
def own(processes: Processes, tmp_path: Path) -> Deployment:
    """A deployment of this test's own, for tests that kill components."""
    return deploy(processes, tmp_path)


# ---- the browser ------------------------------------------------------------------------


# Per module, not per session: while Playwright's sync API is open, its event loop counts
# as running in this thread, and the async tests collected after these could not run.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class ConsoleWatch:
    """Every console error and uncaught exception of the pages a test opened."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.allowed: list[Callable[[str], bool]] = []

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def allow(self, predicate: Callable[[str], bool]) -> None:
        """Expected noise, e.g. the browser's own log line for a socket a test killed."""
        self.allowed.append(predicate)

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(allow(p) for allow in self.allowed)]


@dataclass
class Pages:
    """Opens pages in fresh browser contexts (one per person), watched for console errors."""

    browser: Browser
    watch: ConsoleWatch
    contexts: list[BrowserContext] = field(default_factory=list)

    def open(self, url: str, viewport: ViewportSize | None = None, **options: Any) -> Page:
        context = self.browser.new_context(viewport=viewport or DESKTOP, **options)
        self.contexts.append(context)
        page = context.new_page()
        self.watch.attach(page)
        page.goto(url)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def console() -> ConsoleWatch:
    return ConsoleWatch()


@pytest.fixture
def pages(browser: Browser, console: ConsoleWatch) -> Iterator[Pages]:
    opened = Pages(browser, console)
    yield opened
    opened.close()
    assert console.unexpected() == [], "the pages logged errors"


def screenshot(page: Page, name: str) -> Path:
    """Keep a full-page screenshot as a CI artefact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def fits_width(page: Page) -> bool:
    """No horizontal scrolling: the layout fits the viewport."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def portal_line(port: int, *requests: dict[str, Any]) -> list[dict[str, Any]]:
    """Send requests straight to a client portal over TCP, as the CLI does; the replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        reader = sock.makefile("rb")
        return [json.loads(reader.readline()) for _ in requests]
