"""never_fits: what no node of the cluster could ever run, with the numbers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dcsched.daemon.api import Api
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.errors import InvalidRequest
from dcsched.daemon.ingest import Ingest
from dcsched.daemon.jobs import Caller
from dcsched.protocol.jobspec import validate_spec
from dcsched.protocol.messages import GpuInfo, HostStatus
from dcsched.scheduler.unsatisfiable import never_fits

FOUR = [("H100", 4)] * 3 + [("A100", 8)]


@pytest.mark.parametrize(
    ("nodes", "gpus", "gpu_type", "hardware", "expected"),
    [
        (1, 4, None, FOUR, None),
        (3, 4, "H100", FOUR, None),
        (1, 8, None, FOUR, None),
        (1, 16, None, FOUR, "asks 16 GPUs per node; the largest node has 8 (4 nodes)"),
        (1, 8, "H100", FOUR, "asks 8 GPUs per node; the largest H100 node has 4 (3 H100 nodes)"),
        (4, 4, "H100", FOUR, "asks 4 nodes with 4 GPUs each; the cluster has 3 H100 nodes"),
        (2, 8, None, FOUR, "asks 2 nodes with 8 GPUs each; the cluster has 1 A100 nodes"),
        (1, 1, "B200", FOUR, "no node has GPU type 'B200'; the cluster has A100 (1 nodes), H100"),
        (64, 64, "B200", [], None),  # no node has joined: nothing is known yet
        (2, 1, None, [("H100", 4)], "asks 2 nodes with 1 GPUs each; the cluster has 1 nodes"),
    ],
)
def test_never_fits(
    nodes: int,
    gpus: int,
    gpu_type: str | None,
    hardware: list[tuple[str, int]],
    expected: str | None,
) -> None:
    got = never_fits(nodes, gpus, gpu_type, hardware)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.startswith(expected)


def _status(gpus: int) -> HostStatus:
    return HostStatus(
        host="n1",
        state="online",
        ts=0.0,
        gpus=[
            GpuInfo(index=i, uuid=f"GPU-{i}", model="NVIDIA H100 80GB HBM3") for i in range(gpus)
        ],
    )


def _api(gpus: int) -> Api:
    api = Api.__new__(Api)  # only the submit check: no daemon behind it
    cluster = Cluster(Ingest(), node_timeout_s=60.0)
    cluster.on_status(_status(gpus))
    api.d = SimpleNamespace(cluster=cluster)  # type: ignore[assignment]
    return api


@pytest.mark.parametrize(
    ("admin", "force", "hold", "refused"),
    [
        (False, False, False, True),
        (False, True, False, True),  # only an admin may force
        (False, False, True, True),
        (True, False, False, True),  # an admin too is told, unless they insist
        (True, True, False, False),
        (True, False, True, False),
    ],
)
def test_only_an_admin_queues_the_impossible(
    admin: bool, force: bool, hold: bool, refused: bool
) -> None:
    spec = validate_spec(
        {"name": "x", "command": ["t.py"], "hold": hold, "resources": {"gpus_per_node": 8}}
    )
    check = _api(4)._check_satisfiable
    who = Caller(1000, "alice", admin)
    if refused:
        with pytest.raises(InvalidRequest, match="the largest node has 4"):
            check(spec, who, force)
    else:
        check(spec, who, force)


def test_the_answer_follows_the_nodes_hardware() -> None:
    """Answers are kept per request shape: a node that comes back with more GPUs (or a new
    node) changes them."""
    spec = validate_spec({"name": "x", "command": ["t.py"], "resources": {"gpus_per_node": 8}})
    api = _api(4)
    who = Caller(1000, "alice", False)
    with pytest.raises(InvalidRequest, match="the largest node has 4"):
        api._check_satisfiable(spec, who, False)
    api.d.cluster.on_status(_status(8))
    api._check_satisfiable(spec, who, False)
