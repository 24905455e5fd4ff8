"""explain(snapshot, now, job_id): why a job waits, as JSON-friendly plain data.

It runs the same pass as `decide` (so the answer is what the scheduler does), asking it to
collect every reason for the one job and to estimate its start even below the backfill
depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dcsched.scheduler.decide import Pass
from dcsched.scheduler.model import Snapshot
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


def explain(snapshot: Snapshot, now: float, job_id: str) -> Explanation:
    """Every factor and weight, every reason and the estimated start; KeyError if unknown."""
    policy = snapshot.config.policy
    job = next((j for j in snapshot.pending if j.job_id == job_id), None)
    if job is None:
        if any(r.job_id == job_id for r in snapshot.running):
            return Explanation(job_id, "running", policy, 0.0, (), (), None, 0, 0)
        raise KeyError(job_id)
    done = Pass(snapshot, now, explain_job=job_id).run()
    rank = list(done.priority).index(job_id) + 1  # filled in priority order
    facts = factors(snapshot, now, job)
    prio = done.priority[job_id]
    n = len(snapshot.pending)
    if any(s.job_id == job_id for s in done.starts):
        return Explanation(job_id, "starting", policy, prio, facts, (), now, rank, n)
    info = done.pending[job_id]
    held = next((r.nodes for r in done.reservations if r.job_id == job_id), ())
    return Explanation(
        job_id,
        "pending",
        policy,
        prio,
        facts,
        info.reasons,
        info.est_start,
        rank,
        n,
        held,
        done.preempt_for.get(job_id, ()),
        0 < snapshot.config.starvation_s <= now - job.submit_ts,
        tuple(detail(r, job, snapshot, rank - 1) for r in info.reasons),
    )
