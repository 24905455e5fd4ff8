"""`dcd demo`: broker, daemon and simulated agents on this machine, in one command.

The broker is mosquitto when it is on PATH, else amqtt embedded in this process. The daemon
runs in this process; each agent is its own `dc-agent` process with simulated GPUs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from dcsched.daemon.jobs import Caller
from dcsched.daemon.service import Daemon
from dcsched.daemon.states import ACTIVE
from dcsched.protocol.config import load_config

log = logging.getLogger("dcsched.demo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _spawn(argv: list[str], log: Path) -> asyncio.subprocess.Process:
    """Starts a child in a session of its own: the terminal's Ctrl-C reaches only the demo,
    which then stops everything in order (jobs, daemon, agents, broker)."""
    with log.open("wb") as f:  # the child keeps its own copy of the file
        return await asyncio.create_subprocess_exec(
            *argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


async def _stop(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _start_broker(stack: AsyncExitStack, kind: str, workdir: Path, port: int) -> str:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if kind == "mosquitto" or (kind == "auto" and binary):
        if binary is None:
            raise SystemExit("dcd demo: --broker mosquitto, but mosquitto is not installed")
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = await _spawn([binary, "-c", str(conf)], workdir / "mosquitto.log")
        stack.push_async_callback(_stop, proc)
        await _wait_port(port)
        return f"mosquitto {port}"
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise SystemExit(
            "dcd demo needs mosquitto on PATH or the amqtt package: pip install 'dcsched[demo]'"
        ) from None
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stack.push_async_callback(broker.shutdown)
    return f"amqtt (embedded) {port}"


def _write_configs(d: Path, port: int, agents: int, gpus: int) -> tuple[Path, list[Path]]:
    key = d / "cluster.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    torchrun = Path(sys.executable).with_name("torchrun")
    common = f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n\n[cluster]\nkey_file = "{key}"\n\n'
    daemon = d / "dcsched.toml"
    daemon.write_text(
        common + f'[daemon]\nstate_dir = "{d / "dcd"}"\nsocket = "{d / "dcd.sock"}"\n'
        f'metrics_listen = "127.0.0.1:{_free_port()}"\nsocket_mode = 0o600\n'
        "node_timeout_s = 10.0\ncancel_grace_s = 5.0\n"
    )
    agent_files = []
    for i in range(1, agents + 1):
        f = d / f"agent-{i}.toml"
        f.write_text(
            common + f'[agent]\nhost = "sim-{i}"\nbackend = "sim"\nsim_gpus = {gpus}\n'
            f'interval_s = 1.0\nadvertise_addr = "127.0.0.1"\nstate_dir = "{d / f"agent-{i}"}"\n'
            f'torchrun = "{torchrun if torchrun.exists() else "torchrun"}"\n'
        )
        agent_files.append(f)
    return daemon, agent_files


async def run_demo(agents: int, gpus: int, folder: str | None, broker_kind: str) -> int:
    d = Path(folder or tempfile.mkdtemp(prefix="dcsched-demo-")).resolve()
    d.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    async with AsyncExitStack() as stack:
        what = await _start_broker(stack, broker_kind, d, port)
        daemon_conf, agent_confs = _write_configs(d, port, agents, gpus)
        daemon = await Daemon.open(load_config(str(daemon_conf)))
        loop = asyncio.get_running_loop()
        quit_demo = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Ctrl-C first cancels the jobs, while the daemon still hears their exits.
            loop.add_signal_handler(sig, quit_demo.set)
        procs = [
            await _spawn(
                [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(conf)],
                d / f"{conf.stem}.log",
            )
            for conf in agent_confs
        ]
        run = asyncio.create_task(daemon.run(), name="dcd")
        await daemon.ready.wait()
        sock = daemon.config.daemon.socket
        examples = Path(__file__).resolve().parents[2] / "examples"
        print(
            f"""
dcsched demo: broker {what}, daemon, {agents} agents x {gpus} simulated GPUs
state and logs in {d}

Watch it live in another shell:
    DCSCHED_SOCKET={sock} dctop

and drive it from a third:
    export DCSCHED_SOCKET={sock}
    dcctl nodes
    dcsub {examples / "allreduce.toml"}
    dcctl queue

Ctrl-C stops the demo (running jobs are cancelled first).
""",
            flush=True,
        )
        try:
            await quit_demo.wait()
        finally:
            await _cancel_all(daemon)
            daemon.stop.set()
            await run
            await asyncio.gather(*(_stop(p) for p in procs))
    print("dcsched demo stopped", flush=True)
    return 0


async def _cancel_all(daemon: Daemon, timeout: float = 15.0) -> None:
    """Jobs must not outlive the demo: cancel them and wait for their nodes to report."""
    root = Caller(os.getuid(), "demo", admin=True)
    active = await daemon.store.jobs(ACTIVE)
    for job in active:
        await daemon.jobs.cancel(job.id, root)
    deadline = time.monotonic() + timeout
    while active and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        active = await daemon.store.jobs(ACTIVE)
