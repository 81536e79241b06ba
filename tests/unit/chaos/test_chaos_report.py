"""The HTML report: one self-contained page with the fault bands, charts and tables."""

from __future__ import annotations

import re

from backend.chaos.report import Band, fitted, lanes, render
from backend.chaos.verdict import judge
from backend.sim.linearizability import Operation

CID = 0x2A
HEX = f"{CID:016x}"


def op(call: float, ret: float | None, name: str, output: object, **args: str) -> Operation:
    return Operation(1, call, ret, {"op": name, "cid": CID, **args}, output)


HISTORY = [
    op(0.1, 0.2, "insert_task", ("ok", {}), title="a", description="d1"),
    op(1.1, 1.3, "list_tasks", ("error", "timeout")),
    op(2.1, 2.2, "list_tasks", ("ok", {"tasks": [{"title": "a", "description": "d1"}]})),
]
BANDS = [
    Band("kill", "owner", "cache-node-1", "", 1.0, 2.5, "back as pid 9"),
    Band("pause", "leader", "g1-1", "", 2.0, 2.8, ""),
    Band("partition", "portal", "", "both", None, None, "skipped: no <broker>"),
]


def test_the_page_is_self_contained_and_shows_every_injected_fault_as_a_band() -> None:
    page = render(judge(HISTORY, {HEX: [("a", "d1")]}, 4), BANDS, 4, ["seed 1"])
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # no external assets
    assert page.count('class="fault-band"') == 2  # the skipped one has no band
    assert 'data-kind="kill"' in page and 'data-kind="pause"' in page
    assert "PASS:" in page and "<svg" in page
    assert "skipped: no &lt;broker&gt;" in page  # escaped
    assert "error timeout" in page  # the failed call is listed


def test_a_violation_shows_the_explanation_and_the_operations_around_it() -> None:
    lost = [HISTORY[0], op(0.5, 0.6, "list_tasks", ("ok", {"tasks": []}))]
    page = render(judge(lost, {HEX: []}, 2), [], 2)
    assert "FAIL:" in page
    assert f"Violation: CID {HEX} is not linearizable" in page
    assert f"Operations on CID {HEX} around the violation" in page
    assert "Acknowledged writes lost (1)" in page


def test_overlapping_bands_go_to_separate_lanes() -> None:
    assert lanes(BANDS[:2]) == [0, 1]
    later = Band("pause", "leader", "g1-1", "", 3.0, 4.0, "")
    assert lanes([BANDS[0], later]) == [0, 0]


def test_a_label_too_long_for_its_band_is_cut() -> None:
    assert fitted("pause g1-1", 200) == "pause g1-1"
    assert fitted("partition cache-node-3 inbound", 60).endswith("…")
    assert len(fitted("partition cache-node-3 inbound", 60)) < 10
    assert fitted("kill owner", 5) == ""
