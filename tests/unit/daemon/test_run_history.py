"""The daemon's run history (Snapshot.history): one more run per COMPLETED job, all its runs
together, at most HISTORY_RUNS per (user, time limit), and the same from the store at
start-up, on either backend."""

from __future__ import annotations

import dataclasses
from typing import Any

from dcsched.daemon.lifecycle import Job
from dcsched.daemon.model import Model
from dcsched.daemon.states import JobState
from dcsched.daemon.store import Batch, Store
from dcsched.scheduler.estimate import HISTORY_RUNS
from tests.unit.daemon.builders import make_job

S = JobState


def _job(job_id: int, **kw: Any) -> Job:
    return make_job(**{"id": job_id, "state": S.RUNNING.value, "start_ts": 100.0, **kw})


def _end(model: Model, job: Job, state: str, end_ts: float) -> None:
    model.install(dataclasses.replace(job, state=state, end_ts=end_ts), job)


def test_a_completed_job_adds_all_its_runs_and_other_ends_add_nothing() -> None:
    m = Model(lambda host: "a100")
    before = m.history()
    ran = _job(1, attained_s=50.0)
    m.install(ran, None)
    _end(m, ran, S.COMPLETED, 400.0)
    assert before == {}  # a copy taken earlier does not change
    assert m.history() == {("alice", 3600.0): (350.0,)}  # 50 earlier + 300 this run
    for i, state in enumerate((S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL), start=2):
        job = _job(i)
        m.install(job, None)
        _end(m, job, state, 500.0)
    other = _job(9, user="bob", time_limit_s=60)
    m.install(other, None)
    m.install(dataclasses.replace(other, state=S.REQUEUED.value, start_ts=None), other)
    assert m.history() == {("alice", 3600.0): (350.0,)}
    # a job that never ran but is COMPLETED (no start) has no run to count
    queued = _job(10, state=S.PENDING.value, start_ts=None)
    m.install(queued, None)
    m.install(dataclasses.replace(queued, state=S.COMPLETED.value, end_ts=600.0), queued)
    assert m.history() == {("alice", 3600.0): (350.0,)}


def test_the_history_keeps_the_last_runs_of_each_user_and_limit() -> None:
    m = Model(lambda host: "a100")
    for i in range(HISTORY_RUNS + 5):
        job = _job(i + 1)
        m.install(job, None)
        _end(m, job, S.COMPLETED, 100.0 + i + 1)  # runs of 1, 2, 3, ... s
    short = _job(100, time_limit_s=60)
    m.install(short, None)
    _end(m, short, S.COMPLETED, 130.0)
    h = m.history()
    assert h[("alice", 3600.0)] == tuple(float(r) for r in range(6, HISTORY_RUNS + 6))
    assert h[("alice", 60.0)] == (30.0,)
    assert m.history() is h  # no change, no new copy


async def test_start_up_rebuilds_the_history_from_the_store(store_location: str) -> None:
    s = await Store.open(store_location)
    try:
        new = [
            (_job(0, state=S.PENDING.value, start_ts=None, user=u, time_limit_s=t), "x")
            for u, t, n in (("alice", 3600, HISTORY_RUNS + 3), ("bob", 60, 2), ("carol", 60, 1))
            for _ in range(n)
        ]
        ids = await s.add_jobs(new)
        jobs = {j.id: j for j in await s.live_jobs()}
        done = []
        for k, i in enumerate(ids):
            job = jobs[i]
            # ends out of id order: the history is ordered by when a job ended
            end = 1000.0 - 3 * k if job.user == "bob" else 100.0 + k
            state = S.FAILED if job.user == "carol" else S.COMPLETED
            done.append(
                dataclasses.replace(
                    job, state=state.value, start_ts=10.0, end_ts=end, attained_s=float(k)
                )
            )
        await s.commit(Batch(jobs=done))
        got = await s.completed_runs(HISTORY_RUNS)
        m = Model(lambda host: "a100")
        m.load([], {}, {}, got)
    finally:
        await s.close()
    # alice: job k ran attained k + (100 + k - 10); the oldest 3 are past the cap
    alice = tuple(float(k + 100 + k - 10) for k in range(3, HISTORY_RUNS + 3))
    b0, b1 = HISTORY_RUNS + 3, HISTORY_RUNS + 4  # bob's jobs: the later id ended first
    bob = (float(990 - 2 * b1), float(990 - 2 * b0))
    assert m.history() == {("alice", 3600.0): alice, ("bob", 60.0): bob}
    assert [len(v) for v in got.values()] == [HISTORY_RUNS, 2]
