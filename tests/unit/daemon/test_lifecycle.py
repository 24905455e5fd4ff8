"""The pure job lifecycle (`dcsched.daemon.lifecycle`): every race is a row in a table.

A row is a job as it stands (state and node parts), the events that reach it in order, and
what must come of them: the final state, each part's state, every effect the events asked
for (named by type, and by host where one is named) and fragments of the job's reason.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcsched.daemon import lifecycle as lc
from dcsched.daemon.lifecycle import (
    Cancel,
    Exited,
    Hold,
    Job,
    LaunchRefused,
    NodeLost,
    NotRunning,
    Part,
    Release,
    Requeue,
    Start,
    Started,
    Tick,
)
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL, JobState
from dcsched.protocol.jobspec import max_restarts

S = JobState
HOSTS = ("a", "b")
T0 = 1_000_000.0  # the job's start
NOW = T0 + 10.0  # the first event of a row; each next one a second later
SUBMIT = T0 - 100.0
PORT = 29500
LIMIT = 3600
SILENT = "node silent for 90 s"
VANISHED = "vanished from {} (its agent has no record of it)"
NOT_HERE = "vanished from {0} (job 7 does not run on {0})"  # a cancel acked with an error


# --- builders ------------------------------------------------------------------------------------


def part(rank: int, state: str = "running", **kw: Any) -> Part:
    fields: dict[str, Any] = {
        "rank": rank,
        "host": HOSTS[rank],
        "gpus": (0, 1, 2, 3),
        "launch_id": f"L{rank}",
        "state": state,
    }
    if state != "launching":
        fields.update(pid=100 + rank, started_ts=T0 + 1)
    if state == "exited":
        fields.update(exit_code=0, reason="exit", exited_ts=T0 + 5)
    fields.update(kw)
    return Part(**fields)


def job(state: str, parts: str | Sequence[Part] = "", **kw: Any) -> Job:
    """`parts`: the parts' states by rank ("running launching"), or the parts themselves."""
    ps = (
        tuple(part(r, s) for r, s in enumerate(parts.split()))
        if isinstance(parts, str)
        else tuple(parts)
    )
    fields: dict[str, Any] = {
        "id": 7,
        "name": "train",
        "user": "ann",
        "uid": 1000,
        "account": "ml",
        "qos": "normal",
        "nice": 0,
        "state": state,
        "spec": {},
        "nodes": max(len(ps), 1),
        "gpus_per_node": 4,
        "gpu_type": None,
        "time_limit_s": LIMIT,
        "submit_ts": SUBMIT,
        "parts": ps,
    }
    if ps:
        fields.update(start_ts=T0, master_addr="a", master_port=PORT)
    if state in TERMINAL:
        fields.update(end_ts=T0 + 6)
    fields.update(kw)
    return Job(**fields)


def ex(
    rank: int,
    code: int | None = 0,
    sig: int | None = None,
    reason: str = "",
    *,
    launch: str | None = None,
    host: str | None = None,
) -> Exited:
    return Exited(
        host or HOSTS[rank], rank, f"L{rank}" if launch is None else launch, code, sig, reason
    )


def up(rank: int, *, launch: str | None = None, host: str | None = None) -> Started:
    return Started(host or HOSTS[rank], rank, f"L{rank}" if launch is None else launch, 100 + rank)


def gone(host: str) -> NotRunning:
    """The host acked a cancel with "does not run here"."""
    return NotRunning(host, NOT_HERE.format(host))


CANCEL = Cancel("bob")
PREEMPT = Requeue("preempted by a higher QOS", 30.0, only_if_running=True)
REQUEUE = Requeue("requeued by bob")


def name(eff: lc.Effect) -> str:
    match eff:
        case lc.SendLaunch():
            return f"SendLaunch:{eff.part.host}"
        case lc.SendCancel():
            warn = f":sig{eff.signal}@{eff.signal_lead_s:g}" if eff.signal is not None else ""
            return f"SendCancel:{eff.host}{warn}"
        case lc.SendSignal():
            return f"SendSignal:{eff.host}:{eff.signal}"
        case lc.AckExit():
            return f"AckExit:{eff.host}:{eff.launch_id}"
        case lc.AvoidPort():
            return f"AvoidPort:{eff.addr}:{eff.port}"
        case lc.DrainNode():
            return f"DrainNode:{eff.host}"
    return type(eff).__name__


@dataclass
class Played:
    job: Job
    effects: list[lc.Effect]
    history: list[tuple[str, str]]


def play(j: Job, events: Sequence[lc.Event], start: float = NOW) -> Played:
    effects: list[lc.Effect] = []
    history: list[tuple[str, str]] = []
    for i, ev in enumerate(events):
        out = lc.apply(j, ev, start + i)
        j = out.job
        effects += out.effects
        history += out.history
    return Played(j, effects, history)


@dataclass(frozen=True)
class Row:
    job: Job
    events: tuple[lc.Event, ...]
    state: str
    parts: str  # each part's state by rank, "" for none
    effects: tuple[str, ...] = ()  # every effect of every event, any order
    reason: tuple[str, ...] = ()  # fragments of job.reason
    fields: tuple[tuple[str, Any], ...] = ()  # more of the final job's fields
    part_reasons: tuple[str, ...] | None = None


def row(
    id: str,
    start: Job,
    events: Sequence[lc.Event],
    state: str,
    parts: str = "",
    effects: Sequence[str] = (),
    says: Sequence[str] = (),
    part_reasons: Sequence[str] | None = None,
    **fields: Any,
) -> Any:
    r = Row(
        start,
        tuple(events),
        state,
        parts,
        tuple(effects),
        tuple(says),
        tuple(fields.items()),
        None if part_reasons is None else tuple(part_reasons),
    )
    return pytest.param(r, id=id)


def check(r: Row) -> Played:
    p = play(r.job, r.events)
    assert p.job.state == r.state, p.history
    assert " ".join(x.state for x in p.job.parts) == r.parts
    assert Counter(name(e) for e in p.effects) == Counter(r.effects)
    for frag in r.reason:
        assert frag in p.job.reason
    for key, want in r.fields:
        assert getattr(p.job, key) == want, key
    if r.part_reasons is not None:
        assert tuple(x.reason for x in p.job.parts) == r.part_reasons
    # the history's last step is the state the job is in
    if p.history or r.state != r.job.state:
        assert p.history[-1][0] == r.state
    return p


WAKE = "WakeScheduler"
DROP = "DropLaunches"
ACK_A, ACK_B = "AckExit:a:L0", "AckExit:b:L1"
STOP_A, STOP_B = "SendCancel:a", "SendCancel:b"
BOTH = "running running"

RUNNING2 = job(S.RUNNING, BOTH)
LAUNCHING2 = job(S.STARTING, "launching launching")
HALF = job(S.STARTING, "running launching")
FINISHED = job(S.COMPLETED, "exited exited", exit_code=0)


# --- user actions on queued and finished jobs ----------------------------------------------------

USER_ROWS = [
    row(
        "cancel pending",
        job(S.PENDING),
        [CANCEL],
        S.CANCELLED,
        effects=[WAKE],
        says=["cancelled by bob"],
        end_ts=NOW,
    ),
    row(
        "cancel held", job(S.HELD), [CANCEL], S.CANCELLED, effects=[WAKE], says=["cancelled by bob"]
    ),
    row(
        "cancel requeued",
        job(S.REQUEUED),
        [CANCEL],
        S.CANCELLED,
        effects=[WAKE],
        says=["cancelled by bob"],
    ),
    row("hold pending", job(S.PENDING), [Hold("bob")], S.HELD),
    row("hold requeued", job(S.REQUEUED), [Hold("bob")], S.HELD),
    row("hold held again is no change", job(S.HELD), [Hold("bob")], S.HELD),
    row("release held", job(S.HELD), [Release("bob")], S.PENDING, effects=[WAKE]),
    row(
        "hold then release",
        job(S.PENDING),
        [Hold("bob"), Release("bob")],
        S.PENDING,
        effects=[WAKE],
    ),
    row("preempt a finished job", FINISHED, [PREEMPT], S.COMPLETED, "exited exited"),
    row("preempt a pending job", job(S.PENDING), [PREEMPT], S.PENDING),
    row(
        "preempt a job being cancelled",
        job(S.COMPLETING, BOTH, ending=S.CANCELLED),
        [PREEMPT],
        S.COMPLETING,
        BOTH,
        ending=S.CANCELLED,
    ),
    row(
        "second cancel while cancelling",
        job(S.COMPLETING, BOTH, ending=S.CANCELLED),
        [CANCEL],
        S.COMPLETING,
        BOTH,
    ),
]

# --- starts --------------------------------------------------------------------------------------

START = Start((part(0, "launching"), part(1, "launching")), "a", PORT)

START_ROWS = [
    row(
        "start",
        job(S.PENDING),
        [START],
        S.STARTING,
        "launching launching",
        ["SendLaunch:a", "SendLaunch:b"],
        start_ts=NOW,
        master_port=PORT,
        master_addr="a",
    ),
    row(
        "start a requeued job",
        job(S.REQUEUED, reason="was preempted"),
        [START],
        S.STARTING,
        "launching launching",
        ["SendLaunch:a", "SendLaunch:b"],
        reason="",
        submit_ts=SUBMIT,
    ),
    row("started on every node", LAUNCHING2, [up(0), up(1)], S.RUNNING, BOTH),
    row("started on one of two", LAUNCHING2, [up(1)], S.STARTING, "launching running"),
    row("started twice", LAUNCHING2, [up(0), up(0)], S.STARTING, "running launching"),
    row(
        "started from another host",
        LAUNCHING2,
        [up(0, host="b")],
        S.STARTING,
        "launching launching",
    ),
    row(
        "started by an earlier run",
        LAUNCHING2,
        [up(0, launch="old")],
        S.STARTING,
        "launching launching",
    ),
]

# --- exits ---------------------------------------------------------------------------------------

EXIT_ROWS = [
    row(
        "all exit 0",
        RUNNING2,
        [ex(0), ex(1)],
        S.COMPLETED,
        "exited exited",
        [ACK_A, ACK_B, WAKE],
        exit_code=0,
        end_ts=NOW + 1,
    ),
    row("one of two exits 0", RUNNING2, [ex(0)], S.RUNNING, "exited running", [ACK_A]),
    row(
        "one node fails",
        RUNNING2,
        [ex(1, 3)],
        S.COMPLETING,
        "running exited",
        [ACK_B, DROP, STOP_A],
        ["node 1 (b)", "exit code 3"],
        ending=S.FAILED,
        exit_code=3,
    ),
    row(
        "one node fails, then the other exits",
        RUNNING2,
        [ex(1, 3), ex(0, None, 15, "failed")],
        S.FAILED,
        "exited exited",
        [ACK_B, DROP, STOP_A, ACK_A, WAKE],
        ["node 1 (b)", "exit code 3"],
        exit_code=3,
        signal=None,
        end_ts=NOW + 1,
    ),
    row(
        "killed by a signal",
        RUNNING2,
        [ex(0, None, 9)],
        S.COMPLETING,
        "exited running",
        [ACK_A, DROP, STOP_B],
        ["node 0 (a)", "signal 9"],
        signal=9,
    ),
    row(
        "process lost",
        RUNNING2,
        [ex(0, None, None, "lost")],
        S.COMPLETING,
        "exited running",
        [ACK_A, DROP, STOP_B],
        ["node 0 (a)", "its process was lost"],
    ),
    row(
        "exit says launch failed",
        job(S.STARTING, "launching"),
        [ex(0, None, None, "launch_failed")],
        S.FAILED,
        "exited",
        [ACK_A, DROP, WAKE],
        ["launch refused on a"],
    ),
    row("duplicate exit", RUNNING2, [ex(0), ex(0)], S.RUNNING, "exited running", [ACK_A, ACK_A]),
    row(
        "duplicate failed exit",
        RUNNING2,
        [ex(1, 3), ex(1, 3)],
        S.COMPLETING,
        "running exited",
        [ACK_B, DROP, STOP_A, ACK_B],
        ["exit code 3"],
    ),
    row(
        "exit of an earlier run",
        RUNNING2,
        [ex(0, 1, launch="old")],
        S.RUNNING,
        BOTH,
        ["AckExit:a:old"],
    ),
    row(
        "exit from the wrong host",
        RUNNING2,
        [ex(0, 1, host="b")],
        S.RUNNING,
        BOTH,
        ["AckExit:b:L0"],
    ),
    row(
        "exit of a finished job",
        FINISHED,
        [ex(0, 1)],
        S.COMPLETED,
        "exited exited",
        [ACK_A],
        exit_code=0,
    ),
    row("exit of a requeued job", job(S.REQUEUED), [ex(0, None, 15)], S.REQUEUED, "", [ACK_A]),
    row("exit of a cancelled job", job(S.CANCELLED), [ex(1, None, 15)], S.CANCELLED, "", [ACK_B]),
    # an exit that overtakes its start
    row(
        "exit before start",
        job(S.STARTING, "launching"),
        [ex(0), up(0)],
        S.COMPLETED,
        "exited",
        [ACK_A, WAKE],
        part_reasons=["exit"],
    ),
    row(
        "exit before start, two nodes",
        LAUNCHING2,
        [ex(0), up(0), up(1), ex(1)],
        S.COMPLETED,
        "exited exited",
        [ACK_A, ACK_B, WAKE],
    ),
    row(
        "failed exit before start",
        LAUNCHING2,
        [ex(0, 1), up(0)],
        S.COMPLETING,
        "exited launching",
        [ACK_A, DROP, STOP_B],
        ["node 0 (a)", "exit code 1"],
        ending=S.FAILED,
    ),
]

# --- cancels and requeues of active jobs ---------------------------------------------------------

STOP_ROWS = [
    row(
        "cancel during launch",
        LAUNCHING2,
        [CANCEL],
        S.COMPLETING,
        "launching launching",
        [DROP, STOP_A, STOP_B],
        ending=S.CANCELLED,
    ),
    row(
        "cancel during launch, never started",
        LAUNCHING2,
        [CANCEL, gone("a"), gone("b")],
        S.CANCELLED,
        "exited exited",
        [DROP, STOP_A, STOP_B, WAKE],
        part_reasons=["never started", "never started"],
    ),
    row(
        "cancel during launch, one starts anyway",
        LAUNCHING2,
        [CANCEL, up(0), ex(0, None, 15, "cancelled"), gone("b")],
        S.CANCELLED,
        "exited exited",
        [DROP, STOP_A, STOP_B, ACK_A, WAKE],
        signal=15,
    ),
    row(
        "cancel running",
        RUNNING2,
        [CANCEL, ex(0, None, 15, "cancelled"), ex(1, None, 15, "cancelled")],
        S.CANCELLED,
        "exited exited",
        [DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
    ),
    row(
        "cancel running, a node fails while stopping",
        RUNNING2,
        [CANCEL, ex(0, 1), ex(1, None, 15)],
        S.CANCELLED,
        "exited exited",
        [DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
    ),
    row(
        "requeue half started",
        HALF,
        [REQUEUE],
        S.COMPLETING,
        "running launching",
        [DROP, STOP_A, STOP_B],
        ending=S.REQUEUED,
    ),
    row(
        "requeue half started, back in the queue",
        HALF,
        [REQUEUE, ex(0, None, 15, "requeued"), gone("b")],
        S.REQUEUED,
        "",
        [DROP, STOP_A, STOP_B, ACK_A, WAKE],
        master_port=None,
        master_addr=None,
        start_ts=None,
        ending="",
        exit_code=None,
        signal=None,
        submit_ts=SUBMIT,
    ),
    row(
        "preempt running",
        RUNNING2,
        [PREEMPT, ex(0, None, 15), ex(1, None, 15)],
        S.REQUEUED,
        "",
        [DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
    ),
    row(
        "cancel overrides a preemption",
        RUNNING2,
        [PREEMPT, CANCEL, ex(0, None, 15), ex(1, None, 15)],
        S.CANCELLED,
        "exited exited",
        [DROP, STOP_A, STOP_B, DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
    ),
    # a failure already on its way out stays a failure
    row(
        "failed, then cancelled",
        RUNNING2,
        [ex(1, 3), CANCEL],
        S.COMPLETING,
        "running exited",
        [ACK_B, DROP, STOP_A],
        ["exit code 3"],
        ending=S.FAILED,
    ),
    row(
        "failed, then preempted and cancelled, then exits",
        RUNNING2,
        [ex(1, 3), PREEMPT, CANCEL, ex(0, None, 15)],
        S.FAILED,
        "exited exited",
        [ACK_B, DROP, STOP_A, ACK_A, WAKE],
        ["node 1 (b)", "exit code 3"],
        exit_code=3,
    ),
    row(
        "node failed, then cancelled",
        RUNNING2,
        [NodeLost("b", SILENT), CANCEL, ex(0, None, 15)],
        S.NODE_FAIL,
        "exited exited",
        [DROP, STOP_A, ACK_A, WAKE],
        [f"{SILENT}: b"],
    ),
    row(
        "timed out, then cancelled and preempted",
        job(S.RUNNING, BOTH, start_ts=NOW - LIMIT - 1),
        [Tick(), CANCEL, PREEMPT, ex(0, None, 15), ex(1, None, 15)],
        S.TIMEOUT,
        "exited exited",
        [DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
        ["time limit 01:00:00 reached"],
    ),
]

# --- refused launches ----------------------------------------------------------------------------

INVALID = LaunchRefused("a", "L0", "gpu 9 does not exist", "invalid")
PORT_TAKEN = LaunchRefused("a", "L0", "port 29500 is in use", lc.RETRY_PORT)
UNHEALTHY = LaunchRefused("a", "L0", "gpu-check: XID 79 on GPU 1", lc.UNHEALTHY)

REFUSED_ROWS = [
    row(
        "launch invalid",
        job(S.STARTING, "launching"),
        [INVALID],
        S.FAILED,
        "exited",
        [DROP, WAKE],
        ["launch refused on a", "gpu 9 does not exist"],
        part_reasons=["launch refused: gpu 9 does not exist"],
    ),
    row(
        "launch invalid on one of two",
        job(S.STARTING, "launching running"),
        [INVALID],
        S.COMPLETING,
        "exited running",
        [DROP, STOP_B],
        ["gpu 9 does not exist"],
        ending=S.FAILED,
    ),
    row(
        "port in use",
        LAUNCHING2,
        [PORT_TAKEN],
        S.COMPLETING,
        "exited launching",
        [f"AvoidPort:a:{PORT}", DROP, STOP_B],
        ending=S.REQUEUED,
        reason="",
    ),
    row(
        "port in use, back in the queue",
        LAUNCHING2,
        [PORT_TAKEN, gone("b")],
        S.REQUEUED,
        "",
        [f"AvoidPort:a:{PORT}", DROP, STOP_B, WAKE],
        master_port=None,
        reason="",
    ),
    row(
        "port in use, one node",
        job(S.STARTING, "launching"),
        [PORT_TAKEN],
        S.REQUEUED,
        "",
        [f"AvoidPort:a:{PORT}", DROP, WAKE],
    ),
    row(
        "health check failed: back in the queue, the node drained",
        job(S.STARTING, "launching"),
        [UNHEALTHY],
        S.REQUEUED,
        "",
        ["DrainNode:a", DROP, WAKE],
        reason="",
    ),
    row(
        "health check failed on one of two",
        LAUNCHING2,
        [UNHEALTHY],
        S.COMPLETING,
        "exited launching",
        ["DrainNode:a", DROP, STOP_B],
        ending=S.REQUEUED,
    ),
    row(
        "health check failed while cancelling: the node is drained all the same",
        job(S.COMPLETING, "launching launching", ending=S.CANCELLED),
        [UNHEALTHY, gone("b")],
        S.CANCELLED,
        "exited exited",
        ["DrainNode:a", WAKE],
    ),
    row(
        "refusal of an earlier run's launch",
        LAUNCHING2,
        [LaunchRefused("a", "old", "port 29500 is in use", lc.RETRY_PORT)],
        S.STARTING,
        "launching launching",
    ),
    row(
        "refusal while cancelling",
        job(S.COMPLETING, "launching launching", ending=S.CANCELLED),
        [PORT_TAKEN, gone("b")],
        S.CANCELLED,
        "exited exited",
        [WAKE],
    ),
]

# --- lost nodes and vanished runs ----------------------------------------------------------------

LOST_ROWS = [
    row(
        "node lost",
        RUNNING2,
        [NodeLost("b", SILENT)],
        S.COMPLETING,
        "running exited",
        [DROP, STOP_A],
        [f"{SILENT}: b"],
        part_reasons=["", SILENT],
        ending=S.NODE_FAIL,
    ),
    row(
        "node lost, then the other exits",
        RUNNING2,
        [NodeLost("b", SILENT), ex(0, None, 15)],
        S.NODE_FAIL,
        "exited exited",
        [DROP, STOP_A, ACK_A, WAKE],
        [f"{SILENT}: b"],
    ),
    row(
        "node lost with the last live part",
        job(S.RUNNING, [part(0, "exited"), part(1)]),
        [NodeLost("b", SILENT)],
        S.NODE_FAIL,
        "exited exited",
        [DROP, WAKE],
        [f"{SILENT}: b"],
    ),
    row(
        "node lost during launch",
        LAUNCHING2,
        [NodeLost("a", SILENT)],
        S.COMPLETING,
        "exited launching",
        [DROP, STOP_B],
        ending=S.NODE_FAIL,
    ),
    row("node lost that runs none of it", RUNNING2, [NodeLost("c", SILENT)], S.RUNNING, BOTH),
    row(
        "node lost whose part already exited",
        job(S.RUNNING, [part(0), part(1, "exited")]),
        [NodeLost("b", SILENT)],
        S.RUNNING,
        "running exited",
    ),
    row(
        "node lost of a finished job",
        FINISHED,
        [NodeLost("a", SILENT)],
        S.COMPLETED,
        "exited exited",
    ),
    row(
        "node lost while cancelling",
        job(S.COMPLETING, BOTH, ending=S.CANCELLED),
        [NodeLost("a", SILENT), NodeLost("b", SILENT)],
        S.CANCELLED,
        "exited exited",
        [WAKE],
    ),
    row(
        "node lost while failing",
        RUNNING2,
        [ex(1, 3), NodeLost("a", SILENT)],
        S.FAILED,
        "exited exited",
        [ACK_B, DROP, STOP_A, WAKE],
        ["exit code 3"],
        exit_code=3,
    ),
    row(
        "vanished",
        RUNNING2,
        [NotRunning("b", VANISHED.format("b"))],
        S.COMPLETING,
        "running exited",
        [DROP, STOP_A],
        [VANISHED.format("b")],
        ending=S.NODE_FAIL,
    ),
    row(
        "vanished, one node",
        job(S.RUNNING, "running"),
        [NotRunning("a", VANISHED.format("a"))],
        S.NODE_FAIL,
        "exited",
        [DROP, WAKE],
        [VANISHED.format("a")],
        part_reasons=[VANISHED.format("a")],
    ),
    row(
        "vanished while failing",
        RUNNING2,
        [ex(1, 3), NotRunning("a", VANISHED.format("a"))],
        S.FAILED,
        "exited exited",
        [ACK_B, DROP, STOP_A, WAKE],
        ["exit code 3"],
    ),
    row(
        "not running from a host that runs none of it",
        RUNNING2,
        [NotRunning("c", VANISHED.format("c"))],
        S.RUNNING,
        BOTH,
    ),
    # The only NotRunning that can reach a STARTING or RUNNING job's launching part is stale:
    # the answer to a cancel sent before this run began (an earlier run's, or an orphan's). The
    # part's Launch is still being resent (nothing dropped it), so it is not "never started".
    row(
        "stale not running during launch, one node",
        job(S.STARTING, "launching"),
        [gone("a")],
        S.STARTING,
        "launching",
    ),
    row(
        "stale not running during launch, two nodes",
        HALF,
        [gone("b"), up(1)],
        S.RUNNING,
        BOTH,
    ),
]

# --- time ----------------------------------------------------------------------------------------

TICK_ROWS = [
    row(
        "time limit passed",
        job(S.RUNNING, BOTH, start_ts=NOW - LIMIT - 1),
        [Tick()],
        S.COMPLETING,
        BOTH,
        [DROP, STOP_A, STOP_B],
        ["time limit 01:00:00 reached"],
        ending=S.TIMEOUT,
    ),
    row(
        "time limit passed during launch",
        job(S.STARTING, "launching", start_ts=NOW - LIMIT - 1),
        [Tick()],
        S.COMPLETING,
        "launching",
        [DROP, STOP_A],
        ending=S.TIMEOUT,
    ),
    row(
        "time limit passed, then exits",
        job(S.RUNNING, BOTH, start_ts=NOW - LIMIT - 1),
        [Tick(), ex(0, None, 15), ex(1, None, 15)],
        S.TIMEOUT,
        "exited exited",
        [DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
        ["time limit"],
    ),
    row(
        "time limit reached exactly",
        job(S.RUNNING, BOTH, start_ts=NOW - LIMIT),
        [Tick()],
        S.RUNNING,
        BOTH,
    ),
    row("time limit not passed", RUNNING2, [Tick()], S.RUNNING, BOTH),
    row("tick on a pending job", job(S.PENDING), [Tick()], S.PENDING),
    row(
        "tick on a completing job all exited",
        job(S.COMPLETING, "exited exited", ending=S.CANCELLED),
        [Tick()],
        S.CANCELLED,
        "exited exited",
        [WAKE],
        end_ts=NOW,
    ),
    row(
        "tick on a completing job still running",
        job(S.COMPLETING, "exited running", ending=S.CANCELLED, start_ts=NOW - LIMIT - 1),
        [Tick()],
        S.COMPLETING,
        "exited running",
    ),
]

# --- warning signals and requeue (job file `signal`, `requeue`, `max_restarts`) ----------------

USR1 = 10
WARN = {"signal": "USR1@300"}
REQ = {"requeue": True, "max_restarts": 2}
WARNED = job(S.RUNNING, BOTH, spec=WARN)
NEAR = NOW - LIMIT + 300  # the start of a run whose warning is due at NOW
WARN_A, WARN_B = f"SendSignal:a:{USR1}", f"SendSignal:b:{USR1}"
STOP_WARN_A, STOP_WARN_B = f"SendCancel:a:sig{USR1}@300", f"SendCancel:b:sig{USR1}@300"

SIGNAL_ROWS = [
    row(
        "warning due",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NEAR),
        [Tick()],
        S.RUNNING,
        BOTH,
        [WARN_A, WARN_B],
        signal_ts=NOW,
    ),
    row(
        "warning not yet due",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NEAR + 1),
        [Tick()],
        S.RUNNING,
        BOTH,
        signal_ts=None,
    ),
    row(
        "warning sent once",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NEAR),
        [Tick(), Tick(), Tick()],
        S.RUNNING,
        BOTH,
        [WARN_A, WARN_B],
        signal_ts=NOW,
    ),
    row(
        "no warning without a signal in the job file",
        job(S.RUNNING, BOTH, start_ts=NEAR),
        [Tick()],
        S.RUNNING,
        BOTH,
    ),
    row(
        "no warning to a job still starting",
        job(S.STARTING, "running launching", spec=WARN, start_ts=NEAR),
        [Tick()],
        S.STARTING,
        "running launching",
    ),
    row(
        "signal then exit: the job saved and ended on its own",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NEAR),
        [Tick(), ex(0), ex(1)],
        S.COMPLETED,
        "exited exited",
        [WARN_A, WARN_B, ACK_A, ACK_B, WAKE],
    ),
    row(
        "signal, then the time limit passes",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NOW - LIMIT + 0.5),
        [Tick(), Tick()],  # at NOW the warning, at NOW + 1 past the limit
        S.COMPLETING,
        BOTH,
        [WARN_A, WARN_B, DROP, STOP_A, STOP_B],
        ["time limit"],
        ending=S.TIMEOUT,
    ),
    row(
        "preempt sends the warning first",
        WARNED,
        [PREEMPT],
        S.COMPLETING,
        BOTH,
        [DROP, STOP_WARN_A, STOP_WARN_B],
        ending=S.REQUEUED,
        signal_ts=NOW,
    ),
    row(
        "preempt after the time-limit warning warns again",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NEAR),
        [Tick(), PREEMPT],
        S.COMPLETING,
        BOTH,
        [WARN_A, WARN_B, DROP, STOP_WARN_A, STOP_WARN_B],
        ending=S.REQUEUED,
    ),
    row(
        "preempt of a job still starting: no warning",
        job(S.STARTING, "running launching", spec=WARN),
        [PREEMPT],
        S.COMPLETING,
        "running launching",
        [DROP, STOP_A, STOP_B],
        ending=S.REQUEUED,
    ),
    row(
        "preempt, the job checkpoints and exits 0: requeued, one restart",
        WARNED,
        [PREEMPT, ex(0), ex(1)],
        S.REQUEUED,
        "",
        [DROP, STOP_WARN_A, STOP_WARN_B, ACK_A, ACK_B, WAKE],
        restart_count=1,
        signal_ts=None,
        start_ts=None,
        submit_ts=SUBMIT,
        attained_s=NOW + 2 - T0,  # its run, allocation to the last exit
    ),
    row(
        "preempt of a job that ran before: its runs add up",
        dataclasses.replace(WARNED, restart_count=1, attained_s=100.0),
        [PREEMPT, ex(0), ex(1)],
        S.REQUEUED,
        "",
        [DROP, STOP_WARN_A, STOP_WARN_B, ACK_A, ACK_B, WAKE],
        restart_count=2,
        attained_s=100.0 + NOW + 2 - T0,
    ),
    row(
        "while it is being preempted, the run is not yet counted",
        dataclasses.replace(WARNED, attained_s=100.0),
        [PREEMPT, ex(0)],
        S.COMPLETING,
        "exited running",
        [DROP, STOP_WARN_A, STOP_WARN_B, ACK_A],
        attained_s=100.0,
    ),
    row(
        "preempt of a non-requeue job: back in the queue all the same",
        RUNNING2,
        [PREEMPT, ex(0, None, 15), ex(1, None, 15)],
        S.REQUEUED,
        "",
        [DROP, STOP_A, STOP_B, ACK_A, ACK_B, WAKE],
        restart_count=1,
        submit_ts=SUBMIT,
    ),
    row(
        "user requeue warns too",
        WARNED,
        [REQUEUE],
        S.COMPLETING,
        BOTH,
        [DROP, STOP_WARN_A, STOP_WARN_B],
        ending=S.REQUEUED,
    ),
    row(
        "cancel does not warn",
        WARNED,
        [CANCEL],
        S.COMPLETING,
        BOTH,
        [DROP, STOP_A, STOP_B],
        ending=S.CANCELLED,
    ),
    row(
        "requeue of a run that never started is no restart",
        job(S.STARTING, "launching launching", spec=WARN, restart_count=1),
        [REQUEUE, gone("a"), gone("b")],
        S.REQUEUED,
        "",
        [DROP, STOP_A, STOP_B, WAKE],
        restart_count=1,
        attained_s=0.0,
    ),
    row(
        "node lost, requeue: back in the queue",
        job(S.RUNNING, BOTH, spec=REQ),
        [NodeLost("a", SILENT), ex(1, None, 15)],
        S.REQUEUED,
        "",
        [DROP, STOP_B, ACK_B, WAKE],
        restart_count=1,
        reason="",
        submit_ts=SUBMIT,
        attained_s=NOW + 1 - T0,
    ),
    row(
        "node lost, requeue, one node",
        job(S.RUNNING, "running", spec=REQ, restart_count=1),
        [NodeLost("a", SILENT)],
        S.REQUEUED,
        "",
        [DROP, WAKE],
        restart_count=2,
    ),
    row(
        "node lost, restarts used up: NODE_FAIL",
        job(S.RUNNING, "running", spec=REQ, restart_count=2, attained_s=50.0),
        [NodeLost("a", SILENT)],
        S.NODE_FAIL,
        "exited",
        [DROP, WAKE],
        [SILENT, "after 2 restarts"],
        restart_count=2,
        attained_s=50.0,  # only runs that went back to the queue count
    ),
    row(
        "node lost, requeue with max_restarts 0: NODE_FAIL",
        job(S.RUNNING, "running", spec={"requeue": True, "max_restarts": 0}),
        [NodeLost("a", SILENT)],
        S.NODE_FAIL,
        "exited",
        [DROP, WAKE],
        [SILENT],
    ),
    row(
        "node lost without requeue: NODE_FAIL",
        job(S.RUNNING, "running", spec=WARN),
        [NodeLost("a", SILENT)],
        S.NODE_FAIL,
        "exited",
        [DROP, WAKE],
        [SILENT],
    ),
    row(
        "requeue without max_restarts: the default",
        job(S.RUNNING, "running", spec={"requeue": True}, restart_count=2),
        [NodeLost("a", SILENT)],
        S.REQUEUED,
        "",
        [DROP, WAKE],
        restart_count=3,
    ),
    row(
        "node lost during the signal window, requeue",
        job(S.RUNNING, BOTH, spec={**WARN, **REQ}, start_ts=NEAR),
        [Tick(), NodeLost("a", SILENT), NodeLost("b", SILENT)],
        S.REQUEUED,
        "",
        [WARN_A, WARN_B, DROP, STOP_B, WAKE],
        restart_count=1,
        signal_ts=None,
    ),
    row(
        "node lost during the signal window, no requeue",
        job(S.RUNNING, BOTH, spec=WARN, start_ts=NEAR),
        [Tick(), NodeLost("a", SILENT), ex(1, 0)],
        S.NODE_FAIL,
        "exited exited",
        [WARN_A, WARN_B, DROP, STOP_B, ACK_B, WAKE],
        [SILENT],
    ),
    row(
        "node lost while being preempted",
        WARNED,
        [PREEMPT, NodeLost("a", SILENT), ex(1, 0)],
        S.REQUEUED,
        "",
        [DROP, STOP_WARN_A, STOP_WARN_B, ACK_B, WAKE],
        restart_count=1,
    ),
    row(
        "vanished, requeue",
        job(S.RUNNING, "running", spec=REQ),
        [NotRunning("a", VANISHED.format("a"))],
        S.REQUEUED,
        "",
        [DROP, WAKE],
        restart_count=1,
    ),
    row(
        "a requeued job starts again with its restart count",
        job(S.REQUEUED, spec=REQ, restart_count=1, attained_s=50.0),
        [START, up(0), up(1)],
        S.RUNNING,
        BOTH,
        [f"SendLaunch:{h}" for h in HOSTS],
        restart_count=1,
        signal_ts=None,
        attained_s=50.0,
    ),
    row(
        "a requeued job that completes keeps its earlier runs' time",
        job(S.RUNNING, BOTH, spec=REQ, restart_count=1, attained_s=50.0),
        [ex(0), ex(1)],
        S.COMPLETED,
        "exited exited",
        [ACK_A, ACK_B, WAKE],
        attained_s=50.0,
    ),
]

# --- dcctl update: owners lower, admins may raise ----------------------------------------------


def upd(admin: bool = False, **kw: Any) -> lc.Update:
    return lc.Update("bob", admin, **kw)


UPDATE_ROWS = [
    row(
        "owner lowers the limit of a pending job",
        job(S.PENDING),
        [upd(time_limit_s=600)],
        S.PENDING,
        effects=[WAKE],
        time_limit_s=600,
    ),
    row(
        "owner lowers the limit of a running job; the next tick past it times it out",
        RUNNING2,
        [upd(time_limit_s=5), Tick()],
        S.COMPLETING,
        BOTH,
        effects=[WAKE, DROP, STOP_A, STOP_B],
        says=["time limit 00:00:05 reached"],
        time_limit_s=5,
    ),
    row(
        "admin raises the limit of a running job",
        RUNNING2,
        [upd(True, time_limit_s=7200), Tick()],
        S.RUNNING,
        BOTH,
        effects=[WAKE],
        time_limit_s=7200,
    ),
    row(
        "owner raises nice and picks a QOS of lower priority",
        job(S.HELD),
        [upd(nice=50, qos="low", qos_priorities=(("normal", 10), ("low", 0)))],
        S.HELD,
        effects=[WAKE],
        nice=50,
        qos="low",
    ),
    row(
        "admin lowers nice and picks a QOS of higher priority",
        job(S.PENDING, nice=50),
        [upd(True, nice=-10, qos="high", qos_priorities=(("high", 100),))],
        S.PENDING,
        effects=[WAKE],
        nice=-10,
        qos="high",
    ),
    row(
        "an update that changes nothing is no change",
        job(S.PENDING),
        [upd(time_limit_s=LIMIT, nice=0, qos="normal")],
        S.PENDING,
    ),
]

ROWS = (
    USER_ROWS
    + START_ROWS
    + EXIT_ROWS
    + STOP_ROWS
    + REFUSED_ROWS
    + LOST_ROWS
    + TICK_ROWS
    + SIGNAL_ROWS
    + UPDATE_ROWS
)


@pytest.mark.parametrize("r", ROWS)
def test_lifecycle(r: Row) -> None:
    check(r)


def test_rows_have_unique_ids() -> None:
    ids = [p.id for p in ROWS]
    assert len(ids) == len(set(ids))


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "event", "fragment"),
    [
        *[
            pytest.param(job(s, "exited"), CANCEL, f"already ended ({s})", id=f"cancel {s}")
            for s in sorted(TERMINAL)
        ],
        pytest.param(RUNNING2, Hold("bob"), "only a pending job can be held", id="hold running"),
        pytest.param(LAUNCHING2, Hold("bob"), "it is STARTING", id="hold starting"),
        pytest.param(FINISHED, Hold("bob"), "it is COMPLETED", id="hold finished"),
        pytest.param(job(S.PENDING), Release("bob"), "not held", id="release pending"),
        pytest.param(RUNNING2, Release("bob"), "it is RUNNING", id="release running"),
        pytest.param(
            job(S.PENDING), REQUEUE, "only a running job can be requeued", id="requeue pending"
        ),
        pytest.param(job(S.HELD), REQUEUE, "it is HELD", id="requeue held"),
        pytest.param(job(S.REQUEUED), REQUEUE, "it is REQUEUED", id="requeue requeued"),
        pytest.param(FINISHED, REQUEUE, "it is COMPLETED", id="requeue finished"),
        pytest.param(
            job(S.COMPLETING, BOTH, ending=S.FAILED),
            REQUEUE,
            "it is COMPLETING",
            id="requeue completing",
        ),
        pytest.param(RUNNING2, START, "not waiting to start", id="start running"),
        pytest.param(job(S.HELD), START, "it is HELD", id="start held"),
        pytest.param(FINISHED, upd(True, nice=5), "already ended", id="update finished"),
        pytest.param(
            RUNNING2, upd(True, nice=5), "only a waiting job's nice", id="nice of running"
        ),
        pytest.param(RUNNING2, upd(True, qos="x"), "only a waiting job's QOS", id="qos running"),
    ],
)
def test_refused(start: Job, event: lc.Event, fragment: str) -> None:
    with pytest.raises(lc.Refused, match=re.escape(fragment)):
        lc.apply(start, event, NOW)


@pytest.mark.parametrize(
    ("start", "event", "fragment"),
    [
        pytest.param(
            RUNNING2, upd(time_limit_s=LIMIT + 1), "only an admin may raise", id="raise limit"
        ),
        pytest.param(job(S.PENDING), upd(nice=-1), "only an admin may lower nice", id="nice"),
        pytest.param(
            job(S.PENDING),
            upd(qos="high", qos_priorities=(("high", 100),)),
            "QOS of higher priority",
            id="qos up",
        ),
    ],
)
def test_only_an_admin_may_give_a_job_more(start: Job, event: lc.Event, fragment: str) -> None:
    with pytest.raises(lc.NotAllowed, match=re.escape(fragment)):
        lc.apply(start, event, NOW)


# --- details the table does not show -------------------------------------------------------------


def test_a_preemption_sends_its_grace_and_the_ending_as_reason() -> None:
    out = lc.apply(RUNNING2, PREEMPT, NOW)
    cancels = [e for e in out.effects if isinstance(e, lc.SendCancel)]
    assert cancels == [lc.SendCancel("a", 30.0, "requeued"), lc.SendCancel("b", 30.0, "requeued")]
    assert out.history == [(S.COMPLETING, "preempted by a higher QOS")]


def test_a_launch_per_part_carries_the_part() -> None:
    out = lc.apply(job(S.PENDING), START, NOW)
    assert out.effects == [lc.SendLaunch(p) for p in START.parts]
    assert out.job.parts == START.parts


def test_offline_is_no_event() -> None:
    """An agent going offline is not a node lost: no lifecycle event says "offline" (its jobs
    wait for it for node_timeout_s; only NodeLost ends them)."""
    events = typing.get_args(lc.Event)
    assert NodeLost in events
    assert not [e for e in events if "offline" in e.__name__.lower()]
    # its silence, seen by the clock before the node timeout, changes nothing
    assert not lc.apply(RUNNING2, Tick(), NOW).changed


def test_a_repeated_start_is_refused_not_relaunched() -> None:
    started = lc.apply(job(S.PENDING), START, NOW).job
    with pytest.raises(lc.Refused):
        lc.apply(started, START, NOW + 1)


# --- reconcile_host ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "reported", "query", "orphans"),
    [
        pytest.param([RUNNING2], ["7"], (), (), id="its own job listed"),
        pytest.param([RUNNING2], [], (7,), (), id="running part no longer listed: query"),
        pytest.param([job(S.STARTING, "launching")], [], (), (), id="launching part not queried"),
        pytest.param(
            [job(S.STARTING, "launching launching")],
            ["7"],
            (),
            (),
            id="launch arrived before its start",
        ),
        pytest.param([], ["9"], (), ("9",), id="a job the daemon does not run: orphan"),
        pytest.param([], ["7"], (), ("7",), id="a job the daemon already ended: orphan"),
        pytest.param(
            [job(S.COMPLETING, BOTH, ending=S.CANCELLED)],
            [],
            (7,),
            (),
            id="completing job no longer listed: query",
        ),
        pytest.param(
            [RUNNING2, dataclasses.replace(RUNNING2, id=8)],
            ["8", "12", "10"],
            (7,),
            ("10", "12"),
            id="mixed",
        ),
        pytest.param(
            [job(S.RUNNING, [part(0, host="b"), part(1)])],
            [],
            (),
            (),
            id="running part on another host",
        ),
    ],
)
def test_reconcile_host(
    jobs: list[Job], reported: list[str], query: tuple[int, ...], orphans: tuple[str, ...]
) -> None:
    assert lc.reconcile_host("a", jobs, reported) == lc.HostCheck(query, orphans)


# --- property: any order of events ---------------------------------------------------------------


def run_start(n: int, port: int = PORT) -> Start:
    """The n-th start of the property's job: launch ids S<n>-<rank>."""
    return Start(tuple(part(r, "launching", launch_id=f"S{n}-{r}") for r in (0, 1)), "a", port)


@st.composite
def event_for(draw: st.DrawFn, j: Job, starts: int) -> lc.Event:
    rank = draw(st.sampled_from([0, 1]))
    host = draw(st.sampled_from([HOSTS[rank]] * 6 + [HOSTS[1 - rank], "c"]))
    current = next((p.launch_id for p in j.parts if p.rank == rank), f"S{starts}-{rank}")
    launch = draw(st.sampled_from([current] * 6 + [f"S{max(starts - 1, 0)}-{rank}", ""]))
    kind = draw(
        st.sampled_from(
            [
                "cancel",
                "hold",
                "release",
                "requeue",
                "preempt",
                "update",
                "start",
                "refused",
                "tick",
            ]
            + ["not_running", "lost", "exited", "exited"]
            + ["started"] * 8
            + ["exited_0"] * 4
        )
    )
    match kind:
        case "cancel":
            return Cancel("bob", draw(st.sampled_from([None, 0.0, 30.0])))
        case "hold":
            return Hold("bob")
        case "release":
            return Release("bob")
        case "requeue":
            return REQUEUE
        case "preempt":
            return PREEMPT
        case "update":
            return lc.Update("bob", True, time_limit_s=draw(st.sampled_from([5, 20, 60])))
        case "start":
            return run_start(starts + 1, draw(st.sampled_from([PORT, PORT + 1])))
        case "refused":
            code = draw(st.sampled_from(["invalid", lc.RETRY_PORT, lc.UNHEALTHY, ""]))
            return LaunchRefused(host, launch, "no", code)
        case "not_running":
            return NotRunning(host, "gone")
        case "exited_0":
            return Exited(host, rank, launch, 0, None, "")
        case "started":
            return Started(host, rank, launch, 100 + rank)
        case "exited":
            code = draw(st.sampled_from([0, 0, 1, None]))
            sig = draw(st.sampled_from([None, None, 9, 15])) if code is None else None
            reason = draw(st.sampled_from(["", "", "lost", "launch_failed", "cancelled"]))
            return Exited(host, rank, launch, code, sig, reason)
        case "lost":
            return NodeLost(host, SILENT)
    return Tick()


@given(st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_order_of_events(data: st.DataObject) -> None:
    # a fresh 2-node job, mostly just started; some warned before their end and requeued
    # on node failures
    spec = data.draw(
        st.sampled_from([{}, {"signal": "USR1@10", "requeue": True, "max_restarts": 2}]),
        label="spec",
    )
    j = job(S.PENDING, nodes=2, time_limit_s=20, spec=spec)
    now = T0
    starts = 0
    if data.draw(st.booleans(), label="started"):
        j, starts = lc.apply(j, run_start(1), now).job, 1
    for _ in range(data.draw(st.integers(1, 30), label="events")):
        ev = data.draw(event_for(j, starts), label="event")
        now += data.draw(st.sampled_from([0.0, 1.0, 15.0]), label="dt")
        try:
            out = lc.apply(j, ev, now)  # nothing else may be raised
        except lc.Refused:
            continue
        old, new = j, out.job
        if isinstance(ev, Start):
            starts += 1
        if isinstance(ev, Exited):
            assert lc.AckExit(ev.host, ev.rank, ev.launch_id) in out.effects
        if new.state in TERMINAL:
            assert not any(p.live for p in new.parts)
            if old.state in ACTIVE:  # ended a run: only once every part has exited
                assert new.parts and not any(p.live for p in new.parts)
                assert lc.WakeScheduler() in out.effects
            assert new.end_ts is not None
        if new.state in QUEUED:
            assert new.parts == () and new.master_port is None and new.ending == ""
        if new.state in ACTIVE:
            assert new.parts
        if new.state == S.COMPLETING:
            assert new.ending
        if old.state in TERMINAL:
            assert new == old  # a finished job stays as it was
        assert new.submit_ts == SUBMIT
        # restarts: never fewer, one at most per step, only on the way back to the queue
        assert new.restart_count - old.restart_count in ((0, 1) if new.state in QUEUED else (0,))
        # attained service grows only when a run that began goes back to the queue, by that
        # run's time from its allocation
        if new.restart_count > old.restart_count:
            assert old.start_ts is not None
            assert new.attained_s == pytest.approx(old.attained_s + now - old.start_ts)
        else:
            assert new.attained_s == old.attained_s
        if new.state in QUEUED:
            assert new.signal_ts is None
        if any(isinstance(e, lc.SendSignal) for e in out.effects):
            assert new.state == S.RUNNING and spec and new.signal_ts == now
        if new.state == S.NODE_FAIL and old.state != S.NODE_FAIL:
            assert new.restart_count >= max_restarts(spec)
        if out.changed:
            assert out.history[-1][0] == new.state
        j = new
