"""The scheduler core as the daemon drives it: holds, dependencies, explain, fair-share,
requeue and preemption, on a real broker with scripted agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from dcsched.cli import dcctl
from dcsched.client import ApiError, Client
from tests.conftest import Broker
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


def _spec(name: str, gpus: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["t.py"],
        "workdir": "/tmp",
        "resources": {"nodes": 1, "gpus_per_node": gpus, "time_limit": "1h"},
        **kw,
    }


def _dcctl(sock: str, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert dcctl.main(["--socket", sock, *args]) == 0
    return out.getvalue()


async def test_hold_and_release(tmp_path: Path, mosquitto: Broker, prefix: str) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
    ):
        c = Client(d.config.daemon.socket)
        job = await api(c, "submit", _spec("held", hold=True))
        await until(lambda: _reason_is(c, job, "JobHeldUser"))
        assert not launches(a1, job_id=job)
        await api(c, "job_action", job, "release")
        await until(lambda: launches(a1, job_id=job), what="launch after release")
        with pytest.raises(ApiError, match="not held"):
            await api(c, "job_action", job, "release")


async def _reason_is(c: Client, job_id: int, reason: str) -> bool:
    return (await api(c, "job", job_id))["reason"] == reason


async def test_dependencies_wait_and_report_the_impossible(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=4) as a1,
    ):
        c = Client(d.config.daemon.socket)
        first = await api(c, "submit", _spec("first"))
        await run_on(a1, c, first)
        ok = await api(c, "submit", _spec("ok", dependency=[f"afterok:{first}"]))
        notok = await api(c, "submit", _spec("notok", dependency=[f"afternotok:{first}"]))
        await until(lambda: _reason_is(c, ok, "Dependency"))
        assert not launches(a1, job_id=ok)
        await a1.exit(str(first), 0, 1)
        await until(lambda: state_is(c, first, "FAILED"))
        await until(lambda: launches(a1, job_id=notok), what="afternotok starts after a failure")
        await until(lambda: _reason_is(c, ok, "DependencyNeverSatisfied"))
        why = await api(c, "explain", ok)
        assert "DependencyNeverSatisfied" in why["reasons"]
        with pytest.raises(ApiError, match="does not exist"):
            await api(c, "submit", _spec("bad", dependency=["afterok:9999"]))


async def test_explain_lists_factors_and_every_reason(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
    ):
        c = Client(d.config.daemon.socket)
        big = await api(c, "submit", _spec("big", gpus=2))
        await run_on(a1, c, big)
        waiting = await api(c, "submit", _spec("waiting", gpus=2))
        await until(lambda: _reason_is(c, waiting, "Resources"))
        why = await api(c, "explain", waiting)
        assert why["state"] == "pending" and "Resources" in why["reasons"]
        names = {f["name"] for f in why["factors"]}
        assert {"age", "fairshare", "job_size", "qos", "nice"} <= names
        assert why["priority"] == pytest.approx(sum(f["contribution"] for f in why["factors"]))
        assert why["est_start"] is not None  # from the running job's time limit
        text = await asyncio.to_thread(_dcctl, d.config.daemon.socket, "explain", str(waiting))
        assert "Resources" in text and "FACTOR" in text and "Estimated start" in text
        queue = await asyncio.to_thread(_dcctl, d.config.daemon.socket, "queue")
        assert "(Resources)" in queue


async def test_fairshare_charges_the_account_that_ran(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    sched = "[scheduler.accounts.vision]\nshares = 2\n[scheduler.accounts.nlp]\nshares = 1\n"
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix, sched)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
    ):
        c = Client(d.config.daemon.socket)
        job = await api(c, "submit", _spec("v", gpus=2, account="vision"))
        await run_on(a1, c, job)
        await asyncio.sleep(1.5)
        await a1.exit(str(job), 0, 0)
        await until(lambda: state_is(c, job, "COMPLETED"))
        d.scheduling.wake.set()

        async def charged() -> dict[tuple[str, str], Any] | None:
            """The fair-share rows once a pass has charged the run (two GPUs for over a
            second): the report is a pass's snapshot, and a pass may come late."""
            rows = {(r["account"], r["user"]): r for r in (await api(c, "fairshare"))["rows"]}
            vision = rows.get(("vision", ""))
            return rows if vision is not None and vision["raw_usage"] >= 2.0 else None

        rows = await until(charged, what="the run charged to vision")
        assert rows[("nlp", "")]["raw_usage"] == 0
        assert rows[("vision", "")]["fairshare"] < rows[("nlp", "")]["fairshare"]
        with pytest.raises(ApiError, match="account 'nope' is not configured"):
            await api(c, "submit", _spec("x", account="nope"))
        text = await asyncio.to_thread(_dcctl, d.config.daemon.socket, "fairshare")
        assert "vision" in text and "FAIRSHARE" in text


async def test_requeue_puts_a_running_job_back_and_it_starts_again(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
    ):
        c = Client(d.config.daemon.socket)
        job = await api(c, "submit", _spec("r"))
        await run_on(a1, c, job)
        await api(c, "job_action", job, "requeue")
        await until(lambda: cancels(a1), what="cancel")
        await a1.exit(str(job), 0, None, signal=15, reason="cancelled")
        await until(lambda: len(launches(a1, job_id=job)) == 2, what="second launch")
        first, second = launches(a1, job_id=job)
        assert first.cmd_id != second.cmd_id
        states = [e["state"] for e in (await api(c, "job", job))["events"]]
        assert states[-3:] == ["COMPLETING", "REQUEUED", "STARTING"]


async def test_a_higher_qos_preempts_a_preemptible_job(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    sched = 'preempt_grace = 1\n[scheduler.qos.high]\npriority = 100\npreempt = ["normal"]\n'
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix, sched)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
    ):
        c = Client(d.config.daemon.socket)
        low = await api(c, "submit", _spec("low", gpus=2, preemptible=True))
        await run_on(a1, c, low)
        high = await api(c, "submit", _spec("high", gpus=2, qos="high"))
        await until(lambda: cancels(a1), what="preemption")
        assert cancels(a1)[0].grace_s == 1
        await a1.exit(str(low), 0, None, signal=15, reason="cancelled")
        await until(lambda: launches(a1, job_id=high), what="high-QOS job starts")
        assert (await api(c, "job", low))["state"] in ("REQUEUED", "PENDING")
