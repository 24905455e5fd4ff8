"""Preemption: which opted-in running jobs a QOS allowed to preempt must stop for a job.

Victims are chosen per node, youngest first (least work lost), only from jobs that set
`preemptible` and whose QOS the pending job's QOS lists in `preempt`. GPUs of jobs that are
already terminating count as coming free, so a pass never preempts twice for one job.
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


def plan(
    job: JobRequest,
    cluster: Cluster,
    running: Iterable[RunningJob],
    config: SchedulerConfig,
    taken: set[str],
) -> Plan | None:
    level = config.qos_level(job.qos)
    if level is None or not level.preempt:
        return None
    allowed = set(level.preempt)
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
        elif r.preemptible and r.qos in allowed:
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
