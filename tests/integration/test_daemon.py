"""The daemon against a real Mosquitto and a real SQLite file, with scripted agents."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from dcsched.client import ApiError, Client
from dcsched.daemon.service import Daemon
from tests.conftest import Broker
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    cancels,
    launches,
    run_on,
    running_daemon,
    state_is,
    until,
    write_config,
)

SPEC = {
    "name": "t",
    "command": ["train.py"],
    "workdir": "/tmp",
    "resources": {"nodes": 2, "gpus_per_node": 2, "time_limit": "10m"},
}

# Each test runs on both store backends.
pytestmark = pytest.mark.usefixtures("daemon_store")


async def test_two_node_job_runs_to_completed(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with (
        running_daemon(conf) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
        ScriptedAgent(mosquitto, prefix, "n2") as a2,
    ):
        client = Client(d.config.daemon.socket)
        await until(lambda: len(d.cluster.nodes) == 2, what="nodes")
        job_id = await api(client, "submit", SPEC)
        await until(lambda: len(launches(a1, a2)) == 2, what="launches")
        l1, l2 = sorted(launches(a1, a2), key=lambda c: c.node_rank)
        assert (l1.nnodes, l1.nproc_per_node, l1.gpus, l1.command) == (2, 2, [0, 1], ["train.py"])
        assert l1.master_port == l2.master_port
        assert l1.master_addr == l2.master_addr == "10.0.0.2"  # the rank-0 node's address
        assert (await api(client, "job", job_id))["state"] == "STARTING"
        rank_of = {a: (l1.node_rank if l1 in launches(a) else l2.node_rank) for a in (a1, a2)}
        for a in (a1, a2):
            await a.start(str(job_id), rank_of[a])
        await until(lambda: state_is(client, job_id, "RUNNING"), what="RUNNING")
        nodes = await api(client, "nodes")
        assert {n["host"]: n["gpus_allocated"] for n in nodes} == {"n1": 2, "n2": 2}
        for a in (a1, a2):
            await a.exit(str(job_id), rank_of[a], 0)
        await until(lambda: state_is(client, job_id, "COMPLETED"), what="COMPLETED")
        job = await api(client, "job", job_id)
        assert job["exit_code"] == 0
        assert [e["state"] for e in job["events"]] == [
            "PENDING",
            "STARTING",
            "RUNNING",
            "COMPLETED",
        ]


async def test_launch_is_resent_until_acknowledged(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as a1:
        a1.auto_ack = False
        client = Client(d.config.daemon.socket)
        await until(lambda: "n1" in d.cluster.nodes)
        job_id = await api(
            client, "submit", {**SPEC, "resources": {"nodes": 1, "gpus_per_node": 1}}
        )
        await until(lambda: len(a1.commands) >= 3, what="three sends of the launch")
        assert len({c.cmd_id for c in a1.commands}) == 1  # the same command each time
        a1.auto_ack = True
        await until(lambda: _no_unacked(d), what="ack recorded")
        sent = len(a1.commands)
        await asyncio.sleep(1.5)  # three retry intervals
        assert len(a1.commands) == sent  # an acknowledged command is not sent again
        assert (await api(client, "job", job_id))["state"] == "STARTING"


async def _no_unacked(d: Daemon) -> bool:
    return not await d.store.unacked_commands()


async def test_nonzero_exit_fails_the_job_and_stops_the_other_node(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with (
        running_daemon(conf) as d,
        ScriptedAgent(mosquitto, prefix, "n1") as a1,
        ScriptedAgent(mosquitto, prefix, "n2") as a2,
    ):
        client = Client(d.config.daemon.socket)
        await until(lambda: len(d.cluster.nodes) == 2)
        job_id = await api(client, "submit", SPEC)
        await until(lambda: len(launches(a1, a2)) == 2)
        by_rank = {c.node_rank: a for a in (a1, a2) for c in launches(a)}
        await by_rank[0].start(str(job_id), 0)
        await by_rank[1].start(str(job_id), 1)
        await by_rank[1].exit(str(job_id), 1, 3)
        await until(
            lambda: cancels(by_rank[0]),
            what="cancel to the surviving node",
        )
        assert (await api(client, "job", job_id))["state"] == "COMPLETING"
        await by_rank[0].exit(str(job_id), 0, None, signal=15, reason="cancelled")
        await until(lambda: state_is(client, job_id, "FAILED"))
        job = await api(client, "job", job_id)
        assert (job["exit_code"], job["signal"]) == (3, None)


async def test_bad_messages_are_dropped_and_the_daemon_keeps_its_jobs(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as a1:
        client = Client(d.config.daemon.socket)
        job_id = await api(client, "submit", {**SPEC, "resources": {"nodes": 9}})
        for kind, payload in (
            ("events", b"{not json"),
            ("telemetry", b'{"type":"telemetry"}'),
            ("status", b"\xff\xfe"),
            ("events", b'{"type":"ack","v":99}'),
        ):
            await a1.raw(kind, payload)
        await until(
            lambda: sum(sum(c.dropped.values()) for c in d.bus.codecs().values()) >= 4,
            what="four drops",
        )
        summary = await api(client, "cluster")
        assert summary["telemetry"]["dropped"]["events"] == {"invalid": 2}
        assert (await api(client, "job", job_id))["state"] == "PENDING"
        # A big job waits for resources with a reason, like squeue.
        await until(lambda: _reason(client, job_id))


async def _reason(client: Client, job_id: int) -> bool:
    return bool((await api(client, "job", job_id))["reason"])


async def test_invalid_submission_is_refused_and_nothing_is_queued(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d:
        client = Client(d.config.daemon.socket)
        with pytest.raises(ApiError) as err:
            await api(
                client, "submit", {"name": "x", "command": ["a"], "resources": {"gpu_per_node": 2}}
            )
        assert err.value.status == 400
        assert err.value.details["problems"][0]["key"] == "resources.gpu_per_node"
        assert "gpus_per_node" in err.value.details["problems"][0]["hint"]
        with pytest.raises(ApiError, match="not JSON"):
            await api(client, "request", "POST", "/v1/jobs", None)
        assert await api(client, "jobs", all_states=True) == []


async def test_a_node_that_dies_fails_its_jobs_as_node_fail(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix, node_timeout_s=1.0)
    async with running_daemon(conf) as d:
        client = Client(d.config.daemon.socket)
        async with ScriptedAgent(mosquitto, prefix, "n1") as a1:
            job_id = await api(client, "submit", {**SPEC, "resources": {"nodes": 1}})
            await run_on(a1, client, job_id)
            await a1.publish_status("offline")
        await until(lambda: state_is(client, job_id, "NODE_FAIL"), timeout=15)
        (node,) = await api(client, "nodes")
        assert node["state"] == "down"


async def test_a_restarted_daemon_finishes_the_jobs_it_had(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with ScriptedAgent(mosquitto, prefix, "n1") as a1:
        async with running_daemon(conf) as d:
            client = Client(d.config.daemon.socket)
            job_id = await api(client, "submit", {**SPEC, "resources": {"nodes": 1}})
            await run_on(a1, client, job_id)
        # The exit happens while the daemon is down; its persistent session keeps it queued.
        await a1.exit(str(job_id), 0, 0)
        async with running_daemon(conf) as d:
            client = Client(d.config.daemon.socket)
            await until(lambda: state_is(client, job_id, "COMPLETED"))
            assert len(launches(a1)) == 1  # not launched again


async def test_only_the_owner_or_an_admin_may_cancel(mosquitto: Broker, prefix: str) -> None:
    """Identity comes from SO_PEERCRED: another local user on the same socket is refused."""
    if os.geteuid() != 0 or not shutil.which("curl"):
        pytest.skip("needs root (to act as another user) and curl")
    d = Path(tempfile.mkdtemp(prefix="dcsched-perm-"))
    d.chmod(0o755)  # `nobody` must reach the socket
    try:
        conf = write_config(d, mosquitto, prefix)
        async with running_daemon(conf) as daemon:
            client = Client(daemon.config.daemon.socket)
            job_id = await api(client, "submit", {**SPEC, "resources": {"nodes": 99}})

            def as_nobody(path: str, method: str = "POST") -> dict[str, Any]:
                out = subprocess.run(
                    [
                        "curl",
                        "-s",
                        "--unix-socket",
                        daemon.config.daemon.socket,
                        "-X",
                        method,
                        f"http://localhost{path}",
                    ],
                    capture_output=True,
                    text=True,
                    user="nobody",
                    check=True,
                    timeout=10,
                )
                return dict(json.loads(out.stdout))

            who = await asyncio.to_thread(as_nobody, "/v1/whoami", "GET")
            assert who == {"uid": pwd.getpwnam("nobody").pw_uid, "user": "nobody", "admin": False}
            refused = await asyncio.to_thread(as_nobody, f"/v1/jobs/{job_id}/cancel")
            assert refused["error"]["code"] == "permission_denied"
            assert "belongs to root" in refused["error"]["message"]
            drain = await asyncio.to_thread(as_nobody, "/v1/nodes/x/drain")
            assert drain["error"]["code"] == "permission_denied"
            assert (await api(client, "job", job_id))["state"] == "PENDING"
            await api(client, "job_action", job_id, "cancel")  # root owns it
            assert (await api(client, "job", job_id))["state"] == "CANCELLED"
    finally:
        shutil.rmtree(d, ignore_errors=True)
