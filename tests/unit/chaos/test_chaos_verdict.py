"""The verdict on a recorded history: linearizability, lost writes, availability."""

from __future__ import annotations

from typing import Any

from backend.chaos.verdict import availability, judge, lost_writes, rebased
from backend.sim.linearizability import UNKNOWN, Operation

CID = 0x1F
HEX = f"{CID:016x}"


def insert(call: float, ret: float | None, title: str, desc: str, client: int = 1) -> Operation:
    op = {"op": "insert_task", "cid": CID, "title": title, "description": desc}
    return Operation(client, call, ret, op, ("ok", {}) if ret is not None else UNKNOWN)


def delete(call: float, ret: float | None, title: str, output: Any = ("ok", {})) -> Operation:
    op = {"op": "delete_task", "cid": CID, "title": title}
    return Operation(2, call, ret, op, output if ret is not None else UNKNOWN)


def listing(call: float, ret: float, *tasks: tuple[str, str], client: int = 3) -> Operation:
    shown = [{"title": t, "description": d} for t, d in tasks]
    return Operation(client, call, ret, {"op": "list_tasks", "cid": CID}, ("ok", {"tasks": shown}))


def error(call: float, ret: float, code: str) -> Operation:
    op = {"op": "list_tasks", "cid": CID}
    return Operation(4, call, ret, op, ("error", code))


def test_a_history_the_store_could_give_passes() -> None:
    history = [insert(0.1, 0.2, "a", "d1"), listing(0.3, 0.4, ("a", "d1"))]
    verdict = judge(history, {HEX: [("a", "d1")]}, duration=2)
    assert verdict.passed, verdict.line()
    assert verdict.line().startswith("PASS: 2 operations of 1 clients")


def test_an_acknowledged_write_missing_at_the_end_fails_and_is_named() -> None:
    write = insert(0.1, 0.2, "a", "d1")
    history = [write, listing(0.5, 0.6)]
    verdict = judge(history, {HEX: []}, duration=2)
    assert not verdict.passed
    assert verdict.lost_writes == [write]
    assert "1 acknowledged writes lost" in verdict.line()
    assert "not linearizable" in verdict.line()
    [found] = verdict.violations
    assert found.cid == HEX
    assert write in found.window and "not linearizable" in found.explanation


def test_a_write_overtaken_by_a_delete_in_flight_is_not_lost() -> None:
    write = insert(0.1, 0.2, "a", "d1")
    assert lost_writes([write, delete(0.15, None, "a")], []) == []  # pending: may come after
    assert lost_writes([write, delete(0.3, 0.4, "a")], []) == []  # after it: deleted it
    assert lost_writes([delete(0.0, 0.05, "a"), write], []) == [write]  # done before it
    refused = delete(0.3, 0.4, "a", ("error", "unavailable"))
    assert lost_writes([write, refused], []) == [write]  # never applied


def test_a_client_the_portal_says_is_gone_is_left_to_the_checker() -> None:
    assert lost_writes([insert(0.1, 0.2, "a", "d1")], None) == []


def test_availability_counts_each_second_and_the_latency_of_successes() -> None:
    history = [
        insert(0.1, 0.3, "a", "d1"),
        insert(0.4, 0.5, "b", "d2"),
        insert(1.2, None, "c", "d3"),  # never returned: a failure in the second it was called
        error(1.5, 1.6, "timeout"),
        error(2.1, 2.2, "not_found"),  # an answer, not a failure
    ]
    seconds = availability(history, 3)
    assert [(s.ok, s.errors) for s in seconds] == [(2, 0), (0, 2), (0, 0)]
    assert seconds[0].p99 is not None and abs(seconds[0].p99 - 0.2) < 1e-9
    assert seconds[1].p50 is None


def test_failed_calls_are_listed_but_do_not_fail_the_run() -> None:
    history = [insert(0.1, 0.2, "a", "d1"), error(0.3, 0.4, "timeout")]
    verdict = judge(history, {HEX: [("a", "d1")]}, duration=1)
    assert verdict.passed
    assert [op.output for op in verdict.failed] == [("error", "timeout")]


def test_wrong_answers_fail_the_run() -> None:
    verdict = judge([], {HEX: []}, duration=1, problems=["internal on port 1"])
    assert not verdict.passed and "1 answers no correct system gives" in verdict.line()


def test_rebased_counts_from_the_workloads_start() -> None:
    [op] = rebased([insert(100.5, 100.75, "a", "d")], origin=100.0)
    assert (op.call, op.ret) == (0.5, 0.75)
