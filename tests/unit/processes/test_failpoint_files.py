"""`taskring up` under TASKRING_FAILPOINTS=1: a failpoint file per child."""

from __future__ import annotations

import stat
from pathlib import Path

from backend.processes.launch_plan import ChildSpec, with_failpoint_files
from backend.processes.supervisor import arm_failpoints


def test_each_child_is_given_its_own_empty_private_file(tmp_path: Path) -> None:
    specs = [
        ChildSpec("broker", ("broker",)),
        ChildSpec("replica-g1-1", ("replica",), {"TASKRING_BROKER": "mqtt://x"}),
    ]
    directory = tmp_path / "failpoints"
    (directory).mkdir(mode=0o755)
    (directory / "broker").write_text("wal.fsync=error\n")  # left from an earlier run
    armed = arm_failpoints(specs, directory)
    assert [s.env["TASKRING_FAILPOINTS_FILE"] for s in armed] == [
        str(directory / "broker"),
        str(directory / "replica-g1-1"),
    ]
    assert armed[1].env["TASKRING_BROKER"] == "mqtt://x"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for spec in specs:
        assert (directory / spec.name).read_text() == ""


def test_the_plan_alone_names_the_files() -> None:
    (spec,) = with_failpoint_files([ChildSpec("web", ("web",))], Path("/data/failpoints"))
    assert spec.env == {"TASKRING_FAILPOINTS_FILE": "/data/failpoints/web"}
