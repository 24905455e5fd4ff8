"""The job state machine (Slurm's names). Only the transitions listed here are allowed."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    HELD = "HELD"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    REQUEUED = "REQUEUED"


S = JobState
TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL})
ACTIVE = frozenset({S.STARTING, S.RUNNING, S.COMPLETING})  # holding GPUs
QUEUED = frozenset({S.PENDING, S.HELD, S.REQUEUED})  # waiting for GPUs

_ENDS = TERMINAL | {S.COMPLETING}
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.HELD, S.STARTING, S.CANCELLED, S.FAILED}),
    S.HELD: frozenset({S.PENDING, S.CANCELLED}),
    S.REQUEUED: frozenset({S.PENDING, S.HELD, S.STARTING, S.CANCELLED}),
    S.STARTING: frozenset({S.RUNNING, S.REQUEUED} | _ENDS),
    S.RUNNING: frozenset({S.REQUEUED} | _ENDS),
    S.COMPLETING: TERMINAL | {S.REQUEUED},
}


class TransitionError(Exception):
    def __init__(self, job_id: int, old: str, new: str) -> None:
        super().__init__(f"job {job_id} cannot go from {old} to {new}")
        self.job_id, self.old, self.new = job_id, old, new


def check_transition(job_id: int, old: str, new: str) -> None:
    if JobState(new) not in TRANSITIONS.get(JobState(old), frozenset()):
        raise TransitionError(job_id, old, new)
