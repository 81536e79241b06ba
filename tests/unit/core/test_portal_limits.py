"""The client portal's flood limits as pure bookkeeping (backend/core/portal_limits.py)."""

from __future__ import annotations

import pytest

from backend.core.portal_limits import AuthFailureBudget, ConnectionCounts, WatchBudget


def test_connections_are_capped_in_total_and_per_address() -> None:
    counts = ConnectionCounts(total_cap=3, per_ip_cap=2)
    assert counts.admit("10.0.0.1") is None and counts.admit("10.0.0.1") is None
    refusal = counts.admit("10.0.0.1")
    assert refusal is not None and "--max-connections-per-ip" in refusal
    assert counts.admit("10.0.0.2") is None
    refusal = counts.admit("10.0.0.3")
    assert refusal is not None and "--max-connections)" in refusal
    counts.release("10.0.0.1")
    assert counts.admit("10.0.0.1") is None
    for _ in range(2):
        counts.release("10.0.0.1")
    counts.release("10.0.0.2")
    assert counts.total == 0 and not counts.by_ip


def test_failed_auths_spend_a_burst_then_wait_for_the_refill() -> None:
    budget = AuthFailureBudget(burst=3, rate=2.0)
    for _ in range(3):
        assert budget.reserve("ip", 0.0) is None
        budget.failed("ip", 0.0)
    # over budget: each further attempt waits half a second more than the one before
    assert budget.reserve("ip", 0.0) == pytest.approx(0.5)
    assert budget.reserve("ip", 0.0) == pytest.approx(1.0)
    assert budget.reserve("other", 0.0) is None  # another address has its own budget
    # a reserved attempt that succeeds gives its token back
    budget.refund("ip", 0.0)
    assert budget.reserve("ip", 0.0) == pytest.approx(1.0)
    assert budget.reserve("ip", 10.0) is None  # refilled, up to the burst


def test_successful_auths_cost_nothing_and_a_long_queue_is_refused() -> None:
    budget = AuthFailureBudget(burst=1, rate=1.0, max_wait=2.0)
    for _ in range(100):
        assert budget.reserve("ip", 0.0) is None  # never failed: never slowed
    budget.failed("ip", 0.0)
    assert budget.reserve("ip", 0.0) == pytest.approx(1.0)
    assert budget.reserve("ip", 0.0) == pytest.approx(2.0)
    assert budget.reserve("ip", 0.0) == float("inf")


def test_full_buckets_are_forgotten_when_many_addresses_were_seen() -> None:
    budget = AuthFailureBudget(burst=2, rate=1.0)
    budget.PRUNE_AT = 4
    for n in range(4):
        budget.failed(f"ip{n}", 0.0)
    budget.failed("ip9", 10.0)
    assert set(budget.buckets) == {"ip9"}


def test_a_watching_connection_over_its_own_budget_is_refused() -> None:
    budget = WatchBudget(per_connection=100, per_client=1_000)
    assert budget.update("a", 7, 100) is None
    problem = budget.update("a", 7, 101)
    assert problem is not None and "this connection" in problem


def test_over_the_client_budget_only_the_connections_behind_are_refused() -> None:
    budget = WatchBudget(per_connection=1_000, per_client=1_000)
    assert budget.update("stuck1", 7, 600) is None
    assert budget.update("reader", 7, 10) is None
    assert budget.update("stuck2", 8, 900) is None  # another client: its own budget
    problem = budget.update("stuck2b", 7, 500)
    assert problem is not None and "this client's" in problem
    assert budget.update("reader", 7, 20) is None  # far below its share: kept
    budget.release("stuck2b")
    assert budget.update("stuck1", 7, 700) is None  # 720 in all: within budget again
    for name in ("stuck1", "reader", "stuck2", "stuck2b"):
        budget.release(name)
    assert not budget.by_client and not budget.watching and not budget.queued


def test_the_default_connection_cap_leaves_file_descriptors_to_spare() -> None:
    from backend.processes.client_portal import default_max_connections

    assert default_max_connections(1 << 20) == 10_000
    assert default_max_connections(1024) == 768
    assert default_max_connections(100) == 64
