"""Broker URL lists: parsing them, and the order and waits of a bus moving between nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.adapters import broker_logins
from backend.adapters.bus.failover import RECONNECT_DELAYS, STABLE_AFTER, BrokerRotation
from backend.adapters.settings import BrokerAddress, BrokerAddresses, ConfigError


def test_one_url_is_a_list_of_one() -> None:
    addresses = BrokerAddresses.parse("mqtt://u:p@broker:1999")
    assert list(addresses) == [BrokerAddress.parse("mqtt://u:p@broker:1999")]
    assert addresses.first.port == 1999 and len(addresses) == 1
    assert addresses.redacted() == "mqtt://u:***@broker:1999"


def test_a_list_keeps_its_order_and_each_url_its_own_login_and_tls() -> None:
    addresses = BrokerAddresses.parse(
        "mqtt://a:1883, mqtts://u:secret@b:8884?ca=/etc/ca.pem,mqtt://c"
    )
    assert [(a.host, a.port, a.tls) for a in addresses] == [
        ("a", 1883, False),
        ("b", 8884, True),
        ("c", 1883, False),
    ]
    assert addresses[1].username == "u" and addresses[1].ca_file == "/etc/ca.pem"
    assert addresses[0].username is None
    assert addresses.redacted() == "mqtt://a:1883,mqtts://u:***@b:8884,mqtt://c:1883"


def test_a_bad_element_is_named_with_its_place() -> None:
    with pytest.raises(ConfigError, match=r"broker URL 2 of 3 'http://x': scheme must be"):
        BrokerAddresses.parse("mqtt://a,http://x,mqtt://c")
    with pytest.raises(ConfigError, match=r"broker URL 3 of 3 'mqtt://c:99999': bad port"):
        BrokerAddresses.parse("mqtt://a,mqtt://b,mqtt://c:99999")


def test_a_bad_element_s_password_stays_out_of_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        BrokerAddresses.parse("mqtt://a,mqtt://u:hunter2@b:x")
    assert "hunter2" not in str(caught.value) and "broker URL 2 of 2" in str(caught.value)


@pytest.mark.parametrize("text", ["", "mqtt://a,", ",mqtt://a", "mqtt://a,,mqtt://b", " , "])
def test_an_empty_element_is_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="is empty"):
        BrokerAddresses.parse(text)


def test_a_node_listed_twice_is_a_clear_error_whatever_its_login() -> None:
    with pytest.raises(ConfigError, match=r"broker URL 2 of 2 .*listed twice"):
        BrokerAddresses.parse("mqtt://a:1883,mqtt://u:p@A")


def test_a_list_is_never_empty_and_of_wraps_one_address() -> None:
    with pytest.raises(ConfigError):
        BrokerAddresses(())
    one = BrokerAddress.parse("mqtt://a")
    assert BrokerAddresses.of(one) == BrokerAddresses((one,))
    both = BrokerAddresses.parse("mqtt://a,mqtt://b")
    assert BrokerAddresses.of(both) is both


def test_every_url_of_a_component_s_list_carries_its_login(tmp_path: Path) -> None:
    urls = broker_logins.login_urls("web-1", "p w", [("a", 1883), ("b", 1884)])
    assert urls == "mqtt://web-1:p%20w@a:1883,mqtt://web-1:p%20w@b:1884"
    listed = broker_logins.broker_url_for("cache-node-1", "a", 1883, tmp_path, [("b", 1884)])
    addresses = BrokerAddresses.parse(listed)
    assert [a.username for a in addresses] == ["cache-node-1", "cache-node-1"]
    assert addresses[0].password == addresses[1].password
    assert [a.node for a in addresses] == [("a", 1883), ("b", 1884)]


# ---- the rotation ------------------------------------------------------------------


def after_failures(
    rotation: BrokerRotation, failures: int, lasted: float | None = None
) -> list[tuple[float, int]]:
    """(seconds waited, broker tried next) after each of `failures` failures."""
    out = []
    for _ in range(failures):
        delay = rotation.failed(lasted)
        out.append((delay, rotation.current))
    return out


def test_one_broker_waits_as_a_single_broker_bus_always_has() -> None:
    rotation = BrokerRotation(1)
    delays = [delay for delay, _ in after_failures(rotation, 7)]
    assert delays == [*RECONNECT_DELAYS, RECONNECT_DELAYS[-1], RECONNECT_DELAYS[-1]]
    rotation.ended_cleanly()
    assert rotation.failed() == RECONNECT_DELAYS[0]


def test_several_brokers_round_robin_waiting_only_after_a_full_round() -> None:
    rotation = BrokerRotation(3)
    assert rotation.current == 0
    assert after_failures(rotation, 7) == [
        (0.0, 1),
        (0.0, 2),
        (RECONNECT_DELAYS[0], 0),
        (0.0, 1),
        (0.0, 2),
        (RECONNECT_DELAYS[1], 0),
        (0.0, 1),
    ]


def test_a_lost_connection_moves_on_at_once_and_starts_a_fresh_round() -> None:
    rotation = BrokerRotation(2)
    assert after_failures(rotation, 2) == [(0.0, 1), (RECONNECT_DELAYS[0], 0)]
    assert after_failures(rotation, 1) == [(0.0, 1)]
    # Node 1 answers, and its connection stands a while before it is lost: node 0 at once.
    assert after_failures(rotation, 1, lasted=STABLE_AFTER) == [(0.0, 0)]
    assert after_failures(rotation, 1) == [(RECONNECT_DELAYS[1], 1)]  # the 2nd round failed


def test_connections_dropped_at_once_count_as_failures_of_their_round() -> None:
    rotation = BrokerRotation(2)
    flapping = after_failures(rotation, 4, lasted=STABLE_AFTER / 10)
    assert flapping == [(0.0, 1), (RECONNECT_DELAYS[0], 0), (0.0, 1), (RECONNECT_DELAYS[1], 0)]


def test_one_broker_s_waits_ignore_how_long_its_connections_stood() -> None:
    rotation = BrokerRotation(1)
    delays = [rotation.failed(lasted) for lasted in (None, 60.0, None, 60.0)]
    assert delays == list(RECONNECT_DELAYS[:4])


def test_a_rotation_needs_a_broker() -> None:
    with pytest.raises(ValueError):
        BrokerRotation(0)
