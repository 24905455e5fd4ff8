"""End to end on one GPU host: Mosquitto, `dcd run`, one `dc-agent run` with the real `nvml`
backend, and torchrun jobs submitted with dcsub that use the GPU.

    python bench/gpu_cluster.py --workdir /tmp/gpucluster [--mosquitto PATH] [--backend nvml]

Jobs, one after the other (every one asks for 1 node x 1 GPU):
- `allreduce`: examples/allreduce.py as it is (NCCL, one rank), which must write 0;
- `nccl`: bench/gpu_job.py on NCCL, one rank, bf16 products for --busy-seconds;
- `gloo2`: bench/gpu_job.py on gloo with CUDA tensors, two ranks on the one GPU.
While `nccl` and `gloo2` run it waits for `dcctl gpus` to show the job on the GPU with its
workers' pids and their utilisation, and keeps what dcctl printed then (show, gpus, nodes);
at the end `dcctl eff` of each. Prints one JSON summary; every command's output and the
daemon's, agent's and broker's logs stay in --workdir. Not a test: it needs a GPU (with
`--backend sim` it runs on a CPU host, where the GPU jobs fail, to check the plumbing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from daemon_scale import free_port, wait_port  # the same helpers as the scale bench

ROOT = Path(__file__).resolve().parents[1]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


class Rig:
    def __init__(self, d: Path, log: Path) -> None:
        self.d = d
        self.socket = str(d / "dcd.sock")
        self.log = log.open("a")
        self.procs: list[subprocess.Popen[bytes]] = []

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with (self.d / f"{name}.log").open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                    start_new_session=True,
                )
            )

    def cli(self, *args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        prog = {"dcsub": "dcsched.cli.dcsub", "dcctl": "dcsched.cli.dcctl"}[args[0]]
        out = subprocess.run(
            [sys.executable, "-m", prog, "--socket", self.socket, *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if not quiet:
            self.note(f"$ {' '.join(args)}  (rc {out.returncode})\n{out.stdout}{out.stderr}")
        return out

    def json(self, *args: str) -> Any:
        out = self.cli(*args, "--json", quiet=True)
        if out.returncode != 0:
            raise RuntimeError(f"{args}: rc {out.returncode}: {out.stderr}")
        return json.loads(out.stdout)

    def stop(self) -> None:
        """The agent, then the daemon, then the broker, each gone before the next stops."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def job_toml(name: str, command: list[str], workdir: Path, nproc: int) -> str:
    return (
        f'name = "{name}"\ncommand = {json.dumps(command)}\nworkdir = "{workdir}"\n'
        '[resources]\nnodes = 1\ngpus_per_node = 1\ntime_limit = "5m"\n'
        f'[torchrun]\nnproc_per_node = {nproc}\npython = "{sys.executable}"\n'
        '[env]\nOMP_NUM_THREADS = "1"\n'
    )


def submit(rig: Rig, name: str, command: list[str], workdir: Path, nproc: int) -> int:
    f = rig.d / f"{name}.toml"
    f.write_text(job_toml(name, command, workdir, nproc))
    rig.note(f"--- {f}\n{f.read_text()}")
    out = rig.cli("dcsub", str(f), "--json")
    return int(json.loads(out.stdout)["job_id"])


def wait_state(rig: Rig, job_id: int, states: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = rig.json("dcctl", "show", str(job_id))
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def job_infos(rig: Rig, job_id: int) -> list[dict[str, Any]]:
    """The `job-info` lines the job's ranks printed (bench/gpu_job.py)."""
    out = rig.cli("dcctl", "logs", str(job_id), quiet=True).stdout
    return [
        json.loads(line.split("job-info", 1)[1])
        for line in out.splitlines()
        if "job-info {" in line
    ]


def watch_gpu_job(rig: Rig, job_id: int, ranks: int, timeout: float) -> dict[str, Any]:
    """Waits until every rank has printed its job-info and the GPU shows the job, its
    ranks' pids and utilisation; then keeps what dcctl says."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {"job_id": job_id, "gpus_rows": []}
    infos: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        job = rig.json("dcctl", "show", str(job_id))
        if job["state"] in ENDED:
            seen["ended_early"] = job["state"]
            break
        if len(infos) < ranks:
            infos = job_infos(rig, job_id)
        gpus = rig.json("dcctl", "gpus")["gpus"]
        mine = [g for g in gpus if g["job_id"] == job_id]
        seen["gpus_rows"].append(mine)
        pids = {i["pid"] for i in infos}
        if (
            len(infos) >= ranks
            and mine
            and pids <= set(mine[0]["pids"])
            and (mine[0]["util"] or 0) >= 50
        ):
            seen["ok"] = True
            break
        time.sleep(1.0)
    seen["gpus_rows"] = seen["gpus_rows"][-3:]
    seen["job_info"] = infos
    last: dict[str, Any] = next(
        (rows[0] for rows in reversed(seen["gpus_rows"]) if rows), {"pids": []}
    )
    seen["ranks_pids_in_gpu_pids"] = bool(infos) and all(i["pid"] in last["pids"] for i in infos)
    rig.cli("dcctl", "show", str(job_id))
    rig.cli("dcctl", "gpus")
    rig.cli("dcctl", "nodes")
    seen["show"] = rig.json("dcctl", "show", str(job_id))
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--backend", choices=("nvml", "sim"), default="nvml")
    ap.add_argument("--busy-seconds", type=float, default=20.0)
    ap.add_argument("--cgroups", default="auto")
    a = ap.parse_args()
    d: Path = a.workdir.resolve()
    d.mkdir(parents=True, exist_ok=True)
    rig = Rig(d, d / "dcctl.txt")
    summary: dict[str, Any] = {"backend": a.backend}
    try:
        summary.update(run(rig, a))
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        rig.note(f"ERROR {summary['error']}")
    finally:
        rig.stop()
    print(json.dumps(summary, indent=1, default=str))
    return 1 if "error" in summary else 0


def run(rig: Rig, a: argparse.Namespace) -> dict[str, Any]:
    d = rig.d
    port = free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    rig.start("mosquitto", [a.mosquitto, "-c", str(d / "mosquitto.conf")])
    wait_port(port)
    key = d / "cluster.key"
    key.write_text(uuid.uuid4().hex * 2)
    key.chmod(0o600)
    common = (
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "gpucheck"\n'
        f'[cluster]\nkey_file = "{key}"\n'
    )
    (d / "dcd.toml").write_text(
        common + f'[daemon]\nstate_dir = "{d / "dcd"}"\nsocket = "{rig.socket}"\n'
        'metrics_listen = ""\ncancel_grace_s = 3.0\nnode_timeout_s = 15.0\n'
        'port_range = "29500-29599"\n'
    )
    (d / "agent.toml").write_text(
        common + f'[agent]\nhost = "gpu0"\nbackend = "{a.backend}"\nsim_gpus = 1\n'
        f'advertise_addr = "127.0.0.1"\nstate_dir = "{d / "agent"}"\n'
        f'torchrun = "{Path(sys.executable).with_name("torchrun")}"\ncgroups = "{a.cgroups}"\n'
    )
    rig.start("dcd", [sys.executable, "-m", "dcsched.daemon.main", "run", "--config",
                      str(d / "dcd.toml")])  # fmt: skip
    rig.start("agent", [sys.executable, "-m", "dcsched.agents.main", "run", "--config",
                        str(d / "agent.toml")])  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        out = rig.cli("dcctl", "nodes", "--json", quiet=True)
        if out.returncode == 0 and any(
            n["state"] in ("up", "idle") for n in json.loads(out.stdout)["nodes"]
        ):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node did not come up: {out.stdout} {out.stderr}")
        time.sleep(0.3)
    up_s = round(60 - (deadline - time.monotonic()), 1)
    rig.cli("dcctl", "nodes")
    time.sleep(2.0)  # a telemetry message or two
    rig.cli("dcctl", "gpus")
    res: dict[str, Any] = {"node_up_s": up_s, "gpus_idle": rig.json("dcctl", "gpus")["gpus"]}

    out_file = d / "allreduce.out"
    ar = submit(rig, "allreduce", [str(ROOT / "examples" / "allreduce.py"), str(out_file)],
                d, 1)  # fmt: skip
    job = wait_state(rig, ar, ENDED, 120)
    rig.cli("dcctl", "show", str(ar))
    rig.cli("dcctl", "logs", str(ar))
    res["allreduce"] = {
        "job_id": ar,
        "state": job["state"],
        "exit": job.get("exit_code"),
        "sum": out_file.read_text().strip() if out_file.exists() else None,
    }
    job_py = str(ROOT / "bench" / "gpu_job.py")
    for name, backend, nproc in (("nccl", "nccl", 1), ("gloo2", "gloo", 2)):
        t0 = time.monotonic()
        jid = submit(rig, name, [job_py, backend, str(a.busy_seconds)], d, nproc)
        seen = watch_gpu_job(rig, jid, nproc, timeout=a.busy_seconds + 60)
        seen["seen_after_s"] = round(time.monotonic() - t0, 1)
        job = wait_state(rig, jid, ENDED, a.busy_seconds + 120)
        seen["final_state"] = job["state"]
        seen["final_exit"] = job.get("exit_code")
        seen["submit_to_end_s"] = round(time.monotonic() - t0, 1)
        rig.cli("dcctl", "logs", str(jid))
        time.sleep(1.5)  # the last telemetry before eff
        rig.cli("dcctl", "eff", str(jid))
        eff = rig.cli("dcctl", "eff", str(jid), "--json", quiet=True)
        seen["eff"] = json.loads(eff.stdout) if eff.returncode == 0 else eff.stderr
        res[name] = seen
    rig.cli("dcctl", "acct")
    rig.cli("dcctl", "node-events", "gpu0")
    res["agent_cpu"] = proc_cpu(rig.procs[2].pid)  # mosquitto, dcd, then the agent
    return res


def proc_cpu(pid: int) -> dict[str, float]:
    """A live process's CPU seconds (user + system) and its age, from /proc (its children,
    the jobs' runners, not counted)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    cpu = (int(fields[11]) + int(fields[12])) / tick
    age = uptime - int(fields[19]) / tick
    return {"cpu_s": round(cpu, 2), "age_s": round(age, 1), "pct": round(100 * cpu / age, 2)}


if __name__ == "__main__":
    sys.exit(main())
