"""`dcd demo` as a user runs it: one command, a cluster up, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcsched.client import Client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_comes_up_and_stops_on_ctrl_c(tmp_path: Path, broker: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dcsched.daemon.main",
            "--log-level",
            "warning",
            "demo",
            "--dir",
            str(tmp_path),
            "--agents",
            "2",
            "--gpus",
            "3",
            "--broker",
            broker,
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "export DCSCHED_SOCKET=" in line:
                sock = line.split("=", 1)[1].strip()
                break
        else:
            raise AssertionError("".join(lines))
        client = Client(sock)
        deadline = time.monotonic() + 30
        while True:
            nodes = client.nodes()
            if len(nodes) == 2 and all(n["state"] == "up" for n in nodes):
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(0.3)
        assert all(n["simulated"] and n["gpus"] == 3 for n in nodes)
        gpus = client.gpus()
        assert len(gpus) == 6 and all(g["util"] is not None for g in gpus)
        job = client.submit(
            {
                "name": "sleeper",
                "command": ["sleep.py", "600"],
                "workdir": str(EXAMPLES),
                "resources": {"gpus_per_node": 1},
            }
        )
        while client.job(job)["state"] != "RUNNING":
            assert time.monotonic() < deadline + 60
            time.sleep(0.3)
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
        rest = proc.stdout.read()
        assert "dcsched demo stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    # Nothing of the demo is left running: no broker, agent, runner, torchrun or worker.
    out = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], check=False, capture_output=True, text=True
    )
    assert out.stdout.strip() == ""
