"""Dispatch latency: from `submit` to torchrun started on every node (the RUNNING event),
separately from torch's own start-up. A real Mosquitto, `dcd run` and two `dc-agent run`
processes (sim backend) on this machine. Prints one JSON object.

    python bench/dispatch.py --jobs 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from dcsched.client import Client

JOB = Path(__file__).resolve().parents[1] / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50": round(1000 * statistics.median(values), 1), "max": round(1000 * values[-1], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10)
    a = p.parse_args()
    d = Path(tempfile.mkdtemp(prefix="dcsched-dispatch-"))
    port = _free_port()
    (d / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    (d / "key").write_text(uuid.uuid4().hex * 2)
    common = f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n[cluster]\nkey_file = "{d / "key"}"\n'
    (d / "dcd.toml").write_text(
        common + f'[daemon]\nstate_dir = "{d}"\nsocket = "{d / "dcd.sock"}"\nmetrics_listen = ""\n'
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    argvs = [
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(d / "mosquitto.conf")],
        [
            sys.executable,
            "-m",
            "dcsched.daemon.main",
            "--log-level",
            "warning",
            "run",
            "--config",
            str(d / "dcd.toml"),
        ],
    ]
    for i in (1, 2):
        (d / f"a{i}.toml").write_text(
            common + f'[agent]\nhost = "n{i}"\nbackend = "sim"\nsim_gpus = 2\n'
            f'advertise_addr = "127.0.0.1"\nstate_dir = "{d / f"a{i}"}"\ntorchrun = "{torchrun}"\n'
        )
        argvs.append(
            [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(d / f"a{i}.toml")]
        )
    procs = []
    for argv in argvs:
        with (d / f"{len(procs)}.log").open("wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(0.3)
    c = Client(str(d / "dcd.sock"))
    out: dict[str, Any] = {}
    try:
        while True:
            try:
                if sum(n["state"] == "up" for n in c.nodes()) == 2:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        spec = {
            "name": "dispatch",
            "command": ["sleep.py", "2"],
            "workdir": str(JOB),
            "resources": {"nodes": 2, "gpus_per_node": 2, "time_limit": "5m"},
            "env": {"OMP_NUM_THREADS": "1"},
        }
        to_starting, to_running, to_done = [], [], []
        for _ in range(a.jobs):
            job_id = c.submit(spec)
            while (job := c.job(job_id))["state"] not in ("COMPLETED", "FAILED", "CANCELLED"):
                time.sleep(0.05)
            ts = {e["state"]: e["ts"] for e in job["events"]}
            to_starting.append(ts["STARTING"] - job["submit_ts"])
            to_running.append(ts["RUNNING"] - job["submit_ts"])
            to_done.append(job["end_ts"] - job["submit_ts"])
        out = {
            "jobs": a.jobs,
            "nodes_per_job": 2,
            "submit_to_allocated_ms": _ms(to_starting),
            "submit_to_torchrun_on_every_node_ms": _ms(to_running),
            "submit_to_completed_ms (2 s job + torch start-up)": _ms(to_done),
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
