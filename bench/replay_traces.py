"""The policy table of docs/scheduler.md: every trace and setting replayed through dcsim.

    python bench/replay_traces.py [--traces ../shared/traces] [--only tiny60] [--json]
          [--variants /tmp/dcsched-variants]   # after python bench/trace_variants.py

Each row is one `dcsim replay` (the command is printed with it). Long (itp-dev: about a
minute a row): kept out of the test suite, which replays small synthetic traces. The
robustness rows (itp-dev on 30 and 60 nodes, itp-half, synth4) check the policy on
workloads it was not tuned on; itp-half and synth4 are read from `--variants`.
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

from dcsched.cli.dcsim import load_trace, replay
from dcsched.scheduler import SchedulerConfig
from dcsched.scheduler.simulate import Cost

# (trace, nodes, GPUs per node, policy, preemptible, restart cost s, checkpoint interval s)
ROWS: tuple[tuple[str, int, int, str, float, float, float | None], ...] = (
    ("tiny60", 1, 8, "greedy", 0.0, 0.0, None),
    ("tiny60", 1, 8, "default", 0.0, 0.0, None),
    ("tiny60", 1, 8, "las", 1.0, 300.0, None),
    ("itp-dev", 40, 8, "greedy", 0.0, 0.0, None),
    ("itp-dev", 40, 8, "default", 0.0, 0.0, None),
    ("itp-dev", 40, 8, "las", 0.0, 0.0, None),
    ("itp-dev", 40, 8, "las", 1.0, 300.0, None),
    ("itp-dev", 40, 8, "las", 1.0, 300.0, 3600.0),
    ("itp-dev", 40, 8, "las", 0.5, 300.0, None),
    # robustness: the same policy on workloads it was not tuned on
    ("itp-dev", 30, 8, "greedy", 0.0, 0.0, None),
    ("itp-dev", 30, 8, "default", 0.0, 0.0, None),
    ("itp-dev", 30, 8, "las", 1.0, 300.0, None),
    ("itp-dev", 60, 8, "greedy", 0.0, 0.0, None),
    ("itp-dev", 60, 8, "default", 0.0, 0.0, None),
    ("itp-dev", 60, 8, "las", 1.0, 300.0, None),
    ("itp-half", 20, 8, "greedy", 0.0, 0.0, None),
    ("itp-half", 20, 8, "default", 0.0, 0.0, None),
    ("itp-half", 20, 8, "las", 1.0, 300.0, None),
    ("synth4", 12, 8, "greedy", 0.0, 0.0, None),
    ("synth4", 12, 8, "default", 0.0, 0.0, None),
    ("synth4", 12, 8, "las", 1.0, 300.0, None),
)
VARIANTS = ("itp-half", "synth4")  # written by bench/trace_variants.py


def command(row: tuple[str, int, int, str, float, float, float | None]) -> str:
    trace, nodes, gpn, policy, share, restart, interval = row
    where = "/tmp/dcsched-variants" if trace in VARIANTS else "../shared/traces"
    cmd = f"dcsim replay {where}/{trace}.csv --nodes {nodes} --gpus-per-node {gpn}"
    cmd += f" --policy {policy}"
    if share:
        cmd += f" --preemptible {'all' if share == 1.0 else share} --restart-cost {restart:g}"
    if interval:
        cmd += f" --checkpoint-interval {interval:g}"
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    parser.add_argument("--variants", type=Path, default=Path("/tmp/dcsched-variants"))
    parser.add_argument("--only", help="replay only this trace (tiny60, itp-dev, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: list[dict[str, Any]] = []
    greedy: dict[tuple[str, int], dict[str, Any]] = {}
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(
        "| trace | cluster | policy | preemptible | restart s | checkpoint s | avg JCT s "
        "| avg queue s | p99 queue s | preemptions / job | GPU-h lost | accounts worse "
        "than greedy (JCT) | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        trace, nodes, gpn, policy, share, restart, interval = row
        if args.only and trace != args.only:
            continue
        jobs = load_trace((args.variants if trace in VARIANTS else args.traces) / f"{trace}.csv")
        config = replace(SchedulerConfig(), policy=policy)
        r = replay(jobs, nodes, gpn, config, preemptible=share, cost=Cost(restart, interval))
        if policy == "greedy":
            greedy[(trace, nodes)] = r
        base = greedy.get((trace, nodes))
        worse = (
            [
                a
                for a, v in r["per_account"].items()
                if v["avg_jct_s"] > base["per_account"][a]["avg_jct_s"]
            ]
            if base is not None
            else []
        )
        out.append({"command": command(row), **r, "worse_than_greedy": worse})
        print(
            f"| {trace} | {nodes}x{gpn} | {policy} | {share:g} | {restart:g} | {interval or '-'} "
            f"| {r['avg_jct_s']:,.0f} | {r['avg_queue_s']:,.0f} | {r['p99_queue_s']:,.0f} "
            f"| {r['preemptions'] / max(1, r['jobs']):.3f} | {r['gpu_hours_lost']:,.0f} "
            f"| {', '.join(worse) or 'none'} | {r['wall_s']:.1f} |",
            flush=True,
        )
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
