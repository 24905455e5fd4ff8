from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dcsched.protocol.sdnotify import notify, watchdog_interval


def test_notify_sends_the_state_to_systemds_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1\nSTATUS=serving")
        assert server.recv(256) == b"READY=1\nSTATUS=serving"


def test_without_systemd_notify_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")


def test_watchdog_pings_at_half_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None
