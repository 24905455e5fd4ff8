"""decide(snapshot, now): the one entry point of the scheduler core.

The pipeline, one pass over the queue (each step is its own module):

    sort     sort.py      multifactor priority, highest first (fifo/greedy: submit order)
    filter   filter.py    hold, dependencies, singleton, QOS, hardware constraints, limits,
                          array task limits: every reason
    score    score.py     best-fit placement on the free GPUs now
    reserve  reserve.py   no fit: earliest start from time limits, held as a reservation for
                          the top `backfill_depth` jobs; lower jobs backfill around them
    decide   here         start, preempt (preempt.py) or pending with reasons and est_start

Policies: `fifo` stops at the first job that does not fit; `greedy` skips it; `default`
uses priority, reservations, backfill and preemption; `las` is `default` that also
preempts by least attained service where it pays (preempt.py). Limits, holds and dependencies apply
to all three. "Does not fit" is a normal outcome with a reason, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterator

from dcsched.scheduler import filter as filters
from dcsched.scheduler import preempt
from dcsched.scheduler.model import (
    Decisions,
    JobRequest,
    NodePart,
    PendingInfo,
    Reservation,
    Snapshot,
    Start,
)
from dcsched.scheduler.reserve import Slot, Timeline
from dcsched.scheduler.score import Cluster
from dcsched.scheduler.sort import sort_jobs


class Pass:
    """One scheduling pass. Once run, it is also the record `explain` reads: the priority
    order, every job's reasons and what the pass left of the cluster and its timeline."""

    def __init__(self, snapshot: Snapshot, now: float) -> None:
        self.snapshot = snapshot
        self.now = now
        self.config = snapshot.config
        self.cluster = Cluster(snapshot.nodes)
        self.limits = filters.LimitState.build(self.config, snapshot.running)
        self.runs = filters.RunState.build(snapshot.running)
        self.active: set[str] = set()
        self.running_ids: set[str] = set()
        if any(j.depends for j in snapshot.pending):
            self.running_ids = {j.job_id for j in snapshot.running}
            self.active = {j.job_id for j in snapshot.pending} | self.running_ids
        self._timeline: Timeline | None = None
        self.started: list[tuple[int, int, float]] = []
        self.starts: list[Start] = []
        self.pending: dict[str, PendingInfo] = {}
        self.reservations: list[Reservation] = []
        self.preempt: list[str] = []
        self.preempt_for: dict[str, tuple[str, ...]] = {}
        self.priority: dict[str, float] = {}
        self.lefts: dict[str, float] = {}  # victim_left() of running jobs, once per pass
        self._candidates: preempt.Candidates | None = None

    def timeline(self) -> Timeline:
        if self._timeline is None:
            self._timeline = Timeline(self.cluster, self.snapshot.running, self.now, self.started)
        return self._timeline

    def run(self) -> Pass:
        for _ in self.steps():
            pass
        return self

    def steps(self) -> Iterator[None]:
        """The pass, yielding after each job: a caller that shares its thread (the daemon's
        event loop) can pause between jobs. The snapshot is immutable, so a pause changes
        nothing here; what changed meanwhile is the caller's to check."""
        policy = self.config.policy
        default = policy in ("default", "las")
        depth = self.config.backfill_depth if default else 0
        cluster, snapshot = self.cluster, self.snapshot
        check = filters.Filter(
            self.config,
            cluster,
            self.limits,
            snapshot.finished,
            self.active,
            self.runs,
            self.running_ids,
        )
        blocked = False
        reserved = 0
        for prio, job in sort_jobs(snapshot, self.now):
            yield
            self.priority[job.job_id] = prio
            reasons = check.reasons(job)
            if reasons:
                self.pending[job.job_id] = PendingInfo(tuple(reasons), prio, None)
                continue
            if blocked:
                self.pending[job.job_id] = PendingInfo((filters.PRIORITY,), prio, None)
                continue
            end = self.now + job.time_limit_s
            fits_free = cluster.can_fit_now(job.nodes, job.gpus_per_node, job.gpu_type)
            nodes = self.place(job, end) if fits_free else None
            if nodes is not None:
                self.start(job, nodes, end)
                continue
            reason = filters.PRIORITY if fits_free else filters.RESOURCES
            est: float | None = None
            if policy == "fifo":
                blocked = True
            elif default and reserved < depth:
                est = self.reserve(job, self.now - job.submit_ts >= self.config.reserve_after())
                reserved += 1
            self.pending[job.job_id] = PendingInfo((reason,), prio, est)

    def place(self, job: JobRequest, end: float) -> list[int] | None:
        """Node indices for the job now; nodes with reservations only if it backfills."""
        cluster = self.cluster
        ok = self._timeline.backfill_ok if self._timeline is not None else None
        if job.nodes == 1:
            node = cluster.best_single(job.gpus_per_node, job.gpu_type, end, ok)
            return None if node is None else [node]
        return cluster.best_multi(job.nodes, job.gpus_per_node, job.gpu_type, end, ok)

    def start(self, job: JobRequest, nodes: list[int], end: float) -> None:
        cluster = self.cluster
        parts: list[NodePart] = []
        for node in nodes:
            parts.append((cluster.views[node].name, cluster.take(node, job.gpus_per_node)))
            self.started.append((node, job.gpus_per_node, end))
            if self._timeline is not None:
                self._timeline.add(node, end, job.gpus_per_node)
        self.limits.add(job.account, job.user, job.qos, job.gpus)
        self.runs.add(job.user, job.name, job.array_id)
        self.starts.append(Start(job.job_id, tuple(parts)))

    def reserve(self, job: JobRequest, hold: bool = True) -> float | None:
        """The job's earliest start (preempting for it where that is allowed), held as a
        reservation when it has a preemption or `hold` (it has waited `reserve_after`)."""
        timeline = self.timeline()
        types = self.cluster.types_for(job.gpu_type)
        slot = timeline.reserve(job, types)
        if slot is None or slot.start > self.now:
            if self._candidates is None:
                self._candidates = preempt.Candidates(
                    self.cluster, self.snapshot.running, self.config, self.now
                )
            p = preempt.plan(
                job,
                self.cluster,
                self._candidates,
                self.config,
                set(self.preempt),
                self.now,
                self.config.history(self.snapshot.history),
                self.lefts,
            )
            if p is not None:
                for vid in p.victims:
                    timeline.release_now(vid, self.snapshot.running)
                self.preempt.extend(p.victims)
                self.preempt_for[job.job_id] = p.victims
                slot = Slot(self.now, p.nodes)
                hold = True
        if slot is None or not hold:
            return None if slot is None else slot.start
        timeline.hold(job, slot)
        names = tuple((self.cluster.views[n].name, job.gpus_per_node) for n in slot.nodes)
        self.reservations.append(Reservation(job.job_id, slot.start, names))
        return slot.start

    def decisions(self) -> Decisions:
        return Decisions(
            tuple(self.starts), self.pending, tuple(self.preempt), tuple(self.reservations)
        )


def decide(snapshot: Snapshot, now: float) -> Decisions:
    """Which jobs start now, which to preempt, and why every other job waits."""
    return Pass(snapshot, now).run().decisions()
