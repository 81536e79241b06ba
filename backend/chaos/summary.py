"""The machine-readable result of a chaos run (`--json FILE`). Pure: the verdict and the
fault events in, a JSON-ready dict out.

Times are seconds after the workload's start. A fault that never struck has no `start`
and says why in `skipped` (or `failed`); `struck` counts, per kind asked for, the faults
that were actually injected, so a test can tell a fault that ran from one merely planned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.chaos.injectors import FaultEvent
from backend.chaos.verdict import Verdict
from backend.sim.linearizability import LINEARIZABLE

SKIPPED, FAILED = "skipped: ", "failed: "


def fault_entry(event: FaultEvent, origin: float) -> dict[str, Any]:
    fault = event.planned
    return {
        "kind": fault.kind,
        "role": fault.role,
        "option": fault.option,
        "target": event.target or None,
        "planned_at": fault.at,
        "planned_seconds": fault.seconds,
        "start": None if event.start is None else round(event.start - origin, 3),
        "heal": None if event.heal is None else round(event.heal - origin, 3),
        "skipped": _note(event, SKIPPED),
        "failed": _note(event, FAILED),
        "notes": list(event.notes),
    }


def _note(event: FaultEvent, prefix: str) -> str | None:
    found = [n[len(prefix) :] for n in event.notes if n.startswith(prefix)]
    return found[0] if found else None


def struck(events: Sequence[FaultEvent], kinds: Sequence[str]) -> dict[str, int]:
    """Per kind asked for, how many of its faults were injected (0 for none)."""
    counts = dict.fromkeys(kinds, 0)
    for event in events:
        if event.injected:
            counts[event.planned.kind] = counts.get(event.planned.kind, 0) + 1
    return counts


def summary(
    verdict: Verdict,
    events: Sequence[FaultEvent],
    origin: float,
    seed: int,
    kinds: Sequence[str],
    duration: float,
    report_path: str,
) -> dict[str, Any]:
    return {
        "verdict": "PASS" if verdict.passed else "FAIL",
        "line": verdict.line(),
        "seed": seed,
        "kinds": list(kinds),
        "duration": round(duration, 3),
        "report": report_path,
        "faults": [fault_entry(e, origin) for e in events],
        "struck": struck(events, kinds),
        "counts": {
            "operations": verdict.operations,
            "failed_calls": len(verdict.failed),
            "clients": len(verdict.clients),
            "clients_not_linearizable": sum(
                1 for v in verdict.clients.values() if v != LINEARIZABLE
            ),
            "lost_writes": len(verdict.lost_writes),
            "problems": len(verdict.problems),
            "faults_planned": len(events),
            "faults_injected": sum(1 for e in events if e.injected),
        },
        "clients": dict(verdict.clients),
        "violations": [{"cid": v.cid, "verdict": v.verdict} for v in verdict.violations],
    }
