"""never_fits: a request that no node of the cluster could ever run, said with the numbers.

The hardware is every known node whatever its state (down and drained nodes count: they may
come back). A multi-node job runs on nodes of one GPU type, as `filter.constraint_reason`.
The daemon refuses such a job at submit; `explain` gives the same words for BadConstraints.
"""

from __future__ import annotations

from collections.abc import Iterable


def never_fits(
    nodes: int, gpus_per_node: int, gpu_type: str | None, hardware: Iterable[tuple[str, int]]
) -> str | None:
    """None when some nodes could run it; else why not. `hardware`: (GPU type, GPUs) per
    node. An empty cluster proves nothing (its nodes have not joined yet): None."""
    sizes: dict[str, list[int]] = {}
    for t, gpus in hardware:
        sizes.setdefault(t, []).append(gpus)
    if not sizes:
        return None
    if gpu_type is not None and gpu_type not in sizes:
        have = ", ".join(f"{t} ({len(s)} nodes)" for t, s in sorted(sizes.items()))
        return f"no node has GPU type {gpu_type!r}; the cluster has {have}"
    types = [gpu_type] if gpu_type is not None else sorted(sizes)
    of = f" {gpu_type}" if gpu_type is not None else ""
    largest = max(max(sizes[t]) for t in types)
    if gpus_per_node > largest:
        return (
            f"asks {gpus_per_node} GPUs per node; the largest{of} node has {largest} "
            f"({sum(len(sizes[t]) for t in types)}{of} nodes)"
        )
    big_enough = {t: sum(1 for g in sizes[t] if g >= gpus_per_node) for t in types}
    best = max(big_enough, key=lambda t: big_enough[t])
    if nodes > big_enough[best]:
        kind = f" {best}" if gpu_type is not None or len(sizes) > 1 else ""
        return (
            f"asks {nodes} nodes with {gpus_per_node} GPUs each; the cluster has "
            f"{big_enough[best]}{kind} nodes with at least {gpus_per_node} GPUs"
        )
    return None
