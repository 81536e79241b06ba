"""taskring spread over three hosts, each a network namespace with its own NATS node.

The test builds the hosts itself: three network namespaces joined by veth pairs to
a bridge in the root namespace, one address each in a private /24. Each host runs
one node of a NATS cluster (files from `taskring broker config --hosts ...`) and
some of taskring's components, started one by one with the single-component
commands as docs/operating.md "Many hosts" shows, each with its own login and its
own host's node. The test, from the root namespace through the bridge, creates a
client through the admin portal on host 2, adds and lists tasks through the client
portal on host 3, and asks the web process on host 1 for /readyz. Nothing is
shared between the hosts but the network: a message between components on
different hosts crosses the NATS routes.

It needs root (namespaces, veths, a bridge) and `ip`; CI runs as root.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backend.adapters.broker_logins import STATUS_LOGIN, broker_url_for, load_credentials
from backend.adapters.bus.probe import CONNACK_ACCEPTED, probe_broker
from backend.processes.nats_cluster import nats_binary
from tests.conftest import TASKRING, Processes
from tests.e2e.stack import client_round_trip, run_cli
from tests.support.processes import LoggedProcess
from tests.support.waiting import wait_until

IP = shutil.which("ip")
NATS = nats_binary()

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and a bridge need root"),
    pytest.mark.skipif(IP is None, reason="`ip` (iproute2) is not installed"),
    pytest.mark.skipif(NATS is None, reason="nats-server is not installed"),
]

HOSTS = 3
MQTT_PORT = 1883
CLIENT_PORT = 7001
ADMIN_PORT = 50051
WEB_PORT = 8000
ADMIN_TOKEN = "many-hosts-admin-token-0123456789"


@dataclass(frozen=True)
class Network:
    """The hosts' namespaces and addresses; host n (1-based) is index n-1."""

    namespaces: tuple[str, ...]
    addresses: tuple[str, ...]

    def namespace(self, host: int) -> str:
        return self.namespaces[host - 1]

    def address(self, host: int) -> str:
        return self.addresses[host - 1]


def ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)


def ip_quietly(*args: str) -> None:
    """Teardown: whatever is already gone stays gone."""
    assert IP is not None
    subprocess.run([IP, *args], capture_output=True, timeout=10)


@pytest.fixture
def network(processes: Processes) -> Iterator[Network]:
    """Three namespaces on a bridge, named after this process so parallel runs do not
    collide; the processes are stopped before the namespaces and bridge go away."""
    pid = os.getpid()
    subnet = f"10.213.{pid % 250}"
    bridge = f"trb{pid}"
    namespaces = tuple(f"taskring-{pid}-h{n}" for n in range(1, HOSTS + 1))
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for n, namespace in enumerate(namespaces, start=1):
            outside, inside = f"trv{pid}h{n}", f"trp{pid}h{n}"
            ip("netns", "add", namespace)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", outside, "master", bridge, "up")
            ip("link", "set", inside, "netns", namespace)
            ip("-n", namespace, "link", "set", inside, "name", "eth0")
            ip("-n", namespace, "addr", "add", f"{subnet}.{n}/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        yield Network(namespaces, tuple(f"{subnet}.{n}" for n in range(1, HOSTS + 1)))
    finally:
        processes.stop_all()
        for namespace in namespaces:
            ip_quietly("netns", "delete", namespace)  # takes its veth pair along
        ip_quietly("link", "delete", bridge)


def on_host(
    processes: Processes,
    network: Network,
    host: int,
    args: list[str],
    name: str,
    env: dict[str, str] | None = None,
) -> LoggedProcess:
    """Run `args` inside host `host`'s namespace; `ip netns exec` execs, so the pid the
    fixture stops is the program's own."""
    assert IP is not None
    return processes.start([IP, "netns", "exec", network.namespace(host), *args], name, env)


def start_nats(processes: Processes, network: Network, tmp_path: Path) -> Path:
    """One NATS node per host from `taskring broker config`; the data directory holding
    every login's password once each node lets a login in."""
    data = tmp_path / "data"
    written = run_cli(
        "broker", "config",
        "--hosts", ",".join(network.addresses),
        "--data-dir", str(data),
        "--out", str(tmp_path / "nats-conf"),
        "--store-dir", str(tmp_path / "jetstream"),
        env={},
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert NATS is not None
    nodes = [
        on_host(
            processes,
            network,
            host,
            [NATS, "-c", str(tmp_path / "nats-conf" / f"taskring-{host}.conf")],
            f"nats-{host}",
        )
        for host in range(1, HOSTS + 1)
    ]
    password = load_credentials(data)[STATUS_LOGIN]

    def lets_status_in(address: str) -> bool:
        answer = probe_broker(address, MQTT_PORT, STATUS_LOGIN, password, timeout=1.0)
        return answer == CONNACK_ACCEPTED

    for host in range(1, HOSTS + 1):
        wait_until(
            functools.partial(lets_status_in, network.address(host)),
            f"the NATS node on host {host} to let a login in",
            timeout=30,
            interval=0.2,
            alive=nodes,
        )
    return data


def start_component(
    processes: Processes,
    network: Network,
    data: Path,
    host: int,
    login: str,
    *args: str,
) -> LoggedProcess:
    """`taskring <args>` on `host` as component `login`, through that host's own node;
    the URL with its password goes in the environment, as the operating guide says."""
    url = broker_url_for(login, network.address(host), MQTT_PORT, data)
    return on_host(
        processes,
        network,
        host,
        [TASKRING, *args],
        login,
        env={"TASKRING_BROKER": url, "TASKRING_STORAGE": ""},
    )


def deployment(network: Network, tmp_path: Path) -> list[tuple[int, str, list[str]]]:
    """(host, login, the command after `taskring`) of each component: a replica of g1 on
    every host; the cache node and web process on host 1; the admin portal on 2; the
    client portal on 3. Each listens on its own host's address."""
    address = network.address
    replicas = [
        (host, f"replica-g1-{host}", ["replica", "--group", "g1", "--member", str(host)])
        for host in range(1, HOSTS + 1)
    ]
    for host, _, command in replicas:
        command += ["--data-dir", str(tmp_path / f"host-{host}")]
    cache_node = ["cache-node", "--bootstrap", "--join-wait", "0.5"]
    cache_node += ["--replica-groups", "1", "--replicas", str(HOSTS)]
    web = ["web", "--listen", f"{address(1)}:{WEB_PORT}"]
    web += ["--allow-portals", f"{address(3)}:{CLIENT_PORT},{address(2)}:{ADMIN_PORT}"]
    admin = ["admin-portal", "--storage", "ring", "--listen", f"{address(2)}:{ADMIN_PORT}"]
    admin += ["--data-dir", str(tmp_path / "host-2")]  # its admin-token
    client = ["client-portal", "--storage", "ring", "--listen", f"{address(3)}:{CLIENT_PORT}"]
    others = [
        (1, "cache-node-1", cache_node),
        (1, "web-1", web),
        (2, "admin-portal-1", admin),
        (3, "client-portal-1", client),
    ]
    return replicas + [(host, login, [*command, "--id", login]) for host, login, command in others]


def test_taskring_on_three_hosts_with_a_nats_node_each(
    network: Network, processes: Processes, tmp_path: Path
):
    data = start_nats(processes, network, tmp_path)
    host_2 = tmp_path / "host-2"
    host_2.mkdir()
    (host_2 / "admin-token").write_text(ADMIN_TOKEN)
    started = [
        start_component(processes, network, data, host, login, *command)
        for host, login, command in deployment(network, tmp_path)
    ]

    web = f"http://{network.address(1)}:{WEB_PORT}"
    answers: list[httpx.Response] = []

    def ready() -> bool:
        answers.append(httpx.get(f"{web}/readyz", timeout=2))
        return answers[-1].status_code == 200

    what = "the web process on host 1 to report the cluster ready"
    try:
        wait_until(ready, what, timeout=40, interval=0.2, alive=started)
    except AssertionError as exc:
        said = answers[-1].text if answers else "nothing"
        raise AssertionError(f"{exc}; /readyz said last: {said}") from None

    # The admin portal's write reaches the client portal on another host through the ring.
    client_round_trip(
        f"{network.address(2)}:{ADMIN_PORT}",
        ADMIN_TOKEN,
        f"{network.address(3)}:{CLIENT_PORT}",
        alive=started,
    )

    still = httpx.get(f"{web}/readyz", timeout=2)
    assert still.status_code == 200, still.text
