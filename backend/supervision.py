"""What `taskring up` starts and how it treats a child that dies: the pure decisions.

`plan_children` turns the settings into one ChildSpec per process (command
line, environment, port); `choose_broker` decides whether to use a broker
that already answers or start one; `Backoff` says how long to wait before a
restart; `banner` is what a person sees once everything listens. The
process handling that acts on these lives in backend/supervisor.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import broker_auth, config
from .bus.probe import CONNACK_ACCEPTED, CONNACK_REASONS

BROKER = "broker"
DEFAULT_BROKER_PORT = config.BrokerAddress.parse(config.DEFAULT_BROKER).port


@dataclass
class Backoff:
    """Restart delays: `initial` doubling to `maximum`, back to `initial` after a stable run."""

    initial: float = 0.5
    maximum: float = 10.0
    stable_after: float = 30.0
    upcoming: float = field(default=-1.0, repr=False)

    def after_exit(self, uptime: float) -> float:
        """Seconds to wait before restarting a child that ran for `uptime` seconds."""
        if self.upcoming < 0 or uptime >= self.stable_after:
            self.upcoming = self.initial
        delay = self.upcoming
        self.upcoming = min(delay * 2, self.maximum)
        return delay


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    storage: str = config.DEFAULT_STORAGE
    host: str = config.DEFAULT_HOST
    web_port: int = config.DEFAULT_WEB_PORT
    client_ports: tuple[int, ...] = config.DEFAULT_CLIENT_PORTS
    admin_ports: tuple[int, ...] = config.DEFAULT_ADMIN_PORTS
    broker_port: int = DEFAULT_BROKER_PORT
    cache_nodes: int = config.DEFAULT_CACHE_NODES

    def ports(self) -> list[int]:
        return [*self.client_ports, *self.admin_ports, self.web_port]


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: `taskring <args>` with `env` added to the environment."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # it is up once this accepts TCP connections

    @property
    def is_broker(self) -> bool:
        return self.name == BROKER


@dataclass(frozen=True)
class BrokerPlan:
    """Which broker the children use, and whether `taskring up` starts it."""

    start: bool
    urls: Mapping[str, str]  # role -> URL with that role's credentials
    description: str

    def url(self, role: str) -> str:
        return self.urls[role]

    def shown(self) -> str:
        return config.BrokerAddress.parse(self.urls["portal"]).redacted()


Probe = Callable[[str, int, str | None, str | None], int | None]


def same_url_for_every_role(url: str) -> dict[str, str]:
    return dict.fromkeys(broker_auth.ROLES, url)


def choose_broker(
    flag_url: str | None,
    settings: Settings,
    probe: Probe,
    passwords: Mapping[str, str],
    mosquitto_with_logins: bool,
) -> BrokerPlan:
    """Use --broker, else a broker answering at host:broker-port, else start one there.

    `passwords` are the data directory's role passwords (backend/broker_auth.py).
    `probe(host, port, user, password)` returns the broker's CONNACK code or
    None when nothing answers. Raises ConfigError when a broker answers but
    lets us in neither with the role passwords nor anonymously.
    """
    if flag_url:
        config.BrokerAddress.parse(flag_url)  # fail early on a malformed URL
        return BrokerPlan(False, same_url_for_every_role(flag_url), "given with --broker")
    host, port = settings.host, settings.broker_port
    anonymous = f"mqtt://{host}:{port}"
    with_logins = {
        role: broker_auth.role_url(role, pw, host, port) for role, pw in passwords.items()
    }
    portal_password = passwords.get("portal")
    if portal_password and probe(host, port, "portal", portal_password) == CONNACK_ACCEPTED:
        return BrokerPlan(False, with_logins, "already running; logins from the data directory")
    answer = probe(host, port, None, None)
    if answer == CONNACK_ACCEPTED:
        return BrokerPlan(False, same_url_for_every_role(anonymous), "already running")
    if answer is not None:
        reason = CONNACK_REASONS.get(answer, f"code {answer}")
        raise config.ConfigError(
            f"a broker answers at {host}:{port} but refuses us ({reason}); pass --broker with "
            "a URL that has credentials, or pick a free --broker-port"
        )
    if mosquitto_with_logins:
        missing = set(broker_auth.ROLES) - set(passwords)
        if missing:
            raise config.ConfigError(f"no broker password for {', '.join(sorted(missing))}")
        return BrokerPlan(True, with_logins, "Mosquitto, one login per role")
    return BrokerPlan(
        True, same_url_for_every_role(anonymous), "embedded: no logins, quick start only"
    )


def plan_children(settings: Settings, broker: BrokerPlan, admin_token: str) -> list[ChildSpec]:
    """Every process `taskring up` runs, broker first. Secrets go in `env`, never in `args`."""
    host, data = settings.host, str(settings.data_dir)
    children = []
    if broker.start:
        listen = f"{host}:{settings.broker_port}"
        args = (BROKER, "--listen", listen, "--data-dir", data)
        children.append(ChildSpec(BROKER, args, {}, settings.broker_port))
    if settings.storage == "ring":
        children += plan_cache_nodes(settings, broker)
    portal_env = {"TASKRING_BROKER": broker.url("portal")}
    for number, port in enumerate(settings.client_ports, 1):
        name = f"client-portal-{number}"
        args = ("client-portal", "--id", name, "--listen", f"{host}:{port}")
        children.append(ChildSpec(name, (*args, "--storage", settings.storage), portal_env, port))
    admin_env = {**portal_env, "TASKRING_ADMIN_TOKEN": admin_token}
    for number, port in enumerate(settings.admin_ports, 1):
        name = f"admin-portal-{number}"
        args = ("admin-portal", "--id", name, "--listen", f"{host}:{port}")
        args += ("--storage", settings.storage, "--data-dir", data)
        children.append(ChildSpec(name, args, admin_env, port))
    web_env = {"TASKRING_BROKER": broker.url("web")}
    web_args = ("web", "--listen", f"{host}:{settings.web_port}")
    children.append(ChildSpec("web", web_args, web_env, settings.web_port))
    return children


def plan_cache_nodes(settings: Settings, broker: BrokerPlan) -> list[ChildSpec]:
    """The ring's cache nodes; the first may found a new ring, the others always join one."""
    env = {"TASKRING_BROKER": broker.url("cachenode")}
    nodes = []
    for number in range(1, settings.cache_nodes + 1):
        name = f"cache-node-{number}"
        args: tuple[str, ...] = ("cache-node", "--id", name)
        if number == 1:
            args += ("--bootstrap",)
        nodes.append(ChildSpec(name, args, env))
    return nodes


def example_commands(settings: Settings, admin_token: str) -> list[str]:
    """Commands that work against this deployment from another terminal in the repository."""
    exports = []
    if settings.admin_ports != config.DEFAULT_ADMIN_PORTS:
        exports.append(f"TASKRING_ADMIN_PORTAL={settings.host}:{settings.admin_ports[0]}")
    if settings.data_dir.resolve() != Path(config.DEFAULT_DATA_DIR).resolve():
        exports.append(f"TASKRING_ADMIN_TOKEN={admin_token}")
    if settings.client_ports != config.DEFAULT_CLIENT_PORTS:
        portals = ",".join(f"{settings.host}:{port}" for port in settings.client_ports)
        exports.append(f"TASKRING_PORTAL={portals}")
    lines = [f"export {' '.join(exports)}"] if exports else []
    status = "taskring status"
    if settings.broker_port != DEFAULT_BROKER_PORT:  # status looks for the default broker
        status += f" --web http://{settings.host}:{settings.web_port}"
    return [
        *lines,
        "taskring admin create alice          # prints alice's CID and token",
        "taskring client --cid <cid> --token <token> add 'buy milk' '2 litres'",
        "taskring client --cid <cid> --token <token> list",
        status,
    ]


def storage_summary(settings: Settings) -> str:
    if settings.storage == "ring":
        return f"ring: {settings.cache_nodes} cache nodes (in memory; no durability yet)"
    return "local: every portal holds a full copy (in memory; no durability)"


def banner(settings: Settings, broker: BrokerPlan, admin_token: str, token_source: str) -> str:
    """What `taskring up` prints once every child listens."""
    host = settings.host
    rows = [
        ("web", f"http://{host}:{settings.web_port}"),
        ("client portals", ", ".join(f"{host}:{p}" for p in settings.client_ports) + "  (TCP)"),
        ("admin portals", ", ".join(f"{host}:{p}" for p in settings.admin_ports) + "  (gRPC)"),
        ("broker", f"{broker.shown()}  ({broker.description})"),
        ("admin token", f"{admin_token}  ({token_source})"),
        ("storage", storage_summary(settings)),
        ("logs", f"{settings.data_dir / 'logs'}/<component>.log"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["", "taskring is up.", ""]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines += ["", "Try, in another terminal (after `. .venv/bin/activate`):", ""]
    lines += [f"  {command}" for command in example_commands(settings, admin_token)]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)
