"""Accounting end to end: a real daemon accumulates a job's telemetry, journals its row with
the final state, and `dcctl acct` / `dcctl eff` read it back."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from dcsched.cli import dcctl
from dcsched.client import Client
from dcsched.daemon.service import Daemon
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    run_on,
    running_daemon,
    state_is,
    until,
    write_config,
)

SCHED = "[scheduler.accounts.ml]\nshares = 1\n[scheduler.accounts.cv]\nshares = 1\n"
GIB = 1 << 30


def spec(account: str, gpus: int) -> dict[str, object]:
    return {
        "name": f"train-{account}",
        "command": ["train.py"],
        "workdir": "/tmp",
        "account": account,
        "resources": {"nodes": 1, "gpus_per_node": gpus},
    }


def seen(d: Daemon, job_id: int, energy: float) -> bool:
    use = d.jobs.accounting.jobs.get(job_id)
    return bool(use) and all(g.last_energy == energy for g in use.gpus.values())


async def test_a_finished_job_keeps_its_gpu_hours_energy_and_utilisation(
    tmp_path: Path, mosquitto: Broker, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, scheduler=SCHED)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as a1:
        client = Client(d.config.daemon.socket)
        await until(lambda: "n1" in d.cluster.nodes, what="node")
        a1.sample = {"util": 80.0, "mem_used": 4 * GIB, "energy_j": 1000.0}
        job = await api(client, "submit", spec("ml", 2))
        await run_on(a1, client, job)
        # The energy counter goes 1000 -> 1300 J on each GPU while the job runs: 300 J each.
        for energy in (1000.0, 1100.0, 1300.0):
            a1.sample = {"util": 80.0, "mem_used": 4 * GIB, "energy_j": energy}
            await until(lambda e=energy: seen(d, job, e), what=f"energy {energy} accounted")
        live = await api(client, "efficiency", job)
        assert live["end_ts"] is None and live["mean_util"] == pytest.approx(80.0)
        assert live["energy_kwh"] == pytest.approx(600 / 3.6e6)
        await a1.exit(str(job), 0, 0)
        await until(lambda: state_is(client, job, "COMPLETED"), what="COMPLETED")
        never = await api(client, "submit", {**spec("cv", 8), "hold": True})
        await api(client, "job_action", never, "cancel")

        row = await api(client, "efficiency", job)
        done = await api(client, "job", job)
        assert row["state"] == "COMPLETED" and row["exit_code"] == 0
        assert (row["user"], row["account"], row["qos"], row["gpus"]) == ("root", "ml", "normal", 2)
        assert row["alloc"] == {"n1": [0, 1]}
        assert (row["submit_ts"], row["start_ts"], row["end_ts"]) == (
            done["submit_ts"],
            done["start_ts"],
            done["end_ts"],
        )
        assert row["gpu_hours"] == pytest.approx(2 * (done["end_ts"] - done["start_ts"]) / 3600)
        assert row["energy_kwh"] == pytest.approx(600 / 3.6e6)
        assert row["mean_util"] == pytest.approx(80.0) and row["max_mem_bytes"] == 4 * GIB
        assert job not in d.jobs.accounting.jobs  # forgotten once journaled

        out = await api(client, "accounting")
        assert [r["job_id"] for r in out["jobs"]] == [never, job]
        totals = {t["account"]: t for t in out["totals"]}
        assert totals["ml"]["jobs"] == 1 and totals["ml"]["mean_util"] == pytest.approx(80.0)
        assert totals["cv"]["gpu_hours"] == 0.0 and totals["cv"]["mean_util"] is None
        only = await api(client, "accounting", account="cv", state="CANCELLED")
        assert [r["job_id"] for r in only["jobs"]] == [never]
        assert (await api(client, "accounting", since=done["end_ts"] + 3600))["jobs"] == []

        def cli(*args: str) -> str:
            assert dcctl.main(["--socket", d.config.daemon.socket, *args]) == 0
            return capsys.readouterr().out

        table = await asyncio.to_thread(cli, "acct", "--since", "1h")
        assert "ACCOUNT  JOBS  GPU-H  KWH    UTIL" in table
        rows = list(csv.DictReader(io.StringIO(await asyncio.to_thread(cli, "acct", "--csv"))))
        assert [(r["job_id"], r["account"], r["mean_util"]) for r in rows] == [
            (str(never), "cv", ""),
            (str(job), "ml", "80.0"),
        ]
        as_json = json.loads(await asyncio.to_thread(cli, "acct", "--json", "--user", "root"))
        assert len(as_json["jobs"]) == 2
        eff = await asyncio.to_thread(cli, "eff", str(job))
        assert "GPU-hours used:" in eff and "(80.0% of allocated" in eff
        assert "Energy: 0.000 kWh" in eff  # 600 J
        assert "n1    0    80%" in eff


async def test_a_daemon_restart_keeps_a_running_jobs_accounting(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with ScriptedAgent(mosquitto, prefix, "n1") as a1:
        a1.sample = {"util": 40.0, "energy_j": 1000.0}
        async with running_daemon(conf) as d:
            client = Client(d.config.daemon.socket)
            await until(lambda: "n1" in d.cluster.nodes, what="node")
            job = await api(client, "submit", spec("default", 1))
            await run_on(a1, client, job)
            await until(lambda: seen(d, job, 1000.0), what="energy 1000 accounted")
            a1.sample = {"util": 40.0, "energy_j": 1100.0}
            await until(lambda: seen(d, job, 1100.0), what="energy 1100 accounted")
        # Stopped (its accumulation saved); the job runs on; energy used meanwhile counts.
        a1.sample = {"util": 40.0, "energy_j": 1500.0}
        async with running_daemon(conf) as d:
            client = Client(d.config.daemon.socket)
            await until(lambda: seen(d, job, 1500.0), what="energy 1500 accounted")
            await a1.exit(str(job), 0, 0)
            await until(lambda: state_is(client, job, "COMPLETED"), what="COMPLETED")
            row = await api(client, "efficiency", job)
    assert row["energy_kwh"] == pytest.approx(500 / 3.6e6)
    assert row["mean_util"] == pytest.approx(40.0)
