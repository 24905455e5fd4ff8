"""The cluster config file (`dcsched.toml`), shared by dcd, dc-agent and the clients.

Found at `--config`, else `$DCSCHED_CONFIG`, else /etc/dcsched/dcsched.toml. Every key is
documented in docs/dcsched.example.toml.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from dcsched.protocol.topics import DEFAULT_PREFIX

DEFAULT_CONFIG = "/etc/dcsched/dcsched.toml"
DEFAULT_SOCKET = "/run/dcsched/dcsched.sock"


class ConfigError(Exception):
    pass


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BrokerConfig(_Section):
    url: str = "mqtt://127.0.0.1:1883"  # mqtts://HOST:PORT for TLS
    # "" = the host name for dc-agent, "dcd" for the daemon (the users `dcd broker-auth` makes)
    username: str = ""
    password_file: str = ""
    ca_file: str = ""  # mqtts: the CA that signed the broker's certificate; "" = system CAs
    topic_prefix: str = DEFAULT_PREFIX
    keepalive_s: int = 15

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
            raise ConfigError(
                f"[broker] url = {self.url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT, "
                "e.g. mqtt://127.0.0.1:1883"
            )
        return parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for an mqtts:// url (the broker's certificate and host name are
        verified), None for plain mqtt://."""
        if urlsplit(self.url).scheme != "mqtts":
            if self.ca_file:
                raise ConfigError(
                    f"[broker] ca_file is set but url = {self.url!r} is not mqtts://: "
                    "use mqtts://HOST:8883 for TLS, or drop ca_file"
                )
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[broker] ca_file {self.ca_file}: {exc}") from None

    def password(self) -> str | None:
        if not self.password_file:
            return None
        try:
            return Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"[broker] password_file {self.password_file}: {exc.strerror}"
            ) from None


class ClusterConfig(_Section):
    # HMAC key that signs daemon -> agent commands; readable only by root and the daemon.
    key_file: str = ""
    # During a key rotation, agents also accept commands signed with this (old) key; the
    # daemon signs with key_file only. See docs/security.md, "Rotating the cluster key".
    previous_key_file: str = ""


class DaemonConfig(_Section):
    state_dir: str = "/var/lib/dcsched"
    # Where the daemon keeps its state: "" = SQLite in state_dir (dcsched.db); or a
    # PostgreSQL URL, "postgresql://dcd@db.example/dcsched" (no password here: the file is
    # world-readable; use ?passfile=..., ~/.pgpass or certificates; see docs/architecture.md).
    store: str = ""
    socket: str = DEFAULT_SOCKET
    # Unix mode of the API socket: 0o666 lets every local user submit (identity = SO_PEERCRED).
    socket_mode: int = 0o666
    # Group given the API socket ("" keeps the daemon's own): with socket_mode = 0o660, only
    # its members reach the daemon. The daemon must be a member (SupplementaryGroups=).
    socket_group: str = ""
    metrics_listen: str = "127.0.0.1:9464"  # "" turns the Prometheus listener off
    # The API over TCP with TLS for remote clients ("0.0.0.0:6818"; "" = the socket only).
    # They authenticate with tokens the socket issues (`dcctl token`); see docs/scaling.md.
    listen: str = ""
    tls_cert_file: str = ""  # the listener's certificate (chain) and key, PEM
    tls_key_file: str = ""
    # How clients reach this dcd's listener, told by a standby ("" = https://FQDN:PORT).
    advertise_url: str = ""
    # HMAC key of the tokens ("" = derived from [cluster] key_file: every dcd of a site
    # accepts the others' tokens); the longest lifetime a token may be given.
    token_key_file: str = ""
    token_lifetime_s: float = 3600.0
    admins: list[str] = []  # users who may act on any job and drain nodes; root always may
    # Host names (or shell patterns, "gpu-*") that may be nodes; a message from any other is
    # dropped and counted (unknown_host). [] = every host the broker lets publish.
    hosts: list[str] = []
    port_range: str = "29500-29999"
    cancel_grace_s: float = 10.0
    command_retry_s: float = 2.0
    node_timeout_s: float = 30.0
    telemetry_flush_s: float = 10.0
    pass_interval_s: float = 5.0
    # GPU faults (an agent's GpuFault kind) that drain the node, with the reason; [] = never.
    # Every fault marks its GPU unhealthy (the scheduler avoids it) until the node is resumed.
    drain_on: list[str] = msgspec.field(default_factory=lambda: ["xid", "ecc", "lost"])
    # XIDs that the application causes (13 graphics engine exception, 31 MMU fault, 43 GPU
    # stopped processing, 45 preemptive cleanup, 68 video processor exception): no drain.
    ignore_xids: list[int] = msgspec.field(default_factory=lambda: [13, 31, 43, 45, 68])
    # A running job whose GPUs all stay under idle_util_pct for idle_after_s is flagged idle
    # (dcctl, /metrics) and its log gets a warning; idle_cancel_after_s > 0 cancels it that
    # much later (0: never). idle_after_s = 0 turns the check off.
    idle_util_pct: float = 5.0
    idle_after_s: float = 1800.0
    idle_cancel_after_s: float = 0.0

    def store_location(self) -> str:
        """The store: a postgresql:// URL, else the SQLite file in state_dir."""
        if not self.store:
            return os.path.join(self.state_dir, "dcsched.db")
        if not self.store.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"[daemon] store = {self.store!r}: expected a PostgreSQL URL, "
                '"postgresql://USER@HOST:PORT/DATABASE", or leave it out for SQLite in state_dir'
            )
        return self.store

    def listen_address(self) -> tuple[str, int] | None:
        """`listen` as (host, port); None when there is no TCP listener."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"[daemon] listen = {self.listen!r}: expected HOST:PORT, e.g. 0.0.0.0:6818"
            )
        if not (self.tls_cert_file and self.tls_key_file):
            raise ConfigError(
                "[daemon] listen is set but tls_cert_file/tls_key_file are not: the API "
                "carries tokens and is served over TLS only; give the certificate and its key"
            )
        return host.strip("[]") or "0.0.0.0", int(port)

    def ports(self) -> range:
        try:
            lo, hi = (int(p) for p in self.port_range.split("-"))
        except ValueError:
            raise ConfigError(
                f"[daemon] port_range = {self.port_range!r}: expected LOW-HIGH, e.g. 29500-29999"
            ) from None
        if not 1024 <= lo <= hi <= 65535:
            raise ConfigError(f"[daemon] port_range = {self.port_range!r} is outside 1024-65535")
        return range(lo, hi + 1)


class AgentConfig(_Section):
    host: str = ""  # "" = this machine's hostname
    backend: Literal["nvml", "sim"] = "nvml"
    sim_gpus: int = 8
    sim_gpu_model: str = "Simulated-H100"
    sim_gpu_mem_gib: int = 80
    interval_s: float = 1.0
    advertise_addr: str = ""  # address other nodes reach this one on; "" = the hostname's
    state_dir: str = "/var/lib/dcsched-agent"
    torchrun: str = "torchrun"
    # An exit goes out again this often until the daemon's AckExit (and after every reconnect).
    exit_resend_s: float = 10.0
    # Each job in a cgroup of its own (GPU device limits, kill-all): "auto" where the host
    # has them (see docs/security.md, Job isolation), "off" never.
    cgroups: Literal["auto", "off"] = "auto"
    # A site's check run before each launch (argv; [] = none), e.g. ["/usr/local/sbin/gpu-check"]:
    # a non-zero exit refuses the launch, the job goes back to the queue, the node is drained.
    health_check: list[str] = []
    health_check_timeout_s: float = 60.0

    def host_name(self) -> str:
        return self.host or os.uname().nodename


class ClientSettings(_Section):
    # Where dcsub, dcctl and dctop find the daemons from a login node: "head1:6818" or
    # "https://head1:6818", tried in order, the leader followed ([] = the local socket).
    servers: list[str] = []
    ca_file: str = ""  # the CA that signed the daemons' certificates; "" = system CAs
    token_file: str = ""  # "" = $DCSCHED_TOKEN, else ~/.dcsched/token


class Config(_Section):
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    agent: AgentConfig = msgspec.field(default_factory=AgentConfig)
    client: ClientSettings = msgspec.field(default_factory=ClientSettings)
    # Parsed and validated by dcsched.scheduler (SchedulerConfig.from_mapping).
    scheduler: dict[str, Any] = {}
    path: str = ""


def config_path(cli_value: str | None = None) -> str:
    return cli_value or os.environ.get("DCSCHED_CONFIG") or DEFAULT_CONFIG


def load_config(path: str | None = None, *, missing_ok: bool = False) -> Config:
    """Reads and validates the config file; ConfigError says what to fix."""
    p = config_path(path)
    try:
        raw = tomllib.loads(Path(p).read_text())
    except FileNotFoundError:
        if missing_ok:
            return Config()
        raise ConfigError(
            f"config file {p} not found; pass --config FILE or set DCSCHED_CONFIG "
            "(example: docs/dcsched.example.toml)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        raise ConfigError(f"{p}:{m.group(1)}: {exc}" if m else f"{p}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror}") from None
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        where = _validation_key(str(exc))
        line = locate(Path(p).read_text(), where) if where else None
        at = f"{p}:{line}" if line else p
        raise ConfigError(f"{at}: {exc} (see docs/dcsched.example.toml)") from None
    return msgspec.structs.replace(cfg, path=p)


def _validation_key(message: str) -> str:
    """The dotted key a msgspec validation error is about ("daemon.port_range")."""
    m = re.search(r"- at `\$\.?([^`]*)`", message)
    path = m.group(1) if m else ""
    field = re.search(r"unknown field `([^`]+)`", message)
    if field:
        path = f"{path}.{field.group(1)}" if path else field.group(1)
    return re.sub(r"\[\d+\]", "", path)


def locate(text: str, dotted: str) -> int | None:
    """The line (1-based) of a TOML file where the dotted key is set, or where the closest
    table above it starts; None when neither is there."""
    want = dotted.split(".")
    best: tuple[int, int] | None = None  # (matched parts, line)
    table: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            head = re.match(r"\[\[?\s*([^\]]+?)\s*\]", line)
            table = [k.strip().strip('"') for k in head.group(1).split(".")] if head else []
            key = table
        else:
            m = re.match(r"([A-Za-z0-9_.\"' -]+?)\s*=", line)
            if not m or line.startswith("#"):
                continue
            key = table + [k.strip().strip("\"'") for k in m.group(1).split(".")]
        if key == want[: len(key)] and (best is None or len(key) > best[0]):
            best = (len(key), n)
            if len(key) == len(want):
                return n
    return best[1] if best else None


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """The connection options of dcsub, dcctl and dctop (read by api_target)."""
    p.add_argument(
        "--socket",
        help="daemon API socket (default: $DCSCHED_SOCKET, else the config's [daemon] socket)",
    )
    p.add_argument(
        "--config", help="config file (default: $DCSCHED_CONFIG, else /etc/dcsched/dcsched.toml)"
    )
    p.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        help="a daemon's TLS listener, from a login node (repeat, or a comma list; the leader "
        "is followed); default: $DCSCHED_SERVERS, else the config's [client] servers; "
        "needs a token from `dcctl token` ($DCSCHED_TOKEN or ~/.dcsched/token)",
    )
    p.add_argument(
        "--ca-file",
        help="CA of the daemons' certificates (default: $DCSCHED_CA_FILE, else the config's "
        "[client] ca_file, else the system's CAs)",
    )


@dataclass(frozen=True, slots=True)
class ApiTarget:
    """Where a client reaches the daemon: its Unix socket, or (servers non-empty) the TLS
    listeners of a site's daemons, with the CA and token file to use."""

    socket: str = DEFAULT_SOCKET
    servers: tuple[str, ...] = ()
    ca_file: str = ""
    token_file: str = ""


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(s.strip() for v in values for s in v.split(",") if s.strip())


def api_target(
    socket: str | None = None,
    servers: list[str] | None = None,
    ca_file: str | None = None,
    config: str | None = None,
) -> ApiTarget:
    """For dcsub, dcctl and dctop: --socket, else --server (repeated or comma lists), else
    $DCSCHED_SOCKET, else $DCSCHED_SERVERS, else the config's [client] servers, else its
    [daemon] socket. The config is read only when needed; one named explicitly
    (--config, $DCSCHED_CONFIG) must exist."""
    if socket:
        return ApiTarget(socket)
    listed = _split(servers or [])
    if not listed and os.environ.get("DCSCHED_SOCKET"):
        return ApiTarget(socket_path(None, None))
    listed = listed or _split([os.environ.get("DCSCHED_SERVERS", "")])
    named = config or os.environ.get("DCSCHED_CONFIG")
    cfg = load_config(config, missing_ok=not named)
    listed = listed or tuple(cfg.client.servers)
    if not listed:
        return ApiTarget(socket_path(None, cfg))
    ca = ca_file or os.environ.get("DCSCHED_CA_FILE") or cfg.client.ca_file
    return ApiTarget(cfg.daemon.socket, listed, ca, cfg.client.token_file)


def socket_path(cli_value: str | None, config: Config | None) -> str:
    """--socket, else $DCSCHED_SOCKET, else the config's [daemon] socket."""
    if cli_value:
        return cli_value
    env = os.environ.get("DCSCHED_SOCKET")
    if env:
        return env
    return config.daemon.socket if config else DEFAULT_SOCKET


# --- check-config ------------------------------------------------------------------------------


class ConfigCheck:
    """What `dcd check-config` and `dc-agent check-config` found: lines `FILE:LINE: message`,
    errors and warnings apart."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.path = cfg.path
        try:
            self._text = Path(cfg.path).read_text() if cfg.path else ""
        except OSError:
            self._text = ""
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def at(self, key: str) -> str:
        line = locate(self._text, key) if self._text else None
        return f"{self.path}:{line}" if line else self.path

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.at(key)}: {key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.at(key)}: warning: {key}: {message}")

    def common(self) -> None:
        """What every part reads: the broker and the cluster key."""
        b = self.cfg.broker
        try:
            b.host_port()
            b.password()
        except ConfigError as exc:
            key = "broker.url" if "url" in str(exc) else "broker.password_file"
            self.error(key, str(exc).split(": ", 1)[-1])
        key_file = self.cfg.cluster.key_file
        if not key_file:
            self.warn("cluster.key_file", "empty: commands are not signed (a demo only)")
            return
        try:
            with open(key_file, "rb") as f:
                size = len(f.read().strip())
        except OSError as exc:
            self.error("cluster.key_file", f"{key_file}: {exc.strerror}")
            return
        if size < 16:
            self.error("cluster.key_file", f"{key_file} is shorter than 16 bytes")

    def report(self, prog: str) -> int:
        """Prints what was found; the exit status (0: no error)."""
        for line in self.errors + self.warnings:
            print(line)
        if not self.errors:
            print(f"{self.path}: ok for {prog}")
        return 1 if self.errors else 0
