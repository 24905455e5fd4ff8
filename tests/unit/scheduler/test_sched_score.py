"""Score step: best-fit placement on the free GPUs of one pass."""

from __future__ import annotations

import pytest
from sched_builders import busy, node

from dcsched.scheduler.score import Cluster


@pytest.mark.parametrize(
    ("nodes", "gpus", "gpu_type", "expected"),
    [
        # best fit: the node with the fewest free GPUs that still fit
        ([busy("a", used=0), busy("b", used=6), busy("c", used=4)], 2, None, "b"),
        ([busy("a", used=0), busy("b", used=7), busy("c", used=4)], 2, None, "c"),
        # ties go to the lowest rank
        ([busy("a", used=4), busy("b", used=4)], 4, None, "a"),
        # nothing fits: a normal answer, not an exception
        ([busy("a", used=6), busy("b", used=7)], 4, None, None),
        # drained and down nodes are never used, even with free GPUs
        ([node("a", state="drained"), node("b", state="down"), busy("c", used=7)], 1, None, "c"),
        ([node("a", state="drained")], 1, None, None),
        # unhealthy GPUs do not count as free
        ([node("a", unhealthy=range(6)), busy("b", used=4)], 3, None, "b"),
        ([node("a", unhealthy=range(6)), busy("b", used=4)], 2, None, "a"),
        # GPU type constraint
        ([node("a", gpu_type="A100"), busy("b", used=4, gpu_type="H100")], 2, "H100", "b"),
        ([node("a", gpu_type="A100")], 2, "H100", None),
    ],
)
def test_best_single(nodes: list, gpus: int, gpu_type: str | None, expected: str | None) -> None:
    cluster = Cluster(nodes)
    got = cluster.best_single(gpus, gpu_type, 0.0, None)
    assert (None if got is None else nodes[got].name) == expected


@pytest.mark.parametrize(
    ("nodes", "count", "per_node", "expected"),
    [
        # whole nodes first: exact fits before partly used nodes
        ([node("a"), busy("b", used=4), node("c"), node("d")], 2, 8, ["a", "c"]),
        ([busy("a", used=4), node("b"), busy("c", used=2), node("d")], 2, 4, ["a", "c"]),
        ([node("a"), busy("b", used=1)], 2, 8, None),
        ([node("a"), node("b", state="down"), node("c")], 2, 8, ["a", "c"]),
    ],
)
def test_best_multi(nodes: list, count: int, per_node: int, expected: list[str] | None) -> None:
    cluster = Cluster(nodes)
    got = cluster.best_multi(count, per_node, None, 0.0, None)
    assert (None if got is None else [nodes[i].name for i in got]) == expected


def test_take_moves_the_node_between_buckets() -> None:
    cluster = Cluster([node("a"), busy("b", used=6)])
    assert cluster.take(0, 7) == (0, 1, 2, 3, 4, 5, 6)
    # a now has 1 free: best fit for 1 GPU picks it over b (2 free)
    assert cluster.best_single(1, None, 0.0, None) == 0
    assert cluster.best_single(2, None, 0.0, None) == 1
    assert not cluster.can_fit_now(1, 3, None)


def test_pinned_nodes_need_the_check() -> None:
    cluster = Cluster([node("a"), busy("b", used=7)])
    cluster.pin(0)
    assert cluster.best_single(4, None, 0.0, None) is None
    assert cluster.best_single(4, None, 0.0, lambda n, g, end: True) == 0
    assert cluster.best_single(4, None, 0.0, lambda n, g, end: False) is None
    # the pinned node still counts for the quick "could it fit at all" test
    assert cluster.can_fit_now(1, 8, None)
