"""The scheduling policy core: pure functions over plain data (no I/O, no asyncio)."""

from dcsched.scheduler.config import AccountConfig, Limits, QosLevel, SchedulerConfig, Weights
from dcsched.scheduler.decide import Pass, decide
from dcsched.scheduler.explain import Explanation, explain, explain_pass
from dcsched.scheduler.fairshare import (
    FairshareReport,
    FairshareRow,
    accrue,
    charge,
    decay,
    fairshare_report,
)
from dcsched.scheduler.model import (
    Decisions,
    JobRequest,
    NodePart,
    NodeView,
    PendingInfo,
    Reservation,
    RunningJob,
    Snapshot,
    Start,
    Usage,
)
from dcsched.scheduler.sort import Factor

__all__ = [
    "AccountConfig",
    "Decisions",
    "Explanation",
    "Factor",
    "FairshareReport",
    "FairshareRow",
    "JobRequest",
    "Limits",
    "NodePart",
    "NodeView",
    "Pass",
    "PendingInfo",
    "QosLevel",
    "Reservation",
    "RunningJob",
    "SchedulerConfig",
    "Snapshot",
    "Start",
    "Usage",
    "Weights",
    "accrue",
    "charge",
    "decay",
    "decide",
    "explain",
    "explain_pass",
    "fairshare_report",
]
