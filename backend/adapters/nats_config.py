"""A NATS cluster's configuration, one file per node, from taskring's one role table.

Each node is a NATS server that speaks MQTT 3.1.1 to taskring's components
through its MQTT gateway: `server_name`, a NATS client `listen`, a `cluster`
with routes to every other node, `jetstream` (the gateway keeps its sessions
in JetStream streams), an `mqtt` listener, and an `authorization` block with
one user per component login whose permissions are ROLE_RULES
(backend/adapters/broker_logins.py) as NATS subjects
(backend/core/nats_subjects.py). Pure: the caller reads the passwords and
writes the files.

What taskring sets for NATS, and why:

- `stream_replicas`: the gateway's streams (sessions, QoS-1 messages) are kept
  on min(nodes, 3) servers, so losing one node loses no session state and
  JetStream keeps a quorum.
- No `$MQTT.>` permission: the gateway needs a client to hold one only for
  QoS-1 subscriptions, whose JetStream consumer delivers on `$MQTT.sub.<id>`.
  taskring subscribes at QoS 0 only (backend/adapters/bus/), and its QoS-1
  publishes are stored by the gateway's own internal client, so a
  component's user needs its topics and nothing else; a QoS-1 subscribe would
  get SUBACK 0x80, which the bus reports.
- `allowed_connection_types: ["MQTT"]`: a component's password opens only an
  MQTT session, not a plain NATS connection that could subscribe to the
  gateway's internal subjects.
- Routes log in with a cluster password of their own, so a stranger who can
  reach a cluster port cannot join as a node and read every message.
- `max_payload` 64 MiB: Raft batches and snapshots can be larger than NATS's
  default 1 MiB, which NATS 2.14 and later enforce on MQTT publishes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.adapters import broker_logins
from backend.adapters.cluster_plan import check_distinct_ports, host_port, per_node
from backend.adapters.settings import ConfigError
from backend.core.nats_subjects import UnsupportedTopic, filter_subjects

CLUSTER_NAME = "taskring"
SERVER_PREFIX = "taskring-"  # + the node's number: its server_name
ROUTE_USER = "taskring-route"
MAX_STREAM_REPLICAS = 3  # JetStream's useful maximum; more nodes add capacity, not safety
MQTT_CONNECTIONS = ("MQTT",)
NATS_ALL = ">"
# NATS 2.14 and later refuse an MQTT publish over max_payload (1 MiB unless set) and drop
# the connection that sent it (2.9 does not check). A Raft AppendEntries batch can pass
# that, and an InstallSnapshot carries a whole group's state, which Mosquitto takes up to
# MQTT's 256 MB; NATS allows up to its per-client pending buffer, 64 MiB (and notes at
# start that this is above 8 MiB).
MAX_PAYLOAD = 64 << 20
DEFAULT_CLIENT_PORT = 4222
DEFAULT_CLUSTER_PORT = 6222
DEFAULT_MQTT_PORT = 1883


@dataclass(frozen=True)
class NatsNode:
    """One NATS server of the cluster: where it listens for each kind of peer."""

    number: int  # 1-based
    host: str
    client_port: int  # NATS protocol: monitoring tools (`nats`), never taskring
    cluster_port: int  # routes between the nodes
    mqtt_port: int  # taskring's components

    @property
    def server_name(self) -> str:
        return f"{SERVER_PREFIX}{self.number}"

    def address(self, port: int) -> str:
        return host_port(self.host, port)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def stream_replicas(nodes: int) -> int:
    return min(nodes, MAX_STREAM_REPLICAS)


def plan_nodes(
    nodes: int,
    hosts: Sequence[str],
    client_ports: Sequence[int],
    cluster_ports: Sequence[int],
    mqtt_ports: Sequence[int],
) -> tuple[NatsNode, ...]:
    """The nodes' addresses. `hosts` and each port list hold one entry for every node, or
    one for all: a single port is a base, and nodes sharing a host take base, base+1, ...
    (three hosts get 4222 each; one machine gets 4222, 4223, 4224)."""
    if nodes < 1:
        raise ConfigError("a cluster needs at least one node")
    host_of = per_node("hosts", hosts, nodes)
    on_host_before = [host_of[:index].count(host) for index, host in enumerate(host_of)]
    ports = {}
    for kind, given in (("client", client_ports), ("cluster", cluster_ports), ("mqtt", mqtt_ports)):
        if len(given) == 1:
            ports[kind] = [given[0] + offset for offset in on_host_before]
        else:
            ports[kind] = per_node(f"{kind} ports", given, nodes)
    planned = tuple(
        NatsNode(index + 1, host_of[index], *(ports[kind][index] for kind in ports))
        for index in range(nodes)
    )
    _check_distinct(planned)
    return planned


def _check_distinct(nodes: Sequence[NatsNode]) -> None:
    check_distinct_ports(
        (
            node.number,
            node.host,
            (
                ("client", node.client_port),
                ("cluster", node.cluster_port),
                ("mqtt", node.mqtt_port),
            ),
        )
        for node in nodes
    )


def login_permissions(login: str) -> Permissions:
    """ROLE_RULES for `login` as NATS subjects: "write" rules publish, "read" ones subscribe."""
    publish: list[str] = []
    subscribe: list[str] = []
    for access, topic_filter in broker_logins.login_rules(login):
        try:
            subjects = filter_subjects(topic_filter)
        except UnsupportedTopic as exc:
            raise ConfigError(f"broker login {login!r}: {exc}") from exc
        if access in ("write", "readwrite"):
            publish += subjects
        if access in ("read", "readwrite"):
            subscribe += subjects
    return Permissions(_unique(publish), _unique(subscribe))


def _unique(subjects: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


def node_config(
    nodes: Sequence[NatsNode],
    number: int,
    store_dir: str,
    passwords: Mapping[str, str],
    route_password: str,
) -> str:
    """The whole configuration file of node `number` (1-based): NATS reads JSON too, and
    JSON needs no quoting rules of our own."""
    header = [
        "# Written by `taskring broker config`: regenerate it rather than edit it.",
        f"# Node {number} of {len(nodes)} of the NATS cluster {CLUSTER_NAME!r}; the MQTT gateway",
        "# keeps its sessions in JetStream, and each user is one taskring component.",
    ]
    settings = node_settings(nodes, number, store_dir, passwords, route_password)
    return "\n".join(header) + "\n" + json.dumps(settings, indent=2) + "\n"


def node_settings(
    nodes: Sequence[NatsNode],
    number: int,
    store_dir: str,
    passwords: Mapping[str, str],
    route_password: str,
) -> dict[str, Any]:
    """Node `number`'s configuration as the JSON object nats-server reads."""
    node = nodes[number - 1]
    _check_secret("the cluster's route password", route_password)
    routes = [
        f"nats-route://{ROUTE_USER}:{route_password}@{other.address(other.cluster_port)}"
        for other in nodes
        if other.number != number
    ]
    settings: dict[str, Any] = {
        "server_name": node.server_name,
        "listen": node.address(node.client_port),
        "max_payload": MAX_PAYLOAD,
    }
    # A lone node runs standalone: JetStream refuses a `cluster` without routes.
    if len(nodes) > 1:
        settings["cluster"] = {
            "name": CLUSTER_NAME,
            "listen": node.address(node.cluster_port),
            "authorization": {"user": ROUTE_USER, "password": route_password},
            "routes": routes,
        }
    settings["jetstream"] = {"store_dir": store_dir}
    settings["mqtt"] = {
        "listen": node.address(node.mqtt_port),
        "stream_replicas": stream_replicas(len(nodes)),
    }
    settings["authorization"] = {"users": [user(login, pw) for login, pw in passwords.items()]}
    return settings


def user(login: str, password: str) -> dict[str, Any]:
    """One component's NATS user: MQTT only, with its role's permissions."""
    _check_secret(f"the password of {login!r}", password)
    permissions = login_permissions(login)
    return {
        "user": login,
        "password": password,
        "allowed_connection_types": list(MQTT_CONNECTIONS),
        "permissions": {
            "publish": _subject_permission(permissions.publish),
            "subscribe": _subject_permission(permissions.subscribe),
        },
    }


def _subject_permission(subjects: Sequence[str]) -> dict[str, list[str]]:
    # An empty allow list may read as "no list", which NATS takes for "everything".
    if not subjects:
        return {"deny": [NATS_ALL]}
    return {"allow": list(subjects)}


def _check_secret(what: str, secret: str) -> None:
    # NATS takes a password starting with `$2` for a bcrypt hash, routes carry theirs in a
    # URL, and a quote, backslash or control character is one escape away from a surprise.
    if (
        not secret
        or secret.startswith("$")
        or any(char in "\"\\'@:/" or char.isspace() for char in secret)
        or not secret.isprintable()
        or not secret.isascii()
    ):
        raise ConfigError(
            f"{what} cannot go into a NATS configuration: use letters, digits, '-' and '_'"
        )
