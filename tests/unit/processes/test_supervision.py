"""The supervisor's pure decisions: restart delays, which broker, which children, the banner."""

from __future__ import annotations

import io
import os
from pathlib import Path

import click
import pytest

from backend.adapters.settings import BrokerAddress, ConfigError
from backend.processes.launch_plan import (
    Backoff,
    BrokerPlan,
    Settings,
    banner,
    broker_logins,
    choose_broker,
    example_commands,
    groups_without_leader,
    plan_children,
    same_url_for_every_login,
)
from backend.processes.supervisor import Supervisor, describe_exit, parse_ports

SETTINGS = Settings(data_dir=Path("/srv/taskring"), broker_port=1999, storage="local")
PASSWORDS = {login: f"pw-{login}" for login in broker_logins(SETTINGS)}


def urls_with(password: str, settings: Settings = SETTINGS) -> dict[str, str]:
    """Every planned login's URL, with `password` in each."""
    return {
        login: f"mqtt://{login}:{password}-{login}@127.0.0.1:1999"
        for login in broker_logins(settings)
    }


def test_backoff_doubles_to_ten_seconds() -> None:
    backoff = Backoff()
    delays = [backoff.after_exit(uptime=1.0) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_starts_over_after_a_stable_run() -> None:
    backoff = Backoff()
    for _ in range(5):
        backoff.after_exit(uptime=0.1)
    assert backoff.after_exit(uptime=30.0) == 0.5
    assert backoff.after_exit(uptime=29.9) == 1.0


class FakeProbe:
    """A broker that answers `accepts[user]` (5, not authorized, for others); None: none listens."""

    def __init__(self, accepts: dict[str | None, int] | None) -> None:
        self.accepts = accepts
        self.calls: list[tuple[str, int, str | None, str | None]] = []

    def __call__(self, host: str, port: int, user: str | None, password: str | None) -> int | None:
        self.calls.append((host, port, user, password))
        return None if self.accepts is None else self.accepts.get(user, 5)


def test_a_given_broker_is_used_for_every_login_without_probing() -> None:
    probe = FakeProbe({None: 0})
    plan = choose_broker("mqtt://u:p@broker:1883", SETTINGS, probe, PASSWORDS, True)
    assert not plan.start
    assert plan.url("client-portal-1") == plan.url("web-1") == "mqtt://u:p@broker:1883"
    assert probe.calls == []


def test_a_malformed_broker_url_is_rejected() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        choose_broker("http://x", SETTINGS, FakeProbe(None), {}, True)


def test_every_child_has_a_login_named_like_its_client_id() -> None:
    ring = Settings(data_dir=Path("/d"), cache_nodes=2, replica_groups=2, replicas=2)
    assert broker_logins(ring) == [
        "replica-g1-1", "replica-g1-2", "replica-g2-1", "replica-g2-2",
        "cache-node-1", "cache-node-2",
        "client-portal-1", "client-portal-2", "admin-portal-1", "admin-portal-2",
        "web-1", "status",
    ]  # fmt: skip
    assert "cache-node-1" not in broker_logins(SETTINGS)


def test_nothing_answering_starts_mosquitto_with_a_login_per_component() -> None:
    plan = choose_broker(None, SETTINGS, FakeProbe(None), PASSWORDS, True)
    assert plan.start
    for login in broker_logins(SETTINGS):
        address = BrokerAddress.parse(plan.url(login))
        assert (address.username, address.password) == (login, f"pw-{login}")
        assert (address.host, address.port) == ("127.0.0.1", 1999)


def test_a_missing_password_is_a_clear_error() -> None:
    partial = {k: v for k, v in PASSWORDS.items() if k != "web-1"}
    with pytest.raises(ConfigError, match="no broker password for web-1"):
        choose_broker(None, SETTINGS, FakeProbe(None), partial, True)


def test_nothing_answering_and_no_mosquitto_starts_the_embedded_broker() -> None:
    plan = choose_broker(None, SETTINGS, FakeProbe(None), {}, False)
    assert plan.start
    assert plan.url("client-portal-1") == "mqtt://127.0.0.1:1999"
    assert "quick start" in plan.description


def test_a_running_broker_that_knows_our_logins_is_reused_probed_as_status() -> None:
    probe = FakeProbe({"status": 0})
    plan = choose_broker(None, SETTINGS, probe, PASSWORDS, True)
    assert not plan.start
    assert BrokerAddress.parse(plan.url("web-1")).username == "web-1"
    # Probing as a component would disconnect it: the broker takes the login as client id.
    assert {user for _, _, user, _ in probe.calls} == {None, "status"}


def test_a_running_broker_that_lets_anyone_in_is_refused_unless_named() -> None:
    cases: tuple[dict[str | None, int], ...] = ({None: 0}, {None: 0, "status": 0})
    for accepts in cases:
        with pytest.raises(ConfigError) as refused:
            choose_broker(None, SETTINGS, FakeProbe(accepts), PASSWORDS, True)
        message = str(refused.value)
        assert "127.0.0.1:1999 accepts anonymous logins" in message
        assert "stop it" in message and "--broker mqtt://127.0.0.1:1999" in message
    named = choose_broker("mqtt://127.0.0.1:1999", SETTINGS, FakeProbe({None: 0}), {}, True)
    assert named.url("web-1") == "mqtt://127.0.0.1:1999"


def test_a_running_broker_that_refuses_us_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"refuses us \(not authorized\)"):
        choose_broker(None, SETTINGS, FakeProbe({}), PASSWORDS, True)


def test_children_broker_first_each_with_its_port() -> None:
    plan = BrokerPlan(True, same_url_for_every_login("mqtt://127.0.0.1:1999"), "test")
    children = plan_children(SETTINGS, plan, "admin-secret")
    assert [(c.name, c.port) for c in children] == [
        ("broker", 1999),
        ("client-portal-1", 7001),
        ("client-portal-2", 7002),
        ("admin-portal-1", 50051),
        ("admin-portal-2", 50052),
        ("web", 8000),
    ]
    assert children[0].args == (
        "broker", "--listen", "127.0.0.1:1999", "--data-dir", "/srv/taskring"
    )  # fmt: skip
    assert children[1].args == (
        "client-portal", "--id", "client-portal-1", "--listen", "127.0.0.1:7001",
        "--storage", "local",
    )  # fmt: skip
    assert children[3].args[:5] == (
        "admin-portal", "--id", "admin-portal-1", "--listen", "127.0.0.1:50051"
    )  # fmt: skip


def test_ring_storage_starts_cache_nodes_before_the_portals_and_only_one_may_found_a_ring():
    settings = Settings(data_dir=Path("/d"), storage="ring", cache_nodes=3, replica_groups=0)
    urls = urls_with("pw", settings)
    children = plan_children(settings, BrokerPlan(False, urls, "test"), "t")
    names = [c.name for c in children]
    assert names[:3] == ["cache-node-1", "cache-node-2", "cache-node-3"]
    assert names.index("client-portal-1") > 2
    assert [("--bootstrap" in c.args) for c in children[:3]] == [True, False, False]
    assert all(c.env == {"TASKRING_BROKER": urls[c.name]} for c in children[:3])
    assert all(c.args[-4:] == ("--replica-groups", "0", "--replicas", "3") for c in children[:3])
    assert not any(c.is_replica for c in children)
    assert children[3].args[-2:] == ("--storage", "ring")


def test_ring_storage_starts_every_replica_of_every_group_before_the_cache_nodes():
    settings = Settings(data_dir=Path("/d"), storage="ring", cache_nodes=2, replica_groups=2)
    urls = urls_with("pw", settings)
    children = plan_children(settings, BrokerPlan(False, urls, "test"), "t")
    names = [c.name for c in children]
    replicas = ["replica-g1-1", "replica-g1-2", "replica-g1-3"]
    replicas += ["replica-g2-1", "replica-g2-2", "replica-g2-3"]
    assert names[:8] == [*replicas, "cache-node-1", "cache-node-2"]
    assert [c.is_replica for c in children[:8]] == [True] * 6 + [False] * 2
    assert children[4].args == (
        "replica", "--group", "g2", "--member", "2", "--members", "1,2,3", "--data-dir", "/d"
    )  # fmt: skip
    assert all(c.env == {"TASKRING_BROKER": urls[c.name]} and c.port is None for c in children[:6])
    assert children[6].args == (
        "cache-node", "--id", "cache-node-1", "--bootstrap",
        "--replica-groups", "2", "--replicas", "3",
    )  # fmt: skip


def test_replica_groups_follow_the_settings_and_local_storage_starts_none():
    urls = same_url_for_every_login("mqtt://h:1")
    five = Settings(data_dir=Path("/d"), storage="ring", replica_groups=1, replicas=5)
    replicas = [c for c in plan_children(five, BrokerPlan(False, urls, "t"), "t") if c.is_replica]
    assert [c.name for c in replicas] == [f"replica-g1-{m}" for m in range(1, 6)]
    assert all(c.args[6] == "1,2,3,4,5" for c in replicas)
    local = Settings(data_dir=Path("/d"), storage="local", replica_groups=3)
    children = plan_children(local, BrokerPlan(False, urls, "t"), "t")
    assert not any(c.is_replica or c.name.startswith("cache-node") for c in children)


def test_the_supervisor_starts_broker_then_replicas_then_the_rest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, storage="ring", cache_nodes=1, replica_groups=1)
    plan = BrokerPlan(True, same_url_for_every_login("mqtt://127.0.0.1:1999"), "test")
    supervisor = Supervisor(plan_children(settings, plan, "t"), settings, io.StringIO())
    tiers = [[child.spec.name for child in tier] for tier in supervisor.tiers()]
    assert tiers[:2] == [["broker"], ["replica-g1-1", "replica-g1-2", "replica-g1-3"]]
    assert tiers[2][:2] == ["cache-node-1", "client-portal-1"]
    assert len(tiers) == 3
    memory = Settings(data_dir=tmp_path, storage="ring", replica_groups=0)
    reused = BrokerPlan(False, plan.urls, "test")
    supervisor = Supervisor(plan_children(memory, reused, "t"), memory, io.StringIO())
    assert len(supervisor.tiers()) == 1


def test_secrets_travel_in_the_environment_only() -> None:
    urls = urls_with("secret")
    children = plan_children(SETTINGS, BrokerPlan(False, urls, "test"), "admin-secret")
    assert "broker" not in [c.name for c in children]
    for child in children:
        assert not any("secret" in arg for arg in child.args), child
    by_name = {c.name: c for c in children}
    assert by_name["client-portal-1"].env == {"TASKRING_BROKER": urls["client-portal-1"]}
    assert by_name["admin-portal-2"].env == {
        "TASKRING_BROKER": urls["admin-portal-2"],
        "TASKRING_ADMIN_TOKEN": "admin-secret",
    }
    assert by_name["web"].env == {"TASKRING_BROKER": urls["web-1"]}


def test_the_web_process_may_use_exactly_the_portals_started() -> None:
    settings = Settings(data_dir=Path("/d"), client_ports=(9001,), admin_ports=(9101, 9102))
    plan = BrokerPlan(False, same_url_for_every_login("mqtt://h:1"), "test")
    [web] = [c for c in plan_children(settings, plan, "t") if c.name == "web"]
    flag = web.args.index("--allow-portals")
    assert web.args[flag + 1] == "127.0.0.1:9001,127.0.0.1:9101,127.0.0.1:9102"


def test_port_lists_decide_how_many_portals_run() -> None:
    settings = Settings(
        data_dir=Path("/d"), client_ports=(9001,), admin_ports=(9101, 9102, 9103), storage="local"
    )
    plan = BrokerPlan(False, same_url_for_every_login("mqtt://h:1"), "test")
    names = [c.name for c in plan_children(settings, plan, "t")]
    assert names == ["client-portal-1", "admin-portal-1", "admin-portal-2", "admin-portal-3", "web"]


def test_banner_shows_addresses_and_token_but_no_broker_password() -> None:
    urls = urls_with("hunter2")
    text = banner(SETTINGS, BrokerPlan(True, urls, "Mosquitto"), "the-admin-token", "new")
    for expected in (
        "http://127.0.0.1:8000",
        "127.0.0.1:7001, 127.0.0.1:7002",
        "127.0.0.1:50051, 127.0.0.1:50052",
        "mqtt://status:***@127.0.0.1:1999",
        "the-admin-token",
        "taskring admin create alice",
        "Ctrl-C",
    ):
        assert expected in text
    assert "hunter2" not in text


def test_banner_says_where_the_keys_live() -> None:
    plan = BrokerPlan(True, same_url_for_every_login("mqtt://127.0.0.1:1999"), "embedded")
    durable = Settings(data_dir=Path("/d"), storage="ring", cache_nodes=4, replica_groups=2)
    text = banner(durable, plan, "tok", "new")
    assert "ring: 4 cache nodes; 2 replica groups of 3 replicas" in text
    assert "/d/replicas" in text
    memory = Settings(data_dir=Path("/d"), storage="ring", cache_nodes=1, replica_groups=0)
    assert "ring: 1 cache node, in memory only" in banner(memory, plan, "tok", "new")
    assert "local: every portal" in banner(SETTINGS, plan, "tok", "new")
    assert not memory.durable and durable.durable and not SETTINGS.durable


def test_the_banner_waits_for_a_leader_in_every_group_started() -> None:
    settings = Settings(data_dir=Path("/d"), storage="ring", replica_groups=2)
    led = {"id": "g1", "members": [], "leader": "g1-2"}
    leaderless = {"id": "g2", "members": [], "leader": ""}
    assert groups_without_leader(settings, {"replica_groups": [led, leaderless]}) == ["g2"]
    assert groups_without_leader(settings, {"replica_groups": [led]}) == ["g2"]
    leading = {**leaderless, "leader": "g2-1"}
    assert groups_without_leader(settings, {"replica_groups": [leading, led]}) == []
    odd: object
    for odd in (None, [], {"replica_groups": "g1"}, {"replica_groups": [None, 3]}):
        assert groups_without_leader(settings, odd) == ["g1", "g2"]
    memory = Settings(data_dir=Path("/d"), storage="ring", replica_groups=0)
    assert groups_without_leader(memory, {}) == []
    assert groups_without_leader(SETTINGS, {}) == []


def test_examples_point_at_non_default_ports_and_data_dir() -> None:
    settings = Settings(data_dir=Path("/elsewhere"), client_ports=(9001,), admin_ports=(9101,))
    first = example_commands(settings, "tok")[0]
    assert first.startswith("export ")
    for part in ("TASKRING_ADMIN_PORTAL=127.0.0.1:9101", "TASKRING_ADMIN_TOKEN=tok"):
        assert part in first
    assert "TASKRING_PORTAL=127.0.0.1:9001" in first
    assert example_commands(settings, "tok")[-1] == "taskring status"
    elsewhere = Settings(data_dir=Path("data"), broker_port=1999, web_port=8001)
    assert example_commands(elsewhere, "tok")[-1] == "taskring status --web http://127.0.0.1:8001"


def test_examples_need_no_exports_with_the_defaults() -> None:
    settings = Settings(data_dir=Path("data"))
    assert not example_commands(settings, "tok")[0].startswith("export")


def test_parse_ports() -> None:
    assert parse_ports("7001, 7002", "--client-ports") == (7001, 7002)
    for bad in ("", "70a1", "0", "70000"):
        with pytest.raises(click.BadParameter):
            parse_ports(bad, "--client-ports")


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_up_keeps_its_logs_private_whatever_the_umask(tmp_path: Path) -> None:
    from backend.processes.supervisor import Output

    previous = os.umask(0o022)
    try:
        logs = tmp_path / "data" / "logs"
        output = Output(logs, ["replica-g1-1"], io.StringIO())
        log_file = output.open_log("replica-g1-1")
        output.line("replica-g1-1", b"a task title", log_file)
        log_file.close()
    finally:
        os.umask(previous)
    assert logs.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (logs / "replica-g1-1.log").stat().st_mode & 0o777 == 0o600


def test_every_taskring_command_runs_with_a_private_umask() -> None:
    from click.testing import CliRunner

    from backend.cli.main import main

    previous = os.umask(0o022)
    try:
        CliRunner().invoke(main, ["status", "--help"])
        now = os.umask(0o022)
    finally:
        os.umask(previous)
    assert now == 0o077
