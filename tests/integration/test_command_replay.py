"""Replaying commands the daemon really published: a real daemon, two real dc-agent
processes and a sniffer on a real Mosquitto. A captured Launch replayed to another host, or
to its own host after that agent restarted, starts nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from dcsched.client import Client
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import ConfigError, load_config
from dcsched.protocol.messages import Ack, Command, JobStarted, Launch, SignedCommand
from dcsched.protocol.topics import Topics
from tests.conftest import PROCESS_TIMEOUT, Broker, Procs, fake_torchrun
from tests.integration.daemon_harness import api, running_daemon, state_is, until, write_config
from tests.integration.test_agent_mqtt import agent_config

pytestmark = [pytest.mark.faults, PROCESS_TIMEOUT]

_command = msgspec.json.Decoder(Command)
_signed = msgspec.json.Decoder(SignedCommand)


class Sniffer:
    """Records every command and event on the broker, raw."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker, self.topics = broker, Topics(prefix)
        self.seen: list[tuple[str, str, bytes]] = []  # (host, kind, payload)

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port) as c:
            for kind in ("cmd", "events"):
                await c.subscribe(self.topics.all_hosts(kind), qos=1)  # type: ignore[arg-type]
            ready.set()
            async for m in c.messages:
                parsed = self.topics.parse(m.topic.value)
                if parsed and isinstance(m.payload, bytes):
                    self.seen.append((parsed[0], parsed[1], m.payload))

    def launches(self) -> list[tuple[str, bytes, Launch]]:
        out = []
        for host, kind, payload in self.seen:
            if kind == "cmd":
                cmd = _command.decode(_signed.decode(payload).body)
                if isinstance(cmd, Launch):
                    out.append((host, payload, cmd))
        return out

    def events(self, host: str, kind: type) -> list[object]:
        from dcsched.protocol.codec import event_codec

        codec = event_codec()
        evs = [codec.decode(p) for h, k, p in self.seen if h == host and k == "events"]
        return [e for e in evs if isinstance(e, kind)]


def _start_agent(procs: Procs, conf: Path, log: Path) -> None:
    with log.open("ab") as out:
        procs.popen(
            [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(conf)],
            stdout=out,
            stderr=out,
        )


def _log_has(path: Path, text: str) -> bool:
    return text in path.read_text()


async def test_captured_launch_replayed_to_another_host_or_after_a_restart_starts_nothing(
    tmp_path: Path, mosquitto: Broker, prefix: str, procs: Procs
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    torchrun = fake_torchrun(tmp_path / "fake-torchrun")
    confs, logs = {}, {}
    for host in ("n1", "n2"):
        (tmp_path / host).mkdir()
        confs[host] = agent_config(
            tmp_path / host, mosquitto.url, prefix, host,
            key_file=str(tmp_path / "cluster.key"), torchrun=str(torchrun),
        )  # fmt: skip
        logs[host] = tmp_path / f"{host}.log"
    sniffer = Sniffer(mosquitto, prefix)
    ready = asyncio.Event()
    sniff = asyncio.create_task(sniffer.run(ready))
    daemon = await Daemon.open(load_config(str(conf)))
    run = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.wait_for(daemon.bus.connected.wait(), 10)
        for host in ("n1", "n2"):
            _start_agent(procs, confs[host], logs[host])
        client = Client(daemon.config.daemon.socket)

        async def both_up() -> bool:
            nodes = await api(client, "nodes")
            return len(nodes) == 2 and all(n["state"] == "up" for n in nodes)

        await until(both_up, timeout=30, what="both agents up")
        spec = {
            "name": "victim",
            "command": [sys.executable, "-c", "import time; time.sleep(120)"],
            "workdir": str(tmp_path),
            "resources": {"nodes": 1, "gpus_per_node": 1, "time_limit": "10m"},
        }
        job_id = await api(client, "submit", spec)
        await until(lambda: state_is(client, job_id, "RUNNING"), timeout=30, what="RUNNING")
        ((host, captured, launch),) = sniffer.launches()
        assert launch.job_id == str(job_id)
        other = "n2" if host == "n1" else "n1"
        assert _signed.decode(captured).host == host
        assert _signed.decode(captured).epoch == daemon.sender.epoch > 0

        # 1. The captured launch, replayed to the other host: refused, nothing starts there.
        await _publish(mosquitto, Topics(prefix).host(other, "cmd"), captured)
        await until(lambda: _log_has(logs[other], "wrong_host"), what="refusal on the other host")
        assert "command for host" in logs[other].read_text()
        assert not sniffer.events(other, JobStarted) and not sniffer.events(other, Ack)
        assert not list((tmp_path / other / f"{other}-state" / "logs").glob("*"))

        # 2. Its own host's agent restarts (the job keeps running) and gets it again.
        acks_before = len(sniffer.events(host, Ack))
        for p in procs.started:
            if p.args[-1] == str(confs[host]):
                p.send_signal(signal.SIGTERM)
                assert p.wait(15) == 0
        _start_agent(procs, confs[host], logs[host])
        await until(
            lambda: logs[host].read_text().count("connected to") >= 2,
            timeout=20,
            what="agent back",
        )
        await _publish(mosquitto, Topics(prefix).host(host, "cmd"), captured)
        await until(lambda: _log_has(logs[host], "replayed"), what="replay refused")
        assert len(sniffer.events(host, Ack)) == acks_before  # not even answered
        assert len(sniffer.events(host, JobStarted)) == 1
        job = await api(client, "job", job_id)
        assert job["state"] == "RUNNING"
        await api(client, "job_action", job_id, "cancel")
        await until(lambda: state_is(client, job_id, "CANCELLED"), timeout=30, what="cancelled")
    finally:
        daemon.stop.set()
        await asyncio.wait_for(run, 20)
        sniff.cancel()


async def test_a_command_from_an_older_daemon_epoch_is_refused(
    tmp_path: Path, mosquitto: Broker, prefix: str, procs: Procs
) -> None:
    """A launch the first daemon published while the agent hung (never delivered),
    replayed after a newer daemon has commanded the agent: refused for its epoch."""
    conf = write_config(tmp_path, mosquitto, prefix, node_timeout_s=60.0)
    torchrun = fake_torchrun(tmp_path / "fake-torchrun")
    (tmp_path / "n1").mkdir()
    aconf = agent_config(
        tmp_path / "n1", mosquitto.url, prefix, "n1",
        key_file=str(tmp_path / "cluster.key"), torchrun=str(torchrun),
    )  # fmt: skip
    log = tmp_path / "n1.log"
    sniffer = Sniffer(mosquitto, prefix)
    ready = asyncio.Event()
    sniff = asyncio.create_task(sniffer.run(ready))
    spec = {
        "name": "quick",
        "command": [sys.executable, "-c", "pass"],
        "workdir": str(tmp_path),
        "resources": {"nodes": 1, "gpus_per_node": 1, "time_limit": "10m"},
    }
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with running_daemon(conf) as first:
            client = Client(first.config.daemon.socket)
            _start_agent(procs, aconf, log)

            async def n1_up() -> bool:
                nodes = await api(client, "nodes")
                return [(n["host"], n["state"]) for n in nodes] == [("n1", "up")]

            await until(n1_up, timeout=30, what="n1 up")
            # The agent hangs (its connection stays open: the broker and the daemon still
            # think it online), the daemon sends it a launch, and it dies without reading it.
            agent = procs.started[-1]
            agent.send_signal(signal.SIGSTOP)
            await api(client, "submit", spec)
            await until(sniffer.launches, what="launch to the hung agent")
            agent.kill()
            agent.wait(10)
            ((_, captured, _),) = sniffer.launches()
            old_epoch = first.sender.epoch
        async with running_daemon(conf) as second:
            assert second.sender.epoch > old_epoch
            _start_agent(procs, aconf, log)
            # The newer daemon commands the agent (it resends the launch, signed anew).
            await until(
                lambda: any(
                    _signed.decode(p).epoch == second.sender.epoch for _, p, _ in sniffer.launches()
                ),
                timeout=30,
                what="a launch from the newer daemon",
            )
            await until(lambda: sniffer.events("n1", Ack), timeout=30, what="acked")
            acks = len(sniffer.events("n1", Ack))
            await _publish(mosquitto, Topics(prefix).host("n1", "cmd"), captured)
            await until(lambda: _log_has(log, "stale_epoch"), what="old epoch refused")
            assert len(sniffer.events("n1", Ack)) == acks
    finally:
        sniff.cancel()


async def _publish(broker: Broker, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as c:
        await c.publish(topic, payload, qos=1)


async def test_dcd_refuses_to_start_without_a_key_unless_insecure_and_its_epoch_rises(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "dcsched.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    with pytest.raises(ConfigError, match=r"no \[cluster\] key_file.*--insecure"):
        await Daemon.open(load_config(str(conf)))
    assert not (tmp_path / "state").exists()
    d = await Daemon.open(load_config(str(conf)), insecure=True)
    await d.store.close()
    # Each start's epoch is above the last one's.
    again = await Daemon.open(load_config(str(conf)), insecure=True)
    await again.store.close()
    assert again.sender.epoch > d.sender.epoch > 0
