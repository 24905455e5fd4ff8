"""Job lifecycle: submit, cancel, hold/release/requeue, agent events, time limits, lost nodes.

Every state change is one store transaction; what a job will end as while its nodes are
still stopping is kept in `ending`, so a daemon restart in the middle loses nothing.
Every entry point that changes a job holds one lock and reads the job afresh under it: the
API, the agents' events, the periodic checks and the scheduler's preemptions run as
separate tasks and would otherwise act on each other's stale copies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dcsched.daemon.bus import Bus
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import CommandSender, command_row, new_cmd_id
from dcsched.daemon.errors import Conflict, InvalidRequest, NoSuchThing, PermissionDenied
from dcsched.daemon.ingest import Ingest
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState
from dcsched.daemon.store import Job, NotFound, Store
from dcsched.protocol.jobspec import JobSpec, parse_dependencies, spec_to_dict
from dcsched.protocol.messages import Ack, Cancel, JobExited, JobStarted
from dcsched.scheduler import SchedulerConfig

log = logging.getLogger("dcsched.jobs")
S = JobState


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    user: str
    admin: bool


class JobManager:
    def __init__(
        self,
        store: Store,
        sender: CommandSender,
        bus: Bus,
        cluster: Cluster,
        ingest: Ingest,
        config: SchedulerConfig,
        cancel_grace_s: float,
        node_timeout_s: float,
        wake_scheduler: Callable[[], None],
    ) -> None:
        self.store = store
        self.config = config
        self.sender = sender
        self.bus = bus
        self.cluster = cluster
        self.ingest = ingest
        self.cancel_grace_s = cancel_grace_s
        self.node_timeout_s = node_timeout_s
        self.wake_scheduler = wake_scheduler
        self._lock = asyncio.Lock()

    async def get(self, job_id: int) -> Job:
        try:
            return await self.store.job(job_id)
        except NotFound:
            raise NoSuchThing(f"no job {job_id}; `dcctl queue --all` lists jobs") from None

    def _may_act(self, caller: Caller, job: Job) -> None:
        if not caller.admin and caller.uid != job.uid:
            raise PermissionDenied(
                f"job {job.id} belongs to {job.user}; only its owner or an admin may change it"
            )

    async def _check_submission(self, spec: JobSpec) -> None:
        cfg = self.config
        if cfg.accounts and spec.account not in cfg.accounts:
            raise InvalidRequest(
                f"account {spec.account!r} is not configured; accounts: "
                + ", ".join(sorted(cfg.accounts))
            )
        if cfg.qos_level(spec.qos) is None:
            raise InvalidRequest(
                f"QOS {spec.qos!r} is not configured; QOS levels: "
                + ", ".join(sorted({"normal", *cfg.qos}))
            )
        deps = {int(i) for _, i in parse_dependencies(spec.dependency)}
        missing = sorted(deps - set(await self.store.job_states(deps)))
        if missing:
            raise InvalidRequest(f"dependency on job {missing[0]}, which does not exist")

    async def submit(self, spec: JobSpec, caller: Caller) -> int:
        await self._check_submission(spec)
        job_id = await self.store.add_job(
            name=spec.name,
            user=caller.user,
            uid=caller.uid,
            account=spec.account,
            qos=spec.qos,
            nice=spec.nice,
            spec=spec_to_dict(spec),
            nodes=spec.resources.nodes,
            gpus_per_node=spec.resources.gpus_per_node,
            gpu_type=spec.resources.gpu_type,
            time_limit_s=spec.time_limit_s,
            now=time.time(),
            held=spec.hold,
        )
        log.info("job %d %r submitted by %s", job_id, spec.name, caller.user)
        self.wake_scheduler()
        return job_id

    # --- user actions ----------------------------------------------------------------------

    async def cancel(self, job_id: int, caller: Caller) -> Job:
        async with self._lock:
            job = await self.get(job_id)
            self._may_act(caller, job)
            if job.state in TERMINAL:
                raise Conflict(f"it has already ended ({job.state})")
            if job.state == S.COMPLETING and job.ending == S.CANCELLED:
                return job
            if job.state in QUEUED:
                job = await self.store.transition(
                    job_id, S.CANCELLED, time.time(), f"cancelled by {caller.user}"
                )
                self.wake_scheduler()
                return job
            return await self._stop(job, S.CANCELLED, f"cancelled by {caller.user}")

    async def hold(self, job_id: int, caller: Caller) -> Job:
        async with self._lock:
            job = await self.get(job_id)
            self._may_act(caller, job)
            if job.state == S.HELD:
                return job
            if job.state not in (S.PENDING, S.REQUEUED):
                raise Conflict(f"it is {job.state}; only a pending job can be held")
            return await self.store.transition(
                job_id, S.HELD, time.time(), f"held by {caller.user}"
            )

    async def release(self, job_id: int, caller: Caller) -> Job:
        async with self._lock:
            job = await self.get(job_id)
            self._may_act(caller, job)
            if job.state != S.HELD:
                raise Conflict(f"it is {job.state}, not held")
            job = await self.store.transition(
                job_id, S.PENDING, time.time(), f"released by {caller.user}"
            )
        self.wake_scheduler()
        return job

    async def requeue(self, job_id: int, caller: Caller) -> Job:
        """Stops a running job and puts it back in the queue (Slurm's scontrol requeue)."""
        async with self._lock:
            job = await self.get(job_id)
            self._may_act(caller, job)
            if job.state not in (S.STARTING, S.RUNNING):
                raise Conflict(f"it is {job.state}; only a running job can be requeued")
            return await self._stop(job, S.REQUEUED, f"requeued by {caller.user}")

    async def preempt(self, job_id: int) -> None:
        async with self._lock:
            job = await self.store.job(job_id)
            if job.state in (S.STARTING, S.RUNNING):
                log.info("preempting job %d", job_id)
                await self._stop(
                    job,
                    S.REQUEUED,
                    "preempted by a higher QOS",
                    grace_s=self.config.preempt_grace_s,
                )

    async def _stop(
        self,
        job: Job,
        final: JobState,
        detail: str,
        exit_code: int | None = None,
        signal: int | None = None,
        grace_s: float | None = None,
    ) -> Job:
        """Moves an active job to COMPLETING and tells every node still running to stop."""
        now = time.time()
        if job.state == S.COMPLETING:
            # A failure already on its way out stays a failure.
            if job.ending in (S.FAILED, S.NODE_FAIL, S.TIMEOUT) and final in (
                S.CANCELLED,
                S.REQUEUED,
            ):
                return job
            await self.store.update_job(job.id, ending=final)
        else:
            fields: dict[str, object] = {"ending": final}
            if exit_code is not None or signal is not None:
                fields.update(exit_code=exit_code, signal=signal)
            await self.store.transition(job.id, S.COMPLETING, now, detail, **fields)
        await self.store.drop_commands(job.id, "launch", now)
        rows = [
            command_row(
                p.host,
                Cancel(
                    cmd_id=new_cmd_id(),
                    job_id=str(job.id),
                    grace_s=self.cancel_grace_s if grace_s is None else grace_s,
                    reason=final.lower(),
                ),
            )
            for p in await self.store.job_nodes(job.id)
            if p.state != "exited"
        ]
        if rows:
            await self.store.add_commands(job.id, rows, now)
            self.sender.wake.set()
        return await self._maybe_finish(job.id)

    # --- agent events ----------------------------------------------------------------------

    async def on_ack(self, ack: Ack) -> None:
        job_id = _int(ack.job_id)
        async with self._lock:
            kind = await self.store.ack_command(ack.cmd_id, ack.ok, ack.error, time.time())
            if kind is None or job_id is None:
                return
            if kind == "cancel" and ack.error:
                # The agent never ran it (a launch that never arrived): nothing will exit.
                await self._never_started(job_id, ack.host, "cancelled before it started")
            elif not ack.ok and kind == "launch":
                log.warning("host %s refused to launch job %s: %s", ack.host, ack.job_id, ack.error)
                await self._launch_failed(job_id, ack.host, ack.error)

    async def _never_started(self, job_id: int, host: str, why: str) -> None:
        for p in await self.store.job_nodes(job_id):
            if p.host == host and p.state == "launching":
                await self.store.node_exited(job_id, p.node_rank, None, None, why, time.time())
        await self._maybe_finish(job_id)

    async def _launch_failed(self, job_id: int, host: str, error: str) -> None:
        await self._never_started(job_id, host, f"launch refused: {error}")
        job = await self.store.job(job_id)
        if job.state in (S.STARTING, S.RUNNING):
            await self.store.update_job(job_id, reason=f"launch refused on {host}: {error}")
            await self._stop(job, S.FAILED, f"launch refused on {host}")

    async def on_started(self, ev: JobStarted) -> None:
        job_id = _int(ev.job_id)
        if job_id is None:
            return
        async with self._lock:
            now = time.time()
            await self.store.node_started(
                job_id, ev.node_rank, ev.launch_id, ev.pid, ev.log_path, now
            )
            job = await self.store.job(job_id)
            parts = await self.store.job_nodes(job_id)
            if job.state == S.STARTING and all(p.state == "running" for p in parts):
                await self.store.transition(
                    job_id, S.RUNNING, now, "torchrun started on every node"
                )

    async def on_exited(self, ev: JobExited) -> None:
        job_id = _int(ev.job_id)
        if job_id is None:
            return
        async with self._lock:
            try:
                job = await self.store.job(job_id)
            except NotFound:
                return
            reason = ev.reason or ("exit" if ev.signal is None else "signal")
            first = await self.store.node_exited(
                job_id, ev.node_rank, ev.exit_code, ev.signal, reason, time.time(), ev.launch_id
            )
            failed = (
                ev.exit_code not in (0, None)
                or ev.signal is not None
                or ev.reason in ("lost", "launch_failed")
            )
            if first and failed and job.state in (S.STARTING, S.RUNNING):
                if ev.reason == "launch_failed":
                    await self._launch_failed(job_id, ev.host, "see the agent's log")
                    return
                what = (
                    f"signal {ev.signal}" if ev.signal is not None else f"exit code {ev.exit_code}"
                )
                await self._stop(
                    job,
                    S.FAILED,
                    f"node {ev.node_rank} ({ev.host}) ended with {what}",
                    exit_code=ev.exit_code,
                    signal=ev.signal,
                )
            else:
                # A repeated event still gets here: it may finish a job a race left behind.
                await self._maybe_finish(job_id)

    async def _maybe_finish(self, job_id: int) -> Job:
        """When every node has exited, the job gets its final state and frees its GPUs."""
        job = await self.store.job(job_id)
        if job.state not in ACTIVE:
            return job
        parts = await self.store.job_nodes(job_id)
        if not parts or any(p.state != "exited" for p in parts):
            return job
        if job.ending:
            final = JobState(job.ending)
        elif all(p.exit_code == 0 for p in parts):
            final = S.COMPLETED
        else:
            final = S.FAILED
        fields: dict[str, object] = {}
        if final == S.REQUEUED:
            # Back in the queue: it starts afresh, with new nodes, port and commands.
            fields = {
                "ending": "",
                "exit_code": None,
                "signal": None,
                "master_addr": None,
                "master_port": None,
            }
        elif job.exit_code is None and job.signal is None:
            bad = next((p for p in parts if p.exit_code != 0), parts[0])
            fields = {"exit_code": bad.exit_code, "signal": bad.signal}
        job = await self.store.transition(job_id, final, time.time(), "all nodes exited", **fields)
        for p in parts:
            self.ingest.job_seen.pop((p.host, str(job_id)), None)
        log.info("job %d %s", job_id, final)
        self.wake_scheduler()
        return job

    async def reconcile(self, host: str, running: list[str]) -> None:
        """An agent reports job processes: stop any that this daemon does not run there
        (a job that ended while the node was cut off, or one from a lost daemon state)."""
        if not running:
            return
        async with self._lock:
            live = {
                str(p.job_id)
                for p in await self.store.job_nodes(states=("launching", "running"))
                if p.host == host
            }
            for job_id in running:
                jid = _int(job_id)
                if job_id in live or jid is None:
                    continue
                log.warning(
                    "host %s runs job %s, which is not running there: stopping it", host, job_id
                )
                cancel = Cancel(
                    cmd_id=new_cmd_id(),
                    job_id=job_id,
                    grace_s=self.cancel_grace_s,
                    reason="orphan",
                )
                await self.store.add_commands(jid, [command_row(host, cancel)], time.time())
                self.sender.wake.set()

    # --- periodic checks -------------------------------------------------------------------

    async def check(self) -> None:
        """Time limits, jobs on nodes that went down or lost track of them, and jobs a race
        left in COMPLETING with every node exited."""
        now = time.time()
        mono = time.monotonic()
        # Liveness is judged from the broker: while the daemon's own link is down, or just
        # back, every node looks silent, and that must not fail their jobs.
        judge = self.bus.connected.is_set() and mono - self.bus.connected_at > self.node_timeout_s
        for (host, job_id), seen in list(self.ingest.job_seen.items()):
            if mono - seen > 10 * self.node_timeout_s:
                del self.ingest.job_seen[(host, job_id)]
        for listed in await self.store.jobs(ACTIVE):
            async with self._lock:
                job = await self.store.job(listed.id)
                if job.state not in ACTIVE:
                    continue
                if job.state == S.COMPLETING:
                    if judge:  # a node that died while stopping will never report
                        await self._check_nodes(job, now, mono)
                    await self._maybe_finish(job.id)
                    continue
                if job.start_ts is not None and now > job.start_ts + job.time_limit_s:
                    log.info("job %d reached its time limit of %d s", job.id, job.time_limit_s)
                    await self._stop(job, S.TIMEOUT, f"time limit {job.time_limit_s} s reached")
                    continue
                if judge:
                    await self._check_nodes(job, now, mono)

    async def _check_nodes(self, job: Job, now: float, mono: float) -> None:
        for p in await self.store.job_nodes(job.id):
            if p.state == "exited":
                continue
            node = self.cluster.nodes.get(p.host)
            if node is None or self.cluster.state(node) == "down":
                await self._node_lost(job, p.node_rank, p.host, "node down")
                return
            seen = self.ingest.job_seen.get((p.host, str(job.id)))
            silent = seen is None or mono - seen > 2 * self.node_timeout_s
            if (
                p.state == "running"
                and p.started_ts is not None
                and silent
                and (now - p.started_ts > 2 * self.node_timeout_s)
            ):
                await self._node_lost(job, p.node_rank, p.host, "job vanished from node")
                return

    async def _node_lost(self, job: Job, rank: int, host: str, why: str) -> None:
        log.warning("job %d: %s (%s)", job.id, why, host)
        await self.store.node_exited(job.id, rank, None, None, why, time.time())
        if job.state != S.COMPLETING:
            await self._stop(job, S.NODE_FAIL, f"{why}: {host}")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
