"""`taskring bench` through the real binary: against a real deployment, and against its peers.

This is the smoke run that keeps the load generator from rotting: a few
seconds of each loop and workload, checked through the JSON it writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e.stack import Stack, run_cli, start_stack

SHORT = ("--warmup", "0.5", "--connections", "8", "--clients", "20", "--no-progress")


@pytest.fixture
def stack(processes, tmp_path) -> Stack:
    return start_stack(processes, tmp_path)


def stack_env(stack: Stack) -> dict[str, str]:
    return {
        "TASKRING_PORTAL": ",".join(f"127.0.0.1:{port}" for port in stack.client_ports),
        "TASKRING_ADMIN_PORTAL": f"127.0.0.1:{stack.admin_port}",
        "TASKRING_ADMIN_TOKEN": stack.admin_token,
    }


def bench(tmp_path: Path, *args: str, env: dict[str, str]) -> dict[str, Any]:
    out = tmp_path / f"bench-{len(list(tmp_path.glob('bench-*.json')))}.json"
    done = run_cli("bench", *args, *SHORT, "--json", str(out), env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    document = json.loads(out.read_text())
    assert document["command"].startswith("taskring bench ")
    assert document["machine"]["cores"] >= 1
    return document


def only_result(document: dict[str, Any]) -> dict[str, Any]:
    (result,) = document["results"]
    return result


def test_closed_loop_writes_through_both_portals(stack: Stack, tmp_path: Path) -> None:
    document = bench(tmp_path, "--workload", "write", "--duration", "3", env=stack_env(stack))
    result = only_result(document)
    assert result["target"] == "taskring"
    assert result["ops"] > 50
    assert result["errors"] == {}
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert document["parameters"]["connections"] == 8


def test_writes_and_reads_on_a_durable_ring(processes, tmp_path: Path) -> None:
    """The configuration BENCHMARKS.md measures: cache nodes in front of a replica group."""
    ring = start_stack(processes, tmp_path, storage="ring", replica_groups=1)
    for workload in ("write", "read"):
        args = ("--workload", workload, "--duration", "3")
        result = only_result(bench(tmp_path, *args, env=stack_env(ring)))
        assert result["ops"] > 50, result
        assert result["errors"] == {}, result


def test_cpu_per_operation_by_kind_of_process(processes, tmp_path: Path) -> None:
    """The CPU every process of a durable ring used per write, from the heartbeats and,
    for the local Mosquitto, from /proc."""
    ring = start_stack(processes, tmp_path, storage="ring", replica_groups=1)
    env = {**stack_env(ring), "TASKRING_BROKER": ring.broker}
    out = tmp_path / "cpu.json"
    args = ("--workload", "write", "--duration", "3", *SHORT, "--json", str(out))
    done = run_cli("bench", *args, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    cpu = only_result(json.loads(out.read_text()))["cpu"]
    assert cpu is not None, done.stdout
    by_kind = cpu["by_kind"]
    for kind in ("client-portal", "cache-node", "replica", "broker"):
        assert by_kind[kind]["ms_per_op"] > 0, cpu
    assert by_kind["replica"]["processes"] == 3
    assert cpu["ms_per_op"] >= sum(kind["ms_per_op"] for kind in by_kind.values()) - 0.01
    assert cpu["bench"]["ms_per_op"] > 0
    assert "taskring: CPU per operation" in done.stdout
    for name in ("client portals", "cache nodes", "replicas", "broker", "total"):
        assert name in done.stdout


def test_open_loop_mixed_keeps_its_rate(stack: Stack, tmp_path: Path) -> None:
    args = ("--workload", "mixed", "--keys", "zipfian", "--rate", "200", "--duration", "2")
    result = only_result(bench(tmp_path, *args, env=stack_env(stack)))
    assert result["errors"] == {}
    # 200 ops/s for 2 s; a busy machine may leave the generator slightly behind
    assert result["missed"] <= 20
    assert 300 <= result["ops"] <= 420
    assert result["target_rate"] == 200


def test_admin_workload_uses_the_grpc_portal(stack: Stack, tmp_path: Path) -> None:
    result = only_result(
        bench(tmp_path, "--workload", "admin", "--duration", "2", env=stack_env(stack))
    )
    assert result["ops"] > 20
    assert result["errors"] == {}
    listed = run_cli("admin", "--json", "list", env=stack.admin_env())
    assert "bench-client-000019" in listed.stdout


def test_an_unreachable_system_is_reported_with_exit_code_3(tmp_path: Path) -> None:
    port = free_port()
    env = {"TASKRING_PORTAL": f"127.0.0.1:{port}", "TASKRING_ADMIN_TOKEN": "x" * 30}
    done = run_cli("bench", "--duration", "1", env=env)
    assert done.returncode == 3
    assert f"no client portal at 127.0.0.1:{port}" in done.stderr
    assert "make run" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_admin_token_is_a_usage_error(tmp_path: Path) -> None:
    env = {"TASKRING_DATA_DIR": str(tmp_path / "nothing-here")}
    done = run_cli("bench", env=env)
    assert done.returncode == 2
    assert "no admin token" in done.stderr


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_compare_only_drives_the_installed_peers(tmp_path: Path) -> None:
    document = bench(tmp_path, "--compare-only", "--no-install", "--duration", "2", env={})
    measured = {result["target"]: result for result in document["results"]}
    assert "redis" in measured
    if shutil.which("etcd"):
        assert "etcd" in measured
        assert document["ratios"][0]["baseline"] == "redis"
    else:
        assert "etcd-server is not installed" in document["skipped"]["etcd"]
    for result in measured.values():
        assert result["ops"] > 20
        assert result["errors"] == {}
