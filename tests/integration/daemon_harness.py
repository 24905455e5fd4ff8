"""A real daemon in the test's event loop, on a real broker and store (a SQLite file, or a
PostgreSQL database with the `daemon_store` fixture), and a scripted
agent that speaks the wire protocol: for testing the daemon's side of each exchange."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from dcsched.client import Client
from dcsched.daemon.service import Daemon
from dcsched.protocol.codec import CommandVerifier, encode
from dcsched.protocol.config import load_config
from dcsched.protocol.messages import (
    Ack,
    Cancel,
    Command,
    GpuInfo,
    GpuSample,
    HostStatus,
    JobExited,
    JobProcs,
    JobStarted,
    Launch,
    Telemetry,
)
from dcsched.protocol.topics import Topics
from tests.conftest import Broker

KEY = b"integration-test-cluster-key-000"
# The store of the daemons write_config describes when a test names none: "" = SQLite in
# the state_dir; the `daemon_store` fixture sets a PostgreSQL database's URL for a test.
STORE = ""


def write_config(d: Path, broker: Broker, prefix: str, scheduler: str = "", **daemon: Any) -> Path:
    """A config file for a test daemon; `scheduler` is raw TOML for [scheduler]."""
    key = d / "cluster.key"
    key.write_bytes(KEY)
    opts = {
        "node_timeout_s": 3.0,
        "command_retry_s": 0.5,
        "cancel_grace_s": 2.0,
        "pass_interval_s": 0.5,
        "telemetry_flush_s": 1.0,
        "metrics_listen": "",
        **({"store": STORE} if STORE else {}),
        **daemon,
    }
    extra = "".join(
        f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n' for k, v in opts.items()
    )
    conf = d / "dcsched.toml"
    conf.write_text(
        f'[broker]\nurl = "{broker.url}"\ntopic_prefix = "{prefix}"\n'
        f'[cluster]\nkey_file = "{key}"\n'
        f'[daemon]\nstate_dir = "{d / "state"}"\nsocket = "{d / "dcd.sock"}"\n'
        f"{extra}[scheduler]\n{scheduler}\n"
    )
    return conf


@contextlib.asynccontextmanager
async def running_daemon(conf: Path) -> AsyncIterator[Daemon]:
    daemon = await Daemon.open(load_config(str(conf)))
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    await asyncio.wait_for(daemon.bus.connected.wait(), 10)
    try:
        yield daemon
    finally:
        daemon.stop.set()
        await asyncio.wait_for(task, 20)


class ScriptedAgent:
    """Publishes status and telemetry like dc-agent; records the commands it receives."""

    def __init__(self, broker: Broker, prefix: str, host: str, gpus: int = 2) -> None:
        self.broker, self.host, self.gpus = broker, host, gpus
        self.topics = Topics(prefix)
        self.verifier = CommandVerifier(KEY, host)
        self.commands: list[Command] = []
        self.rejected = 0
        self.auto_ack = True
        self.running: set[str] = set()
        self.on_command: Callable[[Command], None] | None = None
        self.sample: dict[str, Any] = {"util": 50.0}  # each GPU's telemetry fields
        self._client: aiomqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def status(self, state: str = "online") -> HostStatus:
        return HostStatus(
            host=self.host,
            state=state,
            ts=time.time(),
            addr=f"10.0.0.{self.gpus}",
            backend="sim",
            simulated=True,
            running_jobs=sorted(self.running),
            gpus=[
                GpuInfo(
                    index=i, uuid=f"{self.host}-{i}", model="Simulated-H100", mem_total=80 << 30
                )
                for i in range(self.gpus)
            ],
        )

    async def __aenter__(self) -> ScriptedAgent:
        will = aiomqtt.Will(
            self.topics.host(self.host, "status"),
            encode(self.status("offline")),
            qos=1,
            retain=True,
        )
        self._client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            will=will,
            identifier=f"agent-{self.host}-{uuid.uuid4().hex[:6]}",
        )
        await self._client.__aenter__()
        await self._client.subscribe(self.topics.host(self.host, "cmd"), qos=1)
        await self.publish_status()
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._telemetry())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Cancel until they are gone: on Python 3.11 a wait_for inside aiomqtt's publish can
        # swallow a cancellation that races its acknowledgement, and the task runs on.
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        assert self._client is not None
        await self._client.__aexit__(None, None, None)

    async def publish_status(self, state: str = "online") -> None:
        assert self._client is not None
        await self._client.publish(
            self.topics.host(self.host, "status"), encode(self.status(state)), qos=1, retain=True
        )

    async def event(self, msg: Any) -> None:
        assert self._client is not None
        await self._client.publish(self.topics.host(self.host, "events"), encode(msg), qos=1)

    async def raw(self, kind: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(self.topics.host(self.host, kind), payload, qos=1)  # type: ignore[arg-type]

    async def _telemetry(self) -> None:
        seq = 0
        while True:
            seq += 1
            assert self._client is not None
            msg = Telemetry(
                host=self.host,
                ts=time.time(),
                seq=seq,
                simulated=True,
                gpus=[
                    GpuSample(index=i, uuid=f"{self.host}-{i}", **self.sample)
                    for i in range(self.gpus)
                ],
                jobs=[JobProcs(job_id=j, node_rank=0) for j in self.running],
            )
            await self._client.publish(self.topics.host(self.host, "telemetry"), encode(msg))
            await asyncio.sleep(0.3)

    async def _receive(self) -> None:
        assert self._client is not None
        async for m in self._client.messages:
            try:
                cmd = self.verifier.verify(bytes(m.payload))  # type: ignore[arg-type]
            except Exception:
                self.rejected += 1
                continue
            self.commands.append(cmd)
            if self.on_command:
                self.on_command(cmd)
            if self.auto_ack:
                await self.event(Ack(host=self.host, cmd_id=cmd.cmd_id, job_id=cmd.job_id))

    async def start(self, job_id: str, rank: int) -> None:
        self.running.add(job_id)
        await self.event(
            JobStarted(
                host=self.host,
                job_id=job_id,
                node_rank=rank,
                pid=4242,
                ts=time.time(),
                log_path="/tmp/x.log",
            )
        )

    async def exit(
        self,
        job_id: str,
        rank: int,
        code: int | None = 0,
        signal: int | None = None,
        reason: str = "",
    ) -> None:
        self.running.discard(job_id)
        await self.event(
            JobExited(
                host=self.host,
                job_id=job_id,
                node_rank=rank,
                ts=time.time(),
                exit_code=code,
                signal=signal,
                reason=reason,
            )
        )


async def api(client: Client, method: str, *args: Any, **kw: Any) -> Any:
    """Runs a (blocking) client call off the event loop the daemon runs on."""
    return await asyncio.to_thread(getattr(client, method), *args, **kw)


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.1)


def launches(*agents: ScriptedAgent, job_id: int | None = None) -> list[Launch]:
    """The launches the agents received, of one job or of all."""
    return [
        c
        for a in agents
        for c in a.commands
        if isinstance(c, Launch) and (job_id is None or c.job_id == str(job_id))
    ]


def cancels(*agents: ScriptedAgent) -> list[Cancel]:
    return [c for a in agents for c in a.commands if isinstance(c, Cancel)]


async def state_is(client: Client, job_id: int, state: str) -> bool:
    return bool((await api(client, "job", job_id))["state"] == state)


async def run_on(agent: ScriptedAgent, client: Client, job_id: int) -> Launch:
    """Waits for a one-node job's launch, reports it started, and waits for RUNNING."""
    await until(lambda: launches(agent, job_id=job_id), what=f"launch of job {job_id}")
    launch = launches(agent, job_id=job_id)[-1]
    await agent.start(str(job_id), launch.node_rank)
    await until(lambda: state_is(client, job_id, "RUNNING"), what=f"job {job_id} RUNNING")
    return launch
