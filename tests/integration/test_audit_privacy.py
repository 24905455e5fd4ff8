"""Who sees what and the audit log, against a real daemon: root (an admin) and `nobody`
(another local user) on the same socket, told apart by SO_PEERCRED."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcsched.cli import dcctl
from dcsched.client import ApiError, Client
from dcsched.daemon.service import Daemon
from tests.conftest import Broker
from tests.integration.daemon_harness import ScriptedAgent, api, running_daemon, until, write_config

pytestmark = pytest.mark.faults  # the attacks of docs/reliability.md

SPEC = {
    "name": "secretive",
    "command": ["train.py", "--token=s3cret-arg"],
    "workdir": "/tmp",
    "env": {"HF_TOKEN": "s3cret-env"},
    "resources": {"nodes": 99, "gpus_per_node": 1},  # waits: nothing can run it
}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A state folder `nobody` can reach the socket in."""
    if os.geteuid() != 0 or not shutil.which("curl"):
        pytest.skip("needs root (to act as another user) and curl")
    d = Path(tempfile.mkdtemp(prefix="dcsched-audit-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody(daemon: Daemon, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
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
    body, _, code = out.stdout.rpartition("\n")
    return int(code), dict(json.loads(body))


async def test_others_see_the_queue_not_secrets_and_every_refusal_is_audited(
    shared_dir: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = write_config(shared_dir, mosquitto, prefix)
    async with running_daemon(conf) as d:
        client = Client(d.config.daemon.socket)
        job_id = await api(client, "submit", SPEC)

        def nobody(path: str, method: str = "GET") -> Any:
            return asyncio.to_thread(_as_nobody, d, path, method)

        # The owner (root) sees everything; `nobody` sees the header, not the secrets.
        assert (await api(client, "job", job_id))["spec"]["env"] == {"HF_TOKEN": "s3cret-env"}
        status, shown = await nobody(f"/v1/jobs/{job_id}")
        assert status == 200
        assert (shown["name"], shown["user"], shown["state"]) == ("secretive", "root", "PENDING")
        assert shown["hidden"] == ["command", "env", "torchrun", "workdir"]
        assert "s3cret" not in json.dumps(shown)
        status, listing = await nobody("/v1/jobs")
        assert [j["id"] for j in listing["jobs"]] == [job_id]
        assert "s3cret" not in json.dumps(listing)

        status, refused = await nobody(f"/v1/jobs/{job_id}/logs")
        assert status == 403
        assert "only its owner or an admin" in refused["error"]["message"]
        status, _ = await nobody(f"/v1/jobs/{job_id}/cancel", "POST")
        assert status == 403
        status, _ = await nobody("/v1/audit?user=root")
        assert status == 403

        # A user reads only their own entries: here, their refusals.
        status, mine = await nobody("/v1/audit")
        assert status == 200
        assert {e["user"] for e in mine["entries"]} == {"nobody"}
        assert [(e["action"], e["result"], e["status"]) for e in mine["entries"]][::-1] == [
            ("read_log", "refused", 403),
            ("cancel", "refused", 403),
            ("read_audit", "refused", 403),
        ]
        assert (await api(client, "job", job_id))["state"] == "PENDING"

        # The admin's changes ride with them; the admin reads everyone's.
        await api(client, "job_action", job_id, "hold")
        entries = await api(client, "audit")
        got = [(e["user"], e["action"], e["target"], e["result"]) for e in reversed(entries)]
        assert got == [
            ("root", "submit", f"job {job_id}", "ok"),
            ("nobody", "read_log", f"job {job_id}", "refused"),
            ("nobody", "cancel", f"job {job_id}", "refused"),
            ("nobody", "read_audit", "", "refused"),
            ("root", "hold", f"job {job_id}", "ok"),
        ]
        assert entries[0]["detail"] == "PENDING -> HELD"
        assert [e["action"] for e in await api(client, "audit", user="nobody")] == [
            "read_audit",
            "cancel",
            "read_log",
        ]
        assert await api(client, "audit", since=entries[0]["ts"]) == entries[:1]


async def test_drain_and_resume_keep_who_when_and_why(
    tmp_path: Path, mosquitto: Broker, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path, mosquitto, prefix)
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1"):
        client = Client(d.config.daemon.socket)
        await until(lambda: "n1" in d.cluster.nodes, what="node n1")
        await api(client, "node_action", "n1", "drain", "bad fan")
        await api(client, "node_action", "n1", "resume", "fan replaced")
        await api(client, "node_action", "n1", "drain")
        hist = await api(client, "drain_history", "n1")
        assert hist["drained"] and hist["reason"] == "by root"
        assert [(h["user"], h["drained"], h["reason"]) for h in hist["history"]] == [
            ("root", True, "bad fan"),
            ("root", False, "fan replaced"),
            ("root", True, "by root"),
        ]
        with pytest.raises(ApiError) as err:
            await api(client, "node_action", "ghost", "drain")
        assert err.value.status == 404
        with pytest.raises(ApiError):
            await api(client, "submit", {"name": "x", "command": ["a"], "nodez": 1})
        entries = await api(client, "audit")
        assert "unknown key 'nodez'" in entries[0]["detail"]
        actions = [(e["action"], e["target"], e["result"]) for e in entries]
        assert actions == [
            ("submit", "", "refused"),
            ("drain", "node ghost", "refused"),
            ("drain", "node n1", "ok"),
            ("resume", "node n1", "ok"),
            ("drain", "node n1", "ok"),
        ]

        # The same through dcctl.
        sock = ["--socket", d.config.daemon.socket]
        capsys.readouterr()
        assert await asyncio.to_thread(dcctl.main, [*sock, "show-node", "n1"]) == 0
        shown = capsys.readouterr().out
        assert "Reason = by root" in shown and "fan replaced" in shown
        assert await asyncio.to_thread(dcctl.main, [*sock, "audit", "--since", "1h"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 + len(entries)
        assert lines[-1].split()[1:4] == ["root", "submit", "refused"]
