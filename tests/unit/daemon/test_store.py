from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from dcsched.daemon.lifecycle import Job, Part
from dcsched.daemon.states import TRANSITIONS, JobState
from dcsched.daemon.store import Batch, CommandRow, NotFound, Store, StoreRejected

S = JobState


def _new(**kw: Any) -> tuple[Job, str]:
    base: dict[str, Any] = dict(
        id=0,
        name="j",
        user="alice",
        uid=1000,
        account="a",
        qos="normal",
        nice=0,
        state="PENDING",
        spec={"command": ["x"]},
        nodes=2,
        gpus_per_node=2,
        gpu_type=None,
        time_limit_s=60,
        submit_ts=100.0,
    )
    base.update(kw)
    return Job(**base), "submitted by alice"


async def test_jobs_survive_a_reopen_of_the_file(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    s = await Store.open(db)
    a, b = await s.add_jobs([_new(), _new(state="HELD")])
    await s.close()
    s = await Store.open(db)  # migrations are not re-applied
    assert [(j.id, j.state) for j in await s.live_jobs()] == [(a, "PENDING"), (b, "HELD")]
    assert (tmp_path / "s.db-wal").exists()
    await s.close()


async def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    (job_id,) = await s.add_jobs([_new()])
    job = (await s.live_jobs())[0]
    parts = (Part(0, "h0", (0, 1), "c0"), Part(1, "h1", (0, 1), "c1"))
    started = dataclasses.replace(job, state="STARTING", parts=parts, master_port=29500)
    cmds = [CommandRow(f"c{i}", f"h{i}", job_id, "launch", b"{}", 1.0) for i in range(2)]
    # A batch that fails half-way (a duplicate history id here) leaves nothing behind.
    bad = Batch(jobs=[started], parts_changed={job_id}, commands=cmds)
    bad.history = [(job_id, 1.0, "STARTING", "x"), (job_id, 1.0, "STARTING", None)]  # type: ignore[list-item]
    with pytest.raises(StoreRejected):  # bad data: not retried like a full disk
        await s.commit(bad)
    assert (await s.job(job_id)).state == "PENDING"
    assert await s.unacked_commands() == []
    ok = Batch(jobs=[started], parts_changed={job_id}, commands=cmds)
    ok.history = [(job_id, 1.0, "STARTING", "allocated h0, h1")]
    await s.commit(ok)
    got = await s.job(job_id)
    assert (got.state, got.master_port, got.parts) == ("STARTING", 29500, parts)
    assert [c.cmd_id for c in await s.unacked_commands()] == ["c0", "c1"]
    await s.commit(Batch(acks=[("c0", True, "", 2.0)]))
    assert [c.cmd_id for c in await s.unacked_commands()] == ["c1"]
    events = await s.job_events(job_id)
    assert [e["state"] for e in events] == ["PENDING", "STARTING"]
    await s.close()


async def test_finished_jobs_are_read_newest_first_with_a_limit(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    ids = await s.add_jobs([_new(state="PENDING") for _ in range(5)])
    jobs = {j.id: j for j in await s.live_jobs()}
    done = [dataclasses.replace(jobs[i], state="COMPLETED", end_ts=9.0) for i in ids[:4]]
    await s.commit(Batch(jobs=done))
    got = await s.finished_jobs({"COMPLETED", "PENDING"}, None, 3)
    assert [j.id for j in got] == list(reversed(ids[1:4]))
    assert await s.finished_jobs({"COMPLETED"}, "bob", 10) == []
    assert [j.id for j in await s.live_jobs()] == [ids[4]]
    assert (await s.count_by_state()) == {"COMPLETED": 4, "PENDING": 1}
    with pytest.raises(NotFound):
        await s.job(999)
    await s.close()


async def test_finished_jobs_in_a_window_of_end_times(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    ids = await s.add_jobs([_new(state="PENDING") for _ in range(4)])
    jobs = {j.id: j for j in await s.live_jobs()}
    done = [
        dataclasses.replace(jobs[i], state="FAILED", end_ts=float(t))
        for i, t in zip(ids, (10, 20, 30, 40), strict=True)
    ]
    await s.commit(Batch(jobs=done))
    window = await s.finished_jobs({"FAILED"}, None, 10, since=20.0, until=40.0)
    assert [j.id for j in window] == [ids[2], ids[1]]  # [since, until), newest first
    assert len(await s.finished_jobs({"FAILED"}, None, 10, since=35.0)) == 1
    assert len(await s.finished_jobs({"FAILED"}, None, 10, until=10.0)) == 0
    await s.close()


def test_terminal_states_have_no_way_out() -> None:
    for state in (S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL):
        assert state not in TRANSITIONS


async def test_restarts_and_array_fields_are_journaled(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    s = await Store.open(db)
    (job_id,) = await s.add_jobs([_new(array_job_id=5, array_task_id=3)])
    job = await s.job(job_id)
    await s.commit(Batch(jobs=[dataclasses.replace(job, restart_count=2, signal_ts=7.5)]))
    await s.close()
    s = await Store.open(db)
    again = await s.job(job_id)
    assert (again.restart_count, again.signal_ts) == (2, 7.5)
    assert (again.array_job_id, again.array_task_id) == (5, 3)
    await s.close()
