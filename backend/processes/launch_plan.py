"""What `taskring up` starts and how it treats a child that dies: the pure decisions.

`plan_children` turns the settings into one ChildSpec per process (command
line, environment, port), in the order they start: the broker, the replica
groups, the cache ring, the portals, the web process, each with its own
broker login (`broker_logins`). `choose_broker` decides whether to use a
broker that already answers (never one that lets anyone in) or start one;
`Backoff` says how long to wait before a restart; `banner` is what a person
sees once everything is ready. The process handling that acts on these lives
in backend/processes/supervisor.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from backend.adapters import broker_logins as broker_auth
from backend.adapters import settings as config
from backend.adapters.bus.probe import CONNACK_ACCEPTED, connack_reason
from backend.core.replica.group import default_groups

BROKER = "broker"
REPLICA = "replica"
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
    replica_groups: int = config.DEFAULT_REPLICA_GROUPS  # 0: memory-only cache nodes
    replicas: int = config.DEFAULT_REPLICAS  # per group

    @property
    def durable(self) -> bool:
        """Whether the ring keeps its keys in replica groups (else in memory only)."""
        return self.storage == "ring" and self.replica_groups > 0

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

    @property
    def is_replica(self) -> bool:
        return self.args[:1] == (REPLICA,)


@dataclass(frozen=True)
class BrokerPlan:
    """Which broker the children use, and whether `taskring up` starts it."""

    start: bool
    # login -> broker URL list (settings.BrokerAddresses), that login's password in every
    # URL; ANY_LOGIN: the list for every login
    urls: Mapping[str, str]
    description: str

    def url(self, login: str) -> str:
        return self.urls[login] if login in self.urls else self.urls[ANY_LOGIN]

    def shown(self) -> str:
        return config.BrokerAddresses.parse(self.url(broker_auth.STATUS_LOGIN)).redacted()


ANY_LOGIN = "*"  # never a login's name (backend/adapters/broker_logins.py)
WEB_ID = "web-1"  # `taskring web --id`'s default, which `up` leaves as it is

Probe = Callable[[str, int, str | None, str | None], int | None]


def same_url_for_every_login(url: str) -> dict[str, str]:
    return {ANY_LOGIN: url}


def broker_logins(settings: Settings) -> list[str]:
    """The broker login of every child plan_children makes (each is its MQTT client id)."""
    logins: list[str] = []
    if settings.storage == "ring":
        if settings.replica_groups:
            members = range(1, settings.replicas + 1)
            groups = default_groups(settings.replica_groups)
            logins += [replica_name(group, member) for group in groups for member in members]
        logins += [f"cache-node-{n}" for n in range(1, settings.cache_nodes + 1)]
    logins += [f"client-portal-{n}" for n in range(1, len(settings.client_ports) + 1)]
    logins += [f"admin-portal-{n}" for n in range(1, len(settings.admin_ports) + 1)]
    return [*logins, WEB_ID, broker_auth.STATUS_LOGIN]


def choose_broker(
    flag_url: str | None,
    settings: Settings,
    probe: Probe,
    passwords: Mapping[str, str],
    mosquitto_with_logins: bool,
) -> BrokerPlan:
    """Use --broker, else a broker answering at host:broker-port, else start one there.

    `passwords` are the data directory's login passwords (backend/adapters/broker_logins.py).
    `probe(host, port, user, password)` returns the broker's CONNACK code or
    None when nothing answers. Raises ConfigError when a broker answers but lets
    anyone in (it is used only when named with --broker), or refuses our logins.
    """
    if flag_url:
        return given_broker(flag_url, settings, probe, passwords)
    host, port = settings.host, settings.broker_port
    anonymous = f"mqtt://{host}:{port}"
    logins = broker_logins(settings)
    with_logins = {
        login: broker_auth.login_urls(login, passwords[login], [(host, port)])
        for login in logins
        if login in passwords
    }
    # Anonymous first: a broker that lets anyone in also takes any user name.
    answer = probe(host, port, None, None)
    if answer == CONNACK_ACCEPTED:
        raise config.ConfigError(
            f"the broker at {host}:{port} accepts anonymous logins, so anyone who reaches it "
            f"can read and forge taskring's messages; stop it to let `taskring up` start its "
            f"own, or pass --broker {anonymous} to use it anyway"
        )
    if answer is not None:
        # `status` may only read heartbeats: probing as it disturbs no running component.
        status = broker_auth.STATUS_LOGIN
        known = status in passwords
        # The reason is the status login's answer when it was asked: the anonymous one is
        # always a refusal (4 on RabbitMQ), whatever kept `status` out.
        answer = probe(host, port, status, passwords[status]) if known else answer
        if answer == CONNACK_ACCEPTED:
            missing = [login for login in logins if login not in passwords]
            if missing:
                raise config.ConfigError(f"no broker password for {', '.join(missing)}")
            return BrokerPlan(False, with_logins, "already running; logins from the data directory")
        reason = connack_reason(answer)
        raise config.ConfigError(
            f"a broker answers at {host}:{port} but refuses us ({reason}); pass --broker with "
            "a URL that has credentials, or pick a free --broker-port"
        )
    if mosquitto_with_logins:
        missing = [login for login in logins if login not in passwords]
        if missing:
            raise config.ConfigError(f"no broker password for {', '.join(missing)}")
        return BrokerPlan(True, with_logins, "Mosquitto, one login per component")
    return BrokerPlan(
        True, same_url_for_every_login(anonymous), "embedded: no logins, quick start only"
    )


def given_broker(
    flag_url: str, settings: Settings, probe: Probe, passwords: Mapping[str, str]
) -> BrokerPlan:
    """--broker: the URL list as given, unless no URL in it carries a login and the first
    node that answers refuses anonymous logins but takes this data directory's `status`
    login (a clustered broker set up by `taskring broker config`). Then every child gets
    every URL with its own login inserted, its list starting at another node (round robin
    over the children), so the loss of one node disconnects only the children that
    started there, and only until they move on."""
    addresses = config.BrokerAddresses.parse(flag_url)  # fail early on a malformed list
    as_given = BrokerPlan(False, same_url_for_every_login(flag_url), "given with --broker")
    if any(address.username for address in addresses):
        return as_given
    answer = first_answer(addresses, probe)
    status = broker_auth.STATUS_LOGIN
    if answer is None or answer[1] == CONNACK_ACCEPTED or status not in passwords:
        return as_given
    (host, port), _ = answer
    if probe(host, port, status, passwords[status]) != CONNACK_ACCEPTED:
        return as_given
    logins = broker_logins(settings)
    missing = [login for login in logins if login not in passwords]
    if missing:
        raise config.ConfigError(f"no broker password for {', '.join(missing)}")
    urls = [url.strip() for url in flag_url.split(",")]
    lists = {
        login: ",".join(
            broker_auth.with_login(url, login, passwords[login])
            for url in broker_auth.rotated(urls, number)
        )
        for number, login in enumerate(logins)
    }
    return BrokerPlan(False, lists, "given with --broker; logins from the data directory")


def first_answer(
    addresses: config.BrokerAddresses, probe: Probe
) -> tuple[tuple[str, int], int] | None:
    """The first plain-MQTT node that answers an anonymous CONNECT, and its CONNACK code
    (the probe speaks no TLS, so mqtts:// nodes are not asked)."""
    for address in addresses:
        if address.tls:
            continue
        answer = probe(address.host, address.port, None, None)
        if answer is not None:
            return (address.host, address.port), answer
    return None


def plan_children(settings: Settings, broker: BrokerPlan, admin_token: str) -> list[ChildSpec]:
    """Every process `taskring up` runs, broker first. Secrets go in `env`, never in `args`."""
    host, data = settings.host, str(settings.data_dir)
    children = []
    args: tuple[str, ...]
    if broker.start:
        listen = f"{host}:{settings.broker_port}"
        args = (BROKER, "--listen", listen, "--data-dir", data)
        children.append(ChildSpec(BROKER, args, {}, settings.broker_port))
    if settings.storage == "ring":
        children += plan_replicas(settings, broker)
        children += plan_cache_nodes(settings, broker)
    for number, port in enumerate(settings.client_ports, 1):
        name = f"client-portal-{number}"
        args = ("client-portal", "--id", name, "--listen", f"{host}:{port}")
        env = {"TASKRING_BROKER": broker.url(name)}
        children.append(ChildSpec(name, (*args, "--storage", settings.storage), env, port))
    for number, port in enumerate(settings.admin_ports, 1):
        name = f"admin-portal-{number}"
        args = ("admin-portal", "--id", name, "--listen", f"{host}:{port}")
        args += ("--storage", settings.storage, "--data-dir", data)
        env = {"TASKRING_BROKER": broker.url(name), "TASKRING_ADMIN_TOKEN": admin_token}
        children.append(ChildSpec(name, args, env, port))
    web_env = {"TASKRING_BROKER": broker.url(WEB_ID)}
    # The bridges pass on admin tokens and client sign-ins: only to the portals started here.
    named = f"[{host}]" if ":" in host else host  # an IPv6 host needs brackets before :port
    portals = ",".join(
        f"{named}:{port}" for port in (*settings.client_ports, *settings.admin_ports)
    )
    web_args = ("web", "--listen", f"{host}:{settings.web_port}", "--allow-portals", portals)
    children.append(ChildSpec("web", web_args, web_env, settings.web_port))
    return children


def replica_name(group: str, member: int) -> str:
    """The supervisor's name for a replica: `replica-g1-2` (logs, pids.json, output)."""
    return f"{REPLICA}-{group}-{member}"


def plan_replicas(settings: Settings, broker: BrokerPlan) -> list[ChildSpec]:
    """Every member of every replica group: groups g1..gG (the ids the cache nodes derive
    from --replica-groups), members 1..R, files under DATA/replicas/<group>-<member>/."""
    if settings.replica_groups == 0:
        return []
    members = ",".join(str(m) for m in range(1, settings.replicas + 1))
    specs = []
    for group in default_groups(settings.replica_groups):
        for member in range(1, settings.replicas + 1):
            args: tuple[str, ...] = (REPLICA, "--group", group, "--member", str(member))
            args += ("--members", members)
            args += ("--data-dir", str(settings.data_dir))
            name = replica_name(group, member)  # also its MQTT client id and broker login
            specs.append(ChildSpec(name, args, {"TASKRING_BROKER": broker.url(name)}))
    return specs


def groups_without_leader(settings: Settings, cluster: object) -> list[str]:
    """The replica groups `up` starts that a /api/cluster answer does not show with a leader.

    /readyz counts the groups the web process has heard of (from replicas, or named by
    live cache nodes); `up` knows which it started, so it checks them itself as well.
    """
    if not settings.durable:
        return []
    listed = cluster.get("replica_groups") if isinstance(cluster, dict) else None
    led = {
        group.get("id")
        for group in (listed if isinstance(listed, list) else [])
        if isinstance(group, dict) and group.get("leader")
    }
    return [group for group in default_groups(settings.replica_groups) if group not in led]


def plan_cache_nodes(settings: Settings, broker: BrokerPlan) -> list[ChildSpec]:
    """The ring's cache nodes; the first may found a new ring, the others always join one.
    Each is told the replica groups explicitly, so an inherited TASKRING_REPLICA_GROUPS
    cannot give it another idea of them than the replicas have."""
    groups: tuple[str, ...] = ("--replica-groups", str(settings.replica_groups))
    groups += ("--replicas", str(settings.replicas))
    nodes = []
    for number in range(1, settings.cache_nodes + 1):
        name = f"cache-node-{number}"
        args: tuple[str, ...] = ("cache-node", "--id", name)
        if number == 1:
            args += ("--bootstrap",)
        nodes.append(ChildSpec(name, args + groups, {"TASKRING_BROKER": broker.url(name)}))
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
    if settings.storage == "local":
        return "local: every portal holds a full copy (in memory; no durability)"
    nodes = plural(settings.cache_nodes, "cache node")
    if not settings.durable:
        return f"ring: {nodes}, in memory only (--replica-groups 0: no durability)"
    groups = plural(settings.replica_groups, "replica group")
    return (
        f"ring: {nodes}; {groups} of {plural(settings.replicas, 'replica')} "
        f"(a majority fsyncs each write; files in {settings.data_dir / 'replicas'})"
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def banner(settings: Settings, broker: BrokerPlan, admin_token: str, token_source: str) -> str:
    """What `taskring up` prints once every child listens and /readyz says writes work."""
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


# ---- failpoints, for fault testing (docs/operating.md, "Failpoints") -----------------------

FAILPOINTS_SWITCH = "TASKRING_FAILPOINTS"  # "1": give every child a failpoint file
FAILPOINTS_FILE = "TASKRING_FAILPOINTS_FILE"
FAILPOINTS_DIR = "failpoints"


def with_failpoint_files(specs: list[ChildSpec], directory: Path) -> list[ChildSpec]:
    """Each child reads its failpoints from `directory`/<its name>."""
    return [
        replace(spec, env={**spec.env, FAILPOINTS_FILE: str(directory / spec.name)})
        for spec in specs
    ]
