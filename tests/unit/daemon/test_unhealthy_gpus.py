"""Which GPUs the scheduler avoids on a node: those whose latest sample is not healthy (they
recover with the next healthy sample) and those an agent reported a fault on (until an
admin resumes the node)."""

from __future__ import annotations

import pytest

from dcsched.daemon.cluster import Cluster
from dcsched.daemon.ingest import Ingest
from dcsched.protocol.messages import GpuSample, Telemetry


def _telemetry(seq: int, health: dict[int, str]) -> Telemetry:
    gpus = [GpuSample(index=i, uuid=f"GPU-{i}", health=health.get(i, "ok")) for i in range(4)]
    return Telemetry(host="n1", ts=float(seq), seq=seq, gpus=gpus)


@pytest.mark.parametrize(
    ("samples", "faults", "expected"),
    [
        ([], {}, set()),  # no telemetry yet
        ([], {2: "xid 79"}, {2}),
        ([{}], {}, set()),
        ([{1: "ecc", 3: "thermal"}], {}, {1, 3}),
        ([{1: "ecc"}, {}], {}, set()),  # the next sample says healthy again
        ([{1: "ecc"}, {1: "ecc"}, {}], {2: "xid 79"}, {2}),  # a fault stays
        ([{0: "lost"}], {2: "xid 79"}, {0, 2}),
        ([{1: "ecc"}, {0: "power"}], {}, {0}),
    ],
)
def test_unhealthy_gpus(
    samples: list[dict[int, str]], faults: dict[int, str], expected: set[int]
) -> None:
    ingest = Ingest()
    cluster = Cluster(ingest, node_timeout_s=60.0)
    for seq, health in enumerate(samples, 1):
        assert ingest.handle(_telemetry(seq, health))
    if faults:
        cluster.faults["n1"] = dict(faults)
    got = cluster.unhealthy("n1")
    assert got == frozenset(expected)
    assert isinstance(got, frozenset)


def test_a_stale_sample_changes_nothing() -> None:
    ingest = Ingest()
    cluster = Cluster(ingest, node_timeout_s=60.0)
    ingest.handle(_telemetry(2, {1: "ecc"}))
    assert not ingest.handle(_telemetry(1, {}))
    assert cluster.unhealthy("n1") == {1}
