"""The one simulation harness: a workload through `decide()` on a virtual clock, with the
decisions applied as the daemon applies them. Pure: no I/O, no clock of its own.

At each instant: jobs whose work or preemption grace is over release their GPUs (usage
is accrued first, with them still running, as the daemon does when a job ends), arrivals
join the queue, then one pass. A pass runs when something can start (a GPU is free) or
when the configuration can preempt and a running job is preemptible (then even on a full
cluster), and every `pass_interval_s` while jobs wait (always, as the daemon's periodic
pass).

Decisions, as the daemon carries them out:
- `starts`: the job runs on exactly those GPUs (a GPU that is not free is a bug in the
  core: ValueError).
- `preempt`: the victim is signalled; it keeps its GPUs for `preempt_grace_s`, passed as
  `terminating` meanwhile, then goes back to the queue with `restarts + 1` and its original
  submit time. Its work so far is kept (it checkpoints on the signal, or every
  `Cost.checkpoint_interval_s` of run time: then what it did since the last checkpoint is
  lost) and it redoes `Cost.restart_s` more. A victim whose work ends within the grace
  simply completes.
- usage: `fairshare.accrue` (billing weights, decay) on every pass and whenever jobs end.
- `reservations` need nothing applied: each pass computes them afresh from time limits.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from dcsched.scheduler.config import SchedulerConfig
from dcsched.scheduler.decide import decide
from dcsched.scheduler.estimate import remember
from dcsched.scheduler.fairshare import accrue
from dcsched.scheduler.model import Decisions, JobRequest, NodeView, RunningJob, Snapshot, Usage

_END, _STOP, _TICK = 0, 1, 2  # event kinds; at one instant ends and stops go first


@dataclass(frozen=True, slots=True)
class SimJob:
    """One job of a workload: what the scheduler sees, and the work it really needs."""

    request: JobRequest
    duration_s: float  # never shown to the scheduler


@dataclass(frozen=True, slots=True)
class Cost:
    """What a preemption costs its victim, in seconds of work done again."""

    restart_s: float = 0.0
    # None: the job checkpoints on the preemption signal
    checkpoint_interval_s: float | None = None

    def lost(self, ran_s: float) -> float:
        interval = self.checkpoint_interval_s
        return self.restart_s + (ran_s % interval if interval else 0.0)


NO_COST = Cost()


@dataclass(slots=True)
class JobRecord:
    """What happened to one job."""

    job_id: str
    account: str
    gpus: int
    submit_s: float
    duration_s: float
    first_start_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    # GPU-seconds preemption cost: work done again plus GPUs held through the grace
    lost_gpu_s: float = 0.0


PassHook = Callable[[Snapshot, float, Decisions], None]


class Simulator:
    def __init__(
        self,
        nodes: Sequence[NodeView],
        config: SchedulerConfig,
        cost: Cost = NO_COST,
        pass_interval_s: float = 0.0,
        decide_fn: Callable[[Snapshot, float], Decisions] = decide,
    ) -> None:
        self.decide = decide_fn  # decide(), or a caller's wrapper of it (dcsim times it)
        self.config = config
        self.cost = cost
        self.pass_interval_s = pass_interval_s
        self.views = list(nodes)
        self.rank = {n.name: i for i, n in enumerate(nodes)}
        self.free = [set(n.free) for n in nodes]
        self.free_total = sum(len(f) for f in self.free)
        self.usage = Usage()
        # run times of completed jobs per (user, time limit), as the daemon keeps them
        self.history: dict[tuple[str, float], tuple[float, ...]] = {}
        self.want_usage = config.policy not in ("fifo", "greedy") and config.weights.fairshare > 0
        self.may_preempt = config.policy == "las" or any(
            level.preempt for level in config.qos.values()
        )
        self.pending: dict[str, JobRequest] = {}
        self.running: dict[str, RunningJob] = {}
        self.left: dict[str, float] = {}  # work still to do at the start of the current run
        # bumps at every start and preemption: events of what was planned before are stale
        self.run_id: dict[str, int] = {}
        self.records: dict[str, JobRecord] = {}
        self.order: dict[str, int] = {}
        self.requests: dict[str, JobRequest] = {}
        self.passes = 0
        # how the jobs that others depend on ended (Snapshot.finished): the snapshot's, then
        # every such job that ends here is taken to have completed
        self.finished: dict[str, str] = {}
        self._depended: set[str] = set()
        self._events: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        self._tick_at = math.inf
        self.t0 = -math.inf

    def run(
        self,
        jobs: Sequence[SimJob],
        on_pass: PassHook | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, JobRecord]:
        """Run the workload to its end; one record per job (unstarted jobs have no start).
        `on_progress(jobs ended so far)` is called about 500 times."""
        arrivals = self._load(jobs)
        if arrivals:
            self.usage = Usage(arrivals[0].request.submit_ts, {})
        return self._loop(arrivals, on_pass, on_progress)

    def resume(
        self,
        snapshot: Snapshot,
        now: float,
        pending: Sequence[SimJob],
        running: Sequence[tuple[RunningJob, float]],
        done: Callable[[], bool] = lambda: False,
        max_passes: int | None = None,
    ) -> dict[str, JobRecord]:
        """Go on from a cluster as it is at `now` (the daemon's planning, `forecast`):
        `running` jobs with the time each still takes, `pending` jobs queued now (their
        submit times kept, for age), the snapshot's usage and history; the nodes are the
        ones this simulator was made with, their free GPUs as they are. Stops when nothing
        is left, when `done()` or after `max_passes` passes."""
        for k, (rj, left) in enumerate(running):
            self.running[rj.job_id] = rj
            # what a preempted one goes back to the queue as (its submit time unknown here:
            # its start), ahead of the pending jobs in submission order
            self.requests[rj.job_id] = JobRequest(
                rj.job_id,
                rj.user,
                rj.account,
                rj.start_ts,
                len(rj.allocation),
                len(rj.allocation[0][1]),
                rj.time_limit_s,
                qos=rj.qos,
                gpu_type=rj.gpu_type or None,
                preemptible=rj.preemptible,
                name=rj.name,
                array_id=rj.array_id,
                restarts=rj.restarts,
                attained_s=rj.attained_s,
            )
            self.order[rj.job_id] = k - len(running)
            self.run_id[rj.job_id] = 1
            self.records[rj.job_id] = JobRecord(
                rj.job_id, rj.account, rj.gpus, rj.start_ts, left, rj.start_ts
            )
            self.left[rj.job_id] = now + left - rj.start_ts
            self._push(now + left, _END, rj.job_id, 1)
        self.usage = snapshot.usage
        self.history = dict(snapshot.history)
        self.finished = dict(snapshot.finished)
        self.t0 = now
        return self._loop(self._load(pending), done=done, max_passes=max_passes)

    def _load(self, jobs: Sequence[SimJob]) -> list[SimJob]:
        arrivals = sorted(jobs, key=lambda j: j.request.submit_ts)
        for i, job in enumerate(arrivals):
            r = job.request
            if r.job_id in self.records:
                raise ValueError(f"job id {r.job_id!r} appears twice in the workload")
            self.order[r.job_id] = i
            self.records[r.job_id] = JobRecord(
                r.job_id, r.account, r.gpus, r.submit_ts, job.duration_s
            )
            self.left[r.job_id] = job.duration_s
            self.requests[r.job_id] = r
            self._depended.update(dep for _, dep in r.depends)
        return arrivals

    def _loop(
        self,
        arrivals: list[SimJob],
        on_pass: PassHook | None = None,
        on_progress: Callable[[int], None] | None = None,
        done: Callable[[], bool] = lambda: False,
        max_passes: int | None = None,
    ) -> dict[str, JobRecord]:
        i, ended = 0, 0
        step = max(1, len(arrivals) // 500)
        events = self._events
        t0 = self.t0  # jobs submitted before it arrive at it
        while i < len(arrivals) or events:
            if done() or (max_passes is not None and self.passes >= max_passes):
                break
            now = min(
                max(t0, arrivals[i].request.submit_ts) if i < len(arrivals) else math.inf,
                events[0][0] if events else math.inf,
            )
            due: list[tuple[int, str]] = []
            ticked = False
            while events and events[0][0] == now:
                _, kind, _, jid, run = heapq.heappop(events)
                if kind == _TICK:
                    self._tick_at = math.inf
                    ticked = True
                elif self.run_id.get(jid) == run:
                    due.append((kind, jid))
            if due:
                if self.want_usage:
                    self.usage = accrue(self.usage, self.running.values(), now, self.config)
                for kind, jid in due:
                    rj = self._release(jid)
                    if kind == _END:
                        self.records[jid].finish_s = now
                        if jid in self._depended:
                            self.finished[jid] = "COMPLETED"
                        key = (rj.user, rj.time_limit_s)
                        ran = rj.attained_s + now - rj.start_ts
                        self.history[key] = remember(self.history.get(key, ()), ran)
                        ended += 1
                        if on_progress is not None and ended % step == 0:
                            on_progress(ended)
                    else:  # back to the queue, as the daemon's requeue
                        self.pending[jid] = replace(
                            self.requests[jid],
                            restarts=rj.restarts + 1,
                            attained_s=rj.attained_s + now - rj.start_ts,
                        )
            while i < len(arrivals) and max(t0, arrivals[i].request.submit_ts) == now:
                r = arrivals[i].request
                self.pending[r.job_id] = r
                i += 1
            if self.pending and (ticked or self.free_total > 0 or self._victims_possible()):
                self.step(now, on_pass)
            # periodic passes while jobs wait and something can still change (no endless
            # ticks for jobs that can never start)
            alive = self.running or i < len(arrivals)
            if self.pending and alive and self.pass_interval_s > 0 and self._tick_at == math.inf:
                self._tick_at = now + self.pass_interval_s
                self._push(self._tick_at, _TICK, "", 0)
        if on_progress is not None:
            on_progress(ended)
        return self.records

    def step(self, now: float, on_pass: PassHook | None = None) -> Decisions:
        """One pass at `now` and its decisions applied."""
        if self.want_usage:
            self.usage = accrue(self.usage, self.running.values(), now, self.config)
        pending = sorted(self.pending.values(), key=lambda r: self.order[r.job_id])
        snapshot = Snapshot(
            tuple(self.views),
            tuple(pending),
            tuple(self.running.values()),
            self.config,
            self.usage,
            history=dict(self.history),  # a snapshot: later runs do not change it
            finished=dict(self.finished),
        )
        decisions = self.decide(snapshot, now)
        self.passes += 1
        if on_pass is not None:
            on_pass(snapshot, now, decisions)
        for jid in decisions.preempt:
            self._preempt(jid, now)
        for start in decisions.starts:
            self._start(start.job_id, start.allocation, now)
        return decisions

    def _victims_possible(self) -> bool:
        """On a full cluster a pass can only preempt: skip it when nothing is preemptible
        (it could change nothing)."""
        return self.may_preempt and any(
            r.preemptible and not r.terminating for r in self.running.values()
        )

    def _push(self, at: float, kind: int, jid: str, run: int) -> None:
        heapq.heappush(self._events, (at, kind, self._seq, jid, run))
        self._seq += 1

    def _start(
        self, jid: str, allocation: tuple[tuple[str, tuple[int, ...]], ...], now: float
    ) -> None:
        r = self.pending.pop(jid)
        for name, gpus in allocation:
            node = self.rank[name]
            if not self.free[node].issuperset(gpus):
                raise ValueError(f"decide() started {jid} on GPUs of {name} that are not free")
            self.free[node].difference_update(gpus)
            self.views[node] = replace(self.views[node], free=frozenset(self.free[node]))
            self.free_total -= len(gpus)
        rj = RunningJob(
            jid,
            r.user,
            r.account,
            now,
            r.time_limit_s,
            allocation,
            qos=r.qos,
            preemptible=r.preemptible,
            gpu_type=self.views[self.rank[allocation[0][0]]].gpu_type,
            name=r.name,
            array_id=r.array_id,
            restarts=r.restarts,
            attained_s=r.attained_s,
        )
        self.running[jid] = rj
        run = self.run_id[jid] = self.run_id.get(jid, 0) + 1
        rec = self.records[jid]
        if rec.first_start_s is None:
            rec.first_start_s = now
        self._push(now + self.left[jid], _END, jid, run)

    def _preempt(self, jid: str, now: float) -> None:
        rj = self.running[jid]
        if rj.terminating:
            raise ValueError(f"decide() preempted {jid} twice")
        self.running[jid] = replace(rj, terminating=True)
        if now + self.config.preempt_grace_s >= rj.start_ts + self.left[jid]:
            return  # its work ends within the grace: it completes
        # a new run id: the end of its work that was due in this run is stale now
        self.run_id[jid] += 1
        self._push(now + self.config.preempt_grace_s, _STOP, jid, self.run_id[jid])
        ran = now - rj.start_ts  # work of this run, up to the signal
        lost = self.cost.lost(ran)
        self.left[jid] += lost - ran
        rec = self.records[jid]
        rec.preemptions += 1
        rec.lost_gpu_s += rj.gpus * (lost + self.config.preempt_grace_s)

    def _release(self, jid: str) -> RunningJob:
        rj = self.running.pop(jid)
        for name, gpus in rj.allocation:
            node = self.rank[name]
            self.free[node].update(gpus)
            self.views[node] = replace(self.views[node], free=frozenset(self.free[node]))
            self.free_total += len(gpus)
        return rj


def forecast(
    snapshot: Snapshot,
    now: float,
    job_ids: Sequence[str],
    max_passes: int = 500,
    give_up: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """When the pending jobs `job_ids` would start if nothing else arrived and every job
    ran to its time limit (the only duration a scheduler may use, so a late bound, as
    Slurm's `squeue --start`): the harness run forward from the snapshot, with every
    pending job of the snapshot queued. A job that has not started within `max_passes`
    passes, or when `give_up()` (the caller's clock: this core has none), is left out.
    Running jobs past their limit (and terminating ones) end after the preemption
    grace. A job that ends here is taken to have completed (for `afterok` and the like)."""
    config = snapshot.config
    sim = Simulator(snapshot.nodes, config)
    grace = config.preempt_grace_s
    running = [
        (
            r,
            grace
            if r.terminating or now >= r.start_ts + r.time_limit_s
            else r.start_ts + r.time_limit_s - now,
        )
        for r in snapshot.running
    ]
    pending = [SimJob(j, j.time_limit_s) for j in snapshot.pending]
    queued = {j.job_id for j in snapshot.pending}
    wanted = [j for j in job_ids if j in queued]
    records = sim.records

    def done() -> bool:
        return give_up() or all(records[j].first_start_s is not None for j in wanted)

    sim.resume(snapshot, now, pending, running, done, max_passes)
    return {j: start for j in wanted if (start := records[j].first_start_s) is not None}
