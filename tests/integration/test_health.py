"""GPU health end to end: a real agent (sim backend) with injected faults and a pre-job health
check, a real daemon on a real broker. A fault marks the GPU unhealthy and, by policy, drains
the node with the reason (kept in its events); a failed health check puts the job back in
the queue and drains the node."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from dcsched.agents import main as agent_main
from dcsched.agents.agent import Agent
from dcsched.cli import dcctl
from dcsched.client import Client
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import load_config
from tests.conftest import Broker
from tests.integration.daemon_harness import api, running_daemon, until, write_config


def agent_conf(d: Path, broker: Broker, prefix: str, host: str, health_check: str = "") -> Path:
    path = d / f"{host}.toml"
    path.write_text(
        f'[broker]\nurl = "{broker.url}"\ntopic_prefix = "{prefix}"\n'
        f'[cluster]\nkey_file = "{d / "cluster.key"}"\n'
        f'[agent]\nhost = "{host}"\nbackend = "sim"\nsim_gpus = 2\ninterval_s = 0.2\n'
        f'state_dir = "{d / (host + "-state")}"\nhealth_check = {health_check or "[]"}\n'
    )
    return path


@contextlib.asynccontextmanager
async def running_agent(conf: Path) -> AsyncIterator[Agent]:
    agent = Agent(load_config(str(conf)))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)


async def recorded(d: Daemon, host: str, what: str) -> bool:
    return any(e["detail"] == what for e in await d.store.node_events(host))


async def node(client: Client, host: str) -> dict[str, object]:
    return next(n for n in await api(client, "nodes") if n["host"] == host)


async def test_an_injected_xid_drains_the_node_and_resume_heals_it(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    aconf = agent_conf(tmp_path, mosquitto, prefix, "g1")
    async with running_daemon(conf) as d, running_agent(aconf):
        client = Client(d.config.daemon.socket)
        await until(lambda: d.cluster.nodes.get("g1") and d.ingest.age("g1") is not None)
        fault = ["sim-fault", "--config", str(aconf), "--gpu", "1", "--kind", "xid"]
        assert await asyncio.to_thread(agent_main.main, [*fault, "--code", "79"]) == 0
        await until(lambda: d.cluster.nodes["g1"].drained, what="drained")
        n = await node(client, "g1")
        assert n["state"] == "drained"
        assert n["drain_reason"] == "unhealthy: GPU 1: XID 79 (simulated)"
        assert n["unhealthy_gpus"] == [1]
        events = await api(client, "node_events", "g1")
        assert [(e["kind"], e["detail"]) for e in events["events"]] == [
            ("fault", "GPU 1: XID 79 (simulated)"),
            ("drain", "unhealthy: GPU 1: XID 79 (simulated)"),
        ]
        # The GPU heals and an admin resumes the node: schedulable again, history kept.
        assert (
            await asyncio.to_thread(
                agent_main.main, ["sim-fault", "--config", str(aconf), "--clear"]
            )
            == 0
        )
        await api(client, "node_action", "g1", "resume")
        await until(lambda: d.cluster.state(d.cluster.nodes["g1"]) == "up", what="up")
        await until(lambda: not d.cluster.unhealthy("g1"), what="GPU 1 healthy again")
        assert (await node(client, "g1"))["unhealthy_gpus"] == []
        # An application's XID (13) and a thermal slowdown mark the GPU, but drain nothing.
        for kind, code, what in (
            ("xid", "13", "GPU 0: XID 13 (simulated)"),
            ("thermal", None, "GPU 0: thermal slowdown (simulated)"),
        ):
            args = ["sim-fault", "--config", str(aconf), "--gpu", "0", "--kind", kind]
            args += ["--code", code] if code else []
            assert await asyncio.to_thread(agent_main.main, args) == 0
            await until(lambda w=what: recorded(d, "g1", w), what=what)
        assert not d.cluster.nodes["g1"].drained
        assert d.cluster.faults["g1"] == {0: "GPU 0: XID 13 (simulated)"}
        assert d.cluster.unhealthy("g1") == frozenset({0})
        # The slowdown ends: the XID still holds GPU 0 until the node is resumed.
        clear = ["sim-fault", "--config", str(aconf), "--clear"]
        assert await asyncio.to_thread(agent_main.main, clear) == 0
        await until(lambda: d.ingest.hosts["g1"].latest.gpus[0].health == "ok", what="cool")
        assert d.cluster.unhealthy("g1") == frozenset({0})

        def cli() -> str:
            out = []
            with contextlib.redirect_stdout(_Lines(out)):
                assert dcctl.main(["--socket", d.config.daemon.socket, "node-events", "g1"]) == 0
            return "".join(out)

        text = await asyncio.to_thread(cli)
        assert "resume" in text and "GPU 0: thermal slowdown" in text


class _Lines:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def write(self, s: str) -> int:
        self.out.append(s)
        return len(s)

    def flush(self) -> None:
        pass


async def test_a_failed_health_check_requeues_the_job_and_drains_the_node(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    check = json.dumps(["sh", "-c", "echo 'GPU 1: row remapping pending' >&2; exit 3"])
    aconf = agent_conf(tmp_path, mosquitto, prefix, "g2", health_check=check)
    async with running_daemon(conf) as d, running_agent(aconf):
        client = Client(d.config.daemon.socket)
        await until(lambda: d.cluster.nodes.get("g2") and d.ingest.age("g2") is not None)
        spec = {
            "name": "t",
            "command": ["train.py"],
            "workdir": "/tmp",
            "resources": {"nodes": 1, "gpus_per_node": 1},
        }
        job = await api(client, "submit", spec)
        await until(lambda: d.cluster.nodes["g2"].drained, what="drained")
        reason = "health check failed: sh exited 3: GPU 1: row remapping pending"
        assert d.cluster.nodes["g2"].drain_reason == reason
        shown = await api(client, "job", job)
        assert shown["state"] in ("REQUEUED", "PENDING"), shown  # waiting, not FAILED
        assert any("failed its health check" in e["detail"] for e in shown["events"])
        assert (await api(client, "node_events", "g2"))["events"][-1] == {
            "ts": (await api(client, "node_events", "g2"))["events"][-1]["ts"],
            "kind": "drain",
            "detail": reason,
        }
