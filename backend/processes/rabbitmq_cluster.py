"""`taskring broker config|cluster --kind rabbitmq`: a RabbitMQ cluster as taskring's broker.

RabbitMQ serves MQTT 3.1.1 through its MQTT plugin, and a few RabbitMQ nodes
clustered together are one broker that outlives any one of them. `config`
writes the definitions (users, permissions: backend/adapters/rabbitmq_config.py,
from the same role table as Mosquitto's ACL, passwords from
DATA/broker-credentials.json), the enabled_plugins file and one rabbitmq.conf
per node, and prints the command that starts each node. `cluster` writes them
for this machine and runs every node as its child (node names rabbit-N@localhost,
each with its own Mnesia and log directories and ports), for trying a cluster
out and for tests: node 1 first, then the others, which join it through
`classic_config` (or, failing that, `rabbitmqctl join_cluster`); it prints each
node's MQTT address once every node lets the `status` login in. How to run one
on three hosts: docs/operating.md, "Clustered broker (RabbitMQ)".
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from backend.adapters import broker_logins as broker_auth
from backend.adapters import rabbitmq_config
from backend.adapters import settings as config
from backend.adapters.bus.probe import CONNACK_ACCEPTED, probe_broker
from backend.adapters.child_processes import die_with_parent
from backend.adapters.private_files import private_directory, write_private
from backend.processes import launch_plan

log = logging.getLogger(__name__)

RABBITMQ_DIR = "rabbitmq"  # under DATA/broker/: the generated files and the nodes' state
DEFINITIONS_FILE = "definitions.json"
PLUGINS_FILE = "enabled_plugins"
HOME_DIR = "home"  # HOME of the nodes and rabbitmqctl: the cluster's Erlang cookie
COOKIE_FILE = ".erlang.cookie"
LOCAL_HOST = "localhost"  # the host part of the local nodes' names
# Debian's /usr/sbin wrappers switch to the rabbitmq user when run as root; the scripts
# behind them run as whoever starts them, which lets the nodes be our children.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin",)
RABBITMQ_MISSING = (
    "rabbitmq-server not found: install it (Debian: apt-get install rabbitmq-server; "
    "its MQTT plugin comes with it)"
)
CTL_TIMEOUT = 120.0
POLL_SECONDS = 0.2
STOP_GRACE = 20.0


def rabbitmq_script(name: str) -> str | None:
    """Path of a RabbitMQ script (`rabbitmq-server`, `rabbitmqctl`), or None."""
    for directory in SCRIPT_DIRS:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


@dataclass(frozen=True)
class RabbitFiles:
    nodes: tuple[rabbitmq_config.RabbitNode, ...]
    configs: tuple[Path, ...]  # one rabbitmq.conf per node, in node order
    definitions: Path
    plugins: Path


def write_cluster_files(
    data_dir: Path,
    out_dir: Path,
    nodes: tuple[rabbitmq_config.RabbitNode, ...],
    extra_logins: tuple[str, ...],
    definitions_at: str | None = None,
) -> RabbitFiles:
    """The definitions, enabled_plugins and every node's rabbitmq.conf in `out_dir` (mode
    0600), for the default deployment's logins, `status` and `extra_logins`.
    `definitions_at`: where the nodes will find the definitions [the file written here]."""
    usual = tuple(launch_plan.broker_logins(launch_plan.Settings(data_dir)))
    wanted = (*broker_auth.TOOL_LOGINS, *usual, *extra_logins)
    for login in wanted:  # refuse an id a routing key cannot carry before any password is made
        rabbitmq_config.topic_permission(login)
    passwords = broker_auth.component_logins(broker_auth.ensure_credentials(data_dir, wanted))
    private_directory(out_dir)
    definitions = out_dir / DEFINITIONS_FILE
    text = rabbitmq_config.definitions_text(
        passwords, lambda: os.urandom(rabbitmq_config.SALT_BYTES)
    )
    write_private(definitions, text)
    plugins = out_dir / PLUGINS_FILE
    write_private(plugins, rabbitmq_config.enabled_plugins())
    configs = []
    for node in nodes:
        path = out_dir / f"rabbit-{node.number}.conf"
        where = definitions_at or str(definitions.resolve())
        write_private(path, rabbitmq_config.node_config(nodes, node.number, where))
        configs.append(path)
    return RabbitFiles(nodes, tuple(configs), definitions, plugins)


def plan(
    nodes: int,
    hosts: Sequence[str],
    amqp_ports: tuple[int, ...],
    mqtt_ports: tuple[int, ...],
    dist_ports: tuple[int, ...],
    listen: str | None,
) -> tuple[rabbitmq_config.RabbitNode, ...]:
    try:
        return rabbitmq_config.plan_nodes(nodes, hosts, amqp_ports, mqtt_ports, dist_ports, listen)
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def node_dirs(state_dir: Path, node: rabbitmq_config.RabbitNode) -> tuple[str, str]:
    """(Mnesia base, log base) of a local node."""
    base = state_dir / f"rabbit-{node.number}"
    return str((base / "mnesia").resolve()), str((base / "log").resolve())


def start_command(
    files: RabbitFiles, node: rabbitmq_config.RabbitNode, mnesia: str, logs: str
) -> str:
    """The shell command that starts `node` on its host."""
    env = rabbitmq_config.node_environment(
        node,
        str(files.configs[node.number - 1].resolve()),
        str(files.plugins.resolve()),
        mnesia,
        logs,
    )
    return " ".join([*(f"{key}={value}" for key, value in env.items()), "rabbitmq-server"])


def write_config(
    nodes: int,
    hosts: str,
    amqp_ports: tuple[int, ...],
    mqtt_ports: tuple[int, ...],
    dist_ports: tuple[int, ...],
    data_dir: str | None,
    extra: tuple[str, ...],
    out: str | None,
) -> None:
    """`taskring broker config --kind rabbitmq`: write the files, print how to start each node."""
    host_list = [host.strip() for host in hosts.split(",") if host.strip()]
    if host_list == [config.DEFAULT_HOST]:
        host_list = [LOCAL_HOST]  # node names need a host name, not an address
    planned = plan(nodes, host_list, amqp_ports, mqtt_ports, dist_ports, None)
    directory = config.data_dir(data_dir)
    out_dir = Path(out) if out else directory / launch_plan.BROKER / RABBITMQ_DIR
    try:
        files = write_cluster_files(directory, out_dir, planned, extra)
    except (config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"definitions (users, permissions): {files.definitions}")
    click.echo("copy this directory to the same path on every node's host, then run there:")
    state = "/var/lib/rabbitmq"
    for node in files.nodes:
        mnesia, logs = f"{state}/rabbit-{node.number}/mnesia", f"{state}/rabbit-{node.number}/log"
        click.echo(f"node {node.number} ({node.name}, MQTT port {node.mqtt_port}):")
        click.echo(f"  {start_command(files, node, mnesia, logs)}")
    click.echo("every node's host needs the same ~/.erlang.cookie for the user running it")
    click.echo(f"logins and passwords: {broker_auth.credentials_path(directory)}")


def check_ports_free(nodes: Sequence[rabbitmq_config.RabbitNode], host: str) -> None:
    """Fail before anything starts when a node's port is taken (AMQP binds loopback)."""
    flags = {"AMQP": "--amqp-ports", "MQTT": "--mqtt-ports", "dist": "--dist-ports"}
    for node in nodes:
        for kind, port in rabbitmq_config.node_ports(node):
            address = rabbitmq_config.AMQP_LISTEN_HOST if kind == "AMQP" else host
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address if kind != "dist" else "", port))
                except OSError as exc:
                    raise click.ClickException(
                        f"node {node.number} cannot listen on port {port} ({kind}): "
                        f"{exc.strerror or exc}; pick other ports with {flags[kind]}"
                    ) from exc


def erlang_home(state_dir: Path) -> Path:
    """A HOME for the nodes and rabbitmqctl whose .erlang.cookie is the cluster's own."""
    home = private_directory(state_dir / HOME_DIR)
    cookie = home / COOKIE_FILE
    if not cookie.exists():
        write_private(cookie, secrets.token_hex(20))
        cookie.chmod(0o400)  # Erlang refuses a cookie file others could read
    return home


def run_local_cluster(
    nodes: int,
    host: str,
    amqp_ports: tuple[int, ...],
    mqtt_ports: tuple[int, ...],
    dist_ports: tuple[int, ...],
    data_dir: str | None,
    extra: tuple[str, ...],
    ready_timeout: float,
) -> None:
    """`taskring broker cluster --kind rabbitmq`."""
    server, ctl = rabbitmq_script("rabbitmq-server"), rabbitmq_script("rabbitmqctl")
    if server is None or ctl is None:
        raise click.ClickException(RABBITMQ_MISSING)
    planned = plan(nodes, [LOCAL_HOST], amqp_ports, mqtt_ports, dist_ports, host)
    check_ports_free(planned, host)
    directory = config.data_dir(data_dir)
    state_dir = directory / launch_plan.BROKER / RABBITMQ_DIR
    try:
        files = write_cluster_files(directory, state_dir, planned, extra)
        status_password = broker_auth.load_credentials(directory)[broker_auth.STATUS_LOGIN]
        home = erlang_home(state_dir)
    except (config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    cluster = LocalCluster(server, ctl, files, state_dir, home)
    sys.exit(cluster.run(status_password, ready_timeout))


class LocalCluster:
    """Every node of a RabbitMQ cluster on this machine, as children of this process."""

    def __init__(
        self, server: str, ctl: str, files: RabbitFiles, state_dir: Path, home: Path
    ) -> None:
        self.server, self.ctl, self.files = server, ctl, files
        self.state_dir, self.home = state_dir, home
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def env(self, node: rabbitmq_config.RabbitNode) -> dict[str, str]:
        mnesia, logs = node_dirs(self.state_dir, node)
        for path in (mnesia, logs):
            private_directory(path)
        node_env = rabbitmq_config.node_environment(
            node,
            str(self.files.configs[node.number - 1].resolve()),
            str(self.files.plugins.resolve()),
            mnesia,
            logs,
        )
        return {**os.environ, "HOME": str(self.home), **node_env}

    def run(self, status_password: str, ready_timeout: float) -> int:
        """Run every node until one exits or we are asked to stop; 0 when asked."""

        def stop(signum: int, _frame: FrameType | None) -> None:
            self.stopping = True

        previous = {
            signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            deadline = time.monotonic() + ready_timeout
            first, *others = self.files.nodes
            # Node 1 alone first: it forms the cluster, and the others join it as they boot.
            self.start(first)
            if not self.await_startup([first], deadline):
                return 0 if self.stopping else 1
            for node in others:
                self.start(node)
            if not self.await_startup(others, deadline):
                return 0 if self.stopping else 1
            for node in others:
                self.ensure_joined(node, first)
            if not self.await_mqtt(status_password, deadline):
                return 0 if self.stopping else 1
            report_ready(self.files.nodes)
            return self.serve()
        finally:
            self.stop_children()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def serve(self) -> int:
        """Keep the nodes until asked to stop. Unlike NATS's, a node that exits leaves
        the others running: outliving a node is what the cluster is for (and what the
        tests check); when the last one exits, so do we."""
        reported: set[int] = set()
        while not self.stopping:
            for index, child in enumerate(self.children):
                if child.poll() is not None and index not in reported:
                    reported.add(index)
                    name = self.files.nodes[index].name
                    log.error("%s exited with code %s; the others go on", name, child.returncode)
                    click.echo(f"node {index + 1} ({name}) exited with code {child.returncode}")
                    sys.stdout.flush()
            if len(reported) == len(self.children):
                return 1
            time.sleep(POLL_SECONDS)
        return 0

    def start(self, node: rabbitmq_config.RabbitNode) -> None:
        # Its own process group, so Ctrl-C in a terminal reaches only us and we stop the
        # nodes in order; killed with SIGKILL, we take them with us all the same.
        self.children.append(
            subprocess.Popen(
                [self.server],
                env=self.env(node),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=die_with_parent(),
            )
        )

    def rabbitmqctl(
        self, node: rabbitmq_config.RabbitNode, *args: str
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.home), "RABBITMQ_DIST_PORT": str(node.dist_port)}
        return subprocess.run(
            [self.ctl, "-n", node.name, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    def await_startup(self, nodes: Sequence[rabbitmq_config.RabbitNode], deadline: float) -> bool:
        for node in nodes:
            while not self.stopping:
                if self.exit_code_of_any() is not None:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("%s did not start in time", node.name)
                    return False
                answer = self.rabbitmqctl(
                    node, "await_startup", "--timeout", str(int(min(left, 10)) + 1)
                )
                if answer.returncode == 0:
                    break
        return not self.stopping

    def ensure_joined(
        self, node: rabbitmq_config.RabbitNode, first: rabbitmq_config.RabbitNode
    ) -> None:
        """Join `node` to `first`'s cluster unless peer discovery already has."""
        if first.name in running_nodes(
            self.rabbitmqctl(node, "cluster_status", "--formatter", "json")
        ):
            return
        log.info("%s booted alone; joining it to %s", node.name, first.name)
        for args in (("stop_app",), ("reset",), ("join_cluster", first.name), ("start_app",)):
            answer = self.rabbitmqctl(node, *args)
            if answer.returncode != 0:
                raise click.ClickException(
                    f"rabbitmqctl -n {node.name} {' '.join(args)} failed: {answer.stderr.strip()}"
                )

    def await_mqtt(self, password: str, deadline: float) -> bool:
        waiting = list(self.files.nodes)
        while waiting and not self.stopping:
            if self.exit_code_of_any() is not None:
                return False
            waiting = [node for node in waiting if not lets_status_in(node, password)]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(node.name for node in waiting)
                log.error("%s did not let taskring in in time", names)
                return False
            time.sleep(POLL_SECONDS)
        return not self.stopping

    def exit_code_of_any(self) -> int | None:
        for child in self.children:
            if child.poll() is not None:
                log.error("rabbitmq-server exited with code %s", child.returncode)
                return child.returncode
        return None

    def stop_children(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def running_nodes(answer: subprocess.CompletedProcess[str]) -> list[str]:
    """The running nodes `rabbitmqctl cluster_status --formatter json` lists."""
    if answer.returncode != 0:
        return []
    try:
        status: Mapping[str, object] = json.loads(answer.stdout)
    except ValueError:
        return []
    running = status.get("running_nodes")
    return [str(name) for name in running] if isinstance(running, list) else []


def lets_status_in(node: rabbitmq_config.RabbitNode, password: str) -> bool:
    answer = probe_broker(
        node.listen or node.host, node.mqtt_port, broker_auth.STATUS_LOGIN, password, timeout=2.0
    )
    return answer == CONNACK_ACCEPTED


def report_ready(nodes: Sequence[rabbitmq_config.RabbitNode]) -> None:
    for node in nodes:
        click.echo(f"node {node.number} ({node.name}): {node.mqtt_url}")
    count = f"{len(nodes)} node" if len(nodes) == 1 else f"{len(nodes)} nodes"
    click.echo(f"RabbitMQ cluster of {count} is ready")
    sys.stdout.flush()
