"""One full scheduling pass at scale: 10,000 pending jobs, 1,000 nodes x 8 GPUs, half busy.

    python bench/scheduler_pass.py [--passes 20] [--policy default] [--seed 1]

Prints JSON: pass time p50/p99 in ms over repeated passes on the same snapshot, and what
one pass decided (starts, reservations).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

from dcsched.scheduler import (
    AccountConfig,
    JobRequest,
    NodeView,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Usage,
    decide,
)

NODES, GPUS, PENDING = 1000, 8, 10_000
LIMITS = (3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0)
# (gpus, weight): mostly small jobs, some whole nodes, a few multi-node
SIZES = ((1, 60), (2, 8), (4, 10), (8, 15), (16, 4), (32, 2), (64, 1))


def build(seed: int, policy: str) -> Snapshot:
    rng = random.Random(seed)
    accounts = [f"acct{i}" for i in range(20)]
    now = 1_000_000.0
    nodes: list[NodeView] = []
    running: list[RunningJob] = []
    ids = tuple(range(GPUS))
    for n in range(NODES):
        name = f"node{n:04d}"
        used = rng.choice((0, 2, 4, 4, 6, 8)) if n % 2 else rng.choice((0, 4, 8))
        nodes.append(NodeView(name, "H100", ids, frozenset(range(used, GPUS))))
        k = 0
        while k < used:
            g = min(used - k, rng.choice((1, 2, 4)))
            acct = rng.choice(accounts)
            running.append(
                RunningJob(
                    f"r{n}-{k}",
                    f"{acct}-u{rng.randrange(5)}",
                    acct,
                    now - rng.uniform(0, 40000),
                    rng.choice(LIMITS) + 40000,
                    ((name, tuple(range(k, k + g))),),
                )
            )
            k += g
    sizes, weights = zip(*SIZES, strict=True)
    pending = []
    for i in range(PENDING):
        g = rng.choices(sizes, weights)[0]
        acct = rng.choice(accounts)
        nodes_n, per = (1, g) if g <= GPUS else (g // GPUS, GPUS)
        pending.append(
            JobRequest(
                f"j{i}",
                f"{acct}-u{rng.randrange(5)}",
                acct,
                now - rng.uniform(0, 86400),
                nodes_n,
                per,
                rng.choice(LIMITS),
            )
        )
    pending.sort(key=lambda j: j.submit_ts)
    usage = Usage(now, {(a, f"{a}-u{u}"): rng.uniform(0, 1e7) for a in accounts for u in range(5)})
    config = SchedulerConfig(
        policy=policy, accounts={a: AccountConfig(shares=1 + i % 3) for i, a in enumerate(accounts)}
    )
    return Snapshot(tuple(nodes), tuple(pending), tuple(running), config, usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--policy", default="default", choices=("fifo", "greedy", "default", "las"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    snapshot = build(args.seed, args.policy)
    now = 1_000_000.0
    times: list[float] = []
    decisions = decide(snapshot, now)  # warm-up, and what one pass decides
    for _ in range(args.passes):
        t0 = time.perf_counter()
        decide(snapshot, now)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    free = sum(len(n.free) for n in snapshot.nodes)
    print(
        json.dumps(
            {
                "bench": "scheduler_pass",
                "policy": args.policy,
                "nodes": NODES,
                "gpus_per_node": GPUS,
                "pending": len(snapshot.pending),
                "running": len(snapshot.running),
                "free_gpus": free,
                "starts": len(decisions.starts),
                "reservations": len(decisions.reservations),
                "passes": args.passes,
                "pass_ms": {
                    "p50": round(statistics.median(times), 2),
                    "p99": round(times[min(len(times) - 1, int(0.99 * (len(times) - 1)))], 2),
                    "min": round(times[0], 2),
                },
                "python": platform.python_version(),
                "cpu_count": __import__("os").cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
