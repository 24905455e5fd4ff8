"""Simulated GPUs for machines without any: plausible, time-varying numbers.

A GPU held by a job runs hot (high utilisation, memory, power); an idle one sits near zero.
The energy counter integrates power over time as NVML's does. Always labelled simulated.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dcsched.agents.gpu.base import FaultHandler
from dcsched.protocol.messages import GpuInfo, GpuProc, GpuSample

_GIB = 1024**3
_IDLE_W, _MAX_W = 62.0, 700.0


@dataclass
class _GpuState:
    util: float = 0.0
    temp_c: float = 32.0
    energy_j: float = 0.0
    last: float | None = None


class SimBackend:
    name = "sim"
    simulated = True

    def __init__(self, host: str, count: int, model: str, mem_gib: int, seed: int | None = None):
        self.host = host
        self.model = model
        self.mem_total = mem_gib * _GIB
        # uuid5 keeps a host's simulated GPUs the same across agent restarts.
        self._uuids = [
            f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{host}.sim{i}')}" for i in range(count)
        ]
        self._state = [_GpuState() for _ in range(count)]
        self._rng = random.Random(seed if seed is not None else hash(host))

    def inventory(self) -> list[GpuInfo]:
        return [
            GpuInfo(index=i, uuid=u, model=self.model, mem_total=self.mem_total)
            for i, u in enumerate(self._uuids)
        ]

    def driver_version(self) -> str:
        return "simulated"

    def sample(self, now: float, busy: Mapping[int, Sequence[int]]) -> list[GpuSample]:
        out = []
        for i, st in enumerate(self._state):
            dt = 0.0 if st.last is None else max(0.0, now - st.last)
            st.last = now
            held = i in busy
            if held:
                target = 90.0 + 6.0 * math.sin(now / 7.0 + i) + self._rng.uniform(-3, 3)
            else:
                target = self._rng.uniform(0.0, 1.5)
            # Move part of the way each sample, as a real GPU ramps rather than jumps.
            st.util = min(100.0, max(0.0, st.util + (target - st.util) * 0.6))
            power = _IDLE_W + (_MAX_W - _IDLE_W) * st.util / 100.0 + self._rng.uniform(-4, 4)
            st.temp_c += ((30.0 + power * 0.07) - st.temp_c) * 0.3
            st.energy_j += power * dt
            frac = (0.72 + 0.08 * math.sin(now / 11.0 + i)) if held else 0.006
            out.append(
                GpuSample(
                    index=i,
                    uuid=self._uuids[i],
                    util=round(st.util, 1),
                    mem_used=int(self.mem_total * frac),
                    mem_total=self.mem_total,
                    temp_c=round(st.temp_c, 1),
                    power_w=round(power, 1),
                    sm_clock_mhz=1980 if st.util > 5 else 345,
                    energy_j=round(st.energy_j, 1),
                    pids=list(busy.get(i, ())),
                    procs=self._procs(i, busy, int(self.mem_total * frac)),
                )
            )
        return out

    @staticmethod
    def _procs(index: int, busy: Mapping[int, Sequence[int]], mem_used: int) -> list[GpuProc]:
        """What a real GPU would list: one of the job's real processes (the agent names it
        from /proc) per GPU the job holds, the newest ones (torchrun's workers start after
        it), holding nearly all of the memory in use."""
        pids = sorted(busy.get(index, ()))
        if not pids:
            return []
        held = sorted(g for g, p in busy.items() if sorted(p) == pids)
        workers = pids[-len(held) :] if len(pids) >= len(held) else pids
        pid = workers[held.index(index) % len(workers)]
        return [GpuProc(pid=pid, gpu_mem=int(mem_used * 0.97))]

    def watch_faults(self, handler: FaultHandler) -> None:
        """Simulated GPUs do not fail."""

    def close(self) -> None:
        pass
