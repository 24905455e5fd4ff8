"""A GPU job for bench/gpu_cluster.py: all-reduce, then bf16 matrix products for a while.

    torchrun --nproc-per-node N gpu_job.py BACKEND SECONDS

Each rank prints one JSON line with what it was given (CUDA_VISIBLE_DEVICES, the torchrun
variables, its device, the all-reduce's sum), keeps its GPU busy for SECONDS, then prints
its rate. With "gloo" every rank uses CUDA tensors on `cuda:(LOCAL_RANK % device count)`,
so two ranks can share one GPU (NCCL refuses two ranks on one device).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    backend, seconds = sys.argv[1], float(sys.argv[2])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local % torch.cuda.device_count())
    torch.cuda.set_device(device)
    if backend == "nccl":
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank)], device=device)
    dist.all_reduce(t)
    keys = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LOCAL_RANK", "RANK", "WORLD_SIZE",
            "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DCSCHED_JOB_ID")  # fmt: skip
    info = {
        "rank": rank,
        "world": world,
        "backend": backend,
        "pid": os.getpid(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device),
        "device_count": torch.cuda.device_count(),
        "all_reduce_sum": t.item(),
        "env": {k: os.environ.get(k) for k in keys},
    }
    # One write() per line: the ranks share the job's stdout, and print() writes in parts.
    sys.stdout.flush()
    os.write(1, f"job-info {json.dumps(info)}\n".encode())
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    done, t0 = 0, time.monotonic()
    while time.monotonic() < end:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize(device)
        done += 20
    rate = done * 2 * n**3 / (time.monotonic() - t0) / 1e12
    print(f"rank {rank}: {done} products, {rate:.0f} TFLOP/s", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
