"""The daemon's planning at scale: `simulate.forecast` for the first N pending jobs.

    python bench/forecast.py [--jobs 100 1000] [--policy default] [--seed 1] [--full]

The snapshot of bench/scheduler_pass.py (1,000 nodes x 8 GPUs, 10,000 pending, half the
GPUs busy); `--full` also fills every free GPU with a 1-GPU job of 1 h to 24 h limit, so
the forecast must run the cluster forward. Each size: the first N pending jobs in
priority order, as `GET /v1/forecast?limit=N` takes them. Prints JSON: seconds, passes'
worth of jobs forecast. The daemon stops a forecast after 2 s (api.FORECAST_BUDGET_S).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from dataclasses import replace

from scheduler_pass import build

from dcsched.scheduler import RunningJob, Snapshot
from dcsched.scheduler.decide import Pass
from dcsched.scheduler.simulate import forecast

NOW = 1_000_000.0


def filled(snapshot: Snapshot, seed: int) -> Snapshot:
    rng = random.Random(seed)
    extra: list[RunningJob] = []
    nodes = []
    for n in snapshot.nodes:
        for g in sorted(n.free):
            limit = rng.choice((3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0))
            start = NOW - rng.uniform(0.0, 3600.0)
            extra.append(RunningJob(f"f{n.name}-{g}", "u", "a", start, limit, ((n.name, (g,)),)))
        nodes.append(replace(n, free=frozenset()))
    return replace(snapshot, nodes=tuple(nodes), running=snapshot.running + tuple(extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--policy", default="default", choices=("default", "las"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="every GPU busy")
    args = parser.parse_args()
    snapshot = build(args.seed, args.policy)
    if args.full:
        snapshot = filled(snapshot, args.seed)
    order = list(Pass(snapshot, NOW).run().priority)
    rows = []
    for n in args.jobs:
        top = order[:n]
        keep = set(top)
        snap = replace(snapshot, pending=tuple(j for j in snapshot.pending if j.job_id in keep))
        t0 = time.perf_counter()
        got = forecast(snap, NOW, top)
        rows.append({"jobs": n, "forecast": len(got), "s": round(time.perf_counter() - t0, 2)})
    out = {
        "bench": "forecast",
        "policy": args.policy,
        "full": args.full,
        "running": len(snapshot.running),
        "pending": len(snapshot.pending),
        "runs": rows,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
