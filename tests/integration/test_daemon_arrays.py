"""Job arrays, warning signals and requeue as the daemon drives them, on a real broker with
scripted agents: `%N` limits, task environment, dependencies on an array, array-wide and
per-task actions through dcctl, the time-limit warning and the restart count."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import signal
from pathlib import Path
from typing import Any

from dcsched.cli import dcctl, dcsub
from dcsched.client import Client
from dcsched.protocol.messages import Cancel, Signal
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    launches,
    run_on,
    running_daemon,
    state_is,
    until,
    write_config,
)


def _spec(name: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "command": ["t.py"],
        "workdir": "/tmp",
        "resources": {"nodes": 1, "gpus_per_node": 1, "time_limit": "1h"},
        **kw,
    }


def _run_dcctl(sock: str, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert dcctl.main(["--socket", sock, *args]) == 0
    return out.getvalue()


def _dcctl_rc(sock: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = dcctl.main(["--socket", sock, *args])
    return rc, out.getvalue(), err.getvalue()


async def _dcctl(sock: str, *args: str) -> str:
    """dcctl off the event loop the daemon runs on."""
    return await asyncio.to_thread(_run_dcctl, sock, *args)


async def _states(c: Client, ids: list[int]) -> list[str]:
    return [(await api(c, "job", i))["state"] for i in ids]


async def test_an_array_runs_n_at_a_time_and_is_acted_on_whole_or_by_task(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=4) as a1,
    ):
        sock = d.config.daemon.socket
        c = Client(sock)
        array = await api(c, "submit", _spec("sweep", array="0-4%2"))
        ids = list(range(array, array + 5))
        await until(lambda: len(launches(a1)) == 2, what="two tasks launched")
        envs = sorted((ln.env for ln in launches(a1)), key=lambda e: e["DCSCHED_ARRAY_TASK_ID"])
        assert [e["DCSCHED_ARRAY_TASK_ID"] for e in envs] == ["0", "1"]
        assert {e["DCSCHED_ARRAY_JOB_ID"] for e in envs} == {str(array)}
        assert {e["DCSCHED_RESTART_COUNT"] for e in envs} == {"0"}
        why = await api(c, "explain", ids[2])
        assert "JobArrayTaskLimit" in why["reasons"], why

        # One line for the waiting tasks; -r: one a task.
        queue = await _dcctl(sock, "queue")
        assert f"{array}_[2-4%2]" in queue and f"{array}_0" in queue, queue
        assert (
            sum(f"{array}_" in line for line in (await _dcctl(sock, "queue", "-r")).splitlines())
            == 5
        )

        # A dependency on the array is one on each of its tasks.
        after = await api(c, "submit", _spec("report", dependency=[f"afterok:{array}"]))
        deps = (await api(c, "job", after))["spec"]["dependency"]
        assert deps == ["afterok:" + ":".join(map(str, ids))]
        task3 = await api(c, "submit", _spec("t3", dependency=[f"after:{array}_3"]))
        assert (await api(c, "job", task3))["spec"]["dependency"] == [f"after:{ids[3]}"]

        # The API takes ARRAY_TASK ids and an array's id, for every client.
        assert (await api(c, "job", f"{array}_3"))["id"] == ids[3]
        rc, _, err = await asyncio.to_thread(_dcctl_rc, sock, "release", str(array))
        assert rc == 1 and err.startswith(f"dcctl: array {array}: no task it applies to ("), err
        held = await api(c, "job_action", str(array), "hold")  # the waiting tasks only
        assert sorted(t["id"] for t in held["tasks"]) == ids[2:]
        assert sorted(t["id"] for t in held["skipped"]) == ids[:2]  # not waiting
        assert await _states(c, ids[2:]) == ["HELD", "HELD", "HELD"]
        again = await api(c, "job_action", str(array), "hold")  # a repeat is no error
        assert again["tasks"] == [] and len(again["skipped"]) == 5
        released = await _dcctl(sock, "release", str(array))
        assert f"job {array}_2: PENDING" in released, released
        assert f"job {array}_0: STARTING (left as it is" in released, released

        # One task held by its ARRAY_TASK id; then the whole array cancelled by its id.
        await _dcctl(sock, "hold", f"{array}_3")
        assert await _states(c, ids[2:]) == ["PENDING", "HELD", "PENDING"]
        assert f"{array}_3" in await _dcctl(sock, "queue")  # a group of one shows as the task
        await _dcctl(sock, "cancel", str(array))
        await until(lambda: a1.commands and any(isinstance(x, Cancel) for x in a1.commands))
        for i in ids[:2]:
            await a1.exit(str(i), 0, None, signal=15, reason="cancelled")
        await until(lambda: _all_are(c, ids, "CANCELLED"), what="every task cancelled")
        assert (await api(c, "job", after))["reason"] == "DependencyNeverSatisfied"


async def test_dcsub_array_overrides_the_file_and_says_how_many_tasks(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    job_file = tmp_path / "sweep.toml"
    job_file.write_text(
        'name = "sweep"\ncommand = ["t.py"]\narray = "0-1"\n[resources]\ngpus_per_node = 1\n'
    )
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=4),
    ):
        sock = d.config.daemon.socket
        out = await asyncio.to_thread(_run_dcsub, sock, str(job_file), "--array", "0-9:3%2")
        array = int(out.split()[3].rstrip(":"))
        assert out.strip() == (
            f"Submitted array job {array}: 4 tasks, {array}_0 to {array}_9, at most 2 at once"
        )
        c = Client(sock)
        tasks = [await api(c, "job", f"{array}_{i}") for i in (0, 3, 6, 9)]
        assert [t["id"] for t in tasks] == list(range(array, array + 4))
        assert {t["spec"]["array"] for t in tasks} == {"0-9:3%2"}


def _run_dcsub(sock: str, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert dcsub.main([*args, "--socket", sock]) == 0
    return out.getvalue()


async def _all_are(c: Client, ids: list[int], state: str) -> bool:
    return all(s == state for s in await _states(c, ids))


async def test_a_singleton_waits_for_its_namesake(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=4) as a1,
    ):
        c = Client(d.config.daemon.socket)
        first = await api(c, "submit", _spec("etl"))
        await run_on(a1, c, first)
        second = await api(c, "submit", _spec("etl", dependency=["singleton"]))
        await until(lambda: _reason(c, second, "DependencySingleton"))
        assert not launches(a1, job_id=second)
        await a1.exit(str(first), 0)
        await until(lambda: launches(a1, job_id=second), what="the singleton starts")


async def _reason(c: Client, job_id: int, reason: str) -> bool:
    return (await api(c, "job", job_id))["reason"] == reason


async def test_warning_before_the_time_limit_and_a_requeue_counts_a_restart(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix)) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
    ):
        c = Client(d.config.daemon.socket)
        spec = _spec("train", signal="USR1@3599", requeue=True)
        job = await api(c, "submit", spec)
        await run_on(a1, c, job)
        # Due a second into the run: the workers get SIGUSR1 once.
        await until(lambda: [x for x in a1.commands if isinstance(x, Signal)], what="warning")
        (warn,) = [x for x in a1.commands if isinstance(x, Signal)]
        assert (warn.job_id, warn.signal) == (str(job), signal.SIGUSR1)
        assert (await api(c, "job", job))["signal_ts"] is not None

        # A requeue: the warning, its lead time, then SIGTERM (the agent's part).
        await api(c, "job_action", job, "requeue")
        await until(lambda: [x for x in a1.commands if isinstance(x, Cancel)], what="stop")
        (stop,) = [x for x in a1.commands if isinstance(x, Cancel)]
        assert (stop.signal, stop.signal_lead_s) == (signal.SIGUSR1, 3599)
        await a1.exit(str(job), 0)
        await until(lambda: len(launches(a1, job_id=job)) == 2, what="the second run")
        assert launches(a1, job_id=job)[-1].env["DCSCHED_RESTART_COUNT"] == "1"
        await a1.start(str(job), 0)
        await until(lambda: state_is(c, job, "RUNNING"))
        shown = await api(c, "job", job)
        assert (shown["restart_count"], shown["submit_ts"]) == (1, shown["submit_ts"])
        assert "Restarts = 1" in await _dcctl(d.config.daemon.socket, "show", str(job))


async def test_a_lost_node_requeues_a_job_that_asked_for_it(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, node_timeout_s=1.0)
    async with running_daemon(conf) as d:
        c = Client(d.config.daemon.socket)
        a1 = await ScriptedAgent(mosquitto, prefix, "n1").__aenter__()
        silent = False
        try:
            job = await api(c, "submit", _spec("train", requeue=True, max_restarts=1))
            await run_on(a1, c, job)
            async with ScriptedAgent(mosquitto, prefix, "n2") as a2:
                await a1.__aexit__(None, None, None)  # n1 goes silent
                silent = True
                await until(lambda: launches(a2, job_id=job), 20.0, "the job runs on n2")
                assert launches(a2, job_id=job)[-1].env["DCSCHED_RESTART_COUNT"] == "1"
                states = [e["state"] for e in (await api(c, "job", job))["events"]]
                assert states[-3:] == ["COMPLETING", "REQUEUED", "STARTING"], states
        finally:
            if not silent:
                await a1.__aexit__(None, None, None)


async def test_drain_with_requeue_warns_and_requeues_the_nodes_jobs(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, admins=[getpass.getuser()])
    async with (
        running_daemon(conf) as d,
        ScriptedAgent(mosquitto, prefix, "n1", gpus=2) as a1,
    ):
        sock = d.config.daemon.socket
        c = Client(sock)
        job = await api(c, "submit", _spec("train", signal="USR1@120"))
        await run_on(a1, c, job)
        out = await _dcctl(sock, "drain", "n1", "--requeue")
        assert f"requeued jobs {job}" in out
        await until(lambda: [x for x in a1.commands if isinstance(x, Cancel)], what="stop")
        (stop,) = [x for x in a1.commands if isinstance(x, Cancel)]
        assert (stop.signal, stop.signal_lead_s) == (signal.SIGUSR1, 120)
        await a1.exit(str(job), 0)
        await until(lambda: state_is(c, job, "REQUEUED"))
        assert (await api(c, "job", job))["restart_count"] == 1
        assert len(launches(a1, job_id=job)) == 1  # not back on the drained node
