"""The job lifecycle as a pure function: `apply(job, event, now) -> Outcome(job, effects)`.

Jobs and their node parts are immutable plain data; an event is one thing that happened
(a user's action, an agent's message, the scheduler's start, a node lost, a tick of the
clock). `apply` returns the job as it is now and the effects to carry out once that new
state is journaled: commands to send, the scheduler to wake, an exit to acknowledge. It does
no I/O and has no clock of its own, so every race is a row in a table test
(tests/unit/daemon/test_lifecycle.py). The daemon's executor (`jobs.py`) journals the
outcome in one store transaction before any effect goes out.
"""

from __future__ import annotations

import dataclasses
import signal as _signal
from dataclasses import dataclass, field
from typing import Any

from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState, check_transition
from dcsched.protocol.durations import format_duration
from dcsched.protocol.jobspec import max_restarts, warning_signal

S = JobState
RETRY_PORT = "port_in_use"  # Ack.code of a launch refused because its master port is taken
# Ack.code of a launch refused by the host's pre-job health check: the job goes back to the
# queue (the node is at fault, not the job) and the node is drained with the reason.
UNHEALTHY = "unhealthy"


# --- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One node's share of a job's current run."""

    rank: int
    host: str
    gpus: tuple[int, ...]
    launch_id: str  # cmd_id of the Launch that began this run on this node
    state: str = "launching"  # launching | running | exited
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    log_path: str = ""
    started_ts: float | None = None
    exited_ts: float | None = None

    @property
    def live(self) -> bool:
        return self.state != "exited"

    def to_dict(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies, and listings call this per job.
        d = {name: getattr(self, name) for name in _PART_FIELDS}
        d["node_rank"] = d.pop("rank")
        d["gpus"] = list(self.gpus)
        return d


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    name: str
    user: str
    uid: int
    account: str
    qos: str
    nice: int
    state: str
    spec: dict[str, Any]
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    time_limit_s: int
    submit_ts: float
    reason: str = ""
    start_ts: float | None = None
    end_ts: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    ending: str = ""  # the final state a COMPLETING job will take
    restart_count: int = 0  # times it went back to the queue after a run began
    # seconds its earlier runs took, allocation to requeue (GPUs held): the scheduler's
    # attained service (`las`); the current run is not included
    attained_s: float = 0.0
    signal_ts: float | None = None  # when this run was sent its warning signal
    array_job_id: int | None = None  # an array task: the array's id (its first task's id)
    array_task_id: int | None = None
    parts: tuple[Part, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every field but the parts (the API's job row)."""
        return {name: getattr(self, name) for name in _JOB_FIELDS}


_PART_FIELDS = tuple(f.name for f in dataclasses.fields(Part))
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job) if f.name != "parts")


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancel:
    by: str
    grace_s: float | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    by: str


@dataclass(frozen=True, slots=True)
class Release:
    by: str


@dataclass(frozen=True, slots=True)
class Requeue:
    """A running job back to the queue: a user's `dcctl requeue` or a preemption."""

    why: str
    grace_s: float | None = None
    only_if_running: bool = False  # a preemption of a job that ended meanwhile is no error


@dataclass(frozen=True, slots=True)
class Update:
    """`dcctl update`: a new time limit, nice or QOS (None: unchanged). Its owner may only
    lower what the job gets (a shorter limit, a higher nice, a QOS of no higher priority);
    an admin may do anything. Nice and QOS change only while the job waits."""

    by: str
    admin: bool
    time_limit_s: int | None = None
    nice: int | None = None
    qos: str | None = None
    # the scheduling priority of each QOS (from the config); one not listed counts 0
    qos_priorities: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Start:
    parts: tuple[Part, ...]
    master_addr: str
    master_port: int


@dataclass(frozen=True, slots=True)
class LaunchRefused:
    host: str
    launch_id: str
    error: str
    code: str = ""


@dataclass(frozen=True, slots=True)
class NotRunning:
    """The host says it does not run this job and remembers no exit of it: a launch that
    never arrived is closed as never started, a run it had is gone (vanished)."""

    host: str
    why: str


@dataclass(frozen=True, slots=True)
class Started:
    host: str
    rank: int
    launch_id: str
    pid: int
    log_path: str = ""


@dataclass(frozen=True, slots=True)
class Exited:
    host: str
    rank: int
    launch_id: str
    exit_code: int | None
    signal: int | None
    reason: str = ""  # "", a cancel's reason, "launch_failed", "lost"


@dataclass(frozen=True, slots=True)
class NodeLost:
    """The host has been silent past node_timeout_s: what ran there is gone."""

    host: str
    why: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: time limits, and COMPLETING jobs a race left with every node exited."""


Event = (
    Cancel
    | Update
    | Hold
    | Release
    | Requeue
    | Start
    | LaunchRefused
    | NotRunning
    | Started
    | Exited
    | NodeLost
    | Tick
)


# --- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendLaunch:
    part: Part


@dataclass(frozen=True, slots=True)
class SendCancel:
    host: str
    grace_s: float | None  # None: the daemon's cancel_grace_s
    reason: str
    # The job's warning signal, sent to its workers `signal_lead_s` before SIGTERM (a
    # preemption or requeue gives the job its checkpoint time first).
    signal: int | None = None
    signal_lead_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SendSignal:
    """The job's warning signal to its workers on `host` (its time limit is near)."""

    host: str
    signal: int


@dataclass(frozen=True, slots=True)
class DropLaunches:
    """Stop resending this job's unacknowledged launches."""


@dataclass(frozen=True, slots=True)
class AckExit:
    host: str
    rank: int
    launch_id: str


@dataclass(frozen=True, slots=True)
class AvoidPort:
    """Keep the scheduler off a master port for a while: something else listens there."""

    addr: str  # the master's address: agents that share one share its ports
    port: int


@dataclass(frozen=True, slots=True)
class DrainNode:
    """Take the host out of scheduling: its health check failed."""

    host: str
    reason: str


@dataclass(frozen=True, slots=True)
class WakeScheduler:
    pass


Effect = (
    SendLaunch
    | SendCancel
    | SendSignal
    | DropLaunches
    | AckExit
    | AvoidPort
    | DrainNode
    | WakeScheduler
)


class Refused(Exception):
    """A user's action that does not apply to the job as it is (the API's 409)."""


class NotAllowed(Refused):
    """A user's action that only an admin may take (the API's 403)."""


@dataclass(slots=True)
class Outcome:
    job: Job
    effects: list[Effect] = field(default_factory=list)
    # (new state, why) for each state change, in order: the job's event history
    history: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.history)


# --- the function ------------------------------------------------------------------------------


def apply(job: Job, ev: Event, now: float) -> Outcome:
    out = Outcome(job)
    match ev:
        case Cancel():
            _cancel(out, ev, now)
        case Update():
            _update(out, ev)
        case Hold():
            if job.state != S.HELD:
                if job.state not in (S.PENDING, S.REQUEUED):
                    raise Refused(f"it is {job.state}; only a pending job can be held")
                _move(out, S.HELD, now, f"held by {ev.by}")
        case Release():
            if job.state != S.HELD:
                raise Refused(f"it is {job.state}, not held")
            _move(out, S.PENDING, now, f"released by {ev.by}")
            out.effects.append(WakeScheduler())
        case Requeue():
            if job.state in (S.STARTING, S.RUNNING):
                _stop(out, S.REQUEUED, ev.why, now, ev.grace_s, warn=True)
            elif not ev.only_if_running:
                raise Refused(f"it is {job.state}; only a running job can be requeued")
        case Start():
            if job.state not in (S.PENDING, S.REQUEUED):
                raise Refused(f"it is {job.state}, not waiting to start")
            hosts = ", ".join(p.host for p in ev.parts)
            _move(
                out,
                S.STARTING,
                now,
                f"allocated {hosts}",
                start_ts=now,
                master_addr=ev.master_addr,
                master_port=ev.master_port,
                reason="",
                ending="",
                exit_code=None,
                signal=None,
                signal_ts=None,
                parts=ev.parts,
            )
            out.effects.extend(SendLaunch(p) for p in ev.parts)
        case LaunchRefused():
            _launch_refused(out, ev, now)
        case NotRunning():
            _not_running(out, ev, now)
        case Started():
            _started(out, ev, now)
        case Exited():
            _exited(out, ev, now)
        case NodeLost():
            if _close_parts(out, lambda p: p.host == ev.host and p.live, ev.why, now):
                detail = f"{ev.why}: {ev.host}"
                if out.job.state == S.COMPLETING:
                    _maybe_finish(out, now)
                else:
                    _node_failed(out, detail, now)
        case Tick():
            j = out.job
            if j.state == S.COMPLETING:
                _maybe_finish(out, now)
            elif (
                j.state in (S.STARTING, S.RUNNING)
                and j.start_ts is not None
                and now > j.start_ts + j.time_limit_s
            ):
                why = f"time limit {format_duration(j.time_limit_s)} reached"
                _stop(out, S.TIMEOUT, why, now, reason=why)
            elif _warning_due(j, now):
                _warn(out, now)
    return out


def due(job: Job, now: float) -> bool:
    """Does time alone move this job now (a Tick would change it)?"""
    if job.state == S.COMPLETING:
        return True
    if job.state not in (S.STARTING, S.RUNNING) or job.start_ts is None:
        return False
    return now > job.start_ts + job.time_limit_s or _warning_due(job, now)


def _warning_due(job: Job, now: float) -> bool:
    """A running job that asked for a warning signal and is within its lead of the limit."""
    if job.state != S.RUNNING or job.signal_ts is not None or job.start_ts is None:
        return False
    warning = warning_signal(job.spec)
    return warning is not None and now >= job.start_ts + job.time_limit_s - warning[1]


def _warn(out: Outcome, now: float) -> None:
    """The warning signal to every node's workers, once per run (journaled in signal_ts)."""
    warning = warning_signal(out.job.spec)
    if warning is None:
        return
    sig, lead = warning
    out.job = dataclasses.replace(out.job, signal_ts=now)
    name = _signal.Signals(sig).name
    out.history.append((out.job.state, f"{name} sent to the workers: {lead} s to the time limit"))
    hosts = dict.fromkeys(p.host for p in out.job.parts if p.state == "running")
    out.effects.extend(SendSignal(h, sig) for h in hosts)


def _node_failed(out: Outcome, detail: str, now: float) -> None:
    """A node of a running job is gone: back to the queue if it asked for that and has
    restarts left, else NODE_FAIL."""
    job = out.job
    left = max_restarts(job.spec) - job.restart_count
    if left > 0:
        why = f"{detail}; requeued (restart {job.restart_count + 1} of {max_restarts(job.spec)})"
        _stop(out, S.REQUEUED, why, now)
    else:
        if max_restarts(job.spec):
            detail += f" (after {job.restart_count} restarts, the most it asked for)"
        _stop(out, S.NODE_FAIL, detail, now, reason=detail)


def _move(out: Outcome, new: str, now: float, why: str, **fields: Any) -> None:
    job = out.job
    check_transition(job.id, job.state, new)
    if new in TERMINAL:
        fields.setdefault("end_ts", now)
    out.job = dataclasses.replace(job, state=new, **fields)
    out.history.append((new, why))


def _cancel(out: Outcome, ev: Cancel, now: float) -> None:
    job = out.job
    if job.state in TERMINAL:
        raise Refused(f"it has already ended ({job.state})")
    if job.state == S.COMPLETING and job.ending == S.CANCELLED:
        return
    why = f"cancelled by {ev.by}"
    if job.state in QUEUED:
        _move(out, S.CANCELLED, now, why, reason=why)
        out.effects.append(WakeScheduler())
    else:
        _stop(out, S.CANCELLED, why, now, ev.grace_s, reason=why)


def _update(out: Outcome, ev: Update) -> None:
    job = out.job
    if job.state in TERMINAL:
        raise Refused(f"it has already ended ({job.state})")
    changes: dict[str, Any] = {}
    said: list[str] = []
    if ev.time_limit_s is not None and ev.time_limit_s != job.time_limit_s:
        if ev.time_limit_s > job.time_limit_s and not ev.admin:
            raise NotAllowed(
                f"only an admin may raise a time limit ({format_duration(job.time_limit_s)} to "
                f"{format_duration(ev.time_limit_s)}); you may lower it"
            )
        changes["time_limit_s"] = ev.time_limit_s
        said.append(
            f"time_limit {format_duration(job.time_limit_s)} -> {format_duration(ev.time_limit_s)}"
        )
    waits = job.state in QUEUED
    if ev.nice is not None and ev.nice != job.nice:
        if not waits:
            raise Refused(f"it is {job.state}; only a waiting job's nice can change")
        if ev.nice < job.nice and not ev.admin:
            raise NotAllowed(
                f"only an admin may lower nice ({job.nice} to {ev.nice}: a higher priority);"
                " you may raise it"
            )
        changes["nice"] = ev.nice
        said.append(f"nice {job.nice} -> {ev.nice}")
    if ev.qos is not None and ev.qos != job.qos:
        if not waits:
            raise Refused(f"it is {job.state}; only a waiting job's QOS can change")
        prio = dict(ev.qos_priorities)
        old, new = prio.get(job.qos, 0), prio.get(ev.qos, 0)
        if new > old and not ev.admin:
            raise NotAllowed(
                f"only an admin may move a job to a QOS of higher priority ({job.qos} {old}, "
                f"{ev.qos} {new})"
            )
        changes["qos"] = ev.qos
        said.append(f"qos {job.qos} -> {ev.qos}")
    if not changes:
        return
    out.job = dataclasses.replace(job, **changes)
    out.history.append((job.state, f"updated by {ev.by}: " + ", ".join(said)))
    out.effects.append(WakeScheduler())


def _stop(
    out: Outcome,
    final: str,
    why: str,
    now: float,
    grace_s: float | None = None,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
    signal: int | None = None,
    warn: bool = False,
) -> None:
    """An active job to COMPLETING: every node still running is told to stop, and the job
    takes `final` once all have exited (its GPUs are held until then). `warn`: a running
    job that asked for a warning signal gets it, and its lead time, before SIGTERM."""
    job = out.job
    warning = warning_signal(job.spec) if warn and job.state == S.RUNNING else None
    if job.state == S.COMPLETING:
        if job.ending == final:
            return
        # A failure already on its way out stays a failure.
        if job.ending in (S.FAILED, S.NODE_FAIL, S.TIMEOUT) and final in (
            S.CANCELLED,
            S.REQUEUED,
        ):
            return
        out.job = dataclasses.replace(job, ending=final, reason=reason or job.reason)
        out.history.append((S.COMPLETING, why))
    else:
        fields: dict[str, Any] = {"ending": final}
        if reason is not None:
            fields["reason"] = reason
        if exit_code is not None or signal is not None:
            fields.update(exit_code=exit_code, signal=signal)
        _move(out, S.COMPLETING, now, why, **fields)
    out.effects.append(DropLaunches())
    hosts = dict.fromkeys(p.host for p in out.job.parts if p.live)
    if warning is not None:
        out.job = dataclasses.replace(out.job, signal_ts=now)
        out.effects.extend(
            SendCancel(h, grace_s, final.lower(), warning[0], warning[1]) for h in hosts
        )
    else:
        out.effects.extend(SendCancel(h, grace_s, final.lower()) for h in hosts)
    _maybe_finish(out, now)


def _maybe_finish(out: Outcome, now: float) -> None:
    """When every node has exited, the job takes its final state and frees its GPUs."""
    job = out.job
    if job.state not in ACTIVE or not job.parts or any(p.live for p in job.parts):
        return
    if job.ending:
        final = job.ending
    elif all(p.exit_code == 0 and p.signal is None for p in job.parts):
        final = S.COMPLETED
    else:
        final = S.FAILED
    if final == S.REQUEUED:
        # Back in the queue with its age kept: a fresh start, new nodes, port and commands.
        # A run that began counts as a restart (its next run sees DCSCHED_RESTART_COUNT),
        # and its time, from allocation until its GPUs came free, as attained service.
        began = any(p.started_ts is not None for p in job.parts)
        ran = now - job.start_ts if began and job.start_ts is not None else 0.0
        _move(
            out,
            S.REQUEUED,
            now,
            "all nodes exited; back in the queue",
            ending="",
            reason="",
            exit_code=None,
            signal=None,
            master_addr=None,
            master_port=None,
            start_ts=None,
            signal_ts=None,
            restart_count=job.restart_count + int(began),
            attained_s=job.attained_s + max(0.0, ran),
            parts=(),
        )
    else:
        fields: dict[str, Any] = {}
        if job.exit_code is None and job.signal is None:
            bad = next((p for p in job.parts if p.exit_code != 0), job.parts[0])
            fields = {"exit_code": bad.exit_code, "signal": bad.signal}
        if final == S.FAILED and not job.reason:
            bad_part = next((p for p in job.parts if p.reason), None)
            if bad_part is not None:
                fields["reason"] = f"node {bad_part.rank} ({bad_part.host}): {bad_part.reason}"
        _move(out, final, now, "all nodes exited", **fields)
    out.effects.append(WakeScheduler())


def _replace_parts(out: Outcome, parts: list[Part]) -> None:
    out.job = dataclasses.replace(out.job, parts=tuple(parts))


def _close_parts(out: Outcome, which: Any, why: str, now: float) -> bool:
    """Marks the parts `which` selects as exited without an exit status; True if any."""
    parts = list(out.job.parts)
    hit = False
    for i, p in enumerate(parts):
        if which(p):
            parts[i] = dataclasses.replace(p, state="exited", reason=why, exited_ts=now)
            hit = True
    if hit:
        _replace_parts(out, parts)
    return hit


def _launch_refused(out: Outcome, ev: LaunchRefused, now: float) -> None:
    job = out.job
    if not _close_parts(
        out,
        lambda p: p.host == ev.host and p.launch_id == ev.launch_id and p.live,
        f"launch refused: {ev.error}",
        now,
    ):
        return
    if ev.code == UNHEALTHY:
        out.effects.append(DrainNode(ev.host, f"health check failed: {ev.error}"))
    if job.state not in (S.STARTING, S.RUNNING):
        _maybe_finish(out, now)
        return
    if ev.code == UNHEALTHY:
        _stop(out, S.REQUEUED, f"{ev.host} failed its health check; back in the queue", now)
    elif ev.code == RETRY_PORT and job.master_port is not None:
        out.effects.append(AvoidPort(job.master_addr or ev.host, job.master_port))
        why = f"master port {job.master_port} is in use on {ev.host}; retrying with another"
        _stop(out, S.REQUEUED, why, now)
    else:
        why = f"launch refused on {ev.host}: {ev.error}"
        _stop(out, S.FAILED, why, now, reason=why)


def _not_running(out: Outcome, ev: NotRunning, now: float) -> None:
    # A launching part is closed only once its launch has been dropped (COMPLETING): before
    # that the launch is still being sent, and its own answer settles the part.
    never = out.job.state == S.COMPLETING and _close_parts(
        out,
        lambda p: p.host == ev.host and p.state == "launching",
        "never started",
        now,
    )
    lost = _close_parts(out, lambda p: p.host == ev.host and p.state == "running", ev.why, now)
    if lost and out.job.state in (S.STARTING, S.RUNNING):
        _node_failed(out, f"{ev.why}: {ev.host}", now)
    elif never or lost:
        _maybe_finish(out, now)


def _part_of(job: Job, rank: int, launch_id: str) -> int | None:
    # An event names the Launch that began its run; one from an earlier run of a requeued
    # job matches no part. An event without a launch id matches any run.
    for i, p in enumerate(job.parts):
        if p.rank == rank and (not launch_id or not p.launch_id or p.launch_id == launch_id):
            return i
    return None


def _started(out: Outcome, ev: Started, now: float) -> None:
    job = out.job
    i = _part_of(job, ev.rank, ev.launch_id)
    if i is None or job.parts[i].state != "launching" or job.parts[i].host != ev.host:
        return
    parts = list(job.parts)
    parts[i] = dataclasses.replace(
        parts[i], state="running", pid=ev.pid, log_path=ev.log_path, started_ts=now
    )
    _replace_parts(out, parts)
    if job.state == S.STARTING and all(p.state == "running" for p in parts):
        _move(out, S.RUNNING, now, "torchrun started on every node")


def _exited(out: Outcome, ev: Exited, now: float) -> None:
    # Acknowledged whether or not it changes anything: the agent may forget it.
    out.effects.append(AckExit(ev.host, ev.rank, ev.launch_id))
    job = out.job
    i = _part_of(job, ev.rank, ev.launch_id)
    if i is None or not job.parts[i].live or job.parts[i].host != ev.host:
        _maybe_finish(out, now)
        return
    parts = list(job.parts)
    reason = ev.reason or ("exit" if ev.signal is None else "signal")
    parts[i] = dataclasses.replace(
        parts[i],
        state="exited",
        exit_code=ev.exit_code,
        signal=ev.signal,
        reason=reason,
        exited_ts=now,
    )
    _replace_parts(out, parts)
    failed = (
        ev.exit_code not in (0, None)
        or ev.signal is not None
        or ev.reason in ("lost", "launch_failed")
    )
    if failed and job.state in (S.STARTING, S.RUNNING):
        if ev.reason == "launch_failed":
            why = f"launch refused on {ev.host}; see its agent's log"
        else:
            what = f"signal {ev.signal}" if ev.signal is not None else f"exit code {ev.exit_code}"
            if ev.reason == "lost":
                what = "its process was lost"
            why = f"node {ev.rank} ({ev.host}) ended with {what}"
        _stop(out, S.FAILED, why, now, reason=why, exit_code=ev.exit_code, signal=ev.signal)
    else:
        _maybe_finish(out, now)


# --- hosts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostCheck:
    """What an agent's status means for the jobs: whom to ask about a job it no longer lists
    (its exit may still be on its way), and which of its processes to stop (orphans)."""

    query: tuple[int, ...]
    orphans: tuple[str, ...]


def reconcile_host(host: str, jobs: list[Job], reported: list[str]) -> HostCheck:
    """`jobs`: this daemon's jobs with a live part on `host`; `reported`: the job ids the
    agent says it runs."""
    running = set(reported)
    ours = {str(j.id) for j in jobs}
    query = tuple(
        j.id
        for j in jobs
        if str(j.id) not in running
        and any(p.host == host and p.state == "running" for p in j.parts)
    )
    orphans = tuple(sorted(running - ours))
    return HostCheck(query, orphans)
