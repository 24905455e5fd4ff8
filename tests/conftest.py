"""Shared fixtures: a real Mosquitto per test session on a free port, with its own config."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def _binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto")
    return binary


def start_mosquitto(workdir: Path, extra_conf: str = "") -> Broker:
    binary = _binary()
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        f"{extra_conf}"
    )
    with (workdir / "mosquitto.log").open("wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port)
    return Broker("127.0.0.1", port, proc)


def restart_mosquitto(broker: Broker, workdir: Path) -> None:
    """Starts a stopped broker again on the same port with the same config."""
    with (workdir / "mosquitto.log").open("ab") as log:
        broker.proc = subprocess.Popen(
            [_binary(), "-c", str(workdir / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_port(broker.host, broker.port)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.proc.terminate()
    broker.proc.wait(10)
