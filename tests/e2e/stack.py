"""A small real deployment for end-to-end tests: Mosquitto, two client portals, an admin portal.

In `ring` storage it adds the cache ring and, when asked for replica groups,
their replicas (durable mode): `start_stack(..., storage="ring",
replica_groups=1, replicas=3)`. Every piece is a real `taskring` process on
free ports, with its files under the test's tmp path; the `processes`
fixture stops them all at teardown. `Stack.kill` and `Stack.restart` let a
test crash a replica or a cache node with SIGKILL and bring it back with the
same command line and data directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.adapters.broker_logins import STATUS_LOGIN, broker_url_for
from backend.adapters.settings import BrokerAddress
from backend.processes.launch_plan import (
    BrokerPlan,
    Settings,
    plan_replicas,
    same_url_for_every_login,
)
from tests.conftest import TASKRING, Processes, free_port, port_open, start_mosquitto
from tests.support.waiting import log_text, wait_until

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


Process = subprocess.Popen[bytes]


@dataclass
class Stack:
    broker: str
    client_ports: list[int]
    admin_port: int
    admin_token: str = ADMIN_TOKEN
    env: dict[str, str] = field(default_factory=dict)
    data_dir: Path | None = None  # replicas keep their files in DATA/replicas/<group>-<member>/
    replicas: dict[str, Process] = field(default_factory=dict)  # "replica-g1-2" -> process
    cache_nodes: dict[str, Process] = field(default_factory=dict)  # "cache-node-1" -> process
    processes: Processes | None = None
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> taskring args
    logins: bool = False  # each component logs in to `taskring broker` as itself

    def env_for(self, name: str) -> dict[str, str]:
        """The environment component `name` runs with: its own broker login, if any."""
        if not self.logins:
            return self.env
        return {**self.env, "TASKRING_BROKER": self.login_url(name)}

    def login_url(self, login: str) -> str:
        assert self.data_dir is not None
        address = BrokerAddress.parse(self.broker)
        return broker_url_for(login, address.host, address.port, self.data_dir)

    def members(self, name: str) -> dict[str, Process]:
        """The table (replicas or cache nodes) that holds the process called `name`."""
        for table in (self.replicas, self.cache_nodes):
            if name in table:
                return table
        raise KeyError(f"no replica or cache node called {name!r} in this stack")

    def kill(self, name: str) -> None:
        """SIGKILL a replica or cache node (no goodbye, nothing flushed) and reap it."""
        process = self.members(name)[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def restart(self, name: str) -> Process:
        """Start `name` again with its command line and data (killing it first if it runs)."""
        assert self.processes is not None
        if self.members(name)[name].poll() is None:
            self.kill(name)
        process = self.processes.taskring(*self.commands[name], name=name, env=self.env_for(name))
        self.members(name)[name] = process
        return process

    def client_env(self, cid: str = "", token: str = "", port_index: int = 0) -> dict[str, str]:
        return {
            "TASKRING_PORTAL": f"127.0.0.1:{self.client_ports[port_index]}",
            "TASKRING_CID": cid,
            "TASKRING_TOKEN": token,
        }

    def admin_env(self) -> dict[str, str]:
        return {
            "TASKRING_ADMIN_PORTAL": f"127.0.0.1:{self.admin_port}",
            "TASKRING_ADMIN_TOKEN": self.admin_token,
        }

    def serves_writes(self) -> bool:
        """Every portal answers a request that needs the storage behind it."""
        return run_cli("admin", "--json", "list", env=self.admin_env()).returncode == 0

    def create_client(self, name: str, data: str = "") -> dict[str, Any]:
        result = run_cli("admin", "--json", "create", name, "--data", data, env=self.admin_env())
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKRING_")}
    return subprocess.run(
        [TASKRING, *args],
        env={**base, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def client_round_trip(
    admin_portal: str,
    admin_token: str,
    client_portal: str,
    sign_in_timeout: float = 10.0,
    alive: Iterable[subprocess.Popen[bytes]] = (),
) -> dict[str, str]:
    """As a user would, through the CLIs: create a client at `admin_portal`, wait until
    it can sign in at `client_portal` (the record crosses the ring), add a task and list
    it. The client's environment, for more calls."""
    admin_env = {"TASKRING_ADMIN_TOKEN": admin_token, "TASKRING_ADMIN_PORTAL": admin_portal}
    created = run_cli("admin", "--json", "create", "Alice", env=admin_env)
    assert created.returncode == 0, created.stderr
    client = json.loads(created.stdout)
    client_env = {
        "TASKRING_CID": client["cid"],
        "TASKRING_TOKEN": client["token"],
        "TASKRING_PORTAL": client_portal,
    }
    wait_until(
        lambda: run_cli("client", "list", env=client_env).returncode == 0,
        f"the new client to sign in at {client_portal}",
        timeout=sign_in_timeout,
        alive=alive,
    )
    added = run_cli("client", "add", "buy milk", "2 litres", env=client_env)
    assert added.returncode == 0, added.stderr
    listed = run_cli("client", "--json", "list", env=client_env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["tasks"] == [{"title": "buy milk", "description": "2 litres"}]
    return client_env


def start_stack(
    processes: Processes,
    tmp_path: Path,
    client_portals: int = 2,
    storage: str = "local",
    cache_nodes: int = 4,
    replica_groups: int = 0,
    replicas: int = 3,
    logins: tuple[str, ...] | None = None,
) -> Stack:
    """Mosquitto, the cache ring in `ring` storage (with `replica_groups` groups of
    `replicas` replicas behind it when replica_groups > 0), client portals and an admin
    portal.

    With `logins`, Mosquitto runs as `taskring up` runs it (`taskring broker`: a login
    and an ACL per component), every component logs in as itself, and the broker also
    knows the extra `logins` (for a test that plays a component); `Stack.broker` is then
    the `status` login's URL. Without, Mosquitto lets anyone in."""
    if replica_groups and storage != "ring":
        raise ValueError(f"replica groups need storage='ring', not {storage!r}")
    data = tmp_path / "data"
    broker = start_mosquitto(processes, tmp_path) if logins is None else ""
    env = {
        "TASKRING_BROKER": broker,
        "TASKRING_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKRING_STORAGE": storage,
    }
    stack = Stack(broker, [], 0, env=env, data_dir=data, processes=processes)
    if storage == "ring":
        stack.commands.update(replica_commands(replica_groups, replicas, data))
        stack.commands.update(cache_node_commands(cache_nodes, replica_groups, replicas))
    portal_names = [f"client-portal-{n}" for n in range(1, client_portals + 1)]
    if logins is not None:
        every = [*stack.commands, *portal_names, "admin-portal-1", *logins]
        port, _ = start_taskring_broker(processes, data, "--logins", ",".join(every))
        stack.logins = True
        stack.broker = broker_url_for(STATUS_LOGIN, "127.0.0.1", port, data)
        stack.env["TASKRING_BROKER"] = stack.broker
    for name, args in stack.commands.items():
        table = stack.replicas if name.startswith("replica-") else stack.cache_nodes
        table[name] = processes.taskring(*args, name=name, env=stack.env_for(name))
    client_ports = [free_port() for _ in range(client_portals)]
    admin_port = free_port()
    portals = []
    for number, port in enumerate(client_ports, 1):
        portal = processes.taskring(
            "client-portal",
            "--id",
            f"client-portal-{number}",
            "--listen",
            f"127.0.0.1:{port}",
            name=f"client-portal-{number}",
            env=stack.env_for(f"client-portal-{number}"),
        )
        portals.append(portal)
    admin = processes.taskring(
        "admin-portal",
        "--id",
        "admin-portal-1",
        "--listen",
        f"127.0.0.1:{admin_port}",
        "--data-dir",
        str(tmp_path / "data"),
        name="admin-portal-1",
        env=stack.env_for("admin-portal-1"),
    )
    for port, portal in zip([*client_ports, admin_port], [*portals, admin], strict=True):
        wait_until(
            functools.partial(port_open, port),
            f"a portal listening on {port}",
            timeout=20,
            alive=[portal],
        )
    stack.client_ports, stack.admin_port = client_ports, admin_port
    what = f"the {storage} storage" + (" with its replica groups" if replica_groups else "")
    wait_until(
        stack.serves_writes, f"{what} to take requests", timeout=60 if replica_groups else 30
    )
    return stack


def replica_commands(groups: int, replicas: int, data: Path) -> dict[str, tuple[str, ...]]:
    """`taskring replica` for every member of groups g1..g<groups>: the command lines
    `taskring up` uses (the broker URL travels in the environment)."""
    settings = Settings(data_dir=data, storage="ring", replica_groups=groups, replicas=replicas)
    plan = BrokerPlan(False, same_url_for_every_login("mqtt://unused"), "test")
    return {spec.name: spec.args for spec in plan_replicas(settings, plan)}


def cache_node_commands(nodes: int, groups: int, replicas: int) -> dict[str, tuple[str, ...]]:
    """`taskring cache-node` for each node; the first may found the ring. Memory-only nodes
    (groups == 0) get no replica flags: that is the standalone command's default."""
    durable = ("--replica-groups", str(groups), "--replicas", str(replicas)) if groups else ()
    commands = {}
    for number in range(1, nodes + 1):
        args: tuple[str, ...] = ("cache-node", "--id", f"cache-node-{number}")
        if number == 1:
            args += ("--bootstrap",)
        commands[f"cache-node-{number}"] = args + durable
    return commands


def start_taskring_broker(
    processes: Processes, data: Path, *flags: str, env: dict[str, str] | None = None
) -> tuple[int, subprocess.Popen[bytes]]:
    """`taskring broker` (Mosquitto with a login and an ACL per component) on a free
    port, with its files in `data`; returns its port and process."""
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}", "--data-dir", str(data))
    process = processes.taskring("broker", *listen, *flags, name="broker", env=env)
    wait_until(lambda: port_open(port) or process.poll() is not None, "the broker to listen")
    assert process.poll() is None, log_text(process)
    return port, process
