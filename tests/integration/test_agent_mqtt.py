"""dc-agent against a real Mosquitto: status and will, telemetry, signed commands, real torchrun,
re-adoption across an agent restart, events kept through a broker outage, and exits resent
through a broker crash until the daemon acknowledges them.

Each test has its own topic prefix on the session's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcsched.agents import agent as agent_mod
from dcsched.agents.agent import Agent
from dcsched.protocol.codec import event_codec, sign, status_codec, telemetry_codec
from dcsched.protocol.config import load_config
from dcsched.protocol.jobspec import runs_python
from dcsched.protocol.messages import (
    Ack,
    AckExit,
    Command,
    JobExited,
    JobReport,
    JobStarted,
    Launch,
    QueryJob,
)
from dcsched.protocol.topics import Topics
from tests.conftest import Broker, free_port, restart_mosquitto, start_mosquitto
from tests.conftest import fake_torchrun as write_fake_torchrun

ROOT = Path(__file__).resolve().parents[2]
TEST_KEY = b"agent-mqtt-test-cluster-key-0000"


def agent_config(
    d: Path,
    broker_url: str,
    prefix: str,
    host: str,
    *,
    key_file: str = "",
    torchrun: str = "",
    interval_s: float = 0.5,
    sim_gpus: int = 2,
    exit_resend_s: float = 10.0,
) -> Path:
    path = d / f"{host}.toml"
    if not key_file:
        key_file = str(d / "cluster.key")
        Path(key_file).write_bytes(TEST_KEY)
    path.write_text(
        f'[broker]\nurl = "{broker_url}"\ntopic_prefix = "{prefix}"\nkeepalive_s = 5\n'
        f'[cluster]\nkey_file = "{key_file}"\n'
        f'[agent]\nhost = "{host}"\nbackend = "sim"\nsim_gpus = {sim_gpus}\n'
        f'interval_s = {interval_s}\nstate_dir = "{d / (host + "-state")}"\n'
        f"exit_resend_s = {exit_resend_s}\n"
        f'torchrun = "{torchrun or Path(sys.executable).with_name("torchrun")}"\n'
    )
    return path


def start_agent_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dcsched.agents.main", "run", "--config", str(config),
             "--log-level", "DEBUG"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or pred}")


class Bus:
    """Watches one host's topics and sends it commands."""

    def __init__(self, broker: Broker, prefix: str, host: str) -> None:
        self.broker, self.host = broker, host
        self.topics = Topics(prefix)
        self.status: list[Any] = []
        self.telemetry: list[Any] = []
        self.events: list[Any] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Bus:
        self._client = await self._stack.enter_async_context(
            aiomqtt.Client(self.broker.host, self.broker.port)
        )
        for kind in ("status", "telemetry", "events"):
            await self._client.subscribe(self.topics.host(self.host, kind), qos=1)  # type: ignore[arg-type]
        self._task = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stack.aclose()

    async def _receive(self) -> None:
        assert self._client is not None
        codecs = {"status": (status_codec(), self.status),
                  "telemetry": (telemetry_codec(), self.telemetry),
                  "events": (event_codec(), self.events)}  # fmt: skip
        async for m in self._client.messages:
            kind = str(m.topic).rsplit("/", 1)[-1]
            codec, sink = codecs[kind]
            payload = m.payload
            assert isinstance(payload, bytes)
            sink.append(codec.decode(payload))

    async def send(self, cmd: Command, key: bytes | None = TEST_KEY) -> None:
        assert self._client is not None
        payload = sign(cmd, key, host=self.host)
        await self._client.publish(self.topics.host(self.host, "cmd"), payload, qos=1)

    async def until(self, pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        return await until(pred, timeout, what)

    def event(self, kind: type, **match: Any) -> Any:
        for e in self.events:
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items()):
                return e
        return None


class Proxy:
    """A TCP proxy in front of the broker; `cut()` drops every connection and refuses new ones."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        self._writers |= {writer, up_writer}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

        for pair in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pump(*pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def running_agent(agent: Any) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


# --- tests -------------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"test-agent-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fake_torchrun(tmp_path: Path) -> str:
    """For tests about the agent: torchrun's options dropped, the command run as it is."""
    return str(write_fake_torchrun(tmp_path / "fake-torchrun"))


def _launch(job_id: str, command: list[str], workdir: Path, **kw: Any) -> Launch:
    base: dict[str, Any] = dict(
        cmd_id=f"launch-{job_id}", job_id=job_id, node_rank=0, nnodes=1, nproc_per_node=1,
        master_addr="127.0.0.1", master_port=free_port(), gpus=[0], command=command,
        workdir=str(workdir), no_python=not runs_python(command, None),
    )  # fmt: skip
    base.update(kw)
    return Launch(**base)


async def test_status_is_retained_telemetry_flows_and_the_will_marks_offline(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    conf = agent_config(tmp_path, mosquitto.url, prefix, "n1", interval_s=0.5)
    proc = start_agent_process(conf, tmp_path / "agent.log")
    try:
        async with Bus(mosquitto, prefix, "n1") as bus:
            await bus.until(lambda: len(bus.telemetry) >= 5, timeout=15, what="telemetry")
            first, last = bus.telemetry[0], bus.telemetry[-1]
            # One message after the other, none lost. (How closely they keep the interval
            # is a matter of the machine's load, not of the agent: not asserted here.)
            assert [t.seq for t in bus.telemetry] == list(range(first.seq, last.seq + 1))
            assert [t.ts for t in bus.telemetry] == sorted(t.ts for t in bus.telemetry)
            assert last.simulated and len(last.gpus) == 2
            assert all(g.util is not None and g.power_w is not None for g in last.gpus)
        # A late subscriber gets the retained status.
        async with Bus(mosquitto, prefix, "n1") as late:
            st = await late.until(lambda: late.status and late.status[-1], what="status")
            assert st.state == "online" and st.simulated and st.backend == "sim"
            assert [g.model for g in st.gpus] == ["Simulated-H100"] * 2
            assert st.addr and st.agent_version
            proc.kill()  # -9: no goodbye, only the will
            proc.wait(10)
            offline = await late.until(
                lambda: [s for s in late.status if s.state == "offline"], what="will"
            )
            assert offline[0].host == "n1"
        async with Bus(mosquitto, prefix, "n1") as later:
            st = await later.until(lambda: later.status and later.status[-1], what="retained")
            assert st.state == "offline"
    finally:
        stop_process(proc, signal.SIGKILL)


@pytest.mark.e2e
async def test_signed_launch_runs_torchrun_and_forged_commands_do_nothing(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    (tmp_path / "key").write_bytes(key)
    (tmp_path / "key").chmod(0o600)
    conf = agent_config(tmp_path, mosquitto.url, prefix, "n1", key_file=str(tmp_path / "key"))
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = torch.tensor([dist.get_rank() + 1])\n"
        "dist.all_reduce(t)\n"
        "gpus = os.environ['CUDA_VISIBLE_DEVICES']\n"
        "print(f'rank {dist.get_rank()} sum {int(t)} gpus {gpus}')\n"
        "dist.destroy_process_group()\n"
    )
    proc = start_agent_process(conf, tmp_path / "agent.log")
    try:
        async with Bus(mosquitto, prefix, "n1") as bus:
            await bus.until(lambda: bus.status and bus.status[-1].state == "online", what="online")
            forged = _launch("forged", [str(script)], tmp_path)
            await bus.send(forged, b"not-the-cluster-key-at-all!!")
            await bus.send(forged, None)
            t0 = time.monotonic()
            job = _launch(
                "ar",
                [str(script)],
                tmp_path,
                nproc_per_node=2,
                gpus=[0, 1],
                master_port=free_port(),
            )
            await bus.send(job, key)
            # Beside it, a job whose second worker exits 3: torchrun itself exits 1.
            (tmp_path / "exit3.py").write_text(
                "import os, sys\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n"
            )
            fail = _launch("x3", [str(tmp_path / "exit3.py")], tmp_path, nproc_per_node=2,
                           gpus=[0, 1], master_port=free_port())  # fmt: skip
            await bus.send(fail, key)
            ack = await bus.until(lambda: bus.event(Ack, cmd_id=job.cmd_id), what="ack")
            assert ack.ok, ack.error
            started = await bus.until(lambda: bus.event(JobStarted, job_id="ar"), what="start")
            dispatch_s = time.monotonic() - t0
            running = await bus.until(
                lambda: [s for s in bus.status if "ar" in s.running_jobs], what="status"
            )
            assert running
            exited = await bus.until(
                lambda: bus.event(JobExited, job_id="ar"), timeout=45, what="exit"
            )
            total_s = time.monotonic() - t0
            assert (exited.exit_code, exited.signal, exited.reason) == (0, None, "")
            failed = await bus.until(lambda: bus.event(JobExited, job_id="x3"), what="x3")
            assert (failed.exit_code, failed.signal) == (3, None)
            log = Path(started.log_path).read_text()
            assert "rank 0 sum 3 gpus 0,1" in log and "rank 1 sum 3 gpus 0,1" in log
            # The forged commands were neither answered nor run.
            assert bus.event(Ack, cmd_id=forged.cmd_id) is None
            assert bus.event(JobStarted, job_id="forged") is None
            assert not (tmp_path / "n1-state" / "logs" / "forged").exists()
            await bus.until(lambda: bus.status[-1].running_jobs == [], what="status after")
            print(f"dispatch {dispatch_s:.3f} s, torchrun job {total_s:.1f} s")
        assert stop_process(proc) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    assert "dropped a command (bad_signature" in (tmp_path / "agent.log").read_text()


async def test_jobs_survive_an_agent_restart_and_report_their_real_exit_code(
    tmp_path: Path, mosquitto: Broker, prefix: str, fake_torchrun: str
) -> None:
    conf = agent_config(tmp_path, mosquitto.url, prefix, "n1", torchrun=fake_torchrun)
    # The job runs until the test lets it end: however slowly the agent stops and starts
    # again on a loaded machine, it is still running when the new agent adopts it.
    go = tmp_path / "go"
    wait_then_exit_5 = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\nsys.exit(5)"
    )
    job = _launch("re", [sys.executable, "-c", wait_then_exit_5, str(go)], tmp_path)
    async with Bus(mosquitto, prefix, "n1") as bus:
        proc = start_agent_process(conf, tmp_path / "agent.log")
        try:
            await bus.until(lambda: bus.status and bus.status[-1].state == "online", what="up")
            await bus.send(job)
            started = await bus.until(lambda: bus.event(JobStarted, job_id="re"), what="start")
            assert stop_process(proc) == 0  # SIGTERM: clean stop, the job keeps running
            await bus.until(lambda: bus.status[-1].state == "offline", what="offline")
            assert bus.event(JobExited, job_id="re") is None
            state = json.loads((tmp_path / "n1-state" / "jobs.json").read_text())
            assert list(state["jobs"]) == ["re#0"]
            assert os.path.exists(f"/proc/{started.pid}")
            proc = start_agent_process(conf, tmp_path / "agent.log")
            online = await bus.until(
                lambda: [s for s in bus.status[1:] if s.state == "online"], what="back"
            )
            assert online[0].running_jobs == ["re"]  # re-adopted
            go.touch()
            exited = await bus.until(lambda: bus.event(JobExited, job_id="re"), what="exit")
            assert (exited.exit_code, exited.reason) == (5, "")
            # The launch, sent again, is answered but not run again.
            await bus.send(job)
            await bus.until(
                lambda: len([e for e in bus.events if isinstance(e, Ack)]) == 2, what="second ack"
            )
            await asyncio.sleep(0.5)
            # Events are at least once: count distinct starts, and the agent's own log.
            assert {e.pid for e in bus.events if isinstance(e, JobStarted)} == {started.pid}
            assert (tmp_path / "agent.log").read_text().count("job re node 0 started") == 1
        finally:
            stop_process(proc)


async def test_job_exit_is_kept_through_a_broker_outage(
    tmp_path: Path,
    mosquitto: Broker,
    prefix: str,
    fake_torchrun: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_mod, "backoff_delay", lambda attempt: 0.2)
    proxy = Proxy(mosquitto)
    await proxy.open()
    conf = agent_config(
        tmp_path, f"mqtt://127.0.0.1:{proxy.port}", prefix, "n1", torchrun=fake_torchrun
    )
    agent = Agent(load_config(str(conf)))
    # The job ends once the broker is cut off (after 1 s it might end before, under load).
    go = tmp_path / "go"
    wait_then_exit_4 = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\nsys.exit(4)"
    )
    job = _launch("out", [sys.executable, "-c", wait_then_exit_4, str(go)], tmp_path)
    async with Bus(mosquitto, prefix, "n1") as bus, running_agent(agent):
        await bus.until(agent.connected.is_set, what="connected")
        await bus.send(job)
        await bus.until(lambda: bus.event(JobStarted, job_id="out"), what="start")
        await proxy.cut()
        await bus.until(lambda: not agent.connected.is_set(), what="disconnected")
        go.touch()
        await bus.until(lambda: not agent.jobs, what="job exit while offline")
        assert bus.event(JobExited, job_id="out") is None
        # (JobStarted may still be there too: its PUBACK can be cut off; events are at least once.)
        assert type(agent.store.state.outbox[-1]) is JobExited
        await proxy.open()
        exited = await bus.until(lambda: bus.event(JobExited, job_id="out"), what="late exit")
        assert exited.exit_code == 4
        await bus.until(lambda: not agent.store.state.outbox, what="outbox drained")
    await proxy.cut()


async def test_an_exit_is_resent_through_a_broker_crash_until_acknowledged(
    tmp_path: Path, prefix: str, fake_torchrun: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_mod, "backoff_delay", lambda attempt: 0.2)
    broker = start_mosquitto(tmp_path)  # this test's own: it crashes it
    conf = agent_config(
        tmp_path, broker.url, prefix, "n1", torchrun=fake_torchrun, exit_resend_s=0.3
    )
    agent = Agent(load_config(str(conf)))
    job = _launch("ack", [sys.executable, "-c", "import sys; sys.exit(4)"], tmp_path)
    topics = Topics(prefix)
    try:
        async with running_agent(agent):
            await until(agent.connected.is_set, what="connected")
            # Nobody listens to events yet: the broker takes the exit and drops it.
            async with aiomqtt.Client(broker.host, broker.port) as sender:
                await sender.publish(
                    topics.host("n1", "cmd"), sign(job, TEST_KEY, host="n1"), qos=1
                )
            await until(
                lambda: agent.store.state.unacked and not agent.store.state.outbox,
                what="exit published, not acknowledged",
            )
            (ev,) = agent.store.state.unacked
            # The broker crashes (it held nothing on disk) and comes back.
            broker.proc.kill()
            broker.proc.wait(10)
            await until(lambda: not agent.connected.is_set(), what="disconnected")
            restart_mosquitto(broker, tmp_path)
            async with Bus(broker, prefix, "n1") as bus:
                await bus.until(
                    lambda: bus.events.count(ev) >= 2, timeout=30, what="exit resent twice"
                )
                assert (ev.exit_code, ev.launch_id) == (4, job.cmd_id)
                await bus.send(
                    AckExit(cmd_id="a1", job_id="ack", node_rank=0, launch_id=job.cmd_id)
                )
                await bus.until(lambda: not agent.store.state.unacked, what="acknowledged")
                state = json.loads((tmp_path / "n1-state" / "jobs.json").read_text())
                assert state["unacked"] == []
                assert not [e for e in bus.events if isinstance(e, Ack) and e.cmd_id == "a1"]
                # The daemon may still ask what became of the job.
                await bus.send(QueryJob(cmd_id="q1", job_id="ack"))
                report = await bus.until(lambda: bus.event(JobReport, cmd_id="q1"), what="report")
                assert report.running == [] and report.exits == [ev]
    finally:
        if broker.proc.poll() is None:
            broker.proc.terminate()
            broker.proc.wait(10)
