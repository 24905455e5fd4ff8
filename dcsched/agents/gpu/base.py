"""The interface every GPU backend implements: inventory, samples, and faults."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from dcsched.protocol.messages import GpuFault, GpuInfo, GpuSample

FaultHandler = Callable[[GpuFault], None]


class GpuBackend(Protocol):
    name: str
    simulated: bool

    def inventory(self) -> list[GpuInfo]: ...

    def driver_version(self) -> str: ...

    def sample(self, now: float, busy: Mapping[int, Sequence[int]]) -> list[GpuSample]:
        """One sample per GPU. `busy` maps a GPU index to the pids of the job that holds it."""
        ...

    def watch_faults(self, handler: FaultHandler) -> None:
        """Start reporting faults; `handler` may be called from another thread."""
        ...

    def close(self) -> None: ...
