"""`dcd check-config`: the config file as the daemon would read it, every problem with its
file:line, without starting anything."""

from __future__ import annotations

import grp

from dcsched.daemon.api import tls_server_context
from dcsched.daemon.health import FAULT_KINDS
from dcsched.protocol.config import Config, ConfigCheck, ConfigError
from dcsched.scheduler import SchedulerConfig


def check_daemon(cfg: Config) -> ConfigCheck:
    c = ConfigCheck(cfg)
    c.common()
    dc = cfg.daemon
    try:
        dc.ports()
    except ConfigError as exc:
        c.error("daemon.port_range", str(exc).split("] ", 1)[-1])
    try:
        SchedulerConfig.from_mapping(cfg.scheduler)
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        c.error(key if key.startswith("scheduler") else "scheduler", message or str(exc))
    bad = sorted(set(dc.drain_on) - set(FAULT_KINDS))
    if bad:
        c.error(
            "daemon.drain_on", f"unknown fault {bad[0]!r}; faults are " + ", ".join(FAULT_KINDS)
        )
    if dc.socket_group:
        try:
            grp.getgrnam(dc.socket_group)
        except KeyError:
            c.error("daemon.socket_group", f"no group {dc.socket_group!r} on this machine")
    if dc.metrics_listen:
        port = dc.metrics_listen.rpartition(":")[2]
        if not (port.isdigit() and 0 < int(port) < 65536):
            c.error("daemon.metrics_listen", f"{dc.metrics_listen!r}: expected HOST:PORT")
    if dc.listen:
        try:
            dc.listen_address()
            tls_server_context(dc)
        except ConfigError as exc:
            files = str(exc).startswith("[daemon] tls_cert_file/")
            key = "daemon.tls_cert_file" if files else "daemon.listen"
            c.error(key, str(exc).split("] ", 1)[-1])
    if dc.token_lifetime_s <= 0:
        c.error("daemon.token_lifetime_s", "must be > 0")
    for key in ("cancel_grace_s", "command_retry_s", "node_timeout_s", "pass_interval_s"):
        if getattr(dc, key) <= 0:
            c.error(f"daemon.{key}", "must be > 0")
    for key in ("idle_after_s", "idle_cancel_after_s"):
        if getattr(dc, key) < 0:
            c.error(f"daemon.{key}", "must be >= 0 (0 turns it off)")
    if not 0 <= dc.idle_util_pct <= 100:
        c.error("daemon.idle_util_pct", "a percentage: 0 to 100")
    if not 0 <= dc.socket_mode <= 0o777:
        c.error("daemon.socket_mode", f"{dc.socket_mode:o} is not a file mode (e.g. 0o660)")
    return c
