from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dcsched.daemon.states import TRANSITIONS, JobState, TransitionError
from dcsched.daemon.store import Store, StoreError

S = JobState


def _job(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        name="j",
        user="alice",
        uid=1000,
        account="a",
        qos="normal",
        nice=0,
        spec={"command": ["x"]},
        nodes=2,
        gpus_per_node=2,
        gpu_type=None,
        time_limit_s=60,
        now=100.0,
        held=False,
    )
    base.update(kw)
    return base


async def test_jobs_survive_a_reopen_of_the_file(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    s = await Store.open(db)
    a = await s.add_job(**_job())
    b = await s.add_job(**_job(held=True))
    await s.close()
    s = await Store.open(db)  # migrations are not re-applied
    assert [(j.id, j.state) for j in await s.jobs()] == [(b, "HELD"), (a, "PENDING")]
    assert (tmp_path / "s.db-wal").exists()
    await s.close()


async def test_start_is_one_transaction_with_its_commands(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    job = await s.add_job(**_job())
    cmds = [("c0", "h0", "launch", b"{}"), ("c1", "h1", "launch", b"{}")]
    await s.start_job(
        job, [("h0", [0, 1], "c0"), ("h1", [0, 1], "c1")], "10.0.0.1", 29500, 101.0, cmds
    )
    got = await s.job(job)
    assert (got.state, got.master_port, got.start_ts) == ("STARTING", 29500, 101.0)
    assert [c.cmd_id for c in await s.unacked_commands()] == ["c0", "c1"]
    # Starting twice fails and changes nothing: the commands are not duplicated.
    with pytest.raises(StoreError):
        await s.start_job(
            job, [("h0", [0, 1], "c2")], "x", 1, 102.0, [("c2", "h0", "launch", b"{}")]
        )
    assert len(await s.unacked_commands()) == 2
    assert await s.ack_command("c0", True, "", 103.0)
    assert not await s.ack_command("c0", True, "", 104.0)  # a repeated ack is ignored
    assert [c.cmd_id for c in await s.unacked_commands()] == ["c1"]
    await s.close()


async def test_node_exit_is_recorded_once(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    job = await s.add_job(**_job())
    await s.start_job(job, [("h0", [0], "run-1")], "a", 1, 1.0, [])
    # An exit from another run of the job (before a requeue) is not this run's.
    assert not await s.node_exited(job, 0, 1, None, "exit", 1.5, launch_id="run-0")
    assert await s.node_exited(job, 0, 3, None, "exit", 2.0, launch_id="run-1")
    assert not await s.node_exited(job, 0, 0, None, "exit", 3.0)
    (part,) = await s.job_nodes(job)
    assert (part.state, part.exit_code) == ("exited", 3)
    await s.close()


async def test_illegal_transitions_are_refused_and_leave_the_row_alone(tmp_path: Path) -> None:
    s = await Store.open(str(tmp_path / "s.db"))
    job = await s.add_job(**_job())
    with pytest.raises(TransitionError):
        await s.transition(job, S.COMPLETED, 2.0)
    assert (await s.job(job)).state == "PENDING"
    done = await s.transition(job, S.CANCELLED, 2.0, "by test")
    assert done.end_ts == 2.0
    with pytest.raises(TransitionError):
        await s.transition(job, S.PENDING, 3.0)
    events = await s.job_events(job)
    assert [e["state"] for e in events] == ["PENDING", "CANCELLED"]
    await s.close()


def test_terminal_states_have_no_way_out() -> None:
    for state in (S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.NODE_FAIL):
        assert state not in TRANSITIONS
