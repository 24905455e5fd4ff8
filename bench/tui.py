"""dctop at scale: 125 hosts x 8 GPUs (1,000 GPUs) and 400 jobs, refreshed like the live
poll, from an in-memory source that hands out JSON bytes decoded on each call (as the real
client does). Prints JSON: time to first paint, and CPU time per refresh in each view
(fetch + decode + diff + table update + render), plus CPU use at the real 1 s interval.

    python bench/tui.py                 # defaults: 125 hosts x 8 GPUs, 30 refreshes per view
    python bench/tui.py --hosts 250 --gpus 8 --refreshes 20 --live-s 10
    python bench/tui.py --hosts 1250 --jobs 4000 --no-stream   # dctop's changed_since fallback
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import random
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcsched.client import ApiError, StreamEvent
from dcsched.tui import data
from dcsched.tui.app import DctopApp


def data_layer_ms(source: Any, n: int = 10) -> dict[str, float]:
    """The part of a refresh that is dctop's own code and no rendering: fetch + decode
    (worker thread) and the rows of each view."""

    def cpu(fn: Any) -> float:
        c0 = time.process_time()
        for _ in range(n):
            fn()
        return round((time.process_time() - c0) / n * 1000, 1)

    snap = data.fetch_snapshot(source)
    return {
        "fetch_and_decode": cpu(lambda: data.fetch_snapshot(source)),
        "cluster_rows": cpu(lambda: data.cluster_rows(snap.nodes, snap.gpus)),
        "gpu_rows": cpu(lambda: data.gpu_rows(snap.gpus)),
        "job_rows": cpu(lambda: data.job_rows(snap.jobs, snap.now)),
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class EventStream:
    """Stands for dcsched.client.EventStream: iterated until closed."""

    def __init__(self) -> None:
        self._queue: queue.Queue[StreamEvent | None] = queue.Queue()

    def put(self, event: StreamEvent) -> None:
        self._queue.put(event)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[StreamEvent]:
        while (event := self._queue.get()) is not None:
            yield event


class SyntheticSource:
    """The Source protocol over a synthetic cluster; each `advance()` is one new second."""

    def __init__(
        self, hosts: int, gpus: int, jobs: int, variants: int = 8, changes_per_tick: int = 10
    ) -> None:
        rnd = random.Random(42)
        self.tick = 0
        self.frames: list[dict[str, bytes]] = []
        names = [f"gpu{h:03d}" for h in range(hosts)]
        alloc: dict[tuple[str, int], int] = {}
        job_list: list[dict[str, Any]] = []
        slots = [(h, i) for h in names for i in range(gpus)]
        rnd.shuffle(slots)
        now = 1_800_000_000.0
        for j in range(1, jobs + 1):
            running = j <= jobs * 3 // 5 and len(slots) >= 2
            taken = [slots.pop() for _ in range(2)] if running else []
            for s in taken:
                alloc[s] = j
            job_list.append(
                {
                    "id": j,
                    "name": f"train-{j}",
                    "user": f"user{j % 17}",
                    "account": f"acct{j % 5}",
                    "qos": "normal",
                    "state": "RUNNING" if running else ("PENDING" if j % 9 else "HELD"),
                    "reason": "" if running else "Priority",
                    "reasons": [] if running else ["Priority"],
                    "priority": None if running else 1000.0 + rnd.random() * 3000,
                    "est_start": None if running else now + rnd.random() * 7200,
                    "nodes": len({h for h, _ in taken}) or 1,
                    "gpus_per_node": 2,
                    "time_limit_s": 14400,
                    "elapsed_s": rnd.random() * 10000 if running else None,
                    "hosts": sorted({h for h, _ in taken}),
                    "gpu_util": None,
                    "submit_ts": now - 3600,
                }
            )
        for v in range(variants):
            gpu_rows = []
            node_rows = []
            for h in names:
                utils = []
                for i in range(gpus):
                    job = alloc.get((h, i))
                    u = rnd.uniform(60, 100) if job and job % 11 else rnd.uniform(0, 3)
                    utils.append(u)
                    gpu_rows.append(
                        {
                            "host": h,
                            "index": i,
                            "uuid": f"GPU-{h}-{i}",
                            "model": "NVIDIA H100 80GB HBM3",
                            "util": round(u, 1),
                            "mem_used": int(u / 100 * 80 * 2**30),
                            "mem_total": 80 * 2**30,
                            "temp_c": round(30 + u / 2, 1),
                            "power_w": round(70 + u * 6, 1),
                            "sm_clock_mhz": 1980,
                            "energy_j": 1000.0 * v,
                            "health": "ok",
                            "pids": [1000 + i] if job else [],
                            "job_id": job,
                            "user": f"user{job % 17}" if job else None,
                            "node_state": "up",
                        }
                    )
                node_rows.append(
                    {
                        "host": h,
                        "state": "up",
                        "online": True,
                        "drained": False,
                        "drain_reason": "",
                        "gpus": gpus,
                        "gpus_allocated": sum(1 for i in range(gpus) if (h, i) in alloc),
                        "model": "NVIDIA H100 80GB HBM3",
                        "jobs": sorted({alloc[(h, i)] for i in range(gpus) if (h, i) in alloc}),
                        "mean_util": sum(utils) / len(utils),
                    }
                )
            for j in job_list:
                if j["state"] == "RUNNING":
                    j["gpu_util"] = rnd.uniform(0, 100)
                    j["elapsed_s"] = (j["elapsed_s"] or 0) + 1
            cluster = {
                "nodes": {"up": hosts, "drained": 0, "down": 0},
                "gpus": {
                    "total": hosts * gpus,
                    "allocated": len(alloc),
                    "idle": hosts * gpus - len(alloc),
                },
                "mean_util": sum(g["util"] for g in gpu_rows) / len(gpu_rows),
                "power_w": sum(g["power_w"] for g in gpu_rows),
                "jobs": {"RUNNING": sum(1 for j in job_list if j["state"] == "RUNNING")},
            }
            columns = {
                "form": "columns",
                "keys": [f"{g['host']}/{g['index']}" for g in gpu_rows],
                **{
                    name: [g[name] for g in gpu_rows]
                    for name in (
                        "util",
                        "mem_used",
                        "temp_c",
                        "power_w",
                        "health",
                        "job_id",
                        "user",
                    )
                },
            }
            self.frames.append(
                {
                    "cluster": json.dumps(cluster).encode(),
                    "nodes": json.dumps({"nodes": node_rows}).encode(),
                    "gpus": json.dumps({"gpus": gpu_rows}).encode(),
                    "jobs": json.dumps({"jobs": job_list}).encode(),
                    "columns": json.dumps(columns).encode(),
                }
            )
        self.job_list = job_list
        self.changes_per_tick = changes_per_tick
        self._rnd = rnd
        self._streams: list[EventStream] = []
        self._changed: list[int] = []

    def _get(self, what: str) -> Any:
        return json.loads(self.frames[self.tick % len(self.frames)][what])

    def cluster(self) -> dict[str, Any]:
        return dict(self._get("cluster"))

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._get("nodes")["nodes"])

    def gpus(self) -> list[dict[str, Any]]:
        self.tick += 1  # one poll, one new second of telemetry
        return list(self._get("gpus")["gpus"])

    def jobs(self, *, all_states: bool = False) -> list[dict[str, Any]]:
        return list(self._get("jobs")["jobs"])

    # the live mode: telemetry as columns, changed jobs by id, and the event stream

    def gpu_columns(self) -> dict[str, Any]:
        self.tick += 1
        # each second a few jobs change (state, priority), and the stream says which
        for _ in range(self.changes_per_tick):
            j = self._rnd.choice(self.job_list)
            self._changed.append(j["id"])
            for s in self._streams:
                s.put(StreamEvent("job", "", {"id": j["id"], "state": j["state"]}))
        return dict(self._get("columns"))

    def jobs_by_id(self, ids: Any) -> list[dict[str, Any]]:
        want = {int(i) for i in ids}
        encoded = json.dumps({"jobs": [j for j in self.job_list if j["id"] in want]}).encode()
        return list(json.loads(encoded)["jobs"])

    def events(self) -> EventStream:
        stream = EventStream()
        stream.put(StreamEvent("hello", "c-0", {}))
        self._streams.append(stream)
        return stream

    def fairshare(self) -> dict[str, Any]:
        return {"rows": []}

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


class NoStreamSource(SyntheticSource):
    """A daemon reached without its event stream: dctop polls `changed_since` instead."""

    def events(self) -> EventStream:
        raise ApiError(404, "not_found", "no /v1/events", {})

    def jobs_changed_since(self, cursor: str = "") -> dict[str, Any]:
        ids, self._changed = set(self._changed), []
        rows = [j for j in self.job_list if j["id"] in ids] if cursor else []
        answer = {"cursor": str(self.tick), "reset": not cursor, "jobs": rows}
        return dict(json.loads(json.dumps({**answer, "nodes_changed": False})))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    kind = NoStreamSource if args.no_stream else SyntheticSource
    source = kind(args.hosts, args.gpus, args.jobs)
    t0 = time.perf_counter()
    app = DctopApp(source, interval=0, tune_gc=True)  # type: ignore[arg-type]  # as dctop runs
    out: dict[str, Any] = {
        "mode": "polled" if args.polled else "changed_since" if args.no_stream else "live"
    }
    rss0 = rss_mb()
    async with app.run_test(size=(160, 50)) as pilot:
        while app.polls < 1:  # noqa: ASYNC110 (the app is polled, not awaited)
            await asyncio.sleep(0.001)
        await pilot.pause()
        out["first_paint_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        if not args.polled and not args.no_stream:
            app._follow()
            while not app.live:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            n = app.polls
            app.poll()  # the full read after the stream opened
            while app.polls <= n:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        per_view: dict[str, Any] = {}

        def jobs_view() -> Any:
            return app.query_one("#view-jobs")

        # the Jobs view also sorted by a fixed column, by a moving one, and filtered
        cases: list[tuple[str, str, Any]] = [
            ("cluster", "1", None),
            ("gpus", "2", None),
            ("jobs", "3", None),
            ("jobs_sorted_by_user", "", lambda: jobs_view().table.sort_by("user")),
            ("jobs_sorted_by_util", "", lambda: jobs_view().table.sort_by("util")),
            ("jobs_filtered_state_pending", "", lambda: jobs_view().set_filter("state=pending")),
            ("jobs_filtered_text", "", lambda: jobs_view().set_filter("train-1")),
        ]
        for view, key, setup in cases:
            if key:
                await pilot.press(key)
            if setup is not None:
                jobs_view().set_filter("")
                jobs_view().table.sort_column = None
                setup()
            await pilot.pause()
            samples = []
            for _ in range(args.refreshes):
                n = app.polls
                c0 = time.process_time()
                app.poll()
                while app.polls <= n:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
                await pilot.pause()  # let the frame render
                samples.append((time.process_time() - c0) * 1000)
            samples.sort()
            per_view[view] = {
                "cpu_ms_per_refresh_median": round(samples[len(samples) // 2], 1),
                "cpu_ms_per_refresh_p90": round(samples[int(len(samples) * 0.9)], 1),
                "cpu_ms_per_refresh_max": round(samples[-1], 1),
            }
        out["views"] = per_view
        if args.live_s > 0:
            # the real thing: a 1 s timer, GPUs view (the biggest table), CPU over wall time
            await pilot.press("2")
            app.interval = 1.0
            app.set_interval(1.0, app.poll)
            c0, w0, p0 = time.process_time(), time.perf_counter(), app.polls
            await asyncio.sleep(args.live_s)
            cpu, wall, polls = time.process_time() - c0, time.perf_counter() - w0, app.polls - p0
            out["live_1s_gpus_view"] = {
                "seconds": round(wall, 1),
                "refreshes": polls,
                "cpu_percent": round(cpu / wall * 100, 1),
                "cpu_ms_per_second": round(cpu / wall * 1000, 1),
            }
    out["memory_mb"] = {
        "rss_peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_app": rss0,
        "of_which_synthetic_source_bytes": round(
            sum(len(b) for f in source.frames for b in f.values()) / 2**20, 1
        ),
    }
    out["reads"] = {
        "mode": app.read_mode,
        "full": app.state.full_reads,
        "partial": app.state.partial_reads,
    }
    out["data_layer_cpu_ms"] = data_layer_ms(SyntheticSource(args.hosts, args.gpus, args.jobs))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--hosts", type=int, default=125)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--jobs", type=int, default=400)
    p.add_argument("--refreshes", type=int, default=30)
    p.add_argument("--live-s", type=float, default=10.0)
    p.add_argument(
        "--polled",
        action="store_true",
        help="no event stream: every refresh a full read (a daemon older than /v1/events)",
    )
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="no event stream, but GET /v1/jobs?changed_since= (dctop's polling fallback)",
    )
    args = p.parse_args()
    result = asyncio.run(measure(args))
    report = {
        "bench": "dctop refresh",
        "hosts": args.hosts,
        "gpus_per_host": args.gpus,
        "gpus": args.hosts * args.gpus,
        "jobs": args.jobs,
        "target_cpu_ms_per_refresh": 25,
        **result,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
