"""`taskring broker config|cluster --kind rabbitmq`, in process: files, commands, errors."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from backend.adapters import broker_logins
from backend.processes import rabbitmq_cluster
from backend.processes.broker import broker
from tests.conftest import free_port


def run(*args: str) -> Result:
    return CliRunner().invoke(broker, list(args), catch_exceptions=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_writes_private_files_and_prints_each_node_s_command(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    result = run(
        "config", "--kind", "rabbitmq", "--hosts", "mq1,mq2,mq3", "--data-dir", str(data),
        "--out", str(out), "--logins", "client-portal-7",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(f.name for f in out.iterdir())
    assert names == [
        "definitions.json", "enabled_plugins", "rabbit-1.conf", "rabbit-2.conf", "rabbit-3.conf",
    ]  # fmt: skip
    assert all(mode(f) == 0o600 for f in out.iterdir())
    passwords = broker_logins.component_logins(broker_logins.load_credentials(data))
    assert {"status", "web-1", "cache-node-1", "client-portal-7"} <= set(passwords)
    definitions = json.loads((out / "definitions.json").read_text())
    assert {user["name"] for user in definitions["users"]} == set(passwords)
    conf = (out / "rabbit-2.conf").read_text()
    assert f"load_definitions = {(out / 'definitions.json').resolve()}" in conf
    assert "cluster_formation.classic_config.nodes.3 = rabbit-3@mq3" in conf
    for number in (1, 2, 3):
        assert f"RABBITMQ_NODENAME=rabbit-{number}@mq{number} " in result.output
    assert "RABBITMQ_DIST_PORT=25672 rabbitmq-server" in result.output


def test_config_on_one_machine_names_the_nodes_on_localhost_with_ports_apart(tmp_path: Path):
    data = tmp_path / "data"
    result = run("config", "--kind", "rabbitmq", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    conf = (data / "broker" / "rabbitmq" / "rabbit-3.conf").read_text()
    assert "mqtt.listeners.tcp.default = 1885" in conf
    assert "listeners.tcp.default = 127.0.0.1:5674" in conf
    assert "RABBITMQ_NODENAME=rabbit-3@localhost" in result.output
    assert "RABBITMQ_DIST_PORT=25674" in result.output


def test_cluster_without_rabbitmq_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rabbitmq_cluster, "rabbitmq_script", lambda _name: None)
    result = CliRunner().invoke(
        broker, ["cluster", "--kind", "rabbitmq", "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code != 0
    assert "rabbitmq-server not found" in result.output
    assert "apt-get install rabbitmq-server" in result.output


def test_a_login_a_routing_key_cannot_carry_is_refused_before_any_password(tmp_path: Path):
    data = tmp_path / "data"
    result = CliRunner().invoke(
        broker,
        ["config", "--kind", "rabbitmq", "--data-dir", str(data), "--logins", "cache-node-a.b"],
    )
    assert result.exit_code != 0
    assert "'.'" in result.output
    assert "cache-node-a.b" not in broker_logins.load_credentials(data)


def test_running_nodes_come_from_cluster_status_json() -> None:
    done = rabbitmq_cluster.subprocess.CompletedProcess(
        [], 0, json.dumps({"running_nodes": ["rabbit-1@localhost", "rabbit-2@localhost"]}), ""
    )
    assert rabbitmq_cluster.running_nodes(done) == ["rabbit-1@localhost", "rabbit-2@localhost"]
    failed = rabbitmq_cluster.subprocess.CompletedProcess([], 69, "", "nodedown")
    assert rabbitmq_cluster.running_nodes(failed) == []


def test_cluster_with_a_taken_port_is_a_clear_error_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rabbitmq_cluster, "rabbitmq_script", lambda name: f"/bin/{name}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            broker,
            [
                "cluster", "--kind", "rabbitmq", "--data-dir", str(tmp_path / "data"),
                "--mqtt-ports", str(port), "--amqp-ports", str(free_port()),
                "--dist-ports", str(free_port()),
            ],
        )  # fmt: skip
    assert result.exit_code != 0
    assert f"node 1 cannot listen on port {port} (MQTT)" in result.output
    assert "--mqtt-ports" in result.output
    assert not (tmp_path / "data" / "broker" / "rabbitmq").exists()
