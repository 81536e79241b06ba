"""Fault notices from `taskring chaos`, as the web process keeps them for the cluster page."""

from __future__ import annotations

from typing import Any

import pytest

from backend.core.chaos_notices import ACTIVE_AT_MOST, KEPT, ChaosNotices, Notice, NoticeError


def notice(state: str, fault: str = "run-0", at: Any = 1000.0, **more: Any) -> dict[str, Any]:
    base = {"id": fault, "state": state, "kind": "pause", "role": "owner",
            "target": "cache-node-2", "option": "", "at": at}  # fmt: skip
    return {**base, **more}


def test_a_fault_is_active_from_injected_to_healed() -> None:
    notices = ChaosNotices()
    notices.observe(notice("injected", at=1000.0), now=5.0)
    active = notices.summary(6.0)["active"]
    assert [(f["id"], f["target"], f["injected_at"]) for f in active] == [
        ("run-0", "cache-node-2", 1000.0)
    ]
    notices.observe(notice("healed", at=1003.0), now=8.0)
    summary = notices.summary(9.0)
    assert summary["active"] == []
    assert summary["recent"][0]["healed_at"] == 1003.0


def test_a_skipped_fault_is_never_active_and_says_why() -> None:
    notices = ChaosNotices()
    notices.observe(notice("skipped", reason="no netem"), now=1.0)
    summary = notices.summary(1.0)
    assert summary["active"] == [] and summary["recent"][0]["skipped"] == "no netem"


def test_a_fault_never_healed_stops_being_active_after_a_while() -> None:
    notices = ChaosNotices()
    notices.observe(notice("injected"), now=0.0)
    assert notices.summary(ACTIVE_AT_MOST - 1)["active"]
    assert not notices.summary(ACTIVE_AT_MOST + 1)["active"]


def test_only_the_newest_faults_are_kept_newest_first() -> None:
    notices = ChaosNotices()
    for number in range(KEPT + 5):
        notices.observe(notice("injected", fault=f"f{number}"), now=0.0)
    recent = notices.summary(0.0)["recent"]
    assert len(recent) == KEPT and recent[0]["id"] == f"f{KEPT + 4}"


@pytest.mark.parametrize(
    "message",
    [
        "text",
        notice("broken"),
        notice("injected", at="soon"),
        notice("injected", at=float("nan")),
        notice("injected", id=""),
        notice("injected", target=7),
    ],
)
def test_what_is_not_a_notice_is_refused(message: Any) -> None:
    with pytest.raises(NoticeError):
        ChaosNotices().observe(message, now=0.0)


def test_a_notice_goes_to_the_wire_and_back() -> None:
    sent = Notice("r-1", "healed", "kill", "leader", "g1-2", "", 12.5, "")
    assert Notice.from_wire(sent.to_wire()) == sent
