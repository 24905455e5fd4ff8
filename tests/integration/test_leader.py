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
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    launches,
    running_daemon,
    state_is,
    until,
    write_config,
)

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


async def _held(client: Client, job: int) -> bool:
    return bool((await api(client, "job", job))["state"] == "HELD")


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
        assert said.status == 503 and "a standby, leader is dcd@" in said.message
        # Reads come from the store, marked as a standby's; changes name the leader.
        listed = await api(standby, "request", "GET", "/v1/jobs")
        assert [j["id"] for j in listed["jobs"]] == [job]
        assert listed["standby"]["leader"].startswith("dcd@")
        assert (await api(standby, "job", job))["state"] == "PENDING"
        assert [n["host"] for n in await api(standby, "nodes")] == []
        epoch = (await api(leader, "cluster"))["epoch"]
        assert (await api(standby, "cluster"))["epoch"] == epoch  # the leader's, from the store
        await api(leader, "job_action", job, "hold")
        await until(lambda: _held(standby, job), what="the standby's copy reloaded")
        refusals = [
            ("POST", "/v1/jobs"),
            ("POST", f"/v1/jobs/{job}/cancel"),
            ("GET", "/v1/events"),
            ("GET", "/v1/forecast"),
        ]
        for method, path in refusals:
            with pytest.raises(ApiError, match="standby") as refused:
                await api(standby, "request", method, path, SPEC if path == "/v1/jobs" else None)
            assert refused.value.status == 503 and "leader is dcd@" in refused.value.message
        assert (await api(leader, "job", job))["state"] == "HELD"
        await api(leader, "job_action", job, "release")
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


async def test_a_deposed_leader_sends_no_more_and_the_next_resumes_its_broker_session(
    tmp_path: Path, mosquitto: Broker, prefix: str, postgres_url: str
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    conf_a, conf_b = (write_config(d, mosquitto, prefix, store=postgres_url) for d in dirs)
    async with ScriptedAgent(mosquitto, prefix, "g1") as agent:
        agent.auto_ack = False  # the launch is resent until acknowledged
        a = await Daemon.open(load_config(str(conf_a)))
        running = asyncio.create_task(a.run())
        await asyncio.wait_for(a.bus.connected.wait(), 10)
        job = await api(Client(a.config.daemon.socket), "submit", SPEC)
        await until(lambda: len(launches(agent, job_id=job)) >= 2, what="resent launches")
        await asyncio.to_thread(_terminate_sessions, postgres_url)  # a loses the lock
        after: list[object] = []
        agent.on_command = after.append
        await asyncio.wait_for(running, 20)
        # The next batch of resends (every 0.5 s) found the lock gone and sent nothing: only
        # what had passed its check before the cut was on its way (a batch of one launch, a
        # fire-and-forget command); the leadership check alone (every 2 s) lets several.
        # (Which of the two noticed first depends on the machine's load: either stops it.)
        assert a.exit_code == 3
        assert len(after) <= 2, after
        # While no dcd is connected, the agent reports the start: the broker keeps it for
        # the leaders' session, and the next leader, which resumes it, is told.
        await agent.start(str(job), 0)
        async with running_daemon(conf_b) as b:
            assert b.bus.client_id == a.bus.client_id
            client = Client(b.config.daemon.socket)
            await until(lambda: state_is(client, job, "RUNNING"), what="the queued start")


async def test_two_daemons_on_one_host_keep_their_own_broker_sessions(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    conf_a, conf_b = (write_config(d, mosquitto, prefix) for d in dirs)  # two SQLite stores
    async with running_daemon(conf_a) as a, running_daemon(conf_b) as b:
        assert a.bus.client_id != b.bus.client_id
        await asyncio.sleep(1.0)
        assert a.bus.reconnects == b.bus.reconnects == 0
        first = a.bus.client_id
    async with running_daemon(conf_a) as again:  # a restart keeps its session
        assert again.bus.client_id == first


async def test_a_leader_that_finds_a_newer_epoch_in_the_store_stops_writing(
    tmp_path: Path, mosquitto: Broker, prefix: str, postgres_url: str
) -> None:
    """The fence of the store itself: with its connection (and lock) intact, a leader whose
    epoch another daemon has passed writes nothing more and exits 3."""
    conf = write_config(tmp_path, mosquitto, prefix, store=postgres_url)
    d = await Daemon.open(load_config(str(conf)))
    running = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 10)
    job = await api(Client(d.config.daemon.socket), "submit", SPEC)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("UPDATE kv SET value = %s WHERE key = 'epoch'", (str(d.sender.epoch + 1),))
        await asyncio.wait_for(running, 20)  # its next leadership check (every 2 s) stops it
        assert d.exit_code == 3 and "another dcd leads" in d.store.lost_leadership
        rows = admin.execute("SELECT epoch FROM job_events WHERE job_id = %s", (job,)).fetchall()
    assert rows == [(d.sender.epoch,)]  # its transition, with its epoch; nothing after
