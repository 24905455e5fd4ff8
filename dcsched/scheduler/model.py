"""Plain data the scheduler core reads and returns: no I/O, no clock of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dcsched.scheduler.config import SchedulerConfig

__all__ = [
    "Decisions",
    "JobRequest",
    "NodePart",
    "NodeView",
    "PendingInfo",
    "Reservation",
    "RunningJob",
    "SchedulerConfig",
    "Snapshot",
    "Start",
    "Usage",
]

# (node name, GPU indices on that node); a job's allocation lists these in node-rank order.
NodePart = tuple[str, tuple[int, ...]]

# Dependency kinds a JobRequest may name, as in Slurm's --dependency.
# "after": the job has started (or ended).
DEPENDENCY_KINDS = ("afterok", "afterany", "afternotok", "after")


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    gpu_type: str
    gpus: tuple[int, ...]
    free: frozenset[int]
    state: str = "up"  # "up" | "drained" | "down"
    unhealthy: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job that is not running: pending or held."""

    job_id: str
    user: str
    account: str
    submit_ts: float
    nodes: int
    gpus_per_node: int
    time_limit_s: float
    qos: str = "normal"
    gpu_type: str | None = None
    nice: int = 0
    held: bool = False
    # ((kind, job_id), ...) with kind in DEPENDENCY_KINDS; all must hold (Slurm's ",").
    depends: tuple[tuple[str, str], ...] = ()
    # may be preempted by a QOS allowed to preempt this job's QOS once it runs
    preemptible: bool = False
    name: str = ""
    # an array task: its array's id, and how many of the array's tasks may run at once
    array_id: str | None = None
    array_limit: int | None = None
    # Slurm's singleton: waits while a job of the same name and user runs
    singleton: bool = False
    # earlier runs of a requeued job: how many, and how many seconds they ran in all
    restarts: int = 0
    attained_s: float = 0.0

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True, slots=True)
class RunningJob:
    job_id: str
    user: str
    account: str
    start_ts: float
    time_limit_s: float
    allocation: tuple[NodePart, ...]
    qos: str = "normal"
    preemptible: bool = False
    gpu_type: str = ""
    # already signalled (preempted or cancelled): its GPUs count as released now
    terminating: bool = False
    name: str = ""
    array_id: str | None = None
    # as in JobRequest: earlier runs, and the seconds they ran (this run not included)
    restarts: int = 0
    attained_s: float = 0.0
    # GPUs on all its nodes: counted once (a pass asks for it millions of times in a replay)
    gpus: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", sum(len(g) for _, g in self.allocation))


@dataclass(frozen=True, slots=True)
class Usage:
    """Decayed, billed GPU-seconds per (account, user) as of `ts`: the fair-share state.

    Plain data so the daemon can persist it as JSON (`to_dict` / `from_dict`).
    """

    ts: float = 0.0
    gpu_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        accounts: dict[str, dict[str, float]] = {}
        for (account, user), value in sorted(self.gpu_seconds.items()):
            accounts.setdefault(account, {})[user] = value
        return {"ts": self.ts, "accounts": accounts}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Usage:
        try:
            ts = float(d["ts"])
            values = {
                (str(a), str(u)): float(v)
                for a, users in d["accounts"].items()
                for u, v in users.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"usage: expected {{'ts': float, 'accounts': {{a: {{u: v}}}}}}: {exc}"
            ) from exc
        return cls(ts, values)


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[NodeView, ...]
    # ties in priority keep this order: pass pending jobs in submission order
    pending: tuple[JobRequest, ...]
    running: tuple[RunningJob, ...] = ()
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    usage: Usage = field(default_factory=Usage)
    # final state ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", ...) of every
    # finished job that a pending job depends on
    finished: Mapping[str, str] = field(default_factory=dict)
    # (user, time limit s) -> run times (s) of that user's last completed jobs with that
    # limit, oldest first, at most estimate.HISTORY_RUNS: `las` estimates remaining runs
    history: Mapping[tuple[str, float], tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Start:
    job_id: str
    allocation: tuple[NodePart, ...]


@dataclass(frozen=True, slots=True)
class PendingInfo:
    # Slurm-style codes, most important first: reasons[0] is the one `dcctl queue` shows
    reasons: tuple[str, ...]
    priority: float = 0.0
    est_start: float | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """GPUs held for a pending job from `start_ts`; lower jobs may backfill around it."""

    job_id: str
    start_ts: float
    # (node name, GPU count) in node-rank order; which GPUs is decided at start
    nodes: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Decisions:
    starts: tuple[Start, ...] = ()
    pending: Mapping[str, PendingInfo] = field(default_factory=dict)
    # running job ids to preempt (SIGTERM, grace, requeue); their GPUs serve `reservations`
    preempt: tuple[str, ...] = ()
    reservations: tuple[Reservation, ...] = ()
