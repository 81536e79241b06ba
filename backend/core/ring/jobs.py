"""A request a cache node's key holding answers, and its answer.

Shared by both ways of holding keys (key_holding.py's MemoryKeys and the durable
module's DurableKeys), so that memory-only holding need not import the durable module
to speak of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.core.replica.state_machine import Operation, OpResult


@dataclass(slots=True)
class Job:
    """One request to answer: `context` is the caller's, handed back in Finished."""

    context: Any
    op: Operation
    since: float


@dataclass(frozen=True, slots=True)
class Finished:
    job: Job
    result: OpResult  # state_machine's op result: {"ok", "result", "events"} or {"ok", "error"}
    group: str
