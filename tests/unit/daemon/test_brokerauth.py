from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from dcsched.daemon.brokerauth import (
    BrokerAuthError,
    mosquitto_acl,
    mosquitto_hash,
    read_hosts,
    write_broker_auth,
)
from dcsched.daemon.service import host_filter


def test_mosquitto_hash_is_pbkdf2_sha512_as_mosquitto_passwd_writes() -> None:
    h = mosquitto_hash("secret", salt=b"s" * 12)
    _, kind, rounds, salt, digest = h.split("$")
    assert (kind, rounds) == ("7", "101")
    want = hashlib.pbkdf2_hmac("sha512", b"secret", base64.b64decode(salt), 101, 64)
    assert base64.b64decode(digest) == want


def test_each_host_gets_its_own_topics_and_only_the_daemon_commands() -> None:
    acl = mosquitto_acl(["gpu01"], prefix="p")
    assert "user dcd\ntopic read p/hosts/+/telemetry" in acl
    assert "topic write p/hosts/+/cmd" in acl
    host = acl[acl.index("user gpu01") :]
    assert "topic read p/hosts/gpu01/cmd" in host and "+" not in host
    assert "topic write p/hosts/gpu01/telemetry" in host


def test_running_it_again_keeps_passwords_and_adds_hosts(tmp_path: Path) -> None:
    first = write_broker_auth(tmp_path, ["a", "b"])
    pw_a = Path(first.passwords["a"]).read_text()
    second = write_broker_auth(tmp_path, ["a", "b", "c"])
    assert Path(second.passwords["a"]).read_text() == pw_a
    assert Path(second.passwords["c"]).stat().st_mode & 0o777 == 0o600
    assert second.password_file.stat().st_mode & 0o777 == 0o600
    users = [line.split(":")[0] for line in second.password_file.read_text().splitlines()]
    assert users == ["dcd", "a", "b", "c"]


@pytest.mark.parametrize("hosts", [["a/b"], ["+"], ["a", "a"], ["dcd"], [""]])
def test_unusable_host_lists_are_refused(tmp_path: Path, hosts: list[str]) -> None:
    with pytest.raises(BrokerAuthError):
        write_broker_auth(tmp_path, hosts)


def test_hosts_from_arguments_and_a_file(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text("# rack 1\ngpu03\n\ngpu04  # spare\n")
    assert read_hosts(["gpu01,gpu02"], str(f)) == ["gpu01", "gpu02", "gpu03", "gpu04"]
    with pytest.raises(BrokerAuthError, match="no hosts"):
        read_hosts([], None)


def test_host_filter() -> None:
    assert host_filter([])("anything")
    admit = host_filter(["head", "gpu-*"])
    assert admit("head") and admit("gpu-07")
    assert not admit("gpu07") and not admit("ghost")
