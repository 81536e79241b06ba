"""`taskring broker`: the MQTT broker every component talks through.

With Mosquitto installed it runs Mosquitto as its child, configured from
`DATA/broker/`: one listener with TCP_NODELAY (without it a QoS-1 round trip
stalls ~88 ms on Nagle's algorithm), no persistence, one login and ACL per
component (backend/adapters/broker_logins.py), run as the `mosquitto` user when
started as root; signals are passed on and it exits when Mosquitto does.
Without Mosquitto, or with --embedded, it runs amqtt's broker in-process
(MQTT 3.1.1, anonymous, slower; for a quick start). Its logins are those in
DATA/broker-credentials.json, the default deployment's, `status` and --logins;
how `taskring up` finds or starts a broker: docs/operating.md, The broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from backend.adapters import broker_logins as broker_auth
from backend.adapters import settings as config
from backend.adapters.child_processes import die_with_parent
from backend.adapters.private_files import write_private
from backend.processes import launch_plan, nats_cluster

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:1883"
BROKER_DIR = "broker"
MOSQUITTO_USER = "mosquitto"  # the user Mosquitto switches to when started as root
PRIVATE_PREFIX = "taskring-broker-"  # + our pid: the private directory of a root-started broker
# Where a private directory goes when TMPDIR is one Mosquitto's user cannot enter.
SYSTEM_TEMP_DIRS = ("/tmp", "/var/tmp")


def mosquitto_binary() -> str | None:
    """Path of the Mosquitto broker, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def mosquitto_passwd_binary(mosquitto: str) -> str:
    """`mosquitto_passwd` (Debian puts it in /usr/bin, the broker in /usr/sbin)."""
    candidates = [
        shutil.which("mosquitto_passwd"),
        str(Path(mosquitto).with_name("mosquitto_passwd")),
        "/usr/bin/mosquitto_passwd",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise click.ClickException("mosquitto_passwd not found; it comes with the mosquitto package")


def uses_authentication(embedded: bool, no_auth: bool) -> bool:
    """Whether `taskring broker` with these flags on this host wants login passwords."""
    return not (embedded or no_auth) and mosquitto_binary() is not None


@dataclass(frozen=True)
class MosquittoSettings:
    host: str
    port: int
    password_file: Path | None = None  # None: anonymous logins allowed, no ACL
    acl_file: Path | None = None
    run_as_root: bool = False


def mosquitto_conf(settings: MosquittoSettings) -> str:
    """The text of mosquitto.conf for these settings."""
    lines = [
        "# Written by `taskring broker` at every start; edits are overwritten.",
        f"listener {settings.port} {settings.host}",
        "set_tcp_nodelay true",
        "persistence false",
        "log_dest stderr",  # unbuffered, unlike stdout into a pipe
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if settings.password_file is None:
        lines.append("allow_anonymous true")
    else:
        lines += [
            "allow_anonymous false",
            # The login is the client id, so no login can disconnect another's session.
            "use_username_as_clientid true",
            f"password_file {settings.password_file}",
            f"acl_file {settings.acl_file}",
        ]
    if settings.run_as_root:
        lines.append("user root")
    return "\n".join(lines) + "\n"


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear message when host:port cannot be listened on."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                " (is a broker already running there?)"
            ) from exc


class MosquittoFiles:
    """mosquitto.conf, the hashed password file and the ACL, written under DATA/broker/.

    Started as root, Mosquitto switches to the `mosquitto` user by itself, and
    that change of user also cancels the kernel's promise to kill it when its
    parent dies (PR_SET_PDEATHSIG). So we start it as that user ourselves
    (`run_as`); as that user usually cannot enter the data directory, it then
    reads copies from a private directory it owns, removed by `cleanup`.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str,
        port: int,
        authenticate: bool,
        logins: tuple[str, ...] = (),
    ) -> None:
        self.directory = data_dir / BROKER_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self.private: Path | None = None
        self.run_as: pwd.struct_passwd | None = None
        auth_files = self._write_auth(data_dir, logins) if authenticate else []
        stays_root = False
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam(MOSQUITTO_USER)
            except KeyError:
                stays_root = True  # no user to switch to: Mosquitto would refuse to start
        if self.run_as is not None:
            auth_files = self._private_copies(auth_files)
        password_file, acl_file = auth_files or (None, None)
        settings = MosquittoSettings(host, port, password_file, acl_file, stays_root)
        self.conf = self.directory / "mosquitto.conf"
        write_private(self.conf, mosquitto_conf(settings))
        if self.run_as is not None:
            self.conf = self._private_copies([self.conf])[0]

    def _write_auth(self, data_dir: Path, logins: tuple[str, ...]) -> list[Path]:
        wanted = (*broker_auth.TOOL_LOGINS, *logins)
        stored = broker_auth.ensure_credentials(data_dir, wanted)
        passwords = broker_auth.component_logins(stored)
        password_file, acl_file = self.directory / "passwd", self.directory / "acl"
        write_private(acl_file, broker_auth.acl_text(passwords))
        # Hashed by mosquitto_passwd itself; -U reads the file, so no password is on a command line.
        write_private(password_file, broker_auth.plaintext_password_file(passwords))
        tool = mosquitto_passwd_binary(mosquitto_binary() or "mosquitto")
        result = subprocess.run([tool, "-U", str(password_file)], capture_output=True, text=True)
        if result.returncode != 0:
            password_file.unlink(missing_ok=True)
            raise click.ClickException(f"mosquitto_passwd failed: {result.stderr or result.stdout}")
        return [password_file, acl_file]

    def _private_copies(self, sources: list[Path]) -> list[Path]:
        assert self.run_as is not None
        uid, gid = self.run_as.pw_uid, self.run_as.pw_gid
        if self.private is None:
            remove_stale_private_dirs()
            self.private = make_private_dir(self.run_as)
        copies = []
        for source in sources:
            copy = self.private / source.name
            shutil.copyfile(source, copy)
            copy.chmod(0o600)
            os.chown(copy, uid, gid)
            copies.append(copy)
        return copies

    def cleanup(self) -> None:
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)


def private_dir_parents() -> list[Path]:
    """Where a private directory may go, best first: the usual temporary directory
    (TMPDIR's), then the system's own, which every user may enter."""
    parents: list[Path] = []
    for candidate in (tempfile.gettempdir(), *SYSTEM_TEMP_DIRS):
        path = Path(candidate)
        if path not in parents:
            parents.append(path)
    return parents


def enterable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` (with its primary group only, as Mosquitto runs) can reach files
    in `path`: it needs search permission on the directory and every one above it."""
    for directory in (path, *path.parents):
        try:
            info = directory.stat()
        except OSError:
            return False
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def make_private_dir(user: pwd.struct_passwd) -> Path:
    """A new directory only `user` (and root) can read, somewhere `user` can reach.

    TMPDIR may name a directory private to root (pytest's tmp_path is 0700), where a
    Mosquitto running as `user` could open nothing; the system's temporary directory
    is used then. The directory is created 0700 and handed to `user`, so the password
    file in it stays between root and Mosquitto.
    """
    tried = []
    for parent in private_dir_parents():
        if not enterable_by(parent.resolve(), user):
            tried.append(f"{parent} (the {user.pw_name} user cannot enter it)")
            continue
        try:
            private = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-", dir=parent))
            os.chown(private, user.pw_uid, user.pw_gid)
        except OSError as exc:
            tried.append(f"{parent} ({exc.strerror or exc})")
            continue
        return private
    raise click.ClickException(
        f"no directory for Mosquitto's configuration that the {user.pw_name} user can read;"
        f" tried {'; '.join(tried)}. Set TMPDIR to a directory it can enter."
    )


def remove_stale_private_dirs() -> None:
    """Remove private directories left by brokers that were killed before they could."""
    for parent in private_dir_parents():
        for path in parent.glob(f"{PRIVATE_PREFIX}*-*"):
            owner = path.name[len(PRIVATE_PREFIX) :].split("-", 1)[0]
            if owner.isdigit() and not process_exists(int(owner)):
                shutil.rmtree(path, ignore_errors=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_mosquitto(mosquitto: str, files: MosquittoFiles) -> int:
    """Run Mosquitto until it exits; pass SIGTERM/SIGINT on. 0 when it stopped because we asked."""
    child: subprocess.Popen[bytes] | None = None
    asked_to_stop = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal asked_to_stop
        asked_to_stop = True
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    # Installed first, so a signal that arrives while Mosquitto starts is not lost.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    run_as = files.run_as
    # Popen switches user before preexec_fn runs, so the parent-death signal survives the switch.
    child = subprocess.Popen(
        [mosquitto, "-c", str(files.conf)],
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
        user=run_as.pw_uid if run_as else None,
        group=run_as.pw_gid if run_as else None,
        extra_groups=[] if run_as else None,
    )
    if asked_to_stop:
        child.terminate()
    code = child.wait()
    if asked_to_stop:
        return 0
    log.error("mosquitto exited on its own with code %s", code)
    return code or 1


async def run_embedded(host: str, port: int) -> None:
    """Run amqtt's broker in this process until SIGTERM or SIGINT."""
    from amqtt.broker import Broker  # only this mode pays for importing amqtt

    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    log.info("embedded broker listening on %s:%s", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("embedded broker stopping")
    await broker.shutdown()


@click.group("broker", invoke_without_command=True)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    envvar="TASKRING_BROKER_LISTEN",
    help="host:port to accept MQTT connections on.",
)
@click.option(
    "--data-dir",
    envvar="TASKRING_DATA_DIR",
    type=click.Path(file_okay=False),
    help=f"Where the configuration and login passwords live [default: {config.DEFAULT_DATA_DIR}].",
)
@click.option(
    "--embedded",
    is_flag=True,
    envvar="TASKRING_EMBEDDED_BROKER",
    help="Use the in-process broker even if Mosquitto is installed (quick start only).",
)
@click.option("--no-auth", is_flag=True, help="Mosquitto: allow anonymous logins and skip the ACL.")
@click.option(
    "--logins",
    default="",
    metavar="ID,ID,...",
    help="Also accept these components, e.g. ones started by hand on other hosts "
    "(client-portal-3,cache-node-5,replica-g1-4,...): a password is added to the "
    "credentials file for each that has none.",
)
@click.pass_context
def broker(
    ctx: click.Context,
    listen: str,
    data_dir: str | None,
    embedded: bool,
    no_auth: bool,
    logins: str,
) -> None:
    """Run an MQTT broker: Mosquitto with a login and an ACL per component, else an embedded one.

    Passwords are generated once into DATA/broker-credentials.json (mode 0600): for
    `status`, the components of `taskring up`'s default deployment, every --logins
    one, and whatever `taskring up` added there. The commands below make a clustered
    broker of NATS servers, or with --kind rabbitmq of RabbitMQ nodes, instead
    (docs/operating.md, "Clustered broker (NATS)" and "(RabbitMQ)").
    """
    if ctx.invoked_subcommand is not None:
        return  # `config` or `cluster`: the options above are for running Mosquitto
    try:
        host, port = config.parse_host_port(listen)
    except config.ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from exc
    extra_logins = tuple(login.strip() for login in logins.split(",") if login.strip())
    for login in extra_logins:
        if broker_auth.role_of(login) is None:
            raise click.BadParameter(
                f"{login!r} names no component; logins are {broker_auth.LOGIN_FORMS}",
                param_hint="--logins",
            )
    check_port_free(host, port)
    mosquitto = None if embedded else mosquitto_binary()
    if mosquitto is None:
        log.warning(
            "running the embedded MQTT broker on %s:%s: for a quick start only; "
            "it has no authentication and is slower. Install Mosquitto for real use.",
            host,
            port,
        )
        asyncio.run(run_embedded(host, port))
        return
    try:
        directory = config.data_dir(data_dir)
        # The logins of `taskring up`'s default deployment, so it can use this broker.
        usual = tuple(launch_plan.broker_logins(launch_plan.Settings(directory)))
        files = MosquittoFiles(directory, host, port, not no_auth, usual + extra_logins)
    except (config.ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        code = run_mosquitto(mosquitto, files)
    finally:
        files.cleanup()
    sys.exit(code)


broker.add_command(nats_cluster.config_command)
broker.add_command(nats_cluster.cluster_command)
