"""dc-agent speaks systemd's notify protocol: READY=1 once its jobs are adopted, WATCHDOG=1 fed
from its event loop, STOPPING=1 when it stops (dc-agent.service is Type=notify)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from dcsched.agents.agent import Agent
from dcsched.protocol.config import load_config
from tests.conftest import Broker
from tests.integration.test_health import agent_conf


async def test_ready_watchdog_and_stopping(
    tmp_path: Path, mosquitto: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cluster.key").write_bytes(b"k" * 32)
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
        agent = Agent(load_config(str(agent_conf(tmp_path, mosquitto, prefix, "n-notify"))))
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        while sum(m == b"WATCHDOG=1" for m in got) < 3:
            got.append(await asyncio.wait_for(loop.sock_recv(server, 256), 10))
        agent.stop()
        await asyncio.wait_for(task, 20)
        while got[-1] != b"STOPPING=1":
            got.append(await asyncio.wait_for(loop.sock_recv(server, 256), 10))
    assert got[0] == b"READY=1\nSTATUS=watching 0 job(s)"
