"""Every shell command of docs/admin-guide.md, in order, in a scratch directory standing for `/`
(the paths of the guide are rewritten into it), against a real daemon and a real agent on a
real broker. `systemctl stop|start|restart dcd|dc-agent` stop and start those for real.

What cannot run here is listed in NOT_HERE with the reason (it would change this machine's
packages, users or systemd, or download from PyPI); tests/integration/test_install.py checks
what those commands set up. A command that is neither run nor listed fails the test, so the
guide cannot grow a command that nobody tries.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from dcsched.agents import main as agent_main
from dcsched.agents.agent import Agent
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import load_config
from tests.conftest import Broker
from tests.integration.daemon_harness import KEY, until

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "admin-guide.md"
HOST = "gpu-host-01"

# command prefix -> why it is not run here
NOT_HERE = {
    "apt-get install": "installs packages on this machine",
    "groupadd": "adds a group to this machine",
    "useradd": "adds a user to this machine",
    "usermod": "changes a user of this machine",
    "chown root:dcsched": "needs the dcsched group (groupadd, above)",
    "chown dcsched:dcsched": "needs the dcsched user (useradd, above)",
    "/opt/dcsched/bin/pip install": "downloads from PyPI; test_install.py installs the wheel",
    "systemctl daemon-reload": "systemd is not PID 1 here; test_install.py verifies the units",
    "systemctl enable --now": "systemd is not PID 1 here; test_install.py verifies the units",
    "systemctl status": "systemd is not PID 1 here",
    "systemctl restart mosquitto": "would restart this machine's broker",
}


def guide_commands() -> list[tuple[str, str]]:
    """(section, command) for every command of the guide's ```sh blocks, in order."""
    out = []
    section = ""
    in_sh = False
    pending = ""
    for line in GUIDE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.strip() == "```sh":
            in_sh = True
        elif line.strip() == "```":
            in_sh = False
        elif in_sh:
            text = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment
            if text.startswith("#") or not text:
                continue
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            out.append((section, pending + text))
            pending = ""
    return out


def test_every_command_is_either_run_or_said_why_not() -> None:
    cmds = guide_commands()
    assert len(cmds) > 30
    runnable = [c for _, c in cmds if not any(c.startswith(p) for p in NOT_HERE)]
    assert all(c.split()[0] in RUNS for c in runnable), [
        c for c in runnable if c.split()[0] not in RUNS
    ]
    assert all(any(c.startswith(p) for _, c in cmds) for p in NOT_HERE)  # none stale


# programs the scratch run can run for real (with the guide's paths rewritten)
RUNS = {
    "python3",
    "ln",
    "install",
    "head",
    "cp",
    "/opt/dcsched/bin/dcd",
    "dcctl",
    "mosquitto_passwd",
    "/opt/dcsched/bin/dc-agent",
    "sqlite3",
    "rm",
    "systemctl",
}


class Cluster:
    """The daemon and the agent the guide's commands act on, stopped and started by them."""

    def __init__(self, daemon_conf: Path, agent_conf: Path) -> None:
        self.daemon_conf, self.agent_conf = daemon_conf, agent_conf
        self.daemon: Daemon | None = None
        self.agent: Agent | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, unit: str) -> None:
        if unit == "dcd":
            self.daemon = await Daemon.open(load_config(str(self.daemon_conf)))
            self._tasks[unit] = asyncio.create_task(self.daemon.run())
            await asyncio.wait_for(self.daemon.bus.connected.wait(), 10)
        else:
            self.agent = Agent(load_config(str(self.agent_conf)))
            self._tasks[unit] = asyncio.create_task(self.agent.run())
            await asyncio.wait_for(self.agent.connected.wait(), 10)

    async def stop(self, unit: str) -> None:
        task = self._tasks.pop(unit, None)
        if task is None:
            return
        if unit == "dcd" and self.daemon is not None:
            self.daemon.stop.set()
        elif self.agent is not None:
            self.agent.stop()
        await asyncio.wait_for(task, 20)

    async def systemctl(self, action: str, unit: str) -> None:
        if action in ("stop", "restart"):
            await self.stop(unit)
        if action in ("start", "restart"):
            await self.start(unit)


def _scratch(root: Path) -> None:
    for d in ("etc/systemd/system", "etc/mosquitto/conf.d", "usr/local/bin", "var/lib/dcsched"):
        (root / d).mkdir(parents=True, exist_ok=True)


def _rewrite(cmd: str, root: Path) -> str:
    return re.sub(
        r"(?<=[\s'\"=])(/opt/dcsched|/etc/|/var/lib/dcsched|/usr/local/bin|/backup)",
        lambda m: f"{root}{m.group(1)}",
        " " + cmd,
    ).strip()


async def _install_wheel(venv: Path, wheel: Path) -> None:
    """What `pip install 'dcsched[...]'` would put in the virtualenv: the wheel built here,
    its dependencies read from this environment's site-packages."""
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    proc = await asyncio.create_subprocess_exec(*pip, "install", "-q", "--no-deps", str(wheel))
    assert await proc.wait() == 0
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "dev-deps.pth").write_text(f"{ours}\n")


@pytest.mark.timeout(240)
async def test_the_admin_guide_runs(
    tmp_path: Path, mosquitto: Broker, prefix: str, wheel: Path
) -> None:
    head, gpu = tmp_path / "head", tmp_path / "gpu"
    for root in (head, gpu):
        _scratch(root)
    key = tmp_path / "cluster.key"
    key.write_bytes(KEY)
    sock = head / "run" / "dcsched" / "dcsched.sock"
    daemon_conf = tmp_path / "daemon.toml"
    daemon_conf.write_text(
        f'[broker]\nurl = "{mosquitto.url}"\ntopic_prefix = "{prefix}"\n'
        f'[cluster]\nkey_file = "{key}"\n'
        f'[daemon]\nstate_dir = "{head}/var/lib/dcsched"\nsocket = "{sock}"\n'
        'metrics_listen = ""\nnode_timeout_s = 5.0\npass_interval_s = 0.5\n'
    )
    agent_conf = tmp_path / "agent.toml"
    agent_conf.write_text(
        f'[broker]\nurl = "{mosquitto.url}"\ntopic_prefix = "{prefix}"\n'
        f'[cluster]\nkey_file = "{key}"\n'
        f'[agent]\nhost = "{HOST}"\nbackend = "sim"\nsim_gpus = 2\ninterval_s = 0.2\n'
        f'state_dir = "{tmp_path}/agent-state"\n'
    )
    cluster = Cluster(daemon_conf, agent_conf)
    await cluster.start("dcd")
    await cluster.start("dc-agent")
    d = cluster.daemon
    assert d is not None
    await until(lambda: HOST in d.cluster.nodes, what="the GPU host")
    # Before the health section: a fault on the GPU host, as the guide's sim-fault makes.
    fault = ["sim-fault", "--config", str(agent_conf), "--gpu", "1", "--kind", "xid"]
    assert await asyncio.to_thread(agent_main.main, [*fault, "--code", "79"]) == 0
    await until(lambda: d.cluster.nodes[HOST].drained, what="drained")

    skipped: list[str] = []
    ran: list[str] = []
    outputs: dict[str, str] = {}
    before_backup: int | None = None
    try:
        for section, cmd in guide_commands():
            if any(cmd.startswith(p) for p in NOT_HERE):
                skipped.append(cmd)
                if cmd.startswith("/opt/dcsched/bin/pip install"):
                    venv = (gpu if section == "GPU hosts" else head) / "opt" / "dcsched"
                    if (venv / "bin" / "python").exists() and "--upgrade" not in cmd:
                        await _install_wheel(venv, wheel)
                continue
            ran.append(cmd)
            words = cmd.split()
            if words[0] == "systemctl":
                await cluster.systemctl(words[1], words[2])
                continue
            if cmd.startswith("sqlite3") and ".backup" in cmd:
                # A job the backup has, and one submitted after it, which the restore undoes.
                before_backup = await _submit(sock)
            root = gpu if section == "GPU hosts" else head
            cwd = tmp_path / "cwd"
            cwd.mkdir(exist_ok=True)
            if section == "GPU hosts":  # what the admin brings over from the head node
                for f in ("dcsched.toml", "cluster.key"):
                    src = head / "etc" / "dcsched" / f
                    (cwd / f).write_bytes(src.read_bytes())
            env = {
                **os.environ,
                "PATH": f"{head}/usr/local/bin:{os.environ['PATH']}",
                "DCSCHED_SOCKET": str(sock),
                "DCSCHED_CONFIG": str(
                    agent_conf if "sim-fault" in cmd else root / "etc" / "dcsched" / "dcsched.toml"
                ),
            }
            env.pop("VIRTUAL_ENV", None)
            shell = _rewrite(cmd, root)
            proc = await asyncio.create_subprocess_shell(
                shell,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate(b"secret\nsecret\n")  # mosquitto_passwd asks twice
            text = out.decode()
            assert proc.returncode == 0, f"{section}: {shell}\n{text}"
            outputs[cmd] = text
            if before_backup is not None and cmd.startswith("sqlite3"):
                assert await _submit(sock) > before_backup  # not in the backup
    finally:
        await cluster.stop("dc-agent")
        await cluster.stop("dcd")

    assert len(ran) + len(skipped) == len(guide_commands())  # each one run or said why not
    # What the commands did, looked at.
    assert "unhealthy: GPU 1: XID 79" in outputs["dcctl nodes"]
    assert "drain" in outputs[f"dcctl node-events {HOST}"]
    assert (head / "usr" / "local" / "bin" / "dcctl").resolve() == (
        head / "opt" / "dcsched" / "bin" / "dcctl"
    )
    assert len((head / "etc" / "dcsched" / "cluster.key").read_text().strip()) >= 40
    assert (head / "etc" / "mosquitto" / "dcsched.passwd").read_text().startswith("dcd:")
    assert (gpu / "etc" / "dcsched" / "cluster.key").stat().st_mode & 0o777 == 0o600
    assert "ok for dc-agent" in outputs["/opt/dcsched/bin/dc-agent check-config"]
    # The restore brought back the state of the backup: the later job is gone.
    assert before_backup is not None
    db = sqlite3.connect(head / "var" / "lib" / "dcsched" / "dcsched.db")
    ids = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY id")]
    db.close()
    assert ids[-1] == before_backup


async def _submit(sock: Path) -> int:
    from dcsched.client import Client

    spec: dict[str, Any] = {
        "name": "t",
        "command": ["train.py"],
        "workdir": "/tmp",
        "resources": {"nodes": 1, "gpus_per_node": 1},
        "hold": True,
    }
    return int(await asyncio.to_thread(Client(str(sock)).submit, spec))
