"""What the daemon refuses on the wire, and counts: messages naming another host than their
topic, hosts outside `[daemon] hosts`, telemetry and events from hosts that never sent a
status (kept nowhere), and events about jobs it does not know (no traceback)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from dcsched.client import Client
from dcsched.daemon.metrics import render
from dcsched.protocol.codec import encode
from dcsched.protocol.messages import (
    Ack,
    GpuSample,
    JobExited,
    JobReport,
    JobStarted,
    LogChunk,
    Telemetry,
)
from dcsched.protocol.topics import Topics
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    running_daemon,
    until,
    write_config,
)

pytestmark = pytest.mark.faults  # the attacks of docs/reliability.md


def _telemetry(host: str) -> bytes:
    return encode(Telemetry(host=host, ts=time.time(), seq=1, gpus=[GpuSample(index=0, uuid="g")]))


async def test_refused_hosts_and_messages_are_counted_and_kept_nowhere(
    tmp_path: Path, mosquitto: Broker, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, hosts=["n*"])
    async with (
        running_daemon(conf) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as n1,
        ScriptedAgent(mosquitto, prefix, "evil") as evil,  # online, 2 GPUs: not admitted
        aiomqtt.Client(mosquitto.host, mosquitto.port) as ghost,  # never sends a status
    ):
        client = Client(d.config.daemon.socket)
        dropped = d.bus.codecs()
        await until(lambda: d.cluster.is_online("n1"), what="n1 online")
        # n1 speaks for n2 on its own topics.
        await n1.raw("status", encode(n1.status().__class__(host="n2", state="online", ts=1.0)))
        await n1.raw("telemetry", _telemetry("n2"))
        await n1.raw("events", encode(Ack(host="n2", cmd_id="x", job_id="1")))
        # A host name with no status: its telemetry and events are dropped.
        topics = Topics(prefix)
        for i in range(50):  # invented host names (admitted by the pattern)
            await ghost.publish(topics.host(f"n{i + 100}", "telemetry"), _telemetry(f"n{i + 100}"))
        exited = JobExited(host="n9", job_id="1", node_rank=0, ts=1.0)
        await ghost.publish(topics.host("n9", "events"), encode(exited), qos=1)
        await until(
            lambda: (
                dropped["telemetry"].dropped["no_status"] >= 50
                and dropped["events"].dropped["no_status"] == 1
                and dropped["telemetry"].dropped["host_mismatch"] == 1
                and dropped["status"].dropped["host_mismatch"] == 1
                and dropped["events"].dropped["host_mismatch"] == 1
                and dropped["status"].dropped["unknown_host"] >= 1
                and dropped["telemetry"].dropped["unknown_host"] >= 1
            ),
            what="every refusal counted",
        )
        # (n1's telemetry right behind its first status was not refused)
        assert dropped["telemetry"].dropped["no_status"] == 50
        assert set(d.cluster.nodes) == {"n1"} and set(d.ingest.hosts) <= {"n1"}
        assert "evil" not in {n["host"] for n in await api(client, "nodes")}
        cluster = await api(client, "cluster")
        assert cluster["telemetry"]["dropped"]["status"]["unknown_host"] >= 1
        assert cluster["epoch"] == d.sender.epoch >= int(time.time()) - 60
        text = render(d.read).decode()
        assert 'dcsched_messages_dropped_total{kind="status",reason="unknown_host"}' in text
        assert 'dcsched_messages_dropped_total{kind="telemetry",reason="no_status"} 50.0' in text

        # Events about jobs the daemon does not know: dropped quietly, the daemon goes on.
        with caplog.at_level(logging.INFO):
            for job in ("999", "abc", "-1", "1" * 40, ""):
                await n1.event(JobStarted(host="n1", job_id=job, node_rank=0, pid=1, ts=1.0))
                await n1.event(JobExited(host="n1", job_id=job, node_rank=0, ts=1.0))
                await n1.event(JobReport(host="n1", cmd_id="q", job_id=job, running=[0]))
                await n1.event(Ack(host="n1", cmd_id="nope", job_id=job))
                await n1.event(
                    LogChunk(host="n1", cmd_id="nope", job_id=job, node_rank=0, offset=0, size=0)
                )
            # A status after them: events are handled in order, so when this one is, all are.
            marker = msgspec.structs.replace(n1.status(), ts=12345.0)
            await n1.raw("status", encode(marker))
            await until(lambda: d.cluster.nodes["n1"].status.ts == 12345.0, what="handled")
            await until(lambda: api(client, "health"), what="daemon answers")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        await evil.publish_status()  # still refused
        await until(lambda: dropped["status"].dropped["unknown_host"] >= 2, what="refused")
        assert "evil" not in d.cluster.nodes
