"""Preemption: which opted-in running jobs must stop for a job.

Victims are chosen per node, youngest first (least work lost), only from jobs that set
`preemptible` and either run under a QOS the pending job's QOS lists in `preempt`, or,
under the `las` policy, are worth preempting (`worth_it`). GPUs of jobs that are already
terminating count as coming free, so a pass never preempts twice for one job.

`las` (least attained service, duration-blind): a job that has had less GPU service may
take the GPUs of one that has had more, as in Tiresias, but only when it pays:
- the victim has run `min_run` in this run (a quantum: no thrashing) and has been
  preempted fewer than `max_preemptions` times;
- the pending job's time limit ends before the victim's (the victim cannot be the
  shorter one, whatever they really take);
- the wait it saves, its GPUs x the victim's expected remaining run, exceeds what the
  preemption costs, the victim's GPUs x (`preempt_cost` + `preempt_grace`). Without
  durations, the expected remaining run is what the victim has run so far (long-running
  jobs tend to run long: the heavy tail LAS relies on), capped by its time limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dcsched.scheduler.config import SchedulerConfig
from dcsched.scheduler.model import JobRequest, RunningJob
from dcsched.scheduler.score import Cluster


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: tuple[int, ...]
    victims: tuple[str, ...]


def worth_it(job: JobRequest, victim: RunningJob, now: float, config: SchedulerConfig) -> bool:
    """The `las` rule (see the module's docstring)."""
    ran = now - victim.start_ts
    if ran < config.min_run_s or victim.restarts >= config.max_preemptions:
        return False
    served = victim.attained_s + ran
    if job.gpus * job.attained_s >= victim.gpus * served:
        return False
    left_limit = victim.time_limit_s - ran
    if job.time_limit_s >= left_limit:
        return False
    expected_left = min(left_limit, served)
    cost = victim.gpus * (config.preempt_cost_s + config.preempt_grace_s)
    return job.gpus * expected_left > cost


def plan(
    job: JobRequest,
    cluster: Cluster,
    running: Iterable[RunningJob],
    config: SchedulerConfig,
    taken: set[str],
    now: float = 0.0,
) -> Plan | None:
    level = config.qos_level(job.qos)
    allowed = set(level.preempt) if level is not None else set()
    las = config.policy == "las"
    if not allowed and not las:
        return None
    coming: dict[int, int] = {}  # node -> GPUs of terminating jobs
    victims: dict[int, list[tuple[float, str, int]]] = {}  # node -> (-start, id, GPUs)
    spans: dict[str, list[tuple[int, int]]] = {}
    for r in running:
        usable = [
            (cluster.rank[name], len(gpus))
            for name, gpus in r.allocation
            if name in cluster.rank and cluster.views[cluster.rank[name]].state == "up"
        ]
        if r.terminating or r.job_id in taken:
            for node, n in usable:
                coming[node] = coming.get(node, 0) + n
        elif r.preemptible and (r.qos in allowed or (las and worth_it(job, r, now, config))):
            spans[r.job_id] = usable
            for node, n in usable:
                victims.setdefault(node, []).append((-r.start_ts, r.job_id, n))
    if not victims:
        return None
    types = cluster.types_for(job.gpu_type)
    p = job.gpus_per_node
    # per candidate node: how many victims (youngest first) it needs, and which
    needs: list[tuple[int, int, int, list[str]]] = []  # (victims, free, node, ids)
    for node, view in enumerate(cluster.views):
        if view.state != "up" or view.gpu_type not in types:
            continue
        have = len(cluster.free[node]) + coming.get(node, 0)
        chosen: list[str] = []
        for _, vid, n in sorted(victims.get(node, ())):
            if have >= p:
                break
            chosen.append(vid)
            have += n
        if have >= p:
            needs.append((len(chosen), len(cluster.free[node]), node, chosen))
    if len(needs) < job.nodes:
        return None
    needs.sort(key=lambda x: (x[0], x[1], x[2]))
    picked = needs[: job.nodes]
    ids = sorted({v for *_, chosen in picked for v in chosen})
    if not ids:
        return None
    return Plan(tuple(sorted(n for _, _, n, _ in picked)), tuple(ids))
