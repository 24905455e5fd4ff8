"""Preemption plan: opted-in victims of preemptable QOS, youngest first, fewest needed."""

from __future__ import annotations

import pytest
from sched_builders import H, busy, job, running

from dcsched.scheduler import QosLevel, SchedulerConfig
from dcsched.scheduler.preempt import plan
from dcsched.scheduler.score import Cluster

CFG = SchedulerConfig(
    qos={"high": QosLevel(priority=10, preempt=("low",)), "low": QosLevel(), "mid": QosLevel()}
)


def victim(jid: str, node: str, gpus: range, start: float, **kw: object) -> object:
    return running(jid, {node: gpus}, start=start, limit=10 * H, qos="low", preemptible=True, **kw)


@pytest.mark.parametrize(
    ("want", "run", "expected"),
    [
        # one node: the youngest victims until enough GPUs
        (4, [victim("old", "a", range(4), 0), victim("new", "a", range(4, 8), 5)], ("new",)),
        (8, [victim("old", "a", range(4), 0), victim("new", "a", range(4, 8), 5)], ("new", "old")),
        # the node needing fewer victims wins
        (
            4,
            [
                victim("a1", "a", range(2), 9),
                victim("a2", "a", range(2, 8), 0),
                victim("b1", "b", range(8), 1),
            ],
            ("b1",),
        ),
        # a terminating job's GPUs are already coming: nothing more to stop
        (
            4,
            [victim("t", "a", range(4), 0, terminating=True), victim("x", "a", range(4, 8), 5)],
            None,
        ),
        # not opted in, or a QOS high may not preempt
        (4, [running("n", {"a": range(8)}, qos="low")], None),
        (4, [running("m", {"a": range(8)}, qos="mid", preemptible=True)], None),
    ],
)
def test_plan(want: int, run: list, expected: tuple[str, ...] | None) -> None:
    got = plan(job("h", want, qos="high"), Cluster([busy("a"), busy("b")]), run, CFG, set())
    assert (None if got is None else got.victims) == expected


def test_a_qos_without_preempt_never_preempts() -> None:
    run = [victim("v", "a", range(8), 0)]
    assert plan(job("j", 4), Cluster([busy("a")]), run, CFG, set()) is None
