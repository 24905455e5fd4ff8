"""The daemon's view of the nodes: inventory and liveness from the agents' retained status,
freshness from telemetry, drain flags from the store."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dcsched.daemon.ingest import Ingest
from dcsched.protocol.messages import HostStatus
from dcsched.scheduler.unsatisfiable import never_fits

_GPU_TYPE = re.compile(r"\b([A-Z]{1,3}\d{2,4}[A-Z]*)\b")


def gpu_type_of(model: str) -> str:
    """The short type a job file names ("H100") from a model string ("NVIDIA H100 80GB HBM3")."""
    m = _GPU_TYPE.search(model.replace("-", " "))
    return m.group(1) if m else model


@dataclass(slots=True)
class Node:
    host: str
    status: HostStatus
    online: bool
    drained: bool = False
    drain_reason: str = ""
    seen: float = field(default_factory=time.monotonic)  # last status or telemetry
    # Derived from the status once per status, not per scheduling pass.
    gpu_type: str = field(init=False)
    gpu_indexes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.set_status(self.status)

    def set_status(self, st: HostStatus) -> None:
        self.status = st
        self.gpu_type = gpu_type_of(st.gpus[0].model) if st.gpus else ""
        self.gpu_indexes = tuple(g.index for g in st.gpus)


class Cluster:
    def __init__(self, ingest: Ingest, node_timeout_s: float) -> None:
        self.nodes: dict[str, Node] = {}
        # host -> GPU index -> what went wrong: GPUs an agent reported a fault on, avoided by
        # the scheduler until an admin resumes the node (memory only: a drain is in the store)
        self.faults: dict[str, dict[int, str]] = {}
        self.ingest = ingest
        self.node_timeout_s = node_timeout_s
        # never_fits' answers per request shape, while the nodes' GPU types and counts stay
        # as they were: a submission would otherwise walk every node (1,000 of them).
        self._fits: dict[tuple[int, int, str | None], str | None] = {}

    def load(
        self, host: str, status: dict[str, Any], online: bool, drained: bool, reason: str
    ) -> None:
        """A node from the store at start-up; its liveness is re-learnt from the broker."""
        st = msgspec.convert(status, HostStatus)
        self.nodes[host] = Node(host, st, online, drained, reason)
        self._fits.clear()

    def on_status(self, st: HostStatus) -> bool:
        """Returns True when the node's schedulable state changed."""
        node = self.nodes.get(st.host)
        online = st.state == "online"
        if node is None:
            self.nodes[st.host] = Node(st.host, st, online)
            self._fits.clear()
            return online
        changed = node.online != online or len(node.status.gpus) != len(st.gpus)
        if st.state == "offline":
            # The will carries no inventory: keep what the node last told.
            st = msgspec.structs.replace(st, gpus=node.status.gpus, addr=node.status.addr)
        hardware = (node.gpu_type, len(node.status.gpus))
        node.set_status(st)
        node.online, node.seen = online, time.monotonic()
        if (node.gpu_type, len(node.status.gpus)) != hardware:
            self._fits.clear()
        return changed

    def never_fits(self, nodes: int, gpus_per_node: int, gpu_type: str | None) -> str | None:
        """Why no known node could ever run such a request (None: some could); see
        scheduler.unsatisfiable.never_fits."""
        key = (nodes, gpus_per_node, gpu_type)
        if key not in self._fits:
            if len(self._fits) > 10_000:
                self._fits.clear()
            hardware = [(n.gpu_type, len(n.status.gpus)) for n in self.nodes.values()]
            self._fits[key] = never_fits(
                nodes, gpus_per_node, gpu_type, [h for h in hardware if h[1]]
            )
        return self._fits[key]

    def gpu_type(self, host: str) -> str:
        node = self.nodes.get(host)
        return node.gpu_type if node else ""

    def is_online(self, host: str) -> bool:
        node = self.nodes.get(host)
        return node is not None and node.online

    def silent_for(self, host: str) -> float:
        """Seconds since the host last said anything (status or telemetry). An agent that
        went offline counts from its offline status: the host may be fine and its agent
        restarting, so its jobs are given node_timeout_s before they are declared lost."""
        node = self.nodes.get(host)
        if node is None:
            return float("inf")
        silent = time.monotonic() - node.seen
        age = self.ingest.age(host)
        return silent if age is None else min(silent, age)

    def state(self, node: Node) -> str:
        """up | drained | joining | down, as the scheduler sees it (it places jobs on "up"
        nodes only). A node is up once its status *and* its first telemetry have arrived:
        until then it is "joining" (its GPUs have no readings yet)."""
        if not node.online:
            return "down"
        if self.silent_for(node.host) > self.node_timeout_s:
            return "down"
        if self.ingest.age(node.host) is None:
            return "joining"
        return "drained" if node.drained else "up"

    def reported_jobs(self, host: str) -> list[str] | None:
        """The jobs the host's latest telemetry says it runs; None before any telemetry."""
        ht = self.ingest.hosts.get(host)
        return None if ht is None else [jp.job_id for jp in ht.latest.jobs]

    def unhealthy(self, host: str) -> frozenset[int]:
        faulty = self.faults.get(host)
        ht = self.ingest.hosts.get(host)
        reported = ht.unhealthy if ht is not None else frozenset()
        return reported.union(faulty) if faulty else reported
