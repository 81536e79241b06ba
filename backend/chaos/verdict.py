"""The verdict on one chaos run, from its recorded history alone. Pure: no I/O.

- linearizability: each client's history (final reads included) checked by
  backend/sim/linearizability.py with the task store's own state machine;
- lost acknowledged writes: an insert or update the system acknowledged whose task is
  missing from the client's final list although nothing that could have overwritten
  or deleted it was in flight after it (the checker catches these too; this names them);
- availability: per second of the run, the calls that succeeded, those that failed or
  timed out, and the latency of the successful ones;
- answers no correct system gives (`internal`, `bad_request`, `too_large`).

PASS needs every client linearizable (not merely undecided), no lost write and no
wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from backend.sim.linearizability import (
    LINEARIZABLE,
    UNKNOWN,
    BagState,
    Operation,
    Result,
    TaskBagModel,
    check,
)

CLIENT_WITHOUT_TASKS = BagState(True, ())
EXPECTED_ERRORS = frozenset({"exists", "not_found"})  # answers, not failures
WRITES = frozenset({"insert_task", "update_task", "delete_task", "delete_tasks"})
WINDOW_BEFORE, WINDOW_AFTER, WINDOW_MOST = 2.0, 0.5, 40


@dataclass(frozen=True)
class Second:
    """One second of the run: calls that succeeded and failed, and latencies (seconds)."""

    at: int
    ok: int
    errors: int
    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class Violation:
    """A client whose history is not linearizable (or undecided): the checker's
    explanation and the operations on its key around the point where it failed."""

    cid: str
    verdict: str
    explanation: str
    window: tuple[Operation, ...]


@dataclass
class Verdict:
    operations: int
    clients: dict[str, str]  # cid -> the checker's verdict
    violations: list[Violation]
    lost_writes: list[Operation]
    failed: list[Operation]  # every call that failed, timed out or never returned
    seconds: list[Second]
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        linearizable = all(v == LINEARIZABLE for v in self.clients.values())
        return linearizable and not self.lost_writes and not self.problems

    def line(self) -> str:
        """The one line that says it: PASS or FAIL and why."""
        if self.passed:
            return (
                f"PASS: {self.operations} operations of {len(self.clients)} clients are "
                "linearizable; no acknowledged write was lost"
            )
        reasons = []
        bad = [cid for cid, v in self.clients.items() if v != LINEARIZABLE]
        if bad:
            reasons.append(f"{len(bad)} of {len(self.clients)} clients not linearizable")
        if self.lost_writes:
            reasons.append(f"{len(self.lost_writes)} acknowledged writes lost")
        if self.problems:
            reasons.append(f"{len(self.problems)} answers no correct system gives")
        return "FAIL: " + "; ".join(reasons)


def rebased(history: Sequence[Operation], origin: float) -> list[Operation]:
    """The history with times in seconds after `origin` (the workload's start)."""
    return [
        replace(
            op,
            call=round(op.call - origin, 6),
            ret=None if op.ret is None else round(op.ret - origin, 6),
        )
        for op in history
    ]


def cid_of(op: Operation) -> str:
    return f"{op.input['cid']:016x}"


def judge(
    history: Sequence[Operation],
    finals: Mapping[str, list[tuple[str, str]] | None],
    duration: float,
    problems: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> Verdict:
    """The verdict on a rebased history, given each client's final list (None: the portal
    said the client is gone) and the run's length in seconds."""
    by_client: dict[str, list[Operation]] = {cid: [] for cid in finals}
    for op in history:
        by_client.setdefault(cid_of(op), []).append(op)
    clients: dict[str, str] = {}
    violations: list[Violation] = []
    for cid, ops in by_client.items():
        result = check(ops, TaskBagModel(CLIENT_WITHOUT_TASKS), timeout_s)
        clients[cid] = result.verdict
        if not result.ok:
            violations.append(violation(cid, ops, result))
    lost = [op for cid, ops in by_client.items() for op in lost_writes(ops, finals.get(cid))]
    return Verdict(
        operations=len(history),
        clients=clients,
        violations=violations,
        lost_writes=lost,
        failed=failed_operations(history),
        seconds=availability(history, duration),
        problems=list(problems),
    )


def succeeded(op: Operation) -> bool:
    return op.ret is not None and op.output is not UNKNOWN and op.output[0] == "ok"


def failed_operations(history: Sequence[Operation]) -> list[Operation]:
    """Calls that never returned, timed out or failed with anything but exists/not_found."""
    return sorted(
        (op for op in history if not succeeded(op) and error_of(op) not in EXPECTED_ERRORS),
        key=lambda op: op.call,
    )


def error_of(op: Operation) -> str:
    """What went wrong with a call: its error code, or `lost` if it never returned."""
    if op.ret is None or op.output is UNKNOWN:
        return "lost"
    return str(op.output[1]) if op.output[0] == "error" else ""


def lost_writes(ops: Sequence[Operation], final: list[tuple[str, str]] | None) -> list[Operation]:
    """Acknowledged inserts and updates missing from the final list with nothing in flight
    after them on their title that could explain it: a successful or pending insert,
    update or delete of the same title, or delete_tasks, that had not returned before the
    write was called."""
    if final is None:
        return []  # the client is gone: the checker judges that
    present = set(final)
    lost = []
    for write in ops:
        if write.input["op"] not in ("insert_task", "update_task") or not succeeded(write):
            continue
        task = (write.input["title"], write.input["description"])
        if task in present:
            continue
        if not any(_may_follow(other, write) for other in ops if other is not write):
            lost.append(write)
    return lost


def _may_follow(other: Operation, write: Operation) -> bool:
    """Whether `other` may have taken effect after `write` and changed its task."""
    if other.input["op"] not in WRITES:
        return False
    if other.input["op"] != "delete_tasks" and other.input.get("title") != write.input["title"]:
        return False
    if not (succeeded(other) or other.pending or error_of(other) == "timeout"):
        return False
    return other.ret is None or other.ret > write.call or error_of(other) == "timeout"


def availability(history: Sequence[Operation], duration: float) -> list[Second]:
    """Per second of the run: successes (by when they returned), failures (by when they
    returned, or were called if they never did), and the successes' latency."""
    count = max(1, math.ceil(duration))
    ok = [0] * count
    errors = [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    for op in history:
        if succeeded(op):
            index = _second(op.ret or 0.0, count)
            ok[index] += 1
            latencies[index].append((op.ret or 0.0) - op.call)
        elif error_of(op) not in EXPECTED_ERRORS:
            errors[_second(op.ret if op.ret is not None else op.call, count)] += 1
    return [
        Second(s, ok[s], errors[s], _quantile(latencies[s], 0.5), _quantile(latencies[s], 0.99))
        for s in range(count)
    ]


def _second(at: float, count: int) -> int:
    return min(count - 1, max(0, int(at)))


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def violation(cid: str, ops: Sequence[Operation], result: Result) -> Violation:
    """The smallest part of the history that shows what went wrong: the operations on the
    client's key from a little before the call the checker could not place in time
    until just after it returned (the checker's own explanation comes with them)."""
    example = result.counterexample
    window: list[Operation] = list(ops)
    if example is not None:
        pivot = example.deadline
        start = pivot.call - WINDOW_BEFORE
        end = (pivot.ret if pivot.ret is not None else pivot.call) + WINDOW_AFTER
        window = [op for op in ops if op.call <= end and (op.ret is None or op.ret >= start)]
    window.sort(key=lambda op: op.call)
    return Violation(cid, result.verdict, result.explain(shown=WINDOW_MOST), tuple(window[-200:]))


def describe(op: Operation) -> dict[str, Any]:
    """An operation for a table: times, the call, what came of it."""
    args = [str(op.input[k]) for k in ("title", "description") if k in op.input]
    if op.ret is None or op.output is UNKNOWN:
        outcome = "no answer"
    elif op.output[0] == "ok":
        result = op.output[1]
        tasks = result.get("tasks") if isinstance(result, dict) else None
        outcome = (
            "ok"
            if tasks is None
            else "ok " + ", ".join(f"{t['title']}={t['description']}" for t in tasks)
        )
    else:
        outcome = f"error {op.output[1]}"
    return {
        "process": op.client,
        "call": op.call,
        "ret": op.ret,
        "op": " ".join([op.input["op"], *args]),
        "cid": cid_of(op),
        "outcome": outcome,
    }
