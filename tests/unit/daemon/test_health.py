import pytest

from dcsched.daemon.health import HealthPolicy, describe, drain_reason
from dcsched.protocol.messages import GpuFault

POLICY = HealthPolicy(frozenset({"xid", "ecc", "lost"}), frozenset({13, 43}))


def fault(kind: str, code: int | None = None, detail: str = "") -> GpuFault:
    return GpuFault(host="h", gpu_index=3, ts=0.0, kind=kind, code=code, detail=detail)


@pytest.mark.parametrize(
    ("f", "reason"),
    [
        (fault("xid", 79), "unhealthy: GPU 3: XID 79"),
        (fault("xid", 13), None),  # the application's own error
        (fault("ecc"), "unhealthy: GPU 3: uncorrectable ECC errors"),
        (
            fault("lost", detail="GpuIsLost"),
            "unhealthy: GPU 3: GPU lost (fallen off the bus) (GpuIsLost)",
        ),
        (fault("thermal"), None),  # not in drain_on: marked unhealthy only
        (fault("power"), None),
    ],
)
def test_which_faults_drain(f: GpuFault, reason: str | None) -> None:
    assert drain_reason(POLICY, f) == reason


def test_a_detail_already_said_is_not_repeated() -> None:
    assert describe(fault("xid", 79, "XID 79")) == "GPU 3: XID 79"
    assert drain_reason(HealthPolicy(frozenset(), frozenset()), fault("xid", 79)) is None
