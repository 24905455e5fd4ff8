"""The scheduling loop: a snapshot built from memory (no store read, no spec parsing: the
model keeps each job's scheduler view), one decide(), and the starts and preemptions handed
to the job manager, which journals them before any launch goes out."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field, replace

from dcsched.daemon import lifecycle as lc
from dcsched.daemon.aio import wait_event
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import new_cmd_id
from dcsched.daemon.histogram import PASS_BUCKETS_S, Histogram
from dcsched.daemon.jobs import JobManager, job_number
from dcsched.daemon.model import Model
from dcsched.daemon.store import StoreError
from dcsched.daemon.usage import UsageTracker
from dcsched.scheduler import (
    Decisions,
    NodeView,
    Pass,
    SchedulerConfig,
    Snapshot,
    decay,
    explain_pass,
)

log = logging.getLogger("dcsched.scheduling")
_SLICE_S = 0.005  # the longest the pass holds the event loop at a time
# Between two passes at least this many times the last one's length. 9 (a tenth of the time)
# measured against 4 (a fifth): 1,180/s submissions with p99 16 ms vs 1,020/s with 34 ms
# (bench/daemon_scale.py, docs/performance.md); a pass over 10,000 jobs is ~60 ms, so a
# steady stream of events still sees one about every half second.
PACE = 9


@dataclass(slots=True)
class PassStats:
    passes: int = 0
    last_ms: float = 0.0  # decide() alone
    last_total_ms: float = 0.0  # snapshot + decide + apply, without the pauses between slices
    last: Decisions = field(default_factory=Decisions)
    decide_s: Histogram = field(default_factory=lambda: Histogram(PASS_BUCKETS_S))
    pass_s: Histogram = field(default_factory=lambda: Histogram(PASS_BUCKETS_S))


class SchedulingLoop:
    def __init__(
        self,
        model: Model,
        cluster: Cluster,
        jobs: JobManager,
        usage: UsageTracker,
        config: SchedulerConfig,
        ports: range,
        interval_s: float,
        wake: asyncio.Event,
    ) -> None:
        self.model = model
        self.cluster = cluster
        self.jobs = jobs
        self.usage = usage
        self.config = config
        self.ports = ports
        self.interval_s = interval_s
        self.wake = wake  # set by the job manager when a job arrives or GPUs free up
        self.stats = PassStats()
        self.reasons: dict[int, str] = {}
        self._last: tuple[float, Pass] | None = None  # the last pass, for readers
        self._read: tuple[float, Snapshot] | None = None  # a snapshot built for a reader
        self._ended = 0.0  # when the last pass ended (monotonic)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_event(self.wake, self.interval_s)
            self.wake.clear()
            # Coalesce a burst of submits into one pass, and under a steady stream of
            # events keep passes to at most a tenth of the time (Slurm's sched_min_interval):
            # during a burst of submissions the rest is theirs and the agents'. Counted from
            # the end of the last pass, so that a lone event waits only the 50 ms.
            since = time.monotonic() - self._ended
            await asyncio.sleep(max(0.05, PACE * self.stats.last_total_ms / 1000 - since))
            try:
                await self.run_pass()
            except StoreError as exc:
                log.warning("scheduling pass not applied: %s", exc)
            except Exception:
                log.exception("scheduling pass failed; the next one retries")
            self._ended = time.monotonic()

    def snapshot(self, now: float, accrue: bool = True) -> Snapshot:
        """What decide() sees. Only the scheduling pass accrues fair-share usage; readers
        (explain, fairshare) see it decayed to now without charging anything twice."""
        m = self.model
        running = tuple(m.running.values())
        busy = m.busy_gpus()
        # GPUs that an agent reports in use by a job this daemon does not run there (an
        # orphan being stopped) are not free either.
        for host, ht in self.cluster.ingest.hosts.items():
            ours = m.on_host.get(host, set())
            for jp in ht.latest.jobs:
                if job_number(jp.job_id) not in ours:
                    busy.setdefault(host, set()).update(jp.gpus)
        nodes = []
        for node in self.cluster.nodes.values():
            gpus = node.gpu_indexes
            taken = busy.get(node.host)
            nodes.append(
                NodeView(
                    name=node.host,
                    gpu_type=node.gpu_type,
                    gpus=gpus,
                    free=frozenset(gpus).difference(taken) if taken else frozenset(gpus),
                    state=self.cluster.state(node),
                    unhealthy=self.cluster.unhealthy(node.host),
                )
            )
        pending = tuple(m.requests[i] for i in sorted(m.requests))
        finished = {
            dep: m.finished_deps[job_number(dep) or 0]
            for job in pending
            for _, dep in job.depends
            if job_number(dep) in m.finished_deps
        }
        usage = (
            self.usage.accrue(running, m.take_ended(), now)
            if accrue
            else decay(self.usage.usage, now, self.config.half_life_s)
        )
        return Snapshot(
            nodes=tuple(nodes),
            pending=pending,
            running=running,
            config=self.config,
            usage=usage,
            finished=finished,
            # only `use_history` reads it; the model's frozen copy, not one per pass
            history=m.history() if self.config.use_history else {},
        )

    def recent_pass(self, now: float, job_id: str) -> Pass:
        """For explain: the last pass while it is under a second old and saw `job_id`, else
        a fresh one (kept for the next reader). Running one over 10,000 jobs on every
        request would cost more than the request."""
        done = self._fresh()
        if done is None or not (
            job_id in done.priority or any(r.job_id == job_id for r in done.snapshot.running)
        ):
            done = Pass(self.snapshot(now, accrue=False), now).run()
            self._last = (time.monotonic(), done)
        return done

    def forecast_snapshot(self, now: float, limit: int) -> tuple[Snapshot, list[str]]:
        """For the forecast (`dcctl queue --start`): the recent pass's snapshot with only
        its first `limit` pending jobs in priority order (the lower ones backfill around
        them and cannot delay a reserved one), and those jobs' ids in that order. The pending
        jobs they depend on stay too, whatever their place: without them a dependency would
        never hold."""
        done = self._fresh() or Pass(self.snapshot(now, accrue=False), now).run()
        top = list(itertools.islice(done.priority, limit))
        keep = set(top)
        snap = done.snapshot
        queued = {j.job_id: j for j in snap.pending}
        todo = list(top)
        while todo:
            job = queued.get(todo.pop())
            for _, dep in job.depends if job is not None else ():
                if dep in queued and dep not in keep:
                    keep.add(dep)
                    todo.append(dep)
        return replace(snap, pending=tuple(j for j in snap.pending if j.job_id in keep)), top

    def recent_snapshot(self, now: float) -> Snapshot:
        """For fairshare: the last pass's snapshot, or a reader's, while under a second old."""
        done = self._fresh()
        if done is not None:
            return done.snapshot
        snap = self._read
        if snap is None or time.monotonic() - snap[0] >= 1.0:
            snap = self._read = (time.monotonic(), self.snapshot(now, accrue=False))
        return snap[1]

    def _fresh(self) -> Pass | None:
        last = self._last
        return last[1] if last is not None and time.monotonic() - last[0] < 1.0 else None

    async def run_pass(self) -> Decisions:
        t_start = time.perf_counter()
        now = time.time()
        snap = self.snapshot(now)
        # In the event loop, not a worker thread (sharing the GIL with the loop made a pass
        # five times slower), but in slices: requests and agents' messages go on between
        # them instead of waiting for a pass over 10,000 jobs. What changes meanwhile is
        # checked below (a job no longer waiting is not started) and by the executor. The
        # snapshot and the pass's set-up (each ~10 ms at 10,000 jobs) are slices of their own.
        t = time.perf_counter()
        await asyncio.sleep(0)
        paused = time.perf_counter() - t
        done = Pass(snap, now)
        t0 = time.perf_counter()
        busy = 0.0
        slice_end = t0 + _SLICE_S
        for _ in done.steps():
            if (t := time.perf_counter()) > slice_end:
                busy += t - t0
                await asyncio.sleep(0)
                t0 = time.perf_counter()
                paused += t0 - t
                slice_end = t0 + _SLICE_S
        busy += time.perf_counter() - t0
        self._last = (time.monotonic(), done)
        decisions = done.decisions()
        st = self.stats
        st.passes += 1
        st.last_ms, st.last = busy * 1000, decisions
        st.decide_s.observe(busy)
        if decisions.preempt:
            await self.jobs.preempt((int(j), _why_preempted(done, j)) for j in decisions.preempt)
        used = self.model.used_ports()
        starts = []
        for start in decisions.starts:
            job_id = int(start.job_id)
            if job_id not in self.model.requests:
                continue  # cancelled or held while decide() ran
            first = self.cluster.nodes[start.allocation[0][0]]
            addr = first.status.addr or first.host
            avoid = self.jobs.avoid_ports
            port = next(
                (p for p in self.ports if (k := (addr, p)) not in used and k not in avoid), None
            )
            if port is None:
                log.warning("no free master port on %s; job %d waits", addr, job_id)
                continue
            used.add((addr, port))
            parts = tuple(
                lc.Part(rank=r, host=h, gpus=tuple(g), launch_id=new_cmd_id())
                for r, (h, g) in enumerate(start.allocation)
            )
            starts.append((job_id, lc.Start(parts, addr, port)))
        await self.jobs.start(starts)
        self.reasons = {
            int(i): info.reasons[0] if info.reasons else "" for i, info in decisions.pending.items()
        }
        await self.usage.save_if_due(now)
        st.last_total_ms = (time.perf_counter() - t_start - paused) * 1000
        st.pass_s.observe(st.last_total_ms / 1000)
        return decisions


def _why_preempted(done: Pass, job_id: str) -> str:
    """The scheduler's reason for a victim, as `dcctl explain` words it (for whom, and under
    `las` why it pays): the job's history keeps it."""
    details = explain_pass(done, job_id).details
    return "; ".join(details) if details else "preempted"
