"""`dcd demo` as a user runs it: one command, a cluster up; Ctrl-C, a closed terminal or a
SIGKILL stops it, and nothing of it is left running.

Every wait polls for its condition with a generous deadline: these tests must pass on a
machine whose cores are all busy with something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiomqtt
import pytest

from dcsched.client import Client, ClientError
from dcsched.protocol.config import load_config
from tests.conftest import PROCESS_TIMEOUT, Procs

pytestmark = PROCESS_TIMEOUT
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90.0) -> T:
    """Polls `probe` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            if (value := probe()) is not None:
                return value
        except (OSError, ClientError) as exc:  # the daemon not answering yet
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last error: {last})")
        time.sleep(0.3)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """A zombie counts as gone: it has exited, and the container's init may never reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    dir: Path
    client: Client
    output: bytearray

    def read_rest(self, timeout: float = 30.0) -> str:
        """The output up to EOF (the demo has exited)."""
        _read(self.proc, self.output, lambda: False, timeout)
        return self.output.decode(errors="replace")

    def processes(self, procs: Procs) -> dict[str, list[int]]:
        """The demo's processes by kind, found by the test's tag (not by their parent)."""
        kinds: dict[str, list[int]] = {}
        for pid in procs.alive():
            cmd = cmdline(pid)
            kind = next((k for k, mark in _KINDS if mark in cmd), "other")
            kinds.setdefault(kind, []).append(pid)
        return kinds


_KINDS = [
    ("demo", "dcsched.daemon.main"),
    ("guard", "children.py guard"),
    ("broker", "mosquitto"),
    ("agent", "dcsched.agents.main"),
    ("runner", "runner.py"),
    ("worker", "sleep.py"),  # torchrun's worker; torchrun's own command line names it too
]


def _read(
    proc: subprocess.Popen[bytes], buf: bytearray, done: Callable[[], bool], timeout: float
) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the demo said no more in {timeout} s:\n{buf.decode()}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk


def start_demo(procs: Procs, d: Path, broker: str, gpus: int = 3) -> Demo:
    proc = procs.popen(
        [sys.executable, "-m", "dcsched.daemon.main", "--log-level", "warning", "demo",
         "--dir", str(d), "--agents", "2", "--gpus", str(gpus), "--broker", broker],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out = bytearray()
    marker = b"export DCSCHED_SOCKET="
    _read(proc, out, lambda: marker in out and b"\n" in out[out.index(marker) :], 90)
    if marker not in out:
        raise AssertionError(f"the demo did not come up:\n{out.decode()}")
    line = out[out.index(marker) :].split(b"\n", 1)[0]
    sock = line.split(b"=", 1)[1].strip().decode()
    demo = Demo(proc, d, Client(sock), out)

    # "up" alone is not enough: a node is up from its first status message, and its GPUs
    # have no readings until its first telemetry message, a moment later (longer on a busy
    # machine). Wait for both.
    def ready() -> list[dict[str, object]] | None:
        nodes = demo.client.nodes()
        if len(nodes) != 2 or any(n["state"] != "up" for n in nodes):
            return None
        gpu_list = demo.client.gpus()
        if len(gpu_list) == 2 * gpus and all(g["util"] is not None for g in gpu_list):
            return nodes
        return None

    nodes = wait_for("two nodes up with telemetry from every GPU", ready)
    assert all(n["simulated"] and n["gpus"] == gpus for n in nodes), nodes
    return demo


async def broker_refuses_strangers(d: Path) -> bool:
    """The demo's broker lets in only its own users, with their passwords."""
    port = int(load_config(str(d / "dcsched.toml")).broker.host_port()[1])
    password = (d / "broker" / "passwords" / "sim-1").read_text().strip()
    for user, pw in ((None, None), ("sim-1", "wrong"), ("ghost", password)):
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, username=user, password=pw):
                return False
    async with aiomqtt.Client("127.0.0.1", port, username="sim-1", password=password):
        return True


def run_sleeper(demo: Demo, procs: Procs) -> int:
    """Submits a job that sleeps and waits until its worker process runs."""
    job = demo.client.submit(
        {
            "name": "sleeper",
            "command": ["sleep.py", "600"],
            "workdir": str(EXAMPLES),
            "resources": {"gpus_per_node": 1},
        }
    )
    wait_for("the job to run", lambda: True if demo.client.job(job)["state"] == "RUNNING" else None)
    wait_for("the job's worker process", lambda: demo.processes(procs).get("worker"))
    return job


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_comes_up_and_stops_on_ctrl_c(procs: Procs, tmp_path: Path, broker: str) -> None:
    demo = start_demo(procs, tmp_path, broker)
    run_sleeper(demo, procs)
    assert asyncio.run(broker_refuses_strangers(tmp_path))
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(120) == 0
    assert "dcsched demo stopped" in demo.read_rest()
    # Nothing of the demo is left running: no broker, agent, runner, torchrun or worker.
    assert procs.wait_gone() == []
    # The job was cancelled and everything stopped in order: nothing was left for the guard.
    assert (tmp_path / "guard.log").read_text() == ""


def test_closing_the_terminal_stops_everything_in_order(procs: Procs, tmp_path: Path) -> None:
    demo = start_demo(procs, tmp_path, "mosquitto")
    run_sleeper(demo, procs)
    kinds = demo.processes(procs)
    assert {"demo", "broker", "agent", "runner", "worker"} <= kinds.keys(), kinds
    # The terminal's hang-up goes to its foreground process group.
    os.killpg(demo.proc.pid, signal.SIGHUP)
    assert demo.proc.wait(120) == 0
    assert "dcsched demo stopped" in demo.read_rest()
    left = procs.wait_gone()
    assert left == [], [cmdline(p) for p in left]
    assert (tmp_path / "guard.log").read_text() == "", "jobs were not cancelled in order"


def test_a_killed_demo_leaves_no_broker_agent_or_job_behind(procs: Procs, tmp_path: Path) -> None:
    demo = start_demo(procs, tmp_path, "mosquitto")
    run_sleeper(demo, procs)
    kinds = demo.processes(procs)
    assert {"broker", "agent", "runner", "worker"} <= kinds.keys(), kinds
    job_pids = kinds["runner"] + kinds["worker"]
    # A broker that switched to another user would have lost its parent-death signal.
    assert all(os.stat(f"/proc/{pid}").st_uid == os.getuid() for pid in kinds["broker"])
    demo.proc.kill()  # no handler runs: the kernel and the guard must do it all
    assert demo.proc.wait(30) == -signal.SIGKILL
    left = procs.wait_gone()
    assert left == [], [cmdline(p) for p in left]
    # The job's processes are no children of the agents: the guard found them by their tag.
    killed = (tmp_path / "guard.log").read_text()
    assert "killed" in killed and any(str(p) in killed for p in job_pids), killed


_TIED_CHILD = """
import subprocess, sys, time
from dcsched.daemon.children import die_with_parent
child = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_tied_child_dies_with_its_killed_parent(procs: Procs) -> None:
    parent = procs.popen([sys.executable, "-c", _TIED_CHILD], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait(30)
    wait_for("the child to die with its parent", lambda: True if not alive(child) else None)


_PARENT_GONE_BEFORE_PRCTL = """
import os, subprocess
from dcsched.daemon.children import die_with_parent
tie = die_with_parent()  # tied to this process...
if os.fork() == 0:  # ...but run in a grandchild, as if this process had died before prctl
    print(subprocess.Popen(["sleep", "600"], preexec_fn=tie).wait(), flush=True)
    os._exit(0)
os.wait()
"""


def test_a_child_whose_parent_died_before_prctl_kills_itself(procs: Procs) -> None:
    proc = procs.popen(
        [sys.executable, "-c", _PARENT_GONE_BEFORE_PRCTL], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == str(-signal.SIGKILL)
