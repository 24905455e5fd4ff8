#!/usr/bin/env bash
# The checks that need a real NVIDIA GPU, in one run (docs/performance.md, "On a real GPU"):
#   scripts/gpu_check.sh OUTDIR [MOSQUITTO]
# writes into OUTDIR: log.txt (nvidia-smi, versions), host.json (bench/gpu_host.py: the nvml
# backend's fields and cost), pytest.txt (tests/unit/agents/test_nvml.py, whose last test
# runs against the real driver), cluster.json and cluster.txt (bench/gpu_cluster.py: broker,
# dcd, a dc-agent on nvml and torchrun jobs on the GPU) and cluster-logs.tar.gz (their logs).
# Needs python3 with torch (CUDA), nvidia-ml-py and dcsched's dependencies importable.
set -u
out=${1:?usage: scripts/gpu_check.sh OUTDIR [MOSQUITTO]}
mosquitto=${2:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
{
  date -u
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  uname -r
  nproc
  "$py" - <<'EOF'
import sys, importlib.metadata as m
print("python", sys.version.split()[0], sys.executable)
for d in ("torch", "nvidia-ml-py", "msgspec", "aiomqtt", "aiosqlite", "aiohttp", "pytest",
          "pytest-asyncio", "pytest-timeout"):
    try:
        print(d, m.version(d))
    except m.PackageNotFoundError:
        print(d, "MISSING")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  "$mosquitto" -h 2>&1 | head -1
} >"$out/log.txt" 2>&1

step() { echo "== $(date -u +%T) $*" | tee -a "$out/log.txt"; }

step gpu_host
timeout 150 "$py" bench/gpu_host.py --samples 200 --busy-seconds 20 >"$out/host.json" 2>>"$out/log.txt"
echo "rc $?" >>"$out/log.txt"

step pytest test_nvml
timeout 90 "$py" -m pytest -p no:cacheprovider -rA -s tests/unit/agents/test_nvml.py >"$out/pytest.txt" 2>&1
echo "rc $?" >>"$out/log.txt"

step gpu_cluster
rm -rf /tmp/gpucluster
timeout 240 "$py" bench/gpu_cluster.py --workdir /tmp/gpucluster --mosquitto "$mosquitto" --backend "${BACKEND:-nvml}" \
  >"$out/cluster.json" 2>"$out/cluster.txt"
echo "rc $?" >>"$out/log.txt"
tar czf "$out/cluster-logs.tar.gz" -C /tmp gpucluster 2>>"$out/log.txt"
step done
