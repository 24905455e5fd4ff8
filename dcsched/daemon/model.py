"""The daemon's live jobs in memory, with the indexes the scheduler and the API read.

Only the executor (`jobs.py`) writes here, and only after the store has journaled the change
(`install`); everything else reads. Finished jobs leave memory when they end: the store keeps
them. What the scheduler needs of each job (a `JobRequest` or a `RunningJob`) is built once
when the job changes, never per pass. So is the run history (`Snapshot.history`): the store's
at start-up, one more run per COMPLETED job, and a frozen copy only after a change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dcsched.daemon.lifecycle import Job
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState
from dcsched.protocol.jobspec import SINGLETON, array_limit, parse_dependencies, preemptible
from dcsched.scheduler import JobRequest, RunningJob
from dcsched.scheduler.estimate import History, remember


@dataclass(frozen=True, slots=True)
class Ended:
    """A job that ended since the last scheduling pass, for fair-share accrual."""

    account: str
    user: str
    start_ts: float
    end_ts: float
    gpus: int
    gpu_type: str


class Model:
    def __init__(self, host_gpu_type: Callable[[str], str]) -> None:
        self._gpu_type = host_gpu_type
        self.clear()

    def clear(self) -> None:
        """Forgets every job (a standby reloads its read-only copy from the store)."""
        self.jobs: dict[int, Job] = {}  # every job that has not finished
        self.requests: dict[int, JobRequest] = {}  # queued jobs, as decide() reads them
        self.running: dict[int, RunningJob] = {}  # active jobs, as decide() reads them
        self.on_host: dict[str, set[int]] = {}  # host -> jobs with a live part there
        self.counts: dict[str, int] = {s.value: 0 for s in JobState}
        # Finished jobs that a queued job depends on: id -> final state.
        self.finished_deps: dict[int, str] = {}
        self.ended: list[Ended] = []
        self._depended: set[int] = set()  # ids that some queued job depends on
        self._alloc: dict[tuple[str, int], tuple[int, str]] | None = None
        # (user, time limit s) -> run times of the last completed jobs, oldest first
        self._history: dict[tuple[str, float], tuple[float, ...]] = {}
        self._frozen: History | None = MappingProxyType({})

    def load(
        self,
        jobs: Iterable[Job],
        counts: dict[str, int],
        deps: dict[int, str],
        history: Mapping[tuple[str, float], tuple[float, ...]] | None = None,
    ) -> None:
        self.counts.update(counts)
        for job in jobs:
            self._index(job)
        self.finished_deps.update(deps)
        if history:
            self._history.update(history)
            self._frozen = None

    def history(self) -> History:
        """The run history as a snapshot takes it: a copy that later completions do not
        change (a pass runs in slices), made again only after one."""
        if self._frozen is None:
            self._frozen = MappingProxyType(dict(self._history))
        return self._frozen

    def install(self, job: Job, old: Job | None) -> None:
        """The journaled new state of a job (old=None for a new one)."""
        if job.parts or (old is not None and old.parts):
            self._alloc = None
        if old is not None:
            self.counts[old.state] -= 1
            self._unindex(old)
        self.counts[job.state] = self.counts.get(job.state, 0) + 1
        if job.state in TERMINAL:
            if job.state == JobState.COMPLETED and old is not None and old.state != job.state:
                self._remember(job)
            if job.id in self._depended:
                self.finished_deps[job.id] = job.state
            if old is not None and old.start_ts is not None and job.state != old.state:
                self.ended.append(
                    Ended(
                        job.account,
                        job.user,
                        old.start_ts,
                        job.end_ts or old.start_ts,
                        job.nodes * job.gpus_per_node,
                        self.running_gpu_type(old),
                    )
                )
        else:
            self._index(job)

    def _remember(self, job: Job) -> None:
        """A COMPLETED job's run time, all its runs together (as the harness counts it)."""
        if job.start_ts is None or job.end_ts is None:
            return
        key = (job.user, float(job.time_limit_s))
        ran = job.attained_s + job.end_ts - job.start_ts
        self._history[key] = remember(self._history.get(key, ()), ran)
        self._frozen = None

    def _index(self, job: Job) -> None:
        self.jobs[job.id] = job
        for p in job.parts:
            if p.live:
                self.on_host.setdefault(p.host, set()).add(job.id)
        if job.state in QUEUED:
            req = self.requests[job.id] = _request(job)
            self._depended.update(int(i) for _, i in req.depends)
        elif job.state in ACTIVE:
            self.running[job.id] = _running(job, self.running_gpu_type(job))

    def _unindex(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        self.requests.pop(job.id, None)
        self.running.pop(job.id, None)
        for p in job.parts:
            ids = self.on_host.get(p.host)
            if ids is not None:
                ids.discard(job.id)
                if not ids:
                    del self.on_host[p.host]

    def running_gpu_type(self, job: Job) -> str:
        return self._gpu_type(job.parts[0].host) if job.parts else ""

    def jobs_on(self, host: str) -> list[Job]:
        return [self.jobs[i] for i in sorted(self.on_host.get(host, ()))]

    def busy_gpus(self) -> dict[str, set[int]]:
        """host -> GPUs held by a live part of an active job."""
        out: dict[str, set[int]] = {}
        for job_id in self.running:
            for p in self.jobs[job_id].parts:
                if p.live:
                    out.setdefault(p.host, set()).update(p.gpus)
        return out

    def allocations(self) -> Mapping[tuple[str, int], tuple[int, str]]:
        """(host, GPU) -> (job id, user) for every GPU a live part holds. Built again only
        after a change of parts: every dctop asks for it every second."""
        if self._alloc is None:
            out = {}
            for job_id in self.running:
                job = self.jobs[job_id]
                for p in job.parts:
                    if p.live:
                        for g in p.gpus:
                            out[(p.host, g)] = (job.id, job.user)
            self._alloc = out
        return self._alloc

    def used_ports(self) -> set[tuple[str, int]]:
        """(master address, port) of every active job: a port is taken only where the job's
        master listens, so the range is per address, not per cluster (and agents that share
        an address, as on a one-machine demo, share it)."""
        out = set()
        for i in self.running:
            job = self.jobs[i]
            if job.master_port and job.master_addr:
                out.add((job.master_addr, job.master_port))
        return out

    def take_ended(self) -> list[Ended]:
        out, self.ended = self.ended, []
        return out


def _request(job: Job) -> JobRequest:
    return JobRequest(
        job_id=str(job.id),
        user=job.user,
        account=job.account,
        submit_ts=job.submit_ts,
        nodes=job.nodes,
        gpus_per_node=job.gpus_per_node,
        time_limit_s=job.time_limit_s,
        qos=job.qos,
        gpu_type=job.gpu_type,
        nice=job.nice,
        held=job.state == JobState.HELD,
        depends=parse_dependencies(job.spec.get("dependency", [])),
        preemptible=preemptible(job.spec),
        name=job.name,
        array_id=None if job.array_job_id is None else str(job.array_job_id),
        array_limit=array_limit(job.spec.get("array") or ""),
        singleton=SINGLETON in job.spec.get("dependency", []),
        restarts=job.restart_count,
        attained_s=job.attained_s,
    )


def _running(job: Job, gpu_type: str) -> RunningJob:
    return RunningJob(
        job_id=str(job.id),
        user=job.user,
        account=job.account,
        start_ts=job.start_ts or job.submit_ts,
        time_limit_s=job.time_limit_s,
        allocation=tuple((p.host, p.gpus) for p in job.parts if p.live),
        qos=job.qos,
        preemptible=preemptible(job.spec),
        gpu_type=gpu_type,
        terminating=job.state == JobState.COMPLETING,
        name=job.name,
        array_id=None if job.array_job_id is None else str(job.array_job_id),
        restarts=job.restart_count,
        attained_s=job.attained_s,
    )
