"""Telemetry ingest: the latest sample per GPU, a short in-memory history, and downsampled
rows written to the store in one transaction per flush.

handle() runs inside the bus's receive loop for every telemetry message, so it does no I/O
and allocates little: at 2,000 host messages/s it is the daemon's hottest path.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from dcsched.protocol.messages import GpuSample, Telemetry

HISTORY = 300  # samples per GPU kept in memory (5 minutes at 1 s)


@dataclass(slots=True)
class _Accum:
    n: int = 0
    util: float = 0.0
    util_n: int = 0
    power: float = 0.0
    power_n: int = 0
    temp: float = 0.0
    temp_n: int = 0
    mem: int = 0
    mem_n: int = 0

    def add(self, s: GpuSample) -> None:
        self.n += 1
        if s.util is not None:
            self.util += s.util
            self.util_n += 1
        if s.power_w is not None:
            self.power += s.power_w
            self.power_n += 1
        if s.temp_c is not None:
            self.temp += s.temp_c
            self.temp_n += 1
        if s.mem_used is not None:
            self.mem += s.mem_used
            self.mem_n += 1


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


_NONE: frozenset[int] = frozenset()


@dataclass(slots=True)
class HostTelemetry:
    latest: Telemetry
    received: float  # monotonic
    # the GPUs whose latest sample's health is not "ok": read by every scheduling pass
    unhealthy: frozenset[int] = _NONE
    history: dict[
        int, deque[tuple[float, float | None, int | None, float | None, float | None]]
    ] = field(default_factory=dict)


class Ingest:
    def __init__(self) -> None:
        self.hosts: dict[str, HostTelemetry] = {}
        self.received = 0
        self.stale = 0  # messages older than one already seen from the host
        self._accum: dict[tuple[str, int], _Accum] = {}

    def handle(self, msg: Telemetry) -> bool:
        """False when the message is stale (dropped)."""
        now = time.monotonic()
        self.received += 1
        ht = self.hosts.get(msg.host)
        if ht is None:
            ht = self.hosts[msg.host] = HostTelemetry(msg, now)
        elif msg.seq <= ht.latest.seq and msg.ts <= ht.latest.ts:
            self.stale += 1
            return False
        ht.latest, ht.received = msg, now
        bad: list[int] = []
        for s in msg.gpus:
            if s.health != "ok":
                bad.append(s.index)
            hist = ht.history.get(s.index)
            if hist is None:
                hist = ht.history[s.index] = deque(maxlen=HISTORY)
            hist.append((msg.ts, s.util, s.mem_used, s.power_w, s.temp_c))
            key = (msg.host, s.index)
            acc = self._accum.get(key)
            if acc is None:
                acc = self._accum[key] = _Accum()
            acc.add(s)
        ht.unhealthy = frozenset(bad) if bad else _NONE
        return True

    def drain_rows(
        self, ts: float
    ) -> list[tuple[str, int, float, float | None, int | None, float | None, float | None]]:
        """Means since the last flush, one row per GPU; resets the accumulators."""
        rows = []
        for (host, gpu), a in self._accum.items():
            mem = a.mem // a.mem_n if a.mem_n else None  # exact: a float mean can overflow
            rows.append(
                (
                    host,
                    gpu,
                    ts,
                    _mean(a.util, a.util_n),
                    mem,
                    _mean(a.power, a.power_n),
                    _mean(a.temp, a.temp_n),
                )
            )
        self._accum.clear()
        return rows

    def age(self, host: str) -> float | None:
        ht = self.hosts.get(host)
        return None if ht is None else time.monotonic() - ht.received

    def job_util(self, host: str, gpus: list[int]) -> float | None:
        """Mean current utilisation of a job's GPUs on one host."""
        ht = self.hosts.get(host)
        if ht is None:
            return None
        vals = [s.util for s in ht.latest.gpus if s.index in gpus and s.util is not None]
        return sum(vals) / len(vals) if vals else None
