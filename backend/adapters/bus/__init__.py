"""The bus the components talk over; `open_bus` builds the MQTT client each one uses.

TASKRING_BUS_CLIENT picks the client: `lean` (the default, LeanMqttBus: taskring's
own MQTT 3.1.1 client) or `aiomqtt` (MqttBus: the same behaviour at many times the
CPU per message).
"""

from __future__ import annotations

import os

from backend.adapters.bus.lean import LeanMqttBus
from backend.adapters.bus.mqtt import MqttBus
from backend.adapters.bus.transport import LastWill
from backend.adapters.settings import BrokerAddress, BrokerAddresses, ConfigError
from backend.core.drops import Drops

BUS_CLIENT_VARIABLE = "TASKRING_BUS_CLIENT"
BUS_CLIENTS = ("aiomqtt", "lean")
DEFAULT_BUS_CLIENT = "lean"

BrokerBus = MqttBus | LeanMqttBus

__all__ = [
    "BUS_CLIENTS",
    "BrokerBus",
    "LastWill",
    "LeanMqttBus",
    "MqttBus",
    "bus_client",
    "open_bus",
]


def bus_client() -> str:
    """The client TASKRING_BUS_CLIENT asks for; ConfigError if it names none."""
    name = os.environ.get(BUS_CLIENT_VARIABLE, "").strip().lower() or DEFAULT_BUS_CLIENT
    if name not in BUS_CLIENTS:
        choices = " or ".join(BUS_CLIENTS)
        raise ConfigError(f"{BUS_CLIENT_VARIABLE}={name!r}: must be {choices}")
    return name


def open_bus(
    address: BrokerAddress | BrokerAddresses,
    client_id: str,
    *,
    keepalive: int = 10,
    will: LastWill | None = None,
    drops: Drops | None = None,
    client: str | None = None,
) -> BrokerBus:
    """A bus to the broker at `address`, or to the first of its nodes that answers (not yet
    connected: use it as `async with`)."""
    name = client or bus_client()
    if name not in BUS_CLIENTS:
        raise ConfigError(f"bus client {name!r}: must be {' or '.join(BUS_CLIENTS)}")
    kind = MqttBus if name == "aiomqtt" else LeanMqttBus
    return kind(address, client_id, keepalive=keepalive, will=will, drops=drops)
