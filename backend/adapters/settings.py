"""Every setting of taskring in one place: defaults, TASKRING_* variables, and parsing.

Flags on the command line override environment variables, which override the
defaults below. Components receive their settings from `taskring up` through
the same flags a person would type, so `ps` shows how each one was started.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_CLIENT_PORTS = (7001, 7002)
DEFAULT_ADMIN_PORTS = (50051, 50052)
DEFAULT_WEB_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DATA_DIR = "./data"
DEFAULT_CACHE_NODES = 4
DEFAULT_REPLICA_GROUPS = 1
DEFAULT_REPLICAS = 3
MAX_REPLICA_GROUPS = 64
MAX_REPLICAS = 9
DEFAULT_STORAGE = "ring"
STORAGE_MODES = ("local", "ring")

ADMIN_TOKEN_FILE = "admin-token"
BROKER_CREDENTIALS_FILE = "broker-credentials.json"


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


def env(name: str, default: str | None = None) -> str | None:
    """Read TASKRING_<NAME>, treating an empty value as unset."""
    value = os.environ.get(f"TASKRING_{name}")
    return value if value else default


@dataclass(frozen=True)
class BrokerAddress:
    """Where the MQTT broker is and how to log in to it."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse `mqtt://[user:password@]host[:port]` or `mqtts://...[?ca=/path/ca.pem]`."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r}: no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"broker URL {url!r}: bad port") from exc
        query = parse_qs(parts.query)
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=query.get("ca", [None])[0],
        )

    @property
    def node(self) -> tuple[str, int]:
        """Which broker node this is (host and port), whatever login it uses."""
        return (self.host.lower(), self.port)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def redacted(self) -> str:
        """The URL without the password, for logs and status output."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class BrokerAddresses:
    """The nodes of one (clustered) broker, in the order a bus tries them: never empty.

    Given as a comma-separated list of broker URLs, each with its own login and TLS;
    a single URL is a list of one.
    """

    addresses: tuple[BrokerAddress, ...]

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ConfigError("no broker URL given")

    @classmethod
    def parse(cls, text: str) -> BrokerAddresses:
        """Parse `URL[,URL...]`; ConfigError naming the bad element, an empty one, or a
        node given twice."""
        urls = [url.strip() for url in text.split(",")]
        total = len(urls)
        addresses: list[BrokerAddress] = []
        for number, url in enumerate(urls, 1):
            where = f"broker URL {number} of {total}" if total > 1 else "broker URL"
            if not url:
                raise ConfigError(f"{where} is empty (in {_redacted_text(text)!r})")
            try:
                address = BrokerAddress.parse(url)
            except ConfigError as exc:
                raise ConfigError(f"{where} {_redacted_text(url)!r}: {_reason(exc)}") from None
            if any(a.node == address.node for a in addresses):
                raise ConfigError(f"{where} {address.redacted()!r}: that broker is listed twice")
            addresses.append(address)
        return cls(tuple(addresses))

    @classmethod
    def of(cls, given: BrokerAddress | BrokerAddresses) -> BrokerAddresses:
        return given if isinstance(given, BrokerAddresses) else cls((given,))

    @property
    def first(self) -> BrokerAddress:
        return self.addresses[0]

    def __iter__(self) -> Iterator[BrokerAddress]:
        return iter(self.addresses)

    def __len__(self) -> int:
        return len(self.addresses)

    def __getitem__(self, index: int) -> BrokerAddress:
        return self.addresses[index]

    def redacted(self) -> str:
        """Every URL without its password, comma-separated, for logs and status output."""
        return ",".join(address.redacted() for address in self.addresses)


def _reason(exc: ConfigError) -> str:
    """BrokerAddress.parse's message without its leading `broker URL '...': `."""
    text = str(exc)
    head, sep, rest = text.partition("': ")
    return rest if sep and head.startswith("broker URL '") else text


def _redacted_text(url: str) -> str:
    """A URL as typed, its password (if any) starred: error messages reach logs."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)


def broker_url(flag: str | None) -> str:
    return flag or env("BROKER") or DEFAULT_BROKER


def data_dir(flag: str | None) -> Path:
    return Path(flag or env("DATA_DIR") or DEFAULT_DATA_DIR)


def parse_host_port(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """Parse `host:port` or a bare `port`; raise ConfigError naming the bad value."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not host:port") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"{text!r}: port out of range")
    return host, port


def read_admin_token(data: Path | None = None) -> str | None:
    """The admin token from TASKRING_ADMIN_TOKEN, else from the data directory."""
    token = env("ADMIN_TOKEN")
    if token:
        return token
    path = (data or data_dir(None)) / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
