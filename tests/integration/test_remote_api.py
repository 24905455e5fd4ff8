"""The API over TLS from a login node: tokens the socket issues, the same caller on both
ways in, refusals that say what to do, and a client that follows the leader."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dcsched.cli.dcctl import main as dcctl_main
from dcsched.client import ApiError, Client, DaemonUnreachable
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import load_config
from tests.conftest import Broker, free_port
from tests.integration.daemon_harness import api, running_daemon, until, write_config
from tests.integration.test_broker_auth import make_test_ca

SPEC = {"name": "t", "command": ["t.py"], "workdir": "/tmp", "resources": {"nodes": 1}}


def _tls(d: Path, ca_dir: Path, port: int) -> dict[str, str]:
    _, cert, key = (ca_dir / "ca.crt", ca_dir / "server.crt", ca_dir / "server.key")
    return {
        "listen": f"127.0.0.1:{port}",
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
        "advertise_url": f"https://127.0.0.1:{port}",
    }


async def test_a_token_from_the_socket_opens_the_tls_listener_as_the_same_caller(
    tmp_path: Path,
    mosquitto: Broker,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca, _, _ = make_test_ca(tmp_path)
    port = free_port()
    conf = write_config(tmp_path, mosquitto, prefix, **_tls(tmp_path, tmp_path, port))
    async with running_daemon(conf) as d:
        local = Client(d.config.daemon.socket)
        issued = await api(local, "new_token", 600)
        assert issued["uid"] == os.getuid() and issued["expires"] > 0
        # A dead address first: the client goes on to the next.
        servers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}"]
        remote = Client(servers=servers, token=issued["token"], ca_file=str(ca))
        assert await api(remote, "whoami") == await api(local, "whoami")
        job = await api(remote, "submit", SPEC)
        assert (await api(local, "job", job))["user"] == issued["user"]
        with remote.events() as stream:
            first = await asyncio.to_thread(next, stream)
        assert first.kind in ("hello", "job")

        anonymous = Client(servers=servers[1:], token="", ca_file=str(ca))
        assert (await api(anonymous, "health"))["ok"]  # health needs no token
        with pytest.raises(ApiError) as no_token:
            await api(anonymous, "jobs")
        assert no_token.value.status == 401 and "dcctl token" in no_token.value.message
        head, body, sig = issued["token"].split(".")
        forged = Client(servers=servers[1:], token=f"{head}.{body}x.{sig}", ca_file=str(ca))
        with pytest.raises(ApiError, match="signature"):
            await api(forged, "jobs")
        with pytest.raises(ApiError) as renewed:  # a token cannot renew itself
            await api(remote, "new_token")
        assert renewed.value.status == 403
        with pytest.raises(ApiError, match="lifetime_s"):
            await api(local, "new_token", 10**9)
        untrusted = Client(servers=servers[1:], token=issued["token"])  # system CAs only
        with pytest.raises(DaemonUnreachable, match="certificate is not trusted"):
            await api(untrusted, "jobs")
        audit = await api(local, "audit")
        assert any(e["status"] == 401 for e in audit)

        # dcctl from a "login node": the token from the environment, the CA by option.
        monkeypatch.setenv("DCSCHED_TOKEN", issued["token"])
        monkeypatch.delenv("DCSCHED_SOCKET", raising=False)
        argv = ["--server", servers[1], "--ca-file", str(ca), "--config", str(conf), "queue"]
        assert await asyncio.to_thread(dcctl_main, argv) == 0
        assert str(job) in capsys.readouterr().out
        # ...or from the file `dcctl token --save` writes on the head node (a shared home).
        monkeypatch.delenv("DCSCHED_TOKEN")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        save = ["--socket", d.config.daemon.socket, "token", "--save", "--lifetime", "10m"]
        assert await asyncio.to_thread(dcctl_main, save) == 0
        saved = tmp_path / "home" / ".dcsched" / "token"
        assert saved.stat().st_mode & 0o777 == 0o600 and "valid until" in capsys.readouterr().err
        assert await asyncio.to_thread(dcctl_main, argv) == 0
        assert str(job) in capsys.readouterr().out


async def test_a_client_given_the_standby_follows_it_to_the_leader(
    tmp_path: Path, mosquitto: Broker, prefix: str, postgres_url: str
) -> None:
    ca, _, _ = make_test_ca(tmp_path)
    dirs, ports = [tmp_path / "a", tmp_path / "b"], [free_port(), free_port()]
    confs = []
    for d, port in zip(dirs, ports, strict=True):
        d.mkdir()
        confs.append(
            write_config(d, mosquitto, prefix, store=postgres_url, **_tls(d, tmp_path, port))
        )
    async with running_daemon(confs[0]) as a:
        token = (await api(Client(a.config.daemon.socket), "new_token"))["token"]
        opening = asyncio.create_task(Daemon.open(load_config(str(confs[1]))))
        try:
            standby = Client(servers=[f"127.0.0.1:{ports[1]}"], ca_file=str(ca), token=token)
            leader_url = f"https://127.0.0.1:{ports[0]}"

            async def standing_by() -> bool:
                """Its listener answers and says where the leader is: health comes from there."""
                c = Client(servers=[f"127.0.0.1:{ports[1]}"], ca_file=str(ca))
                try:
                    h = await api(c, "health")
                except (ApiError, DaemonUnreachable):
                    return False
                return h["role"] == "leader" and c.servers[1:] == [leader_url]

            await until(standing_by, 20, "the standby's TLS listener")
            # Only the standby is named: it says where the leader is, and the client goes there.
            job = await api(standby, "submit", SPEC)
            assert standby.servers[-1] == leader_url
            assert (await api(standby, "job", job))["state"] == "PENDING"
        finally:
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
