"""Reserve step: timelines from time limits, earliest starts and the backfill check."""

from __future__ import annotations

import pytest
from sched_builders import H, busy, job, node, running

from dcsched.scheduler.reserve import Slot, Timeline
from dcsched.scheduler.score import Cluster


def timeline(now: float = 0.0) -> Timeline:
    # a: 8 busy until 10 h; b: 4 busy until 2 h (limits, whatever the jobs really take)
    cluster = Cluster([busy("a"), busy("b", used=4)])
    run = [
        running("r1", {"a": range(8)}, limit=10 * H),
        running("r2", {"b": range(4)}, start=-H, limit=3 * H),
    ]
    return Timeline(cluster, run, now, [])


@pytest.mark.parametrize(
    ("node_", "gpus", "expected"),
    [(0, 1, 10 * H), (0, 8, 10 * H), (1, 4, 0.0), (1, 5, 2 * H), (1, 9, None)],
)
def test_earliest_on_nodes_without_reservations(node_: int, gpus: int, expected: object) -> None:
    assert timeline().earliest(node_, gpus, H) == expected


def test_a_reservation_bounds_backfill_by_time_limit() -> None:
    tl = timeline()
    big = job("big", 8, nodes=2, limit=5 * H)
    slot = tl.reserve(big, ["H100"])
    assert slot == Slot(10 * H, (0, 1))
    tl.hold(big, slot)
    # b has 4 free now; a job may use them only if its limit ends by the reservation
    assert tl.backfill_ok(1, 4, 10 * H)
    assert not tl.backfill_ok(1, 4, 10 * H + 1)
    # a later job goes in the gap before the reservation if it fits, else after it
    assert tl.earliest(1, 8, H) == 2 * H
    assert tl.earliest(1, 8, 9 * H) == 15 * H
    assert tl.earliest(1, 4, 8 * H) == 0.0  # fits now and ends before the reservation


def test_overdue_jobs_release_now_and_terminating_ones_too() -> None:
    cluster = Cluster([busy("a", used=8)])
    run = [
        running("late", {"a": range(4)}, start=-5 * H, limit=H),
        running("term", {"a": range(4, 8)}, limit=9 * H, terminating=True),
    ]
    assert Timeline(cluster, run, 0.0, []).earliest(0, 8, H) == 0.0


def test_release_now_moves_a_preempted_job() -> None:
    cluster = Cluster([busy("a")])
    run = [running("r", {"a": range(8)}, limit=10 * H)]
    tl = Timeline(cluster, run, 0.0, [])
    assert tl.earliest(0, 8, H) == 10 * H
    tl.release_now("r", run)
    assert tl.earliest(0, 8, H) == 0.0


def test_multi_node_start_needs_all_nodes_free_for_the_whole_limit() -> None:
    cluster = Cluster([node("a"), node("b"), busy("c")])
    run = [running("r", {"c": range(8)}, limit=4 * H)]
    tl = Timeline(cluster, run, 0.0, [])
    first = job("first", 8, limit=3 * H)
    tl.hold(first, Slot(H, (1,)))  # b is held over [1 h, 4 h)
    got = tl.reserve(job("two", 8, nodes=2, limit=2 * H), ["H100"])
    # a is free now but b only from 4 h; c frees at 4 h too: the pair starts at 4 h
    assert got is not None and got.start == 4 * H
