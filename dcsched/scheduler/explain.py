"""explain(snapshot, now, job_id): why a job waits, as JSON-friendly plain data.

It reads a finished scheduling pass (so the answer is what the scheduler decided, and the
daemon answers from its last pass without running another, as Slurm's reasons come from its
last pass). Against what that pass left of the cluster it adds "Resources" to a job held
back by other reasons, and estimates a start for a job below the backfill depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dcsched.scheduler import filter as filters
from dcsched.scheduler import preempt
from dcsched.scheduler.decide import Pass
from dcsched.scheduler.model import RunningJob, Snapshot
from dcsched.scheduler.reasons import detail
from dcsched.scheduler.sort import Factor, factors


@dataclass(frozen=True, slots=True)
class Explanation:
    job_id: str
    # "pending": waits; "starting": this pass starts it; "running": already runs
    state: str
    policy: str
    priority: float
    factors: tuple[Factor, ...]
    reasons: tuple[str, ...]
    est_start: float | None
    # 1-based place in priority order among pending jobs, and how many there are
    rank: int
    queue_length: int
    # (node, GPUs) held for the job from est_start, if it has a reservation
    reservation: tuple[tuple[str, int], ...] = ()
    preempts: tuple[str, ...] = ()
    # pending past starvation_age: ahead of every priority, oldest first
    starving: bool = False
    # each reason in words with its numbers (asked vs free, use vs limit), as `reasons`
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "policy": self.policy,
            "priority": self.priority,
            "factors": [f.to_dict() for f in self.factors],
            "reasons": list(self.reasons),
            "est_start": self.est_start,
            "rank": self.rank,
            "queue_length": self.queue_length,
            "reservation": [list(r) for r in self.reservation],
            "preempts": list(self.preempts),
            "starving": self.starving,
            "details": list(self.details),
        }


def _preempted(done: Pass, pid: str, victim: RunningJob) -> str:
    """Why `victim` is preempted for pending job `pid`: its QOS, or the las rule's numbers."""
    snapshot = done.snapshot
    job = next(j for j in snapshot.pending if j.job_id == pid)
    level = snapshot.config.qos_level(job.qos)
    if level is not None and victim.qos in level.preempt:
        return f"preempted for job {pid}: QOS {job.qos} may preempt QOS {victim.qos}"
    config = snapshot.config
    return preempt.why(job, victim, done.now, config, config.history(snapshot.history))


def explain(snapshot: Snapshot, now: float, job_id: str) -> Explanation:
    """Every factor and weight, every reason and the estimated start; KeyError if unknown."""
    return explain_pass(Pass(snapshot, now).run(), job_id)


def explain_pass(done: Pass, job_id: str) -> Explanation:
    """`explain` from a pass that has run; KeyError if the pass did not see the job."""
    snapshot, now = done.snapshot, done.now
    policy = snapshot.config.policy
    prio = done.priority.get(job_id)
    if prio is None:
        victim = next((r for r in snapshot.running if r.job_id == job_id), None)
        if victim is not None:
            why = tuple(
                _preempted(done, pid, victim)
                for pid, ids in done.preempt_for.items()
                if job_id in ids
            )
            return Explanation(job_id, "running", policy, 0.0, (), (), None, 0, 0, details=why)
        raise KeyError(job_id)
    job = next(j for j in snapshot.pending if j.job_id == job_id)
    rank = list(done.priority).index(job_id) + 1  # filled in priority order
    facts = factors(snapshot, now, job)
    n = len(snapshot.pending)
    info = done.pending.get(job_id)
    if info is None:
        return Explanation(job_id, "starting", policy, prio, facts, (), now, rank, n)
    reasons, est = info.reasons, info.est_start
    waits_for_gpus = reasons in ((filters.RESOURCES,), (filters.PRIORITY,))
    if not waits_for_gpus and not done.cluster.can_fit_now(
        job.nodes, job.gpus_per_node, job.gpu_type
    ):
        reasons += (filters.RESOURCES,)
    if est is None and waits_for_gpus and policy in ("default", "las"):
        slot = done.timeline().reserve(job, done.cluster.types_for(job.gpu_type))
        est = None if slot is None else slot.start
    held = next((r.nodes for r in done.reservations if r.job_id == job_id), ())
    return Explanation(
        job_id,
        "pending",
        policy,
        prio,
        facts,
        reasons,
        est,
        rank,
        n,
        held,
        done.preempt_for.get(job_id, ()),
        0 < snapshot.config.starvation() <= now - job.submit_ts,
        tuple(detail(r, job, snapshot, rank - 1) for r in reasons),
    )
