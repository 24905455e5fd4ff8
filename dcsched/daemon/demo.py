"""`dcd demo`: broker, daemon and simulated agents on this machine, in one command.

The broker is mosquitto when it is on PATH, else amqtt embedded in this process. The daemon
runs in this process; each agent is its own `dc-agent` process with simulated GPUs.

Nothing of the demo outlives it. Ctrl-C, SIGTERM and SIGHUP (the terminal closed) all
cancel the jobs and then stop the daemon, the agents and the broker, in that order. If the
demo dies without that (SIGKILL, a crash), the kernel kills the broker and the agents
(PR_SET_PDEATHSIG), and a guard process kills the jobs: a job's runner detaches from its
agent on purpose, so only the token in every child's environment still finds it (see
`dcsched.daemon.children`). The guard also sweeps after a clean stop, for a job whose cancel
did not finish in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from dcsched.daemon.brokerauth import DAEMON_USER, BrokerAuth, write_broker_auth, write_private
from dcsched.daemon.children import Guard, die_with_parent
from dcsched.daemon.errors import DaemonError
from dcsched.daemon.jobs import Caller
from dcsched.daemon.service import Daemon
from dcsched.protocol.config import load_config

log = logging.getLogger("dcsched.demo")

# Ctrl-C, `kill`, and the terminal going away: each stops the demo in order.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def _say(text: str) -> None:
    """Prints, unless the terminal is gone (closed: EIO; a closed pipe: EPIPE): the demo
    still has to stop everything after that."""
    try:
        print(text, flush=True)
    except OSError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)


async def _spawn(argv: list[str], log: Path, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Starts a child in a session of its own: the terminal's Ctrl-C and hang-up reach only
    the demo, which then stops everything in order (jobs, daemon, agents, broker). The
    kernel kills the child if the demo dies without doing so."""
    with log.open("wb") as f:  # the child keeps its own copy of the file
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env),
            preexec_fn=die_with_parent(signal.SIGKILL),
        )


async def _stop(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _start_broker(
    stack: AsyncExitStack,
    kind: str,
    workdir: Path,
    port: int,
    env: Mapping[str, str],
    auth: BrokerAuth,
) -> str:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if kind == "mosquitto" or (kind == "auto" and binary):
        if binary is None:
            raise SystemExit("dcd demo: --broker mosquitto, but mosquitto is not installed")
        conf = workdir / "mosquitto.conf"
        # Started as root, mosquitto switches to its own user unless told to stay: and a
        # change of user clears the parent-death signal that ties it to the demo.
        me = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(
            f"listener {port} 127.0.0.1\npersistence false\nuser {me}\n"
            f"allow_anonymous false\npassword_file {auth.password_file}\n"
            f"acl_file {auth.acl_file}\n"
        )
        proc = await _spawn([binary, "-c", str(conf)], workdir / "mosquitto.log", env)
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
        "plugins": _amqtt_auth(auth),
    }
    broker = Broker(config)
    await broker.start()
    stack.push_async_callback(broker.shutdown)
    return f"amqtt (embedded) {port}"


def _amqtt_auth(auth: BrokerAuth) -> dict[str, Any]:
    """amqtt's plugins for the same users and topics as the Mosquitto ACL: a password file
    (argon2 hashes, through amqtt's own pwdlib) and publish/subscribe ACLs."""
    try:
        from pwdlib.hashers.argon2 import Argon2Hasher
    except Exception:  # ImportError, or pwdlib's HasherNotAvailable without argon2-cffi
        log.warning(
            "INSECURE: amqtt without pwdlib/argon2 cannot check passwords: the demo's broker "
            "accepts anonymous clients (commands are still signed with the cluster key)"
        )
        return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    hasher = Argon2Hasher()
    users = {user: Path(f).read_text().strip() for user, f in auth.passwords.items()}
    pw = auth.folder / "amqtt.passwd"
    write_private(pw, "".join(f"{u}:{hasher.hash(p)}\n" for u, p in users.items()))
    publish: dict[str, list[str]] = {}
    subscribe: dict[str, list[str]] = {}
    for user, rules in auth.rules.items():
        publish[user] = rules.get("write", []) + rules.get("readwrite", [])
        subscribe[user] = rules.get("read", []) + rules.get("readwrite", [])
    return {
        "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(pw)},
        "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
            "publish_acl": publish,
            "acl": subscribe,
        },
    }


def _hosts(agents: int) -> list[str]:
    return [f"sim-{i}" for i in range(1, agents + 1)]


def _write_configs(
    d: Path, port: int, agents: int, gpus: int, auth: BrokerAuth
) -> tuple[Path, list[Path]]:
    key = d / "cluster.key"
    write_private(key, secrets.token_hex(32))
    torchrun = Path(sys.executable).with_name("torchrun")

    def common(user: str) -> str:
        return (
            f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
            f'password_file = "{auth.passwords[user]}"\n\n[cluster]\nkey_file = "{key}"\n\n'
        )

    daemon = d / "dcsched.toml"
    daemon.write_text(
        common(DAEMON_USER) + f'[daemon]\nstate_dir = "{d / "dcd"}"\nsocket = "{d / "dcd.sock"}"\n'
        f'metrics_listen = "127.0.0.1:{_free_port()}"\nsocket_mode = 0o600\n'
        "node_timeout_s = 10.0\ncancel_grace_s = 5.0\n"
    )
    agent_files = []
    for i, host in enumerate(_hosts(agents), 1):
        f = d / f"agent-{i}.toml"
        f.write_text(
            common(host) + f'[agent]\nhost = "{host}"\nbackend = "sim"\nsim_gpus = {gpus}\n'
            f'interval_s = 1.0\nadvertise_addr = "127.0.0.1"\nstate_dir = "{d / f"agent-{i}"}"\n'
            f'torchrun = "{torchrun if torchrun.exists() else "torchrun"}"\n'
        )
        agent_files.append(f)
    return daemon, agent_files


async def run_demo(agents: int, gpus: int, folder: str | None, broker_kind: str) -> int:
    d = Path(folder or tempfile.mkdtemp(prefix="dcsched-demo-")).resolve()
    d.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    quit_demo = asyncio.Event()
    for sig in STOP_SIGNALS:
        # The first signal cancels the jobs, while the daemon still hears their exits.
        loop.add_signal_handler(sig, quit_demo.set)
    # First of all, so that whatever starts after it is covered.
    with (d / "guard.log").open("wb") as guard_log:
        guard = Guard.start(secrets.token_hex(16), guard_log)
    try:
        await _run(d, agents, gpus, broker_kind, guard.env(), quit_demo)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        # Everything was stopped in order: the guard finds nothing, unless a job's cancel
        # did not finish in time.
        await asyncio.to_thread(guard.close)
    _say("dcsched demo stopped")
    return 0


async def _run(
    d: Path,
    agents: int,
    gpus: int,
    broker_kind: str,
    env: Mapping[str, str],
    quit_demo: asyncio.Event,
) -> None:
    port = _free_port()
    async with AsyncExitStack() as stack:  # stops in the reverse order of the starts
        # Each agent logs in as its host, the daemon as "dcd"; the ACL fences their topics.
        auth = write_broker_auth(d / "broker", _hosts(agents))
        what = await _start_broker(stack, broker_kind, d, port, env, auth)
        daemon_conf, agent_confs = _write_configs(d, port, agents, gpus, auth)
        daemon = await Daemon.open(load_config(str(daemon_conf)))
        for conf in agent_confs:
            argv = [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(conf)]
            stack.push_async_callback(_stop, await _spawn(argv, d / f"{conf.stem}.log", env))
        run = asyncio.create_task(daemon.run(), name="dcd")
        stack.push_async_callback(_stop_daemon, daemon, run)
        quitting = asyncio.create_task(quit_demo.wait())
        stack.callback(quitting.cancel)
        ready = asyncio.create_task(daemon.ready.wait())
        stack.callback(ready.cancel)
        await asyncio.wait({ready, quitting, run}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not quitting.done() and not run.done():
            _say(_banner(d, what, agents, gpus, daemon.config.daemon.socket))
            await asyncio.wait({quitting, run}, return_when=asyncio.FIRST_COMPLETED)


def _banner(d: Path, what: str, agents: int, gpus: int, sock: str) -> str:
    examples = Path(__file__).resolve().parents[2] / "examples"
    return f"""
dcsched demo: broker {what}, daemon, {agents} agents x {gpus} simulated GPUs
state and logs in {d}
cluster key {d / "cluster.key"}; broker users, passwords and ACL in {d / "broker"}

Watch it live in another shell:
    DCSCHED_SOCKET={sock} dctop

and drive it from a third:
    export DCSCHED_SOCKET={sock}
    dcctl nodes
    dcsub {examples / "allreduce.toml"}
    dcctl queue

Ctrl-C stops the demo (running jobs are cancelled first).
"""


async def _stop_daemon(daemon: Daemon, run: asyncio.Task[None]) -> None:
    """Jobs first, while the agents and the daemon still run to hear their exits."""
    if not run.done():
        try:
            await _cancel_all(daemon)
        except Exception:
            log.exception("cancelling the jobs failed; the guard will kill what is left")
    daemon.stop.set()
    await run


async def _cancel_all(daemon: Daemon, timeout: float = 15.0) -> None:
    """Jobs must not outlive the demo: cancel them and wait for their nodes to report."""
    root = Caller(os.getuid(), "demo", admin=True)
    for job_id in list(daemon.model.running):
        with contextlib.suppress(DaemonError):
            await daemon.jobs.act(job_id, root, daemon.jobs.cancel_event(root))
    deadline = time.monotonic() + timeout
    while daemon.model.running and time.monotonic() < deadline:  # noqa: ASYNC110 - a dict
        await asyncio.sleep(0.5)
