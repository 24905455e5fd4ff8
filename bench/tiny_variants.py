"""How far tiny60's gap to greedy is luck: the policies on tiny60-like workloads.

    python bench/tiny_variants.py [--traces ../shared/traces] [--n 200]

tiny60 (one node of 8 GPUs, every limit 1 h, runs of minutes) is a single draw: which job
happens to be long decides the order effects of a few jobs. Two families, deterministic
(seeds 0 .. n-1), each replayed on 1x8 with greedy, default and las (`--preemptible all
--restart-cost 300`, as the tiny60 row of docs/scheduler.md):
- `shuffle`: tiny60's arrivals, users and GPU counts, durations permuted among the jobs
  of the same GPU count;
- `random`: 60 jobs, Poisson arrivals at tiny60's mean gap, GPU count and duration drawn
  independently from tiny60's, five users, account by GPU count (as in tiny60).
Prints JSON: per family and policy the mean avg JCT, and against greedy the mean
difference, its standard error and how many workloads are worse or better by over 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from dcsched.cli.dcsim import TraceJob, load_trace, replay
from dcsched.scheduler import SchedulerConfig
from dcsched.scheduler.simulate import Cost

POLICIES = ("greedy", "default", "las")


def shuffled(base: list[TraceJob], rng: random.Random) -> list[TraceJob]:
    groups: dict[int, list[float]] = {}
    for j in base:
        groups.setdefault(j.gpus, []).append(j.duration_s)
    for durations in groups.values():
        rng.shuffle(durations)
    left = {g: iter(d) for g, d in groups.items()}
    return [replace(j, duration_s=next(left[j.gpus])) for j in base]


def drawn(base: list[TraceJob], rng: random.Random) -> list[TraceJob]:
    gap = (base[-1].submit_s - base[0].submit_s) / (len(base) - 1)
    t, out = 0.0, []
    for i in range(len(base)):
        g = rng.choice(base).gpus
        duration = rng.choice(base).duration_s
        out.append(TraceJob(f"j{i}", round(t), duration, g, f"u{rng.randrange(5)}", f"a{g}", 3600))
        t += rng.expovariate(1.0 / gap)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    base = load_trace(args.traces / "tiny60.csv")
    out: dict[str, Any] = {"bench": "tiny_variants", "workloads": args.n}
    for family, make in (("shuffle", shuffled), ("random", drawn)):
        jct: dict[str, list[float]] = {p: [] for p in POLICIES}
        for seed in range(args.n):
            trace = make(base, random.Random(seed))
            for policy in POLICIES:
                las = policy == "las"
                r = replay(
                    trace,
                    1,
                    8,
                    replace(SchedulerConfig(), policy=policy),
                    preemptible=1.0 if las else 0.0,
                    cost=Cost(300.0 if las else 0.0),
                )
                jct[policy].append(r["avg_jct_s"])
        rows: dict[str, Any] = {}
        for policy, values in jct.items():
            row: dict[str, Any] = {"avg_jct_s": round(statistics.mean(values), 1)}
            if policy != "greedy":
                d = [a - b for a, b in zip(values, jct["greedy"], strict=True)]
                row["vs_greedy_s"] = round(statistics.mean(d), 1)
                row["stderr_s"] = round(statistics.stdev(d) / len(d) ** 0.5, 1)
                row["worse"] = sum(x > 1.0 for x in d)
                row["better"] = sum(x < -1.0 for x in d)
            rows[policy] = row
        out[family] = rows
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
