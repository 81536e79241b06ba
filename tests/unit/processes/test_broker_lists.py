"""`taskring up` and the component options with a list of broker nodes."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from backend.adapters.settings import BrokerAddresses
from backend.processes.launch_plan import BrokerPlan, Settings, choose_broker, plan_children
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
