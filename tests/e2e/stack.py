"""A small real deployment for end-to-end tests: Mosquitto, two client portals, an admin portal.

Every piece is a real `taskring` process on free ports; the `processes`
fixture stops them all at teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import TASKRING, Processes, free_port, port_open, start_mosquitto, wait_until

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@dataclass
class Stack:
    broker: str
    client_ports: list[int]
    admin_port: int
    admin_token: str = ADMIN_TOKEN
    env: dict[str, str] = field(default_factory=dict)

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


def start_stack(
    processes: Processes,
    tmp_path: Path,
    client_portals: int = 2,
    storage: str = "local",
    cache_nodes: int = 4,
) -> Stack:
    """Mosquitto, the cache ring in `ring` storage, client portals and an admin portal."""
    broker = start_mosquitto(processes, tmp_path)
    env = {
        "TASKRING_BROKER": broker,
        "TASKRING_ADMIN_TOKEN": ADMIN_TOKEN,
        "TASKRING_STORAGE": storage,
    }
    if storage == "ring":
        for number in range(1, cache_nodes + 1):
            bootstrap = ["--bootstrap"] if number == 1 else []
            processes.taskring(
                "cache-node",
                "--id",
                f"cache-node-{number}",
                *bootstrap,
                name=f"cache-node-{number}",
                env=env,
            )
    client_ports = [free_port() for _ in range(client_portals)]
    admin_port = free_port()
    for number, port in enumerate(client_ports, 1):
        processes.taskring(
            "client-portal",
            "--id",
            f"client-portal-{number}",
            "--listen",
            f"127.0.0.1:{port}",
            name=f"client-portal-{number}",
            env=env,
        )
    processes.taskring(
        "admin-portal",
        "--id",
        "admin-portal-1",
        "--listen",
        f"127.0.0.1:{admin_port}",
        "--data-dir",
        str(tmp_path / "data"),
        name="admin-portal-1",
        env=env,
    )
    for port in [*client_ports, admin_port]:
        wait_until(lambda port=port: port_open(port), f"a portal listening on {port}", timeout=20)
    stack = Stack(broker, client_ports, admin_port, env=env)
    wait_until(stack.serves_writes, f"the {storage} storage to take requests", timeout=30)
    return stack
