"""Idle GPUs: a running job whose GPUs stay under the threshold is flagged, warned in its log
(a LogNotice to its agent) and, by policy, cancelled with the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dcsched.client import Client
from dcsched.protocol.messages import LogNotice
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    cancels,
    run_on,
    running_daemon,
    state_is,
    until,
    write_config,
)

SPEC = {
    "name": "t",
    "command": ["train.py"],
    "workdir": "/tmp",
    "resources": {"nodes": 1, "gpus_per_node": 2},
}


async def test_an_idle_job_is_flagged_warned_and_cancelled(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(
        tmp_path, mosquitto, prefix, idle_after_s=1.0, idle_cancel_after_s=1.0, idle_util_pct=5.0
    )
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as a1:
        client = Client(d.config.daemon.socket)
        await until(lambda: "n1" in d.cluster.nodes, what="node")
        a1.sample = {"util": 60.0}
        job = await api(client, "submit", SPEC)
        await run_on(a1, client, job)
        await asyncio.sleep(1.5)  # busy: never flagged however long it runs
        assert job not in d.jobs.idle_flagged
        a1.sample = {"util": 1.0}
        await until(lambda: job in d.jobs.idle_flagged, what="flagged idle")
        shown = await api(client, "job", job)
        assert shown["idle_s"] >= 1.0
        await until(lambda: [c for c in a1.commands if isinstance(c, LogNotice)], what="notice")
        notes = [c for c in a1.commands if isinstance(c, LogNotice)]
        assert notes[0].job_id == str(job) and notes[0].node_rank == 0
        assert "under 5% utilisation" in notes[0].text and "will be cancelled" in notes[0].text
        await until(lambda: cancels(a1), what="cancel", timeout=15)
        await a1.exit(str(job), 0, None, 15, "cancelled")
        await until(lambda: state_is(client, job, "CANCELLED"), what="CANCELLED")
        done = await api(client, "job", job)
        assert done["reason"].startswith("cancelled by the idle-GPU policy (GPUs under 5% for")
        await until(lambda: job not in d.jobs.idle_flagged, what="no longer flagged")
