"""The optional pre-job health check ([agent] health_check): a site's command run before each
launch, on the GPUs the job is given. A failure refuses the launch with code "unhealthy":
the daemon puts the job back in the queue and drains the node with the command's words."""

from __future__ import annotations

import os
import subprocess

from dcsched.agents.errors import UNHEALTHY, LaunchError
from dcsched.protocol.messages import Launch

TAIL = 300  # characters of the command's output kept for the reason


def run_health_check(argv: list[str], timeout_s: float, cmd: Launch) -> None:
    """Raises LaunchError(code=UNHEALTHY) unless `argv` exits 0 within `timeout_s`."""
    if not argv:
        return
    gpus = ",".join(str(g) for g in cmd.gpus)
    env = {
        **os.environ,
        "DCSCHED_JOB_ID": cmd.job_id,
        "DCSCHED_NODE_RANK": str(cmd.node_rank),
        "DCSCHED_GPUS": gpus,
        "CUDA_VISIBLE_DEVICES": gpus,
    }
    try:
        out = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{argv[0]} did not finish in {timeout_s:g} s", UNHEALTHY) from None
    except OSError as exc:
        raise LaunchError(f"cannot run {argv[0]}: {exc.strerror}", UNHEALTHY) from None
    if out.returncode != 0:
        words = (out.stdout + out.stderr).strip()[-TAIL:].strip()
        status = f"exited {out.returncode}" if out.returncode > 0 else f"signal {-out.returncode}"
        raise LaunchError(f"{argv[0]} {status}" + (f": {words}" if words else ""), UNHEALTHY)
