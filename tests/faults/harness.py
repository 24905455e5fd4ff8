"""A small cluster of real processes for fault tests: a Mosquitto of its own (so that a test
may kill it), a real `dcd`, and real `dc-agent` processes (sim GPUs) that run real torchrun
jobs. Every process is started through `Procs`, so none outlives the test (tests/conftest.py).

Jobs are a script written into the test's folder: it waits until a marker file exists and
then exits with the code it was given, so a test decides when each job ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dcsched.client import Client, UnixConnection
from tests.conftest import Procs, free_port, wait_port
from tests.e2e.cli import run_cli

T = TypeVar("T")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}

JOB_SCRIPT = '''\
"""Waits until argv[1] exists, then exits with argv[2]."""
import os
import signal
import sys
import time

marker, code = sys.argv[1], int(sys.argv[2])
here = os.path.dirname(os.path.abspath(marker))
tag = os.path.basename(marker)


def on_term(signum, frame):
    with open(os.path.join(here, tag + ".terminated"), "w") as f:
        f.write(str(signum))
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)
with open(os.path.join(here, tag + ".started"), "w") as f:
    f.write(str(os.getpid()))
print(f"rank {os.environ.get('RANK')} waits for {marker}", flush=True)
while not os.path.exists(marker):
    time.sleep(0.1)
print(f"marker found: exiting with {code}", flush=True)
sys.exit(code)
'''


def until(pred: Callable[[], T], timeout: float, what: str, every: float = 0.3) -> T:
    """Polls `pred` until it returns something true; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = pred()
        except AssertionError:
            raise
        except Exception as exc:  # a daemon restarting, a file not there yet: poll on
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")
        time.sleep(every)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Rig:
    dir: Path
    procs: Procs
    prefix: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:8]}")
    broker_port: int = field(default_factory=free_port)
    broker: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = self.dir / "cluster.key"
        self.key.write_text(uuid.uuid4().hex * 2)
        self.jobs_dir = self.dir / "jobs"
        self.jobs_dir.mkdir()
        self.script = self.jobs_dir / "wait_marker.py"
        self.script.write_text(JOB_SCRIPT)
        self.socket = str(self.dir / "dcd.sock")
        self.client = Client(self.socket, timeout=20.0)

    # --- processes -----------------------------------------------------------------------------

    def _common(self) -> str:
        return (
            f'[broker]\nurl = "mqtt://127.0.0.1:{self.broker_port}"\n'
            f'topic_prefix = "{self.prefix}"\n[cluster]\nkey_file = "{self.key}"\n'
        )

    def start_broker(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nmax_queued_messages 100000\n"
        )
        with (self.dir / "mosquitto.log").open("ab") as log:
            self.broker = self.procs.popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_port("127.0.0.1", self.broker_port, 20.0)

    def kill_broker(self) -> None:
        assert self.broker is not None
        _kill(self.broker, signal.SIGKILL)

    def start_daemon(self, state_dir: Path | None = None, scheduler: str = "", **opts: Any) -> None:
        """`scheduler`: raw TOML for the [scheduler] table (QOS levels, preempt_grace)."""
        settings = {
            "metrics_listen": "",
            "cancel_grace_s": 3.0,
            "command_retry_s": 1.0,
            "pass_interval_s": 1.0,
            "telemetry_flush_s": 2.0,
            "node_timeout_s": 20.0,
            **opts,
        }
        if "port_range" not in settings:
            port = free_port()
            lo = min(max(port - 50, 20000), 60000)
            settings["port_range"] = f"{lo}-{lo + 99}"
        body = "".join(
            f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v!r}\n"
            for k, v in settings.items()
        )
        conf = self.dir / "dcd.toml"
        conf.write_text(
            self._common()
            + f'[daemon]\nstate_dir = "{state_dir or self.dir / "dcd"}"\n'
            + f'socket = "{self.socket}"\n{body}'
            + (f"[scheduler]\n{scheduler}\n" if scheduler else "")
        )
        with (self.dir / "dcd.log").open("ab") as log:
            self.daemon = self.procs.popen(
                [sys.executable, "-m", "dcsched.daemon.main", "run", "--config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        until(lambda: self.health_status()[0] == 200, 60, "the daemon to be up and connected")

    def agent_config(self, host: str, exit_resend_s: float) -> Path:
        conf = self.dir / f"{host}.toml"
        if not conf.exists():
            torchrun = Path(sys.executable).with_name("torchrun")
            conf.write_text(
                self._common() + f'[agent]\nhost = "{host}"\nbackend = "sim"\nsim_gpus = 2\n'
                f'advertise_addr = "127.0.0.1"\nstate_dir = "{self.dir / host}"\n'
                f'torchrun = "{torchrun}"\ninterval_s = 1.0\nexit_resend_s = {exit_resend_s}\n'
            )
        return conf

    def start_agent(self, host: str = "node1", exit_resend_s: float = 1.0) -> None:
        conf = self.agent_config(host, exit_resend_s)
        with (self.dir / f"{host}.log").open("ab") as log:
            self.agents[host] = self.procs.popen(
                [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop_agent(self, host: str, sig: int) -> None:
        """Signals the agent process alone (its jobs run in sessions of their own) and waits
        for it to be gone."""
        proc = self.agents[host]
        proc.send_signal(sig)
        proc.wait(30)

    def wait_nodes_up(self, *hosts: str, timeout: float = 60.0) -> None:
        def up() -> bool:
            states = {n["host"]: n["state"] for n in self.client.nodes()}
            return all(states.get(h) == "up" for h in hosts)

        until(up, timeout, f"nodes {hosts} up")

    @classmethod
    def up(cls, d: Path, procs: Procs, hosts: tuple[str, ...] = ("node1",), **daemon: Any) -> Rig:
        rig = cls(d, procs)
        rig.start_broker()
        rig.start_daemon(**daemon)
        for h in hosts:
            rig.start_agent(h)
        rig.wait_nodes_up(*hosts)
        return rig

    # --- API -------------------------------------------------------------------------------------

    def raw(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one request, whatever the status."""
        conn = UnixConnection(self.socket, 20.0)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {})
        finally:
            conn.close()

    def health_status(self) -> tuple[int, dict[str, Any]]:
        return self.raw("GET", "/v1/health")

    def spec(self, name: str, marker: Path | str, code: int = 0, **over: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": name,
            "command": [str(self.script), str(marker), str(code)],
            "workdir": str(self.jobs_dir),
            "resources": {"nodes": 1, "gpus_per_node": 1, "time_limit": "10m"},
            "env": {"OMP_NUM_THREADS": "1"},
        }
        spec.update(over)
        return spec

    def marker(self, name: str) -> Path:
        return self.jobs_dir / f"{name}.go"

    def submit(self, spec: dict[str, Any]) -> int:
        return self.client.submit(spec)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.client.job(job_id)

    def wait(self, job_id: int, states: set[str], timeout: float = 120.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            if job["state"] in ENDED:
                raise AssertionError(f"job {job_id} ended {job['state']}, not {states}: {job}")
            return None

        return until(reached, timeout, f"job {job_id} to be {states}", every=0.25)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.socket, *args, check=check)

    def logs(self) -> str:
        """The tails of every log, for an assertion's message."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                text = (self.dir / name).read_text(errors="replace")
                out.append(f"--- {name} ---\n{text[-4000:]}")
        return "\n".join(out)


def _kill(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(30)


# --- server-sent events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sse:
    id: str
    event: str
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.id.rpartition("-")[2])


class EventStream:
    """`GET /v1/events` over the Unix socket, read by a thread into a queue."""

    def __init__(self, socket_path: str, query: str = "") -> None:
        self.conn = UnixConnection(socket_path, 60.0)
        self.conn.request("GET", "/v1/events" + (f"?{query}" if query else ""))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("Content-Type", "").startswith("text/event-stream")
        self.events: queue.Queue[Sse | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                text = line.decode().rstrip("\r\n")
                if not text:
                    if "event" in fields:
                        self.events.put(
                            Sse(fields.get("id", ""), fields["event"], json.loads(fields["data"]))
                        )
                    fields = {}
                elif text.startswith(":"):
                    continue
                else:
                    k, _, v = text.partition(":")
                    fields[k] = v[1:] if v.startswith(" ") else v
        except Exception:  # closed under us by close(), or the daemon went away
            pass
        finally:
            self.events.put(None)

    def next(self, timeout: float) -> Sse:
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event in {timeout:.0f} s") from None
        if ev is None:
            raise AssertionError("the event stream ended")
        return ev

    def collect(self, stop: Callable[[Sse], bool], timeout: float) -> list[Sse]:
        """Events up to and including the first for which `stop` is true."""
        deadline = time.monotonic() + timeout
        out: list[Sse] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events so far: {out}")
            ev = self.next(left)
            out.append(ev)
            if stop(ev):
                return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.conn.sock is not None:
                self.conn.sock.shutdown(2)
        self.conn.close()
        self._thread.join(10)
