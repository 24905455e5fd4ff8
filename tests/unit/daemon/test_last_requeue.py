"""`last_requeue`: why a job's run was stopped and sent back to the queue, read from its
history (what `dcctl explain` shows of a requeued or preempted job)."""

from __future__ import annotations

from typing import Any

import pytest

from dcsched.daemon.readmodel import last_requeue

SUBMIT = ("PENDING", "submitted by ann")
RUN = [("STARTING", "allocated a"), ("RUNNING", "torchrun started on every node")]
PREEMPTED = ("COMPLETING", "preempted for job 9")
BACK = ("REQUEUED", "all nodes exited; back in the queue")


def events(*steps: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"ts": float(i), "state": s, "detail": d} for i, (s, d) in enumerate(steps)]


@pytest.mark.parametrize(
    ("steps", "going", "want"),
    [
        pytest.param([SUBMIT], False, None, id="never ran"),
        pytest.param([SUBMIT, *RUN], False, None, id="runs"),
        pytest.param([SUBMIT, *RUN, PREEMPTED, BACK], False, (3, "preempted for job 9"), id="back"),
        pytest.param(
            [SUBMIT, *RUN, PREEMPTED, ("COMPLETING", "node 1 (b) ended with signal 9"), BACK],
            False,
            (3, "preempted for job 9"),
            id="the first step of the stop says why",
        ),
        pytest.param(
            [SUBMIT, *RUN, PREEMPTED, BACK, ("REQUEUED", "updated by ann: nice 0 -> 5"), *RUN],
            False,
            (3, "preempted for job 9"),
            id="an earlier run's, while the next runs",
        ),
        pytest.param(
            [SUBMIT, *RUN, PREEMPTED, BACK, *RUN, ("COMPLETING", "requeued by bob")],
            True,
            (7, "requeued by bob"),
            id="on its way back now",
        ),
        pytest.param(
            [SUBMIT, *RUN, PREEMPTED, BACK, *RUN, ("COMPLETING", "cancelled by ann")],
            False,
            (3, "preempted for job 9"),
            id="a stop that is not a requeue does not count",
        ),
        pytest.param(
            [SUBMIT, *RUN, ("COMPLETING", "cancelled by ann"), ("CANCELLED", "all nodes exited")],
            False,
            None,
            id="cancelled",
        ),
    ],
)
def test_last_requeue(steps: list[tuple[str, str]], going: bool, want: Any) -> None:
    got = last_requeue(events(*steps), going)
    assert (None if got is None else (got["ts"], got["why"])) == want
