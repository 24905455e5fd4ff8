"""End to end: dcd and two dc-agents as separate processes on a real Mosquitto, real torchrun
(CPU, gloo) jobs submitted with dcsub and handled with dcctl, as a user would."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROCESS_TIMEOUT, Broker, Procs, tracked_processes
from tests.e2e.cli import run_cli

pytestmark = [pytest.mark.e2e, PROCESS_TIMEOUT]
ROOT = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).resolve().parent / "jobs"


@dataclass
class Cluster:
    dir: Path
    socket: str
    procs: Procs  # the daemon, the agents, and through them every job

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.socket, *args, check=check)

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(json.loads(self.cli("dcctl", "show", str(job_id), "--json").stdout))

    def submit(self, name: str, text: str) -> int:
        f = self.dir / f"{name}.toml"
        f.write_text(text)
        return int(json.loads(self.cli("dcsub", str(f), "--json").stdout)["job_id"])

    def wait(self, job_id: int, states: set[str], timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['state']}, not {states}: {job}")
            time.sleep(0.5)


def _job_toml(
    name: str, command: list[str], nodes: int, gpus: int, limit: str = "5m", workdir: Path = JOBS
) -> str:
    return (
        f'name = "{name}"\ncommand = {json.dumps(command)}\nworkdir = "{workdir}"\n'
        f'[resources]\nnodes = {nodes}\ngpus_per_node = {gpus}\ntime_limit = "{limit}"\n'
        '[env]\nOMP_NUM_THREADS = "1"\n'
    )


@pytest.fixture(scope="module")
def cluster(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Whatever happens, no daemon, agent or job process outlives the module: see
    # tests/conftest.py.
    with tracked_processes("e2e") as procs:
        yield from _cluster(mosquitto, tmp_path_factory.mktemp("e2e"), procs)


def _cluster(mosquitto: Broker, d: Path, procs: Procs) -> Iterator[Cluster]:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    key = d / "cluster.key"
    key.write_text(uuid.uuid4().hex * 2)
    common = (
        f'[broker]\nurl = "{mosquitto.url}"\ntopic_prefix = "{prefix}"\n'
        f'[cluster]\nkey_file = "{key}"\n'
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    port = random.randrange(30000, 60000, 100)
    (d / "dcd.toml").write_text(
        common + f'[daemon]\nstate_dir = "{d / "dcd"}"\nsocket = "{d / "dcd.sock"}"\n'
        'metrics_listen = ""\ncancel_grace_s = 3.0\nnode_timeout_s = 15.0\n'
        # Other clusters on this machine (a demo, a parallel run) must not share master ports.
        f'port_range = "{port}-{port + 99}"\n'
    )
    started = []
    with (d / "dcd.log").open("wb") as log:
        started.append(
            procs.popen(
                [
                    sys.executable,
                    "-m",
                    "dcsched.daemon.main",
                    "run",
                    "--config",
                    str(d / "dcd.toml"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    for i in (1, 2):
        conf = d / f"agent{i}.toml"
        conf.write_text(
            common + f'[agent]\nhost = "node{i}"\nbackend = "sim"\nsim_gpus = 2\n'
            f'advertise_addr = "127.0.0.1"\nstate_dir = "{d / f"agent{i}"}"\n'
            f'torchrun = "{torchrun}"\n'
        )
        with (d / f"agent{i}.log").open("wb") as log:
            started.append(
                procs.popen(
                    [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(conf)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    c = Cluster(d, str(d / "dcd.sock"), procs)
    deadline = time.monotonic() + 60
    while True:
        out = c.cli("dcctl", "nodes", "--json", check=False)
        if (
            out.returncode == 0
            and sum(n["state"] == "up" for n in json.loads(out.stdout)["nodes"]) == 2
        ):
            break
        if time.monotonic() > deadline:
            logs = "\n".join((d / f).read_text()[-2000:] for f in ("dcd.log", "agent1.log"))
            raise AssertionError(f"cluster did not come up:\n{logs}")
        time.sleep(0.3)
    yield c
    # Agents leave jobs running when they stop (to re-adopt them): cancel what is left first.
    # (tracked_processes kills whatever this leaves, also when it fails.)
    active = [j["id"] for j in json.loads(c.cli("dcctl", "queue", "--json").stdout)["jobs"]]
    if active:
        c.cli("dcctl", "cancel", *map(str, active), check=False)
        for job_id in active:
            c.wait(job_id, {"CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL"}, 60)
    for p in started:
        p.terminate()
    for p in started:
        p.wait(15)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [state, ppid, pgrp, ...]


def _job_tree(pids: set[int]) -> set[int]:
    """The runner above each reported torchrun pid and everything below it. torchrun puts
    each worker in a session of its own, so a process group would miss the workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    out, todo = set(), [int(_stat(p)[1]) for p in pids if _alive(p)]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return {p for p in out if _alive(p)}


def test_two_nodes_all_reduce_their_ranks(cluster: Cluster) -> None:
    out = cluster.dir / "sum.txt"
    job_id = cluster.submit(
        "allreduce",
        _job_toml(
            "allreduce", [str(ROOT / "examples" / "allreduce.py"), str(out)], nodes=2, gpus=2
        ),
    )
    follow = cluster.procs.popen(
        [
            sys.executable,
            "-m",
            "dcsched.cli.dcctl",
            "--socket",
            cluster.socket,
            "logs",
            "-f",
            str(job_id),
            "--node",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    job = cluster.wait(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    assert job["state"] == "COMPLETED", job
    assert job["exit_code"] == 0
    followed, _ = follow.communicate(timeout=30)  # -f ends by itself when the job has ended
    assert follow.returncode == 0
    assert followed.count("all_reduce sum = 6") == 2, followed  # node 1's two workers
    assert sorted(p["host"] for p in job["node_parts"]) == ["node1", "node2"]
    assert out.read_text().strip() == "6"
    # The log comes from the agents over the bus, not from a shared filesystem.
    logs = [cluster.cli("dcctl", "logs", str(job_id), "--node", str(n)).stdout for n in (0, 1)]
    assert all("all_reduce sum = 6" in text for text in logs), logs
    queue = cluster.cli("dcctl", "queue", "--all").stdout
    assert f"{job_id}" in queue and "COMPLETED" in queue


def test_a_failing_job_reports_its_exit_code(cluster: Cluster) -> None:
    job_id = cluster.submit("exit3", _job_toml("exit3", ["exit3.py"], nodes=1, gpus=1))
    job = cluster.wait(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    assert job["state"] == "FAILED", job
    assert job["exit_code"] == 3, job
    shown = cluster.cli("dcctl", "show", str(job_id)).stdout
    assert "State = FAILED" in shown and "ExitCode = 3:0" in shown, shown


def test_cancel_leaves_no_process_on_any_node(cluster: Cluster) -> None:
    job_id = cluster.submit("sleeper", _job_toml("sleeper", ["sleep.py", "300"], nodes=2, gpus=2))
    job = cluster.wait(job_id, {"RUNNING"}, timeout=60)
    pids = {p["pid"] for p in job["node_parts"]}
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    # Wait until torchrun has started its workers, so that there is a whole tree to stop.
    deadline = time.monotonic() + 60
    while len(_job_tree(pids)) < 6 and time.monotonic() < deadline:
        time.sleep(0.5)
    members = _job_tree(pids)
    assert len(members) >= 6, members  # runner, torchrun and two workers on each node
    cluster.cli("dcctl", "cancel", str(job_id))
    job = cluster.wait(job_id, {"CANCELLED", "FAILED", "COMPLETED"}, timeout=60)
    assert job["state"] == "CANCELLED", job
    assert not [p for p in members if _alive(p)], "processes of the job survived the cancel"


def test_a_job_over_its_time_limit_ends_as_timeout(cluster: Cluster) -> None:
    job_id = cluster.submit(
        "slow", _job_toml("slow", ["sleep.py", "300"], nodes=1, gpus=1, limit="8s")
    )
    job = cluster.wait(job_id, {"RUNNING"}, timeout=60)
    members = _job_tree({p["pid"] for p in job["node_parts"]})
    job = cluster.wait(job_id, {"TIMEOUT", "FAILED", "COMPLETED", "CANCELLED"}, timeout=90)
    assert job["state"] == "TIMEOUT", job
    # Its limit, not the 300 s it asked for, ended it (the wait above would have run out),
    # and not before the limit.
    assert job["end_ts"] - job["start_ts"] >= 8, job
    assert not [p for p in members if _alive(p)]


def test_a_malformed_job_file_is_refused_and_nothing_is_queued(cluster: Cluster) -> None:
    def job_ids() -> list[int]:
        out = cluster.cli("dcctl", "queue", "--all", "--json").stdout
        return sorted(j["id"] for j in json.loads(out)["jobs"])

    before = job_ids()
    bad = cluster.dir / "bad.toml"
    bad.write_text('name = "bad"\ncommand = ["x.py"]\n[resources]\nnodes = 1\ngpu_per_node = 2\n')
    out = cluster.cli("dcsub", str(bad), check=False)
    assert out.returncode == 1
    assert f"{bad}:5:" in out.stderr and "did you mean 'gpus_per_node'" in out.stderr
    assert job_ids() == before


def test_programs_run_through_no_python_and_every_end_has_its_reason(cluster: Cluster) -> None:
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}
    program = ["sh", "-c", "echo from-a-program; exit 4"]  # not a Python script
    job_id = cluster.submit("program", _job_toml("program", program, nodes=1, gpus=1))
    job = cluster.wait(job_id, ended)
    assert (job["state"], job["exit_code"]) == ("FAILED", 4), job
    log = cluster.cli("dcctl", "logs", str(job_id)).stdout
    assert "--no-python" in log and "from-a-program" in log, log
    assert log.rstrip().splitlines()[-1] == "[dcsched] ended: exit code 4", log
    shown = cluster.cli("dcctl", "show", str(job_id)).stdout
    assert "Reason = exit 4 (node 0 (" in shown, shown

    missing = cluster.submit("missing", _job_toml("missing", ["nope.py"], nodes=1, gpus=1))
    job = cluster.wait(missing, ended)
    assert job["state"] == "FAILED" and "script nope.py not found" in job["reason"], job
    queue = cluster.cli("dcctl", "queue", "--all", "--format", "%i|%R").stdout
    assert f"{missing}|no exit status (launch refused on " in queue, queue
    log = cluster.cli("dcctl", "logs", str(missing)).stdout  # no process: the reason
    assert log.splitlines()[-1].startswith("[dcsched] no process was started on "), log
    assert "launch refused: script nope.py not found" in log, log
