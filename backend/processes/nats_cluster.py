"""`taskring broker config` and `taskring broker cluster`: a NATS cluster as taskring's broker.

NATS serves MQTT 3.1.1 through its MQTT gateway, and a few NATS servers
routed together are one broker that outlives any one of them. `config`
writes one configuration file per node (backend/adapters/nats_config.py: the
users and permissions come from the same role table as Mosquitto's ACL, the
passwords from DATA/broker-credentials.json), to be copied to the nodes'
hosts. `cluster` writes them for this machine and runs every node as its
child, for trying a cluster out and for tests: it prints each node's MQTT
address once every node lets the `status` login in, passes SIGTERM/SIGINT on,
stops all nodes when one exits before they are ready, and starts again a node
that exits after. How to run one on three hosts:
docs/operating.md, "Clustered broker (NATS)".
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from backend.adapters import broker_logins as broker_auth
from backend.adapters import nats_config
from backend.adapters import settings as config
from backend.adapters.bus.probe import CONNACK_ACCEPTED, probe_broker
from backend.adapters.child_processes import die_with_parent
from backend.adapters.private_files import private_directory, write_private
from backend.processes import launch_plan, rabbitmq_cluster

log = logging.getLogger(__name__)

KINDS = ("nats", "rabbitmq")  # rabbitmq: backend/processes/rabbitmq_cluster.py
NATS_DIR = "nats"  # under DATA/broker/: the generated files and the cluster's own secret
ROUTE_PASSWORD_FILE = "route-password"
JETSTREAM_DIR = "jetstream"  # + /<server_name>: each node's JetStream store
NATS_MISSING = "nats-server not found: install nats-server (Debian: apt-get install nats-server)"
READY_TIMEOUT = 30.0
RABBITMQ_READY_TIMEOUT = 180.0  # three Erlang VMs booting one after another
DEFAULT_AMQP_PORT = 5672  # backend/adapters/rabbitmq_config.py's defaults
DEFAULT_DIST_PORT = 25672
POLL_SECONDS = 0.1
STOP_GRACE = 10.0


def nats_binary() -> str | None:
    """Path of nats-server, or None when it is not installed (Debian puts it in /usr/sbin)."""
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


@dataclass(frozen=True)
class ClusterFiles:
    nodes: tuple[nats_config.NatsNode, ...]
    configs: tuple[Path, ...]  # one per node, in node order


def parse_ports(text: str, flag: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is not a port or a list of ports", param_hint=flag
        ) from exc
    if not ports or not all(0 < port < 65536 for port in ports):
        raise click.BadParameter(f"{text!r}: ports are 1..65535", param_hint=flag)
    return ports


def parse_logins(text: str) -> tuple[str, ...]:
    logins = tuple(login.strip() for login in text.split(",") if login.strip())
    for login in logins:
        if broker_auth.role_of(login) is None:
            raise click.BadParameter(
                f"{login!r} names no component; logins are {broker_auth.LOGIN_FORMS}",
                param_hint="--logins",
            )
    return logins


def route_password(directory: Path) -> str:
    """The password the nodes' routes log in with, made once and kept in the data directory."""
    path = directory / ROUTE_PASSWORD_FILE
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(broker_auth.PASSWORD_BYTES)
    write_private(path, password + "\n")
    return password


def write_cluster_files(
    data_dir: Path,
    out_dir: Path,
    store_dir: Path | str,
    nodes: tuple[nats_config.NatsNode, ...],
    extra_logins: tuple[str, ...],
) -> ClusterFiles:
    """Every node's configuration in `out_dir` (mode 0600), for the default deployment's
    logins, `status` and `extra_logins`; passwords are made for those that have none."""
    # The logins of `taskring up`'s default deployment, so it can use this broker.
    usual = tuple(launch_plan.broker_logins(launch_plan.Settings(data_dir)))
    wanted = (*broker_auth.TOOL_LOGINS, *usual, *extra_logins)
    for login in wanted:  # refuse an id NATS cannot carry before any password is made
        nats_config.login_permissions(login)
    passwords = broker_auth.component_logins(broker_auth.ensure_credentials(data_dir, wanted))
    secrets_dir = private_directory(data_dir / launch_plan.BROKER / NATS_DIR)
    route = route_password(secrets_dir)
    private_directory(out_dir)
    configs = []
    for node in nodes:
        store = f"{store_dir}/{node.server_name}"
        text = nats_config.node_config(nodes, node.number, store, passwords, route)
        path = out_dir / f"{node.server_name}.conf"
        write_private(path, text)
        configs.append(path)
    return ClusterFiles(nodes, tuple(configs))


def plan(
    nodes: int, hosts: str, client_ports: str, cluster_ports: str, mqtt_ports: str
) -> tuple[nats_config.NatsNode, ...]:
    host_list = [host.strip().strip("[]") for host in hosts.split(",") if host.strip()]
    if not host_list:
        raise click.BadParameter("name at least one host", param_hint="--hosts")
    try:
        return nats_config.plan_nodes(
            nodes,
            host_list,
            parse_ports(client_ports, "--client-ports"),
            parse_ports(cluster_ports, "--cluster-ports"),
            parse_ports(mqtt_ports, "--mqtt-ports"),
        )
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def check_ports_free(nodes: Sequence[nats_config.NatsNode]) -> None:
    for node in nodes:
        for kind, port in (
            ("client", node.client_port),
            ("cluster", node.cluster_port),
            ("MQTT", node.mqtt_port),
        ):
            family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
            with socket.socket(family) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((node.host, port))
                except OSError as exc:
                    raise click.ClickException(
                        f"node {node.number} cannot listen on {node.address(port)} ({kind}): "
                        f"{exc.strerror or exc}; pick other ports with --{kind.lower()}-ports"
                    ) from exc


def mqtt_url(node: nats_config.NatsNode) -> str:
    return f"mqtt://{node.address(node.mqtt_port)}"


Command = TypeVar("Command", bound=Callable[..., Any])


# Options `config` and `cluster` share.
def _cluster_options(command: Command) -> Command:
    options = [
        click.option(
            "--kind",
            type=click.Choice(KINDS),
            default="nats",
            show_default=True,
            help="The clustered broker: NATS with its MQTT gateway and JetStream, or "
            "RabbitMQ with its MQTT plugin.",
        ),
        click.option(
            "--nodes",
            type=click.IntRange(1, 32),
            default=3,
            show_default=True,
            help="Servers in the cluster.",
        ),
        click.option(
            "--client-ports",
            default=str(nats_config.DEFAULT_CLIENT_PORT),
            show_default=True,
            metavar="PORT[,PORT...]",
            help="NATS protocol port of each node (monitoring; taskring uses MQTT).",
        ),
        click.option(
            "--cluster-ports",
            default=str(nats_config.DEFAULT_CLUSTER_PORT),
            show_default=True,
            metavar="PORT[,PORT...]",
            help="Route port of each node, where the nodes meet.",
        ),
        click.option(
            "--mqtt-ports",
            default=str(nats_config.DEFAULT_MQTT_PORT),
            show_default=True,
            metavar="PORT[,PORT...]",
            help="MQTT port of each node, where taskring's components connect.",
        ),
        click.option(
            "--amqp-ports",
            default=str(DEFAULT_AMQP_PORT),
            show_default=True,
            metavar="PORT[,PORT...]",
            help="RabbitMQ: AMQP port of each node (loopback only; tools, not taskring).",
        ),
        click.option(
            "--dist-ports",
            default=str(DEFAULT_DIST_PORT),
            show_default=True,
            metavar="PORT[,PORT...]",
            help="RabbitMQ: Erlang distribution port of each node (RABBITMQ_DIST_PORT).",
        ),
        click.option(
            "--data-dir",
            envvar="TASKRING_DATA_DIR",
            type=click.Path(file_okay=False),
            help="Where the login passwords live (broker-credentials.json) "
            f"[default: {config.DEFAULT_DATA_DIR}].",
        ),
        click.option(
            "--logins",
            default="",
            metavar="ID,ID,...",
            help="Also accept these components, beyond the default deployment's.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("config")
@_cluster_options
@click.option(
    "--hosts",
    default=config.DEFAULT_HOST,
    show_default=True,
    metavar="HOST[,HOST...]",
    help="The host (name or address) of each node, or one for all.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Directory for the configuration files [default: DATA/broker/nats].",
)
@click.option(
    "--store-dir",
    metavar="PATH",
    help="Where each node keeps its JetStream files on its own host, "
    "+ /taskring-N [default: DATA/broker/nats/jetstream, absolute].",
)
def config_command(
    kind: str,
    nodes: int,
    client_ports: str,
    cluster_ports: str,
    mqtt_ports: str,
    amqp_ports: str,
    dist_ports: str,
    data_dir: str | None,
    logins: str,
    hosts: str,
    out: str | None,
    store_dir: str | None,
) -> None:
    """Write one NATS server configuration per node of a broker cluster (or, with
    --kind rabbitmq, RabbitMQ's definitions and one rabbitmq.conf per node).

    Each file (taskring-N.conf, mode 0600) holds the node's listeners, routes to the
    other nodes, JetStream and the MQTT gateway, and one user per component login with
    its role's topics as permissions, passwords from DATA/broker-credentials.json.
    Copy taskring-N.conf to node N's host and run `nats-server -c taskring-N.conf`
    there. Each port option takes one port per node, or one for all: nodes on the
    same host then take it, it+1, it+2, ...

    \b
    Three hosts:  taskring broker config --hosts nats1,nats2,nats3
    One machine:  taskring broker config   (ports 4222-4224, 6222-6224, 1883-1885)
    """
    if kind == "rabbitmq":
        rabbitmq_cluster.write_config(
            nodes,
            hosts,
            parse_ports(amqp_ports, "--amqp-ports"),
            parse_ports(mqtt_ports, "--mqtt-ports"),
            parse_ports(dist_ports, "--dist-ports"),
            data_dir,
            parse_logins(logins),
            out,
        )
        return
    planned = plan(nodes, hosts, client_ports, cluster_ports, mqtt_ports)
    extra = parse_logins(logins)
    directory = config.data_dir(data_dir)
    out_dir = Path(out) if out else directory / launch_plan.BROKER / NATS_DIR
    store = store_dir or str((directory / launch_plan.BROKER / NATS_DIR / JETSTREAM_DIR).resolve())
    try:
        files = write_cluster_files(directory, out_dir, store, planned, extra)
    except (config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for node, path in zip(files.nodes, files.configs, strict=True):
        click.echo(f"node {node.number}: {path}  (MQTT {mqtt_url(node)})")
    click.echo(f"logins and passwords: {broker_auth.credentials_path(directory)}")


@click.command("cluster")
@_cluster_options
@click.option(
    "--host",
    default=config.DEFAULT_HOST,
    show_default=True,
    help="The address every node listens on.",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(1),
    default=None,
    help=f"Seconds to wait for every node to let taskring in "
    f"[default: {READY_TIMEOUT:g} for NATS, {RABBITMQ_READY_TIMEOUT:g} for RabbitMQ].",
)
def cluster_command(
    kind: str,
    nodes: int,
    client_ports: str,
    cluster_ports: str,
    mqtt_ports: str,
    amqp_ports: str,
    dist_ports: str,
    data_dir: str | None,
    logins: str,
    host: str,
    ready_timeout: float | None,
) -> None:
    """Run a NATS (or, with --kind rabbitmq, RabbitMQ) broker cluster on this machine,
    every node a child of this command.

    Writes the nodes' configurations to DATA/broker/nats/ (their JetStream files go to
    DATA/broker/nats/jetstream/), starts nats-server for each, and prints each node's
    MQTT address once every node lets the `status` login in. Give `taskring up` those
    addresses with --broker (comma-separated, no logins) and the same --data-dir: each
    component logs in as itself on every node. SIGTERM or Ctrl-C stops every node; so
    does one node exiting before every node is ready. One that exits after is started
    again.
    """
    if kind == "rabbitmq":
        rabbitmq_cluster.run_local_cluster(
            nodes,
            host,
            parse_ports(amqp_ports, "--amqp-ports"),
            parse_ports(mqtt_ports, "--mqtt-ports"),
            parse_ports(dist_ports, "--dist-ports"),
            data_dir,
            parse_logins(logins),
            ready_timeout or RABBITMQ_READY_TIMEOUT,
        )
        return
    binary = nats_binary()
    if binary is None:
        raise click.ClickException(NATS_MISSING)
    planned = plan(nodes, host, client_ports, cluster_ports, mqtt_ports)
    extra = parse_logins(logins)
    check_ports_free(planned)
    directory = config.data_dir(data_dir)
    out_dir = directory / launch_plan.BROKER / NATS_DIR
    store = str((out_dir / JETSTREAM_DIR).resolve())
    try:
        files = write_cluster_files(directory, out_dir, store, planned, extra)
        status_password = broker_auth.load_credentials(directory)[broker_auth.STATUS_LOGIN]
    except (config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(run_cluster(binary, files, status_password, ready_timeout or READY_TIMEOUT))


def run_cluster(
    binary: str, files: ClusterFiles, status_password: str, ready_timeout: float
) -> int:
    """Run every node until we are asked to stop (0), or one exits before all are ready."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # Installed first, so a signal that arrives while the nodes start is not lost.
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        children.extend(start_node(binary, config_file) for config_file in files.configs)
        waiting = list(files.nodes)
        deadline = time.monotonic() + ready_timeout
        while not stopping:
            if waiting:
                code = exit_code_of_any(children)
                if code is not None:
                    return code or 1
            else:
                # Once the cluster stands, a node that dies is started again, as a
                # service manager would: the others carry on meanwhile.
                restart_exited(binary, files, children)
            if waiting:
                waiting = [node for node in waiting if not lets_status_in(node, status_password)]
                if not waiting:
                    report_ready(files.nodes)
                elif time.monotonic() > deadline:
                    names = ", ".join(node.server_name for node in waiting)
                    log.error("%s did not let taskring in within %ss", names, ready_timeout)
                    return 1
            time.sleep(POLL_SECONDS)
        return 0
    finally:
        stop_children(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_node(binary: str, config_file: Path) -> subprocess.Popen[bytes]:
    # In a process group of its own, so Ctrl-C in a terminal reaches only us, and
    # we stop the nodes; killed with SIGKILL, we take them with us all the same.
    return subprocess.Popen(
        [binary, "-c", str(config_file)],
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=die_with_parent(),
    )


def restart_exited(
    binary: str, files: ClusterFiles, children: list[subprocess.Popen[bytes]]
) -> None:
    """Start again every node whose nats-server has exited (each logged)."""
    for index, child in enumerate(children):
        if child.poll() is not None:
            node = files.nodes[index]
            log.warning(
                "nats-server %s exited (code %s); starting it again",
                node.server_name,
                child.returncode,
            )
            children[index] = start_node(binary, files.configs[index])


def exit_code_of_any(children: Sequence[subprocess.Popen[bytes]]) -> int | None:
    """The exit code of a node that has exited (logged), or None while all run."""
    for child in children:
        if child.poll() is not None:
            log.error("nats-server %s exited with code %s", child.args, child.returncode)
            return child.returncode
    return None


def report_ready(nodes: Sequence[nats_config.NatsNode]) -> None:
    for node in nodes:
        click.echo(f"node {node.number} ({node.server_name}): {mqtt_url(node)}")
    count = f"{len(nodes)} node" if len(nodes) == 1 else f"{len(nodes)} nodes"
    click.echo(f"NATS cluster of {count} is ready")
    sys.stdout.flush()


def lets_status_in(node: nats_config.NatsNode, password: str) -> bool:
    """Whether the node's MQTT gateway accepts the `status` login: it answers only once
    JetStream has a leader and the gateway's session stream exists."""
    answer = probe_broker(
        node.host, node.mqtt_port, broker_auth.STATUS_LOGIN, password, timeout=2.0
    )
    return answer == CONNACK_ACCEPTED


def stop_children(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
