"""dcsim: replay a job trace through the scheduler core with a virtual clock.

    dcsim replay TRACE --nodes N --gpus-per-node G [--policy P] [--json]
          [--preemptible FRACTION|all --restart-cost S [--checkpoint-interval S]] [--vs P]

The replay runs the one simulation harness (`dcsched.scheduler.simulate`), which calls the
same `decide()` the daemon calls and applies its decisions as the daemon does (starts,
preemptions with their grace, requeues, fair-share accrual with billing). A job of
g <= G GPUs asks for one node; a larger one asks for ceil(g / G) whole nodes. The
scheduler sees time limits only, never true durations.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
import time
import tomllib
import zlib
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
    SchedulerConfig,
    Snapshot,
    decide,
)
from dcsched.scheduler.config import POLICIES
from dcsched.scheduler.simulate import NO_COST, Cost, JobRecord, SimJob, Simulator

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


def preemptible_share(job_id: str, fraction: float) -> bool:
    """Whether a job is marked preemptible by `--preemptible FRACTION`: chosen by a hash of
    its id, so the same jobs are chosen whatever the policy or the trace's order."""
    return fraction >= 1.0 or zlib.crc32(job_id.encode()) < fraction * 2**32


def workload(
    trace: Sequence[TraceJob], gpus_per_node: int, preemptible: float = 0.0
) -> list[SimJob]:
    """A job of g <= G GPUs asks for one node; a larger one for ceil(g / G) whole nodes."""
    out = []
    for tj in trace:
        n_nodes = 1 if tj.gpus <= gpus_per_node else math.ceil(tj.gpus / gpus_per_node)
        per_node = tj.gpus if n_nodes == 1 else gpus_per_node
        request = JobRequest(
            tj.job_id,
            tj.user,
            tj.account,
            tj.submit_s,
            n_nodes,
            per_node,
            tj.time_limit_s,
            preemptible=preemptible > 0 and preemptible_share(tj.job_id, preemptible),
        )
        out.append(SimJob(request, tj.duration_s))
    return out


def replay(
    trace: Sequence[TraceJob],
    nodes: int,
    gpus_per_node: int,
    config: SchedulerConfig,
    start_at: dict[str, float] | None = None,
    on_pass: Callable[[Snapshot, float, Decisions], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    preemptible: float = 0.0,
    cost: Cost = NO_COST,
) -> dict[str, Any]:
    """Replay `trace` through the simulation harness (`dcsched.scheduler.simulate`); the
    figures of the issue, and each job's first start in `start_at`."""
    t_wall = time.perf_counter()
    if len({j.job_id for j in trace}) != len(trace):
        raise SystemExit("dcsim: job_id values in the trace are not unique")
    gpu_ids = tuple(range(gpus_per_node))
    views = [NodeView(f"n{i:04d}", GPU_TYPE, gpu_ids, frozenset(gpu_ids)) for i in range(nodes)]
    pass_ms: list[float] = []

    def timed(snapshot: Snapshot, now: float) -> Decisions:
        t0 = time.perf_counter()
        decisions = decide(snapshot, now)
        pass_ms.append((time.perf_counter() - t0) * 1000.0)
        return decisions

    sim = Simulator(views, config, cost, decide_fn=timed)
    records = sim.run(workload(trace, gpus_per_node, preemptible), on_pass, on_progress)
    not_started = sum(1 for r in records.values() if r.finish_s is None)
    if not_started:
        print(f"dcsim: {not_started} jobs could never start on this cluster", file=sys.stderr)
    if start_at is not None:
        start_at.update(
            {j: r.first_start_s for j, r in records.items() if r.first_start_s is not None}
        )
    return _report(list(records.values()), nodes * gpus_per_node, pass_ms, t_wall)


def _report(
    records: Sequence[JobRecord], capacity: int, pass_ms: list[float], t_wall: float
) -> dict[str, Any]:
    done = [r for r in records if r.finish_s is not None and r.first_start_s is not None]
    queue = sorted(r.first_start_s - r.submit_s for r in done if r.first_start_s is not None)
    jct = [r.finish_s - r.submit_s for r in done if r.finish_s is not None]
    first = min((r.submit_s for r in records), default=0.0)
    makespan = max((r.finish_s for r in done if r.finish_s is not None), default=first) - first
    used = sum(r.gpus * r.duration_s for r in done)
    per: dict[str, dict[str, float]] = {}
    for r in done:
        assert r.first_start_s is not None and r.finish_s is not None
        a = per.setdefault(r.account, {"jobs": 0, "queue": 0.0, "jct": 0.0, "gpu_seconds": 0.0})
        a["jobs"] += 1
        a["queue"] += r.first_start_s - r.submit_s
        a["jct"] += r.finish_s - r.submit_s
        a["gpu_seconds"] += r.gpus * r.duration_s
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
        "preemptions": sum(r.preemptions for r in records),
        "gpu_hours_lost": sum(r.lost_gpu_s for r in records) / 3600.0,
        "per_account": {
            a: {
                "jobs": int(v["jobs"]),
                "avg_queue_s": v["queue"] / v["jobs"],
                "avg_jct_s": v["jct"] / v["jobs"],
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
        f"preempted {result['preemptions']:,} times, "
        f"{result['gpu_hours_lost']:,.0f} GPU-hours lost to it",
    ]
    vs = result.get("vs")
    if vs is not None:
        lines.append(
            f"vs {vs['policy']:<6} avg JCT {vs['avg_jct_s']:,.0f} s   "
            f"p99 queue {vs['p99_queue_s'] / h:,.2f} h"
        )
    head = f"{'account':<10} {'jobs':>7} {'avg queue s':>12} {'avg JCT s':>11} {'GPU-hours':>11}"
    if vs is not None:
        head += f"  {vs['policy'] + ' queue':>13} {vs['policy'] + ' JCT':>11}"
    lines += ["", head]
    accounts = sorted(result["per_account"].items(), key=lambda kv: -kv[1]["gpu_seconds"])
    for account, a in accounts[:MAX_ACCOUNTS]:
        line = (
            f"{account:<10} {a['jobs']:>7,} {a['avg_queue_s']:>12,.0f} {a['avg_jct_s']:>11,.0f} "
            f"{a['gpu_seconds'] / 3600:>11,.0f}"
        )
        if vs is not None and account in vs["per_account"]:
            b = vs["per_account"][account]
            line += f"  {b['avg_queue_s']:>13,.0f} {b['avg_jct_s']:>11,.0f}"
        lines.append(line)
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


def _fraction(text: str) -> float:
    if text == "all":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1] or 'all', got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A duration in the project's grammar; 0 (no cost) is allowed here."""
    if text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcsim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="replay a trace (CSV, see docs/scheduler.md)")
    rp.add_argument("trace", type=Path)
    rp.add_argument("--nodes", type=int, required=True)
    rp.add_argument("--gpus-per-node", type=int, required=True)
    rp.add_argument("--policy", choices=POLICIES, default="default")
    rp.add_argument("--config", type=Path, help="TOML file with a [scheduler] table")
    rp.add_argument(
        "--preemptible",
        type=_fraction,
        default=0.0,
        metavar="FRACTION|all",
        help="mark this share of the jobs (chosen by a hash of the id) or all of them "
        "preemptible (requeue = true); default 0",
    )
    rp.add_argument(
        "--restart-cost",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="work a preempted job does again, as a duration (300, 5m); default 0",
    )
    rp.add_argument(
        "--checkpoint-interval",
        type=_seconds,
        default=None,
        metavar="S",
        help="jobs checkpoint every S of run time and lose what they did since the last "
        "checkpoint when preempted (default: they checkpoint on the preemption signal)",
    )
    rp.add_argument(
        "--vs",
        choices=(*POLICIES, "none"),
        default=None,
        help="also replay this policy without preemption and show its figures alongside "
        "(default: greedy when --preemptible is given, else none)",
    )
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
    cost = Cost(args.restart_cost, args.checkpoint_interval or None)
    with _progress(len(trace), args.progress) as on_progress:
        result = replay(
            trace,
            args.nodes,
            args.gpus_per_node,
            config,
            on_progress=on_progress,
            preemptible=args.preemptible,
            cost=cost,
        )
    vs = args.vs or ("greedy" if args.preemptible > 0 else "none")
    if vs != "none":
        other = replay(trace, args.nodes, args.gpus_per_node, replace(config, policy=vs))
        result["vs"] = {
            "policy": vs,
            **{k: other[k] for k in ("avg_jct_s", "avg_queue_s", "p99_queue_s")},
            "per_account": {
                a: {"avg_jct_s": v["avg_jct_s"], "avg_queue_s": v["avg_queue_s"]}
                for a, v in other["per_account"].items()
            },
        }
    title = f"{args.trace.name} on {args.nodes} x {args.gpus_per_node} GPUs, policy {args.policy}"
    print(json.dumps(result, indent=2) if args.json else _text(result, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
