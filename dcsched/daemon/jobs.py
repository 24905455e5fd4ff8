"""Job lifecycle: submit, cancel, hold/release, agent events, time limits, node failures.

Every state change is one store transaction; what a job will end as while its nodes are
still stopping is kept in `ending`, so a daemon restart in the middle loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import CommandSender, command_row, new_cmd_id
from dcsched.daemon.errors import Conflict, InvalidRequest, NoSuchThing, PermissionDenied
from dcsched.daemon.ingest import Ingest
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState
from dcsched.daemon.store import Job, NotFound, Store
from dcsched.protocol.jobspec import JobSpec, spec_to_dict
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
        self.cluster = cluster
        self.ingest = ingest
        self.cancel_grace_s = cancel_grace_s
        self.node_timeout_s = node_timeout_s
        self.wake_scheduler = wake_scheduler
        self.started = time.monotonic()

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
        deps = {int(i) for d in spec.dependency for i in d.split(":")[1:]}
        known = await self.store.job_states(deps)
        missing = sorted(deps - set(known))
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

    async def cancel(self, job_id: int, caller: Caller) -> Job:
        job = await self.get(job_id)
        self._may_act(caller, job)
        if job.state in TERMINAL:
            raise Conflict(f"job {job_id} has already ended ({job.state})")
        if job.state in QUEUED:
            job = await self.store.transition(
                job_id, S.CANCELLED, time.time(), f"cancelled by {caller.user}"
            )
            self.wake_scheduler()
            return job
        return await self._stop(job, S.CANCELLED, f"cancelled by {caller.user}")

    async def hold(self, job_id: int, caller: Caller) -> Job:
        job = await self.get(job_id)
        self._may_act(caller, job)
        if job.state == S.HELD:
            return job
        if job.state not in (S.PENDING, S.REQUEUED):
            raise Conflict(f"job {job_id} is {job.state}; only a pending job can be held")
        if job.state == S.REQUEUED:
            await self.store.transition(job_id, S.PENDING, time.time(), "requeued")
        return await self.store.transition(job_id, S.HELD, time.time(), f"held by {caller.user}")

    async def release(self, job_id: int, caller: Caller) -> Job:
        job = await self.get(job_id)
        self._may_act(caller, job)
        if job.state != S.HELD:
            raise Conflict(f"job {job_id} is {job.state}, not held")
        job = await self.store.transition(
            job_id, S.PENDING, time.time(), f"released by {caller.user}"
        )
        self.wake_scheduler()
        return job

    async def requeue(self, job_id: int, caller: Caller) -> Job:
        """Stops a running job and puts it back in the queue (Slurm's scontrol requeue)."""
        job = await self.get(job_id)
        self._may_act(caller, job)
        if job.state not in (S.STARTING, S.RUNNING):
            raise Conflict(f"job {job_id} is {job.state}; only a running job can be requeued")
        return await self._stop(job, S.REQUEUED, f"requeued by {caller.user}")

    async def preempt(self, job_id: int) -> None:
        job = await self.store.job(job_id)
        if job.state in (S.STARTING, S.RUNNING):
            log.info("preempting job %d", job_id)
            await self._stop(
                job, S.REQUEUED, "preempted by a higher QOS", grace_s=self.config.preempt_grace_s
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
        parts = await self.store.job_nodes(job.id)
        rows = []
        for p in parts:
            if p.state != "exited":
                rows.append(
                    command_row(
                        p.host,
                        Cancel(
                            cmd_id=new_cmd_id(),
                            job_id=str(job.id),
                            grace_s=self.cancel_grace_s if grace_s is None else grace_s,
                            reason=final.lower(),
                        ),
                    )
                )
        if rows:
            await self.store.add_commands(job.id, rows, now)
            self.sender.wake.set()
        return await self._maybe_finish(job.id)

    # --- agent events ----------------------------------------------------------------------

    async def on_ack(self, ack: Ack) -> None:
        if not await self.store.ack_command(ack.cmd_id, ack.ok, ack.error, time.time()):
            return
        if ack.ok:
            return
        log.warning(
            "host %s refused command %s for job %s: %s", ack.host, ack.cmd_id, ack.job_id, ack.error
        )
        job_id = _int(ack.job_id)
        if job_id is None:
            return
        for p in await self.store.job_nodes(job_id):
            if p.host == ack.host and p.state == "launching":
                await self.store.node_exited(
                    job_id, p.node_rank, None, None, f"launch refused: {ack.error}", time.time()
                )
                job = await self.store.job(job_id)
                if job.state in (S.STARTING, S.RUNNING):
                    await self.store.update_job(
                        job_id, reason=f"launch refused on {ack.host}: {ack.error}"
                    )
                    await self._stop(job, S.FAILED, f"launch refused on {ack.host}")
                else:
                    await self._maybe_finish(job_id)

    async def on_started(self, ev: JobStarted) -> None:
        job_id = _int(ev.job_id)
        if job_id is None:
            return
        await self.store.node_started(job_id, ev.node_rank, ev.pid, ev.log_path, time.time())
        job = await self.store.job(job_id)
        if job.state == S.STARTING:
            parts = await self.store.job_nodes(job_id)
            if all(p.state == "running" for p in parts):
                await self.store.transition(
                    job_id, S.RUNNING, time.time(), "torchrun started on every node"
                )

    async def on_exited(self, ev: JobExited) -> None:
        job_id = _int(ev.job_id)
        if job_id is None:
            return
        try:
            job = await self.store.job(job_id)
        except NotFound:
            return
        reason = ev.reason or ("exit" if ev.signal is None else "signal")
        if not await self.store.node_exited(
            job_id, ev.node_rank, ev.exit_code, ev.signal, reason, time.time()
        ):
            return
        failed = (ev.exit_code not in (0, None)) or ev.signal is not None or ev.reason == "lost"
        if job.state in (S.STARTING, S.RUNNING) and failed:
            final = S.NODE_FAIL if ev.reason == "lost" else S.FAILED
            what = f"signal {ev.signal}" if ev.signal is not None else f"exit code {ev.exit_code}"
            await self._stop(
                job,
                final,
                f"node {ev.node_rank} ({ev.host}) ended with {what}",
                exit_code=ev.exit_code,
                signal=ev.signal,
            )
        else:
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
        log.info("job %d %s", job_id, final)
        self.wake_scheduler()
        return job

    # --- periodic checks -------------------------------------------------------------------

    async def check(self) -> None:
        """Time limits, and jobs on nodes that went down or lost track of them."""
        now = time.time()
        mono = time.monotonic()
        for job in await self.store.jobs(ACTIVE):
            if (
                job.state != S.COMPLETING
                and job.start_ts is not None
                and (now > job.start_ts + job.time_limit_s)
            ):
                log.info("job %d reached its time limit of %d s", job.id, job.time_limit_s)
                await self._stop(job, S.TIMEOUT, f"time limit {job.time_limit_s} s reached")
                continue
            for p in await self.store.job_nodes(job.id):
                if p.state == "exited":
                    continue
                node = self.cluster.nodes.get(p.host)
                down = node is None or self.cluster.state(node) == "down"
                # Grace after our own start: agents' retained status and telemetry refill it.
                if down and mono - self.started > self.node_timeout_s:
                    await self._node_lost(job, p.node_rank, p.host, "node down")
                    break
                seen = self.ingest.job_seen.get((p.host, str(job.id)))
                if (
                    p.state == "running"
                    and not down
                    and p.started_ts is not None
                    and now - p.started_ts > 2 * self.node_timeout_s
                    and (seen is None or mono - seen > 2 * self.node_timeout_s)
                    and mono - self.started > 2 * self.node_timeout_s
                ):
                    await self._node_lost(job, p.node_rank, p.host, "job vanished from node")
                    break

    async def _node_lost(self, job: Job, rank: int, host: str, why: str) -> None:
        log.warning("job %d: %s (%s)", job.id, why, host)
        await self.store.node_exited(job.id, rank, None, None, why, time.time())
        if job.state == S.COMPLETING:
            await self._maybe_finish(job.id)
        else:
            await self._stop(job, S.NODE_FAIL, f"{why}: {host}")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
