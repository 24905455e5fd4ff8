"""GPU health policy: which faults an agent reports drain their node ([daemon] drain_on,
ignore_xids). Pure: the daemon records every fault and asks `drain_reason` whether to drain."""

from __future__ import annotations

from dataclasses import dataclass

from dcsched.protocol.messages import GpuFault

# What an agent reports (GpuFault.kind, and GpuSample.health while it lasts).
FAULT_KINDS = ("xid", "ecc", "thermal", "power", "lost")
# Faults that last only while the agent's samples show them (a slowdown ends when the GPU
# cools); the others mark the GPU unhealthy until an admin resumes the node.
TRANSIENT = frozenset({"thermal", "power"})


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    drain_on: frozenset[str]
    ignore_xids: frozenset[int]


def describe(fault: GpuFault) -> str:
    what = {
        "xid": f"XID {fault.code}" if fault.code is not None else "XID error",
        "ecc": "uncorrectable ECC errors",
        "thermal": "thermal slowdown",
        "power": "power slowdown",
        "lost": "GPU lost (fallen off the bus)",
    }.get(fault.kind, fault.kind)
    extra = f" ({fault.detail})" if fault.detail and fault.detail not in what else ""
    return f"GPU {fault.gpu_index}: {what}{extra}"


def drain_reason(policy: HealthPolicy, fault: GpuFault) -> str | None:
    """The drain reason for this fault, or None when the policy does not drain on it. XIDs
    in ignore_xids are the application's own (an illegal address, a killed context): they
    say nothing of the GPU."""
    if fault.kind not in policy.drain_on:
        return None
    if fault.kind == "xid" and fault.code in policy.ignore_xids:
        return None
    return f"unhealthy: {describe(fault)}"
