"""`taskring chaos --start`: the whole command on a system of its own, through the real binary.

A correct build under kills and pauses must pass; a build broken on purpose must fail.
The broken one is the same code with a `sitecustomize.py` on the children's PYTHONPATH
that makes the client portal send every insert twice, the second time as a new request
(a retry that forgot the first one's request id), and answer with the second outcome:
`exists` for an insert that took effect, which no linearization can explain once a list
shows the task.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import TASKRING

RESEND_INSERTS = """
import backend.processes.client_connection as connection


async def _insert_task(self, request):
    await self.store.insert_task(request.cid, request.title, request.description)
    await self.store.insert_task(request.cid, request.title, request.description)
    return {}


connection._OPERATIONS["insert_task"] = _insert_task
"""


def run_chaos(
    tmp_path: Path, *args: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [TASKRING, "chaos", "--start", "--report", str(tmp_path / "report"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report_of(done: subprocess.CompletedProcess) -> str:
    match = re.search(r"^report: (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return Path(match[1]).read_text()


def test_kills_and_pauses_of_a_correct_build_pass_and_the_report_shows_them(
    tmp_path: Path,
) -> None:
    done = run_chaos(tmp_path, "--duration", "15s", "--faults", "kill,pause", "--seed", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("PASS: "), done.stdout
    page = report_of(done)
    assert 'class="fault-band" data-kind="kill"' in page
    assert 'class="fault-band" data-kind="pause"' in page


def test_a_portal_that_resends_inserts_as_new_requests_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(RESEND_INSERTS)
    done = run_chaos(
        tmp_path, "--duration", "6s", "--faults", "pause", "--seed", "2", pythonpath=broken
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("FAIL: "), done.stdout
    assert "not linearizable" in done.stdout
    assert "Violation: CID" in report_of(done)
