"""Client histories recorded under load through real client portals, and their check.

`Load` runs workers that talk to the client portals as any client does: raw
TCP, one JSON line per request (docs/protocol.md, Client protocol). Each worker belongs to
one client (CID) and draws titles from a small set shared with that client's
other workers, so their operations collide: inserts meet `exists`, deletes
meet `not_found`, updates race each other and `delete_tasks` clears them all.
Descriptions are unique, so a list shows which of two racing updates won.

Every call is recorded as a backend/sim/linearizability.py `Operation`, in
the shape TaskBagModel reads: the input is the key-value operation
(`{"op", "cid" (int), "title", "description"}`), the output `("ok", result)`
or `("error", code)`, the times are time.monotonic() just before the request
is written and just after its answer is read. The outcome rules:

- `timeout` is recorded as answered; the model makes it pending (it may take
  effect at any time after the call, or never).
- `unavailable` is recorded as answered; the model drops it (not applied).
- a dropped connection, or no answer within ANSWER_DEADLINE (the portal
  answers within its own 5 s request timeout), is an operation that never
  returned: `ret=None`, output UNKNOWN. The worker then continues as a new
  process number, as a crashed client would.

- `unauthorized` (to `auth` or to an operation) can only mean that the portal's
  check of the token read the client's record and found none (tokens never
  change here): it is recorded as that read, a list_tasks answering
  `not_found`, so the checker judges it like any other read.
- `internal`, `bad_request` and `too_large` are answers no correct system
  gives here: they go to `Load.problems`, and the call counts as unknown.

After any error but `exists` and `not_found`, and after a lost answer, the
worker drops its connection and reconnects through the next portal.

`check_histories` checks each client's history with `check(...)` and, on
failure, writes the history and the explanation under a directory and raises
AssertionError with the explanation. Both `taskring chaos` and the real-process
fault tests (tests/e2e/test_linearizable_faults.py) record through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.chaos.waiting import eventually
from backend.sim.linearizability import (
    UNKNOWN,
    BagState,
    Operation,
    Result,
    TaskBagModel,
    check,
)

ANSWER_DEADLINE = 12.0  # the portal itself gives up after 5 s; past this the line is dead
CONNECT_DEADLINE = 3.0
RECONNECT_PAUSE = 0.05  # between attempts to reach a portal that refused or dropped us
DRAIN_SECONDS = 6.0  # how long stop() lets calls in flight finish before abandoning them
TITLES = ("a", "b", "c", "d")
# How often each operation is drawn; reads and writes in about equal measure.
MIX = (
    ("insert_task", 30),
    ("update_task", 20),
    ("delete_task", 15),
    ("list_tasks", 30),
    ("delete_tasks", 5),
)
REFUSED = "unauthorized"
WRONG_CODES = frozenset({"internal", "bad_request", "too_large"})
RECONNECT_CODES = frozenset({"timeout", "unavailable", REFUSED}) | WRONG_CODES
CLIENT_WITHOUT_TASKS = BagState(True, ())
NO_CLIENT_FOUND = ("error", "not_found")


@dataclass(frozen=True)
class Account:
    """A client the load acts for: its CID (16 hex digits) and token."""

    cid: str
    token: str

    @property
    def key(self) -> int:
        return int(self.cid, 16)


class Dropped(Exception):
    """The connection closed, failed, or sent no answer in time: outcome unknown."""


class Line:
    """One TCP connection to a client portal, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ids = itertools.count(1)

    @classmethod
    async def open(cls, port: int) -> Line:
        try:
            async with asyncio.timeout(CONNECT_DEADLINE):
                return cls(*await asyncio.open_connection("127.0.0.1", port))
        except (OSError, TimeoutError) as exc:
            raise Dropped(f"cannot connect to port {port}: {exc!r}") from exc

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; its answer (events are skipped), or raise Dropped."""
        request_id = next(self.ids)
        try:
            self.writer.write(json.dumps({"id": request_id, **request}).encode() + b"\n")
            async with asyncio.timeout(ANSWER_DEADLINE):
                await self.writer.drain()
                while True:
                    line = await self.reader.readline()
                    if not line.endswith(b"\n"):
                        raise Dropped("the portal closed the connection")
                    answer = json.loads(line)
                    if "ok" in answer:
                        break
        except (OSError, TimeoutError, ValueError) as exc:
            raise Dropped(f"no answer: {exc!r}") from exc
        if answer.get("id") != request_id:
            raise Dropped(f"answer {answer!r} carries the wrong id (expected {request_id})")
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def wire_request(op: dict[str, Any]) -> dict[str, Any]:
    """The protocol request for a key-value operation (the CID as 16 hex digits)."""
    return {**op, "cid": f"{op['cid']:016x}"}


def error_code(answer: dict[str, Any] | None) -> str | None:
    """The error code of an answer; None for a success or no answer."""
    if answer is None or answer.get("ok"):
        return None
    return (answer.get("error") or {}).get("code")


def outcome(answer: dict[str, Any]) -> tuple[str, Any]:
    """A protocol answer as the model's output: ("ok", result) or ("error", code)."""
    if answer.get("ok"):
        return "ok", {k: v for k, v in answer.items() if k not in ("id", "ok", "trace")}
    return "error", (answer.get("error") or {}).get("code")


@dataclass
class Load:
    """Concurrent workers on every account through every portal, recording a history."""

    ports: list[int]
    accounts: Sequence[Account]
    workers_per_account: int = 4
    seed: int = 1
    history: list[Operation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)  # cid -> `unauthorized` answers

    def __post_init__(self) -> None:
        self._processes = itertools.count(1)
        self._descriptions = itertools.count(1)
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._started = 0.0

    # ---- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (again, after a stop: the history goes on)."""
        assert not self._workers, "the load is already running"
        self._stopping = asyncio.Event()
        self._started = time.monotonic()
        self._workers = [
            asyncio.create_task(self._worker(account, slot))
            for account in self.accounts
            for slot in range(self.workers_per_account)
        ]

    async def ran_for(self, seconds: float) -> None:
        """Let the load run until `seconds` after it started: the load's duration."""
        remaining = self._started + seconds - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), remaining)

    async def stop(self) -> None:
        """Stop the workers: calls in flight get DRAIN_SECONDS to finish, then are abandoned
        (recorded as never having returned)."""
        self._stopping.set()
        workers, self._workers = self._workers, []
        if not workers:
            return
        _, late = await asyncio.wait(workers, timeout=DRAIN_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for task in workers:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def run(self, seconds: float, stop: asyncio.Event | None = None) -> None:
        """Start, run for `seconds` or until `stop` is set, whichever comes first, stop."""
        self.start()
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(self.ran_for(seconds))]
        if stop is not None:
            waiters.append(asyncio.create_task(stop.wait()))
        _, others = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in others:
            waiter.cancel()
        await self.stop()

    async def final_reads(self, deadline: float = 30.0) -> dict[str, list[tuple[str, str]] | None]:
        """A list of every account through every portal, retried until it succeeds; the
        reads join the history, so the check holds them to every acknowledged write.
        Returns each account's tasks as the first portal listed them; None when the
        portal refused the client (`unauthorized`: it said the client is gone)."""
        reads = [(a, i) for a in self.accounts for i in range(len(self.ports))]
        finals = await asyncio.gather(*(self._read_until_ok(a, i, deadline) for a, i in reads))
        return {a.cid: tasks for (a, i), tasks in zip(reads, finals, strict=True) if i == 0}

    async def _read_until_ok(
        self, account: Account, port_index: int, deadline: float
    ) -> list[tuple[str, str]] | None:
        give_up = time.monotonic() + deadline
        process = next(self._processes)
        last = "nothing tried"
        refusals = self.refusals[account.cid]
        while time.monotonic() < give_up:
            line = await self._connect(account, port_index, process)
            if self.refusals[account.cid] > refusals:
                return None  # recorded as a read that found no client: the check judges it
            if line is None:
                await self._pause(stoppable=False)
                last = "no connection"
                continue
            op = {"op": "list_tasks", "cid": account.key}
            answer, _ = await self._call(line, process, op)
            line.close()
            if answer is not None and answer.get("ok"):
                return [(t["title"], t["description"]) for t in answer["tasks"]]
            if error_code(answer) == REFUSED:
                return None
            last = repr(answer)
            process = next(self._processes)
            await self._pause(stoppable=False)
        raise AssertionError(
            f"client {account.cid} could not be read through port "
            f"{self.ports[port_index]} within {deadline}s after the load (last: {last})"
        )

    # ---- one worker ------------------------------------------------------------------

    async def _worker(self, account: Account, slot: int) -> None:
        rng = random.Random(f"{self.seed}/{account.cid}/{slot}")
        port_index = slot
        process = next(self._processes)
        line: Line | None = None
        try:
            while not self._stopping.is_set():
                if line is None:
                    line = await self._connect(account, port_index, process)
                    if line is None:
                        port_index += 1
                        await self._pause()
                        continue
                answer, pending = await self._call(line, process, self._draw(rng, account))
                if pending:
                    process = next(self._processes)  # a client that lost track starts afresh
                if answer is None or error_code(answer) in RECONNECT_CODES:
                    line.close()
                    line, port_index = None, port_index + 1
        finally:
            if line is not None:
                line.close()

    def _draw(self, rng: random.Random, account: Account) -> dict[str, Any]:
        name = rng.choices([n for n, _ in MIX], [w for _, w in MIX])[0]
        op: dict[str, Any] = {"op": name, "cid": account.key}
        if name in ("insert_task", "update_task", "delete_task"):
            op["title"] = rng.choice(TITLES)
        if name in ("insert_task", "update_task"):
            op["description"] = f"d{next(self._descriptions)}"
        return op

    async def _connect(self, account: Account, port_index: int, process: int) -> Line | None:
        """A connection authenticated as the account, or None (try again later)."""
        port = self.ports[port_index % len(self.ports)]
        try:
            line = await Line.open(port)
            call = time.monotonic()
            answer = await line.call({"op": "auth", "cid": account.cid, "token": account.token})
        except Dropped:
            return None
        if answer.get("ok"):
            return line
        line.close()
        code = error_code(answer)
        if code == REFUSED:
            self._refused(process, call, account.key)
        elif code in WRONG_CODES:
            self.problems.append(f"auth of {account.cid} on port {port}: {answer}")
        return None

    def _refused(self, process: int, call: float, cid: int) -> None:
        """`unauthorized` for this client and its valid token: the portal's check of the
        token read the client's record and found none. Recorded as that read, so the
        checker judges it: fine before the client exists, an anomaly once it does."""
        read = {"op": "list_tasks", "cid": cid}
        self.history.append(Operation(process, call, time.monotonic(), read, NO_CLIENT_FOUND))
        self.refusals[f"{cid:016x}"] += 1

    async def _call(
        self, line: Line, process: int, op: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """Make and record one call: (the answer or None if lost, whether its outcome is
        unknown)."""
        call = time.monotonic()
        try:
            answer = await line.call(wire_request(op))
        except Dropped:
            self.history.append(Operation(process, call, None, op, UNKNOWN))
            return None, True
        except asyncio.CancelledError:
            self.history.append(Operation(process, call, None, op, UNKNOWN))
            raise
        ret = time.monotonic()
        output, code = outcome(answer), error_code(answer)
        if code == REFUSED:
            self._refused(process, call, op["cid"])  # refused at the door: not applied
            return answer, False
        if code in WRONG_CODES:
            self.problems.append(f"{op} on port {line_port(line)}: {answer}")
            self.history.append(Operation(process, call, None, op, UNKNOWN))
            return answer, True
        self.history.append(Operation(process, call, ret, op, output))
        return answer, output == ("error", "timeout")

    async def _pause(self, stoppable: bool = True) -> None:
        """A moment between retries; a stop cuts it short for the workers, not for the
        final reads (which run after the stop and must not spin)."""
        if not stoppable:
            await asyncio.sleep(RECONNECT_PAUSE)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), RECONNECT_PAUSE)

    # ---- what happened ---------------------------------------------------------------

    def by_client(self) -> dict[str, list[Operation]]:
        parts: dict[str, list[Operation]] = {a.cid: [] for a in self.accounts}
        for op in self.history:
            parts[f"{op.input['cid']:016x}"].append(op)
        return parts

    def first_success_after(
        self, since: float, cid: str | None = None, writes: bool = False
    ) -> float | None:
        """When the first successful call (on `cid`; a write) made at or after `since`
        returned."""
        returns = [
            op.ret
            for op in self.history
            if op.ret is not None  # as _succeeded says; spelt out for the type checker
            and op.call >= since
            and _succeeded(op)
            and (cid is None or op.input["cid"] == int(cid, 16))
            and not (writes and op.input["op"] == "list_tasks")
        ]
        return min(returns, default=None)

    async def served_again(
        self, since: float, cid: str | None, timeout: float, writes: bool = False
    ) -> float:
        """Seconds from `since` until a call (on `cid`; a write) made after it succeeded."""
        what = f"a successful {'write' if writes else 'call'}{' on ' + cid if cid else ''}"
        found = await eventually(
            lambda: self.first_success_after(since, cid, writes), f"{what} after the fault", timeout
        )
        return found - since

    def longest_gap(self, start: float, end: float) -> float:
        """The longest stretch within [start, end] in which no call returned success."""
        returns = sorted(
            op.ret
            for op in self.history
            if op.ret is not None and _succeeded(op) and start <= op.ret <= end
        )
        edges = [start, *returns, end]
        return max(b - a for a, b in itertools.pairwise(edges))

    def summary(self) -> str:
        """Counts by operation and outcome, for a person."""
        counts: Counter[str] = Counter()
        for op in self.history:
            if op.ret is None:
                counts["lost"] += 1
            else:
                counts[op.output[0] if op.output[0] == "ok" else op.output[1]] += 1
        shown = ", ".join(f"{name} {count}" for name, count in counts.most_common())
        return f"{len(self.history)} calls ({shown})"

    def acknowledged_writes(self) -> int:
        return sum(1 for op in self.history if op.input["op"] != "list_tasks" and _succeeded(op))


def _succeeded(op: Operation) -> bool:
    return op.ret is not None and op.output is not UNKNOWN and op.output[0] == "ok"


def line_port(line: Line) -> int | str:
    peer = line.writer.get_extra_info("peername")
    return peer[1] if peer else "?"


# ---- checking --------------------------------------------------------------------------


def check_histories(
    load: Load,
    directory: Path,
    initial: BagState = CLIENT_WITHOUT_TASKS,
    timeout_s: float = 60.0,
) -> dict[str, Result]:
    """Check every client's history; on any failure write the history and the
    explanation under `directory` and raise AssertionError with the explanations."""
    results, failures = linearizability_failures(load, directory, initial, timeout_s)
    if failures:
        raise AssertionError("\n\n".join(failures))
    return results


def linearizability_failures(
    load: Load,
    directory: Path,
    initial: BagState = CLIENT_WITHOUT_TASKS,
    timeout_s: float = 60.0,
) -> tuple[dict[str, Result], list[str]]:
    """Every client's check result, and for each one that is not linearizable (or
    undecided) a readable failure naming the file its history was written to.
    Times are shown in seconds from the load's first call."""
    origin = min((op.call for op in load.history), default=0.0)
    results: dict[str, Result] = {}
    failures: list[str] = []
    for cid, ops in load.by_client().items():
        ops = [_rebased(op, origin) for op in ops]
        result = check(ops, TaskBagModel(initial), timeout_s)
        results[cid] = result
        if not result.ok:
            saved = write_history(directory, cid, ops, result)
            failures.append(f"client {cid}: {result.explain()}\n(history and explanation: {saved})")
    return results, failures


def _rebased(op: Operation, origin: float) -> Operation:
    ret = None if op.ret is None else round(op.ret - origin, 6)
    return replace(op, call=round(op.call - origin, 6), ret=ret)


def write_history(directory: Path, cid: str, ops: Sequence[Operation], result: Result) -> Path:
    """The history, one operation a line in call order, then the explanation."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"history-{cid}.txt"
    lines = [result.explain(shown=60), "", f"{len(ops)} operations, in call order:"]
    for op in sorted(ops, key=lambda o: o.call):
        ret = "..." if op.ret is None else f"{op.ret:9.4f}"
        output = "?" if op.output is UNKNOWN else json.dumps(op.output)
        lines.append(f"p{op.client:<4} [{op.call:9.4f}, {ret}] {json.dumps(op.input)} -> {output}")
    path.write_text("\n".join(lines) + "\n")
    return path
