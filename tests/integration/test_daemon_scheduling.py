"""The scheduler core as the daemon drives it: holds, dependencies, explain, fair-share,
requeue and preemption, on a real broker with scripted agents."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import time
from collections.abc import AsyncIterator
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


@contextlib.asynccontextmanager
async def _node_taken(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> AsyncIterator[tuple[Any, Client, int]]:
    """A daemon with one 2-GPU node that a running job ("big", 1 h limit) fills:
    (daemon, client, big's id)."""
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
    ):
        c = Client(d.config.daemon.socket)
        big = await api(c, "submit", _spec("big", gpus=2))
        await run_on(a1, c, big)
        yield d, c, big


async def test_explain_lists_factors_and_every_reason(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with _node_taken(tmp_path, mosquitto, prefix) as (d, c, _):
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


LAS = 'policy = "las"\nmin_run = "3s"\npreempt_cost = "1s"\npreempt_grace = 1\n'


async def test_las_preempts_only_a_preemptible_job_through_the_requeue_path(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    """A short job under `las`: of two long runners, the preemptible one (not the younger
    one, which did not opt in) gets its warning signal with its lead and the grace, goes
    back to the queue with a restart and the seconds it ran, and its history and explain
    say the scheduler's reason."""
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix, LAS)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
        ScriptedAgent(mosquitto, prefix, "n2", gpus=2) as a2,
    ):
        sock = d.config.daemon.socket
        c = Client(sock)
        warned = {"signal": "USR1@30", "requeue": True}
        long = await api(c, "submit", _spec("long", gpus=2, preemptible=True, **warned))
        await until(lambda: launches(a1, a2, job_id=long), what="long job launched")
        mine = next(a for a in (a1, a2) if launches(a, job_id=long))
        other = a2 if mine is a1 else a1
        await run_on(mine, c, long)
        stay = await api(c, "submit", _spec("stay", gpus=2, requeue=True))
        await run_on(other, c, stay)
        short = await api(
            c,
            "submit",
            _spec("short", gpus=2, resources={"nodes": 1, "gpus_per_node": 2, "time_limit": "1m"}),
        )
        await until(lambda: cancels(mine), timeout=60, what="the long job preempted")
        (stop,) = cancels(mine)
        assert (stop.job_id, stop.signal, stop.signal_lead_s, stop.grace_s) == (
            str(long),
            10,  # SIGUSR1
            30,
            1,
        )
        why = (await api(c, "job", long))["events"][-1]
        assert why["state"] == "COMPLETING"
        assert f"preempted for job {short}" in why["detail"] and "las" in why["detail"]
        out = await asyncio.to_thread(_dcctl, sock, "explain", str(long))
        assert "going back to the queue" in out and f"preempted for job {short}" in out
        await mine.exit(str(long), 0, 0)  # it checkpointed on the signal and exited
        await until(lambda: launches(mine, job_id=short), what="the short job starts")
        back = await api(c, "job", long)
        assert back["state"] in ("REQUEUED", "PENDING"), back["state"]
        assert back["restart_count"] == 1
        assert back["attained_s"] >= 3.0  # it ran its min_run before it was preempted
        out = await asyncio.to_thread(_dcctl, sock, "explain", str(long))
        assert "Its last run was stopped" in out and f"preempted for job {short}" in out
        assert "EarlierRuns" in await asyncio.to_thread(_dcctl, sock, "show", str(long))
        # the job that did not opt in was never touched
        assert not cancels(other)
        assert (await api(c, "job", stay))["state"] == "RUNNING"


@pytest.mark.usefixtures("daemon_store")
async def test_attained_service_is_kept_across_a_restart_and_reaches_the_scheduler(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    """A run that goes back to the queue adds its time to the job's attained service; a
    restarted daemon has it from its store, and the scheduler sees it for the job waiting
    and, once it runs again, for the running job (earlier runs only: `las` adds this run)."""
    conf = write_config(tmp_path, mosquitto, prefix, LAS)

    def seen(d: Any, job_id: int) -> tuple[float | None, float | None]:
        snap = d.scheduling.snapshot(time.time(), accrue=False)
        waiting = {j.job_id: j.attained_s for j in snap.pending}
        running = {j.job_id: j.attained_s for j in snap.running}
        return waiting.get(str(job_id)), running.get(str(job_id))

    async with ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1:
        async with running_daemon(conf) as d:
            c = Client(d.config.daemon.socket)
            job = await api(c, "submit", _spec("long", gpus=2, preemptible=True))
            await run_on(a1, c, job)
            assert seen(d, job) == (None, 0.0)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(c.node_action, "n1", "drain", "test", True)
            await until(lambda: cancels(a1), what="the requeue's cancel")
            await a1.exit(str(job), 0, 0)
            await until(lambda: state_is(c, job, "REQUEUED"), what="back in the queue")
            attained = (await api(c, "job", job))["attained_s"]
            assert attained >= 1.0
            assert seen(d, job) == (attained, None)
        async with running_daemon(conf) as d:
            c = Client(d.config.daemon.socket)
            assert seen(d, job) == (attained, None)
            await asyncio.to_thread(c.node_action, "n1", "resume")
            await until(lambda: len(launches(a1, job_id=job)) == 2, what="the second run")
            assert seen(d, job) == (None, attained)
            assert (await api(c, "job", job))["restart_count"] == 1


@pytest.mark.usefixtures("daemon_store")
async def test_a_completed_jobs_run_time_reaches_the_schedulers_history(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    """Under `las` with `use_history`, a job that completes adds its run time to its user's
    history for its time limit; a failed one adds nothing; a restarted daemon has it again
    from its store."""
    conf = write_config(tmp_path, mosquitto, prefix, LAS + "use_history = true\n")

    def history(d: Any) -> dict[tuple[str, float], tuple[float, ...]]:
        return dict(d.scheduling.snapshot(time.time(), accrue=False).history)

    async with ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1:
        async with running_daemon(conf) as d:
            c = Client(d.config.daemon.socket)
            assert history(d) == {}
            ok = await api(c, "submit", _spec("ok"))
            bad = await api(c, "submit", _spec("bad"))
            await run_on(a1, c, ok)
            await run_on(a1, c, bad)
            await asyncio.sleep(0.5)
            await a1.exit(str(bad), 0, 1)
            await until(lambda: state_is(c, bad, "FAILED"), what="the failed job ended")
            await a1.exit(str(ok), 0, 0)
            await until(lambda: state_is(c, ok, "COMPLETED"), what="the job completed")
            row = await api(c, "job", ok)
            ran = row["end_ts"] - row["start_ts"]
            assert ran > 0
            assert history(d) == {(row["user"], 3600.0): (pytest.approx(ran),)}
        async with running_daemon(conf) as d:
            assert history(d) == {(row["user"], 3600.0): (pytest.approx(ran),)}


async def test_forecast_runs_the_queue_forward_to_the_time_limits(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    """`dcctl queue --start` (squeue --start): each waiting job's start if every job ran to
    its time limit, from the simulation harness run forward in the daemon."""
    async with _node_taken(tmp_path, mosquitto, prefix) as (d, c, big):
        first = await api(c, "submit", _spec("first", gpus=2))
        second = await api(c, "submit", _spec("second", gpus=2))
        held = await api(c, "submit", _spec("held", gpus=1, hold=True))
        await until(lambda: _reason_is(c, second, "Resources"))
        started = (await api(c, "job", big))["start_ts"]
        got = await api(c, "forecast")
        assert got[first] == pytest.approx(started + 3600, abs=5)
        assert got[second] == pytest.approx(started + 2 * 3600, abs=5)
        assert got[held] is None  # held: nothing starts it
        assert big not in got  # running: not forecast
        text = await asyncio.to_thread(_dcctl, d.config.daemon.socket, "queue", "--start")
        lines = text.splitlines()
        assert "START_TIME" in lines[0]
        ids = [line.split()[0] for line in lines[1:]]
        assert ids == [str(first), str(second), str(held)]  # soonest first, no time last
        with pytest.raises(ApiError, match="limit"):
            await api(c, "forecast", -1)


async def test_forecasts_asked_side_by_side_run_one_at_a_time_and_share_an_answer(
    tmp_path: Path, mosquitto: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each forecast holds the interpreter for up to 2 s in its thread: sixteen callers at
    once (dcctl queue --start in a watch loop) kept the event loop from health checks for
    a second and more. One runs at a time, and callers of the same limit within a second
    get its answer."""
    from dcsched.daemon import api as api_module

    running_now = 0
    calls: list[int] = []

    real = api_module.forecast

    def counted(*args: Any, **kw: Any) -> dict[str, float]:
        nonlocal running_now
        running_now += 1
        calls.append(running_now)
        time.sleep(0.2)
        try:
            return real(*args, **kw)
        finally:
            running_now -= 1

    monkeypatch.setattr(api_module, "forecast", counted)
    async with _node_taken(tmp_path, mosquitto, prefix) as (_, c, _):
        waiting = await api(c, "submit", _spec("waiting", gpus=2))
        await until(lambda: _reason_is(c, waiting, "Resources"))
        # the callers' threads apart from the daemon's (it shares this event loop)
        pool = concurrent.futures.ThreadPoolExecutor(8)
        loop = asyncio.get_running_loop()
        got = await asyncio.gather(*(loop.run_in_executor(pool, c.forecast, 10) for _ in range(8)))
        assert max(calls) == 1  # never two at once
        assert len(calls) == 1  # the others got its answer
        assert all(g == got[0] and g[waiting] is not None for g in got)
        other = await asyncio.gather(
            loop.run_in_executor(pool, c.forecast, 5), loop.run_in_executor(pool, c.forecast, 6)
        )
        pool.shutdown()
        assert len(calls) == 3 and max(calls) == 1  # another limit: its own forecast
        assert other[0] == other[1] == got[0]


async def test_the_forecast_keeps_the_jobs_that_the_forecast_ones_depend_on(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    """`?limit=N` runs only the first N pending jobs forward: a job among them that depends
    on one further down never started there (the dependency was of an unknown job)."""
    async with _node_taken(tmp_path, mosquitto, prefix) as (_, c, big):
        low = await api(c, "submit", _spec("low", gpus=2, nice=10000))
        top = await api(c, "submit", _spec("top", gpus=2, dependency=[f"afterok:{low}"]))
        await until(lambda: _reason_is(c, top, "Dependency"))
        started = (await api(c, "job", big))["start_ts"]
        got = await api(c, "forecast", 1)
        assert list(got) == [top]  # the first in priority order: low is niced down
        assert got[top] == pytest.approx(started + 2 * 3600, abs=5)  # after big, then low
