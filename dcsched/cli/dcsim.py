"""dcsim: replay a job trace through the scheduler core with a virtual clock.

    dcsim replay TRACE --nodes N --gpus-per-node G --policy fifo|greedy|default [--json]

The replay calls the same `decide()` the daemon calls. At each instant: finished jobs
release first, then arrivals join the queue, then one pass (skipped when no GPU is free,
since then nothing can start). A job of g <= G GPUs asks for one node; a larger one asks
for ceil(g / G) whole nodes. The scheduler sees time limits only, never true durations.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import heapq
import json
import math
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dcsched import __version__
from dcsched.protocol.durations import parse_seconds
from dcsched.scheduler import (
    Decisions,
    JobRequest,
    NodeView,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Usage,
    decide,
)

GPU_TYPE = "sim"


@dataclass(frozen=True, slots=True)
class TraceJob:
    job_id: str
    submit_s: float
    duration_s: float
    gpus: int
    user: str
    account: str
    time_limit_s: float


def load_trace(path: Path) -> list[TraceJob]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        jobs = [
            TraceJob(
                r["job_id"],
                float(r["submit_s"]),
                float(r["duration_s"]),
                int(r["gpus"]),
                r["user"],
                r["account"],
                float(r["time_limit_s"]),
            )
            for r in rows
        ]
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"dcsim: {path}: not a trace in the documented schema: {exc}") from exc
    # submit order is file order for equal times; a stable sort keeps it
    jobs.sort(key=lambda j: j.submit_s)
    return jobs


def _index(values: Sequence[float], q: float) -> float:
    return values[math.floor(q * (len(values) - 1))] if values else 0.0


def replay(
    trace: Sequence[TraceJob],
    nodes: int,
    gpus_per_node: int,
    config: SchedulerConfig,
    start_at: dict[str, float] | None = None,
    on_pass: Callable[[Snapshot, float, Decisions], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay `trace`; the figures of the issue, and each job's start in `start_at`.
    `on_progress(jobs ended so far)` is called now and then (about 500 times a replay)."""
    t_wall = time.perf_counter()
    names = [f"n{i:04d}" for i in range(nodes)]
    gpu_ids = tuple(range(gpus_per_node))
    free: list[set[int]] = [set(gpu_ids) for _ in range(nodes)]
    views: list[NodeView] = [NodeView(n, GPU_TYPE, gpu_ids, frozenset(gpu_ids)) for n in names]
    rank = {n: i for i, n in enumerate(names)}
    free_total = nodes * gpus_per_node
    by_id = {j.job_id: j for j in trace}
    if len(by_id) != len(trace):
        raise SystemExit("dcsim: job_id values in the trace are not unique")

    half_life = config.half_life_s
    want_usage = config.policy == "default" and config.weights.fairshare > 0
    # fair-share bookkeeping kept exact and O(accounts) per pass: finished work decayed,
    # running work charged undecayed until it finishes
    done_usage: dict[tuple[str, str], float] = {}
    done_ts = trace[0].submit_s if trace else 0.0
    run_g: dict[tuple[str, str], float] = {}
    run_gs: dict[tuple[str, str], float] = {}

    pending: list[JobRequest] = []
    running: dict[str, RunningJob] = {}
    finishing: list[tuple[float, int, str]] = []
    start_at = {} if start_at is None else start_at
    finish_at: dict[str, float] = {}
    gpus_of: dict[str, int] = {}
    pass_ms: list[float] = []
    seq = 0
    i = 0
    ended = 0
    step = max(1, len(trace) // 500)
    while i < len(trace) or finishing:
        now = min(
            trace[i].submit_s if i < len(trace) else math.inf,
            finishing[0][0] if finishing else math.inf,
        )
        while finishing and finishing[0][0] == now:
            _, _, jid = heapq.heappop(finishing)
            rj = running.pop(jid)
            for name, gpus in rj.allocation:
                node = rank[name]
                free[node].update(gpus)
                views[node] = replace(views[node], free=frozenset(free[node]))
            free_total += rj.gpus
            key = (rj.account, rj.user)
            if want_usage:
                k = 0.5 ** ((now - done_ts) / half_life)
                done_usage = {kk: v * k for kk, v in done_usage.items()}
                done_ts = now
                done_usage[key] = done_usage.get(key, 0.0) + rj.gpus * (now - rj.start_ts)
                run_g[key] -= rj.gpus
                run_gs[key] -= rj.gpus * rj.start_ts
            ended += 1
            if on_progress is not None and ended % step == 0:
                on_progress(ended)
        while i < len(trace) and trace[i].submit_s == now:
            tj = trace[i]
            i += 1
            n_nodes = 1 if tj.gpus <= gpus_per_node else math.ceil(tj.gpus / gpus_per_node)
            per_node = tj.gpus if n_nodes == 1 else gpus_per_node
            pending.append(
                JobRequest(
                    tj.job_id, tj.user, tj.account, tj.submit_s, n_nodes, per_node, tj.time_limit_s
                )
            )
        if not pending or free_total == 0:
            continue
        usage = Usage()
        if want_usage:
            k = 0.5 ** ((now - done_ts) / half_life)
            values = {kk: v * k for kk, v in done_usage.items()}
            for key, g in run_g.items():
                if g:
                    values[key] = values.get(key, 0.0) + g * now - run_gs[key]
            usage = Usage(now, values)
        snapshot = Snapshot(tuple(views), tuple(pending), tuple(running.values()), config, usage)
        t0 = time.perf_counter()
        decisions = decide(snapshot, now)
        pass_ms.append((time.perf_counter() - t0) * 1000.0)
        if on_pass is not None:
            on_pass(snapshot, now, decisions)
        if not decisions.starts:
            continue
        started = set()
        for start in decisions.starts:
            req_job = by_id[start.job_id]
            started.add(start.job_id)
            for name, gpus in start.allocation:
                node = rank[name]
                free[node].difference_update(gpus)
                views[node] = replace(views[node], free=frozenset(free[node]))
            rj = RunningJob(
                start.job_id,
                req_job.user,
                req_job.account,
                now,
                req_job.time_limit_s,
                start.allocation,
                gpu_type=GPU_TYPE,
            )
            running[start.job_id] = rj
            free_total -= rj.gpus
            gpus_of[start.job_id] = rj.gpus
            start_at[start.job_id] = now
            finish_at[start.job_id] = now + req_job.duration_s
            heapq.heappush(finishing, (now + req_job.duration_s, seq, start.job_id))
            seq += 1
            if want_usage:
                key = (rj.account, rj.user)
                run_g[key] = run_g.get(key, 0.0) + rj.gpus
                run_gs[key] = run_gs.get(key, 0.0) + rj.gpus * now
        pending = [j for j in pending if j.job_id not in started]

    if on_progress is not None:
        on_progress(ended)
    if pending:
        print(f"dcsim: {len(pending)} jobs could never start on this cluster", file=sys.stderr)
    return _report(trace, start_at, finish_at, gpus_of, nodes * gpus_per_node, pass_ms, t_wall)


def _report(
    trace: Sequence[TraceJob],
    start_at: dict[str, float],
    finish_at: dict[str, float],
    gpus_of: dict[str, int],
    capacity: int,
    pass_ms: list[float],
    t_wall: float,
) -> dict[str, Any]:
    done = [j for j in trace if j.job_id in start_at]
    queue = sorted(start_at[j.job_id] - j.submit_s for j in done)
    jct = [finish_at[j.job_id] - j.submit_s for j in done]
    makespan = (max(finish_at.values()) - min(j.submit_s for j in trace)) if done else 0.0
    used = sum(gpus_of[j.job_id] * j.duration_s for j in done)
    per: dict[str, dict[str, float]] = {}
    for j in done:
        a = per.setdefault(j.account, {"jobs": 0, "queue": 0.0, "gpu_seconds": 0.0})
        a["jobs"] += 1
        a["queue"] += start_at[j.job_id] - j.submit_s
        a["gpu_seconds"] += gpus_of[j.job_id] * j.duration_s
    n = len(done)
    pass_sorted = sorted(pass_ms)
    return {
        "jobs": n,
        "avg_jct_s": sum(jct) / n if n else 0.0,
        "avg_queue_s": sum(queue) / n if n else 0.0,
        "p50_queue_s": _index(queue, 0.5),
        "p99_queue_s": _index(queue, 0.99),
        "max_queue_s": queue[-1] if queue else 0.0,
        "makespan_s": makespan,
        "gpu_util": used / (capacity * makespan) if makespan > 0 else 0.0,
        "per_account": {
            a: {
                "jobs": int(v["jobs"]),
                "avg_queue_s": v["queue"] / v["jobs"],
                "gpu_seconds": v["gpu_seconds"],
            }
            for a, v in sorted(per.items())
        },
        "wall_s": time.perf_counter() - t_wall,
        "pass_ms": {"p50": _index(pass_sorted, 0.5), "p99": _index(pass_sorted, 0.99)},
    }


MAX_ACCOUNTS = 8  # the summary fits one screen: the accounts that used the most GPU-hours


def _text(result: dict[str, Any], title: str = "") -> str:
    """The figures on one screen: the queue, the cluster, the scheduler, the top accounts."""
    h = 3600.0
    lines = [title] if title else []
    lines += [
        f"jobs      {result['jobs']:,} replayed in {result['wall_s']:.1f} s",
        f"queue     avg {result['avg_queue_s'] / h:,.2f} h   p50 {result['p50_queue_s'] / h:,.2f} h"
        f"   p99 {result['p99_queue_s'] / h:,.2f} h   max {result['max_queue_s'] / h:,.2f} h",
        f"avg JCT   {result['avg_jct_s']:,.0f} s ({result['avg_jct_s'] / h:,.2f} h)",
        f"makespan  {result['makespan_s']:,.0f} s ({result['makespan_s'] / 86400:,.1f} days)",
        f"GPU util  {result['gpu_util']:.3f}",
        f"pass ms   p50 {result['pass_ms']['p50']:.2f}  p99 {result['pass_ms']['p99']:.2f}",
        "",
        f"{'account':<10} {'jobs':>7} {'avg queue s':>12} {'GPU-hours':>11}",
    ]
    accounts = sorted(result["per_account"].items(), key=lambda kv: -kv[1]["gpu_seconds"])
    for account, a in accounts[:MAX_ACCOUNTS]:
        lines.append(
            f"{account:<10} {a['jobs']:>7,} {a['avg_queue_s']:>12,.0f} "
            f"{a['gpu_seconds'] / 3600:>11,.0f}"
        )
    if len(accounts) > MAX_ACCOUNTS:
        lines.append(f"... and {len(accounts) - MAX_ACCOUNTS} more accounts (--json has them all)")
    return "\n".join(lines)


@contextlib.contextmanager
def _progress(total: int, mode: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr (rich, the `sim` extra): `auto` shows it on a terminal."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    except ImportError:
        if mode == "always":
            print("dcsim: no progress bar: pip install 'dcsched[sim]'", file=sys.stderr)
        yield None
        return
    console = Console(stderr=True, force_terminal=True if mode == "always" else None)
    if mode == "never" or not console.is_terminal:
        yield None
        return
    columns = ("replaying", BarColumn(), MofNCompleteColumn(), "jobs", TimeRemainingColumn())
    with Progress(*columns, console=console, transient=mode != "always") as bar:
        task = bar.add_task("replay", total=total)
        yield lambda done: bar.update(task, completed=done)


def _config(policy: str, path: Path | None) -> SchedulerConfig:
    table: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as f:
            doc = tomllib.load(f)
        table = dict(doc.get("scheduler", doc))
    table["policy"] = policy
    try:
        return SchedulerConfig.from_mapping(table, duration=parse_seconds)
    except ValueError as exc:
        raise SystemExit(f"dcsim: {path}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcsim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="replay a trace (CSV, see docs/scheduler.md)")
    rp.add_argument("trace", type=Path)
    rp.add_argument("--nodes", type=int, required=True)
    rp.add_argument("--gpus-per-node", type=int, required=True)
    rp.add_argument("--policy", choices=("fifo", "greedy", "default"), default="default")
    rp.add_argument("--config", type=Path, help="TOML file with a [scheduler] table")
    rp.add_argument("--json", action="store_true", help="print the figures as JSON")
    rp.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr (auto: when it is a terminal)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be at least 1")
    if not args.trace.is_file():
        parser.error(f"no such trace file: {args.trace}")
    config = _config(args.policy, args.config)
    trace = load_trace(args.trace)
    with _progress(len(trace), args.progress) as on_progress:
        result = replay(trace, args.nodes, args.gpus_per_node, config, on_progress=on_progress)
    title = f"{args.trace.name} on {args.nodes} x {args.gpus_per_node} GPUs, policy {args.policy}"
    print(json.dumps(result, indent=2) if args.json else _text(result, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
