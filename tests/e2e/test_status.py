"""`taskring status` through the real binary, against real Mosquitto, web and portal processes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import TASKRING, Processes, free_port, port_open
from tests.support.waiting import wait_until


def status(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    return subprocess.run(
        [TASKRING, "status", *args], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def cluster(processes: Processes, mosquitto: str) -> dict[str, Any]:
    """Mosquitto, a web process and a client portal, all up."""
    web_port, portal_port = free_port(), free_port()
    env = {"TASKRING_BROKER": mosquitto}
    web_env = {**env, "TASKRING_ALLOW_PORTALS": f"127.0.0.1:{portal_port}"}
    web = processes.taskring("web", "--listen", f"127.0.0.1:{web_port}", name="web", env=web_env)
    portal = processes.taskring(
        "client-portal", "--id", "client-portal-1", "--listen", f"127.0.0.1:{portal_port}",
        name="client-portal-1", env=env,
    )  # fmt: skip
    for port in (web_port, portal_port):
        wait_until(functools.partial(port_open, port), f"a process listening on {port}", timeout=20)
    return {
        "broker": mosquitto,
        "web": f"http://127.0.0.1:{web_port}",
        "web_pid": web.pid,
        "portal_pid": portal.pid,
        "portal_address": f"127.0.0.1:{portal_port}",
    }


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {component["id"]: component for component in report["components"]}


def test_json_from_the_broker_lists_every_component(cluster: dict[str, Any]) -> None:
    result = status("--broker", cluster["broker"], "--json", "--wait", "1.5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    components = by_id(report)
    assert set(components) == {"web-1", "client-portal-1"}
    portal = components["client-portal-1"]
    assert portal["kind"] == "client-portal"
    assert portal["address"] == cluster["portal_address"]
    assert portal["pid"] == cluster["portal_pid"]
    assert portal["alive"] is True and portal["ready"] is True
    assert components["web-1"]["pid"] == cluster["web_pid"]
    assert report["ready"] is False
    assert report["missing"] == ["no admin portal is up"]
    assert report["storage"] == {"mode": "local", "summary": "every portal holds a full copy"}


def test_json_from_the_web_process_matches(cluster: dict[str, Any]) -> None:
    def listed() -> dict[str, Any] | None:
        result = status("--web", cluster["web"], "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        # status asks /readyz before /api/components: both must have heard the portal.
        heard = (
            "client-portal-1" in by_id(report) and "no client portal is up" not in report["missing"]
        )
        return report if heard else None

    report = wait_until(listed, "the web process to hear the client portal")
    assert by_id(report)["client-portal-1"]["pid"] == cluster["portal_pid"]
    # Counted before /api/components answered: this call's /api/cluster and /readyz at least.
    assert by_id(report)["web-1"]["requests"] >= 2
    assert report["source"] == cluster["web"]
    assert report["missing"] == ["no admin portal is up"]
    assert report["cache_nodes"] == [] and report["replica_groups"] == []


def test_the_table_is_readable(cluster: dict[str, Any]) -> None:
    result = status("--broker", cluster["broker"], "--wait", "1.5")
    assert result.returncode == 0, result.stderr
    for expected in (
        "client-portal-1",
        cluster["portal_address"],
        str(cluster["portal_pid"]),
        "up, ready",
        "Not ready",
        "no admin portal is up",
        "Storage: local: every portal holds a full copy",
    ):
        assert expected in result.stdout, f"{expected!r} not in:\n{result.stdout}"


def test_an_unreachable_broker_fails_with_exit_code_3_at_the_deadline() -> None:
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    began = time.monotonic()
    result = status("--broker", nowhere, "--wait", "1")
    assert result.returncode == 3
    assert time.monotonic() - began < 10
    assert f"cannot reach the MQTT broker at {nowhere} within 1s" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_web_process_fails_with_exit_code_3() -> None:
    result = status("--web", f"http://127.0.0.1:{free_port()}", "--json")
    assert result.returncode == 3
    assert "cannot reach the web process" in result.stderr
    assert result.stdout == ""


def test_bad_flags_are_usage_errors() -> None:
    assert status("--broker", "http://nope").returncode == 2
    assert status("--wait", "0").returncode == 2
    assert status("--wait", "soon").returncode == 2
