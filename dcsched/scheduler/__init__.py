"""The scheduling policy core: pure functions over plain data (no I/O, no asyncio)."""

from dcsched.scheduler.config import AccountConfig, Limits, QosLevel, SchedulerConfig, Weights
from dcsched.scheduler.decide import decide
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

__all__ = [
    "AccountConfig",
    "Decisions",
    "JobRequest",
    "Limits",
    "NodePart",
    "NodeView",
    "PendingInfo",
    "QosLevel",
    "Reservation",
    "RunningJob",
    "SchedulerConfig",
    "Snapshot",
    "Start",
    "Usage",
    "Weights",
    "decide",
]
