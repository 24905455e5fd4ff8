"""Two dcd on one PostgreSQL store: one leads, the other stands by and says so, takes over
when the leader stops, and a leader that loses its connection stops with a non-zero exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dcsched.client import ApiError, Client, DaemonUnreachable
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import load_config
from tests.conftest import Broker
from tests.integration.daemon_harness import api, running_daemon, until, write_config

psycopg = pytest.importorskip("psycopg")

SPEC = {"name": "t", "command": ["t.py"], "workdir": "/tmp", "resources": {"nodes": 1}}


async def _standby_says(client: Client) -> ApiError | None:
    try:
        await api(client, "health")
    except ApiError as exc:
        return exc if exc.details.get("role") == "standby" else None
    except DaemonUnreachable:
        return None
    return None


def _terminate_sessions(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


async def test_a_standby_takes_over_and_a_leader_without_its_connection_stops(
    tmp_path: Path, mosquitto: Broker, prefix: str, postgres_url: str
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    conf_a, conf_b = (write_config(d, mosquitto, prefix, store=postgres_url) for d in dirs)
    standby = Client(str(dirs[1] / "dcd.sock"))
    async with running_daemon(conf_a) as a:
        leader = Client(a.config.daemon.socket)
        assert (await api(leader, "health"))["role"] == "leader"
        job = await api(leader, "submit", SPEC)
        opening = asyncio.create_task(Daemon.open(load_config(str(conf_b))))
        said = await until(lambda: _standby_says(standby), what="the standby's answer")
        assert said.status == 503 and "standby" in said.message and "dcd@" in said.message
        with pytest.raises(ApiError, match="standby"):
            await api(standby, "jobs")
        assert not opening.done()
    b = await asyncio.wait_for(opening, 20)  # the leader stopped: its lock is free
    running = asyncio.create_task(b.run())
    try:
        await asyncio.wait_for(b.ready.wait(), 10)
        assert (await api(standby, "job", job))["state"] == "PENDING"  # the state it took over
        await asyncio.to_thread(_terminate_sessions, postgres_url)  # as a network cut would
        await asyncio.wait_for(running, 20)
    finally:
        b.stop.set()
        await asyncio.wait_for(running, 20)
    assert b.exit_code == 3 and "leader lock was lost" in b.store.lost_leadership
