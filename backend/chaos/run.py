"""One chaos run: set up clients, record the workload while the nemesis strikes, read every
client at the end, judge, and write the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from backend.admin_pb import admin_pb2
from backend.bench.targets.taskring_admin import AdminPortals, grpc_target
from backend.chaos import report, schedule, summary
from backend.chaos.announce import Announcer
from backend.chaos.injectors import FaultEvent, Injectors
from backend.chaos.nemesis import run_plan
from backend.chaos.recorder import Account, Load
from backend.chaos.roles import Roles
from backend.chaos.system import HOST, System, SystemUnreachable
from backend.chaos.verdict import Verdict, judge, rebased

READY_DEADLINE = 60.0
UNREACHABLE_AFTER = 5.0  # seconds without any answer from the web process
ADMIN_TIMEOUT = 10.0
SETUP_ATTEMPTS = 20
NEMESIS_GRACE = 25.0  # seconds past the run a kill may still wait for its victim
FINAL_READS_DEADLINE = 30.0


class SetupFailed(Exception):
    """The system could not be prepared for the run (not ready, no admin portal...)."""


@dataclass
class RunOptions:
    duration: float
    kinds: list[str]
    seed: int
    report_dir: Path
    clients: int = 3
    workers: int = 4
    admin_token: str | None = None
    json_path: Path | None = None


@dataclass
class Outcome:
    verdict: Verdict
    events: list[FaultEvent]
    report_path: Path
    facts: list[str] = field(default_factory=list)
    json_path: Path | None = None


async def wait_ready(system: System, deadline: float = READY_DEADLINE) -> None:
    """Until /readyz says ready; SystemUnreachable when nothing answers for a while."""
    started = time.monotonic()
    answered = False
    while time.monotonic() < started + deadline:
        ready = await system.ready()
        if ready:
            return
        answered = answered or ready is not None
        if not answered and time.monotonic() > started + UNREACHABLE_AFTER:
            raise SystemUnreachable(f"no web process answers at {system.web} (give --web)")
        await asyncio.sleep(0.2)
    raise SetupFailed(f"{system.web}/readyz did not say ready within {deadline:.0f}s")


async def create_clients(system: System, count: int, token: str | None) -> list[Account]:
    """`count` new clients, named afresh so their histories start from no tasks."""
    token = token or system.admin_token()
    if not token:
        raise SetupFailed(
            f"no admin token: give --admin-token, or --data-dir where `taskring up` keeps it "
            f"({system.data_dir} holds none)"
        )
    ports = await system.ports("admin-portal")
    if not ports:
        raise SetupFailed("the web process lists no admin portal")
    portals = AdminPortals([grpc_target(HOST, p) for p in ports], token, ADMIN_TIMEOUT)
    await portals.connect()
    run_id = secrets.token_hex(4)
    try:
        return [await _create(portals, f"chaos-{run_id}-{n}") for n in range(count)]
    finally:
        await portals.close()


async def _create(portals: AdminPortals, name: str) -> Account:
    last = ""
    for attempt in range(SETUP_ATTEMPTS):
        try:
            client = await portals.stub(attempt).CreateClient(
                admin_pb2.CreateClientRequest(name=name, data="made by taskring chaos"),
                metadata=portals.metadata,
                timeout=ADMIN_TIMEOUT,
            )
            return Account(client.cid, client.token)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise SetupFailed(
                    f"the admin portal refused the admin token: {exc.details()}"
                ) from None
            last = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.25)
    raise SetupFailed(f"could not create client {name}: {last}")


def broker_ports(system: System) -> set[int]:
    found = system.broker()
    return found[1] if found else set()


async def chaos_run(system: System, options: RunOptions, say: Callable[[str], None]) -> Outcome:
    plan = schedule.plan(options.seed, options.duration, options.kinds)
    await wait_ready(system)
    accounts = await create_clients(system, options.clients, options.admin_token)
    client_ports = await system.ports("client-portal")
    if not client_ports:
        raise SetupFailed("the web process lists no client portal")
    load = Load(client_ports, accounts, options.workers, options.seed)
    roles = Roles(system, accounts[0], random.Random(f"taskring-chaos-roles/{options.seed}"))
    injectors = Injectors(system, broker_ports(system))
    say(f"seed {options.seed}: {len(plan)} faults over {options.duration:g}s")
    for fault in plan:
        say(f"  planned: {fault.describe()}")
    events = [FaultEvent(fault) for fault in plan]
    announcer = await Announcer.open(system, say)
    announcer.listen(events)
    origin = time.monotonic()
    load.start()
    nemesis = asyncio.create_task(run_plan(events, origin, roles, injectors, say))
    try:
        await load.ran_for(options.duration)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(nemesis), NEMESIS_GRACE)
    finally:
        if not nemesis.done():
            nemesis.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nemesis
        await load.stop()
        await announcer.close()
    problems = list(load.problems)
    finals: dict[str, list[tuple[str, str]] | None] = {a.cid: None for a in accounts}
    try:
        finals = await load.final_reads(FINAL_READS_DEADLINE)
    except AssertionError as exc:
        problems.append(f"the final reads failed: {exc}")
    ended = time.monotonic()  # the final reads are drawn too
    say(f"load: {load.summary()}; checking")
    duration = max(options.duration, ended - origin)
    verdict = await asyncio.to_thread(
        judge, rebased(load.history, origin), finals, duration, problems
    )
    injected = sum(1 for e in events if e.injected)
    say(f"faults injected: {injected} of {len(events)} planned")
    facts = [
        f"faults injected: {injected} of {len(events)} planned",
        f"seed {options.seed}, faults {','.join(options.kinds)}, {options.duration:g}s "
        f"of load by {len(accounts)} clients x {options.workers} workers "
        f"through {len(client_ports)} portals",
        f"system: {system.web} (data directory {system.data_dir})",
        f"load: {load.summary()}",
    ]
    bands = [band(e, origin) for e in events]
    path = write_report(
        options.report_dir, options.seed, report.render(verdict, bands, duration, facts)
    )
    if options.json_path is not None:
        result = summary.summary(
            verdict, events, origin, options.seed, options.kinds, duration, str(path)
        )
        write_json(options.json_path, result)
    return Outcome(verdict, events, path, facts, options.json_path)


def band(event: FaultEvent, origin: float) -> report.Band:
    fault = event.planned
    return report.Band(
        kind=fault.kind,
        role=fault.role,
        target=event.target,
        option=fault.option,
        start=None if event.start is None else round(event.start - origin, 3),
        end=None if event.heal is None else round(event.heal - origin, 3),
        notes="; ".join(event.notes),
    )


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def write_report(directory: Path, seed: int, page: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = directory / f"chaos-{stamp}-seed{seed}.html"
    path.write_text(page)
    return path
