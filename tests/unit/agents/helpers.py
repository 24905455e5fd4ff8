"""Builders and fakes shared by the agent's unit tests."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from dcsched.agents.agent import Agent
from dcsched.protocol.codec import event_codec
from dcsched.protocol.config import ClusterConfig, Config
from dcsched.protocol.jobspec import runs_python
from dcsched.protocol.messages import Launch
from tests.conftest import free_port


def launch(tmp_path: Path, command: list[str], **kw: object) -> Launch:
    base: dict[str, object] = dict(
        cmd_id="c1",
        job_id="j1",
        node_rank=0,
        nnodes=1,
        nproc_per_node=1,
        master_addr="127.0.0.1",
        master_port=free_port(),  # rank 0's launch checks that it is free
        gpus=[0, 1],
        command=command,
        workdir=str(tmp_path),
        env={"FAKE_TORCHRUN_ARGS": str(tmp_path / "torchrun.args")},
        no_python=not runs_python(command, None),  # as the daemon sets it
    )
    base.update(kw)
    return Launch(**base)  # type: ignore[arg-type]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


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
    return Agent(cfg, insecure=not key)


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110 - polls a file, not an event
            await asyncio.sleep(0.05)


async def wait_jobs_done(agent: Agent, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while agent.jobs:
            await agent.check_jobs()
            await asyncio.sleep(0.05)
