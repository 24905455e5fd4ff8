"""Filter step: may this job start at all, whatever the free GPUs? Every reason, not the first.

Checks, in the order their reasons are reported (most important first, as `dcctl queue`
shows reasons[0]): hold, dependencies, singleton, QOS validity, hardware constraints,
limits, the array's running-task limit.
Resources and Priority are not decided here but in `decide`, once placement was tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dcsched.scheduler.config import SchedulerConfig
from dcsched.scheduler.model import DEPENDENCY_KINDS, JobRequest, RunningJob
from dcsched.scheduler.score import Cluster

HELD = "JobHeldUser"
DEPENDENCY = "Dependency"
NEVER = "DependencyNeverSatisfied"
INVALID_QOS = "InvalidQOS"
BAD_CONSTRAINTS = "BadConstraints"
NODE_NOT_AVAIL = "ReqNodeNotAvail"
SINGLETON = "DependencySingleton"  # a job of the same name and user runs
ARRAY_LIMIT = "JobArrayTaskLimit"  # as many of its array's tasks run as `%N` allows
RESOURCES = "Resources"
PRIORITY = "Priority"


def dependency_reason(
    job: JobRequest,
    finished: Mapping[str, str],
    active: frozenset[str] | set[str],
    started: frozenset[str] | set[str] = frozenset(),
) -> str | None:
    """None when every dependency holds; Dependency while one may still hold; else Never.
    `started`: the running jobs (an `after` dependency holds once its job runs)."""
    waiting = False
    for kind, dep in job.depends:
        if kind not in DEPENDENCY_KINDS:
            return NEVER
        state = finished.get(dep)
        if kind == "after" and (state is not None or dep in started):
            continue  # started, or ended (even before it started: Slurm's rule)
        if state is None:
            if dep in active:
                waiting = True
                continue
            return NEVER  # unknown job: nothing will ever finish it
        ok = state == "COMPLETED"
        if (kind == "afterok" and not ok) or (kind == "afternotok" and ok):
            return NEVER
    return DEPENDENCY if waiting else None


def constraint_reason(job: JobRequest, cluster: Cluster) -> str | None:
    """BadConstraints if no hardware could ever run it; ReqNodeNotAvail if none usable now."""
    types = list(cluster.hardware) if job.gpu_type is None else [job.gpu_type]
    if job.nodes < 1 or job.gpus_per_node < 1:
        return BAD_CONSTRAINTS
    possible = False
    for t in types:
        big, count = cluster.hardware.get(t, (0, 0))
        if big >= job.gpus_per_node and count >= job.nodes:
            possible = True
            at_least = cluster.at_least[t]
            if job.gpus_per_node < len(at_least) and at_least[job.gpus_per_node] >= job.nodes:
                return None
    return NODE_NOT_AVAIL if possible else BAD_CONSTRAINTS


@dataclass(slots=True)
class RunState:
    """Running tasks per array and running (user, name) pairs, updated as a pass starts jobs:
    the array `%N` limits and singletons."""

    arrays: dict[str, int] = field(default_factory=dict)
    names: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def build(cls, running: tuple[RunningJob, ...]) -> RunState:
        state = cls()
        for job in running:
            state.add(job.user, job.name, job.array_id)
        return state

    def add(self, user: str, name: str, array_id: str | None) -> None:
        self.names.add((user, name))
        if array_id is not None:
            self.arrays[array_id] = self.arrays.get(array_id, 0) + 1

    def reasons(self, job: JobRequest) -> list[str]:
        out = []
        if job.singleton and (job.user, job.name) in self.names:
            out.append(SINGLETON)
        if (
            job.array_id is not None
            and job.array_limit is not None
            and self.arrays.get(job.array_id, 0) >= job.array_limit
        ):
            out.append(ARRAY_LIMIT)
        return out


@dataclass(slots=True)
class LimitState:
    """Running GPUs and jobs per user, account and QOS, updated as a pass starts jobs."""

    config: SchedulerConfig
    # [GPUs, jobs] running, by (account, user), account, (qos, user) and qos
    user: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    account: dict[str, list[int]] = field(default_factory=dict)
    qos_user: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    qos: dict[str, list[int]] = field(default_factory=dict)
    active: bool = False

    @classmethod
    def build(cls, config: SchedulerConfig, running: tuple[RunningJob, ...]) -> LimitState:
        state = cls(config)
        lim = config.limits
        state.active = bool(
            any(
                v is not None
                for v in (
                    lim.max_gpus_per_user,
                    lim.max_jobs_per_user,
                    lim.max_gpus_per_account,
                    lim.max_jobs_per_account,
                )
            )
            or any(
                a.max_gpus is not None
                or a.max_jobs is not None
                or a.max_gpus_per_user is not None
                or a.max_jobs_per_user is not None
                for a in config.accounts.values()
            )
            or any(
                q.max_gpus_per_user is not None
                or q.max_jobs_per_user is not None
                or q.grp_gpus is not None
                or q.grp_jobs is not None
                for q in config.qos.values()
            )
        )
        if state.active:
            for job in running:
                if not job.terminating:
                    state.add(job.account, job.user, job.qos, job.gpus)
        return state

    def add(self, account: str, user: str, qos: str, gpus: int) -> None:
        for got in (
            self.user.setdefault((account, user), [0, 0]),
            self.account.setdefault(account, [0, 0]),
            self.qos_user.setdefault((qos, user), [0, 0]),
            self.qos.setdefault(qos, [0, 0]),
        ):
            got[0] += gpus
            got[1] += 1

    def reasons(self, job: JobRequest) -> list[str]:
        if not self.active:
            return []
        out: list[str] = []
        cfg = self.config
        acct = cfg.accounts.get(job.account)
        g = job.gpus

        def over(cap: int | None, used: list[int] | None, idx: int, extra: int) -> bool:
            have = used[idx] if used else 0
            return cap is not None and have + extra > cap

        qos = cfg.qos.get(job.qos)
        if qos is not None:
            qu = self.qos_user.get((job.qos, job.user))
            if over(qos.max_gpus_per_user, qu, 0, g):
                out.append("QOSMaxGRESPerUser")
            if over(qos.max_jobs_per_user, qu, 1, 1):
                out.append("QOSMaxJobsPerUser")
            qg = self.qos.get(job.qos)
            if over(qos.grp_gpus, qg, 0, g):
                out.append("QOSGrpGRES")
            if over(qos.grp_jobs, qg, 1, 1):
                out.append("QOSGrpJobs")
        lim = cfg.limits
        a_gpus = acct.max_gpus if acct and acct.max_gpus is not None else lim.max_gpus_per_account
        a_jobs = acct.max_jobs if acct and acct.max_jobs is not None else lim.max_jobs_per_account
        u_gpus = (
            acct.max_gpus_per_user
            if acct and acct.max_gpus_per_user is not None
            else lim.max_gpus_per_user
        )
        u_jobs = (
            acct.max_jobs_per_user
            if acct and acct.max_jobs_per_user is not None
            else lim.max_jobs_per_user
        )
        au = self.account.get(job.account)
        if over(a_gpus, au, 0, g):
            out.append("AssocGrpGRES")
        if over(a_jobs, au, 1, 1):
            out.append("AssocGrpJobs")
        uu = self.user.get((job.account, job.user))
        if over(u_gpus, uu, 0, g):
            out.append("AssocMaxGRESPerUser")
        if over(u_jobs, uu, 1, 1):
            out.append("AssocMaxJobsLimit")
        return out


class Filter:
    """The filter step of one pass; per-shape answers are cached (queues repeat shapes)."""

    def __init__(
        self,
        config: SchedulerConfig,
        cluster: Cluster,
        limits: LimitState,
        finished: Mapping[str, str],
        active: frozenset[str] | set[str],
        runs: RunState | None = None,
        started: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.limits = limits
        self.finished = finished
        self.active = active
        self.runs = runs or RunState()
        self.started = started
        self._qos: dict[str, bool] = {}
        self._shape: dict[tuple[int, int, str | None], str | None] = {}

    def reasons(self, job: JobRequest) -> list[str]:
        """Every reason, other than free GPUs, that keeps this job from starting now."""
        out: list[str] = []
        if job.held:
            out.append(HELD)
        if job.depends:
            dep = dependency_reason(job, self.finished, self.active, self.started)
            if dep is not None:
                out.append(dep)
        run_limits = self.runs.reasons(job) if job.singleton or job.array_limit else []
        if SINGLETON in run_limits:
            out.append(SINGLETON)
        qos_ok = self._qos.get(job.qos)
        if qos_ok is None:
            qos_ok = self._qos[job.qos] = self.config.qos_level(job.qos) is not None
        if not qos_ok:
            out.append(INVALID_QOS)
        shape = (job.nodes, job.gpus_per_node, job.gpu_type)
        if shape in self._shape:
            hw = self._shape[shape]
        else:
            hw = self._shape[shape] = constraint_reason(job, self.cluster)
        if hw is not None:
            out.append(hw)
        if self.limits.active:
            out.extend(self.limits.reasons(job))
        out.extend(r for r in run_limits if r != SINGLETON)
        return out


def job_reasons(
    job: JobRequest,
    config: SchedulerConfig,
    cluster: Cluster,
    limits: LimitState,
    finished: Mapping[str, str],
    active: frozenset[str] | set[str],
) -> list[str]:
    """Every reason, other than free GPUs, that keeps this job from starting now."""
    return Filter(config, cluster, limits, finished, active).reasons(job)
