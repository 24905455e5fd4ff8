"""The executor around the pure lifecycle: events in, `lifecycle.apply`, the outcome journaled
in one store transaction, then installed in memory, then its effects carried out (commands
sent, the scheduler woken, the change fed to `/v1/events`).

Nothing goes out before the store has it, so a crash at any point replays cleanly. One lock
keeps the read-apply-commit-install of one step from interleaving with another's; new
submissions need no lock and are committed in groups. When the store cannot be written
(disk full, read-only) every entry point raises `StoreError`: the API answers 503 with the
reason, and the daemon's event loop keeps the agent's message and retries it until the disk
takes it (nothing is dropped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from dcsched.daemon import lifecycle as lc
from dcsched.daemon.accounting import Accounting, run_gpu_seconds
from dcsched.daemon.audit import written_with_change
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import CommandSender, command_row, new_cmd_id
from dcsched.daemon.errors import (
    Conflict,
    InvalidRequest,
    NoSuchThing,
    PermissionDenied,
    Unavailable,
)
from dcsched.daemon.events import EventHub
from dcsched.daemon.histogram import WAIT_BUCKETS_S, Histogram
from dcsched.daemon.model import Model
from dcsched.daemon.states import QUEUED, TERMINAL
from dcsched.daemon.store import AuditRow, Batch, CommandRow, NotFound, Store
from dcsched.protocol.jobspec import (
    SINGLETON,
    JobSpec,
    interpreter,
    parse_array,
    parse_dependencies,
    runs_python,
    spec_to_dict,
)
from dcsched.protocol.messages import (
    Ack,
    AckExit,
    Cancel,
    JobExited,
    JobReport,
    JobStarted,
    Launch,
    LogNotice,
    QueryJob,
    Signal,
)
from dcsched.scheduler import SchedulerConfig

log = logging.getLogger("dcsched.jobs")
S = lc.S
PORT_AVOID_S = 600.0  # a master port found taken on a host is not offered there again for this
QUERY_EVERY_S = 5.0  # how often an unanswered QueryJob is asked again


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    user: str
    admin: bool

    def owns(self, job: lc.Job) -> bool:
        """May act on the job and read its spec, env and log: its owner or an admin."""
        return self.admin or self.uid == job.uid


@dataclass(frozen=True, slots=True)
class IdlePolicy:
    """[daemon] idle_*: a running job whose GPUs all stay under util_pct for after_s is
    flagged and warned (in its log); cancel_after_s > 0 cancels it that much later."""

    util_pct: float = 5.0
    after_s: float = 0.0  # 0: no check
    cancel_after_s: float = 0.0  # 0: never cancel


@dataclass(frozen=True, slots=True)
class Timing:
    cancel_grace_s: float
    preempt_grace_s: float
    node_timeout_s: float


class JobManager:
    def __init__(
        self,
        store: Store,
        model: Model,
        sender: CommandSender,
        cluster: Cluster,
        hub: EventHub,
        config: SchedulerConfig,
        timing: Timing,
        wake_scheduler: Callable[[], None],
    ) -> None:
        self.store = store
        self.model = model
        self.sender = sender
        self.cluster = cluster
        self.hub = hub
        self.config = config
        self.timing = timing
        self.wake_scheduler = wake_scheduler
        self.avoid_ports: dict[tuple[str, int], float] = {}  # (addr, port) -> until (monotonic)
        self._queries: dict[tuple[str, int], float] = {}  # (host, job) -> last asked (monotonic)
        # Hosts declared lost whose agent has not been heard again: when it is (a hung agent
        # resumes, a network heals), what it still runs of their jobs is orphaned.
        self._lost: set[str] = set()
        self._lock = asyncio.Lock()
        self._submits: list[tuple[lc.Job, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.queue_wait_s = Histogram(WAIT_BUCKETS_S)  # submit to start, for /metrics
        self.accounting = Accounting(model)
        self.idle = IdlePolicy()
        self.idle_flagged: dict[int, float] = {}  # job -> when it was flagged idle

    # --- reads ------------------------------------------------------------------------------

    async def get(self, job_id: int) -> lc.Job:
        job = self.model.jobs.get(job_id)
        if job is not None:
            return job
        try:
            return await self.store.job(job_id)
        except NotFound:
            raise NoSuchThing(f"no job {job_id}; `dcctl queue --all` lists jobs") from None

    async def find(self, job_id: int, task: int | None = None) -> lc.Job:
        """Job `job_id`, or with `task` task `task` of array `job_id` (Slurm's `123_4`)."""
        if task is None:
            return await self.get(job_id)
        tasks = await self.store.array_tasks(job_id)
        if task not in tasks:
            what = f"array {job_id} has no task {task}" if tasks else f"job {job_id} is no array"
            raise NoSuchThing(f"{what}; `dcctl queue --all -r` lists the tasks")
        return await self.get(tasks[task])

    # --- submissions ------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, caller: Caller) -> int:
        """The new job's id; for an array, the array's id (its first task's)."""
        self._writable()
        spec = await self._resolve_dependencies(spec)
        await self._check_submission(spec)
        job = lc.Job(
            id=0,  # given by the store
            name=spec.name,
            user=caller.user,
            uid=caller.uid,
            account=spec.account,
            qos=spec.qos,
            nice=spec.nice,
            state=S.HELD if spec.hold else S.PENDING,
            spec=spec_to_dict(spec),
            nodes=spec.resources.nodes,
            gpus_per_node=spec.resources.gpus_per_node,
            gpu_type=spec.resources.gpu_type,
            time_limit_s=spec.time_limit_s,
            submit_ts=time.time(),
        )
        if spec.array:
            return await self._submit_array(job, spec)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._submits.append((job, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_submits(), name="submits")
        job_id = await fut
        written_with_change()  # the group commit wrote its audit row
        log.info("job %d %r submitted by %s", job_id, spec.name, caller.user)
        return job_id

    async def _submit_array(self, job: lc.Job, spec: JobSpec) -> int:
        """Every task a job of its own, journaled in one transaction (not group-committed:
        the tasks need the array's id, which is the first task's)."""
        indexes, _ = parse_array(spec.array)
        tasks = [dataclasses.replace(job, array_task_id=i) for i in indexes]
        ids = await self.store.add_array(tasks, f"submitted by {job.user} (array {spec.array})")
        for job_id, task in zip(ids, tasks, strict=True):
            new = dataclasses.replace(task, id=job_id, array_job_id=ids[0])
            self.model.install(new, None)
            self.hub.publish("job", _change(new))
        self.wake_scheduler()
        log.info("array %d %r: %d tasks submitted by %s", ids[0], job.name, len(ids), job.user)
        return ids[0]

    async def _resolve_dependencies(self, spec: JobSpec) -> JobSpec:
        """Dependencies on an array (its id: every task) or one task (`ARRAY_TASK`) become
        job ids, so that the scheduler reads plain job ids."""
        if not any("_" in d for d in spec.dependency) and not any(
            self._maybe_array(int(i)) for _, i in parse_dependencies(spec.dependency)
        ):
            return spec
        out: list[str] = []
        for dep in spec.dependency:
            if dep == SINGLETON:
                out.append(dep)
                continue
            kind, *refs = dep.split(":")
            ids: list[str] = []
            for ref in refs:
                head, _, task = ref.partition("_")
                tasks = await self.store.array_tasks(int(head))
                if task:
                    if int(task) not in tasks:
                        raise InvalidRequest(
                            f"dependency on {ref}: job {head} has no array task {task}"
                        )
                    ids.append(str(tasks[int(task)]))
                elif tasks:  # the array's id: every task
                    ids += [str(i) for _, i in sorted(tasks.items())]
                else:
                    ids.append(head)
            out.append(":".join([kind, *ids]))
        return msgspec.structs.replace(spec, dependency=out)

    def _maybe_array(self, job_id: int) -> bool:
        """Might this id be an array's? (A live job says; a finished one needs the store.)"""
        job = self.model.jobs.get(job_id)
        return job is None or job.array_job_id == job_id

    async def _flush_submits(self) -> None:
        """Group commit: every submission that arrived meanwhile goes in one transaction."""
        while self._submits:
            await asyncio.sleep(0)  # let the submissions already on their way join this batch
            batch, self._submits = self._submits, []
            try:
                ids = await self._journal_new([n for n, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), job_id in zip(batch, ids, strict=True):
                if not fut.done():
                    fut.set_result(job_id)

    async def _journal_new(self, new: list[lc.Job]) -> list[int]:
        ids = await self.store.add_jobs([(j, f"submitted by {j.user}") for j in new], audited=True)
        for job_id, unnumbered in zip(ids, new, strict=True):
            job = dataclasses.replace(unnumbered, id=job_id)
            self.model.install(job, None)
            self.hub.publish("job", _change(job))
        self.wake_scheduler()
        return ids

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
        # Membership tests, not set differences: `deps - keys()` would walk every live job.
        unknown = {
            i for i in deps if i not in self.model.jobs and i not in self.model.finished_deps
        }
        if unknown:
            found = await self.store.job_states(unknown)
            missing = sorted(unknown - found.keys())
            if missing:
                raise InvalidRequest(f"dependency on job {missing[0]}, which does not exist")
            self.model.finished_deps.update({i: s for i, s in found.items() if s in TERMINAL})

    # --- user actions -----------------------------------------------------------------------

    def _may_act(self, caller: Caller, job: lc.Job) -> None:
        if not caller.owns(job):
            raise PermissionDenied(
                f"job {job.id} belongs to {job.user}; only its owner or an admin may change it"
            )

    async def act(self, job_id: int, caller: Caller, ev: lc.Event) -> lc.Job:
        """A user's cancel, hold, release, requeue or update; its audit row rides in the
        same transaction (a refusal raises, and the API records it)."""
        self._writable()
        async with self._lock:
            job = await self.get(job_id)
            self._may_act(caller, job)
            now = time.time()
            try:
                out = lc.apply(job, ev, now)
            except lc.NotAllowed as exc:
                raise PermissionDenied(f"job {job_id}: {exc}") from None
            except lc.Refused as exc:
                raise Conflict(str(exc)) from None
            await self._commit([(job, out)], Batch(audit=[_audit_row(caller, ev, job, out, now)]))
            written_with_change()
            return out.job

    async def act_on_array(
        self, array_id: int, caller: Caller, ev: lc.Event
    ) -> tuple[list[lc.Job], list[tuple[lc.Job, str]]]:
        """The action on every live task of array `array_id` it applies to, in one
        transaction: (the tasks changed, the tasks left as they are with why). The lifecycle
        decides which tasks it applies to (a hold leaves running tasks alone); it is refused
        only when it applies to none (a repeat, e.g. a hold of held tasks, is no error)."""
        self._writable()
        tasks = await self.store.array_tasks(array_id)
        async with self._lock:
            now = time.time()
            pairs: list[tuple[lc.Job, lc.Outcome]] = []
            skipped: list[tuple[lc.Job, str]] = []
            already: list[tuple[lc.Job, str]] = []
            for _, task_id in sorted(tasks.items()):
                job = self.model.jobs.get(task_id)
                if job is None:
                    continue  # finished: nothing of it can change
                self._may_act(caller, job)
                try:
                    out = lc.apply(job, ev, now)
                except lc.NotAllowed as exc:
                    raise PermissionDenied(f"job {task_id}: {exc}") from None
                except lc.Refused as exc:
                    skipped.append((job, str(exc)))
                    continue
                if out.job == job and not out.effects:
                    already.append((job, f"already {job.state}"))  # a repeat: no error
                    continue
                pairs.append((job, out))
            if not pairs and not already:
                why = skipped[0][1] if skipped else "every task has ended"
                raise Conflict(f"array {array_id}: no task it applies to ({why})")
            if pairs:
                rows = [_audit_row(caller, ev, job, out, now) for job, out in pairs]
                await self._commit(pairs, Batch(audit=rows))
                written_with_change()
            return [out.job for _, out in pairs], already + skipped

    def cancel_event(self, caller: Caller) -> lc.Cancel:
        return lc.Cancel(caller.user, self.timing.cancel_grace_s)

    def requeue_event(self, caller: Caller) -> lc.Requeue:
        return lc.Requeue(f"requeued by {caller.user}", self.timing.cancel_grace_s)

    async def preempt(self, victims: Iterable[tuple[int, str]]) -> None:
        """The scheduler's victims, each with why (the scheduler's words): back to the queue
        through the requeue path (warning signal and its lead, grace, restart count)."""
        grace = self.timing.preempt_grace_s
        await self._apply_many([(i, lc.Requeue(why, grace, True)) for i, why in victims])

    async def requeue_host(self, host: str, by: str) -> list[int]:
        """`dcctl drain --requeue`: the jobs running on `host` back to the queue, each with
        its warning signal and lead first, as a preemption."""
        ids = [j.id for j in self.model.jobs_on(host)]
        ev = lc.Requeue(f"node {host} drained by {by}", self.timing.preempt_grace_s, True)
        await self._apply_many([(i, ev) for i in ids])
        return ids

    async def start(self, starts: list[tuple[int, lc.Start]]) -> None:
        """The scheduler's starts of one pass, journaled together."""
        await self._apply_many(starts)

    # --- agents' messages -------------------------------------------------------------------

    async def on_ack(self, ack: Ack) -> None:
        async with self._lock:
            cmd = self.sender.pending.get(ack.cmd_id)
            if cmd is None or cmd.host != ack.host:
                # A repeat, the answer to a command dropped meanwhile, or a host answering
                # for another: a host speaks only for itself.
                return
            batch = Batch(acks=[(ack.cmd_id, ack.ok, ack.error or ack.code, time.time())])
            ev: lc.Event | None = None
            if cmd.kind == "launch" and not ack.ok:
                log.warning("host %s refused to launch job %s: %s", ack.host, cmd.job_id, ack.error)
                ev = lc.LaunchRefused(ack.host, ack.cmd_id, ack.error or ack.code, ack.code)
            elif cmd.kind == "cancel" and ack.error:
                # The agent runs nothing of it and remembers no exit: never started, or gone.
                ev = lc.NotRunning(ack.host, f"vanished from {ack.host} ({ack.error})")
            pairs = []
            job = self.model.jobs.get(cmd.job_id)
            if job is not None and (job.start_ts or 0) > cmd.created_ts:
                ev = None  # the answer to a cancel of an earlier run: says nothing of this one
            if ev is not None and job is not None:
                pairs.append((job, lc.apply(job, ev, time.time())))
            await self._commit(pairs, batch)
            self.sender.acked(ack.cmd_id)

    async def on_started(self, ev: JobStarted) -> None:
        job_id = job_number(ev.job_id)
        if job_id is not None:
            await self._apply_many(
                [(job_id, lc.Started(ev.host, ev.node_rank, ev.launch_id, ev.pid, ev.log_path))]
            )

    async def on_exited(self, ev: JobExited) -> None:
        job_id = job_number(ev.job_id)
        step = lc.Exited(ev.host, ev.node_rank, ev.launch_id, ev.exit_code, ev.signal, ev.reason)
        if job_id is None or job_id not in self.model.jobs:
            # Finished long ago, or unknown: nothing changes, but the agent may forget it.
            await self._ack_exit(ev.host, ev.job_id, step)
            return
        await self._apply_many([(job_id, step)])

    async def on_report(self, rep: JobReport) -> None:
        """The answer to a QueryJob: each part the host no longer runs gets its exit, or is
        declared vanished only now that the host has said it knows nothing of it."""
        job_id = job_number(rep.job_id)
        if job_id is None:
            return
        self._queries.pop((rep.host, job_id), None)
        for ex in rep.exits:
            if ex.host == rep.host and ex.job_id == rep.job_id:  # a host speaks for itself
                await self.on_exited(ex)
        job = self.model.jobs.get(job_id)
        if job is None:
            return
        this_run = {(p.rank, p.launch_id) for p in job.parts}
        known = set(rep.running) | {
            e.node_rank
            for e in rep.exits
            if e.host == rep.host and (not e.launch_id or (e.node_rank, e.launch_id) in this_run)
        }
        gone = [p for p in job.parts if p.host == rep.host and p.live and p.rank not in known]
        if any(p.state == "running" for p in gone):
            why = f"vanished from {rep.host} (its agent has no record of it)"
            await self._apply_many([(job_id, lc.NotRunning(rep.host, why))])

    async def on_status(self, host: str, online: bool, running: list[str]) -> None:
        """An agent's status: ask about jobs it no longer lists, stop those it should not run."""
        if not online:
            return  # offline is not lost: its jobs wait for it for node_timeout_s
        check = lc.reconcile_host(host, self.model.jobs_on(host), running)
        for job_id in check.query:
            await self._query(host, job_id)
        if check.orphans:
            await self._stop_orphans(host, check.orphans)

    async def _query(self, host: str, job_id: int) -> None:
        now = time.monotonic()
        if now - self._queries.get((host, job_id), -QUERY_EVERY_S) < QUERY_EVERY_S:
            return
        if await self.sender.send_once(host, QueryJob(cmd_id=new_cmd_id(), job_id=str(job_id))):
            self._queries[(host, job_id)] = now

    async def _stop_orphans(self, host: str, job_ids: tuple[str, ...]) -> None:
        rows = []
        for jid in job_ids:
            num = job_number(jid)
            if num is None:
                continue
            if any(c.host == host for c in self.sender.unacked(num, "cancel")):
                continue  # already being stopped
            log.warning("host %s runs job %s, which is not running there: stopping it", host, jid)
            cancel = Cancel(
                cmd_id=new_cmd_id(), job_id=jid, grace_s=self.timing.cancel_grace_s, reason="orphan"
            )
            rows.append(command_row(host, num, cancel, time.time()))
        if rows:
            async with self._lock:
                # Decided before the lock: a job started there meanwhile is no orphan.
                live = {str(j.id) for j in self.model.jobs_on(host)}
                rows = [r for r in rows if str(r.job_id) not in live]
                await self._commit([], Batch(commands=rows))

    # --- time --------------------------------------------------------------------------------

    async def check(self, judge_silence: bool) -> None:
        """Time limits, COMPLETING jobs with every node exited, nodes silent past the timeout,
        and jobs a host no longer lists (asked about again until answered)."""
        now_mono = time.monotonic()
        for key, until in list(self.avoid_ports.items()):
            if until < now_mono:
                del self.avoid_ports[key]
        now = time.time()
        steps: list[tuple[int, lc.Event]] = [
            (j.id, lc.Tick())
            for i in list(self.model.running)
            if lc.due(j := self.model.jobs[i], now)
        ]
        if judge_silence:
            for host in list(self.model.on_host):
                silent = self.cluster.silent_for(host)
                if silent > self.timing.node_timeout_s:
                    why = f"node silent for {silent:.0f} s"
                    steps += [(j.id, lc.NodeLost(host, why)) for j in self.model.jobs_on(host)]
                    self._lost.add(host)
        await self._apply_many(steps)
        for host in list(self._lost):
            reported = self.cluster.reported_jobs(host)
            if reported is not None and self.cluster.silent_for(host) < self.timing.node_timeout_s:
                self._lost.discard(host)
                log.warning("host %s is heard again after it was declared lost", host)
                await self.on_status(host, True, reported)
        for host, job_id in list(self._queries):
            job = self.model.jobs.get(job_id)
            if job is None or not any(p.host == host and p.live for p in job.parts):
                self._queries.pop((host, job_id), None)
            elif self.cluster.is_online(host):
                await self._query(host, job_id)
        await self._check_idle(now)
        if self.storage_error:
            await self.store.probe()  # recovers by itself once the disk takes writes again

    async def _check_idle(self, now: float) -> None:
        """Flags (and warns) running jobs whose GPUs sit idle; cancels them by policy."""
        p = self.idle
        for job_id in [i for i in self.idle_flagged if i not in self.model.running]:
            del self.idle_flagged[job_id]
        if p.after_s <= 0:
            return
        cancels: list[tuple[int, lc.Event]] = []
        for job_id in list(self.model.running):
            job = self.model.jobs.get(job_id)
            idle = self.accounting.idle_for(job_id, now)
            if job is None or job.state != S.RUNNING or idle is None or idle < p.after_s:
                self.idle_flagged.pop(job_id, None)  # busy (again)
                continue
            minutes = f"{idle / 60:.0f} min" if idle >= 60 else f"{idle:.0f} s"
            if job_id not in self.idle_flagged:
                self.idle_flagged[job_id] = now
                text = (
                    f"warning: this job's GPUs have all been under {p.util_pct:g}% utilisation"
                    f" for {minutes}"
                )
                if p.cancel_after_s > 0:
                    text += (
                        f"; it will be cancelled in {p.cancel_after_s / 60:.0f} min unless they"
                        " get busy ([daemon] idle_cancel_after_s)"
                    )
                log.warning("job %d idle: %s", job_id, text)
                self.hub.publish("job", {**_change(job), "idle": True})
                for part in job.parts:
                    if part.live:
                        notice = LogNotice(
                            cmd_id=new_cmd_id(), job_id=str(job_id), node_rank=part.rank, text=text
                        )
                        await self.sender.send_once(part.host, notice)
            elif p.cancel_after_s > 0 and idle >= p.after_s + p.cancel_after_s:
                by = f"the idle-GPU policy (GPUs under {p.util_pct:g}% for {minutes})"
                cancels.append((job_id, lc.Cancel(by, self.timing.cancel_grace_s)))
        await self._apply_many(cancels)

    # --- the step ------------------------------------------------------------------------------

    async def _apply_many(self, steps: Sequence[tuple[int, lc.Event]]) -> None:
        if not steps:
            return
        async with self._lock:
            now = time.time()
            current: dict[int, lc.Job] = {}
            outcomes: dict[int, tuple[lc.Job, lc.Outcome]] = {}
            for job_id, ev in steps:
                job = current.get(job_id) or self.model.jobs.get(job_id)
                if job is None:
                    continue
                try:
                    out = lc.apply(job, ev, now)
                except lc.Refused as exc:
                    log.info("job %d: %s ignored: %s", job_id, type(ev).__name__, exc)
                    continue
                first = outcomes.get(job_id)
                if first is not None:  # two steps on one job: one outcome, all effects
                    out.effects[:0] = first[1].effects
                    out.history[:0] = first[1].history
                    outcomes[job_id] = (first[0], out)
                else:
                    outcomes[job_id] = (job, out)
                current[job_id] = out.job
            await self._commit(list(outcomes.values()))

    async def _commit(
        self, outcomes: list[tuple[lc.Job, lc.Outcome]], batch: Batch | None = None
    ) -> None:
        """Journals the outcomes (and `batch`) in one transaction, then installs and acts."""
        batch = batch or Batch()
        now = time.time()
        superseded: list[CommandRow] = []  # stop resending these: journaled as acked
        runs_ended: list[tuple[lc.Job, lc.Job, float]] = []
        for old, out in outcomes:
            new = out.job
            if new == old and not out.effects:
                continue
            if new != old:
                batch.jobs.append(new)
                gpu_s = run_gpu_seconds(old, new, now)
                runs_ended.append((old, new, gpu_s))
                if new.state in TERMINAL and old.state not in TERMINAL:
                    batch.accounting.append(self.accounting.row(new, gpu_s, now))
                if new.parts != old.parts:
                    batch.parts_changed.add(new.id)
                batch.history += [(new.id, now, st, why) for st, why in out.history]
            rows = []
            for eff in out.effects:
                if isinstance(eff, lc.DrainNode):
                    batch.drains.append((eff.host, eff.reason, now))
                elif isinstance(eff, lc.SendLaunch):
                    rows.append(command_row(eff.part.host, new.id, _launch(new, eff.part), now))
                elif isinstance(eff, lc.SendCancel):
                    grace = self.timing.cancel_grace_s if eff.grace_s is None else eff.grace_s
                    cancel = Cancel(
                        cmd_id=new_cmd_id(),
                        job_id=str(new.id),
                        grace_s=grace,
                        reason=eff.reason,
                        signal=eff.signal,
                        signal_lead_s=eff.signal_lead_s,
                    )
                    rows.append(command_row(eff.host, new.id, cancel, now))
                elif isinstance(eff, lc.SendSignal):
                    sig = Signal(cmd_id=new_cmd_id(), job_id=str(new.id), signal=eff.signal)
                    rows.append(command_row(eff.host, new.id, sig, now))
                elif isinstance(eff, lc.DropLaunches):
                    superseded += self.sender.unacked(new.id, "launch")
            if new.state != old.state and (not new.parts or new.state == S.STARTING):
                # The run is over (back in the queue, or ended before it started), or a new
                # one begins: a late cancel, or a late answer to one, must not touch it.
                superseded += self.sender.unacked(new.id, "cancel")
            if new.state != old.state and old.state == S.RUNNING:
                # A time-limit warning still unsent is moot once the run is being stopped.
                superseded += self.sender.unacked(new.id, "signal")
            batch.commands += rows
        batch.acks += [(c.cmd_id, False, "superseded", now) for c in superseded]
        await self.store.commit(batch)
        # Journaled: now memory, then the world.
        for old, new, gpu_s in runs_ended:
            self.accounting.committed(old, new, gpu_s)
        for host, reason, _ in batch.drains:
            node = self.cluster.nodes.get(host)
            if node is not None and not node.drained:
                node.drained, node.drain_reason = True, reason
                log.warning("node %s drained: %s", host, reason)
                self.hub.publish("node", {"host": host, "drained": True, "reason": reason})
        for c in superseded:
            self.sender.acked(c.cmd_id)
        wake = False
        for old, out in outcomes:
            if out.job != old:
                self.model.install(out.job, old)
                if old.state in QUEUED and out.job.state == S.STARTING:
                    self.queue_wait_s.observe(max(0.0, now - old.submit_ts))
                self.hub.publish("job", _change(out.job))
                if out.history:
                    log.info("job %d %s: %s", out.job.id, out.job.state, out.history[-1][1])
            for eff in out.effects:
                if isinstance(eff, lc.WakeScheduler):
                    wake = True
                elif isinstance(eff, lc.AckExit):
                    # Not awaited here: a broker round trip must not hold the job lock.
                    task = asyncio.create_task(self._ack_exit(eff.host, str(out.job.id), eff))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                elif isinstance(eff, lc.AvoidPort):
                    self.avoid_ports[(eff.addr, eff.port)] = time.monotonic() + PORT_AVOID_S
        self.sender.add(batch.commands)
        self._drained(outcomes)
        if wake:
            self.wake_scheduler()

    def _drained(self, outcomes: list[tuple[lc.Job, lc.Outcome]]) -> None:
        """A draining node whose last job just left it is DRAINED now: said on the change
        feed (`dcctl events`, dctop), as `dcctl drain` said DRAINING."""
        left = {p.host for old, out in outcomes if out.job != old for p in old.parts if p.live}
        for host in sorted(left - self.model.on_host.keys()):
            node = self.cluster.nodes.get(host)
            if node is not None and node.drained:
                log.info("node %s drained: its last job has ended", host)
                self.hub.publish(
                    "node",
                    {
                        "host": host,
                        "drained": True,
                        "reason": node.drain_reason,
                        "drain_state": "drained",
                    },
                )

    async def _ack_exit(self, host: str, job_id: str, ex: lc.Exited | lc.AckExit) -> None:
        await self.sender.send_once(
            host,
            AckExit(cmd_id=new_cmd_id(), job_id=job_id, node_rank=ex.rank, launch_id=ex.launch_id),
        )

    # --- storage health ------------------------------------------------------------------------

    @property
    def storage_error(self) -> str:
        """Why the store cannot be written now; "" when it can."""
        return self.store.write_error

    def _writable(self) -> None:
        if self.storage_error:
            raise Unavailable(
                f"the daemon cannot write its state ({self.storage_error}); nothing was changed."
                " Free space, or make the state directory writable again: it recovers by itself"
                " once it can write"
            )


def _audit_row(caller: Caller, ev: lc.Event, job: lc.Job, out: lc.Outcome, now: float) -> AuditRow:
    return AuditRow(
        now,
        caller.uid,
        caller.user,
        type(ev).__name__.lower(),
        f"job {job.id}",
        "ok",
        200,
        f"{job.state} -> {out.job.state}",
    )


def _launch(job: lc.Job, part: lc.Part) -> Launch:
    spec = job.spec
    return Launch(
        cmd_id=part.launch_id,
        job_id=str(job.id),
        node_rank=part.rank,
        nnodes=len(job.parts),
        nproc_per_node=spec["torchrun"].get("nproc_per_node") or job.gpus_per_node,
        master_addr=job.master_addr or "",
        master_port=job.master_port or 0,
        gpus=list(part.gpus),
        command=list(spec["command"]),
        workdir=spec.get("workdir", ""),
        env={**spec.get("env", {}), **job_env(job)},
        user=job.user,
        python=interpreter(spec["torchrun"].get("python")),
        no_python=not runs_python(spec["command"], spec["torchrun"].get("python")),
    )


def job_env(job: lc.Job) -> dict[str, str]:
    """What a run learns of its place: restarts (as Slurm's SLURM_RESTART_COUNT) and array."""
    env = {"DCSCHED_RESTART_COUNT": str(job.restart_count)}
    if job.array_job_id is not None and job.array_task_id is not None:
        env["DCSCHED_ARRAY_JOB_ID"] = str(job.array_job_id)
        env["DCSCHED_ARRAY_TASK_ID"] = str(job.array_task_id)
    return env


def _change(job: lc.Job) -> dict[str, object]:
    return {"id": job.id, "state": job.state, "reason": job.reason, "user": job.user}


def job_number(text: str) -> int | None:
    """A job id from an agent's message, or None when it cannot be one of ours."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        return None
    return int(text)
