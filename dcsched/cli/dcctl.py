"""`dcctl`: list, show, cancel, hold, release jobs; list, drain and resume nodes; read logs;
accounting (`acct`, `eff`: dcsched/cli/acct.py)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dcsched import __version__
from dcsched.cli import acct, queue_format
from dcsched.cli.common import (
    client_from,
    duration,
    pct,
    print_json,
    run_cli,
    table,
    timestamp,
)
from dcsched.client import TOKEN_FILE, ApiError, Client, ClientError, EventStream, StreamEvent
from dcsched.protocol.config import add_connection_args
from dcsched.protocol.durations import parse_seconds
from dcsched.protocol.endings import ENDED, end_text
from dcsched.protocol.hostlist import compress, expand
from dcsched.protocol.jobspec import UPDATABLE, parse_duration

EVENT_KINDS = ("job", "node")


def _exit(job: dict[str, Any]) -> str:
    """Slurm's EXITCODE:SIGNAL."""
    if job.get("exit_code") is None and job.get("signal") is None:
        return ""
    return f"{job.get('exit_code') or 0}:{job.get('signal') or 0}"


def when(text: str, now: float | None = None) -> float:
    """A point in time for --since/--until: an ISO date or date and time (local time),
    "now", or a duration ago ("2h", "1-00", "now-30m"; a bare number is minutes)."""
    now = time.time() if now is None else now
    t = text.strip()
    if t == "now":
        return now
    try:
        return datetime.datetime.fromisoformat(t).timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration(t.removeprefix("now-"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a time: write 2026-11-25, 2026-11-25T14:30, now, "
            'or how long ago, e.g. 2h, 1-00, now-30m ("90" is 90 minutes)'
        ) from None


def cmd_queue(c: Client, a: argparse.Namespace) -> int:
    fmt = a.format or os.environ.get(queue_format.ENV) or queue_format.DEFAULT
    if a.start and not a.format:
        fmt = queue_format.START
    try:
        queue_format.parse(fmt)
    except ValueError as exc:
        print(f"dcctl: {exc}", file=sys.stderr)
        return 2
    jobs = c.jobs(all_states=a.all, user=a.user, state=a.state, since=a.since, until=a.until)
    if a.start:
        # pending jobs only, each with when it would start (squeue --start); the forecast
        # covers the first jobs in priority order, the rest show no time
        starts = c.forecast(a.start_jobs)
        jobs = [j for j in jobs if j["state"] in _WAITING]
        for j in jobs:
            j["start_ts"] = starts.get(j["id"])
        jobs.sort(key=lambda j: (j["start_ts"] is None, j["start_ts"] or 0.0, j["id"]))
    if a.json:
        print_json({"jobs": jobs})
        return 0
    if not a.array:
        jobs = collapse_arrays(jobs, by_start=a.start)
    if not a.start:
        jobs.sort(key=lambda j: j["id"])
    print(queue_format.render(fmt, jobs, header=not a.noheader))
    return 0


# --- job arrays ----------------------------------------------------------------------------------

_WAITING = ("PENDING", "HELD", "REQUEUED")


def index_ranges(indexes: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] as "0-2,5,7-8"."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive indexes
    for i in sorted(indexes):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def collapse_arrays(jobs: list[dict[str, Any]], by_start: bool = False) -> list[dict[str, Any]]:
    """One row for the waiting tasks of an array in one state (`123_[4-9%8]`, with the
    array's limit on tasks running at once, as squeue shows them); running and finished
    tasks keep a row each. `by_start` (queue --start): one row per forecast start time,
    so no task shows another's time."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[int, str, float | None], list[dict[str, Any]]] = {}
    for j in jobs:
        if j.get("array_job_id") is not None and j["state"] in _WAITING:
            key = (j["array_job_id"], j["state"], j.get("start_ts") if by_start else None)
            if key not in groups:
                groups[key] = []
                out.append(j)  # the group's place: its first task's
            groups[key].append(j)
        else:
            out.append(j)
    for (array_id, _, _), tasks in groups.items():
        if len(tasks) > 1:
            ranges = index_ranges([t["array_task_id"] for t in tasks])
            limit = tasks[0].get("array_limit")
            ranges += f"%{limit}" if limit else ""
            tasks[0]["display_id"] = f"{array_id}_[{ranges}]"
    return out


def cmd_show(c: Client, a: argparse.Namespace) -> int:
    job = c.job(a.job)
    if a.json:
        print_json(job)
        return 0
    spec = job["spec"]
    lines = [
        ("JobId", job["id"]),
        ("Name", job["name"]),
        ("User", f"{job['user']} ({job['uid']})"),
        ("Account", job["account"]),
        ("QOS", job["qos"]),
        ("State", job["state"]),
        ("Reason", end_text(job) if job["state"] in ENDED else job.get("reason") or ""),
        *(
            [("ArrayJobId", job["array_job_id"]), ("ArrayTaskId", job["array_task_id"])]
            if job.get("array_job_id") is not None
            else []
        ),
        *([("Signal", spec["signal"])] if spec.get("signal") else []),
        ("Requeue", "yes" if spec.get("requeue") else "no"),
        ("Restarts", job.get("restart_count", 0)),
        *([("EarlierRuns", duration(job["attained_s"]))] if job.get("attained_s") else []),
        ("ExitCode", _exit(job)),
        ("Nodes", job["nodes"]),
        ("NodeList", compress(job.get("hosts") or [])),
        ("GPUsPerNode", job["gpus_per_node"]),
        ("GpuType", job.get("gpu_type") or ""),
        ("TimeLimit", duration(job["time_limit_s"])),
        ("RunTime", duration(job.get("elapsed_s"))),
        ("SubmitTime", timestamp(job["submit_ts"])),
        ("StartTime", timestamp(job.get("start_ts"))),
        ("EndTime", timestamp(job.get("end_ts"))),
        ("Master", f"{job['master_addr']}:{job['master_port']}" if job.get("master_addr") else ""),
    ]
    if job.get("hidden"):
        lines.append(("Hidden", ", ".join(job["hidden"]) + " (only its owner or an admin sees)"))
    else:
        lines += [("Command", " ".join(spec["command"])), ("WorkDir", spec.get("workdir", ""))]
    if job.get("idle_s") is not None:
        lines.insert(7, ("Idle", f"its GPUs have been idle for {duration(job['idle_s'])}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.rjust(width)} = {v}")
    if job.get("node_parts"):
        print()
        print(
            table(
                ("RANK", "HOST", "GPUS", "STATE", "PID", "EXIT", "REASON", "LOG"),
                [
                    (
                        p["node_rank"],
                        p["host"],
                        ",".join(map(str, p["gpus"])),
                        p["state"],
                        p["pid"],
                        _exit(p),
                        p["reason"],
                        p["log_path"],
                    )
                    for p in job["node_parts"]
                ],
            )
        )
    if job.get("events"):
        print()
        print(
            table(
                ("TIME", "STATE", "DETAIL"),
                [(timestamp(e["ts"]), e["state"], e["detail"]) for e in job["events"]],
            )
        )
    return 0


def _assignments(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE words as the update's fields (nice as a number)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in UPDATABLE:
            raise ClientError(
                f"cannot read {pair!r}: write KEY=VALUE with KEY one of {', '.join(UPDATABLE)}"
            )
        if key == "nice":
            try:
                out[key] = int(value)
            except ValueError:
                raise ClientError(f"nice: expected a whole number, got {value!r}") from None
        else:
            out[key] = value
    return out


def cmd_update(c: Client, a: argparse.Namespace) -> int:
    job = c.update(a.job, _assignments(a.fields))
    if a.json:
        print_json(job)
        return 0
    for t in job.get("tasks", [job]):  # an array's id: every task it changed
        print(
            f"job {queue_format.display_id(t)}: time_limit {duration(t['time_limit_s'])}, "
            f"nice {t['nice']}, qos {t['qos']}"
        )
    for t in job.get("skipped", []):
        print(f"job {queue_format.display_id(t)}: {t['state']} (left as it is: {t['why']})")
    return 0


def _job_actions(c: Client, a: argparse.Namespace, action: str) -> int:
    """The action on each job named: a job, an array task (`123_4`) or a whole array (its
    id); the daemon resolves them (and says which tasks of an array it left alone)."""
    rc = 0
    done = []
    for ref in a.jobs:
        try:
            job = c.job_action(ref, action)
        except ApiError as exc:
            named = f"job {ref} " in exc.message or exc.message.startswith(f"array {ref}")
            msg = exc.message if named else f"job {ref}: {exc.message}"
            print(f"dcctl: {msg}", file=sys.stderr)
            rc = 1
            continue
        done.append(job)
        if not a.json:
            print(_acted(job))
    if a.json:
        print_json({"jobs": done})
    return rc


def _acted(job: dict[str, Any]) -> str:
    """`job 12: HELD`; for an array, one line per task changed and per task left alone."""
    if "tasks" not in job:
        return f"job {queue_format.display_id(job)}: {job['state']}"
    lines = [f"job {queue_format.display_id(t)}: {t['state']}" for t in job["tasks"]]
    lines += [
        f"job {queue_format.display_id(t)}: {t['state']} (left as it is: {t['why']})"
        for t in job["skipped"]
    ]
    return "\n".join(lines)


def cmd_explain(c: Client, a: argparse.Namespace) -> int:
    why = c.explain(a.job)
    if a.json:
        print_json(why)
        return 0
    print(f"Job {why['job_id']} ({why['job_state']}), policy {why['policy']}")
    requeued = why.get("requeued")
    if why["state"] == "running":
        if requeued and why["job_state"] == "COMPLETING":
            print(f"It is going back to the queue (since {timestamp(requeued['ts'])}):")
            print(f"  {requeued['why']}")
        else:
            print("It is running: nothing holds it back.")
        return 0
    if requeued:
        print(f"Its last run was stopped at {timestamp(requeued['ts'])} and requeued:")
        print(f"  {requeued['why']}")
    print(f"Priority {why['priority']:.1f}, #{why['rank']} of {why['queue_length']} waiting")
    if why["factors"]:
        print()
        print(
            table(
                ("FACTOR", "VALUE", "WEIGHT", "CONTRIBUTION"),
                [
                    (f["name"], f"{f['value']:.4f}", f"{f['weight']:g}", f"{f['contribution']:.1f}")
                    for f in why["factors"]
                ],
            )
        )
    print()
    if why["reasons"]:
        print("Not running because:")
        details = why.get("details") or []
        for i, r in enumerate(why["reasons"]):
            print(f"  - {r}: {details[i]}" if i < len(details) else f"  - {r}")
    else:
        print("Nothing holds it back: it starts in the next pass.")
    if why.get("est_start"):
        print(f"Estimated start: {timestamp(why['est_start'])}")
    if why.get("reservation"):
        held = ", ".join(f"{n}:{g}" for n, g in why["reservation"])
        print(f"GPUs reserved for it from then: {held}")
    if why.get("preempts"):
        print("Will preempt: " + ", ".join(why["preempts"]))
    return 0


def cmd_fairshare(c: Client, a: argparse.Namespace) -> int:
    report = c.fairshare()
    if a.json:
        print_json(report)
        return 0
    print(
        table(
            ("ACCOUNT", "USER", "RAWSHARES", "NORMSHARES", "RAWUSAGE", "EFFECTVUSAGE", "FAIRSHARE"),
            [
                (
                    r["account"] if not r["user"] else "",
                    r["user"],
                    f"{r['raw_shares']:g}",
                    f"{r['norm_shares']:.6f}",
                    f"{r['raw_usage']:.0f}",
                    f"{r['effective_usage']:.6f}",
                    f"{r['fairshare']:.6f}",
                )
                for r in report["rows"]
            ],
        )
    )
    return 0


def _node_state(n: dict[str, Any]) -> str:
    state = str(n.get("drain_state") or n["state"])
    return state + (" (sim)" if n["simulated"] else "")


def cmd_nodes(c: Client, a: argparse.Namespace) -> int:
    nodes = c.nodes()
    if a.hosts is not None:
        wanted = set(a.hosts)
        nodes = [n for n in nodes if n["host"] in wanted]
    if a.json:
        print_json({"nodes": nodes})
        return 0
    rows = [
        (
            n["host"],
            _node_state(n),
            n["gpus"],
            n["gpus_allocated"],
            n["gpu_type"],
            pct(n.get("mean_util")),
            n["addr"],
            ",".join(map(str, n["jobs"])),
            n["drain_reason"],
        )
        for n in nodes
    ]
    print(table(("HOST", "STATE", "GPUS", "ALLOC", "TYPE", "UTIL", "ADDR", "JOBS", "REASON"), rows))
    return 0


def cmd_gpus(c: Client, a: argparse.Namespace) -> int:
    gpus = c.gpus()
    if a.hosts is not None:
        wanted = set(a.hosts)
        gpus = [g for g in gpus if g["host"] in wanted]
    if a.json:
        print_json({"gpus": gpus})
        return 0
    gib = 1024**3
    rows = [
        (
            g["host"],
            g["index"],
            g["model"],
            pct(g["util"]),
            ""
            if g["mem_used"] is None
            else f"{g['mem_used'] / gib:.1f}/{(g['mem_total'] or 0) / gib:.0f}G",
            "" if g["temp_c"] is None else f"{g['temp_c']:.0f}C",
            "" if g["power_w"] is None else f"{g['power_w']:.0f}W",
            g["job_id"] or "",
            g["user"] or "",
            g["health"],
        )
        for g in gpus
    ]
    print(
        table(
            ("HOST", "GPU", "MODEL", "UTIL", "MEM", "TEMP", "POWER", "JOB", "USER", "HEALTH"), rows
        )
    )
    return 0


def cmd_show_node(c: Client, a: argparse.Namespace) -> int:
    """Each node of a hostlist (`gpu[01-02]`), with its drain history."""
    nodes = {n["host"]: n for n in c.nodes()}
    rc, shown = 0, []
    for host in a.hosts:
        node = nodes.get(host)
        if node is None:
            print(f"dcctl: no node {host!r}; `dcctl nodes` lists the nodes", file=sys.stderr)
            rc = 1
            continue
        shown.append({**node, "drain_history": c.drain_history(host)["history"]})
    if a.json:
        print_json(shown[0] if len(a.hosts) == 1 and shown else {"nodes": shown})
        return rc
    for i, node in enumerate(shown):
        if i:
            print()
        _print_node(node)
    return rc


def _print_node(node: dict[str, Any]) -> None:
    lines = [
        ("Host", node["host"]),
        ("State", _node_state(node).replace("(sim)", "(simulated)")),
        ("Reason", node["drain_reason"]),
        ("Addr", node["addr"]),
        ("GPUs", f"{node['gpus']} x {node['model']} ({node['gpus_allocated']} allocated)"),
        ("Jobs", ",".join(map(str, node["jobs"]))),
        ("Util", pct(node.get("mean_util"))),
        ("Agent", f"{node['agent_version']} ({node['backend']}, driver {node['driver']})"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.rjust(width)} = {v}")
    print()
    drains = node["drain_history"]
    if not drains:
        print("Never drained.")
        return
    print(
        table(
            ("TIME", "ACTION", "BY", "REASON"),
            [
                (timestamp(d["ts"]), "drain" if d["drained"] else "resume", d["user"], d["reason"])
                for d in drains
            ],
        )
    )


def cmd_audit(c: Client, a: argparse.Namespace) -> int:
    entries = c.audit(user=a.user, since=a.since, limit=a.limit)
    if a.json:
        print_json({"entries": entries})
        return 0
    rows = [
        (
            timestamp(e["ts"]),
            e["user"],
            e["action"],
            e["target"],
            e["result"] if e["result"] == "ok" else f"{e['result']} ({e['status']})",
            e["detail"],
        )
        for e in reversed(entries)  # oldest first, like a log
    ]
    print(table(("TIME", "USER", "ACTION", "TARGET", "RESULT", "DETAIL"), rows))
    return 0


def _hosts(text: str) -> list[str]:
    try:
        return expand(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_action(c: Client, a: argparse.Namespace, action: str) -> int:
    """Drain or resume every host of a hostlist; DRAINING while a host's jobs still run."""
    done = []
    for host in a.hosts:
        out = c.node_action(
            host, action, getattr(a, "reason", "") or "", getattr(a, "requeue", False)
        )
        done.append(out)
        if a.json:
            continue
        if out.get("requeued"):
            print(f"{host}: requeued jobs " + ", ".join(map(str, out["requeued"])))
        if not out["drained"]:
            print(f"{host}: resumed")
        elif out.get("drain_state") == "draining":
            jobs = ",".join(map(str, out.get("jobs", [])))
            print(f"{host}: draining (jobs {jobs} still run there; drained when they end)")
        else:
            print(f"{host}: drained")
    if a.json:
        print_json({"nodes": done})
    return 0


def event_line(ev: StreamEvent, now: float | None = None) -> str | None:
    """One human line for an event of `/v1/events`; None for those not worth a line."""
    d = ev.data
    when = time.strftime("%H:%M:%S", time.localtime(now))
    if ev.kind == "job":
        line = f"job {d.get('id', '?')}  {d.get('state', '?')}"
        if d.get("reason"):
            line += f"  {d['reason']}"
    elif ev.kind == "node":
        host = d.get("host", "?")
        if "state" in d:
            line = f"node {host} {d['state']}"
        elif "gpu_fault" in d:
            line = f"node {host} GPU {d['gpu_fault']} fault"
        elif "drained" in d:
            # "draining" while jobs still run there, "drained" again when the last ends
            state = (d.get("drain_state") or "drained") if d["drained"] else "resumed"
            line = f"node {host} {state}"
            if d["drained"] and d.get("reason"):
                line += f" ({d['reason']})"
        else:
            rest = " ".join(f"{k}={v}" for k, v in sorted(d.items()) if k != "host")
            line = f"node {host} {rest}".rstrip()
    elif ev.kind == "reset":
        line = "reset  changes were missed: `dcctl queue --all` and `dcctl nodes` show them"
    elif ev.kind == "hello":
        return None
    else:
        line = f"{ev.kind} {json.dumps(d, sort_keys=True)}"
    return f"{when}  {line}"


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in EVENT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind {bad[0]!r}; kinds are " + ", ".join(EVENT_KINDS)
            if bad
            else "name at least one kind: " + ", ".join(EVENT_KINDS)
        )
    return kinds


def cmd_events(c: Client, a: argparse.Namespace) -> int:
    """Changes as they happen (like `scontrol listen`), until Ctrl-C."""
    try:
        with c.events(since=a.since, kinds=a.kinds) as stream:
            for ev in stream:
                if a.json:
                    print(json.dumps(ev.to_dict(), sort_keys=True), flush=True)
                elif (line := event_line(ev)) is not None:
                    print(line, flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


class _JobWatch:
    """One job's state changes, from the event stream read in a thread: `dcctl logs -f`
    wakes on them instead of polling the job."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.job_id = ""  # set once the job has been read
        self.state = ""  # the last state the stream gave; "" before any
        self.gen = 0  # counts the wake-ups: a change of the job, a reset, the stream's end
        self.error: ClientError | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    @classmethod
    def open(cls, c: Client) -> _JobWatch | None:
        """None when the daemon has no event stream (an older one answers 404)."""
        stream = c.events(kinds="job", timeout=max(c.timeout, 30.0))
        try:
            next(stream)  # the hello: from here on no change is missed
        except ApiError as exc:
            stream.close()
            if exc.status == 404:
                return None
            raise
        except BaseException:
            stream.close()
            raise
        watch = cls(stream)
        watch._thread.start()
        return watch

    def _run(self) -> None:
        try:
            for ev in self.stream:
                # Until the job is known (its id as the daemon spells it), every job wakes.
                ours = ev.kind == "job" and str(ev.data.get("id")) == self.job_id
                if ev.kind == "job" and self.job_id and not ours:
                    continue
                with self._cond:
                    if ours:
                        self.state = str(ev.data.get("state", ""))
                    self.gen += 1
                    self._cond.notify_all()
        except ClientError as exc:
            self.error = exc
        finally:
            with self._cond:
                self.gen += 1
                self._cond.notify_all()

    @property
    def live(self) -> bool:
        return self._thread.is_alive()

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def wait(self, seen: int, timeout: float) -> None:
        """Until something happened after `seen` (a `gen`), or `timeout`."""
        with self._cond:
            self._cond.wait_for(lambda: self.gen != seen, timeout)

    def close(self) -> None:
        self.stream.close()
        self._thread.join(5.0)


def _pause(watch: _JobWatch | None, seen: int, timeout: float) -> None:
    if watch is not None and watch.live:
        watch.wait(seen, timeout)
    else:
        time.sleep(min(timeout, 1.0))  # polling: no event stream, or it was lost


def _wait_for_start(c: Client, job_id: str, watch: _JobWatch | None) -> bool:
    """With -f, a job that has not started yet is waited for, like `tail -F`; False when
    it ended without ever starting. With the event stream, the job is read again when its
    state changes; without it, every second."""
    while True:
        seen = watch.gen if watch else 0
        job = c.job(job_id)
        if watch is not None:
            watch.job_id = str(job["id"])
        if job.get("node_parts"):
            return True
        if job["state"] in ENDED:
            print(f"dcctl: job {job_id} ended ({job['state']}) without starting", file=sys.stderr)
            return False
        _pause(watch, seen, 30.0)


def cmd_logs(c: Client, a: argparse.Namespace) -> int:
    if not a.follow:
        chunk = c.logs(a.job, node=a.node, offset=-1, max_bytes=a.bytes)
        sys.stdout.write(chunk["data"])
        sys.stdout.flush()
        return 0
    watch = _JobWatch.open(c)
    try:
        return _follow_logs(c, a, watch)
    finally:
        if watch is not None:
            watch.close()


def _follow_logs(c: Client, a: argparse.Namespace, watch: _JobWatch | None) -> int:
    if not _wait_for_start(c, a.job, watch):
        return 1
    chunk = c.logs(a.job, node=a.node, offset=-1, max_bytes=a.bytes)
    sys.stdout.write(chunk["data"])
    sys.stdout.flush()
    offset = chunk["size"]
    step = 1024 * 1024
    while True:
        # The log is fetched every second; the job's end (from the stream) ends the wait.
        seen = watch.gen if watch else 0
        done = chunk.get("done") or (watch is not None and watch.ended)
        if not done:
            _pause(watch, seen, 1.0)
        chunk = c.logs(a.job, node=a.node, offset=offset, max_bytes=step)
        if chunk["data"]:
            sys.stdout.write(chunk["data"])
            sys.stdout.flush()
        offset = chunk["next_offset"]
        if done and offset >= chunk["size"]:
            return 0  # the job ended and everything it wrote has been printed


def _lifetime(text: str) -> float:
    try:
        seconds = parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the lifetime must be longer than 0")
    return seconds


def cmd_token(c: Client, a: argparse.Namespace) -> int:
    t = c.new_token(a.lifetime)
    if a.json:
        print_json(t)
        return 0
    if not a.save:
        print(t["token"])
        return 0
    path = Path(TOKEN_FILE).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(t["token"] + "\n")
    until = timestamp(t["expires"])
    print(f"token for {t['user']} saved in {path}, valid until {until}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcctl", description="Inspect and act on a dcsched cluster.")
    add_connection_args(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, help_: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    q = add("queue", "pending and running jobs (like squeue)")
    q.add_argument("--all", action="store_true", help="finished jobs too, with how they ended")
    q.add_argument("--user", help="only this user's jobs")
    q.add_argument("--state", help="only these states, comma-separated (e.g. PENDING,RUNNING)")
    q.add_argument(
        "-r", "--array", action="store_true", help="one line per array task (as squeue -r)"
    )
    q.add_argument(
        "-o",
        "--format",
        help=f"squeue-like fields, e.g. '%%i %%.10j %%T %%R' (default: ${queue_format.ENV}, "
        f"else '{queue_format.DEFAULT.replace('%', '%%')}')",
    )
    q.add_argument("--noheader", action="store_true", help="no header line")
    q.add_argument(
        "--start",
        action="store_true",
        help="waiting jobs with when each would start if every job ran to its time limit "
        "(like squeue --start), soonest first",
    )
    q.add_argument(
        "--start-jobs",
        type=int,
        default=100,
        metavar="N",
        help="--start: forecast the first N waiting jobs in priority order (default 100)",
    )
    q.add_argument(
        "--since", type=when, metavar="TIME", help="only jobs that ended at or after TIME"
    )
    q.add_argument("--until", type=when, metavar="TIME", help="only jobs that ended before TIME")
    add("show", "everything about one job (like scontrol show job)").add_argument("job")
    for name, help_ in (
        ("cancel", "cancel jobs"),
        ("hold", "hold pending jobs"),
        ("release", "release held jobs"),
        ("requeue", "stop running jobs and put them back in the queue"),
    ):
        add(name, help_).add_argument("jobs", nargs="+", metavar="JOB")
    u = add("update", "change a job's time_limit, nice or qos (owner: lower; admin: anything)")
    u.add_argument("job")
    u.add_argument("fields", nargs="+", metavar="KEY=VALUE", help="time_limit=2h nice=10 qos=low")
    add("explain", "why a job waits: priority factors, every reason, estimated start").add_argument(
        "job"
    )
    add("fairshare", "accounts and users: shares, usage, fair-share factor (like sshare)")
    add("nodes", "nodes with their state and GPUs (like sinfo -N)").add_argument(
        "hosts", nargs="?", type=_hosts, metavar="HOSTLIST", help="only these, e.g. gpu[01-04]"
    )
    add("gpus", "every GPU with its live telemetry and job").add_argument(
        "hosts", nargs="?", type=_hosts, metavar="HOSTLIST", help="only these, e.g. gpu[01-04]"
    )
    d = add("drain", "stop scheduling on nodes; running jobs finish (DRAINING, then DRAINED)")
    d.add_argument("hosts", type=_hosts, metavar="HOSTLIST", help="e.g. gpu[001-016],login1")
    d.add_argument("--reason", default="")
    d.add_argument(
        "--requeue",
        action="store_true",
        help="also send its running jobs back to the queue (warning signal first)",
    )
    r = add("resume", "schedule on drained nodes again")
    r.add_argument("hosts", type=_hosts, metavar="HOSTLIST")
    r.add_argument("--reason", default="", help="kept in the node's drain history")
    add("show-node", "nodes, each with its drain and resume history").add_argument(
        "hosts", type=_hosts, metavar="HOSTLIST", help="e.g. gpu01 or gpu[01-04]"
    )
    au = add("audit", "who did what: state changes and refusals (yours; an admin's: all)")
    au.add_argument("--user", help="only this user's entries (admins)")
    au.add_argument(
        "--since",
        type=when,
        metavar="WHEN",
        help='from this long ago ("30m", "2d", "1:30:00") or this time ("2026-11-25T18:00")',
    )
    au.add_argument("--limit", type=int, default=1000, help="at most this many, the newest")
    lg = add("logs", "a job's output, read from its nodes' agents", json_flag=False)
    lg.add_argument("job")
    lg.add_argument("--node", type=int, default=0, help="node rank (default 0)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--bytes", type=int, default=64 * 1024, help="how much of the tail (64 KiB)")
    acct.add_parsers(add)
    tk = add("token", "a token for remote calls as you (like scontrol token); on a head node")
    tk.add_argument(
        "--lifetime",
        type=_lifetime,
        metavar="DURATION",
        help="how long it is valid (e.g. 8h; default and most: [daemon] token_lifetime_s)",
    )
    tk.add_argument(
        "--save",
        action="store_true",
        help=f"write it to {TOKEN_FILE} (mode 0600), where the clients look, instead of printing",
    )
    ev = add("events", "job and node changes as they happen, until Ctrl-C (like scontrol listen)")
    ev.add_argument("--since", metavar="CURSOR", help="resume after this cursor (from --json)")
    ev.add_argument(
        "--kinds", type=_kinds, metavar="KINDS", help="only these, comma-separated: job,node"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        c = client_from(args)
        match args.cmd:
            case "queue":
                return cmd_queue(c, args)
            case "show":
                return cmd_show(c, args)
            case "cancel" | "hold" | "release" | "requeue":
                return _job_actions(c, args, args.cmd)
            case "explain":
                return cmd_explain(c, args)
            case "update":
                return cmd_update(c, args)
            case "fairshare":
                return cmd_fairshare(c, args)
            case "nodes":
                return cmd_nodes(c, args)
            case "gpus":
                return cmd_gpus(c, args)
            case "drain" | "resume":
                return _node_action(c, args, args.cmd)
            case "show-node":
                return cmd_show_node(c, args)
            case "audit":
                return cmd_audit(c, args)
            case "logs":
                return cmd_logs(c, args)
            case "events":
                return cmd_events(c, args)
            case "token":
                return cmd_token(c, args)
            case "acct":
                return acct.cmd_acct(c, args)
            case "eff":
                return acct.cmd_eff(c, args)
            case "node-events":
                return acct.cmd_node_events(c, args)
        return 2

    return run_cli("dcctl", go)


if __name__ == "__main__":
    sys.exit(main())
