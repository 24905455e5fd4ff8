"""The agent's command handling against a recording fake of the MQTT client."""

from __future__ import annotations

import asyncio
import random
import signal
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dcsched.agents.agent import BACKOFF_MAX_S, Agent, backoff_delay
from dcsched.agents.procs import is_alive
from dcsched.protocol.codec import event_codec, sign
from dcsched.protocol.config import ClusterConfig, Config
from dcsched.protocol.messages import Ack, Cancel, FetchLog, JobExited, JobStarted, Launch
from tests.unit.agents.helpers import launch, py

KEY = b"k" * 32


class FakeClient:
    def __init__(self, payloads: list[bytes] | None = None) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        self._payloads = payloads or []

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.published.append((topic, payload, qos, retain))

    @property
    async def messages(self) -> AsyncIterator[Any]:
        for p in self._payloads:
            yield types.SimpleNamespace(topic="t", payload=p)

    def events(self) -> list[Any]:
        codec = event_codec()
        return [codec.decode(p) for t, p, _, _ in self.published if t.endswith("/events")]


def make_agent(cfg: Config, tmp_path: Path, key: bool = False) -> Agent:
    if key:
        (tmp_path / "key").write_bytes(KEY)
        cfg = msgspec.structs.replace(cfg, cluster=ClusterConfig(key_file=str(tmp_path / "key")))
    return Agent(cfg)


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110 - polls a file, not an event
            await asyncio.sleep(0.05)


async def wait_jobs_done(agent: Agent, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while agent.jobs:
            await agent.check_jobs()
            await asyncio.sleep(0.05)


def launches(tmp_path: Path) -> int:
    return len(list((tmp_path / "state" / "logs").glob("*/node*.log")))


async def test_a_repeated_cmd_id_is_acked_again_and_runs_once(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    marker = tmp_path / "runs"
    cmd = launch(tmp_path, py(f"open({str(marker)!r}, 'a').write('x')"))
    await agent.handle(client, cmd)  # type: ignore[arg-type]
    await agent.handle(client, cmd)  # type: ignore[arg-type]
    acks = [e for e in client.events() if isinstance(e, Ack)]
    assert len(acks) == 2 and acks[0] == acks[1] and acks[0].ok
    await wait_jobs_done(agent)
    assert marker.read_text() == "x"
    outbox = agent.store.state.outbox
    assert [type(e) for e in outbox] == [JobStarted, JobExited]
    assert isinstance(outbox[1], JobExited) and outbox[1].exit_code == 0 and not outbox[1].reason

    # ... also after a restart: executed ids live in the state file.
    again = make_agent(agent_config, tmp_path)
    again.store.load()
    client2 = FakeClient()
    await again.handle(client2, cmd)  # type: ignore[arg-type]
    assert client2.events() == [acks[0]]
    assert marker.read_text() == "x"


async def test_a_launch_of_a_running_job_is_acked_without_a_second_launch(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "30"]))  # type: ignore[arg-type]
    await agent.handle(client, launch(tmp_path, ["sleep", "30"], cmd_id="c2"))  # type: ignore[arg-type]
    assert [e.ok for e in client.events() if isinstance(e, Ack)] == [True, True]
    assert len(agent.jobs) == 1 and agent.jobs["j1#0"].cmd_ids == ["c1", "c2"]
    await agent.handle(client, Cancel(cmd_id="c3", job_id="j1", grace_s=2))  # type: ignore[arg-type]
    await wait_jobs_done(agent)


async def test_cancel_terms_then_kills_and_reports(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    stubborn = py(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    await agent.handle(client, launch(tmp_path, stubborn))  # type: ignore[arg-type]
    rec = agent.jobs["j1#0"]
    log = Path(rec.log_path)
    await until(lambda: "up" in log.read_text().splitlines())
    pids = agent.launcher.pids(rec)
    await agent.handle(client, Cancel(cmd_id="c2", job_id="j1", grace_s=0.5))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited)
    assert exited.reason == "cancelled" and exited.signal == signal.SIGKILL
    assert pids and not [p for p in pids if is_alive(p)]

    # A cancel of a job that already exited here says again how it ended.
    await agent.handle(client, Cancel(cmd_id="c3", job_id="j1"))  # type: ignore[arg-type]
    assert agent.store.state.outbox[-1] == exited
    await agent.handle(client, Cancel(cmd_id="c4", job_id="never"))  # type: ignore[arg-type]
    ack = client.events()[-1]
    assert isinstance(ack, Ack) and ack.ok and "does not run on unit" in ack.error


async def test_cancel_with_grace_lets_the_job_stop(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "30"]))  # type: ignore[arg-type]
    await agent.handle(client, Cancel(cmd_id="c2", job_id="j1", grace_s=5, reason="timeout"))  # type: ignore[arg-type]
    await wait_jobs_done(agent, timeout=4)
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited)
    assert (exited.reason, exited.signal) == ("timeout", signal.SIGTERM)


async def test_a_refused_launch_is_acked_with_the_reason(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["true"], workdir="/nonexistent"))  # type: ignore[arg-type]
    (ack,) = client.events()
    assert isinstance(ack, Ack) and not ack.ok and "workdir /nonexistent" in ack.error
    exited = agent.store.state.outbox[-1]
    assert isinstance(exited, JobExited) and exited.reason == "launch_failed"
    assert not agent.jobs


async def test_unsigned_or_forged_commands_are_dropped(
    tmp_path: Path, agent_config: Config
) -> None:
    agent = make_agent(agent_config, tmp_path, key=True)
    cmd = launch(tmp_path, ["true"])
    client = FakeClient([
        sign(cmd, None),  # unsigned
        sign(cmd, b"x" * 32),  # wrong key
        b"{garbage",
    ])  # fmt: skip
    await agent._receive(client)  # type: ignore[arg-type]
    assert client.published == []
    assert sum(agent.dropped.values()) == 3
    assert launches(tmp_path) == 0
    good = FakeClient([sign(cmd, KEY)])
    await agent._receive(good)  # type: ignore[arg-type]
    assert [type(e) for e in good.events()] == [Ack]
    await wait_jobs_done(agent)


async def test_fetch_log(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["echo", "hello from the job"]))  # type: ignore[arg-type]
    await wait_jobs_done(agent)
    await agent.handle(client, FetchLog(cmd_id="f1", job_id="j1", node_rank=0))  # type: ignore[arg-type]
    chunk = client.events()[-1]
    assert "hello from the job" in chunk.data and chunk.size > 0 and not chunk.error
    await agent.handle(client, FetchLog(cmd_id="f2", job_id="j1", node_rank=3))  # type: ignore[arg-type]
    assert "no log" in client.events()[-1].error


async def test_telemetry_maps_job_pids_to_its_gpus(tmp_path: Path, agent_config: Config) -> None:
    agent = make_agent(agent_config, tmp_path)
    client = FakeClient()
    await agent.handle(client, launch(tmp_path, ["sleep", "30"], gpus=[2, 3]))  # type: ignore[arg-type]
    msg = agent.sample(list(agent.jobs.values()))
    rec = agent.jobs["j1#0"]
    assert msg.simulated and msg.host == "unit" and len(msg.gpus) == 4
    (procs,) = msg.jobs
    assert procs.gpus == [2, 3] and rec.child_pid in procs.pids
    assert msg.gpus[2].pids == procs.pids and msg.gpus[0].pids == []
    assert agent.sample([]).seq == msg.seq + 1
    await agent.handle(client, Cancel(cmd_id="c2", job_id="j1", grace_s=2))  # type: ignore[arg-type]
    await wait_jobs_done(agent)


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    d = [backoff_delay(a, rng) for a in range(12)]
    assert 0.25 <= d[0] <= 0.5 and 0.5 <= d[1] <= 1.0
    assert all(x <= BACKOFF_MAX_S for x in d) and d[-1] >= BACKOFF_MAX_S / 2
    assert len({round(backoff_delay(3), 6) for _ in range(5)}) > 1


def test_launch_message_has_what_torchrun_needs() -> None:
    fields = set(Launch.__struct_fields__)
    assert {"nnodes", "nproc_per_node", "node_rank", "master_addr", "master_port"} <= fields
    assert pytest is not None
