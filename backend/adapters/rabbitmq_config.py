"""A RabbitMQ cluster's configuration from taskring's one role table.

Each node is a RabbitMQ server with its MQTT plugin, serving MQTT 3.1.1 to
taskring's components. Two kinds of file come out of here, both pure text:

- definitions (JSON, read at boot through `load_definitions`, or with
  `rabbitmqctl import_definitions`): one vhost, one user per component login
  (password stored as RabbitMQ's salted SHA-256), the user's vhost
  permissions, and its topic permissions on `amq.topic`: ROLE_RULES
  (backend/adapters/broker_logins.py) as anchored routing-key regular
  expressions (backend/core/rabbitmq_topics.py);
- `rabbitmq.conf` per node: its MQTT and AMQP listeners, anonymous MQTT off,
  the vhost and exchange, and `classic_config` peer discovery naming every node.

What taskring sets for RabbitMQ, and why:

- Every user gets a topic permission entry, with `^$` where its role has
  nothing: RabbitMQ lets a user with no entry for the exchange publish and bind
  anything.
- Vhost permissions name only the client's own QoS-0 subscription queue,
  `mqtt-subscription-<login>qos0` (components use their login as client id):
  taskring subscribes at QoS 0 with clean sessions, so each subscription is a
  transient queue on the node the component is connected to, gone with the
  connection. A QoS-1 subscription would need a durable queue homed on one node
  (which then takes the subscription down with it); the permissions refuse
  that queue, so no such queue can appear by mistake.
- The AMQP listener is on the loopback address only: users are not tied to a
  protocol, and MQTT is all taskring needs from outside.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.adapters import broker_logins
from backend.adapters.cluster_plan import check_distinct_ports, per_node
from backend.adapters.settings import ConfigError
from backend.core.rabbitmq_topics import UnsupportedTopic, filters_regex

VHOST = "taskring"
EXCHANGE = "amq.topic"
NODE_PREFIX = "rabbit-"  # + the node's number, @ its host: the Erlang node name
HASHING = "rabbit_password_hashing_sha256"
SALT_BYTES = 4
PLUGINS = ("rabbitmq_mqtt",)
DEFAULT_AMQP_PORT = 5672
DEFAULT_MQTT_PORT = 1883
DEFAULT_DIST_PORT = 25672
AMQP_LISTEN_HOST = "127.0.0.1"
QUEUE_PREFIX = "mqtt-subscription-"  # + client id + "qos0": the MQTT plugin's queue names
QOS0_SUFFIX = "qos0"


@dataclass(frozen=True)
class RabbitNode:
    """One RabbitMQ server of the cluster: its Erlang name and where it listens."""

    number: int  # 1-based
    host: str  # the short host name in the node's Erlang name
    amqp_port: int  # loopback only: tools, never taskring
    mqtt_port: int  # taskring's components
    dist_port: int  # Erlang distribution: the nodes and rabbitmqctl
    listen: str | None = None  # the MQTT listener's address; None: every interface

    @property
    def name(self) -> str:
        return f"{NODE_PREFIX}{self.number}@{self.host}"

    @property
    def mqtt_listener(self) -> str:
        return str(self.mqtt_port) if self.listen is None else f"{self.listen}:{self.mqtt_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.listen or self.host}:{self.mqtt_port}"


@dataclass(frozen=True)
class TopicPermission:
    write: str
    read: str


def plan_nodes(
    nodes: int,
    hosts: Sequence[str],
    amqp_ports: Sequence[int],
    mqtt_ports: Sequence[int],
    dist_ports: Sequence[int],
    listen: str | None = None,
) -> tuple[RabbitNode, ...]:
    """The nodes' names and ports. Each list holds one entry per node, or one for all:
    a single port is a base, and nodes sharing a host take base, base+1, ..."""
    if nodes < 1:
        raise ConfigError("a cluster needs at least one node")
    host_of = per_node("hosts", hosts, nodes)
    for host in host_of:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", host):
            raise ConfigError(
                f"{host!r}: RabbitMQ names nodes name@host with a short host name;"
                " give each node's host name (no dots, not an address)"
            )
    before = [host_of[:index].count(host) for index, host in enumerate(host_of)]
    ports = []
    for kind, given in (("AMQP", amqp_ports), ("MQTT", mqtt_ports), ("dist", dist_ports)):
        if len(given) == 1:
            ports.append([given[0] + offset for offset in before])
        else:
            ports.append(per_node(f"{kind} ports", given, nodes))
    planned = tuple(
        RabbitNode(i + 1, host_of[i], ports[0][i], ports[1][i], ports[2][i], listen)
        for i in range(nodes)
    )
    _check_distinct(planned)
    return planned


def _check_distinct(nodes: Sequence[RabbitNode]) -> None:
    check_distinct_ports((node.number, node.host, node_ports(node)) for node in nodes)


def node_ports(node: RabbitNode) -> tuple[tuple[str, int], ...]:
    return (("AMQP", node.amqp_port), ("MQTT", node.mqtt_port), ("dist", node.dist_port))


def topic_permission(login: str) -> TopicPermission:
    """ROLE_RULES for `login` as regular expressions on `amq.topic` routing keys."""
    writes: list[str] = []
    reads: list[str] = []
    for access, topic_filter in broker_logins.login_rules(login):
        if access in ("write", "readwrite"):
            writes.append(topic_filter)
        if access in ("read", "readwrite"):
            reads.append(topic_filter)
    try:
        return TopicPermission(filters_regex(writes), filters_regex(reads))
    except UnsupportedTopic as exc:
        raise ConfigError(f"broker login {login!r}: {exc}") from exc


def subscription_queue(login: str) -> str:
    """The name of the queue RabbitMQ's MQTT plugin makes for the QoS-0 subscriptions of
    the client whose id is `login`."""
    return f"{QUEUE_PREFIX}{login}{QOS0_SUFFIX}"


def vhost_permission(login: str) -> dict[str, str]:
    """Configure, write and read: its own subscription queue, and `amq.topic` to publish
    to and bind from."""
    queue = re.escape(subscription_queue(login))
    return {
        "configure": f"^{queue}$",
        "write": f"^(?:{re.escape(EXCHANGE)}|{queue})$",
        "read": f"^(?:{re.escape(EXCHANGE)}|{queue})$",
    }


def password_hash(password: str, salt: bytes) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"RabbitMQ's salt is {SALT_BYTES} bytes")
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def definitions(passwords: Mapping[str, str], salt: Callable[[], bytes]) -> dict[str, Any]:
    """The definitions for every login in `passwords`: vhost, users, permissions.
    `salt()` gives each password hash its salt (os.urandom in use, fixed in tests)."""
    users, permissions, topic_permissions = [], [], []
    for login, password in passwords.items():
        topics = topic_permission(login)
        if not password:
            raise ConfigError(f"broker login {login!r} has an empty password")
        users.append(
            {
                "name": login,
                "password_hash": password_hash(password, salt()),
                "hashing_algorithm": HASHING,
                "tags": "",
            }
        )
        permissions.append({"user": login, "vhost": VHOST, **vhost_permission(login)})
        topic_permissions.append(
            {
                "user": login,
                "vhost": VHOST,
                "exchange": EXCHANGE,
                "write": topics.write,
                "read": topics.read,
            }
        )
    return {
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": [],
        "exchanges": [],
        "bindings": [],
    }


def definitions_text(passwords: Mapping[str, str], salt: Callable[[], bytes]) -> str:
    return json.dumps(definitions(passwords, salt), indent=2) + "\n"


def node_config(nodes: Sequence[RabbitNode], number: int, definitions_file: str) -> str:
    """The whole rabbitmq.conf of node `number` (1-based)."""
    node = nodes[number - 1]
    lines = [
        "# Written by `taskring broker config --kind rabbitmq`: regenerate it rather than edit it.",
        f"# Node {number} of {len(nodes)} ({node.name}); enabled plugins: {', '.join(PLUGINS)}.",
        f"listeners.tcp.default = {AMQP_LISTEN_HOST}:{node.amqp_port}",
        f"mqtt.listeners.tcp.default = {node.mqtt_listener}",
        "mqtt.allow_anonymous = false",
        f"mqtt.vhost = {VHOST}",
        f"mqtt.exchange = {EXCHANGE}",
        # Without it a QoS-1 round trip stalls on Nagle's algorithm, as with Mosquitto.
        "mqtt.tcp_listen_options.nodelay = true",
        f"load_definitions = {definitions_file}",
        "cluster_formation.peer_discovery_backend = classic_config",
        *(
            f"cluster_formation.classic_config.nodes.{other.number} = {other.name}"
            for other in nodes
        ),
        # A restarted node must not rejoin a cluster that has moved on without it.
        "cluster_partition_handling = pause_minority",
        "log.console = false",
        "log.file.level = info",
    ]
    return "\n".join(lines) + "\n"


def enabled_plugins() -> str:
    """The enabled_plugins file: an Erlang list."""
    return "[" + ",".join(PLUGINS) + "].\n"


def node_environment(
    node: RabbitNode, config_file: str, plugins_file: str, mnesia_base: str, log_base: str
) -> dict[str, str]:
    """The environment `rabbitmq-server` needs to run `node` from these files."""
    return {
        "RABBITMQ_NODENAME": node.name,
        "RABBITMQ_CONFIG_FILE": config_file,
        "RABBITMQ_ENABLED_PLUGINS_FILE": plugins_file,
        "RABBITMQ_MNESIA_BASE": mnesia_base,
        "RABBITMQ_LOG_BASE": log_base,
        "RABBITMQ_DIST_PORT": str(node.dist_port),
    }
