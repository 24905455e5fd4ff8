"""`dcctl acct` (like sacct) and `dcctl eff JOB` (like seff): finished jobs' accounting and
one job's use of its GPUs; `dcctl node-events HOST`: a node's drains, resumes and faults."""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from typing import Any

from dcsched.cli.common import duration, pct, print_json, table, timestamp
from dcsched.client import Client
from dcsched.protocol.jobspec import parse_duration

CSV_FIELDS = (
    "job_id",
    "name",
    "user",
    "account",
    "qos",
    "state",
    "nodes",
    "gpus",
    "hosts",
    "submit_ts",
    "start_ts",
    "end_ts",
    "exit_code",
    "signal",
    "gpu_hours",
    "energy_kwh",
    "mean_util",
    "mean_mem_bytes",
    "max_mem_bytes",
)
GIB = 1024**3


def when(text: str) -> float:
    """A point in time: YYYY-MM-DD[THH:MM[:SS]] (local time), or a duration ago (7d, 12h,
    1h30m: the job-file grammar)."""
    t = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ]\d{1,2}:\d{2}(:\d{2})?)?", t):
        fmt = "%Y-%m-%d"
        if len(t) > 10:
            t = t.replace(" ", "T")
            fmt += "T%H:%M:%S" if t.count(":") == 2 else "T%H:%M"
        try:
            return time.mktime(time.strptime(t, fmt))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    try:
        return time.time() - parse_duration(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a date (2026-11-01, 2026-11-01T08:00) nor a duration ago"
            " (7d, 12h, 1h30m)"
        ) from None


def add_parsers(add: Any) -> None:
    """Registers `acct` and `eff` with dcctl's `add(name, help)`."""
    a = add("acct", "finished jobs' accounting, with totals per account (like sacct)")
    a.add_argument("--user", help="only this user's jobs")
    a.add_argument("--account", help="only this account's jobs")
    a.add_argument("--state", help="only these final states, comma-separated (e.g. FAILED)")
    a.add_argument("--since", type=when, help="jobs that ended since: a date or a duration ago")
    a.add_argument("--until", type=when, help="jobs that ended before: a date or a duration ago")
    a.add_argument("--limit", type=int, default=1000, help="at most this many jobs (1000)")
    a.add_argument("--csv", action="store_true", help="the jobs as CSV (totals: table or --json)")
    e = add("eff", "one job's use of its GPUs: GPU-hours, utilisation, energy (like seff)")
    e.add_argument("job")
    n = add("node-events", "a node's drains, resumes and GPU faults, and its unhealthy GPUs")
    n.add_argument("host")


def cmd_acct(c: Client, a: argparse.Namespace) -> int:
    out = c.accounting(
        user=a.user,
        account=a.account,
        state=a.state.upper() if a.state else None,
        since=a.since,
        until=a.until,
        limit=a.limit,
    )
    if a.json:
        print_json(out)
        return 0
    if a.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for r in out["jobs"]:
            w.writerow(["|".join(v) if isinstance(v := r.get(k), list) else v for k in CSV_FIELDS])
        return 0
    rows = [
        (
            r["job_id"],
            r["name"][:20],
            r["user"],
            r["account"],
            r["qos"],
            r["state"],
            r["gpus"],
            timestamp(r["start_ts"]),
            timestamp(r["end_ts"]),
            duration((r["end_ts"] - r["start_ts"]) if r["start_ts"] else None),
            "" if r["exit_code"] is None else r["exit_code"],
            f"{r['gpu_hours']:.2f}",
            f"{r['energy_kwh']:.3f}",
            pct(r["mean_util"]),
        )
        for r in out["jobs"]
    ]
    heads = ("JOBID", "NAME", "USER", "ACCOUNT", "QOS", "STATE", "GPUS", "START", "END")
    print(table((*heads, "ELAPSED", "EXIT", "GPU-H", "KWH", "UTIL"), rows))
    print()
    print(
        table(
            ("ACCOUNT", "JOBS", "GPU-H", "KWH", "UTIL"),
            [
                (
                    t["account"],
                    t["jobs"],
                    f"{t['gpu_hours']:.2f}",
                    f"{t['energy_kwh']:.3f}",
                    pct(t["mean_util"]),
                )
                for t in out["totals"]
            ],
        )
    )
    return 0


def cmd_eff(c: Client, a: argparse.Namespace) -> int:
    r = c.efficiency(a.job)
    if a.json:
        print_json(r)
        return 0
    state = r["state"]
    if r["exit_code"] is not None:
        state += f" (exit code {r['exit_code']})"
    elif r["signal"] is not None:
        state += f" (signal {r['signal']})"
    end = r["end_ts"] or time.time()
    alloc = ", ".join(f"{h}: {','.join(map(str, g))}" for h, g in r["alloc"].items())
    lines = [
        f"Job ID: {r['job_id']}",
        f"Name: {r['name']}",
        f"User/Account/QOS: {r['user']}/{r['account']}/{r['qos']}",
        f"State: {state}" + ("" if r["end_ts"] else " (so far)"),
        f"Nodes: {r['nodes']}  GPUs: {r['gpus']}" + (f" ({alloc})" if alloc else ""),
        f"Elapsed: {duration(end - r['start_ts']) if r['start_ts'] else 'never started'}",
        f"GPU-hours allocated: {r['gpu_hours']:.2f}",
    ]
    if r["mean_util"] is not None:
        used = r["gpu_hours"] * r["mean_util"] / 100
        lines.append(
            f"GPU-hours used: {used:.2f} ({r['mean_util']:.1f}% of allocated, by mean utilisation)"
        )
    else:
        lines.append("GPU-hours used: unknown (no utilisation reported for its GPUs)")
    lines.append(f"Energy: {r['energy_kwh']:.3f} kWh")
    if r["max_mem_bytes"] is not None:
        lines.append(
            f"GPU memory: mean {r['mean_mem_bytes'] / GIB:.1f} GiB,"
            f" max {r['max_mem_bytes'] / GIB:.1f} GiB per GPU"
        )
    print("\n".join(lines))
    if r["per_gpu"]:
        print()
        print(
            table(
                ("HOST", "GPU", "UTIL", "MEM-MEAN", "MEM-MAX", "KWH", "SAMPLES"),
                [
                    (
                        g["host"],
                        g["gpu"],
                        pct(g["mean_util"]),
                        _gib(g["mean_mem_bytes"]),
                        _gib(g["max_mem_bytes"]),
                        f"{g['energy_j'] / 3.6e6:.3f}",
                        g["samples"],
                    )
                    for g in r["per_gpu"]
                ],
            )
        )
    return 0


def _gib(v: float | None) -> str:
    return "" if v is None else f"{v / GIB:.1f}G"


def cmd_node_events(c: Client, a: argparse.Namespace) -> int:
    r = c.node_events(a.host)
    if a.json:
        print_json(r)
        return 0
    state = f"drained: {r['drain_reason']}" if r["drained"] else "not drained"
    print(f"{r['host']}: {state}")
    for _, what in sorted(r["unhealthy_gpus"].items(), key=lambda kv: int(kv[0])):
        print(f"  unhealthy: {what}")
    print()
    print(
        table(
            ("TIME", "EVENT", "DETAIL"),
            [(timestamp(e["ts"]), e["kind"], e["detail"]) for e in r["events"]],
        )
    )
    return 0
