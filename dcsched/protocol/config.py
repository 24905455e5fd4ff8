"""The cluster config file (`dcsched.toml`), shared by dcd, dc-agent and the clients.

Found at `--config`, else `$DCSCHED_CONFIG`, else /etc/dcsched/dcsched.toml. Every key is
documented in docs/dcsched.example.toml.
"""

from __future__ import annotations

import os
import tomllib
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
    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password_file: str = ""
    topic_prefix: str = DEFAULT_PREFIX
    keepalive_s: int = 15

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ConfigError(
                f"[broker] url = {self.url!r}: expected mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883"
            )
        return parts.hostname, parts.port or 1883

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


class DaemonConfig(_Section):
    state_dir: str = "/var/lib/dcsched"
    socket: str = DEFAULT_SOCKET
    # Unix mode of the API socket: 0o666 lets every local user submit (identity = SO_PEERCRED).
    socket_mode: int = 0o666
    # Group given the API socket ("" keeps the daemon's own): with socket_mode = 0o660, only
    # its members reach the daemon. The daemon must be a member (SupplementaryGroups=).
    socket_group: str = ""
    metrics_listen: str = "127.0.0.1:9464"  # "" turns the Prometheus listener off
    admins: list[str] = []  # users who may act on any job and drain nodes; root always may
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
    # A site's check run before each launch (argv; [] = none), e.g. ["/usr/local/sbin/gpu-check"]:
    # a non-zero exit refuses the launch, the job goes back to the queue, the node is drained.
    health_check: list[str] = []
    health_check_timeout_s: float = 60.0

    def host_name(self) -> str:
        return self.host or os.uname().nodename


class Config(_Section):
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    agent: AgentConfig = msgspec.field(default_factory=AgentConfig)
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
        raise ConfigError(f"{p}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror}") from None
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{p}: {exc} (see docs/dcsched.example.toml)") from None
    return msgspec.structs.replace(cfg, path=p)


def socket_path(cli_value: str | None, config: Config | None) -> str:
    """--socket, else $DCSCHED_SOCKET, else the config's [daemon] socket."""
    if cli_value:
        return cli_value
    env = os.environ.get("DCSCHED_SOCKET")
    if env:
        return env
    return config.daemon.socket if config else DEFAULT_SOCKET
