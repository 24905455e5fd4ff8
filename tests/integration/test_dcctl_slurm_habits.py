"""dcctl the way Slurm users work: update, queue --format/--all/--since, reasons in show,
hostlists and DRAINING -> DRAINED, on a real daemon with scripted agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from dcsched.cli import dcctl
from dcsched.client import Client
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


def _spec(name: str, limit: str = "1h") -> dict[str, Any]:
    return {
        "name": name,
        "command": ["t.py"],
        "workdir": "/tmp",
        "resources": {"nodes": 1, "gpus_per_node": 2, "time_limit": limit},
    }


def _dcctl(sock: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = dcctl.main(["--socket", sock, *args])
    return rc, out.getvalue(), err.getvalue()


async def test_update_queue_formats_reasons_and_draining(
    tmp_path: Path, mosquitto: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = "[scheduler.qos.low]\npriority = 0\n[scheduler.qos.high]\npriority = 100\n"
    async with (
        running_daemon(write_config(tmp_path, mosquitto, prefix, sched)) as d,
        ScriptedAgent(mosquitto, prefix, "gpu01", gpus=2) as a1,
        ScriptedAgent(mosquitto, prefix, "gpu02", gpus=2) as a2,
    ):
        sock = d.config.daemon.socket
        c = Client(sock)

        async def ctl(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(_dcctl, sock, *args)

        async def run(job: int) -> ScriptedAgent:
            await until(lambda: launches(a1, a2, job_id=job), what=f"launch of {job}")
            agent = a1 if launches(a1, job_id=job) else a2
            await agent.start(str(job), 0)
            await until(lambda: state_is(c, job, "RUNNING"), what=f"{job} RUNNING")
            return agent

        await until(lambda: len(d.cluster.nodes) == 2, what="both nodes")
        first = await api(c, "submit", _spec("first"))
        second = await api(c, "submit", _spec("second", limit="30"))  # 30 minutes
        host1, host2 = await run(first), await run(second)
        waiting = await api(c, "submit", {**_spec("waiting"), "hold": True})

        # update: a bare number is minutes; an unknown QOS is named with the known ones
        rc, out, _ = await ctl("update", str(waiting), "time_limit=10", "nice=5", "qos=low")
        assert rc == 0 and "time_limit 00:10:00, nice 5, qos low" in out
        rc, _, err = await ctl("update", str(waiting), "qos=gold")
        assert rc == 1 and "'gold' is not a configured QOS; known: high, low, normal" in err
        rc, _, err = await ctl("update", str(second), "nice=1")
        assert rc == 1 and "only a waiting job's nice can change" in err
        job = await api(c, "job", waiting)
        assert (job["time_limit_s"], job["nice"], job["qos"]) == (600, 5, "low")

        # a failure's exit code and reason, in queue --all and show's header
        await host1.exit(str(first), 0, 3)
        await until(lambda: state_is(c, first, "FAILED"))
        why = f"exit 3 (node 0 ({host1.host}) ended with exit code 3)"
        rc, out, _ = await ctl("queue", "--all", "--format", "%i|%T|%R")
        assert f"{first}|FAILED|{why}" in out
        rc, out, _ = await ctl("show", str(first))
        assert f"Reason = {why}" in out

        # --since/--until list the jobs that ended in a window; the env gives the format
        monkeypatch.setenv("DCSCHED_QUEUE_FORMAT", "%i|%t")
        rc, out, _ = await ctl("queue", "--since", "1h", "--noheader")
        assert out.split() == [f"{first}|F"]
        rc, out, _ = await ctl("queue", "--until", "2020-01-01", "--noheader")
        assert out.strip() == ""

        # drain a hostlist: DRAINING where a job still runs, then DRAINED once it ended
        name2 = host2.host
        cursor = d.hub.cursor()
        rc, out, _ = await ctl("drain", "gpu[01-02]", "--reason", "maintenance")
        assert f"{name2}: draining (jobs {second} still run there" in out
        rc, out, _ = await ctl("nodes", name2)
        assert "draining" in out and "gpu0" + ("1" if name2 == "gpu02" else "2") not in out
        await host2.exit(str(second), 0, 0)
        await until(lambda: state_is(c, second, "COMPLETED"))
        rc, out, _ = await ctl("nodes")
        assert out.count("drained") == 2, out
        # the change feed (dcctl events, dctop) says so too: draining, then drained
        said = [
            (ch.data["host"], ch.data["drain_state"])
            for ch in d.hub.since(cursor) or []
            if ch.kind == "node" and "drain_state" in ch.data
        ]
        assert sorted(said) == sorted(
            [(host1.host, "drained"), (name2, "draining"), (name2, "drained")]
        ), said
        assert said.index((name2, "draining")) < said.index((name2, "drained"))
        rc, out, _ = await ctl("resume", "gpu[01-02]")
        assert out.count("resumed") == 2
