"""End to end under `policy = "las"`: a short job preempts a long training run that allows
it; the long run checkpoints on its warning signal, goes back to the queue, waits for the
short job, resumes from its checkpoint with DCSCHED_RESTART_COUNT=1 and ends with the same
result as an uninterrupted run; the seconds of its first run are its attained service
(real Mosquitto, dcd, dc-agent with sim GPUs, torchrun; the harness of test_requeue.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PROCESS_TIMEOUT, Procs
from tests.e2e import checkpointed
from tests.faults.harness import Rig, until

pytestmark = [pytest.mark.e2e, PROCESS_TIMEOUT]

# A minimum run of seconds, not hours, so that the test need not wait: preemption then pays
# once the long job has run more than preempt_cost + preempt_grace (6 s).
LAS = 'policy = "las"\nmin_run = "5s"\npreempt_cost = "1s"\npreempt_grace = 5\n'


def test_under_las_a_short_job_preempts_a_long_one_that_checkpoints_and_resumes(
    procs: Procs, tmp_path: Path
) -> None:
    rig = Rig.up(tmp_path, procs, scheduler=LAS)  # one node, two GPUs
    d = rig.jobs_dir
    result, ckpt, gate = d / "result.json", d / "ckpt.json", d / "gate"
    long = checkpointed.submit(rig, result, ckpt, gate)
    # The first run stops at step 20 (the gate never opens): only a checkpoint gets it on.
    until(lambda: Path(f"{gate}.waiting").exists(), 120, f"the job to reach step 20\n{rig.logs()}")
    rig.marker("short").touch()  # the short job ends as soon as it runs
    short = rig.submit(
        rig.spec(
            "eval",
            rig.marker("short"),
            resources={"nodes": 1, "gpus_per_node": 2, "time_limit": "1m"},
        )
    )
    until(ckpt.exists, 90, f"a checkpoint on the warning signal\n{rig.logs()}")
    assert rig.wait(short, {"COMPLETED"})["state"] == "COMPLETED"
    done = rig.wait(long, {"COMPLETED"}, timeout=180)
    ended = rig.job(short)

    assert done["restart_count"] == 1, done
    checkpointed.resumed_once(result, tmp_path)

    # Preempted for the short job, with the scheduler's reason; back once the short job ended.
    events = done["events"]
    stop = next(e for e in events if e["state"] == "COMPLETING")
    assert f"preempted for job {short}" in stop["detail"] and "las" in stop["detail"], events
    starts = [e["ts"] for e in events if e["state"] == "STARTING"]
    assert len(starts) == 2 and starts[1] >= ended["end_ts"], (events, ended)
    # Its attained service is its first run, allocation to requeue: more than the minimum
    # run it had before the scheduler could preempt it, and not the second run.
    requeued = next(e["ts"] for e in events if e["state"] == "REQUEUED")
    assert done["attained_s"] == pytest.approx(requeued - starts[0], abs=0.01)
    assert done["attained_s"] >= 5.0
    shown = rig.cli("dcctl", "show", str(long)).stdout
    assert "EarlierRuns" in shown and f"preempted for job {short}" in shown
