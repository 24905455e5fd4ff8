"""Mosquitto with the password file and ACL that `dcd broker-auth` writes, a TLS listener
signed by a CA made here, and a rogue client holding one host's credentials."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcsched.agents.agent import Agent
from dcsched.client import Client
from dcsched.daemon.brokerauth import write_broker_auth
from dcsched.daemon.main import main as dcd_main
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import BrokerConfig, load_config
from tests.conftest import PROCESS_TIMEOUT, Procs, fake_torchrun, free_port, wait_port
from tests.integration.daemon_harness import api, state_is, until
from tests.integration.test_agent_mqtt import running_agent

pytestmark = [pytest.mark.faults, PROCESS_TIMEOUT]
PREFIX = "dcsched/v1"


def make_test_ca(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost/127.0.0.1 it signed (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=dcsched test CA")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2",
            "-extfile", "san.ext")  # fmt: skip
    return d / "ca.crt", d / "server.crt", d / "server.key"


@dataclass
class SecureBroker:
    port: int
    tls_port: int
    ca: Path
    passwords: dict[str, str]

    def password(self, user: str) -> str:
        return Path(self.passwords[user]).read_text().strip()

    def client(self, user: str | None, password: str | None = None, **kw: Any) -> aiomqtt.Client:
        if user is not None and password is None:
            password = self.password(user)
        return aiomqtt.Client("127.0.0.1", self.port, username=user, password=password, **kw)


@pytest.fixture
def secure_broker(tmp_path: Path, procs: Procs) -> Iterator[SecureBroker]:
    ca, cert, key = make_test_ca(tmp_path)
    # Through the command line, as an admin would.
    assert dcd_main(["broker-auth", "--hosts", "n1,n2", "--out", str(tmp_path / "auth")]) == 0
    auth = write_broker_auth(tmp_path / "auth", ["n1", "n2"])  # again: passwords are kept
    port, tls_port = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        # (our tmp_path is private: the broker keeps our user to read the files)
        f"user {getpass.getuser()}\n"
        "per_listener_settings false\nallow_anonymous false\npersistence false\n"
        f"password_file {auth.password_file}\nacl_file {auth.acl_file}\n"
        f"listener {port} 127.0.0.1\n"
        f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    with (tmp_path / "mosquitto.log").open("wb") as log:
        procs.popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port)
    wait_port("127.0.0.1", tls_port)
    yield SecureBroker(port, tls_port, ca, auth.passwords)


@contextlib.asynccontextmanager
async def listening(client: aiomqtt.Client, *topics: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    got: list[tuple[str, bytes]] = []

    async def receive() -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            got.append((m.topic.value, m.payload))

    async with client:
        for t in topics:
            await client.subscribe(t, qos=1)
        task = asyncio.create_task(receive())
        try:
            yield got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_rogue_host_cannot_speak_for_another_nor_command_nor_eavesdrop(
    secure_broker: SecureBroker,
) -> None:
    b = secure_broker
    h = f"{PREFIX}/hosts"
    # Who is not in the password file, or has the wrong password, does not get in.
    for user, password in ((None, None), ("ghost", "x"), ("n1", "wrong"), ("dcd", "")):
        with pytest.raises(aiomqtt.MqttError):
            async with b.client(user, password):
                pass
    async with (
        listening(b.client("dcd"), f"{h}/+/telemetry", f"{h}/+/status", f"{h}/+/events") as daemon,
        listening(b.client("n1"), f"{h}/n1/cmd") as n1,
        # The rogue holds n2's credentials and tries to read every host's commands.
        listening(b.client("n2"), f"{h}/+/cmd", f"{h}/n1/cmd", f"{h}/n2/cmd") as rogue,
        b.client("n2") as rogue_pub,
        b.client("dcd") as daemon_pub,
    ):
        for kind in ("telemetry", "status", "events", "cmd"):
            await rogue_pub.publish(f"{h}/n1/{kind}", b"forged", qos=1)
        await rogue_pub.publish(f"{h}/n2/cmd", b"forged", qos=1)
        await rogue_pub.publish(f"{h}/n2/telemetry", b"own", qos=1)  # allowed: comes last
        await until(lambda: daemon, what="n2's own telemetry")
        assert daemon == [(f"{h}/n2/telemetry", b"own")]
        # Only the daemon commands; each host reads only its own commands.
        await daemon_pub.publish(f"{h}/n1/cmd", b"for n1", qos=1)
        await daemon_pub.publish(f"{h}/n2/cmd", b"for n2", qos=1)
        await until(lambda: rogue, what="n2's own command")
        await until(lambda: n1, what="n1's command")
        assert n1 == [(f"{h}/n1/cmd", b"for n1")]
        assert rogue == [(f"{h}/n2/cmd", b"for n2")]


async def test_daemon_and_agent_over_tls_with_per_host_credentials(
    tmp_path: Path, secure_broker: SecureBroker, procs: Procs
) -> None:
    b = secure_broker
    (tmp_path / "cluster.key").write_text("tls-test-cluster-key-0123456789")
    torchrun = fake_torchrun(tmp_path / "fake-torchrun")
    common = (
        f'[broker]\nurl = "mqtts://localhost:{b.tls_port}"\nca_file = "{b.ca}"\n'
        f'password_file = "{{pw}}"\nkeepalive_s = 5\n'
        f'[cluster]\nkey_file = "{tmp_path / "cluster.key"}"\n'
    )
    dconf = tmp_path / "dcd.toml"
    dconf.write_text(
        common.format(pw=b.passwords["dcd"])
        + f'[daemon]\nstate_dir = "{tmp_path / "dcd"}"\nsocket = "{tmp_path / "dcd.sock"}"\n'
        'metrics_listen = ""\ncommand_retry_s = 0.5\npass_interval_s = 0.5\n'
    )
    aconf = tmp_path / "n1.toml"
    aconf.write_text(
        common.format(pw=b.passwords["n1"])
        + f'[agent]\nhost = "n1"\nbackend = "sim"\nsim_gpus = 1\ninterval_s = 0.5\n'
        f'state_dir = "{tmp_path / "n1"}"\ntorchrun = "{torchrun}"\n'
    )
    daemon = await Daemon.open(load_config(str(dconf)))
    run = asyncio.create_task(daemon.run())
    agent = Agent(load_config(str(aconf)))  # username: its host name
    try:
        async with running_agent(agent):
            await asyncio.wait_for(daemon.bus.connected.wait(), 15)
            await until(lambda: daemon.cluster.is_online("n1"), timeout=15, what="n1 online")
            client = Client(str(tmp_path / "dcd.sock"))
            job_id = await api(
                client,
                "submit",
                {
                    "name": "over-tls",
                    "command": [sys.executable, "-c", "pass"],
                    "workdir": str(tmp_path),
                    "resources": {"nodes": 1, "gpus_per_node": 1, "time_limit": "5m"},
                },
            )
            await until(lambda: state_is(client, job_id, "COMPLETED"), timeout=30, what="done")
        # Without our CA the broker's certificate is not trusted (nor would a forged one be).
        ctx = BrokerConfig(url=f"mqtts://localhost:{b.tls_port}").tls_context()
        assert ctx is not None
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection(("localhost", b.tls_port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost"),
        ):
            pass
    finally:
        daemon.stop.set()
        await asyncio.wait_for(run, 20)
