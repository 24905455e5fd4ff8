"""End to end: a preempted job gets its warning signal, checkpoints, goes back to the queue,
and resumes from its checkpoint with DCSCHED_RESTART_COUNT=1 (real dcd, agent, torchrun)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PROCESS_TIMEOUT, Procs
from tests.e2e import checkpointed
from tests.faults.harness import Rig, until

pytestmark = [pytest.mark.e2e, PROCESS_TIMEOUT]

QOS = 'preempt_grace = 5\n[scheduler.qos.high]\npriority = 100\npreempt = ["normal"]\n'


def test_a_preempted_job_checkpoints_on_its_signal_and_resumes(
    procs: Procs, tmp_path: Path
) -> None:
    rig = Rig.up(tmp_path, procs, scheduler=QOS)
    d = rig.jobs_dir
    result, ckpt, gate = d / "result.json", d / "ckpt.json", d / "gate"
    low = checkpointed.submit(rig, result, ckpt, gate)
    until(lambda: Path(f"{gate}.waiting").exists(), 120, "the job to reach step 20")
    rig.marker("high").touch()  # the preempting job ends at once
    high = rig.submit(
        rig.spec(
            "urgent",
            rig.marker("high"),
            qos="high",
            resources={"nodes": 1, "gpus_per_node": 2, "time_limit": "10m"},
        )
    )
    # The checkpoint is written on SIGUSR1, long before the 20 s lead ends in a SIGTERM.
    until(ckpt.exists, 60, f"a checkpoint on the warning signal\n{rig.logs()}")
    assert rig.wait(high, {"COMPLETED"})["state"] == "COMPLETED"
    done = rig.wait(low, {"COMPLETED"})
    assert done["restart_count"] == 1, done
    checkpointed.resumed_once(result, tmp_path)
    events = [e["state"] for e in rig.job(low)["events"]]
    assert "REQUEUED" in events, events
