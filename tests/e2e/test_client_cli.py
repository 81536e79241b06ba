"""`taskring client` through the real binary against real portal processes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading

import pytest

from tests.conftest import TASKRING, free_port
from tests.e2e.stack import Stack, run_cli, start_stack
from tests.support.waiting import wait_until


@pytest.fixture(params=["local", "ring"])
def stack(request, processes, tmp_path) -> Stack:
    # ring as `taskring up` runs it: the cache ring in front of a 1x3 replica group
    groups = 1 if request.param == "ring" else 0
    return start_stack(processes, tmp_path, storage=request.param, replica_groups=groups)


@pytest.fixture
def alice(stack: Stack) -> dict[str, str]:
    created = stack.create_client("Alice")
    return stack.client_env(created["cid"], created["token"])


def client(*args: str, env: dict[str, str], stdin: str | None = None):
    return run_cli("client", *args, env=env, stdin=stdin)


def test_every_subcommand_works_and_json_is_parseable(stack: Stack, alice) -> None:
    assert client("add", "buy milk", "2 litres", env=alice).returncode == 0
    assert client("add", "walk dog", "-", env=alice, stdin="around the park").returncode == 0
    assert client("update", "buy milk", "3 litres", env=alice).returncode == 0
    listed = client("--json", "list", env=alice)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["tasks"] == [
        {"title": "buy milk", "description": "3 litres"},
        {"title": "walk dog", "description": "around the park"},
    ]
    human = client("list", env=alice)
    assert "buy milk" in human.stdout and "3 litres" in human.stdout
    assert client("delete", "walk dog", env=alice).returncode == 0
    cleared = client("--json", "clear", "--yes", env=alice)
    assert json.loads(cleared.stdout) == {"deleted": 1}
    assert "No tasks yet" in client("list", env=alice).stdout
    assert json.loads(
        client("--json", "ping", env={"TASKRING_PORTAL": alice["TASKRING_PORTAL"]}).stdout
    ) == {"pong": True}


def test_changes_on_one_portal_are_listed_on_the_other_within_a_second(stack: Stack) -> None:
    created = stack.create_client("Bob")
    on_first = stack.client_env(created["cid"], created["token"], port_index=0)
    on_second = stack.client_env(created["cid"], created["token"], port_index=1)
    assert client("add", "from portal one", "", env=on_first).returncode == 0

    def listed_on_second() -> bool:
        result = client("--json", "list", env=on_second)
        return result.returncode == 0 and json.loads(result.stdout)["tasks"] != []

    wait_until(listed_on_second, "the task on the second portal", timeout=1.0)


def test_errors_are_one_clear_line_with_distinct_exit_codes(stack: Stack, alice) -> None:
    client("add", "t", "", env=alice)
    cases = [
        (client("add", "t", "", env=alice), 1, "exists"),
        (client("delete", "nope", env=alice), 1, "not_found"),
        (client("update", "nope", "x", env=alice), 1, "not_found"),
        (client("add", "x" * 300, "", env=alice), 1, "bad_request"),
        (client("list", env={**alice, "TASKRING_TOKEN": "wrong"}), 4, "unauthorized"),
        (client("list", env={**alice, "TASKRING_CID": "not-a-cid"}), 1, "bad_request"),
        (client("list", env={"TASKRING_PORTAL": alice["TASKRING_PORTAL"]}), 2, "--cid"),
        (
            client("list", env={**alice, "TASKRING_PORTAL": f"127.0.0.1:{free_port()}"}),
            3,
            "no client portal",
        ),
        (client("clear", env=alice), 2, "--yes"),
    ]
    for result, code, text in cases:
        assert result.returncode == code, (result.args, result.stdout, result.stderr)
        assert text in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error:") or "Usage" in result.stderr


def test_the_client_fails_over_to_the_next_portal(stack: Stack, alice) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = {**alice, "TASKRING_PORTAL": f"{dead},127.0.0.1:{stack.client_ports[1]}"}
    assert client("add", "via failover", "", env=env).returncode == 0


def test_watch_prints_changes_made_through_the_other_portal(stack: Stack) -> None:
    created = stack.create_client("Carol")
    env = stack.client_env(created["cid"], created["token"], port_index=0)
    other = stack.client_env(created["cid"], created["token"], port_index=1)
    watcher = subprocess.Popen(
        [TASKRING, "client", "--json", "watch"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    stdout = watcher.stdout
    assert stdout is not None
    threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True).start()
    numbers = itertools.count()
    try:
        # The watch is in place once a change made now is printed: keep adding until one is.
        def first_event() -> dict | None:
            if not lines:
                client("add", f"task {next(numbers)}", "d", env=other)
            return json.loads(lines[0]) if lines else None

        event = wait_until(first_event, "a task_inserted event from watch", interval=0.2)
        assert event["event"] == "task_inserted" and event["cid"] == created["cid"]
        assert event["title"].startswith("task ") and event["description"] == "d"
    finally:
        watcher.kill()
        watcher.wait()
