"""Simulated GPUs for machines without any: plausible, time-varying numbers.

A GPU held by a job runs hot (high utilisation, memory, power); an idle one sits near zero.
The energy counter integrates power over time as NVML's does. Always labelled simulated.

Faults are injected through a file (`dc-agent sim-fault` writes it): `{"GPU": {"kind": K,
"code": C, "detail": D}}` with K one of xid, ecc, thermal, power, lost. A GPU listed there
reports that health in its samples, and each new entry is reported once as a GpuFault, as
the nvml backend does for real faults.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dcsched.agents.gpu.base import FaultHandler
from dcsched.protocol.messages import GpuFault, GpuInfo, GpuProc, GpuSample

log = logging.getLogger("dcsched.agent.sim")
FAULT_KINDS = ("xid", "ecc", "thermal", "power", "lost")

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

    def __init__(
        self,
        host: str,
        count: int,
        model: str,
        mem_gib: int,
        seed: int | None = None,
        faults_file: str | None = None,
    ):
        self.host = host
        self.faults_file = faults_file
        self._faults: dict[int, dict[str, object]] = {}
        self._faults_mtime: float | None = None
        self._handler: FaultHandler | None = None
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

    def _read_faults(self, now: float) -> dict[int, dict[str, object]]:
        """The injected faults; each one new since the last read is reported once."""
        if not self.faults_file:
            return self._faults
        try:
            mtime: float | None = os.stat(self.faults_file).st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._faults_mtime:
            return self._faults
        self._faults_mtime = mtime
        faults: dict[int, dict[str, object]] = {}
        if mtime is not None:
            try:
                with open(self.faults_file) as fh:
                    raw = json.load(fh)
                faults = {int(k): dict(v) for k, v in raw.items() if int(k) < len(self._state)}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("sim faults file %s unreadable: %s", self.faults_file, exc)
                return self._faults
        for i, f in faults.items():
            if self._faults.get(i) != f and self._handler is not None:
                code = f.get("code")
                self._handler(
                    GpuFault(
                        host=self.host,
                        gpu_index=i,
                        ts=now,
                        kind=str(f.get("kind", "xid")),
                        code=int(code) if isinstance(code, int) else None,
                        detail=str(f.get("detail", "")) or "simulated",
                    )
                )
        self._faults = faults
        return faults

    def sample(self, now: float, busy: Mapping[int, Sequence[int]]) -> list[GpuSample]:
        faults = self._read_faults(now)
        out = []
        for i, st in enumerate(self._state):
            fault = faults.get(i)
            if fault is not None and fault.get("kind") == "lost":
                out.append(GpuSample(index=i, uuid=self._uuids[i], health="lost"))
                continue
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
                    health=str(fault.get("kind", "xid")) if fault is not None else "ok",
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
        """Faults come only from the injection file, read with each sample."""
        self._handler = handler

    def close(self) -> None:
        pass
