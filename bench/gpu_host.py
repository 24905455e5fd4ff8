"""The agent's `nvml` backend against the real driver: what it reports and what it costs.

On a GPU host (nvidia-ml-py installed, torch with CUDA for the busy phase):

    python bench/gpu_host.py --samples 200 --busy-seconds 25

prints one JSON object: the machine (driver, NVML, nvidia-ml-py, torch), the inventory,
one sample of every GPU idle and one while a child process keeps GPU 0 busy with bf16 matrix
products (and whether that child's pid is in GPU 0's process list), the utilisation seen
through the busy phase, and the wall and CPU time of one `NvmlBackend.sample` of the whole
host (median, p99, max over --samples samples), idle and busy, with each NVML query's share.
Without NVML it prints {"error": ...} and exits 2. Not a test: it needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from dcsched.agents.errors import BackendError
from dcsched.agents.gpu.nvml import NvmlBackend
from dcsched.protocol.messages import GpuFault, GpuSample

# The busy child: bf16 products on GPU 0 until its deadline; "ready" once they run.
BUSY = """
import os, sys, time, torch
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
(a @ b).sum().item()
print("ready", os.getpid(), flush=True)
end = time.monotonic() + float(sys.argv[1])
done, t0 = 0, time.monotonic()
while time.monotonic() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
    done += 20
dt = time.monotonic() - t0
print("tflops", round(done * 2 * n**3 / dt / 1e12, 1), flush=True)
"""


def _stats(values_s: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def _cost(backend: NvmlBackend, samples: int) -> dict[str, Any]:
    """Wall time of each whole-host sample, CPU time of them all, then each query's share
    (a second pass with every NVML query timed)."""
    walls: list[float] = []
    cpu0 = time.process_time()
    for _ in range(samples):
        t0 = time.perf_counter()
        backend.sample(time.time(), {})
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    out: dict[str, Any] = dict(_stats(walls))
    out["cpu_ms_per_sample"] = round(cpu / samples * 1000, 3)
    per_query: dict[str, list[float]] = {}
    real = backend.q.call

    def timed(name: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(name, *args)
        finally:
            per_query.setdefault(name, []).append(time.perf_counter() - t0)

    backend.q.call = timed  # type: ignore[method-assign]
    try:
        for _ in range(min(samples, 50)):
            backend.sample(time.time(), {})
    finally:
        del backend.q.call  # the instance attribute; the class's method again
    out["per_query_median_ms"] = {
        k: round(statistics.median(v) * 1000, 4) for k, v in sorted(per_query.items())
    }
    out["per_query_max_ms"] = {k: round(max(v) * 1000, 3) for k, v in sorted(per_query.items())}
    return out


def _memory_versions(backend: NvmlBackend) -> dict[str, Any]:
    """GPU 0's memory info as NVML's v1 and v2 structures say it, in bytes."""
    nv: Any = backend.nv
    h = backend._handles[0]
    out: dict[str, Any] = {}
    try:
        m = nv.nvmlDeviceGetMemoryInfo(h)
        out["v1"] = {"total": m.total, "used": m.used, "free": m.free}
        m = nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2)
        out["v2"] = {"total": m.total, "reserved": m.reserved, "used": m.used, "free": m.free}
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _alternatives(backend: NvmlBackend, n: int = 100) -> dict[str, Any]:
    """The energy counter and power read directly and through nvmlDeviceGetFieldValues:
    each one's time per call, and what it answered (to see whether one costs less)."""
    nv: Any = backend.nv
    h = backend._handles[0]
    calls: dict[str, Any] = {
        "energy_direct": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h),
        "power_direct": lambda: nv.nvmlDeviceGetPowerUsage(h),
    }
    for name, field in (
        ("energy_field", "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
        ("power_instant_field", "NVML_FI_DEV_POWER_INSTANT"),
        ("power_average_field", "NVML_FI_DEV_POWER_AVERAGE"),
    ):
        if hasattr(nv, field) and hasattr(nv, "nvmlDeviceGetFieldValues"):
            fid = getattr(nv, field)

            def read(fid: int = fid) -> Any:
                v = nv.nvmlDeviceGetFieldValues(h, [fid])[0]
                return {"ret": int(v.nvmlReturn), "type": int(v.valueType),
                        "ull": int(v.value.ullVal), "ui": int(v.value.uiVal)}  # fmt: skip

            calls[name] = read
    out: dict[str, Any] = {}
    for name, fn in calls.items():
        times, values = [], []
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                values.append(fn())
                times.append(time.perf_counter() - t0)
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        distinct = len({json.dumps(v, sort_keys=True) for v in values})
        out[name] = {**_stats(times), "first": values[0], "last": values[-1],
                     "distinct_values": distinct}  # fmt: skip
    return out


def _dict(sample: GpuSample) -> dict[str, Any]:
    """Every field, also those at their default (to_builtins leaves those out)."""
    return {f: msgspec.to_builtins(getattr(sample, f)) for f in sample.__struct_fields__}


SMI_FIELDS = "index,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw,clocks.sm"


def _smi() -> dict[str, Any] | None:
    """nvidia-smi's view of the same fields (its units: MiB, W, MHz, J), to check ours."""
    if shutil.which("nvidia-smi") is None:
        return None
    out: dict[str, Any] = {}
    for key, args in (
        ("gpus", [f"--query-gpu={SMI_FIELDS}"]),
        ("apps", ["--query-compute-apps=gpu_uuid,pid,used_memory"]),
        ("clock_event_reasons", ["--query-gpu=clocks_event_reasons.active"]),
    ):
        run = subprocess.run(
            ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out[key] = run.stdout.strip().splitlines() or run.stderr.strip()
    out["fields"] = SMI_FIELDS
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--busy-seconds", type=float, default=25.0)
    ap.add_argument("--no-busy", action="store_true", help="skip the busy phase (no torch)")
    a = ap.parse_args()
    try:
        backend = NvmlBackend(os.uname().nodename)
    except BackendError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    faults: list[GpuFault] = []
    backend.watch_faults(faults.append)
    report: dict[str, Any] = {
        "machine": {
            "driver": backend.driver_version(),
            "nvml": backend.q.call("nvmlSystemGetNVMLVersion"),
            "cuda_driver": backend.q.call("nvmlSystemGetCudaDriverVersion"),
            "nvidia_ml_py": _version("nvidia-ml-py"),
            "torch": _version("torch"),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "inventory": [msgspec.to_builtins(g) for g in backend.inventory()],
        "xid_watch_thread": backend._thread is not None,
    }
    if not report["inventory"]:
        report["error"] = "NVML sees no GPU"
        print(json.dumps(report, indent=1, default=str))
        return 2
    idle = backend.sample(time.time(), {})
    smi_idle = _smi()
    report["idle"] = {
        "samples": [_dict(s) for s in idle],
        "memory_v1_v2": _memory_versions(backend),
        "nvidia_smi_right_after": smi_idle,
        "cost": _cost(backend, a.samples),
        "alternatives": _alternatives(backend),
    }
    # A field the backend reads whose NVML query answered N/A, per GPU: what this driver lacks.
    report["idle"]["none_fields"] = [[k for k, v in _dict(s).items() if v is None] for s in idle]
    if not a.no_busy:
        report["busy"] = _busy(backend, a)
    report["faults"] = [msgspec.to_builtins(f) for f in faults]
    backend.close()
    print(json.dumps(report, indent=1, default=str))
    return 0


def _busy(backend: NvmlBackend, a: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY, str(a.busy_seconds)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    out: dict[str, Any] = {"child_pid": child.pid}
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        if not line or line[0] != "ready":
            out["error"] = f"the busy child did not start: {line}"
            return out
        time.sleep(2.0)  # NVML's utilisation is an average over its last period
        # Utilisation and power through 5 s of the busy phase, 4 samples a second.
        series: list[dict[str, Any]] = []
        t0 = time.monotonic()
        for _ in range(20):
            s = backend.sample(time.time(), {})[0]
            reasons = backend.q.call(
                "nvmlDeviceGetCurrentClocksThrottleReasons", backend._handles[0]
            )
            series.append(
                {
                    "t_s": round(time.monotonic() - t0, 2),
                    "util": s.util,
                    "power_w": s.power_w,
                    "sm_clock_mhz": s.sm_clock_mhz,
                    "temp_c": s.temp_c,
                    "energy_j": s.energy_j,
                    "pids": s.pids,
                    "health": s.health,
                    "clock_event_reasons": None if reasons is None else hex(reasons),
                }
            )
            time.sleep(0.25)
        sample = backend.sample(time.time(), {})
        out["nvidia_smi_right_after"] = _smi()
        out["samples"] = [_dict(s) for s in sample]
        out["series_gpu0"] = series
        out["child_pid_listed_gpu0"] = child.pid in sample[0].pids
        out["child_proc_gpu0"] = [
            msgspec.to_builtins(p) for p in sample[0].procs if p.pid == child.pid
        ]
        e0, e1 = series[0]["energy_j"], series[-1]["energy_j"]
        if e0 is not None and e1 is not None:
            dt = series[-1]["t_s"] - series[0]["t_s"]
            out["mean_power_from_energy_w"] = round((e1 - e0) / dt, 1) if dt else None
        out["cost"] = _cost(backend, a.samples)
        out["alternatives"] = _alternatives(backend)
        out["still_busy_after_cost"] = child.poll() is None
        rest, _ = child.communicate(timeout=a.busy_seconds + 60)
        out["child_output"] = rest.strip()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    time.sleep(1.0)
    after = backend.sample(time.time(), {})[0]
    out["after_exit_gpu0"] = {"pids": after.pids, "util": after.util, "mem_used": after.mem_used}
    return out


if __name__ == "__main__":
    sys.exit(main())
