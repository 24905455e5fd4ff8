"""Score step: where a job goes. Best fit on one node; multi-node takes exact fits first.

A pass works on a `Cluster`: the free, usable GPUs of every node, indexed by free count
per GPU type, so that finding the best-fit node costs O(GPUs per node), not O(nodes).
Nodes that carry a backfill reservation are "pinned": taken out of the index and checked
one by one against their reservation timeline (there are few of them).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dcsched.scheduler.model import NodeView

# ok(node index, GPUs, end time) -> may the job use that pinned node now?
PinnedCheck = Callable[[int, int, float], bool]


@dataclass(slots=True)
class _Index:
    """Unpinned usable nodes of one GPU type by free count; heaps give the lowest rank."""

    members: list[set[int]]
    heaps: list[list[int]]
    # every usable node (pinned too) by free count: the O(G) "can it fit at all" test
    counts: list[int]
    pinned: set[int] = field(default_factory=set)

    def add(self, node: int, free: int) -> None:
        self.members[free].add(node)
        heapq.heappush(self.heaps[free], node)

    def lowest(self, free: int) -> int | None:
        heap, members = self.heaps[free], self.members[free]
        while heap:
            if heap[0] in members:
                return heap[0]
            heapq.heappop(heap)  # stale: the node moved to another count since
        return None


class Cluster:
    """Mutable free-GPU state of one scheduling pass."""

    def __init__(self, nodes: Sequence[NodeView]) -> None:
        self.views = nodes
        self.rank = {n.name: i for i, n in enumerate(nodes)}
        self._no_fit: set[tuple[int, int, str | None]] = set()
        # per type: usable node indices, in rank order
        self.usable: dict[str, list[int]] = {}
        self.free: list[list[int]] = []
        self.types: list[str] = [n.gpu_type for n in nodes]
        self.index: dict[str, _Index] = {}
        # per type: (largest node, node count) of the hardware, whatever its state
        self.hardware: dict[str, tuple[int, int]] = {}
        # per type: usable (up, healthy) GPU capacity of each usable node
        self.capacity: dict[str, list[int]] = {}
        sizes: dict[str, int] = {}
        for n in nodes:
            big, count = self.hardware.get(n.gpu_type, (0, 0))
            self.hardware[n.gpu_type] = (max(big, len(n.gpus)), count + 1)
            sizes[n.gpu_type] = max(sizes.get(n.gpu_type, 0), len(n.gpus))
        for t, size in sizes.items():
            self.index[t] = _Index(
                [set() for _ in range(size + 1)], [[] for _ in range(size + 1)], [0] * (size + 1)
            )
            self.capacity[t] = []
        for i, n in enumerate(nodes):
            if n.state != "up":
                self.free.append([])
                continue
            usable = sorted(n.free - n.unhealthy) if n.unhealthy else sorted(n.free)
            self.free.append(usable)
            idx = self.index[n.gpu_type]
            idx.add(i, len(usable))
            idx.counts[len(usable)] += 1
            self.usable.setdefault(n.gpu_type, []).append(i)
            self.capacity[n.gpu_type].append(len(n.gpus) - len(n.unhealthy & set(n.gpus)))
        # per type: [p] = how many usable nodes have at least p healthy GPUs
        self.at_least: dict[str, list[int]] = {}
        for t, caps in self.capacity.items():
            at_least = [0] * (len(self.index[t].counts) + 1)
            for c in caps:
                at_least[c] += 1
            for p in range(len(at_least) - 2, -1, -1):
                at_least[p] += at_least[p + 1]
            self.at_least[t] = at_least

    def types_for(self, gpu_type: str | None) -> list[str]:
        if gpu_type is None:
            return list(self.index)
        return [gpu_type] if gpu_type in self.index else []

    def can_fit_now(self, nodes: int, per_node: int, gpu_type: str | None) -> bool:
        """Necessary condition, ignoring reservations: enough nodes with enough free GPUs."""
        shape = (nodes, per_node, gpu_type)
        if shape in self._no_fit:
            return False  # free GPUs only shrink during a pass
        for t in self.types_for(gpu_type):
            counts = self.index[t].counts
            if per_node < len(counts) and sum(counts[per_node:]) >= nodes:
                return True
        self._no_fit.add(shape)
        return False

    def pin(self, node: int) -> None:
        idx = self.index[self.types[node]]
        if node not in idx.pinned:
            idx.pinned.add(node)
            idx.members[len(self.free[node])].discard(node)

    def take(self, node: int, count: int) -> tuple[int, ...]:
        free = self.free[node]
        idx = self.index[self.types[node]]
        before = len(free)
        got, self.free[node] = tuple(free[:count]), free[count:]
        idx.counts[before] -= 1
        idx.counts[before - count] += 1
        if node not in idx.pinned:
            idx.members[before].discard(node)
            idx.add(node, before - count)
        return got

    def best_single(
        self, per_node: int, gpu_type: str | None, end: float, ok: PinnedCheck | None
    ) -> int | None:
        """The usable node with the fewest free GPUs that still fit (lowest rank on ties)."""
        best: tuple[int, int] | None = None
        for t in self.types_for(gpu_type):
            idx = self.index[t]
            for free in range(per_node, len(idx.members)):
                if best is not None and free >= best[0]:
                    break
                if idx.members[free]:
                    node = idx.lowest(free)
                    if node is not None:
                        best = (free, node)
                        break
            if ok is not None:
                for node in idx.pinned:
                    free = len(self.free[node])
                    better = best is None or (free, node) < best
                    if free >= per_node and better and ok(node, per_node, end):
                        best = (free, node)
        return None if best is None else best[1]

    def best_multi(
        self, nodes: int, per_node: int, gpu_type: str | None, end: float, ok: PinnedCheck | None
    ) -> list[int] | None:
        """`nodes` distinct nodes of one GPU type, exact fits (whole nodes) first."""
        best: list[tuple[int, int]] | None = None
        for t in self.types_for(gpu_type):
            idx = self.index[t]
            if per_node >= len(idx.counts) or sum(idx.counts[per_node:]) < nodes:
                continue
            picked: list[tuple[int, int]] = []
            for free in range(per_node, len(idx.members)):
                picked.extend((free, n) for n in idx.members[free])
                if len(picked) >= nodes and not idx.pinned:
                    break
            if ok is not None:
                picked.extend(
                    (len(self.free[n]), n)
                    for n in idx.pinned
                    if len(self.free[n]) >= per_node and ok(n, per_node, end)
                )
            if len(picked) >= nodes:
                picked.sort()
                chosen = picked[:nodes]
                if best is None or chosen < best:
                    best = chosen
        if best is None:
            return None
        return sorted(n for _, n in best)
