"""`taskring broker config` and `taskring broker cluster`, in process: files, flags, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from backend.adapters import broker_logins, nats_config
from backend.processes import nats_cluster
from backend.processes.broker import broker
from tests.conftest import free_port


def run(*args: str) -> Result:
    return CliRunner().invoke(broker, list(args), catch_exceptions=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_writes_one_private_file_per_node_with_every_login(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    args = ("config", "--nodes", "3", "--hosts", "n1,n2,n3", "--data-dir", str(data))
    result = run(*args, "--out", str(out), "--logins", "client-portal-7")
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["taskring-1.conf", "taskring-2.conf", "taskring-3.conf"]
    assert all(mode(f) == 0o600 for f in files)
    assert "node 2: " in result.output and "(MQTT mqtt://n2:1883)" in result.output
    passwords = broker_logins.load_credentials(data)
    assert {"status", "web-1", "cache-node-1", "replica-g1-3", "client-portal-7"} <= set(passwords)
    body = "\n".join(line for line in files[0].read_text().splitlines() if not line.startswith("#"))
    config = json.loads(body)
    users = {user["user"]: user["password"] for user in config["authorization"]["users"]}
    assert users == broker_logins.component_logins(passwords)
    assert config["jetstream"]["store_dir"].endswith("/broker/nats/jetstream/taskring-1")
    assert Path(config["jetstream"]["store_dir"]).is_absolute()

    # Run again: the same passwords and route password, so nodes configured apart agree.
    before = [f.read_text() for f in files]
    assert run(*args, "--out", str(out), "--logins", "client-portal-7").exit_code == 0
    assert [f.read_text() for f in files] == before
    assert mode(data / "broker" / "nats" / "route-password") == 0o600


def test_config_defaults_to_the_data_directory_and_a_store_dir_flag(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run("config", "--data-dir", str(data), "--store-dir", "/var/lib/nats")
    assert result.exit_code == 0, result.output
    text = (data / "broker" / "nats" / "taskring-3.conf").read_text()
    assert '"store_dir": "/var/lib/nats/taskring-3"' in text
    assert '"listen": "127.0.0.1:1885"' in text  # the third node on one host


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--hosts", "a,b"), "2 hosts for 3 nodes"),
        (("--mqtt-ports", "1883,x"), "'1883,x' is not a port or a list of ports"),
        (("--client-ports", "0"), "ports are 1..65535"),
        (("--nodes", "0"), "--nodes"),
        (("--kind", "redis"), "--kind"),
        (("--logins", "cache-node-5,portal"), "'portal' names no component"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    data = tmp_path / "data"
    result = run("config", "--data-dir", str(data), *flags)
    assert result.exit_code == 2
    assert message in result.output
    assert not data.exists()


def test_a_login_nats_cannot_carry_is_refused_before_any_password_is_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run("config", "--data-dir", str(data), "--logins", "cache-node-a.b")
    assert result.exit_code == 1
    assert "'cache-node-a.b'" in result.output and "'.'" in result.output
    assert not broker_logins.credentials_path(data).exists()


def test_cluster_without_nats_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_cluster, "nats_binary", lambda: None)
    result = run("cluster", "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 1
    assert "install nats-server (Debian: apt-get install nats-server)" in result.output


def test_cluster_names_a_taken_port_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_cluster, "nats_binary", lambda: "/nonexistent/nats-server")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "cluster", "--nodes", "1", "--data-dir", str(tmp_path / "data"),
            "--client-ports", str(free_port()), "--cluster-ports", str(free_port()),
            "--mqtt-ports", str(port),
        )  # fmt: skip
    assert result.exit_code == 1
    assert f"node 1 cannot listen on 127.0.0.1:{port} (MQTT)" in result.output
    assert "--mqtt-ports" in result.output
    assert not (tmp_path / "data").exists()


def test_broker_help_lists_the_cluster_commands_and_keeps_its_own_options() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for text in ("--listen", "--embedded", "--no-auth", "--logins", "config", "cluster"):
        assert text in result.output


FAKE_NATS = """#!/bin/sh
# A stand-in for nats-server: notes its pid; node 2 exits with 3 when asked to.
echo $$ >> "{pids}"
case "$2" in *taskring-2.conf) [ -n "{fail}" ] && exit 3;; esac
exec sleep 30
"""


def fake_cluster(tmp_path: Path, fail: bool) -> tuple[str, nats_cluster.ClusterFiles, Path]:
    pids = tmp_path / "pids"
    binary = tmp_path / "nats-server"
    binary.write_text(FAKE_NATS.format(pids=pids, fail="yes" if fail else ""))
    binary.chmod(0o700)
    nodes = nats_config.plan_nodes(3, ["127.0.0.1"], *([free_port()] for _ in range(3)))
    configs = tuple(tmp_path / f"{node.server_name}.conf" for node in nodes)
    return str(binary), nats_cluster.ClusterFiles(nodes, configs), pids


def gone(pids: Path) -> bool:
    for pid in map(int, pids.read_text().split()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_a_node_that_exits_stops_the_others_and_gives_its_code(tmp_path: Path) -> None:
    binary, files, pids = fake_cluster(tmp_path, fail=True)
    assert nats_cluster.run_cluster(binary, files, "pw", ready_timeout=30) == 3
    assert gone(pids)


def test_a_cluster_that_never_lets_taskring_in_fails_and_stops_every_node(tmp_path: Path) -> None:
    binary, files, pids = fake_cluster(tmp_path, fail=False)
    handler = signal.getsignal(signal.SIGTERM)
    assert nats_cluster.run_cluster(binary, files, "pw", ready_timeout=0.3) == 1
    assert gone(pids)
    assert signal.getsignal(signal.SIGTERM) is handler  # ours are put back


def test_a_node_that_exits_once_the_cluster_stands_is_started_again(tmp_path: Path) -> None:
    binary, files, pids = fake_cluster(tmp_path, fail=True)
    children = [nats_cluster.start_node(binary, config) for config in files.configs]
    try:
        children[1].wait(10)
        first = children[1]
        nats_cluster.restart_exited(binary, files, children)
        assert children[1] is not first and children[0].poll() is None
        assert children[1].args == [binary, "-c", str(files.configs[1])]
    finally:
        nats_cluster.stop_children(children)
    assert gone(pids)
