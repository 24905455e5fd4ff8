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
  preemption costs, the victim's GPUs x (`preempt_cost` + `preempt_grace` + the pending
  job's expected run). Without durations, the expected remaining run is what the victim
  has run so far (long-running jobs tend to run long: the heavy tail LAS relies on),
  capped by its time limit, and the pending job's is unknown (0); with `use_history`
  both come from the users' completed runs (estimate.py) where there are enough.
`why` gives these numbers in words for explain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dcsched.scheduler.config import SchedulerConfig
from dcsched.scheduler.estimate import History, expected_left
from dcsched.scheduler.model import JobRequest, RunningJob
from dcsched.scheduler.score import Cluster


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: tuple[int, ...]
    victims: tuple[str, ...]


def victim_left(victim: RunningJob, now: float, history: History) -> float:
    """What the victim is expected to run still: from its user's completed runs of the same
    time limit (estimate.py), else what it has been served so far (the LAS premise),
    capped by what its time limit leaves."""
    ran = now - victim.start_ts
    served = victim.attained_s + ran
    left_limit = victim.time_limit_s - ran
    runs = history.get((victim.user, victim.time_limit_s), ())
    est = expected_left(runs, served, left_limit)
    return min(left_limit, served) if est is None else est


def job_run(job: JobRequest, history: History) -> float:
    """What the pending job is expected to run: from its user's history, else 0 (unknown:
    it is not charged, as before the history existed)."""
    runs = history.get((job.user, job.time_limit_s), ())
    est = expected_left(runs, job.attained_s, job.time_limit_s)
    return 0.0 if est is None else est


def worth_it(
    job: JobRequest,
    victim: RunningJob,
    now: float,
    config: SchedulerConfig,
    history: History | None = None,
    left: float | None = None,
) -> bool:
    """The `las` rule (see the module's docstring); `left`: victim_left(), if known."""
    ran = now - victim.start_ts
    if ran < config.min_run_s or victim.restarts >= config.max_preemptions:
        return False
    served = victim.attained_s + ran
    if job.gpus * job.attained_s >= victim.gpus * served:
        return False
    if job.time_limit_s >= victim.time_limit_s - ran:
        return False
    history = history or {}
    expected = victim_left(victim, now, history) if left is None else left
    cost = victim.gpus * (config.preempt_cost_s + config.preempt_grace_s + job_run(job, history))
    return job.gpus * expected > cost


class Candidates:
    """The running jobs as `plan` reads them, built once per pass: the GPUs each holds on
    usable nodes, and which of them are already terminating (their GPUs are coming free).
    Jobs that do not opt in to preemption are left out: they are never victims."""

    def __init__(
        self, cluster: Cluster, running: Iterable[RunningJob], config: SchedulerConfig, now: float
    ) -> None:
        self.coming: dict[int, int] = {}  # node -> GPUs of terminating jobs
        # (job, its (node, GPUs) on usable nodes, whether `las`'s cheap checks let it be a
        # victim at all: min_run and max_preemptions do not depend on the pending job)
        self.jobs: list[tuple[RunningJob, list[tuple[int, int]], bool]] = []
        rank, views = cluster.rank, cluster.views
        for r in running:
            usable = [
                (rank[name], len(gpus))
                for name, gpus in r.allocation
                if name in rank and views[rank[name]].state == "up"
            ]
            if r.terminating:
                for node, n in usable:
                    self.coming[node] = self.coming.get(node, 0) + n
            elif r.preemptible:
                ripe = now - r.start_ts >= config.min_run_s and r.restarts < config.max_preemptions
                self.jobs.append((r, usable, ripe))


def plan(
    job: JobRequest,
    cluster: Cluster,
    running: Iterable[RunningJob] | Candidates,
    config: SchedulerConfig,
    taken: set[str],
    now: float = 0.0,
    history: History | None = None,
    lefts: dict[str, float] | None = None,
) -> Plan | None:
    """Victims for `job`, or None. `running` may be the pass's Candidates (built once);
    `taken`: victims chosen earlier in the pass; `lefts` caches victim_left() across one
    pass."""
    level = config.qos_level(job.qos)
    allowed = set(level.preempt) if level is not None else set()
    las = config.policy == "las"
    if not allowed and not las:
        return None
    pool = running if isinstance(running, Candidates) else Candidates(cluster, running, config, now)
    coming = dict(pool.coming)
    victims: dict[int, list[tuple[float, str, int]]] = {}  # node -> (-start, id, GPUs)
    for r, usable, ripe in pool.jobs:
        if r.job_id in taken:
            for node, n in usable:
                coming[node] = coming.get(node, 0) + n
        elif r.qos in allowed or (las and ripe and _pays(job, r, now, config, history, lefts)):
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


def _pays(
    job: JobRequest,
    victim: RunningJob,
    now: float,
    config: SchedulerConfig,
    history: History | None,
    lefts: dict[str, float] | None,
) -> bool:
    if lefts is None:
        return worth_it(job, victim, now, config, history)
    if now - victim.start_ts < config.min_run_s or victim.restarts >= config.max_preemptions:
        return False  # the cheap checks first: no estimate needed
    left = lefts.get(victim.job_id)
    if left is None:
        left = lefts[victim.job_id] = victim_left(victim, now, history or {})
    return worth_it(job, victim, now, config, history, left)


def _span(seconds: float) -> str:
    """Seconds for a person: "42 s", "5.2 h" (numbers, not the duration grammar)."""
    return f"{seconds:.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def why(
    job: JobRequest,
    victim: RunningJob,
    now: float,
    config: SchedulerConfig,
    history: History | None = None,
) -> str:
    """The `las` rule's numbers for one preemption, in words (for explain)."""
    history = history or {}
    ran = now - victim.start_ts
    served = victim.attained_s + ran
    runs = history.get((victim.user, victim.time_limit_s), ())
    est = expected_left(runs, served, victim.time_limit_s - ran)
    source = (
        f"from {victim.user}'s last {len(runs)} runs of this limit"
        if est is not None
        else "no history: what it has had, capped by its limit"
    )
    left = victim_left(victim, now, history)
    run = job_run(job, history)
    cost = config.preempt_cost_s + config.preempt_grace_s + run
    return (
        f"preempted for job {job.job_id} (policy las): served {victim.gpus} GPU(s) x "
        f"{_span(served)} > job {job.job_id}'s {job.gpus} x {_span(job.attained_s)}; "
        f"ran {_span(ran)} >= min_run {_span(config.min_run_s)}; preemption "
        f"{victim.restarts + 1} of at most {config.max_preemptions}; its time limit leaves "
        f"{_span(victim.time_limit_s - ran)} > job {job.job_id}'s {_span(job.time_limit_s)}; "
        f"expected gain {job.gpus} GPU(s) x {_span(left)} ({source}) > cost "
        f"{victim.gpus} GPU(s) x {_span(cost)} (restart {_span(config.preempt_cost_s)} + "
        f"grace {_span(config.preempt_grace_s)} + job {job.job_id}'s expected run "
        f"{_span(run)})"
    )
