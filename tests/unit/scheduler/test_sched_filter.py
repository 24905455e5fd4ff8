"""Filter step: every reason other than free GPUs, all of them, most important first."""

from __future__ import annotations

import pytest
from sched_builders import job, node, running

from dcsched.scheduler import AccountConfig, Limits, QosLevel, SchedulerConfig
from dcsched.scheduler.filter import (
    LimitState,
    constraint_reason,
    dependency_reason,
    job_reasons,
)
from dcsched.scheduler.score import Cluster


@pytest.mark.parametrize(
    ("depends", "finished", "active", "expected"),
    [
        ((), {}, set(), None),
        ((("afterok", "1"),), {"1": "COMPLETED"}, set(), None),
        ((("afterok", "1"),), {"1": "FAILED"}, set(), "DependencyNeverSatisfied"),
        ((("afterok", "1"),), {}, {"1"}, "Dependency"),
        ((("afterany", "1"),), {"1": "CANCELLED"}, set(), None),
        ((("afternotok", "1"),), {"1": "TIMEOUT"}, set(), None),
        ((("afternotok", "1"),), {"1": "COMPLETED"}, set(), "DependencyNeverSatisfied"),
        # a job nobody knows will never finish
        ((("afterany", "ghost"),), {}, set(), "DependencyNeverSatisfied"),
        ((("before", "1"),), {"1": "COMPLETED"}, set(), "DependencyNeverSatisfied"),
        # after: started (running, or ended even without running), else waiting
        ((("after", "1"),), {"1": "COMPLETED"}, set(), None),
        ((("after", "1"),), {"1": "CANCELLED"}, set(), None),
        ((("after", "1"),), {}, {"1"}, "Dependency"),
        ((("after", "ghost"),), {}, set(), "DependencyNeverSatisfied"),
        # all must hold: one still running is enough to wait, one impossible is never
        ((("afterok", "1"), ("afterok", "2")), {"1": "COMPLETED"}, {"2"}, "Dependency"),
        ((("afterok", "1"), ("afterok", "2")), {"1": "FAILED"}, {"2"}, "DependencyNeverSatisfied"),
    ],
)
def test_dependencies(depends: tuple, finished: dict, active: set, expected: str | None) -> None:
    assert dependency_reason(job("j", depends=depends), finished, active) == expected


def test_after_holds_once_the_job_runs() -> None:
    j = job("j", depends=(("after", "1"),))
    assert dependency_reason(j, {}, {"1"}, started={"1"}) is None


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (job("j", 8), None),
        (job("j", 9), "BadConstraints"),
        (job("j", 8, nodes=3), "BadConstraints"),
        (job("j", 1, gpu_type="B200"), "BadConstraints"),
        # the hardware exists but is drained or unhealthy now
        (job("j", 8, nodes=2), "ReqNodeNotAvail"),
        (job("j", 4, gpu_type="A100"), "ReqNodeNotAvail"),
        (job("j", 2, gpu_type="A100"), None),
    ],
)
def test_constraints(request_: object, expected: str | None) -> None:
    cluster = Cluster(
        [
            node("a"),
            node("b", state="drained"),
            node("c", 4, gpu_type="A100", unhealthy=[0, 1]),
        ]
    )
    assert constraint_reason(request_, cluster) == expected  # type: ignore[arg-type]


CAPS = SchedulerConfig(
    limits=Limits(max_gpus_per_user=8, max_jobs_per_user=2),
    accounts={"small": AccountConfig(max_gpus=4)},
    qos={"debug": QosLevel(max_gpus_per_user=2, grp_jobs=1)},
)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (job("j", 4, user="bob"), []),
        (job("j", 5, user="alice"), ["AssocMaxGRESPerUser", "AssocMaxJobsLimit"]),
        (job("j", 2, user="carol", account="small"), ["AssocGrpGRES"]),
        (job("j", 1, user="dave", qos="debug"), ["QOSGrpJobs"]),
        (job("j", 4, user="erin", qos="debug"), ["QOSMaxGRESPerUser", "QOSGrpJobs"]),
    ],
)
def test_limits_report_every_cap_hit(request_: object, expected: list[str]) -> None:
    run = [
        running("r1", {"n": [0, 1]}, user="alice"),
        running("r2", {"n": [2, 3]}, user="alice"),
        running("r3", {"n": [4, 5, 6]}, user="zed", account="small"),
        running("r4", {"n": [7]}, user="zed", qos="debug"),
    ]
    state = LimitState.build(CAPS, tuple(run))
    assert state.reasons(request_) == expected  # type: ignore[arg-type]


def test_limits_count_jobs_started_in_the_pass() -> None:
    state = LimitState.build(CAPS, ())
    assert state.reasons(job("j", 4, user="bob")) == []
    state.add("a", "bob", "normal", 4)
    state.add("a", "bob", "normal", 4)
    assert state.reasons(job("j", 1, user="bob")) == ["AssocMaxGRESPerUser", "AssocMaxJobsLimit"]


def test_terminating_jobs_do_not_count_against_limits() -> None:
    run = (running("r", {"n": range(8)}, user="alice", terminating=True),)
    assert LimitState.build(CAPS, run).reasons(job("j", 8, user="alice")) == []


def test_job_reasons_lists_all_of_them_most_important_first() -> None:
    cfg = SchedulerConfig()
    cluster = Cluster([node("a")])
    j = job("j", 16, held=True, qos="nope", depends=(("afterok", "x"),))
    got = job_reasons(j, cfg, cluster, LimitState.build(cfg, ()), {}, {"x"})
    assert got == ["JobHeldUser", "Dependency", "InvalidQOS", "BadConstraints"]
