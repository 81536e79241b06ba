"""`taskring admin` through the real binary against real `taskring admin-portal` processes.

The unit tests check the service in depth; these check what only processes
show: the command lines, exit codes, JSON for scripts, failing over between
portals, heartbeats on the broker, and a clean exit on SIGTERM and SIGINT.
No command may ever print a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.bus.transport import Message
from backend.adapters.settings import BrokerAddress
from backend.core import topics
from tests.conftest import TASKRING, Processes, free_port, port_open
from tests.e2e.stack import start_stack
from tests.support.waiting import eventually, log_text, wait_until

ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
DEADLINE = 20.0


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def start_portal(
    processes: Processes,
    broker: str,
    number: int = 1,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    environment = {"TASKRING_BROKER": broker, "TASKRING_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
    process = processes.taskring(
        "admin-portal", "--id", f"admin-portal-{number}", "--listen", f"127.0.0.1:{port}", *args,
        name=f"admin-portal-{number}", env=environment,
    )  # fmt: skip
    wait_until(lambda: serving(port), f"admin-portal-{number} serving on {port}", timeout=DEADLINE)
    return process, port


@dataclass
class Admin:
    """Runs `taskring admin` as a subprocess with a clean environment in its own directory."""

    cwd: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
        result = subprocess.run(
            [TASKRING, "admin", *args],
            env={**base, **self.env, **(env or {})},
            cwd=self.cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        return result

    def json(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        result = self("--json", *args, **kwargs)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 1, result.stdout  # one JSON object per result
        return json.loads(lines[0])


@pytest.fixture
def portal(processes: Processes, mosquitto: str) -> tuple[subprocess.Popen[bytes], int]:
    return start_portal(processes, mosquitto)


@pytest.fixture
def admin(portal: tuple[Any, int], tmp_path: Path) -> Admin:
    return admin_of(portal[1], tmp_path)


@pytest.fixture(params=["local", "ring"])
def any_admin(request, processes: Processes, mosquitto: str, tmp_path: Path) -> Admin:
    """The contract's commands against either storage: a lone portal in `local`, or in
    `ring` as `taskring up` runs it (cache nodes in front of a 1x3 replica group)."""
    if request.param == "local":
        return admin_of(start_portal(processes, mosquitto)[1], tmp_path)
    stack = start_stack(processes, tmp_path, storage="ring", replica_groups=1, client_portals=1)
    return admin_of(stack.admin_port, tmp_path, stack.admin_token)


def admin_of(port: int, tmp_path: Path, token: str = ADMIN_TOKEN) -> Admin:
    work = tmp_path / "cli"
    work.mkdir()
    env = {
        "TASKRING_ADMIN_PORTAL": f"127.0.0.1:{port}",
        "TASKRING_ADMIN_TOKEN": token,
        "TASKRING_DATA_DIR": str(tmp_path / "no-data"),
    }
    return Admin(work, env)


def contract_cid(name: str) -> str:
    normalised = unicodedata.normalize("NFC", name).casefold().strip()
    return hashlib.sha256(normalised.encode()).digest()[:8].hex()


# ---- the commands --------------------------------------------------------------------


def test_every_subcommand_with_json_output(any_admin: Admin) -> None:
    admin = any_admin
    created = admin.json("create", "Alice Example", "--data", "gold plan")
    assert created["cid"] == contract_cid("Alice Example")
    assert created["name"] == "Alice Example" and created["data"] == "gold plan"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", created["token"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", created["created_at"])
    cid = created["cid"]

    fetched = admin.json("get", cid)
    assert "token" not in fetched
    assert fetched == {k: v for k, v in created.items() if k != "token"}

    updated = admin.json("update", cid, "--data", "-", stdin="silver\nplan")
    assert updated["data"] == "silver\nplan" and "token" not in updated

    other = admin.json("create", "Bob")
    listed = admin.json("list")
    assert [c["cid"] for c in listed["clients"]] == sorted([cid, other["cid"]])
    assert listed["next_page_token"] == ""
    assert all("token" not in c for c in listed["clients"])

    rotated = admin.json("rotate-token", cid)
    assert rotated["cid"] == cid and rotated["token"] != created["token"]
    assert len(rotated["token"]) >= 22

    assert admin.json("delete", cid, "--yes") == {"cid": cid, "deleted": True}
    gone = admin("get", cid)
    assert gone.returncode == 1 and gone.stderr.startswith("error: not_found")
    assert [c["cid"] for c in admin.json("list")["clients"]] == [other["cid"]]


def test_human_output_shows_the_token_once_and_a_table(any_admin: Admin) -> None:
    admin = any_admin
    created = admin("create", "Carol [admin]", "--data", "likes tables")
    assert created.returncode == 0, created.stderr
    cid = contract_cid("Carol [admin]")
    token = re.search(r"token\s+(\S+)", created.stdout)
    assert cid in created.stdout and token is not None
    assert "shown only this once" in created.stdout

    shown = admin("get", cid)
    assert shown.returncode == 0 and cid in shown.stdout
    assert token.group(1) not in shown.stdout

    listed = admin("list")
    assert listed.returncode == 0
    assert "Carol [admin]" in listed.stdout  # names are shown as typed, not as markup
    assert cid in listed.stdout and "likes tables" in listed.stdout

    rotated = admin("rotate-token", cid)
    assert rotated.returncode == 0 and "shown only this once" in rotated.stdout
    assert token.group(1) not in rotated.stdout


def test_list_pages_and_all(any_admin: Admin) -> None:
    admin = any_admin
    cids = sorted(admin.json("create", f"pager {n}")["cid"] for n in range(5))
    first = admin.json("list", "--page-size", "2")
    assert [c["cid"] for c in first["clients"]] == cids[:2] and first["next_page_token"]
    second = admin.json("list", "--page-size", "2", "--page-token", first["next_page_token"])
    assert [c["cid"] for c in second["clients"]] == cids[2:4]
    every = admin.json("list", "--page-size", "2", "--all")
    assert [c["cid"] for c in every["clients"]] == cids and every["next_page_token"] == ""
    human = admin("list", "--page-size", "2")
    assert "--page-token" in human.stdout


def test_delete_asks_for_confirmation_unless_yes(any_admin: Admin) -> None:
    admin = any_admin
    cid = admin.json("create", "Dave")["cid"]
    refused = admin("delete", cid)  # stdin is not a terminal here
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert admin("get", cid).returncode == 0
    assert admin("delete", cid, "--yes").returncode == 0


# ---- errors and exit codes -----------------------------------------------------------


def one_error_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0], lines[0]


def usage_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    """Click's own usage message: exit 2, naming the option."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert text in result.stderr, result.stderr


def test_errors_are_one_line_with_distinct_exit_codes(any_admin: Admin) -> None:
    admin = any_admin
    cid = admin.json("create", "Erin")["cid"]
    one_error_line(admin("create", " ERIN "), 1, "already_exists")
    one_error_line(admin("create", ""), 1, "invalid_argument: name")
    one_error_line(admin("create", "x", "--data", "d" * 16_385), 1, "invalid_argument: data")
    for command in (["get"], ["update", "--data", "x"], ["rotate-token"], ["delete", "--yes"]):
        one_error_line(admin(*command[:1], "0123456789abcdef", *command[1:]), 1, "not_found")
    one_error_line(admin("get", "NOT-A-CID"), 1, "invalid_argument: cid")
    one_error_line(admin("list", "--page-token", "bogus"), 1, "invalid_argument: page_token")

    one_error_line(admin("get", cid, env={"TASKRING_ADMIN_TOKEN": "wrong"}), 4, "unauthenticated")
    one_error_line(admin("--admin-token", "wrong", "list"), 4, "unauthenticated")
    no_token = admin("list", env={"TASKRING_ADMIN_TOKEN": ""})
    one_error_line(no_token, 2, "no admin token")

    dead = f"127.0.0.1:{free_port()}"
    one_error_line(admin("--portal", dead, "list"), 3, "no admin portal available")
    one_error_line(admin("get", cid, env={"TASKRING_ADMIN_PORTAL": dead}), 3, dead)
    usage_error(admin("--portal", "nohost:notaport", "list"), "--portal")
    usage_error(admin("list", "--page-size", "0"), "--page-size")
    usage_error(admin("--timeout", "0", "list"), "--timeout")
    usage_error(admin("list", "--page-size", str(2**31)), "--page-size")
    one_error_line(admin("create", "bad \udcff byte"), 2, "name is not valid UTF-8")


def test_the_next_portal_is_used_when_one_is_down(admin: Admin) -> None:
    live = admin.env["TASKRING_ADMIN_PORTAL"]
    both = f"127.0.0.1:{free_port()},{live}"
    created = admin.json("--portal", both, "create", "Frank")
    assert admin.json("--portal", both, "get", created["cid"])["name"] == "Frank"


def test_the_admin_token_is_read_from_the_data_directory(admin: Admin, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin-token").write_text(ADMIN_TOKEN + "\n")
    without_env = {"TASKRING_ADMIN_TOKEN": "", "TASKRING_DATA_DIR": ""}
    by_flag = admin("--data-dir", str(data), "--json", "list", env=without_env)
    assert by_flag.returncode == 0, by_flag.stderr
    (admin.cwd / "data").mkdir()
    (admin.cwd / "data" / "admin-token").write_text(ADMIN_TOKEN)
    by_default = admin("--json", "list", env=without_env)  # ./data/admin-token
    assert by_default.returncode == 0, by_default.stderr


# ---- the portal process --------------------------------------------------------------


def test_clients_created_on_one_portal_are_seen_on_another(
    processes: Processes, mosquitto: str, admin: Admin
) -> None:
    _, second = start_portal(processes, mosquitto, number=2)
    cid = admin.json("create", "Grace")["cid"]
    on_second = {"TASKRING_ADMIN_PORTAL": f"127.0.0.1:{second}"}
    wait_until(
        lambda: admin("get", cid, env=on_second).returncode == 0,
        "the client on the second admin portal",
    )


def test_the_portal_reads_its_token_from_the_data_directory(
    processes: Processes, mosquitto: str, tmp_path: Path
) -> None:
    data = tmp_path / "portal-data"
    data.mkdir()
    (data / "admin-token").write_text("from-the-file-0123456789\n")
    _, port = start_portal(
        processes, mosquitto, env={"TASKRING_ADMIN_TOKEN": ""}, args=("--data-dir", str(data))
    )
    admin = Admin(tmp_path, {"TASKRING_ADMIN_PORTAL": f"127.0.0.1:{port}"})
    assert admin("--admin-token", "from-the-file-0123456789", "list").returncode == 0
    assert admin("--admin-token", ADMIN_TOKEN, "list").returncode == 4


async def test_the_portal_publishes_heartbeats_with_its_metrics(
    portal: tuple[Any, int], mosquitto: str, admin: Admin
) -> None:
    heartbeats: list[Message] = []

    async def on_heartbeat(_topic: str, message: Message) -> None:
        heartbeats.append(message)

    bus = MqttBus(BrokerAddress.parse(mosquitto), "e2e-admin-heartbeats")
    bus.subscribe(topics.heartbeat("admin-portal", "admin-portal-1"), on_heartbeat)
    async with bus:
        result = await asyncio.to_thread(admin, "get", "0123456789abcdef")
        assert result.returncode == 1

        def call_counted() -> bool:
            counted = ["GetClient", "not_found", 1]
            assert any(counted in h["metrics"]["requests"] for h in heartbeats), (
                f"no heartbeat counting the call: {heartbeats}"
            )
            return True

        await eventually(call_counted, "a heartbeat counting the call", DEADLINE, 0.05)
    beat = heartbeats[-1]
    assert beat["kind"] == "admin-portal" and beat["address"] == f"127.0.0.1:{portal[1]}"
    assert beat["ready"] is True and beat["problem"] is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_portal_cleanly_with_exit_0(
    portal: tuple[subprocess.Popen[bytes], int], signum: signal.Signals
) -> None:
    process, port = portal
    os.kill(process.pid, signum)
    assert process.wait(timeout=DEADLINE) == 0, log_text(process)
    assert "stopping" in log_text(process)
    assert "Traceback" not in log_text(process)
    assert not port_open(port)


def run_portal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    result = subprocess.run(
        [TASKRING, "admin-portal", "--listen", f"127.0.0.1:{free_port()}", *args],
        env={**base, **(env or {})}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    return result


def test_the_portal_refuses_to_start_without_an_admin_token(tmp_path: Path) -> None:
    result = run_portal("--data-dir", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert "no admin token" in result.stderr and "TASKRING_ADMIN_TOKEN" in result.stderr


def test_a_port_in_use_is_reported_and_exits_1(portal: tuple[Any, int], mosquitto: str) -> None:
    _, port = portal
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    result = subprocess.run(
        [TASKRING, "admin-portal", "--id", "admin-portal-2", "--listen", f"127.0.0.1:{port}",
         "--broker", mosquitto],
        env={**base, "TASKRING_ADMIN_TOKEN": ADMIN_TOKEN},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
