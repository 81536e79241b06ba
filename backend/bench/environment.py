"""Where a benchmark ran: the machine and the code, so figures can be compared over time."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Other work on the machine skews every figure; this says how much there was.
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the system keeps them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def git_commit(repo: Path = REPO) -> str | None:
    """The short commit of the code that ran, with `+changes` when the tree differs from it."""
    try:
        head = _git(repo, "rev-parse", "--short", "HEAD")
        changed = subprocess.run(
            ["git", "-C", str(repo), "diff", "--quiet", "HEAD"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head is None:
        return None
    return head + ("+changes" if changed.returncode == 1 else "")


def _git(repo: Path, *args: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip() or None if done.returncode == 0 else None
