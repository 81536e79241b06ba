"""The system simulator runs the replica driver production runs, so a bug planted in the
driver must make it fail.

The planted bug breaks one rule of background snapshots: the log may be freed through a
snapshot's index only once the snapshot is durable. Freed as soon as the job starts, a
replica that crashes before its writer finishes restarts from an older snapshot with a
gap in its log. A few fixed seeds must notice; unpatched, those seeds pass.
"""

from __future__ import annotations

import pytest

from backend.core.replica.core import SnapshotJob
from backend.core.replica.driver import ReplicaDriver
from backend.sim.system_sim import check_seed

SEEDS = range(12)  # about a third of the seeds with crashes and snapshots catch it


def frees_the_log_before_the_snapshot_is_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    start = ReplicaDriver.snapshot_to_start

    def start_and_free(self: ReplicaDriver, now: float) -> SnapshotJob | None:
        job = start(self, now)
        if job is not None:
            self.storage.snapshot_written(job.index)  # the writer has not saved it yet
        return job

    monkeypatch.setattr(ReplicaDriver, "snapshot_to_start", start_and_free)


def test_the_simulator_catches_a_log_freed_before_its_snapshot_is_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as patch:
        frees_the_log_before_the_snapshot_is_saved(patch)
        caught = {seed: failure for seed, failure, _ in map(check_seed, SEEDS) if failure}
    for seed, failure in caught.items():
        print(f"seed {seed} caught the planted bug: {failure.splitlines()[0]}")
    assert caught, f"no seed of {list(SEEDS)} noticed the log freed too early"
    for seed in caught:
        _, unpatched, _ = check_seed(seed)
        assert unpatched is None, f"seed {seed} fails without the planted bug: {unpatched}"
