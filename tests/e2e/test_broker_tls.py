"""The broker URL takes credentials and TLS: mqtts:// with a CA file, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.settings import BrokerAddress
from tests.conftest import MOSQUITTO, free_port, port_open
from tests.support.waiting import wait_until


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "broker.key", directory / "broker.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def round_trip(url: str) -> dict:
    received: asyncio.Queue[dict] = asyncio.Queue()

    async def on_message(_topic: str, message: dict) -> None:
        await received.put(message)

    bus = MqttBus(BrokerAddress.parse(url), "tls-test")
    bus.subscribe("taskring/v1/tls-test", on_message)
    async with bus:
        assert await bus.wait_connected(10), bus.last_error
        await bus.publish("taskring/v1/tls-test", {"hello": "over tls"})
        return await asyncio.wait_for(received.get(), 10)


def hashed_password_file(directory: Path) -> Path:
    passwords = directory / "passwd"
    passwords.write_text("portal:s3cret\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True)
    return passwords


async def test_mqtts_with_a_password_and_a_private_ca(processes, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    passwords = hashed_password_file(tmp_path)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\nset_tcp_nodelay true\n"
        # As root Mosquitto would switch to its own user, which cannot read the test's files.
        "user root\n"
    )
    processes.start([MOSQUITTO, "-c", str(conf)], "mosquitto-tls")
    wait_until(lambda: port_open(port), "the TLS broker")
    url = f"mqtts://portal:s3cret@127.0.0.1:{port}?ca={cert}"
    assert await round_trip(url) == {"hello": "over tls"}
    with pytest.raises((AssertionError, TimeoutError)):
        await asyncio.wait_for(round_trip(f"mqtts://portal:wrong@127.0.0.1:{port}?ca={cert}"), 3)
