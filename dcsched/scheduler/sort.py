"""Sort step: multifactor priority, as in Slurm's priority/multifactor.

priority = sum(weight_i * factor_i), every factor in [0, 1]:
  age        waiting time / max_age, capped at 1: nothing waits forever behind newer work
  fairshare  2 ** (-effective usage / shares) of the job's (account, user)
  job_size   1 - log(1 + GPU-hours asked) / log(1 + size_ref): favours small, short asks,
             from the time limit (the scheduler never knows true durations)
  qos        QOS priority / the highest QOS priority configured
  nice       0.5 - nice / 20000 (nice in [-10000, 10000]; positive nice lowers priority)
Ties go to the earlier submit, then keep the order of `Snapshot.pending`.
Starvation guard: jobs pending longer than `starvation_s` go first, oldest first, whatever
their priority; with the reservation the top job gets, that bounds every job's wait.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dcsched.scheduler import fairshare
from dcsched.scheduler.config import SchedulerConfig
from dcsched.scheduler.model import JobRequest, Snapshot

NICE_MAX = 10000


@dataclass(frozen=True, slots=True)
class Factor:
    name: str
    value: float  # in [0, 1]
    weight: float
    contribution: float  # value * weight

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_factor(job: JobRequest, config: SchedulerConfig) -> float:
    asked = job.gpus * job.time_limit_s / 3600.0
    ref = config.size_ref_gpu_s / 3600.0
    return max(0.0, 1.0 - math.log1p(asked) / math.log1p(ref))


def nice_factor(nice: int) -> float:
    return 0.5 - max(-NICE_MAX, min(NICE_MAX, nice)) / (2.0 * NICE_MAX)


def _qos_factors(config: SchedulerConfig) -> dict[str, float]:
    top = max((q.priority for q in config.qos.values()), default=0)
    return {name: (q.priority / top if top > 0 else 0.0) for name, q in config.qos.items()}


def _fs_factors(snapshot: Snapshot, now: float) -> dict[tuple[str, str], float]:
    keys = {(j.account, j.user) for j in snapshot.pending}
    keys.update((j.account, j.user) for j in snapshot.running)
    # in billed GPUs, as the usage is: a cluster billed at 0.5 would otherwise need twice
    # the use before its fair-share counts
    bill = snapshot.config.bill
    gpus = sum(len(n.gpus) * bill(n.gpu_type) for n in snapshot.nodes)
    return fairshare.factors(snapshot.config, snapshot.usage, now, keys, gpus)


def factors(snapshot: Snapshot, now: float, job: JobRequest) -> tuple[Factor, ...]:
    """Every factor of one job's priority, with its weight (for explain)."""
    config, w = snapshot.config, snapshot.config.weights
    values = (
        ("age", min(1.0, max(0.0, now - job.submit_ts) / config.max_age_s), w.age),
        ("fairshare", _fs_factors(snapshot, now).get((job.account, job.user), 1.0), w.fairshare),
        ("job_size", size_factor(job, config), w.job_size),
        ("qos", _qos_factors(config).get(job.qos, 0.0), w.qos),
        ("nice", nice_factor(job.nice), w.nice),
    )
    return tuple(Factor(n, v, wt, v * wt) for n, v, wt in values)


def priority_function(snapshot: Snapshot, now: float) -> Callable[[JobRequest], float]:
    """One job's priority; per-pass tables are computed once so a job costs O(1)."""
    config, w = snapshot.config, snapshot.config.weights
    if config.policy in ("fifo", "greedy"):
        return lambda job: 0.0
    fs = _fs_factors(snapshot, now)
    qos = _qos_factors(config)
    age_rate = w.age / config.max_age_s
    size_scale = w.job_size / math.log1p(config.size_ref_gpu_s / 3600.0)
    log1p = math.log1p
    # queues repeat a few shapes and owners: memoise the parts that do not depend on age
    sizes: dict[tuple[int, float], float] = {}
    rest: dict[tuple[str, str, str, int], float] = {}

    def priority(job: JobRequest) -> float:
        age = (now - job.submit_ts) * age_rate
        shape = (job.nodes * job.gpus_per_node, job.time_limit_s)
        size = sizes.get(shape)
        if size is None:
            size = w.job_size - log1p(shape[0] * shape[1] / 3600.0) * size_scale
            size = sizes[shape] = size if size > 0 else 0.0
        owner = (job.account, job.user, job.qos, job.nice)
        other = rest.get(owner)
        if other is None:
            other = rest[owner] = (
                w.fairshare * fs.get((job.account, job.user), 1.0)
                + w.qos * qos.get(job.qos, 0.0)
                + w.nice * nice_factor(job.nice)
            )
        return (w.age if age > w.age else age if age > 0 else 0.0) + size + other

    return priority


def sort_jobs(snapshot: Snapshot, now: float) -> list[tuple[float, JobRequest]]:
    """(priority, job), highest first; fifo and greedy use submit order."""
    prio = priority_function(snapshot, now)
    jobs: Sequence[JobRequest] = snapshot.pending
    if snapshot.config.policy in ("fifo", "greedy"):
        return [(0.0, j) for j in sorted(jobs, key=lambda j: j.submit_ts)]
    scored = [(prio(j), j) for j in jobs]
    scored.sort(key=lambda pj: (-pj[0], pj[1].submit_ts))
    starve = snapshot.config.starvation()
    if starve > 0:
        cutoff = now - starve
        starving = [pj for pj in scored if pj[1].submit_ts <= cutoff]
        if starving:
            starving.sort(key=lambda pj: pj[1].submit_ts)
            scored = starving + [pj for pj in scored if pj[1].submit_ts > cutoff]
    return scored
