"""The NVML backend against a fake `pynvml` that uses the real nvidia-ml-py names."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from dcsched.agents.errors import BackendError
from dcsched.agents.gpu import nvml as nvml_backend
from dcsched.agents.gpu.nvml import GpuLost, NvmlBackend, NvmlQuery
from dcsched.protocol.messages import GpuFault


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml(types.ModuleType):
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_RESET_REQUIRED = 16
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
    NVML_ERROR_UNKNOWN = 999
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    nvmlEventTypeXidCriticalError = 0x8
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlClocksThrottleReasonHwSlowdown = 0x8
    nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
    nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
    nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80
    nvmlMemory_v2 = 0x02000028
    RESERVED = 615 << 20  # what driver 580 reserves on an H200
    NVMLError = NVMLError

    def __init__(self, count: int = 2) -> None:
        super().__init__("pynvml")
        self.count = count
        self.init_calls = 0
        self.unsupported: set[str] = set()  # function names that raise NotSupported
        self.lost: set[int] = set()
        self.events: list[Any] = []
        self.ecc: dict[int, int] = {}  # uncorrectable ECC errors per GPU
        self.reasons: dict[int, int] = {}  # clock event reasons per GPU
        self.event_lock = threading.Lock()
        self.memory_v2_error: int | None = None  # what nvmlDeviceGetMemoryInfo_v2 raises
        self.memory_versions: list[int | None] = []

    def _check(self, name: str, h: int | None = None) -> None:
        if h is not None and h in self.lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        if name in self.unsupported:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self) -> None:
        self.init_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-fake-{h}".encode()

    def nvmlDeviceGetName(self, h: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
        """v1 counts the driver's reserved memory as used; v2 reports it apart."""
        self.memory_versions.append(version)
        self._check("nvmlDeviceGetMemoryInfo", h)
        used = (10 + h) << 30
        if not version:
            return types.SimpleNamespace(total=80 << 30, used=used + self.RESERVED, free=0)
        assert version == self.nvmlMemory_v2
        if self.memory_v2_error is not None:
            raise NVMLError(self.memory_v2_error)
        return types.SimpleNamespace(
            version=version, total=80 << 30, reserved=self.RESERVED, used=used, free=0
        )

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._check("nvmlDeviceGetUtilizationRates", h)
        return types.SimpleNamespace(gpu=50 + h, memory=10)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._check("nvmlDeviceGetTemperature", h)
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 60

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._check("nvmlDeviceGetPowerUsage", h)
        return 350_500  # mW

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        self._check("nvmlDeviceGetClockInfo", h)
        assert kind == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._check("nvmlDeviceGetTotalEnergyConsumption", h)
        return 0xFFFFFFFFFFFFFFFF  # the driver's "not available" sentinel

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        self._check("nvmlDeviceGetComputeRunningProcesses", h)
        return [types.SimpleNamespace(pid=100 + h, usedGpuMemory=1 << 30)]

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        self._check("nvmlDeviceGetTotalEccErrors", h)
        assert (kind, counter) == (self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, self.NVML_VOLATILE_ECC)
        return self.ecc.get(h, 0)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
        self._check("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        return self.reasons.get(h, 0x1)  # 0x1: GPU idle, no trouble

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: int, types_: int, es: str) -> None:
        assert types_ == self.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait(self, es: str, timeout_ms: int) -> Any:
        with self.event_lock:
            if self.events:
                return self.events.pop(0)
        time.sleep(timeout_ms / 1000 / 50)
        raise NVMLError(self.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, es: str) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[FakeNvml]:
    yield FakeNvml()


def test_backend_imports_pynvml_lazily_through_sys_modules(
    monkeypatch: pytest.MonkeyPatch, fake: FakeNvml
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    backend = NvmlBackend("h")
    assert backend.nv is fake
    assert [g.uuid for g in backend.inventory()] == ["GPU-fake-0", "GPU-fake-1"]
    assert backend.inventory()[0].model == "NVIDIA H100 80GB HBM3"
    assert backend.driver_version() == "550.54.15"
    backend.close()


def test_nvml_is_initialised_once(fake: FakeNvml) -> None:
    NvmlBackend("h", fake).close()
    NvmlBackend("h", fake).close()
    assert fake.init_calls == 1


def test_missing_nvidia_ml_py_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with pytest.raises(BackendError, match="nvidia-ml-py"):
        NvmlBackend("h")


def test_sample_converts_units(fake: FakeNvml) -> None:
    backend = NvmlBackend("h", fake)
    s0, s1 = backend.sample(0.0, {})
    assert s0.util == 50.0 and s1.util == 51.0
    assert s0.mem_used == 10 << 30 and s0.mem_total == 80 << 30
    assert s0.power_w == 350.5 and s0.temp_c == 60.0 and s0.sm_clock_mhz == 1980
    assert s0.pids == [100] and s1.pids == [101]
    assert [(p.pid, p.gpu_mem) for p in s0.procs] == [(100, 1 << 30)]
    assert s0.energy_j is None  # sentinel -> absent
    assert s0.health == "ok"
    backend.close()


def test_used_memory_leaves_out_what_the_driver_reserves(fake: FakeNvml) -> None:
    """Seen on an H200 (driver 580): v1 said 615 MiB used on an idle GPU, nvidia-smi 0 MiB."""
    backend = NvmlBackend("h", fake)
    fake.memory_versions.clear()
    s0, _ = backend.sample(0.0, {})
    assert s0.mem_used == 10 << 30 and s0.mem_total == 80 << 30
    assert fake.memory_versions == [fake.nvmlMemory_v2] * 2
    backend.close()


@pytest.mark.parametrize(
    "code", [FakeNvml.NVML_ERROR_FUNCTION_NOT_FOUND, FakeNvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH]
)
def test_a_driver_without_memory_info_v2_falls_back_to_v1_for_good(
    fake: FakeNvml, code: int
) -> None:
    fake.memory_v2_error = code
    backend = NvmlBackend("h", fake)
    fake.memory_versions.clear()
    s0, s1 = backend.sample(0.0, {})
    assert (s0.mem_used, s1.mem_used) == ((10 << 30) + fake.RESERVED, (11 << 30) + fake.RESERVED)
    backend.sample(1.0, {})
    assert fake.memory_versions == [fake.nvmlMemory_v2, None, None, None, None]  # v2 tried once
    backend.close()


def test_an_nvidia_ml_py_without_memory_info_v2_reads_v1(fake: FakeNvml) -> None:
    fake.nvmlMemory_v2 = None  # type: ignore[assignment]  # older nvidia-ml-py: no such name
    backend = NvmlBackend("h", fake)
    s0, _ = backend.sample(0.0, {})
    assert s0.mem_used == (10 << 30) + fake.RESERVED
    backend.close()


def test_a_gpu_lost_in_the_memory_v2_query_is_lost_and_v2_stays(fake: FakeNvml) -> None:
    real = fake.nvmlDeviceGetMemoryInfo

    def memory(h: int, version: int | None = None) -> Any:
        if h == 1 and version:
            raise NVMLError(fake.NVML_ERROR_GPU_IS_LOST)
        return real(h, version)

    fake.nvmlDeviceGetMemoryInfo = memory  # type: ignore[method-assign]
    backend = NvmlBackend("h", fake)
    faults: list[GpuFault] = []
    backend.watch_faults(faults.append)
    fake.memory_versions.clear()
    s0, s1 = backend.sample(0.0, {})
    assert (s0.health, s1.health) == ("ok", "lost")
    assert [(f.kind, f.gpu_index) for f in faults] == [("lost", 1)]
    s0, _ = backend.sample(1.0, {})
    assert s0.mem_used == 10 << 30  # a lost GPU is no reason to give up v2
    backend.close()


def test_unsupported_field_is_absent_and_the_rest_is_reported(fake: FakeNvml) -> None:
    fake.unsupported = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"}
    backend = NvmlBackend("h", fake)
    s0, _ = backend.sample(0.0, {})
    assert s0.power_w is None and s0.temp_c is None
    assert s0.util == 50.0 and s0.mem_used is not None
    backend.close()


def test_query_wrapper_error_mapping(fake: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    q = NvmlQuery(fake)

    def raises(code: int) -> Any:
        def f(*_: Any) -> None:
            raise NVMLError(code)

        return f

    fake.nvmlX = raises(fake.NVML_ERROR_NO_PERMISSION)  # type: ignore[attr-defined]
    assert q.call("nvmlX") is None
    fake.nvmlY = raises(fake.NVML_ERROR_UNKNOWN)  # type: ignore[attr-defined]
    assert q.call("nvmlY") is None and q.call("nvmlY") is None
    assert sum("nvmlY" in r.message for r in caplog.records) == 1  # logged once, not per call
    fake.nvmlZ = raises(fake.NVML_ERROR_GPU_IS_LOST)  # type: ignore[attr-defined]
    with pytest.raises(GpuLost):
        q.call("nvmlZ")
    fake.nvmlW = lambda: 0xFFFFFFFF  # type: ignore[attr-defined]
    assert q.call("nvmlW") is None


def test_lost_gpu_gives_health_lost_and_one_fault(fake: FakeNvml) -> None:
    backend = NvmlBackend("h", fake)
    faults: list[GpuFault] = []
    backend.watch_faults(faults.append)
    fake.lost.add(1)
    for t in range(3):
        s0, s1 = backend.sample(float(t), {})
        assert s0.health == "ok" and s1.health == "lost" and s1.util is None
    assert [(f.gpu_index, f.kind) for f in faults] == [(1, "lost")]
    backend.close()


def test_ecc_errors_and_slowdowns_give_health_and_one_fault_each(fake: FakeNvml) -> None:
    backend = NvmlBackend("h", fake)
    faults: list[GpuFault] = []
    backend.watch_faults(faults.append)
    assert [s.health for s in backend.sample(0.0, {})] == ["ok", "ok"]
    fake.ecc[0] = 2
    fake.reasons[1] = 0x40 | 0x1  # hardware thermal slowdown
    for t in (1.0, 2.0):
        assert [s.health for s in backend.sample(t, {})] == ["ecc", "thermal"]
    fake.reasons[1] = 0x80  # power brake
    assert [s.health for s in backend.sample(3.0, {})] == ["ecc", "power"]
    fake.reasons[1] = 0x4  # capped by application clocks: no trouble
    assert [s.health for s in backend.sample(4.0, {})] == ["ecc", "ok"]
    assert [(f.gpu_index, f.kind, f.detail) for f in faults] == [
        (0, "ecc", "2 uncorrectable ECC errors"),
        (1, "thermal", "clock event reasons 0x41"),
        (1, "power", "clock event reasons 0x80"),
    ]
    fake.unsupported |= {"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetCurrentClocksThrottleReasons"}
    assert [s.health for s in backend.sample(5.0, {})] == ["ok", "ok"]  # no counters: no verdict
    backend.close()


def test_xid_events_arrive_from_the_thread(fake: FakeNvml) -> None:
    backend = NvmlBackend("h", fake)
    got = threading.Event()
    faults: list[GpuFault] = []

    def on_fault(f: GpuFault) -> None:
        faults.append(f)
        got.set()

    backend.watch_faults(on_fault)
    with fake.event_lock:
        fake.events.append(
            types.SimpleNamespace(
                device=1, eventType=fake.nvmlEventTypeXidCriticalError, eventData=79
            )
        )
    assert got.wait(5)
    backend.close()
    assert faults[0].kind == "xid" and faults[0].code == 79 and faults[0].gpu_index == 1
    assert backend._thread is None


def test_real_pynvml_names_exist() -> None:
    """The fake uses nvidia-ml-py's real names: check them on the installed module."""
    pynvml = pytest.importorskip("pynvml")
    used = [n for n in vars(FakeNvml) if n.startswith(("nvml", "NVML"))]
    missing = [n for n in used if not hasattr(pynvml, n)]
    assert not missing
    assert pynvml.NVML_ERROR_GPU_IS_LOST == FakeNvml.NVML_ERROR_GPU_IS_LOST
    assert pynvml.NVML_CLOCK_SM == FakeNvml.NVML_CLOCK_SM
    assert nvml_backend._NA_VALUES[0] == 0xFFFFFFFF


def test_a_gpu_lost_before_start_is_listed_as_lost(fake: FakeNvml) -> None:
    real_get = fake.nvmlDeviceGetHandleByIndex

    def get(i: int) -> int:
        if i == 0:
            raise NVMLError(fake.NVML_ERROR_GPU_IS_LOST)
        return real_get(i)

    fake.nvmlDeviceGetHandleByIndex = get  # type: ignore[method-assign]
    backend = NvmlBackend("h", fake)
    assert [g.model for g in backend.inventory()] == ["lost", "NVIDIA H100 80GB HBM3"]
    s0, s1 = backend.sample(0.0, {})
    assert (s0.health, s1.health) == ("lost", "ok")
    backend.watch_faults(lambda f: None)
    backend.close()


def test_real_nvml_when_this_machine_has_gpus() -> None:
    """Runs on a GPU host (skipped elsewhere): the backend against the real driver."""
    try:
        backend = NvmlBackend("real")
    except BackendError as exc:
        pytest.skip(f"no NVML here: {exc}")
    try:
        inv = backend.inventory()
        if not inv:
            pytest.skip("NVML without GPUs")
        assert all(g.uuid.startswith(("GPU-", "MIG-")) for g in inv), inv
        assert backend.driver_version()
        faults: list[GpuFault] = []
        backend.watch_faults(faults.append)
        samples = backend.sample(time.time(), {})
        assert [s.index for s in samples] == [g.index for g in inv]
        for s in samples:
            assert s.health == "ok"
            assert s.mem_total is not None and s.mem_used is not None
            assert s.util is None or 0 <= s.util <= 100
            assert s.power_w is None or 0 < s.power_w < 2000
            assert s.temp_c is None or 0 < s.temp_c < 120
        print("real NVML:", inv[0].model, backend.driver_version(), samples[0])
        assert not faults
    finally:
        backend.close()
