"""Starting and stopping the comparison peers (Redis, etcd) as local processes.

A peer's program comes from its Debian package. When it is missing and we
may (root, apt-get present, installing not turned off), the package is
installed; otherwise the peer is skipped with a message saying how to get it.
Each peer runs in a temporary directory of its own, removed afterwards,
on free loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from backend.bench.channel import ChannelFailure
from backend.bench.targets.base import TargetUnusable

STOP_GRACE = 5.0
INSTALL_TIMEOUT = 900.0
FREE_PORT_TRIES = 1000
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin")

Say = Callable[[str], None]


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and that this process has not handed out before.

    The kernel may give the same port to two binds to port 0 in a row once the first
    socket is closed, so callers that pick several ports before their servers bind
    would otherwise, now and then, start two servers on one port.
    """
    for _ in range(FREE_PORT_TRIES):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    _handed_out.clear()  # nearly every port was handed out: the oldest are long in use or gone
    return free_port()


def find_program(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


async def ensure_program(program: str, package: str, install: bool, say: Say) -> str:
    """The path of `program`, installing Debian's `package` when allowed; else TargetUnusable."""
    found = find_program(program)
    if found:
        return found
    missing = f"{package} is not installed (apt-get install {package})"
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise TargetUnusable(missing)
    say(f"installing the Debian package {package} for the comparison")
    if not await _apt_install(package):
        raise TargetUnusable(f"{missing}; installing it failed")
    found = find_program(program)
    if not found:
        raise TargetUnusable(f"{package} was installed but {program} is not on PATH")
    return found


async def _apt_install(package: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", package]
    if await _quiet_run(install, env):
        return True
    # The package lists may be missing or stale: refresh them once and retry.
    return await _quiet_run(["apt-get", "update", "-qq"], env) and await _quiet_run(install, env)


async def _quiet_run(args: list[str], env: dict[str, str]) -> bool:
    def run() -> bool:
        try:
            done = subprocess.run(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    return await asyncio.to_thread(run)


class PeerProcess:
    """A peer's process, its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    def _open_log(self) -> BinaryIO:
        return open(self.log_path, "ab")  # the caller closes it

    async def start(self) -> None:
        with self._open_log() as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the bench reaches it only via stop()
            )

    @property
    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def wait_ready(
    ready: Callable[[], Awaitable[bool]],
    processes: list[PeerProcess],
    what: str,
    timeout: float,
) -> None:
    """Poll the async check `ready()` until it is true; fail early if a process exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for process in processes:
            if process.exited:
                raise TargetUnusable(
                    f"{process.name} exited while starting: {process.log_tail() or 'no output'}"
                )
        with contextlib.suppress(OSError, ValueError, EOFError, ChannelFailure):
            if await ready():
                return
        await asyncio.sleep(0.05)
    tails = "; ".join(f"{p.name}: {p.log_tail(2)}" for p in processes)
    raise TargetUnusable(f"{what} did not become ready within {timeout:.0f} s ({tails})")
