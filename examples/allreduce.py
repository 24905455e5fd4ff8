"""Every worker all-reduces its global rank; rank 0 prints and writes the sum.

With 2 nodes x 2 processes the ranks are 0..3, so the sum is 6.
"""

import os
import sys

import torch
import torch.distributed as dist


def main() -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else "cpu"
    )
    t = torch.tensor([float(rank)], device=device)
    dist.all_reduce(t)
    total = int(t.item())
    print(f"rank {rank}/{world} on {os.uname().nodename}: all_reduce sum = {total}", flush=True)
    if rank == 0:
        out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), "allreduce.out")
        with open(out, "w") as f:
            f.write(f"{total}\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
