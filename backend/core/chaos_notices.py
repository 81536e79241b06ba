"""The faults `taskring chaos` announces on the bus, as the web process keeps them for the
cluster page. Pure: messages and times in, the summary out.

`taskring chaos` publishes a notice on topics.CHAOS_EVENTS when a fault strikes
(`injected`), heals (`healed`) or cannot strike (`skipped`); `id` ties the notices of
one fault together, `at` is the chaos process's wall-clock time of the change (for
display only). A fault is active from `injected` until `healed`; one whose healing
notice never comes (the chaos process died) stops counting as active after
ACTIVE_AT_MOST seconds, measured on the receiver's clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

INJECTED, HEALED, SKIPPED = "injected", "healed", "skipped"
STATES = (INJECTED, HEALED, SKIPPED)
KEPT = 20  # faults remembered for the page, the newest
ACTIVE_AT_MOST = 120.0  # seconds; past any fault's length (a kill waits 20 s at most)
MAX_TEXT = 200  # characters kept of each text field


class NoticeError(ValueError):
    """A message on the chaos topic that is not a fault notice."""


@dataclass(frozen=True)
class Notice:
    id: str
    state: str
    kind: str
    role: str
    target: str
    option: str
    at: float  # the sender's wall-clock time (seconds since the epoch)
    reason: str = ""

    @classmethod
    def from_wire(cls, message: Any) -> Notice:
        if not isinstance(message, dict):
            raise NoticeError("a notice is a map")
        state = message.get("state")
        if state not in STATES:
            raise NoticeError(f"state must be one of {', '.join(STATES)}")
        at = message.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise NoticeError("at must be a number of seconds")
        texts = {}
        for name in ("id", "kind", "role", "target", "option", "reason"):
            value = message.get(name, "")
            if not isinstance(value, str):
                raise NoticeError(f"{name} must be a string")
            texts[name] = value[:MAX_TEXT]
        if not texts["id"] or not texts["kind"]:
            raise NoticeError("id and kind must not be empty")
        return cls(state=state, at=float(at), **texts)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "kind": self.kind,
            "role": self.role,
            "target": self.target,
            "option": self.option,
            "at": self.at,
            "reason": self.reason,
        }


@dataclass
class _Fault:
    notice: Notice  # the first one heard
    received: float  # the receiver's clock when it was first heard
    injected_at: float | None = None
    healed_at: float | None = None
    skipped: str = ""


class ChaosNotices:
    """The latest KEPT faults heard of, each with when it struck and healed."""

    def __init__(self) -> None:
        self._faults: OrderedDict[str, _Fault] = OrderedDict()

    def observe(self, message: Any, now: float) -> None:
        """Take in one message from the chaos topic; NoticeError if it is not a notice."""
        notice = Notice.from_wire(message)
        fault = self._faults.get(notice.id)
        if fault is None:
            fault = self._faults[notice.id] = _Fault(notice, now)
            while len(self._faults) > KEPT:
                self._faults.popitem(last=False)
        if notice.state == INJECTED:
            fault.injected_at = notice.at
        elif notice.state == HEALED:
            fault.healed_at = notice.at
        else:
            fault.skipped = notice.reason or "skipped"

    def summary(self, now: float) -> dict[str, list[dict[str, Any]]]:
        """`active`: faults struck and not healed; `recent`: every fault kept, newest first."""
        entries = [self._entry(f, now) for f in reversed(self._faults.values())]
        return {"active": [e for e in entries if e["active"]], "recent": entries}

    @staticmethod
    def _entry(fault: _Fault, now: float) -> dict[str, Any]:
        notice = fault.notice
        active = (
            fault.injected_at is not None
            and fault.healed_at is None
            and now - fault.received < ACTIVE_AT_MOST
        )
        return {
            "id": notice.id,
            "kind": notice.kind,
            "role": notice.role,
            "target": notice.target,
            "option": notice.option,
            "injected_at": fault.injected_at,
            "healed_at": fault.healed_at,
            "skipped": fault.skipped or None,
            "active": active,
        }
