"""The daemon when things go wrong: refused launches, lost launches, stale events, a broker
outage, orphaned processes and racing requests. Real broker, real SQLite, scripted agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path
from typing import Any

import pytest

from dcsched.cli import dcctl
from dcsched.client import Client
from dcsched.protocol.messages import Ack, JobExited, Launch
from tests.conftest import Broker, restart_mosquitto, start_mosquitto
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    cancels,
    launches,
    run_on,
    running_daemon,
    state_is,
    until,
    write_config,
)

SPEC: dict[str, Any] = {
    "name": "t",
    "command": ["t.py"],
    "workdir": "/tmp",
    "resources": {"nodes": 2, "gpus_per_node": 2, "time_limit": "10m"},
}

# Each test runs on both store backends.
pytestmark = pytest.mark.usefixtures("daemon_store")


@pytest.mark.parametrize("exit_first", [False, True])
async def test_a_refused_launch_fails_the_job_and_stops_the_other_node(
    tmp_path: Path, mosquitto: Broker, prefix: str, exit_first: bool
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
        ScriptedAgent(mosquitto, prefix, "n2") as a2,
    ):
        c = Client(d.config.daemon.socket)
        await until(lambda: len(d.cluster.nodes) == 2)
        a2.auto_ack = False
        job = await api(c, "submit", SPEC)
        await until(lambda: launches(a1, job_id=job) and launches(a2, job_id=job))
        (l1,), (l2,) = launches(a1, job_id=job), launches(a2, job_id=job)
        await a1.start(str(job), l1.node_rank)
        refusal = [
            Ack(host="n2", cmd_id=l2.cmd_id, job_id=str(job), ok=False, error="no workdir"),
            JobExited(
                host="n2",
                job_id=str(job),
                node_rank=l2.node_rank,
                ts=time.time(),
                reason="launch_failed",
                launch_id=l2.cmd_id,
            ),
        ]
        for ev in reversed(refusal) if exit_first else refusal:
            await a2.event(ev)
        await until(lambda: cancels(a1), what="cancel to the node that did start")
        await a1.exit(str(job), l1.node_rank, None, signal=15, reason="failed")
        await until(lambda: state_is(c, job, "FAILED"))
        # No process ran there, so no log file: the log a user reads says why.
        words = ["--socket", d.config.daemon.socket, "logs", str(job), "--node", str(l2.node_rank)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert await asyncio.to_thread(dcctl.main, words) == 0
        last = out.getvalue().splitlines()[-1]
        assert last.startswith("[dcsched] no process was started on n2: launch refused"), last
        assert exit_first or last.endswith("launch refused: no workdir"), last


async def test_cancelling_a_job_whose_launch_never_arrived(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
    ):
        c = Client(d.config.daemon.socket)
        a1.auto_ack = False
        job = await api(c, "submit", {**SPEC, "resources": {"nodes": 1}})
        await until(lambda: launches(a1, job_id=job))
        await api(c, "job_action", job, "cancel")
        await until(lambda: cancels(a1))
        # Like dc-agent: a cancel for a job it does not run is acknowledged with a note.
        cancel = cancels(a1)[0]
        await a1.event(
            Ack(
                host="n1",
                cmd_id=cancel.cmd_id,
                job_id=str(job),
                error=f"job {job} does not run on n1",
            )
        )
        await until(lambda: state_is(c, job, "CANCELLED"), what="CANCELLED, GPUs free")
        nodes = await api(c, "nodes")
        assert nodes[0]["gpus_allocated"] == 0


async def test_an_exit_from_an_earlier_run_does_not_end_the_requeued_job(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
    ):
        c = Client(d.config.daemon.socket)
        job = await api(c, "submit", {**SPEC, "resources": {"nodes": 1}})
        first = await run_on(a1, c, job)
        await api(c, "job_action", job, "requeue")
        await until(lambda: cancels(a1))
        old_exit = JobExited(
            host="n1",
            job_id=str(job),
            node_rank=0,
            ts=time.time(),
            signal=15,
            reason="requeued",
            launch_id=first.cmd_id,
        )
        await a1.event(old_exit)
        await until(lambda: len([x for x in a1.commands if isinstance(x, Launch)]) == 2)
        second = [x for x in a1.commands if isinstance(x, Launch)][1]
        await a1.event(JobExited(**{**_fields(old_exit)}))  # delivered again, late
        await a1.event(old_exit)
        await asyncio.sleep(1.0)
        assert await state_is(c, job, "STARTING")
        await a1.event(
            JobExited(
                host="n1",
                job_id=str(job),
                node_rank=0,
                ts=time.time(),
                exit_code=0,
                launch_id=second.cmd_id,
            )
        )
        await until(lambda: state_is(c, job, "COMPLETED"))


def _fields(ev: JobExited) -> dict[str, Any]:
    return {f: getattr(ev, f) for f in ev.__struct_fields__}


async def test_a_broker_outage_does_not_fail_running_jobs(tmp_path: Path, prefix: str) -> None:
    broker = start_mosquitto(tmp_path)
    conf = write_config(tmp_path, broker, prefix, node_timeout_s=1.0)
    try:
        async with running_daemon(conf) as d:
            c = Client(d.config.daemon.socket)
            async with ScriptedAgent(broker, prefix, "n1") as a1:
                job = await api(c, "submit", {**SPEC, "resources": {"nodes": 1}})
                await run_on(a1, c, job)
            broker.proc.kill()
            broker.proc.wait()
            await asyncio.sleep(3.0)  # three node timeouts without any broker
            assert await state_is(c, job, "RUNNING")
            restart_mosquitto(broker, tmp_path)
            async with ScriptedAgent(broker, prefix, "n1") as a1:
                a1.running.add(str(job))
                await a1.publish_status()
                await until(d.bus.connected.is_set, timeout=40, what="reconnect")
                await asyncio.sleep(2.0)
                assert await state_is(c, job, "RUNNING")
                await a1.exit(str(job), 0, 0)
                await until(lambda: state_is(c, job, "COMPLETED"))
    finally:
        broker.proc.kill()
        broker.proc.wait()


async def test_an_orphaned_job_on_a_node_is_stopped(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
    ):
        a1.running.add("4242")  # a job this daemon never started on n1
        await a1.publish_status()
        await until(lambda: [x for x in cancels(a1) if x.job_id == "4242"], what="cancel")
        assert d.bus.connected.is_set()


async def test_racing_cancels_answer_cleanly(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
    ):
        c = Client(d.config.daemon.socket)
        job = await api(c, "submit", {**SPEC, "resources": {"nodes": 1}})
        await run_on(a1, c, job)
        results = await asyncio.gather(
            *(api(c, "job_action", job, "cancel") for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, dict) and r["state"] == "COMPLETING" for r in results), results
        await until(lambda: len(cancels(a1)) >= 1)
        assert len({x.cmd_id for x in cancels(a1)}) == 1  # one cancel, not four
        await a1.exit(str(job), 0, None, signal=15, reason="cancelled")
        await until(lambda: state_is(c, job, "CANCELLED"))


async def test_commands_wait_for_an_offline_agent(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, node_timeout_s=60.0)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as a1:
        c = Client(d.config.daemon.socket)
        job = await api(c, "submit", {**SPEC, "resources": {"nodes": 1}})
        await run_on(a1, c, job)
        await a1.publish_status("offline")
        await until(lambda: not d.cluster.nodes["n1"].online)
        await api(c, "job_action", job, "cancel")
        await asyncio.sleep(1.5)  # three retry intervals
        assert not cancels(a1)
        await a1.publish_status("online")
        await until(lambda: cancels(a1), what="the cancel once the agent is back")
