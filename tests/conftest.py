"""Fixtures shared by every test: free ports, deadlines, a real Mosquitto, real processes.

Nothing here sleeps and hopes: tests wait with `wait_until` and `eventually`
(tests/support/waiting.py), which poll a condition against a deadline and fail
with what they were waiting for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.bench.targets.peers import free_port
from tests.support.processes import LoggedProcess
from tests.support.waiting import wait_until

# Some tests fork (the replica's snapshot writer) in this process after others ran gRPC
# servers and channels here. gRPC's fork support restarts its poller in the child, which
# then aborts once the writer closes the descriptors it inherited (replicas never load
# gRPC, so only the test process has both).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

REPO = Path(__file__).resolve().parent.parent
TASKRING = str(Path(sys.executable).with_name("taskring"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TESTS = Path(__file__).resolve().parent

# Markers follow from where a test lives and what it starts, so a new file or test
# cannot forget them (pyproject.toml describes each; `make test-fast` leaves these out).
DIRECTORY_MARKERS = {"sim": ("sim",), "e2e": ("e2e",), "browser": ("e2e", "browser")}
PROCESS_FIXTURES = frozenset({"mosquitto", "processes"})  # real OS processes: e2e anywhere


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in markers_for(item):
            item.add_marker(marker)


def markers_for(item: pytest.Item) -> set[str]:
    markers: set[str] = set()
    if item.path.is_relative_to(TESTS):
        directory = item.path.relative_to(TESTS).parts[0]
        markers.update(DIRECTORY_MARKERS.get(directory, ()))
    if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        markers.add("e2e")
    return markers


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Processes:
    """Real OS processes started by a test, each in its own session, all stopped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[LoggedProcess] = []

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> LoggedProcess:
        log_path = self.log_dir / f"{name}.log"
        # Components run the stage-1 `local` storage unless a test asks for the ring
        # (TASKRING_STORAGE=ring) or for the default (TASKRING_STORAGE="").
        defaults = {"PYTHONUNBUFFERED": "1", "TASKRING_STORAGE": "local"}
        full_env = {**os.environ, **defaults, **(env or {})}
        with open(log_path, "ab") as log:
            process = LoggedProcess(
                args,
                log_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=self.log_dir,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def taskring(self, *args: str, name: str, env: dict[str, str] | None = None) -> LoggedProcess:
        return self.start([TASKRING, *args], name, env)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGKILL)
        process.wait(grace)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    yield group
    group.stop_all()


def start_mosquitto(processes: Processes, tmp_path: Path, port: int | None = None) -> str:
    """A real Mosquitto on a free loopback port, anonymous, with TCP_NODELAY; returns its URL."""
    port = port or free_port()
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        "log_dest stdout\n"
    )
    processes.start([MOSQUITTO, "-c", str(conf)], f"mosquitto-{port}")
    wait_until(lambda: port_open(port), f"mosquitto on port {port}")
    return f"mqtt://127.0.0.1:{port}"


@pytest.fixture
def mosquitto(processes: Processes, tmp_path: Path) -> str:
    """URL of a fresh real Mosquitto for this test."""
    return start_mosquitto(processes, tmp_path)
