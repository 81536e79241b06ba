"""The whole system the way a user runs it: `taskring up`, the CLIs, the web endpoints.

`taskring up` runs with its defaults here: ring storage, four cache nodes and
one replica group of three replicas behind them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.adapters.settings import BrokerAddress
from tests.conftest import free_port, port_open
from tests.e2e.stack import run_cli
from tests.support.waiting import log_text, wait_until


def children_of(pid: int) -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return {int(line) for line in result.stdout.split()}


def descendants_of(pid: int) -> set[int]:
    found = set()
    frontier = [pid]
    while frontier:
        for child in children_of(frontier.pop()):
            found.add(child)
            frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def broker_user(pid: int) -> str | None:
    """Who the process logs in to the broker as, from the TASKRING_BROKER it was given."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    url = dict(pair.split("=", 1) for pair in pairs if "=" in pair)["TASKRING_BROKER"]
    return BrokerAddress.parse(url).username


def pid_listening_on(port: int) -> int | None:
    """The pid of the process that owns the listening socket on this port (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


@pytest.fixture
def system(processes, tmp_path):
    ports: dict[str, Any] = {
        "client": [free_port(), free_port()],
        "admin": [free_port(), free_port()],
        "web": free_port(),
        "broker": free_port(),
    }
    data = tmp_path / "data"
    up = processes.taskring(
        "up",
        "--data-dir",
        str(data),
        "--broker-port",
        str(ports["broker"]),
        "--client-ports",
        ",".join(map(str, ports["client"])),
        "--admin-ports",
        ",".join(map(str, ports["admin"])),
        "--web-port",
        str(ports["web"]),
        name="up",
        env={"TASKRING_ADMIN_TOKEN": "", "TASKRING_BROKER": "", "TASKRING_STORAGE": ""},
    )
    web = f"http://127.0.0.1:{ports['web']}"

    def ready() -> bool:
        return httpx.get(f"{web}/readyz", timeout=2).status_code == 200

    try:
        wait_until(ready, "the system to report ready on /readyz", timeout=60, interval=0.2)
    except AssertionError:
        raise AssertionError(log_text(up)[-5000:]) from None
    return {"up": up, "ports": ports, "web": web, "data": data}


def test_a_newcomer_creates_a_client_and_manages_tasks_on_both_portals(system) -> None:
    token = (system["data"] / "admin-token").read_text().strip()
    # The banner follows the supervisor's own /readyz check, a moment after ours.
    wait_until(lambda: token in log_text(system["up"]), "taskring up to print the admin token")
    admin_env = {
        "TASKRING_ADMIN_TOKEN": token,
        "TASKRING_ADMIN_PORTAL": f"127.0.0.1:{system['ports']['admin'][1]}",
    }
    created = run_cli("admin", "--json", "create", "Alice", "--data", "hi", env=admin_env)
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    first, second = (
        {
            "TASKRING_CID": client["cid"],
            "TASKRING_TOKEN": client["token"],
            "TASKRING_PORTAL": f"127.0.0.1:{port}",
        }
        for port in system["ports"]["client"]
    )

    def authenticated_everywhere() -> bool:
        return all(run_cli("client", "list", env=e).returncode == 0 for e in (first, second))

    wait_until(authenticated_everywhere, "the new client on both client portals", timeout=5)
    assert run_cli("client", "add", "buy milk", "2 litres", env=first).returncode == 0

    def listed_on_second() -> list:
        result = run_cli("client", "--json", "list", env=second)
        return json.loads(result.stdout)["tasks"] if result.returncode == 0 else []

    tasks = wait_until(listed_on_second, "the task on the other portal", timeout=1.0)
    assert tasks == [{"title": "buy milk", "description": "2 litres"}]

    metrics = httpx.get(f"{system['web']}/metrics", timeout=5).text
    wait_until(
        lambda: 'op="insert_task"' in httpx.get(f"{system['web']}/metrics", timeout=5).text,
        "the insert to show in /metrics",
        timeout=5,
    )
    assert "taskring_requests_total" in metrics
    cluster = httpx.get(f"{system['web']}/api/cluster", timeout=5).json()
    kinds = sorted(p["kind"] for p in cluster["portals"])
    assert kinds == ["admin-portal", "admin-portal", "client-portal", "client-portal"]
    assert httpx.get(f"{system['web']}/healthz", timeout=5).json() == {"status": "ok"}
    the_replica_group_runs_behind_the_ring(system)


def the_replica_group_runs_behind_the_ring(system) -> None:
    """Group g1's three replicas run as processes of their own, each logs in as itself, keep
    their files in DATA/replicas/, have a leader; every cache node is told of the group."""
    data = system["data"]
    children = json.loads((data / "pids.json").read_text())["children"]
    replicas = sorted(name for name in children if name.startswith("replica-"))
    assert replicas == ["replica-g1-1", "replica-g1-2", "replica-g1-3"]
    for member, name in enumerate(replicas, 1):
        pid = children[name]
        assert cmdline(pid)[-9:] == [
            "replica", "--group", "g1", "--member", str(member),
            "--members", "1,2,3", "--data-dir", str(data.resolve()),
        ]  # fmt: skip
        assert broker_user(pid) == name
        assert (data / "replicas" / f"g1-{member}").is_dir()
    for name in (f"cache-node-{n}" for n in range(1, 5)):
        assert cmdline(children[name])[-4:] == ["--replica-groups", "1", "--replicas", "3"]

    def g1_led() -> dict | None:
        groups = httpx.get(f"{system['web']}/api/cluster", timeout=5).json()["replica_groups"]
        return groups[0] if [g["id"] for g in groups] == ["g1"] and groups[0]["leader"] else None

    group = wait_until(g1_led, "/api/cluster to show group g1 with a leader", timeout=5)
    assert sorted(m["id"] for m in group["members"]) == ["g1-1", "g1-2", "g1-3"]
    assert group["leader"] in {"g1-1", "g1-2", "g1-3"}
    shown = run_cli("status", "--web", system["web"], env={})
    assert shown.returncode == 0, shown.stderr
    assert "Storage: ring: 4 cache nodes, 1 replica group" in shown.stdout
    rows = [
        line.split()
        for line in shown.stdout.splitlines()[shown.stdout.splitlines().index("Replica groups") :]
    ]
    assert sorted(r[1] for r in rows if r[:1] == ["g1"]) == ["g1-1", "g1-2", "g1-3"]
    assert sum(r[2] == "leader" for r in rows if r[:1] == ["g1"]) == 1


def test_a_killed_portal_is_restarted_and_ctrl_c_leaves_no_process(system) -> None:
    up = system["up"]
    port = system["ports"]["client"][0]
    victim = pid_listening_on(port)
    assert victim is not None and victim in descendants_of(up.pid)
    os.kill(victim, signal.SIGKILL)

    def restarted() -> bool:
        pid = pid_listening_on(port)
        return pid is not None and pid != victim

    wait_until(restarted, "the client portal to be restarted", timeout=20, interval=0.1)
    family = descendants_of(up.pid)
    assert len(family) >= 13, family  # broker, 3 replicas, 4 cache nodes, 4 portals, web
    up.send_signal(signal.SIGINT)
    assert up.wait(20) == 0, log_text(up)[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in family), "every child to exit", timeout=5)
    assert not port_open(port)


def test_a_full_restart_keeps_the_admin_token_and_every_client_and_task(system, processes) -> None:
    path = system["data"] / "admin-token"
    token = path.read_text().strip()
    assert len(token) >= 22 and path.stat().st_mode & 0o777 == 0o600
    admin_env = {
        "TASKRING_ADMIN_TOKEN": token,
        "TASKRING_ADMIN_PORTAL": f"127.0.0.1:{system['ports']['admin'][0]}",
    }
    created = run_cli("admin", "--json", "create", "Restart", env=admin_env)
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    client_env = {
        "TASKRING_CID": client["cid"],
        "TASKRING_TOKEN": client["token"],
        "TASKRING_PORTAL": f"127.0.0.1:{system['ports']['client'][0]}",
    }
    for n in range(5):
        added = run_cli("client", "add", f"task {n}", f"kept {n}", env=client_env)
        assert added.returncode == 0, added.stderr
    assert run_cli("client", "delete", "task 2", env=client_env).returncode == 0
    system["up"].send_signal(signal.SIGINT)
    assert system["up"].wait(20) == 0
    again = processes.taskring(
        "up",
        "--data-dir",
        str(system["data"]),
        "--broker-port",
        str(system["ports"]["broker"]),
        "--client-ports",
        ",".join(map(str, system["ports"]["client"])),
        "--admin-ports",
        ",".join(map(str, system["ports"]["admin"])),
        "--web-port",
        str(system["ports"]["web"]),
        name="up-again",
        env={"TASKRING_ADMIN_TOKEN": "", "TASKRING_BROKER": "", "TASKRING_STORAGE": ""},
    )
    wait_until(lambda: token in log_text(again), "the same admin token printed again", timeout=30)
    assert path.read_text().strip() == token
    listed = run_cli("admin", "--json", "list", env=admin_env)
    assert listed.returncode == 0, listed.stderr
    assert client["cid"] in listed.stdout
    tasks = run_cli("client", "--json", "list", env=client_env)
    assert tasks.returncode == 0, tasks.stderr
    assert json.loads(tasks.stdout)["tasks"] == [
        {"title": f"task {n}", "description": f"kept {n}"} for n in (0, 1, 3, 4)
    ]
