"""`taskring up` and the component options with a list of broker nodes."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from backend.adapters.settings import BrokerAddresses
from backend.processes.launch_plan import (
    BrokerPlan,
    Settings,
    broker_logins,
    choose_broker,
    plan_children,
)
from backend.processes.options import broker_option

SETTINGS = Settings(data_dir=Path("/srv/taskring"), broker_port=1999, storage="local")
NODES = "mqtt://u:p@a:1883,mqtts://v:q@b:8883"


def test_up_gives_every_child_the_whole_list_without_probing() -> None:
    def probe(*_: object) -> int | None:
        raise AssertionError("a given broker is not probed")

    plan = choose_broker(NODES, SETTINGS, probe, {}, True)
    assert not plan.start
    children = plan_children(SETTINGS, plan, "token")
    assert {child.env["TASKRING_BROKER"] for child in children} == {NODES}
    assert plan.shown() == "mqtt://u:***@a:1883,mqtts://v:***@b:8883"


def test_a_plan_with_logins_puts_each_child_s_login_in_every_url() -> None:
    def urls(login: str) -> str:
        return f"mqtt://{login}:pw-{login}@a:1883,mqtt://{login}:pw-{login}@b:1884"

    logins = ("client-portal-1", "client-portal-2", "admin-portal-1", "admin-portal-2", "web-1")
    plan = BrokerPlan(False, {login: urls(login) for login in (*logins, "status")}, "cluster")
    for child in plan_children(SETTINGS, plan, "token"):
        addresses = BrokerAddresses.parse(child.env["TASKRING_BROKER"])
        users = {address.username for address in addresses}
        assert len(addresses) == 2 and len(users) == 1 and users <= set(logins)
    assert plan.shown() == "mqtt://status:***@a:1883,mqtt://status:***@b:1884"


def test_a_bad_element_of_the_list_fails_up_early() -> None:
    with pytest.raises(ValueError, match="broker URL 2 of 2"):
        choose_broker("mqtt://a,mqtt://a", SETTINGS, lambda *_: None, {}, True)


def test_the_component_option_takes_a_list() -> None:
    seen: list[BrokerAddresses] = []

    @click.command()
    @broker_option
    def component(broker: BrokerAddresses) -> None:
        seen.append(broker)

    component.main(["--broker", "mqtt://a:1,mqtt://b:2"], standalone_mode=False)
    assert [a.node for a in seen[0]] == [("a", 1), ("b", 2)]
    with pytest.raises(click.BadParameter, match="broker URL 2 of 2 is empty"):
        component.main(["--broker", "mqtt://a:1,"], standalone_mode=False)


CLUSTER = "mqtt://n1:1883,mqtt://n2:1884,mqtt://n3:1885"
RING = Settings(data_dir=Path("/d"), cache_nodes=3, replica_groups=1, replicas=3)
RING_PASSWORDS = {login: f"pw-{login}" for login in broker_logins(RING)}


class ClusterProbe:
    """Nodes that refuse anonymous logins and take `status`; `down` nodes do not answer."""

    def __init__(self, down: tuple[str, ...] = (), anonymous: int = 5) -> None:
        self.down, self.anonymous = down, anonymous
        self.calls: list[tuple[str, int, str | None]] = []

    def __call__(self, host: str, port: int, user: str | None, _pw: str | None) -> int | None:
        self.calls.append((host, port, user))
        if host in self.down:
            return None
        return self.anonymous if user is None else 0


def test_a_list_without_logins_gets_each_child_s_own_login_in_every_url() -> None:
    plan = choose_broker(CLUSTER, RING, ClusterProbe(), RING_PASSWORDS, True)
    assert not plan.start and "logins from the data directory" in plan.description
    for child in plan_children(RING, plan, "token"):
        login = child.name if child.name != "web" else "web-1"
        addresses = BrokerAddresses.parse(child.env["TASKRING_BROKER"])
        assert {a.node for a in addresses} == {("n1", 1883), ("n2", 1884), ("n3", 1885)}
        assert {(a.username, a.password) for a in addresses} == {(login, f"pw-{login}")}


def test_each_child_s_list_starts_at_the_next_node_round_robin() -> None:
    plan = choose_broker(CLUSTER, RING, ClusterProbe(), RING_PASSWORDS, True)
    first = {
        login: BrokerAddresses.parse(plan.url(login)).first.host for login in broker_logins(RING)
    }
    assert [first[f"replica-g1-{n}"] for n in (1, 2, 3)] == ["n1", "n2", "n3"]
    assert [first[f"cache-node-{n}"] for n in (1, 2, 3)] == ["n1", "n2", "n3"]
    # Each list goes on round the ring of nodes from where it starts.
    second = BrokerAddresses.parse(plan.url("replica-g1-3"))
    assert [a.host for a in second] == ["n3", "n1", "n2"]


def test_the_first_node_that_answers_is_probed_as_status() -> None:
    probe = ClusterProbe(down=("n1",))
    plan = choose_broker(CLUSTER, RING, probe, RING_PASSWORDS, True)
    assert BrokerAddresses.parse(plan.url("cache-node-1")).first.username == "cache-node-1"
    assert probe.calls == [("n1", 1883, None), ("n2", 1884, None), ("n2", 1884, "status")]


def test_a_list_is_used_as_given_when_the_logins_are_not_needed_or_not_known() -> None:
    cases: tuple[tuple[ClusterProbe, dict[str, str]], ...] = (
        (ClusterProbe(anonymous=0), RING_PASSWORDS),  # the broker lets anyone in
        (ClusterProbe(down=("n1", "n2", "n3")), RING_PASSWORDS),  # nothing answers yet
        (ClusterProbe(), {}),  # the data directory holds no logins
    )
    for probe, passwords in cases:
        plan = choose_broker(CLUSTER, RING, probe, passwords, True)
        assert plan.url("cache-node-2") == plan.url("web-1") == CLUSTER


def test_a_single_url_without_a_login_gets_the_login_too() -> None:
    plan = choose_broker("mqtt://n1:1883", RING, ClusterProbe(), RING_PASSWORDS, True)
    assert plan.url("replica-g1-2") == "mqtt://replica-g1-2:pw-replica-g1-2@n1:1883"


def test_tls_and_its_ca_are_kept_when_the_login_is_inserted() -> None:
    given = "mqtt://n1:1883,mqtts://n2:8883?ca=/etc/ca.pem"
    plan = choose_broker(given, RING, ClusterProbe(), RING_PASSWORDS, True)
    tls = BrokerAddresses.parse(plan.url("web-1"))[1]
    assert (tls.tls, tls.ca_file, tls.username) == (True, "/etc/ca.pem", "web-1")


def test_a_missing_login_for_the_list_is_a_clear_error() -> None:
    partial = {k: v for k, v in RING_PASSWORDS.items() if k != "cache-node-3"}
    with pytest.raises(ValueError, match="no broker password for cache-node-3"):
        choose_broker(CLUSTER, RING, ClusterProbe(), partial, True)
