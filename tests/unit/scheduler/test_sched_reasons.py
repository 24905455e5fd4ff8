"""explain's words for each pending reason, with the numbers (asked vs free, use vs limit)."""

from __future__ import annotations

import pytest

from dcsched.scheduler import (
    JobRequest,
    NodeView,
    QosLevel,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    explain,
)
from dcsched.scheduler.config import Limits

NOW = 1000.0


def node(name: str, free: int, gpus: int = 4, state: str = "up") -> NodeView:
    return NodeView(name, "H100", tuple(range(gpus)), frozenset(range(free)), state)


def req(job_id: str, gpus: int = 2, nodes: int = 1, **kw: object) -> JobRequest:
    return JobRequest(job_id, "ann", "ml", 0.0, nodes, gpus, 3600.0, **kw)  # type: ignore[arg-type]


def running(job_id: str, host: str, gpus: int) -> RunningJob:
    return RunningJob(job_id, "ann", "ml", 0.0, 3600.0, ((host, tuple(range(gpus))),))


def why(snap: Snapshot, job_id: str = "j") -> dict[str, str]:
    e = explain(snap, NOW, job_id)
    return dict(zip(e.reasons, e.details, strict=True))


@pytest.mark.parametrize(
    ("snap", "reason", "words"),
    [
        (
            Snapshot((node("a", 1), node("b", 1)), (req("j", 2),), (running("r", "a", 3),)),
            "Resources",
            "asks 1 node(s) x 2 GPU(s); free now: 2 GPU(s) on 2 usable node(s), 0 of them with 2",
        ),
        (
            Snapshot((node("a", 4, state="drained"),), (req("j", 2),)),
            "ReqNodeNotAvail",
            "0 of 1 nodes large enough are up (a drained)",
        ),
        (
            Snapshot((node("a", 4),), (req("j", 8),)),
            "BadConstraints",
            "asks 8 GPUs per node; the largest node has 4 (1 nodes)",
        ),
        (
            Snapshot((node("a", 4),), (req("j", 1, held=True),)),
            "JobHeldUser",
            "dcctl release j",
        ),
        (
            Snapshot((node("a", 4),), (req("j", 1, qos="gold"),)),
            "InvalidQOS",
            "QOS 'gold' is not configured; known: normal",
        ),
        (
            Snapshot(
                (node("a", 0),),
                (req("j", 1, depends=(("afterok", "r"),)),),
                (running("r", "a", 4),),
            ),
            "Dependency",
            "waits for afterok:r (r is RUNNING)",
        ),
        (
            Snapshot(
                (node("a", 4),),
                (req("j", 1, depends=(("afterok", "x"),)),),
                finished={"x": "FAILED"},
            ),
            "DependencyNeverSatisfied",
            "afterok:x (x is FAILED); it can never be satisfied",
        ),
        (
            Snapshot(
                (node("a", 2),),
                (req("j", 2),),
                (running("r", "a", 2),),
                SchedulerConfig(limits=Limits(max_gpus_per_user=3)),
            ),
            "AssocMaxGRESPerUser",
            "ann in account ml runs 2 GPUs, asks 2 more; the limit is 3",
        ),
        (
            Snapshot(
                (node("a", 2),),
                (req("j", 1, qos="low"),),
                (),
                SchedulerConfig(qos={"low": QosLevel(grp_jobs=0)}),
            ),
            "QOSGrpJobs",
            "QOS low runs 0 jobs, asks 1 more; the limit is 0",
        ),
    ],
)
def test_each_reason_has_its_numbers(snap: Snapshot, reason: str, words: str) -> None:
    got = why(snap)
    assert reason in got, got
    assert words in got[reason]
