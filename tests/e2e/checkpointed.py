"""The checkpointing training job that the preemption tests run (jobs/checkpointed.py):
its submission and the check that a resumed run ends as an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.faults.harness import Rig

JOB = Path(__file__).with_name("jobs") / "checkpointed.py"


def submit(rig: Rig, result: Path, ckpt: Path, gate: Path) -> int:
    """A preemptible run of the whole node that checkpoints on SIGUSR1, 20 s before a stop;
    without a checkpoint it stops at step 20 until `gate` exists."""
    return rig.submit(
        rig.spec(
            "train",
            "",
            command=[str(JOB), str(result), str(ckpt), str(gate)],
            resources={"nodes": 1, "gpus_per_node": 2, "time_limit": "10m"},
            torchrun={"nproc_per_node": 1},  # one worker writes the files
            preemptible=True,
            signal="USR1@20",
            requeue=True,
        )
    )


def resumed_once(result: Path, tmp_path: Path) -> dict[str, Any]:
    """The run's result, checked to be one resume at step 20 that ended as an uninterrupted
    run of the same job does."""
    got: dict[str, Any] = json.loads(result.read_text())
    assert (got["restarts"], got["resumed"]) == (1, 20), got
    alone = tmp_path / "alone.json"
    subprocess.run([sys.executable, str(JOB), str(alone), str(tmp_path / "none")], check=True)
    assert got["state"] == json.loads(alone.read_text())["state"]
    return got
