"""`taskring bench --restart-tasks`: a full restart of `taskring up` on generated data.

A small run end to end through the real binary: the data is written, `taskring
up` starts on it, every client must list exactly its tasks, a write must be
acknowledged, and no process may outlive the run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from backend.bench.restart_data import DataSpec, generate
from tests.conftest import TASKRING


def run_bench(tmp_path: Path, *args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    return subprocess.run(
        [TASKRING, "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_directory(done: subprocess.CompletedProcess) -> Path:
    """The data directory the run started `taskring up` on (it says so)."""
    match = re.search(r"starting `taskring up` on (\S+)", done.stderr)
    assert match, done.stderr
    return Path(match[1])


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention `text` (our data directories)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_a_restart_serves_every_client_its_tasks_and_takes_a_write(tmp_path: Path) -> None:
    out = tmp_path / "restart.json"
    done = run_bench(
        tmp_path,
        "--restart-tasks",
        "2000",
        "--restart-clients",
        "50",
        "--restart-sample",
        "50",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    document: dict[str, Any] = json.loads(out.read_text())
    restart = document["restart"]
    assert restart["ok"] is True
    assert (restart["tasks"], restart["clients"], restart["sample"]) == (2000, 50, 50)
    assert restart["listed"] == 50 and restart["mismatches"] == []
    timeline = restart["timeline_s"]
    assert 0 < timeline["first_listing"] <= timeline["sample"]
    assert timeline["write"] > 0 and timeline["readyz"] > 0 and timeline["banner"] > 0
    assert timeline["replicas_loaded"] > 0 and timeline["leaders_elected"] > 0
    assert restart["up_exit"] == 0 and restart["leftover"] == []
    assert sorted(restart["memory_kb"]) == [
        *(f"cache-node-{n}" for n in range(1, 5)),
        *(f"replica-g1-{m}" for m in range(1, 4)),
    ]
    assert all(m["peak_kb"] >= m["rss_kb"] > 0 for m in restart["memory_kb"].values())
    assert sorted(restart["data_bytes"]) == ["g1-1", "g1-2", "g1-3"]
    assert restart["replica_load"]["tasks"] == 2000
    assert restart["replica_load"]["bytes_per_task"] > 0
    assert document["parameters"]["tasks"] == 2000
    assert "all 50 sample clients listed, exactly" in done.stdout
    ran_on = run_directory(done)
    assert processes_mentioning(str(ran_on)) == []
    assert not ran_on.exists(), "the run's scratch directory was left behind"


def test_kept_data_is_reused_and_left_untouched(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    spec = DataSpec(tasks=200, clients=10)
    generate(spec, kept)
    before = {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()}
    args = ("--restart-tasks", "200", "--restart-clients", "10", "--restart-dir", str(kept))
    done = run_bench(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    assert "holds this data already: reusing it" in done.stderr
    assert {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()} == before
    ran_on = run_directory(done)
    assert not ran_on.is_relative_to(kept)  # a copy: a restart writes to the log
    assert processes_mentioning(str(ran_on)) == [] and not ran_on.exists()


def test_bad_restart_flags_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    done = run_bench(tmp_path, "--restart-tasks", "10", "--compare", timeout=30)
    assert done.returncode == 2
    assert "drop --compare" in done.stderr and "Traceback" not in done.stderr
    other = tmp_path / "other"
    generate(DataSpec(tasks=5, clients=1, seed=2), other)
    done = run_bench(tmp_path, "--restart-tasks", "10", "--restart-dir", str(other), timeout=30)
    assert done.returncode == 1
    assert "already holds replica files" in done.stderr and "Traceback" not in done.stderr
