"""Faults under a workload: many short real torchrun jobs while `dcd` is SIGKILLed at random
moments, and a hung agent (SIGSTOP) whose host is declared lost and then comes back.

Each job appends one line per worker to a ledger file of its own, then sleeps and exits
with the code it was given, so that afterwards the test can say of every job: it was not
lost (it ended), it ran exactly once (one line per rank), its exit code is the true one, and
none of its processes is left behind.

The size and the seed come from the environment, so the same test is the quick version in
the suite and the long one run alone:

    DCSCHED_FAULT_JOBS=200 DCSCHED_FAULT_SEED=7 python -m pytest tests/faults -k workload
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROCESS_TIMEOUT, Procs, free_port
from tests.faults.harness import ENDED, Rig, _kill, alive, until

pytestmark = [pytest.mark.e2e, pytest.mark.faults, PROCESS_TIMEOUT]

JOBS = int(os.environ.get("DCSCHED_FAULT_JOBS", "16"))
SEED = int(os.environ.get("DCSCHED_FAULT_SEED", "1"))

LEDGER_JOB = """\
import os, sys, time
ledger, code, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
line = f"{os.environ.get('DCSCHED_JOB_ID')} {os.environ.get('RANK')} {os.getpid()}\\n"
fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, line.encode())
os.close(fd)
time.sleep(seconds)
sys.exit(code)
"""


def _job_pids(script: Path) -> list[int]:
    """Every live process running `script` (a job's worker), however it was reparented."""
    out = []
    needle = str(script).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read() and alive(int(entry)):
                    out.append(int(entry))
        except OSError:
            continue
    return out


class Workload:
    """Jobs of seeded shapes, durations and exit codes, and the checks on how they ended."""

    def __init__(self, rig: Rig, n: int, rng: random.Random) -> None:
        self.rig = rig
        self.script = rig.jobs_dir / "ledger_job.py"
        self.script.write_text(LEDGER_JOB)
        self.ledgers = rig.jobs_dir / "ledgers"
        self.ledgers.mkdir()
        self.expected: dict[int, tuple[int, int]] = {}  # job id -> (exit code, world size)
        self.shapes = [self._shape(i, rng) for i in range(n)]

    @staticmethod
    def _shape(i: int, rng: random.Random) -> dict[str, Any]:
        nodes, gpn = rng.choice(((1, 1), (1, 1), (1, 1), (1, 2), (2, 1)))
        return {
            "name": f"w{i}",
            "nodes": nodes,
            "gpus_per_node": gpn,
            "code": rng.choice((0, 0, 0, 3)),
            "seconds": round(rng.uniform(0.2, 3.0), 1),
        }

    def submit_all(self) -> None:
        for s in self.shapes:
            spec = {
                "name": s["name"],
                "command": [
                    str(self.script),
                    str(self.ledgers / s["name"]),
                    str(s["code"]),
                    str(s["seconds"]),
                ],
                "workdir": str(self.rig.jobs_dir),
                "resources": {
                    "nodes": s["nodes"],
                    "gpus_per_node": s["gpus_per_node"],
                    "time_limit": "10m",
                },
                "env": {"OMP_NUM_THREADS": "1"},
            }
            job_id = self.rig.submit(spec)
            self.expected[job_id] = (s["code"], s["nodes"] * s["gpus_per_node"])
        self.names = dict(zip(self.expected, (s["name"] for s in self.shapes), strict=True))

    def ended(self) -> int:
        jobs = self.rig.client.jobs(all_states=True)
        return sum(1 for j in jobs if j["id"] in self.expected and j["state"] in ENDED)

    def check(self) -> None:
        """No job lost, none run twice, every exit code true, no process left behind."""
        problems = []
        for job_id, (code, world) in self.expected.items():
            job = self.rig.job(job_id)
            want = "COMPLETED" if code == 0 else "FAILED"
            if job["state"] != want or job["exit_code"] != code:
                got = f"{job['state']} exit {job['exit_code']}"
                problems.append(f"job {job_id}: {got}, want {want} exit {code}")
            ledger = self.ledgers / self.names[job_id]
            lines = ledger.read_text().splitlines() if ledger.exists() else []
            ranks = sorted(int(line.split()[1]) for line in lines)
            ids = {line.split()[0] for line in lines}
            if ranks != list(range(world)) or ids != {str(job_id)}:
                problems.append(f"job {job_id} ran {lines} (want ranks 0..{world - 1} once)")
        assert not problems, "\n".join(problems) + "\n" + self.rig.logs()
        until(lambda: not _job_pids(self.script), 30, "no job process left", every=0.5)


@pytest.mark.timeout(300 + 12 * JOBS, method="signal", func_only=True)
def test_daemon_sigkill_at_random_moments_loses_and_repeats_nothing(
    procs: Procs, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    port = free_port()
    lo = min(max(port - 50, 20000), 60000)
    ports = f"{lo}-{lo + 199}"
    rig = Rig.up(tmp_path, procs, hosts=("node1", "node2"), port_range=ports)
    work = Workload(rig, JOBS, rng)
    work.submit_all()
    kills = max(2, JOBS // 8)
    for k in range(kills):
        time.sleep(rng.uniform(0.5, 4.0))
        assert rig.daemon is not None
        _kill(rig.daemon, signal.SIGKILL)
        time.sleep(rng.uniform(0.1, 2.0))
        rig.start_daemon(port_range=ports)
        if work.ended() == JOBS and k:
            break
    until(lambda: work.ended() == JOBS, 120 + 10 * JOBS, f"all {JOBS} jobs to end", every=1.0)
    work.check()


def test_a_hung_agent_is_a_lost_host_and_its_jobs_are_stopped_when_it_returns(
    procs: Procs, tmp_path: Path
) -> None:
    rig = Rig.up(tmp_path, procs, hosts=("node1",), node_timeout_s=6.0)
    marker = rig.marker("hung")
    job_id = rig.submit(rig.spec("hung", marker))
    rig.wait(job_id, {"RUNNING"})
    started = rig.jobs_dir / "hung.go.started"
    worker = int(until(lambda: started.exists() and started.read_text(), 120, "the job to start"))

    agent = rig.agents["node1"]
    agent.send_signal(signal.SIGSTOP)
    try:
        job = rig.wait(job_id, {"NODE_FAIL"}, timeout=90)
        assert "node1" in job["reason"], job
        assert alive(worker)  # the host may be fine: only its agent hangs
    finally:
        agent.send_signal(signal.SIGCONT)
    # Back: the daemon has ended the job, so what still runs of it is an orphan to stop.
    until(lambda: not alive(worker), 90, "the orphaned worker to be stopped")
    assert rig.job(job_id)["state"] == "NODE_FAIL"
    rig.wait_nodes_up("node1")
    after = rig.submit(rig.spec("after", rig.marker("after")))
    rig.marker("after").touch()
    assert rig.wait(after, ENDED, timeout=120)["state"] == "COMPLETED", rig.logs()
    assert not _job_pids(rig.script)
