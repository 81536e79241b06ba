"""Each CONNACK refusal says what it means, in `taskring up` and on the bus.

A broker that refuses anonymous logins answers 4 (bad user name or password) to
the anonymous probe whatever else is wrong; `taskring up` must report why the
`status` login was refused, e.g. RabbitMQ's 3 (server unavailable) while a node
cannot register client ids during a rolling restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.adapters.settings import ConfigError
from backend.core.mqtt_packets import connack_reason
from backend.processes.launch_plan import Settings, broker_logins, choose_broker

SETTINGS = Settings(data_dir=Path("/srv/taskring"), broker_port=1999, storage="local")
PASSWORDS = {login: f"pw-{login}" for login in broker_logins(SETTINGS)}
ANONYMOUS_REFUSED = 4


def refusal_of_status(code: int) -> str:
    """The error `taskring up` gives when the broker refuses anonymous logins with 4 and
    the `status` login with `code`."""

    def probe(_host: str, _port: int, user: str | None, _password: str | None) -> int:
        return ANONYMOUS_REFUSED if user is None else code

    with pytest.raises(ConfigError) as refused:
        choose_broker(None, SETTINGS, probe, PASSWORDS, True)
    return str(refused.value)


def test_code_1_says_bad_protocol_version() -> None:
    message = refusal_of_status(1)
    assert "refuses us (unacceptable protocol version" in message
    assert "password" not in message.split("refuses us")[1].split(";")[0]


def test_code_2_says_identifier_rejected() -> None:
    assert "refuses us (client identifier rejected)" in refusal_of_status(2)


def test_code_3_says_server_unavailable_not_a_bad_password() -> None:
    message = refusal_of_status(3)
    assert "refuses us (server unavailable" in message
    assert "bad user name or password" not in message


def test_code_4_says_bad_user_name_or_password() -> None:
    assert "refuses us (bad user name or password)" in refusal_of_status(4)


def test_code_5_says_not_authorized() -> None:
    assert "refuses us (not authorized)" in refusal_of_status(5)


def test_without_a_status_password_the_anonymous_answer_is_the_reason() -> None:
    def probe(_host: str, _port: int, _user: str | None, _password: str | None) -> int:
        return 5

    with pytest.raises(ConfigError, match=r"refuses us \(not authorized\)"):
        choose_broker(None, SETTINGS, probe, {}, True)


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (1, "unacceptable protocol version"),
        (2, "client identifier rejected"),
        (3, "server unavailable"),
        (4, "bad user name or password"),
        (5, "not authorized"),
    ],
)
def test_the_bus_and_the_probe_share_each_meaning(code: int, meaning: str) -> None:
    assert connack_reason(code).startswith(meaning)
    others = {"bad user name or password", "not authorized", "server unavailable"} - {meaning}
    assert not any(other in connack_reason(code) for other in others)


def test_unknown_codes_and_silence_are_named_as_such() -> None:
    assert connack_reason(9) == "unknown CONNACK return code 9"
    assert "no CONNACK" in connack_reason(None)
