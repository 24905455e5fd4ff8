"""End-to-end exit acks: a JobExited stays in the state file, and goes out again after every
reconnect and every exit_resend_s, until the daemon's AckExit names it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from dcsched.agents import state as state_mod
from dcsched.agents.agent import Agent
from dcsched.agents.state import StateStore
from dcsched.protocol.config import Config
from dcsched.protocol.messages import AckExit, JobExited
from tests.unit.agents.helpers import FakeClient, launch, make_agent, until, wait_jobs_done


def with_resend(cfg: Config, resend_s: float) -> Config:
    return msgspec.structs.replace(
        cfg, agent=msgspec.structs.replace(cfg.agent, exit_resend_s=resend_s)
    )


def exited(job_id: str = "j1", rank: int = 0, launch_id: str = "c1") -> JobExited:
    return JobExited(
        host="unit", job_id=job_id, node_rank=rank, ts=1.0, exit_code=0, launch_id=launch_id
    )


def copies(client: FakeClient, ev: JobExited) -> int:
    return client.events().count(ev)


@contextlib.asynccontextmanager
async def connected(agent: Agent, client: FakeClient) -> AsyncIterator[None]:
    """The agent's publishing task on one connection; leaving it is losing that connection."""
    task = asyncio.create_task(agent._outbox(client))  # type: ignore[arg-type]
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ack(ev: JobExited, launch_id: str | None = None) -> AckExit:
    lid = ev.launch_id if launch_id is None else launch_id
    return AckExit(cmd_id="a-" + lid, job_id=ev.job_id, node_rank=ev.node_rank, launch_id=lid)


async def test_an_exit_is_resent_until_its_ack_exit(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(with_resend(agent_config, 0.05), tmp_path)
    await agent.handle(FakeClient(), launch(tmp_path, ["true"]))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    ev = agent.store.state.outbox[-1]
    assert isinstance(ev, JobExited) and ev.launch_id == "c1"
    client = FakeClient()
    async with connected(agent, client):
        await until(lambda: copies(client, ev) >= 3)  # published, then resent twice
        assert agent.store.state.outbox == [] and agent.store.state.unacked == [ev]
        # Another run's ack (another launch of the job) does not name it.
        await agent.handle(client, ack(ev, "c0"))  # type: ignore[arg-type]
        assert agent.store.state.unacked == [ev]
        await agent.handle(client, ack(ev))  # type: ignore[arg-type]
        assert agent.store.state.unacked == []
        assert StateStore(agent.cfg.agent.state_dir).load().unacked == []
        # Neither remembered nor answered (it is idempotent).
        assert agent.store.command("a-c1") is None
        assert [type(e).__name__ for e in client.events() if not isinstance(e, JobExited)] == [
            "JobStarted"
        ]
        # No more copies of it, while another exit is resent twice meanwhile.
        n = copies(client, ev)
        other = exited("j2")
        agent._queue_event(other)
        await until(lambda: copies(client, other) >= 3)
        assert copies(client, ev) == n


async def test_exits_go_out_again_after_a_reconnect_and_an_agent_restart(
    tmp_path: Path, agent_config: Config
) -> None:
    cfg = with_resend(agent_config, 3600.0)  # only a (re)connection sends them now
    agent = make_agent(cfg, tmp_path)
    ev = exited()
    agent._queue_event(ev)
    first = FakeClient()
    async with connected(agent, first):
        await until(lambda: agent.store.state.unacked == [ev])
    assert copies(first, ev) == 1
    second = FakeClient()
    async with connected(agent, second):
        await until(lambda: copies(second, ev) == 1)

    restarted = make_agent(cfg, tmp_path)  # nothing in memory survives
    restarted.store.load()
    assert restarted.store.state.unacked == [ev]
    third = FakeClient()
    async with connected(restarted, third):
        await until(lambda: copies(third, ev) == 1)
        await restarted.handle(third, ack(ev))  # type: ignore[arg-type]
        assert restarted.store.state.unacked == []


async def test_an_ack_without_launch_id_names_every_run_even_unpublished(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    runs = [exited(launch_id="c1"), exited(launch_id="c2"), exited(rank=1, launch_id="c2")]
    agent.store.state.unacked.append(runs[0])
    agent._queue_event(runs[1])  # not published yet: the daemon has it anyway
    agent._queue_event(runs[2])
    await agent.handle(FakeClient(), ack(runs[0], ""))  # type: ignore[arg-type]
    assert agent.store.state.unacked == [] and agent.store.state.outbox == [runs[2]]


async def test_unacknowledged_exits_are_bounded(
    tmp_path: Path,
    agent_config: Config,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(state_mod, "MAX_UNACKED", 2)
    agent = make_agent(with_resend(agent_config, 3600.0), tmp_path)
    runs = [exited(f"j{i}") for i in range(3)]
    for ev in runs:
        agent._queue_event(ev)
    client = FakeClient()
    with caplog.at_level(logging.WARNING, logger="dcsched.agent"):
        async with connected(agent, client):
            await until(lambda: not agent.store.state.outbox)
    assert agent.store.state.unacked == runs[1:]
    assert "job j0 node 0: dropping its exit (launch c1)" in caplog.text
    # The same exit published again (a Cancel of an ended job says it again) is kept once.
    assert agent.store.keep_unacked(runs[2]) == [] and agent.store.state.unacked == runs[1:]
