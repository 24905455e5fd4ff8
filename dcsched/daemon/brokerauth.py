"""Per-host broker credentials: `dcd broker-auth` writes Mosquitto's password file and ACL for
a list of hosts, and a password file per MQTT user for `[broker] password_file`.

Each agent logs in as its host name (dc-agent's default username) and may publish only its
own telemetry, status and events, and read only its own commands; only the daemon's user
may publish commands, and it reads everything else. Passwords already in the folder are
kept, so running it again with more hosts adds them without changing the others.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from dcsched.protocol.topics import DEFAULT_PREFIX

DAEMON_USER = "dcd"
_PBKDF2_ITERATIONS = 101  # what mosquitto_passwd itself writes
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class BrokerAuthError(Exception):
    pass


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password-file hash (`$7$`: PBKDF2-SHA512), as mosquitto_passwd writes."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    b64 = base64.b64encode
    return f"$7${_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def host_topics(prefix: str, host: str) -> dict[str, list[str]]:
    """What one agent may do: access -> topics."""
    t = f"{prefix}/hosts/{host}"
    return {
        "write": [f"{t}/telemetry", f"{t}/events"],
        "readwrite": [f"{t}/status"],  # retained, and its will
        "read": [f"{t}/cmd"],
    }


def daemon_topics(prefix: str) -> dict[str, list[str]]:
    t = f"{prefix}/hosts/+"
    return {"read": [f"{t}/telemetry", f"{t}/status", f"{t}/events"], "write": [f"{t}/cmd"]}


def mosquitto_acl(hosts: list[str], prefix: str = DEFAULT_PREFIX, daemon: str = DAEMON_USER) -> str:
    lines = [
        "# dcsched broker ACL, written by `dcd broker-auth`: a user not listed here may do",
        "# nothing. Only the daemon publishes commands; each host publishes its own topics",
        "# and reads its own commands.",
        "",
    ]
    for user, rules in [(daemon, daemon_topics(prefix))] + [
        (h, host_topics(prefix, h)) for h in hosts
    ]:
        lines.append(f"user {user}")
        lines += [f"topic {access} {t}" for access, topics in rules.items() for t in topics]
        lines.append("")
    return "\n".join(lines)


@dataclass
class BrokerAuth:
    folder: Path
    passwords: dict[str, str]  # user -> its password file (for [broker] password_file)
    rules: dict[str, dict[str, list[str]]]  # user -> access -> topics

    @property
    def password_file(self) -> Path:
        return self.folder / "mosquitto.passwd"

    @property
    def acl_file(self) -> Path:
        return self.folder / "dcsched.acl"


def check_names(hosts: list[str], daemon: str) -> None:
    bad = [h for h in [*hosts, daemon] if not _NAME.match(h)]
    if bad:
        raise BrokerAuthError(
            f"not usable as an MQTT user and topic level: {', '.join(map(repr, bad))} "
            "(letters, digits, '.', '_' and '-' only)"
        )
    if daemon in hosts:
        raise BrokerAuthError(f"the daemon's user {daemon!r} is also in the host list")
    if len(set(hosts)) != len(hosts):
        raise BrokerAuthError("the host list names a host twice")


def write_broker_auth(
    folder: str | Path,
    hosts: list[str],
    prefix: str = DEFAULT_PREFIX,
    daemon: str = DAEMON_USER,
    broker_user: str = "mosquitto",
) -> BrokerAuth:
    """Writes `mosquitto.passwd`, `dcsched.acl` and `passwords/<user>` (mode 0600) into
    `folder`; a password already there is kept. Mosquitto reads its password file after
    it switched to its own user: run as root, the file is handed to `broker_user`."""
    check_names(hosts, daemon)
    out = Path(folder)
    pw_dir = out / "passwords"
    pw_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pw_dir, 0o700)
    auth = BrokerAuth(out, {}, {daemon: daemon_topics(prefix)})
    auth.rules.update((h, host_topics(prefix, h)) for h in hosts)
    entries = []
    for user in [daemon, *hosts]:
        path = pw_dir / user
        if path.exists():
            password = path.read_text().strip()
        else:
            password = secrets.token_urlsafe(24)
            write_private(path, password + "\n")
        auth.passwords[user] = str(path)
        entries.append(f"{user}:{mosquitto_hash(password)}\n")
    write_private(auth.password_file, "".join(entries))
    auth.acl_file.write_text(mosquitto_acl(hosts, prefix, daemon))
    if os.geteuid() == 0 and broker_user:
        try:
            pw = pwd.getpwnam(broker_user)
        except KeyError:
            pass  # no such user here: the broker runs elsewhere, copy the files there
        else:
            os.chown(auth.password_file, pw.pw_uid, pw.pw_gid)
    return auth


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner may read (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_hosts(names: list[str], hosts_file: str | None) -> list[str]:
    """Hosts from the command line (comma or space separated) and a file (one a line, `#`
    comments)."""
    hosts = [h for arg in names for h in re.split(r"[,\s]+", arg) if h]
    if hosts_file:
        for line in Path(hosts_file).read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                hosts.append(name)
    if not hosts:
        raise BrokerAuthError("no hosts: pass --hosts gpu01,gpu02 or --hosts-file FILE")
    return hosts
