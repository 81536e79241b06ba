"""The JSON result of a chaos run: the verdict, each fault as it struck or why not, counts."""

from __future__ import annotations

import json

from backend.chaos.injectors import FaultEvent
from backend.chaos.schedule import PlannedFault
from backend.chaos.summary import struck, summary
from backend.chaos.verdict import judge
from backend.sim.linearizability import Operation

CID = 0x2A
HEX = f"{CID:016x}"
ORIGIN = 100.0
HISTORY = [
    Operation(1, 0.1, 0.2, {"op": "insert_task", "cid": CID, "title": "a", "description": "d"},
              ("ok", {})),
]  # fmt: skip


def events() -> list[FaultEvent]:
    kill = FaultEvent(PlannedFault(2.0, "kill", "owner", 4.0), "cache-node-1", 102.1, 104.5)
    kill.notes.append("back as pid 9")
    netem = FaultEvent(PlannedFault(3.0, "netem", "leader", 2.0, "100ms/20ms"), "g1-1")
    netem.notes.append("skipped: this kernel lacks netem")
    return [kill, netem]


def test_each_fault_says_when_it_struck_and_healed_or_why_it_did_not() -> None:
    result = summary(judge(HISTORY, {HEX: [("a", "d")]}, 4), events(), ORIGIN, 7,
                     ["kill", "netem", "pause"], 4, "r.html")  # fmt: skip
    json.dumps(result)  # serialisable as it is
    assert result["verdict"] == "PASS" and result["seed"] == 7
    kill, netem = result["faults"]
    assert (kill["start"], kill["heal"], kill["skipped"]) == (2.1, 4.5, None)
    assert kill["target"] == "cache-node-1"
    assert (netem["start"], netem["skipped"]) == (None, "this kernel lacks netem")
    assert result["struck"] == {"kill": 1, "netem": 0, "pause": 0}
    counts = result["counts"]
    assert (counts["faults_planned"], counts["faults_injected"]) == (2, 1)
    assert (counts["operations"], counts["clients_not_linearizable"]) == (1, 0)


def test_a_kind_not_asked_for_but_struck_still_counts() -> None:
    assert struck(events(), []) == {"kill": 1}
