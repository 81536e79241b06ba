"""`taskring web` as a real process: health, readiness, the cluster API, metrics, errors, exit.

Everything runs for real: Mosquitto, the web process, client and admin
portal processes. One test adds a pretend portal whose heartbeats claim it
is ready while nothing answers at its address, to check the active probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.heartbeats import run_heartbeat
from backend.adapters.settings import BrokerAddress
from tests.conftest import TASKRING, Processes, free_port, port_open
from tests.support.waiting import log_text, wait_until

ADMIN_TOKEN = "web-e2e-admin-token-0123456789"


# ---- processes ----------------------------------------------------------------------


class Web:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        response = self.get("/readyz")
        return response.status_code, response.json()


def start_web(processes: Processes, broker: str, allow: list[int] | None = None) -> Web:
    """`taskring web`, allowed to use the portals on the `allow` ports of 127.0.0.1."""
    port = free_port()
    env = {"TASKRING_BROKER": broker}
    if allow:
        env["TASKRING_ALLOW_PORTALS"] = ",".join(f"127.0.0.1:{p}" for p in allow)
    process = processes.taskring("web", "--listen", f"127.0.0.1:{port}", name="web", env=env)
    wait_until(lambda: port_open(port), f"the web process on port {port}", timeout=20)
    return Web(process, port)


def start_client_portal(
    processes: Processes, broker: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port()
    process = processes.taskring(
        "client-portal", "--id", "client-portal-1", "--listen", f"127.0.0.1:{port}",
        name="client-portal-1", env={"TASKRING_BROKER": broker},
    )  # fmt: skip
    wait_until(lambda: port_open(port), f"client-portal-1 on port {port}", timeout=20)
    return process, port


class BackgroundLoop:
    """An asyncio loop in a thread, for the parts of a test that must speak asyncio."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def background() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


class Pretender:
    """Heartbeats of a ready portal at an address where nothing answers."""

    def __init__(self, broker: str, kind: str, portal_id: str, port: int) -> None:
        self.broker = BrokerAddress.parse(broker)
        self.kind, self.portal_id, self.port = kind, portal_id, port
        self.stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        bus = await self.stack.enter_async_context(MqttBus(self.broker, self.portal_id))
        address = f"127.0.0.1:{self.port}"
        beating = asyncio.create_task(
            run_heartbeat(bus, self.kind, self.portal_id, address, lambda: None)
        )
        self.stack.push_async_callback(_cancel, beating)

    async def stop(self) -> None:
        await self.stack.aclose()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def pretenders(background: BackgroundLoop) -> Iterator[Any]:
    """`pretenders(broker, kind, id, port)` starts a Pretender; all stop at teardown."""
    started: list[Pretender] = []

    def start(broker: str, kind: str, portal_id: str, port: int) -> Pretender:
        pretender = Pretender(broker, kind, portal_id, port)
        started.append(pretender)
        background.run(pretender.start())
        return pretender

    yield start
    for pretender in reversed(started):
        background.run(pretender.stop())


@pytest.fixture
def admin_portal(processes: Processes, tmp_path) -> Any:
    """Start a real admin portal against a broker: `admin_portal(broker[, port]) -> port`."""

    def start(broker: str, port: int | None = None) -> int:
        port = port or free_port()
        processes.taskring(
            "admin-portal", "--id", "admin-portal-1", "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(tmp_path / "data"), name="admin-portal-1",
            env={"TASKRING_BROKER": broker, "TASKRING_ADMIN_TOKEN": ADMIN_TOKEN},
        )  # fmt: skip
        wait_until(lambda: port_open(port), f"the admin portal on port {port}", timeout=20)
        return port

    return start


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def find_sample(text: str, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, value in metric_samples(text):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


# ---- tests --------------------------------------------------------------------------


def test_readiness_follows_the_portals_and_the_api_and_metrics_describe_them(
    processes: Processes, mosquitto: str, admin_portal
) -> None:
    client_port, admin_port = free_port(), free_port()
    web = start_web(processes, mosquitto, allow=[client_port, admin_port])
    assert web.get("/healthz").status_code == 200
    assert web.get("/healthz").json() == {"status": "ok"}

    code, body = wait_until(
        lambda: (r := web.readyz())[1]["bus"]["connected"] and r, "the web process on the broker"
    )
    assert code == 503 and body["status"] == "unready"
    assert body["missing"] == ["no client portal is up", "no admin portal is up"]
    assert web.get("/api/cluster").json() == {
        "cache_nodes": [],
        "replica_groups": [],
        "portals": [],
        "chaos": {"active": [], "recent": []},
    }

    client_process, _ = start_client_portal(processes, mosquitto, client_port)
    admin_portal(mosquitto, admin_port)
    code, body = wait_until(
        lambda: (r := web.readyz())[0] == 200 and r, "/readyz to turn ready", timeout=15
    )
    assert body["status"] == "ready"
    assert body["portals"] == {"client-portal": "client-portal-1", "admin-portal": "admin-portal-1"}

    cluster = web.get("/api/cluster").json()
    assert set(cluster) == {"cache_nodes", "replica_groups", "portals", "chaos"}
    assert cluster["portals"] == [
        {"id": "admin-portal-1", "kind": "admin-portal", "address": f"127.0.0.1:{admin_port}"},
        {"id": "client-portal-1", "kind": "client-portal", "address": f"127.0.0.1:{client_port}"},
    ]

    # /readyz pinged the client portal; its next heartbeat carries the count.
    text = wait_until(
        lambda: (
            (t := web.get("/metrics").text)
            and find_sample(
                t, "taskring_requests_total", component="client-portal-1", op="ping", outcome="ok"
            )
            and t
        ),
        "the client portal's ping count in /metrics",
    )
    assert web.get("/metrics").headers["content-type"].startswith("text/plain")
    own = find_sample(
        text, "taskring_requests_total", component="web-1", kind="web", op="GET /readyz"
    )
    assert own is not None and own >= 2
    assert find_sample(text, "taskring_component_up", component="client-portal-1") == 1.0
    assert find_sample(text, "taskring_component_up", component="admin-portal-1") == 1.0
    count = find_sample(
        text, "taskring_request_duration_seconds_count", component="client-portal-1", op="ping"
    )
    inf = find_sample(
        text, "taskring_request_duration_seconds_bucket", component="client-portal-1", le="+Inf"
    )
    assert count is not None and count == inf

    client_process.send_signal(signal.SIGTERM)
    assert client_process.wait(10) == 0
    # At once the probe finds nobody answering; 3 heartbeat intervals later the portal is gone.
    code, body = web.readyz()
    assert code == 503 and any("client-portal-1" in reason for reason in body["missing"])
    wait_until(
        lambda: "no client portal is up" in web.readyz()[1]["missing"][0],
        "/readyz to say the client portal is gone",
    )
    assert [p["id"] for p in web.get("/api/cluster").json()["portals"]] == ["admin-portal-1"]

    web.process.send_signal(signal.SIGTERM)
    assert web.process.wait(10) == 0, log_text(web.process)
    assert "Traceback" not in log_text(web.process)


@pytest.mark.parametrize(
    ("silent_kind", "expected"),
    [
        ("client-portal", "cannot connect to 127.0.0.1:"),
        ("admin-portal", "gRPC health check at 127.0.0.1:"),
    ],
)
def test_readyz_names_a_ready_portal_that_does_not_answer(
    processes: Processes,
    mosquitto: str,
    admin_portal,
    pretenders,
    silent_kind: str,
    expected: str,
) -> None:
    """A heartbeat says ready, but nothing answers at its address: the active probe catches it."""
    real_port, silent_port = free_port(), free_port()
    web = start_web(processes, mosquitto, allow=[real_port, silent_port])
    if silent_kind == "client-portal":
        admin_portal(mosquitto, real_port)
    else:
        start_client_portal(processes, mosquitto, real_port)
    silent_id = f"{silent_kind}-9"
    pretenders(mosquitto, silent_kind, silent_id, silent_port)

    def named() -> dict[str, Any] | None:
        body = web.readyz()[1]
        return body if silent_id in " ".join(body.get("missing", [])) else None

    body = wait_until(named, "/readyz to name the silent portal")
    assert body["status"] == "unready"
    (reason,) = body["missing"]
    assert reason.startswith(f"{silent_id}: {expected}")


def test_readyz_says_so_when_the_broker_is_down(processes: Processes) -> None:
    web = start_web(processes, f"mqtt://127.0.0.1:{free_port()}")
    assert web.get("/healthz").status_code == 200
    code, body = web.readyz()
    assert code == 503
    assert body["bus"]["connected"] is False
    assert body["missing"][0].startswith("not connected to the MQTT broker at mqtt://127.0.0.1:")
    web.process.send_signal(signal.SIGINT)
    assert web.process.wait(10) == 0


def test_errors_are_json_without_internals(processes: Processes, mosquitto: str) -> None:
    web = start_web(processes, mosquitto)
    missing = web.get("/no/such/page")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "not_found", "message": "no such path: /no/such/page"}
    }
    wrong_method = httpx.post(web.url + "/healthz", timeout=5)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    for path in ("/docs", "/openapi.json"):
        assert web.get(path).status_code == 404
    page = web.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for link in ("/api/cluster", "/readyz", "/metrics"):
        assert f'href="{link}"' in page.text
    text = web.get("/metrics").text
    unmatched = find_sample(text, "taskring_requests_total", op="GET (unmatched)", outcome="404")
    assert unmatched == 3.0  # /no/such/page, /docs, /openapi.json


def test_bad_flags_and_a_taken_port_fail_clearly(processes: Processes, mosquitto: str) -> None:
    bad = subprocess.run(
        [TASKRING, "web", "--listen", "nowhere:port"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "--listen" in bad.stderr
    bad_broker = subprocess.run(
        [TASKRING, "web", "--broker", "http://x"], capture_output=True, text=True, timeout=30
    )
    assert bad_broker.returncode == 2 and "mqtt://" in bad_broker.stderr
    for flag, value in (("--allow-portals", "http://x:1"), ("--allow-origins", "x.example")):
        bad_edge = subprocess.run(
            [TASKRING, "web", flag, value], capture_output=True, text=True, timeout=30
        )
        assert bad_edge.returncode == 2 and flag in bad_edge.stderr, bad_edge.stderr
    web = start_web(processes, mosquitto)
    port = web.url.rsplit(":", 1)[1]
    taken = subprocess.run(
        [TASKRING, "web", "--listen", f"127.0.0.1:{port}", "--broker", mosquitto],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert taken.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert "Traceback" not in taken.stderr


def test_api_cluster_is_valid_json_with_string_ids(processes: Processes, mosquitto: str) -> None:
    web = start_web(processes, mosquitto)
    start_client_portal(processes, mosquitto)
    cluster = wait_until(
        lambda: (c := web.get("/api/cluster").json())["portals"] and c, "the client portal listed"
    )
    json.dumps(cluster)
    for portal in cluster["portals"]:
        assert set(portal) == {"id", "kind", "address"}
        assert all(isinstance(value, str) for value in portal.values())
