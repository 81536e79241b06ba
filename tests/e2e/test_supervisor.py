"""`taskring up` as a real process tree: start, restart a killed child, stop cleanly, leave nothing.

The supervisor lists its live children in DATA/pids.json
({"supervisor": pid, "children": {name: pid}}); the tests find the pids
there and check them against /proc.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.adapters.settings import BrokerAddress
from tests.conftest import MOSQUITTO, Processes, free_port, port_open, start_mosquitto
from tests.support.waiting import log_text, wait_until

STARTUP = 60.0
CHILDREN = ["client-portal-1", "client-portal-2", "admin-portal-1", "admin-portal-2", "web"]
# Supervision is the same in both storage modes; the lighter one keeps these tests quick.
CLEAN_ENV = {"TASKRING_BROKER": "", "TASKRING_ADMIN_TOKEN": "", "TASKRING_STORAGE": "local"}


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    data: Path
    ports: dict[str, int]

    def pids(self) -> dict[str, int]:
        try:
            return json.loads((self.data / "pids.json").read_text())["children"]
        except (OSError, ValueError, KeyError):
            return {}

    def output(self) -> str:
        return log_text(self.process)


@pytest.fixture
def leftovers() -> Iterator[set[int]]:
    """Pids of processes the test's supervisor started; any still alive at the end are killed."""
    seen: set[int] = set()
    yield seen
    for pid in seen:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_up(
    processes: Processes, data: Path, *flags: str, broker_port: int | None = None, name: str = "up"
) -> Up:
    ports = {name: free_port() for name in CHILDREN}
    ports["broker"] = broker_port or free_port()
    process = processes.taskring(
        "up",
        "--data-dir", str(data),
        "--web-port", str(ports["web"]),
        "--client-ports", f"{ports['client-portal-1']},{ports['client-portal-2']}",
        "--admin-ports", f"{ports['admin-portal-1']},{ports['admin-portal-2']}",
        "--broker-port", str(ports["broker"]),
        *flags,
        name=name,
        env=CLEAN_ENV,
    )  # fmt: skip
    up = Up(process, data, ports)
    wait_until(
        lambda: "taskring is up." in up.output() or process.poll() is not None,
        "taskring up to print its banner",
        timeout=STARTUP,
    )
    assert process.poll() is None, up.output()
    return up


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def test_up_runs_restarts_and_stops_every_component(
    processes: Processes, tmp_path: Path, leftovers: set[int]
):
    up = start_up(processes, tmp_path / "data")
    leftovers |= descendants(up.process.pid)
    for name, port in up.ports.items():
        assert port_open(port), f"{name} on {port}"
    token = (tmp_path / "data" / "admin-token").read_text().strip()
    assert len(token) >= 32
    assert token in up.output()

    pids = up.pids()
    assert sorted(pids) == sorted(["broker", *CHILDREN])
    passwords = json.loads((tmp_path / "data" / "broker-credentials.json").read_text())
    for name, pid in pids.items():
        args = cmdline(pid)
        assert name.rsplit("-", 1)[0] in args or name in args, args
        for password in passwords["passwords"].values():
            assert not any(password in arg for arg in args), f"{name} shows a password"
    assert cmdline(pids["client-portal-1"])[-6:-2] == [
        "--id", "client-portal-1", "--listen", f"127.0.0.1:{up.ports['client-portal-1']}"
    ]  # fmt: skip
    # Each child logs in as itself, with its own password.
    for name, login in (("client-portal-1", "client-portal-1"), ("web", "web-1")):
        url = BrokerAddress.parse(environ(pids[name])["TASKRING_BROKER"])
        assert (url.username, url.password) == (login, passwords["passwords"][login])
    assert environ(pids["admin-portal-1"])["TASKRING_ADMIN_TOKEN"] == token
    assert "TASKRING_ADMIN_TOKEN" not in environ(pids["web"])

    # A child killed behind the supervisor's back comes back on the same port.
    killed = pids["client-portal-1"]
    os.kill(killed, signal.SIGKILL)
    wait_until(
        lambda: up.pids().get("client-portal-1", killed) != killed,
        "client-portal-1 to be restarted",
        timeout=20,
    )
    wait_until(lambda: port_open(up.ports["client-portal-1"]), "the restarted portal to listen")
    assert "client-portal-1 exited (killed by SIGKILL); restarting" in up.output()
    leftovers |= descendants(up.process.pid)

    everything = descendants(up.process.pid)
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(30) == 0, up.output()
    wait_until(lambda: not any(alive(pid) for pid in everything), "every child to exit", timeout=10)
    assert not (tmp_path / "data" / "pids.json").exists()
    for port in up.ports.values():
        assert not port_open(port)
    assert (tmp_path / "data" / "logs" / "client-portal-1.log").stat().st_size > 0
    assert_private(tmp_path / "data", ["logs", "replicas"])


def assert_private(data: Path, parts: list[str]) -> None:
    """Logs, write-ahead logs and snapshots: 0600 files in 0700 directories."""
    assert data.stat().st_mode & 0o777 == 0o700
    for part in parts:
        for path in [data / part, *(data / part).rglob("*")]:
            expected = 0o700 if path.is_dir() else 0o600
            assert path.stat().st_mode & 0o777 == expected, f"{path} is {path.stat().st_mode:o}"


def test_a_restart_keeps_the_token_and_sigkill_takes_the_children_along(
    processes: Processes, tmp_path: Path, leftovers: set[int]
):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "admin-token").write_text("kept-admin-token-0123456789abcdef\n")
    up = start_up(processes, data)
    leftovers |= descendants(up.process.pid)
    assert "kept-admin-token-0123456789abcdef" in up.output()
    everything = descendants(up.process.pid)
    assert len(everything) >= 7  # five components, `taskring broker` and its Mosquitto
    up.process.kill()
    up.process.wait(10)
    wait_until(
        lambda: not any(alive(pid) for pid in everything),
        "the children to die with their supervisor",
        timeout=10,
    )


@pytest.mark.skipif(not os.access(MOSQUITTO, os.X_OK), reason="Mosquitto is not installed")
def test_a_taskring_broker_already_answering_is_used_instead_of_starting_one(
    processes: Processes, tmp_path: Path, leftovers: set[int]
):
    data, broker_port = tmp_path / "data", free_port()
    broker = processes.taskring(
        "broker", "--listen", f"127.0.0.1:{broker_port}", "--data-dir", str(data), name="broker"
    )
    wait_until(lambda: port_open(broker_port) or broker.poll() is not None, "the broker")
    up = start_up(processes, data, broker_port=broker_port)
    leftovers |= descendants(up.process.pid)
    assert "broker" not in up.pids()
    assert "already running; logins from the data directory" in up.output()
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(30) == 0


@pytest.mark.skipif(not os.access(MOSQUITTO, os.X_OK), reason="Mosquitto is not installed")
def test_a_broker_that_lets_anyone_in_is_used_only_when_named(
    processes: Processes, tmp_path: Path, leftovers: set[int]
):
    url = start_mosquitto(processes, tmp_path)
    broker_port = int(url.rsplit(":", 1)[1])
    args = ["up", "--data-dir", str(tmp_path / "data"), "--broker-port", str(broker_port)]
    refused = processes.taskring(*args, name="refused", env=CLEAN_ENV)
    assert refused.wait(20) == 1
    output = log_text(refused)
    assert f"the broker at 127.0.0.1:{broker_port} accepts anonymous logins" in output
    assert f"--broker {url}" in output and "Traceback" not in output
    up = start_up(processes, tmp_path / "data", "--broker", url, broker_port=broker_port)
    leftovers |= descendants(up.process.pid)
    assert "broker" not in up.pids()
    assert "given with --broker" in up.output()
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(30) == 0


def test_a_taken_port_is_named_before_anything_starts(processes: Processes, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = processes.taskring(
            "up",
            "--data-dir", str(tmp_path / "data"),
            "--web-port", str(port),
            "--client-ports", f"{free_port()},{free_port()}",
            "--admin-ports", f"{free_port()},{free_port()}",
            "--broker-port", str(free_port()),
            name="taken",
            env=CLEAN_ENV,
        )  # fmt: skip
        assert process.wait(20) == 1
    output = log_text(process)
    assert f"web cannot listen on 127.0.0.1:{port}" in output
    assert f"held by a listening socket on 127.0.0.1:{port} of pid {os.getpid()}" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--client-ports", "70x1"], "--client-ports"),
        (["--replicas", "0"], "--replicas"),
        (["--replica-groups", "-1"], "--replica-groups"),
        (["--replicas", "10"], "--replicas"),
        (["--web-port", "7001", "--client-ports", "7001"], "port 7001 is given to two"),
    ],
)
def test_bad_flags_are_usage_errors(
    processes: Processes, tmp_path: Path, flags: list[str], complaint: str
):
    args = ["up", "--data-dir", str(tmp_path / "d"), "--broker-port", str(free_port()), *flags]
    process = processes.taskring(*args, name="bad", env=CLEAN_ENV)
    assert process.wait(20) == 2
    assert complaint in log_text(process)
