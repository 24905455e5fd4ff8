"""Job accounting (what Slurm's sacct and seff show): each running job's GPU use, accumulated
in memory from the telemetry of its GPUs, and one row per finished job, journaled in the
same store transaction as the job's final state.

Energy is the sum of the GPUs' energy-counter deltas while the job ran there (NVML's total
energy counter; the sim backend integrates its power the same way). A counter that goes
back (driver reload) starts a new baseline. The accumulation lives in memory and is saved
with each telemetry flush and at stop (`dump`/`load`), so a daemon restart loses at most one
flush interval of it; energy across the restart is still counted, from the counter's delta.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from dcsched.daemon.lifecycle import Job
from dcsched.daemon.model import Model
from dcsched.daemon.states import TERMINAL, JobState
from dcsched.protocol.messages import GpuSample, Telemetry


@dataclass(slots=True)
class GpuUse:
    util_sum: float = 0.0
    util_n: int = 0
    mem_sum: float = 0.0
    mem_n: int = 0
    mem_max: int = 0
    energy_j: float = 0.0
    last_energy: float | None = None

    def add(self, s: GpuSample) -> None:
        if s.util is not None:
            self.util_sum += s.util
            self.util_n += 1
        if s.mem_used is not None:
            self.mem_sum += s.mem_used
            self.mem_n += 1
            self.mem_max = max(self.mem_max, s.mem_used)
        if s.energy_j is not None:
            last, self.last_energy = self.last_energy, s.energy_j
            if last is not None and s.energy_j >= last:
                self.energy_j += s.energy_j - last

    def view(self, host: str, gpu: int) -> dict[str, Any]:
        return {
            "host": host,
            "gpu": gpu,
            "mean_util": round(self.util_sum / self.util_n, 3) if self.util_n else None,
            "mean_mem_bytes": self.mem_sum / self.mem_n if self.mem_n else None,
            "max_mem_bytes": self.mem_max if self.mem_n else None,
            "energy_j": self.energy_j,
            "samples": max(self.util_n, self.mem_n),
        }


@dataclass(slots=True)
class JobUse:
    gpus: dict[tuple[str, int], GpuUse] = field(default_factory=dict)
    # allocated GPU-seconds of earlier runs (a requeued job's); the current run's is
    # (now - start_ts) x GPUs
    past_gpu_s: float = 0.0
    # idle detection, this run (daemon clock): first telemetry seen running, and the last
    # in which one of its GPUs was at or over the idle threshold
    first_seen: float | None = None
    last_busy: float | None = None


def run_gpu_seconds(old: Job, new: Job, now: float) -> float:
    """The GPU-seconds of a run that this transition ends (0 when none ends)."""
    if old.start_ts is None or not (new.start_ts is None or new.state in TERMINAL):
        return 0.0
    if old.state in TERMINAL:
        return 0.0
    gpus = sum(len(p.gpus) for p in old.parts) or old.nodes * old.gpus_per_node
    return max(0.0, (new.end_ts or now) - old.start_ts) * gpus


class Accounting:
    def __init__(self, model: Model, idle_util_pct: float = 5.0) -> None:
        self.model = model
        self.idle_util_pct = idle_util_pct
        self.jobs: dict[int, JobUse] = {}

    def idle_for(self, job_id: int, now: float) -> float | None:
        """How long every GPU of the running job has been under the idle threshold (seconds,
        daemon clock), or None when nothing is known yet."""
        use = self.jobs.get(job_id)
        if use is None or use.first_seen is None:
            return None
        return now - (use.last_busy if use.last_busy is not None else use.first_seen)

    def on_telemetry(self, msg: Telemetry) -> None:
        """A host's telemetry (accepted by ingest): added to each job running there."""
        ids = self.model.on_host.get(msg.host)
        if not ids:
            return
        now = time.time()
        by_index: dict[int, GpuSample] | None = None
        for job_id in ids:
            job = self.model.jobs.get(job_id)
            if job is None or job.state != JobState.RUNNING:
                continue
            for part in job.parts:
                if part.host != msg.host or part.state != "running":
                    continue
                if by_index is None:
                    by_index = {s.index: s for s in msg.gpus}
                use = self.jobs.get(job_id)
                if use is None:
                    use = self.jobs[job_id] = JobUse()
                if use.first_seen is None:
                    use.first_seen = now
                for g in part.gpus:
                    sample = by_index.get(g)
                    if sample is not None:
                        key = (msg.host, g)
                        gu = use.gpus.get(key)
                        if gu is None:
                            gu = use.gpus[key] = GpuUse()
                        gu.add(sample)
                        if sample.util is not None and sample.util >= self.idle_util_pct:
                            use.last_busy = now

    def row(self, job: Job, ended_run_gpu_s: float, now: float) -> dict[str, Any]:
        """The accounting row of a job that has just taken its final state."""
        use = self.jobs.get(job.id) or JobUse()
        return summary(job, use, use.past_gpu_s + ended_run_gpu_s, now)

    def live(self, job: Job, now: float) -> dict[str, Any]:
        """The same figures for a job not finished yet (so far)."""
        use = self.jobs.get(job.id) or JobUse()
        current = 0.0
        if job.start_ts is not None:
            current = (now - job.start_ts) * sum(len(p.gpus) for p in job.parts)
        return summary(job, use, use.past_gpu_s + current, now)

    def committed(self, old: Job, new: Job, ended_run_gpu_s: float) -> None:
        """After the store has the transition: a finished job is forgotten, an ended run
        (requeue) is kept for the job's total."""
        if new.state in TERMINAL:
            self.jobs.pop(new.id, None)
        elif ended_run_gpu_s:
            use = self.jobs.setdefault(new.id, JobUse())
            use.past_gpu_s += ended_run_gpu_s
            use.first_seen = use.last_busy = None  # the next run is judged on its own


_GPU_FIELDS = ("util_sum", "util_n", "mem_sum", "mem_n", "mem_max", "energy_j", "last_energy")


def dump(acct: Accounting) -> str:
    """The running jobs' accumulation as JSON (kept in the store's key/value table)."""
    return json.dumps(
        {
            str(job_id): {
                "past_gpu_s": use.past_gpu_s,
                "gpus": [
                    [host, gpu, *(getattr(gu, f) for f in _GPU_FIELDS)]
                    for (host, gpu), gu in use.gpus.items()
                ],
            }
            for job_id, use in acct.jobs.items()
        }
    )


def load(acct: Accounting, raw: str, live: set[int]) -> None:
    """Back from `dump`, for the jobs that are still live (the idle clock starts afresh)."""
    for key, v in json.loads(raw).items():
        if int(key) not in live:
            continue
        use = JobUse(past_gpu_s=float(v["past_gpu_s"]))
        for host, gpu, *values in v["gpus"]:
            use.gpus[(str(host), int(gpu))] = GpuUse(**dict(zip(_GPU_FIELDS, values, strict=True)))
        acct.jobs[int(key)] = use


def summary(job: Job, use: JobUse, gpu_s: float, now: float) -> dict[str, Any]:
    per_gpu = [gu.view(h, g) for (h, g), gu in sorted(use.gpus.items())]
    utils = [(gu.util_sum, gu.util_n) for gu in use.gpus.values() if gu.util_n]
    mems = [(gu.mem_sum, gu.mem_n) for gu in use.gpus.values() if gu.mem_n]
    # The mean over GPUs of each GPU's mean: every GPU counts the same.
    # to a thousandth of a percent: sums of floats would print as 80.00000000000001
    mean_util = round(sum(s / n for s, n in utils) / len(utils), 3) if utils else None
    hosts = [p.host for p in job.parts]
    return {
        "job_id": job.id,
        "name": job.name,
        "user": job.user,
        "account": job.account,
        "qos": job.qos,
        "state": job.state,
        "nodes": job.nodes,
        "gpus": job.nodes * job.gpus_per_node,
        "hosts": hosts,
        "alloc": {p.host: list(p.gpus) for p in job.parts},
        "submit_ts": job.submit_ts,
        "start_ts": job.start_ts,
        "end_ts": job.end_ts if job.state in TERMINAL else None,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "gpu_hours": gpu_s / 3600,
        "energy_kwh": sum(gu.energy_j for gu in use.gpus.values()) / 3.6e6,
        "mean_util": mean_util,
        "mean_mem_bytes": sum(s / n for s, n in mems) / len(mems) if mems else None,
        "max_mem_bytes": max((gu.mem_max for gu in use.gpus.values() if gu.mem_n), default=None),
        "per_gpu": per_gpu,
        "samples": sum(v["samples"] for v in per_gpu),
    }
