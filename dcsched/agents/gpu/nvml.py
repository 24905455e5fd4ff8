"""Real GPUs through nvidia-ml-py (module `pynvml`).

Every NVML call goes through `NvmlQuery.call`, which turns "not supported", "no permission"
and the driver's "value not available" sentinels into None for that one field, so a GPU that
lacks, say, an energy counter still reports everything else. A lost GPU (GpuIsLost) becomes
health="lost" in its sample plus one GpuFault event. XID errors arrive from a thread that
waits on an NVML event set. NVML is initialised once per process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from dcsched.agents.errors import BackendError
from dcsched.agents.gpu.base import FaultHandler
from dcsched.protocol.messages import GpuFault, GpuInfo, GpuProc, GpuSample

log = logging.getLogger("dcsched.agent.nvml")

# NVML's "not available" sentinels: (unsigned int)-1 and (unsigned long long)-1.
_NA_VALUES = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


class GpuLost(Exception):
    """Raised by NvmlQuery.call when NVML says the GPU fell off the bus."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlQuery:
    """The one wrapper every NVML query goes through."""

    def __init__(self, nv: ModuleType) -> None:
        self.nv: Any = nv
        # Errors meaning "this field does not exist here": the field is absent, not an error.
        self._absent = {
            getattr(nv, name)
            for name in (
                "NVML_ERROR_NOT_SUPPORTED",
                "NVML_ERROR_NO_PERMISSION",
                "NVML_ERROR_FUNCTION_NOT_FOUND",
                "NVML_ERROR_NOT_FOUND",
            )
            if hasattr(nv, name)
        }
        self._lost = {
            getattr(nv, name)
            for name in ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED")
            if hasattr(nv, name)
        }
        self._warned: set[tuple[str, int | None]] = set()

    def is_lost(self, exc: BaseException) -> bool:
        """Whether an NVMLError says the GPU fell off the bus (or needs a reset)."""
        return getattr(exc, "value", None) in self._lost

    def call(self, name: str, *args: Any) -> Any:
        """nv.<name>(*args), or None when the value is not available (also when this
        nvidia-ml-py has no such function)."""
        fn = getattr(self.nv, name, None)
        if fn is None:
            return None
        try:
            value = fn(*args)
        except self.nv.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in self._lost:
                raise GpuLost(str(exc)) from None
            if code not in self._absent and (name, code) not in self._warned:
                # Unexpected errors are logged once per (query, code), then treated as N/A.
                self._warned.add((name, code))
                log.warning("NVML %s failed: %s (reported as N/A from now on)", name, exc)
            return None
        if isinstance(value, int) and value in _NA_VALUES:
            return None
        return value


_init_lock = threading.Lock()
_initialised: weakref.WeakSet[ModuleType] = weakref.WeakSet()  # nvmlInit runs once per module


def _init_once(nv: ModuleType) -> None:
    with _init_lock:
        if nv in _initialised:
            return
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise BackendError(
                f'NVML cannot start: {exc}; use backend = "sim" without GPUs'
            ) from None
        _initialised.add(nv)


# Clock event ("throttle") reasons that mean the GPU is in trouble, not merely idle or capped
# by its application clocks: nvidia-ml-py's names, with their values as a fallback.
_THERMAL = (("nvmlClocksThrottleReasonHwThermalSlowdown", 0x40),
            ("nvmlClocksThrottleReasonSwThermalSlowdown", 0x20))  # fmt: skip
_POWER = (("nvmlClocksThrottleReasonHwPowerBrakeSlowdown", 0x80),
          ("nvmlClocksThrottleReasonHwSlowdown", 0x08))  # fmt: skip


def _health(nv: Any, ecc: int | None, slowdown: int | None) -> tuple[str, str]:
    """(GpuSample.health, detail) from the uncorrectable ECC count since the driver loaded
    and the current clock event reasons."""
    if ecc:
        return "ecc", f"{ecc} uncorrectable ECC errors"
    if slowdown:
        for kind, bits in (("thermal", _THERMAL), ("power", _POWER)):
            mask = 0
            for name, value in bits:
                mask |= int(getattr(nv, name, value))
            if slowdown & mask:
                return kind, f"clock event reasons 0x{slowdown:x}"
    return "ok", ""


class NvmlBackend:
    name = "nvml"
    simulated = False

    def __init__(self, host: str, nvml_module: ModuleType | None = None) -> None:
        nv: Any = nvml_module
        if nv is None:
            try:
                import pynvml

                nv = pynvml
            except ImportError:
                raise BackendError(
                    "the nvml backend needs nvidia-ml-py: pip install 'dcsched[agent]'"
                ) from None
        self.host = host
        self.nv: Any = nv
        _init_once(nv)
        self.q = NvmlQuery(nv)
        count = self.q.call("nvmlDeviceGetCount") or 0
        self._lost: set[int] = set()
        # nvmlDeviceGetMemoryInfo's v2 structure, while the driver answers it (see _memory)
        self._mem_v2: int | None = getattr(nv, "nvmlMemory_v2", None)
        self._health: dict[int, str] = {}  # the last health reported per GPU, when not ok
        self._handles = [self._handle(i) for i in range(count)]
        self._handler: FaultHandler | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inventory = [self._info(i, h) for i, h in enumerate(self._handles)]

    def _handle(self, index: int) -> Any:
        """The device handle, or None for a GPU already lost at start (it stays "lost")."""
        try:
            return self.q.call("nvmlDeviceGetHandleByIndex", index)
        except GpuLost:
            self._lost.add(index)
            return None

    def _info(self, index: int, handle: Any) -> GpuInfo:
        if handle is None:
            return GpuInfo(index=index, uuid=f"lost-{index}", model="lost")
        try:
            uuid = self.q.call("nvmlDeviceGetUUID", handle)
            name = self.q.call("nvmlDeviceGetName", handle)
            mem = self.q.call("nvmlDeviceGetMemoryInfo", handle)
        except GpuLost:
            self._lost.add(index)
            return GpuInfo(index=index, uuid=f"lost-{index}", model="lost")
        return GpuInfo(
            index=index,
            uuid=_text(uuid) if uuid is not None else f"unknown-{index}",
            model=_text(name) if name is not None else "unknown",
            mem_total=int(mem.total) if mem is not None else None,
        )

    def inventory(self) -> list[GpuInfo]:
        return list(self._inventory)

    def driver_version(self) -> str:
        value = self.q.call("nvmlSystemGetDriverVersion")
        return _text(value) if value is not None else ""

    def _memory(self, h: Any) -> Any:
        """The GPU's memory info: version 2 where the driver has it, whose `used` leaves out
        what the driver reserves for itself, as nvidia-smi and DCGM's FB_USED do. Version 1
        counts that as used: 615 MiB on an idle H200 (driver 580) that nvidia-smi shows
        with 0 MiB used. Without v2 (older drivers or nvidia-ml-py) it falls back to v1
        for good."""
        if self._mem_v2 is not None:
            try:
                return self.nv.nvmlDeviceGetMemoryInfo(h, version=self._mem_v2)
            except self.nv.NVMLError as exc:
                if self.q.is_lost(exc):
                    raise GpuLost(str(exc)) from None
                log.info("NVML memory info v2 unavailable (%s): used memory includes the "
                         "driver's reserved memory", exc)  # fmt: skip
            except TypeError:  # an nvidia-ml-py whose call takes no version
                log.info("this nvidia-ml-py has no memory info v2: used memory includes the "
                         "driver's reserved memory")  # fmt: skip
            self._mem_v2 = None
        return self.q.call("nvmlDeviceGetMemoryInfo", h)

    def sample(self, now: float, busy: Mapping[int, Sequence[int]]) -> list[GpuSample]:
        return [self._sample_one(i, h, now) for i, h in enumerate(self._handles)]

    def _sample_one(self, index: int, h: Any, now: float) -> GpuSample:
        uuid = self._inventory[index].uuid
        q, nv = self.q, self.nv
        if h is None:
            return GpuSample(index=index, uuid=uuid, health="lost")
        try:
            util = q.call("nvmlDeviceGetUtilizationRates", h)
            mem = self._memory(h)
            temp = q.call("nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
            power_mw = q.call("nvmlDeviceGetPowerUsage", h)
            sm = q.call("nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
            energy_mj = q.call("nvmlDeviceGetTotalEnergyConsumption", h)
            procs = q.call("nvmlDeviceGetComputeRunningProcesses", h)
            ecc = q.call(
                "nvmlDeviceGetTotalEccErrors",
                h,
                getattr(nv, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                getattr(nv, "NVML_VOLATILE_ECC", 0),
            )
            slowdown = q.call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        except GpuLost as exc:
            if index not in self._lost:
                self._lost.add(index)
                self._fault(
                    GpuFault(host=self.host, gpu_index=index, ts=now, kind="lost", detail=str(exc))
                )
            return GpuSample(index=index, uuid=uuid, health="lost")
        if index in self._lost:
            self._lost.discard(index)  # came back (after a reset): healthy again
        health, detail = _health(nv, ecc, slowdown)
        if health != self._health.get(index, "ok"):
            self._health[index] = health
            if health != "ok":  # a new trouble: reported once, as it begins
                self._fault(
                    GpuFault(host=self.host, gpu_index=index, ts=now, kind=health, detail=detail)
                )
        return GpuSample(
            health=health,
            index=index,
            uuid=uuid,
            util=float(util.gpu) if util is not None else None,
            mem_used=int(mem.used) if mem is not None else None,
            mem_total=int(mem.total) if mem is not None else None,
            temp_c=float(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            sm_clock_mhz=int(sm) if sm is not None else None,
            energy_j=energy_mj / 1000.0 if energy_mj is not None else None,
            pids=sorted({int(p.pid) for p in procs}) if procs else [],
            procs=[
                GpuProc(pid=int(p.pid), gpu_mem=_gpu_mem(getattr(p, "usedGpuMemory", None)))
                for p in sorted(procs or [], key=lambda p: int(p.pid))
            ],
        )

    def _fault(self, fault: GpuFault) -> None:
        if self._handler is not None:
            self._handler(fault)

    # --- XID events ------------------------------------------------------------------------

    def watch_faults(self, handler: FaultHandler) -> None:
        self._handler = handler
        if self._thread is not None or not self._handles:
            return
        nv = self.nv
        try:
            event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            log.warning("NVML events unavailable (%s): XID errors will not be reported", exc)
            return
        registered = 0
        for i, h in enumerate(self._handles):
            if h is None:
                continue
            try:
                self.q.call(
                    "nvmlDeviceRegisterEvents", h, nv.nvmlEventTypeXidCriticalError, event_set
                )
                registered += 1
            except GpuLost:
                log.warning("GPU %d is lost: no XID events from it", i)
        if not registered:
            nv.nvmlEventSetFree(event_set)
            return
        self._thread = threading.Thread(
            target=self._watch, args=(event_set,), name="nvml-xid", daemon=True
        )
        self._thread.start()

    def _watch(self, event_set: Any) -> None:
        nv = self.nv
        try:
            while not self._stop.is_set():
                try:
                    data = nv.nvmlEventSetWait(event_set, 500)  # ms; lets close() stop us
                except nv.NVMLError as exc:
                    if getattr(exc, "value", None) != nv.NVML_ERROR_TIMEOUT:
                        log.warning("NVML event wait failed: %s", exc)
                        self._stop.wait(1.0)
                    continue
                if not data.eventType & nv.nvmlEventTypeXidCriticalError:
                    continue
                index = self._index_of(data.device)
                self._fault(
                    GpuFault(
                        host=self.host,
                        gpu_index=index,
                        ts=time.time(),
                        kind="xid",
                        code=int(data.eventData),
                        detail=f"XID {int(data.eventData)}",
                    )
                )
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlEventSetFree(event_set)

    def _index_of(self, handle: Any) -> int:
        try:
            index = self.q.call("nvmlDeviceGetIndex", handle)
        except GpuLost:
            index = None
        if index is not None:
            return int(index)
        for i, h in enumerate(self._handles):
            if h == handle:
                return i
        return -1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        # NVML stays initialised: other backends in this process may share it, and the
        # process is about to end anyway.


def _gpu_mem(value: Any) -> int | None:
    """NVML's per-process memory; None (N/A) where the driver does not say (it reports
    NVML_VALUE_NOT_AVAILABLE, all ones, e.g. under MIG or without permission)."""
    if not isinstance(value, int) or value < 0 or value >= 2**63:
        return None
    return value
