"""The system simulator runs the portal core production runs (backend/core/ring/portal_core.py),
so a bug planted in that core must make the simulator's seeds fail.

The bug: a write whose attempts went unanswered is reported `unavailable` (not
applied) instead of `timeout` (maybe applied). Clients then see a write they were
told had failed take effect, which the linearizability check notices.
"""

from __future__ import annotations

import pytest

from backend.core.errors import UNAVAILABLE, OpError
from backend.core.ring.portal_core import PortalCore
from backend.sim.system_sim import check_seed, replay_hint

SEEDS = (3, 7, 11)  # each catches the planted bug within about a second


def test_the_seeds_pass_with_the_core_as_it_is() -> None:
    for seed in SEEDS:
        _, failure, _ = check_seed(seed)
        assert failure is None, f"{failure}\n{replay_hint(seed)}"


def test_the_sweep_catches_a_maybe_applied_write_reported_as_not_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never_maybe_applied(self: PortalCore, call: object) -> OpError:
        return OpError(UNAVAILABLE, "planted: every unanswered write counts as not applied")

    monkeypatch.setattr(PortalCore, "_verdict", never_maybe_applied)
    failures = []
    for seed in SEEDS:
        _, failure, _ = check_seed(seed)
        if failure is not None:
            print(f"seed {seed} caught the planted bug: {failure.splitlines()[0]}")
            failures.append(seed)
    assert failures, f"none of seeds {SEEDS} noticed the planted bug"
