"""The supervisor's pure decisions: restart delays, which broker, which children, the banner."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from backend.broker_auth import ROLES
from backend.config import BrokerAddress, ConfigError
from backend.supervision import (
    Backoff,
    BrokerPlan,
    Settings,
    banner,
    choose_broker,
    example_commands,
    plan_children,
    same_url_for_every_role,
)
from backend.supervisor import describe_exit, parse_ports

PASSWORDS = {role: f"pw-{role}" for role in ROLES}
SETTINGS = Settings(data_dir=Path("/srv/taskring"), broker_port=1999, storage="local")


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


def test_a_given_broker_is_used_for_every_role_without_probing() -> None:
    probe = FakeProbe({None: 0})
    plan = choose_broker("mqtt://u:p@broker:1883", SETTINGS, probe, PASSWORDS, True)
    assert not plan.start
    assert set(plan.urls.values()) == {"mqtt://u:p@broker:1883"}
    assert probe.calls == []


def test_a_malformed_broker_url_is_rejected() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        choose_broker("http://x", SETTINGS, FakeProbe(None), {}, True)


def test_nothing_answering_starts_mosquitto_with_role_logins() -> None:
    plan = choose_broker(None, SETTINGS, FakeProbe(None), PASSWORDS, True)
    assert plan.start
    for role in ROLES:
        address = BrokerAddress.parse(plan.url(role))
        assert (address.username, address.password) == (role, f"pw-{role}")
        assert (address.host, address.port) == ("127.0.0.1", 1999)


def test_nothing_answering_and_no_mosquitto_starts_the_embedded_broker() -> None:
    plan = choose_broker(None, SETTINGS, FakeProbe(None), {}, False)
    assert plan.start
    assert plan.url("portal") == "mqtt://127.0.0.1:1999"
    assert "quick start" in plan.description


def test_a_running_broker_that_knows_our_logins_is_reused() -> None:
    plan = choose_broker(None, SETTINGS, FakeProbe({"portal": 0}), PASSWORDS, True)
    assert not plan.start
    assert BrokerAddress.parse(plan.url("web")).username == "web"


def test_a_running_anonymous_broker_is_reused_anonymously() -> None:
    plan = choose_broker(None, SETTINGS, FakeProbe({None: 0}), PASSWORDS, True)
    assert not plan.start
    assert plan.url("cli") == "mqtt://127.0.0.1:1999"


def test_a_running_broker_that_refuses_us_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"refuses us \(not authorized\)"):
        choose_broker(None, SETTINGS, FakeProbe({}), PASSWORDS, True)


def test_children_broker_first_each_with_its_port() -> None:
    plan = BrokerPlan(True, same_url_for_every_role("mqtt://127.0.0.1:1999"), "test")
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
    settings = Settings(data_dir=Path("/d"), storage="ring", cache_nodes=3)
    urls = {role: f"mqtt://{role}:pw@h:1" for role in ROLES}
    children = plan_children(settings, BrokerPlan(False, urls, "test"), "t")
    names = [c.name for c in children]
    assert names[:3] == ["cache-node-1", "cache-node-2", "cache-node-3"]
    assert names.index("client-portal-1") > 2
    assert [("--bootstrap" in c.args) for c in children[:3]] == [True, False, False]
    assert all(c.env == {"TASKRING_BROKER": urls["cachenode"]} for c in children[:3])
    assert children[3].args[-2:] == ("--storage", "ring")


def test_secrets_travel_in_the_environment_only() -> None:
    urls = {role: f"mqtt://{role}:secret-{role}@127.0.0.1:1999" for role in ROLES}
    children = plan_children(SETTINGS, BrokerPlan(False, urls, "test"), "admin-secret")
    assert "broker" not in [c.name for c in children]
    for child in children:
        assert not any("secret" in arg for arg in child.args), child
    by_name = {c.name: c for c in children}
    assert by_name["client-portal-1"].env == {"TASKRING_BROKER": urls["portal"]}
    assert by_name["admin-portal-2"].env == {
        "TASKRING_BROKER": urls["portal"],
        "TASKRING_ADMIN_TOKEN": "admin-secret",
    }
    assert by_name["web"].env == {"TASKRING_BROKER": urls["web"]}


def test_port_lists_decide_how_many_portals_run() -> None:
    settings = Settings(
        data_dir=Path("/d"), client_ports=(9001,), admin_ports=(9101, 9102, 9103), storage="local"
    )
    plan = BrokerPlan(False, same_url_for_every_role("mqtt://h:1"), "test")
    names = [c.name for c in plan_children(settings, plan, "t")]
    assert names == ["client-portal-1", "admin-portal-1", "admin-portal-2", "admin-portal-3", "web"]


def test_banner_shows_addresses_and_token_but_no_broker_password() -> None:
    urls = {role: f"mqtt://{role}:hunter2@127.0.0.1:1999" for role in ROLES}
    text = banner(SETTINGS, BrokerPlan(True, urls, "Mosquitto"), "the-admin-token", "new")
    for expected in (
        "http://127.0.0.1:8000",
        "127.0.0.1:7001, 127.0.0.1:7002",
        "127.0.0.1:50051, 127.0.0.1:50052",
        "mqtt://portal:***@127.0.0.1:1999",
        "the-admin-token",
        "taskring admin create alice",
        "Ctrl-C",
    ):
        assert expected in text
    assert "hunter2" not in text


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
