"""The scheduling loop: a snapshot of the store and the nodes, one decide(), and the starts
written back (allocation, STARTING and launch commands in one transaction per job)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dcsched.daemon.aio import wait_event
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import CommandSender, command_row, new_cmd_id
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState
from dcsched.daemon.store import Job, JobNode, Store, StoreError
from dcsched.daemon.usage import UsageTracker
from dcsched.protocol.jobspec import parse_dependencies
from dcsched.protocol.messages import Launch
from dcsched.scheduler import (
    Decisions,
    JobRequest,
    NodeView,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    decay,
    decide,
)

log = logging.getLogger("dcsched.scheduling")


async def _no_preemption(job_id: int) -> None:
    log.warning("job %d should be preempted, but no job manager is attached", job_id)


@dataclass(slots=True)
class PassStats:
    passes: int = 0
    last_ms: float = 0.0
    last: Decisions = field(default_factory=Decisions)


class SchedulingLoop:
    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        sender: CommandSender,
        config: SchedulerConfig,
        ports: range,
        interval_s: float,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.sender = sender
        self.config = config
        self.ports = ports
        self.interval_s = interval_s
        self.wake = asyncio.Event()
        self.stats = PassStats()
        self.usage = UsageTracker(store, config)
        # Set by the job manager: stops a running job and puts it back in the queue.
        self.preempt: Callable[[int], Awaitable[object]] = _no_preemption

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_event(self.wake, self.interval_s)
            self.wake.clear()
            await asyncio.sleep(0.05)  # coalesce a burst of submits into one pass
            try:
                await self.run_pass()
            except Exception:
                log.exception("scheduling pass failed; the next one retries")

    async def snapshot(
        self, now: float, accrue: bool = True
    ) -> tuple[Snapshot, dict[int, Job], list[Job]]:
        """What decide() sees. Only the scheduling pass accrues fair-share usage; readers
        (explain, fairshare) see it decayed to now without charging anything twice."""
        queued = await self.store.jobs(QUEUED)
        active = await self.store.jobs(ACTIVE)
        parts_by_job: dict[int, list[JobNode]] = {}
        for p in await self.store.job_nodes(states=("launching", "running")):
            parts_by_job.setdefault(p.job_id, []).append(p)
        busy: dict[str, set[int]] = {}
        running = []
        for job in active:
            parts = parts_by_job.get(job.id, [])
            for p in parts:
                busy.setdefault(p.host, set()).update(p.gpus)
            first = self.cluster.nodes.get(parts[0].host) if parts else None
            running.append(
                RunningJob(
                    job_id=str(job.id),
                    user=job.user,
                    account=job.account,
                    start_ts=job.start_ts or job.submit_ts,
                    time_limit_s=job.time_limit_s,
                    allocation=tuple((p.host, tuple(p.gpus)) for p in parts),
                    qos=job.qos,
                    preemptible=bool(job.spec.get("preemptible")),
                    gpu_type=first.gpu_type if first else "",
                    terminating=job.state == JobState.COMPLETING,
                )
            )
        # GPUs that an agent reports in use by a job this daemon does not run there (an
        # orphan being stopped) are not free either.
        live = {(p.host, str(p.job_id)) for ps in parts_by_job.values() for p in ps}
        for host, ht in self.cluster.ingest.hosts.items():
            for jp in ht.latest.jobs:
                if (host, jp.job_id) not in live:
                    busy.setdefault(host, set()).update(jp.gpus)
        nodes = []
        for node in self.cluster.nodes.values():
            gpus = tuple(g.index for g in node.status.gpus)
            nodes.append(
                NodeView(
                    name=node.host,
                    gpu_type=node.gpu_type,
                    gpus=gpus,
                    free=frozenset(gpus) - busy.get(node.host, set()),
                    state=self.cluster.state(node),
                    unhealthy=self.cluster.unhealthy(node.host),
                )
            )
        pending = tuple(
            JobRequest(
                job_id=str(j.id),
                user=j.user,
                account=j.account,
                submit_ts=j.submit_ts,
                nodes=j.nodes,
                gpus_per_node=j.gpus_per_node,
                time_limit_s=j.time_limit_s,
                qos=j.qos,
                gpu_type=j.gpu_type,
                nice=j.nice,
                held=j.state == JobState.HELD,
                depends=parse_dependencies(j.spec.get("dependency", [])),
                preemptible=bool(j.spec.get("preemptible")),
            )
            for j in sorted(queued, key=lambda j: j.id)
        )
        wanted = {int(dep) for job in pending for _, dep in job.depends}
        finished = {
            str(k): v for k, v in (await self.store.job_states(wanted)).items() if v in TERMINAL
        }
        usage = (
            await self.usage.accrue(tuple(running), now)
            if accrue
            else decay(self.usage.usage, now, self.config.half_life_s)
        )
        snap = Snapshot(
            nodes=tuple(nodes),
            pending=pending,
            running=tuple(running),
            config=self.config,
            usage=usage,
            finished=finished,
        )
        return snap, {j.id: j for j in queued}, active

    async def run_pass(self) -> Decisions:
        now = time.time()
        snap, queued, active = await self.snapshot(now)
        t0 = time.perf_counter()
        decisions = decide(snap, now)
        ms = (time.perf_counter() - t0) * 1000
        st = self.stats
        st.passes += 1
        st.last_ms, st.last = ms, decisions
        for job_id in decisions.preempt:
            await self.preempt(int(job_id))
        used_ports = {j.master_port for j in active if j.master_port}
        for start in decisions.starts:
            job = queued[int(start.job_id)]
            port = next((p for p in self.ports if p not in used_ports), None)
            if port is None:
                log.warning("no free master port in the configured range; job %d waits", job.id)
                break
            used_ports.add(port)
            await self._start(job, start.allocation, port)
        changed = []
        for job_id, info in decisions.pending.items():
            waiting = queued.get(int(job_id))
            reason = info.reasons[0] if info.reasons else ""
            if waiting is not None and waiting.reason != reason:
                changed.append((waiting.id, reason))
        if changed:
            await self.store.update_reasons(changed)
        return decisions

    async def _start(
        self, job: Job, allocation: tuple[tuple[str, tuple[int, ...]], ...], port: int
    ) -> None:
        first = self.cluster.nodes[allocation[0][0]]
        master = first.status.addr or first.host
        spec = job.spec
        rows = []
        parts: list[tuple[str, list[int], str]] = []
        for rank, (host, gpus) in enumerate(allocation):
            launch = Launch(
                cmd_id=new_cmd_id(),
                job_id=str(job.id),
                node_rank=rank,
                nnodes=len(allocation),
                nproc_per_node=spec["torchrun"].get("nproc_per_node") or job.gpus_per_node,
                master_addr=master,
                master_port=port,
                gpus=list(gpus),
                command=list(spec["command"]),
                workdir=spec.get("workdir", ""),
                env=dict(spec.get("env", {})),
                user=job.user,
                python=spec["torchrun"].get("python"),
            )
            rows.append(command_row(host, launch))
            parts.append((host, list(gpus), launch.cmd_id))
        try:
            await self.store.start_job(job.id, parts, master, port, time.time(), rows)
        except StoreError as exc:
            log.info("job %d not started: %s", job.id, exc)
            return
        log.info(
            "job %d starting on %s (master %s:%d)",
            job.id,
            ", ".join(h for h, _ in allocation),
            master,
            port,
        )
        self.sender.wake.set()
