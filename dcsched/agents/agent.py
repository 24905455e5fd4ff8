"""The agent's asyncio core: one MQTT connection (re-made with jittered backoff), telemetry,
status, signed commands executed at most once, and events that survive a broker outage.

A JobExited is acknowledged end to end: after the broker has it, it waits in the state file
(`unacked`) and goes out again every `exit_resend_s` and after every reconnect until the
daemon's AckExit names it, so a broker crash cannot lose it.

Tasks: `jobs` watches job exits whether or not the broker is reachable; `bus` keeps the
connection and, while connected, runs `receive`, `telemetry`, `status` and `outbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import socket
import time
from collections import Counter
from importlib import metadata

import aiomqtt

from dcsched.agents.cgroups import Cgroups
from dcsched.agents.errors import AgentError, LaunchError, StateError
from dcsched.agents.gpu import GpuBackend, make_backend
from dcsched.agents.healthcheck import run_health_check
from dcsched.agents.launcher import ExitStatus, Launcher, ending_words, valid_job_id
from dcsched.agents.logs import append_notice, read_chunk
from dcsched.agents.procs import CpuMeter, ProcNames, usage
from dcsched.agents.state import CommandResult, JobRecord, StateStore, exit_key, job_key
from dcsched.protocol.codec import CommandVerifier, ProtocolError, encode, load_key
from dcsched.protocol.config import Config
from dcsched.protocol.messages import (
    CMD_MAX,
    Ack,
    AckExit,
    Cancel,
    Command,
    FetchLog,
    GpuFault,
    HostStatus,
    JobExited,
    JobProcs,
    JobReport,
    JobStarted,
    Launch,
    LogNotice,
    Message,
    QueryJob,
    Signal,
    Telemetry,
)
from dcsched.protocol.sdnotify import notify, watchdog_interval
from dcsched.protocol.topics import Topics

log = logging.getLogger("dcsched.agent")

JOB_POLL_S = 0.2
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 30.0


def agent_version() -> str:
    try:
        return metadata.version("dcsched")
    except metadata.PackageNotFoundError:
        return "0+source"


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential, capped, with jitter so that a rack of agents does not reconnect in step."""
    jitter: float = (rng or random).uniform(0.5, 1.0)
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(attempt, 16)) * jitter)


def _load_keys(cfg: Config) -> list[bytes]:
    """The cluster key, then the previous one while a rotation is under way."""
    keys = []
    for what in ("key_file", "previous_key_file"):
        path = getattr(cfg.cluster, what)
        try:
            key = load_key(path or None)
        except (OSError, ProtocolError) as exc:
            raise AgentError(f"cannot read the cluster key [cluster] {what}: {exc}") from None
        if key is not None:
            keys.append(key)
    if cfg.cluster.previous_key_file and not cfg.cluster.key_file:
        raise AgentError("[cluster] previous_key_file is set without key_file")
    return keys


class Agent:
    def __init__(
        self,
        cfg: Config,
        backend: GpuBackend | None = None,
        *,
        identifier: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.cfg = cfg
        self.host = cfg.agent.host_name()
        self.topics = Topics(cfg.broker.topic_prefix)
        self.interval_s = cfg.agent.interval_s
        keys = _load_keys(cfg)
        if not keys:
            if not insecure:
                raise AgentError(
                    "no [cluster] key_file: without the cluster key any broker client could "
                    "run commands as root here. Set [cluster] key_file (the daemon's key), or "
                    "pass --insecure for a single-user test setup"
                )
            log.warning(
                "INSECURE: no [cluster] key_file and --insecure: any client of the broker can "
                "run commands as root on this host. Never run a shared cluster like this."
            )
        self.backend = backend or make_backend(cfg.agent, self.host)
        self.store = StateStore(cfg.agent.state_dir)
        self.verifier = CommandVerifier(keys, self.host, replay=self.store.state.replay)
        self.identifier = identifier or f"dc-agent-{self.host}"
        self.dropped: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._outbox_dirty = asyncio.Event()
        self._cancels: dict[str, asyncio.Task[None]] = {}
        self._seq = 0
        self._proc_names = ProcNames(CMD_MAX)
        self._cpu = CpuMeter()
        self._last_drop_log = 0.0
        self._addr = ""
        self._inventory = self.backend.inventory()
        self._gpu_indexes = {g.index for g in self._inventory}
        cgroups = Cgroups.detect(cfg.agent.cgroups, [(g.index, g.uuid) for g in self._inventory])
        self.launcher = Launcher(
            cfg.agent.state_dir, cfg.agent.torchrun, host=self.host, cgroups=cgroups
        )

    @property
    def jobs(self) -> dict[str, JobRecord]:
        return self.store.state.jobs

    def stop(self) -> None:
        """Ends run() cleanly; running jobs keep running and are re-adopted at the next start."""
        self._stop.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.store.load()
        except StateError as exc:
            log.error("%s; starting with an empty state", exc)
        self.verifier.replay = self.store.state.replay  # what was accepted before the restart
        cgroups = self.launcher.cgroups
        quiet = cgroups.enabled or self.cfg.agent.cgroups == "off"
        log.log(logging.INFO if quiet else logging.WARNING, "%s", cgroups.describe())
        for left in cgroups.sweep(keep={r.cgroup for r in self.jobs.values()}):
            log.info("removed cgroup %s, which an earlier agent left empty", left)
        self._adopt()
        self._addr = self.cfg.agent.advertise_addr or await asyncio.to_thread(self._own_address)

        def on_fault(fault: GpuFault) -> None:  # called from the backend's thread
            loop.call_soon_threadsafe(self._queue_event, fault)

        self.backend.watch_faults(on_fault)
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(self._watch_jobs(), name="jobs")
                bus = tg.create_task(self._bus(), name="bus")
                watchdog = tg.create_task(self._watchdog(), name="watchdog")
                # Ready once its jobs are adopted: it watches them with or without a broker.
                notify(f"READY=1\nSTATUS=watching {len(self.jobs)} job(s)")
                await self._stop.wait()
                notify("STOPPING=1")
                watchdog.cancel()
                # The bus publishes "offline" and disconnects; a connect in progress is abandoned.
                done, _ = await asyncio.wait({bus}, timeout=5.0)
                if not done:
                    bus.cancel()
                watcher.cancel()
                for task in self._cancels.values():
                    task.cancel()
        finally:
            self.backend.close()
            with contextlib.suppress(StateError):
                self.store.save()
        log.info("agent stopped; %d job(s) left running for the next start", len(self.jobs))

    async def _watchdog(self) -> None:
        """Fed from the event loop: a stuck loop stops feeding it and systemd restarts us."""
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _adopt(self) -> None:
        for rec in self.jobs.values():
            log.info("re-adopting job %s node %d (pid %d)", rec.job_id, rec.node_rank, rec.pid)
            if rec.cancel_signal is not None or rec.warned_ts is not None:
                # We died during a cancel's warning or grace period: finish it without
                # waiting again.
                self.launcher.send_signal(rec, signal.SIGKILL)
                rec.cancel_signal = signal.SIGKILL
        if self.store.state.outbox:
            log.info(
                "%d event(s) from before the restart wait to be published",
                len(self.store.state.outbox),
            )
        if self.store.state.unacked:
            log.info(
                "%d exit(s) from before the restart wait for the daemon's acknowledgement",
                len(self.store.state.unacked),
            )

    def _own_address(self) -> str:
        """The address peers reach us on: the one our route to the broker leaves from."""
        broker, port = self.cfg.broker.host_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((broker, port))  # UDP: picks a route, sends nothing
                addr: str = s.getsockname()[0]
            if not addr.startswith("127.") or broker.startswith("127."):
                return addr
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return ""

    # --- bus -----------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        b = self.cfg.broker
        host, port = b.host_port()
        offline = self._status("offline")
        return aiomqtt.Client(
            host,
            port,
            identifier=self.identifier,
            # The broker's ACL lets a host's user publish only that host's topics.
            username=b.username or self.host,
            password=b.password(),
            tls_context=b.tls_context(),
            keepalive=b.keepalive_s,
            will=aiomqtt.Will(
                self.topics.host(self.host, "status"), encode(offline), qos=1, retain=True
            ),
        )

    async def _bus(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            connected_at: float | None = None
            try:
                async with self._client() as client:
                    connected_at = time.monotonic()
                    await self._serve(client)
                    await client.publish(
                        self.topics.host(self.host, "status"),
                        encode(self._status("offline")),
                        qos=1,
                        retain=True,
                        timeout=3.0,
                    )
                    return
            except* aiomqtt.MqttError as group:
                log.warning("broker %s: %s", self.cfg.broker.url, group.exceptions[0])
            finally:
                self.connected.clear()
            # Back off from the start again only after a connection that held for a while: a
            # broker that accepts and then drops us (another agent with our host name?) must
            # not be hammered.
            if connected_at is not None and time.monotonic() - connected_at > 30.0:
                attempt = 0
            delay = backoff_delay(attempt)
            attempt += 1
            log.info("reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.topics.host(self.host, "cmd"), qos=1)
        await self._publish_status(client)
        log.info("connected to %s as %s", self.cfg.broker.url, self.host)
        self.connected.set()
        self._outbox_dirty.set()  # events kept while disconnected go out first
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._receive(client), name="receive"),
                tg.create_task(self._telemetry(client), name="telemetry"),
                tg.create_task(self._status_loop(client), name="status"),
                tg.create_task(self._outbox(client), name="outbox"),
            ]
            await self._stop.wait()
            # Events already queued go out before we leave (briefly: a stop must stay quick).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while self.store.state.outbox:  # noqa: ASYNC110 - a list, not an event
                        await asyncio.sleep(0.02)
            for task in tasks:
                task.cancel()

    def _status(self, state: str) -> HostStatus:
        return HostStatus(
            host=self.host,
            state="online" if state == "online" else "offline",
            ts=time.time(),
            addr=self._addr,
            agent_version=agent_version(),
            backend=self.backend.name,
            driver=self.backend.driver_version(),
            simulated=self.backend.simulated,
            gpus=self._inventory,
            running_jobs=sorted({r.job_id for r in self.jobs.values()}),
        )

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        self._status_dirty.clear()
        await client.publish(
            self.topics.host(self.host, "status"),
            encode(self._status("online")),
            qos=1,
            retain=True,
        )

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_dirty.wait()
            await self._publish_status(client)

    async def _publish_event(self, client: aiomqtt.Client, ev: Message) -> None:
        await client.publish(self.topics.host(self.host, "events"), encode(ev), qos=1)

    async def _outbox(self, client: aiomqtt.Client) -> None:
        """Durable events in order; each leaves the outbox once the broker has it. An exit then
        waits in `unacked`, sent again every exit_resend_s until the daemon's AckExit."""
        loop = asyncio.get_running_loop()
        st = self.store.state
        resend_s = self.cfg.agent.exit_resend_s
        # When each exit last went out on this connection: after a reconnect, all go out again.
        sent: dict[tuple[str, int, str], float] = {}
        while True:
            self._outbox_dirty.clear()
            while st.outbox:
                ev = st.outbox[0]
                await self._publish_event(client, ev)
                if st.outbox and st.outbox[0] is ev:  # (an AckExit may have taken it meanwhile)
                    st.outbox.pop(0)
                    if isinstance(ev, JobExited):
                        sent[exit_key(ev)] = loop.time()
                        for old in self.store.keep_unacked(ev):
                            log.warning(
                                "job %s node %d: dropping its exit (launch %s), which the "
                                "daemon never acknowledged: %d newer ones wait",
                                old.job_id,
                                old.node_rank,
                                old.launch_id,
                                len(st.unacked),
                            )
                self._save()
            for ev in list(st.unacked):
                key = exit_key(ev)
                if loop.time() - sent.get(key, -math.inf) >= resend_s:
                    await self._publish_event(client, ev)
                    sent[key] = loop.time()
            keys = {exit_key(ev) for ev in st.unacked}
            sent = {k: t for k, t in sent.items() if k in keys}
            timeout = min(sent.values(), default=math.inf) + resend_s - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._outbox_dirty.wait(), None if timeout == math.inf else max(0.0, timeout)
                )

    def _queue_event(self, ev: JobStarted | JobExited | GpuFault) -> None:
        if isinstance(ev, GpuFault):
            log.error("GPU %d: %s %s", ev.gpu_index, ev.kind, ev.detail)
        self.store.state.outbox.append(ev)
        self._save()
        self._outbox_dirty.set()

    def _save(self) -> None:
        try:
            self.store.save()
        except StateError as exc:
            log.error("%s", exc)  # keep serving; the next change tries again

    # --- telemetry -----------------------------------------------------------------------------

    async def _telemetry(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        topic = self.topics.host(self.host, "telemetry")
        next_at = loop.time()
        while True:
            msg = await asyncio.to_thread(self.sample, list(self.jobs.values()))
            await client.publish(topic, encode(msg), qos=0)
            # Fixed ticks, not sleeps after work, so the rate does not drift with load.
            next_at = max(next_at + self.interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    def sample(self, jobs: list[JobRecord]) -> Telemetry:
        """One telemetry message (runs in a worker thread: NVML and /proc can block)."""
        now = time.time()
        pids = self.launcher.scanner.scan({r.tag: r.pgid for r in jobs})
        busy: dict[int, list[int]] = {}
        procs = []
        for r in jobs:
            job_pids = pids.get(r.tag, [])
            # CPU and host memory over the job's process tree (its tagged processes)
            ticks, rss = usage(job_pids)
            procs.append(
                JobProcs(
                    job_id=r.job_id,
                    node_rank=r.node_rank,
                    gpus=r.gpus,
                    pids=job_pids,
                    cpu_pct=self._cpu.percent(r.tag, now, ticks) if job_pids else None,
                    rss=rss if job_pids else None,
                )
            )
            for g in r.gpus:
                busy.setdefault(g, []).extend(job_pids)
        self._cpu.forget_except(r.tag for r in jobs)
        gpus = self.backend.sample(now, busy)
        for sample in gpus:
            for proc in sample.procs:
                if not proc.user and not proc.cmd:
                    proc.user, proc.cmd = self._proc_names.get(proc.pid)
        self._seq += 1
        return Telemetry(
            host=self.host,
            ts=now,
            seq=self._seq,
            gpus=gpus,
            jobs=procs,
            simulated=self.backend.simulated,
        )

    # --- commands ------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            if not isinstance(payload, bytes | bytearray):
                self._drop("empty", "payload is not bytes")
                continue
            try:
                cmd = self.verifier.verify(bytes(payload))
            except ProtocolError as exc:
                self._drop(getattr(exc, "reason", type(exc).__name__), str(exc))
                continue
            if not isinstance(cmd, FetchLog | QueryJob):
                # The replay guard is on disk before the command acts: a crash right after
                # cannot let a captured copy of it in again.
                self._save()
            try:
                await self.handle(client, cmd)
            except aiomqtt.MqttError:
                raise  # the connection is gone: reconnect
            except Exception:
                # One bad command must not take the agent (and its telemetry) down.
                log.exception("command %s (%s) failed", cmd.cmd_id, type(cmd).__name__)

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_drop_log > 5.0:  # a flood of bad commands must not flood the log
            self._last_drop_log = now
            log.warning(
                "dropped a command (%s: %s); dropped so far: %s", reason, detail, dict(self.dropped)
            )

    async def handle(self, client: aiomqtt.Client, cmd: Command) -> None:
        if isinstance(cmd, FetchLog):
            # Reading a log changes nothing: answered every time, not remembered.
            if valid_job_id(cmd.job_id):
                path, _ = self.launcher.paths(cmd.job_id, cmd.node_rank)
                chunk = await asyncio.to_thread(read_chunk, self.host, cmd, str(path))
            else:
                chunk = read_chunk(self.host, cmd, "/nonexistent")
            await self._publish_event(client, chunk)
            return
        if isinstance(cmd, QueryJob):
            # As FetchLog: a question, answered every time.
            running = sorted(r.node_rank for r in self.jobs.values() if r.job_id == cmd.job_id)
            report = JobReport(
                host=self.host,
                cmd_id=cmd.cmd_id,
                job_id=cmd.job_id,
                running=running,
                exits=self.store.last_exits(cmd.job_id),
            )
            await self._publish_event(client, report)
            return
        if isinstance(cmd, LogNotice):
            # A line for the job's log (the idle warning): neither remembered nor answered.
            if valid_job_id(cmd.job_id):
                path, _ = self.launcher.paths(cmd.job_id, cmd.node_rank)
                await asyncio.to_thread(append_notice, str(path), cmd.text)
            return
        if isinstance(cmd, AckExit):
            # Idempotent: neither remembered nor answered (the daemon sends one per exit it
            # receives, and a resent exit is simply acknowledged again).
            if self.store.ack_exit(cmd.job_id, cmd.node_rank, cmd.launch_id):
                self._save()
            return
        prior = self.store.command(cmd.cmd_id)
        if prior is not None:
            log.info("command %s seen before: answering with its first result", cmd.cmd_id)
        elif isinstance(cmd, Launch):
            prior = await self._launch(cmd)
        elif isinstance(cmd, Signal):
            prior = await self._signal(cmd)
        else:
            prior = self._cancel(cmd)
        await self._publish_event(
            client,
            Ack(
                host=self.host,
                cmd_id=prior.cmd_id,
                job_id=prior.job_id,
                ok=prior.ok,
                error=prior.error,
                code=prior.code,
            ),
        )

    async def _launch(self, cmd: Launch) -> CommandResult:
        key = job_key(cmd.job_id, cmd.node_rank)
        result = CommandResult(cmd_id=cmd.cmd_id, job_id=cmd.job_id, ok=True)
        running = self.jobs.get(key)
        if running is not None:
            log.info(
                "job %s node %d already runs here: not launched twice", cmd.job_id, cmd.node_rank
            )
            running.cmd_ids.append(cmd.cmd_id)
        else:
            try:
                check, limit = self.cfg.agent.health_check, self.cfg.agent.health_check_timeout_s
                await asyncio.to_thread(run_health_check, check, limit, cmd)
                rec = await asyncio.to_thread(self.launcher.start, cmd, self._gpu_indexes)
            except Exception as exc:
                if isinstance(exc, LaunchError):
                    log.warning("job %s node %d refused: %s", cmd.job_id, cmd.node_rank, exc)
                    result.error, result.code = str(exc), exc.code
                else:
                    # A bug, but the daemon still needs an answer, or it resends forever.
                    log.exception("job %s node %d: launch failed", cmd.job_id, cmd.node_rank)
                    result.error = f"the agent failed to launch the job: {exc!r}"
                result.ok = False
                self.store.remember_command(result)
                if result.code:
                    self._save()  # a refusal: the Ack is the whole answer
                else:
                    self._queue_event(
                        JobExited(
                            host=self.host,
                            job_id=cmd.job_id,
                            node_rank=cmd.node_rank,
                            ts=time.time(),
                            reason="launch_failed",
                            launch_id=cmd.cmd_id,
                        )
                    )
                return result
            self.jobs[key] = rec
            log.info(
                "job %s node %d started: pid %d, GPUs %s, log %s",
                rec.job_id,
                rec.node_rank,
                rec.child_pid,
                rec.gpus,
                rec.log_path,
            )
            self._queue_event(
                JobStarted(
                    host=self.host,
                    job_id=rec.job_id,
                    node_rank=rec.node_rank,
                    pid=rec.child_pid,
                    ts=rec.started_ts,
                    log_path=rec.log_path,
                    launch_id=rec.cmd_ids[0] if rec.cmd_ids else "",
                )
            )
            self._status_dirty.set()
        self.store.remember_command(result)
        self._save()
        return result

    def _cancel(self, cmd: Cancel) -> CommandResult:
        result = CommandResult(cmd_id=cmd.cmd_id, job_id=cmd.job_id, ok=True)
        recs = [r for r in self.jobs.values() if r.job_id == cmd.job_id]
        for rec in recs:
            task = self._cancels.get(rec.key)
            if task is not None and not task.done():
                # A cancel without a warning cuts a warning's lead time short (a user's
                # cancel during a preemption's checkpoint window); anything else waits.
                warning_phase = rec.warned_ts is not None and rec.cancel_signal is None
                if not (warning_phase and cmd.signal is None):
                    continue
                task.cancel()
            rec.cancel_reason = cmd.reason or "cancelled"
            warning = (cmd.signal, cmd.signal_lead_s) if cmd.signal is not None else None
            self._cancels[rec.key] = asyncio.create_task(
                self._terminate(rec, cmd.grace_s, warning), name=f"cancel-{rec.key}"
            )
        if not recs:
            exits = self.store.last_exits(cmd.job_id)
            if exits:
                for ev in exits:  # the daemon may have missed them: say it again
                    self._queue_event(ev)
            else:
                result.error = f"job {cmd.job_id} does not run on {self.host}"
        self.store.remember_command(result)
        self._save()
        return result

    async def _signal(self, cmd: Signal) -> CommandResult:
        """The job's warning signal to its workers (its time limit is near)."""
        result = CommandResult(cmd_id=cmd.cmd_id, job_id=cmd.job_id, ok=True)
        recs = [r for r in self.jobs.values() if r.job_id == cmd.job_id]
        for rec in recs:
            pids = await asyncio.to_thread(self.launcher.signal_workers, rec, cmd.signal)
            log.info("job %s node %d: signal %d to %s", rec.job_id, rec.node_rank, cmd.signal, pids)
        if not recs:
            result.error = f"job {cmd.job_id} does not run on {self.host}"
        self.store.remember_command(result)
        self._save()
        return result

    async def _wait_gone(self, rec: JobRecord, seconds: float) -> bool:
        """True if the job ended within `seconds`."""
        deadline = time.monotonic() + max(0.0, seconds)
        while time.monotonic() < deadline:
            if rec.key not in self.jobs:
                return True
            await asyncio.sleep(0.1)
        return rec.key not in self.jobs

    async def _terminate(
        self, rec: JobRecord, grace_s: float, warning: tuple[int, float] | None = None
    ) -> None:
        """The job's warning signal to its workers and its lead time to checkpoint (if it
        asked for one), then SIGTERM to the job's group, then SIGKILL to all of it after the
        grace period."""
        if warning is not None:
            sig, lead = warning
            rec.warned_ts = time.time()
            self._save()
            pids = await asyncio.to_thread(self.launcher.signal_workers, rec, sig)
            log.info(
                "stopping job %s node %d: signal %d to %s, %.0f s before SIGTERM",
                rec.job_id,
                rec.node_rank,
                sig,
                pids,
                lead,
            )
            if await self._wait_gone(rec, lead):
                return
        log.info(
            "cancelling job %s node %d: SIGTERM, %.0f s grace", rec.job_id, rec.node_rank, grace_s
        )
        rec.cancel_signal = signal.SIGTERM
        self._save()
        await asyncio.to_thread(self.launcher.send_signal, rec, signal.SIGTERM)
        if not await self._wait_gone(rec, grace_s):
            log.info("job %s node %d outlived its grace period: SIGKILL", rec.job_id, rec.node_rank)
            rec.cancel_signal = signal.SIGKILL
            self._save()
            await asyncio.to_thread(self.launcher.send_signal, rec, signal.SIGKILL)

    # --- job exits -----------------------------------------------------------------------------

    async def _watch_jobs(self) -> None:
        while True:
            await self.check_jobs()
            await asyncio.sleep(JOB_POLL_S)

    async def check_jobs(self) -> None:
        """One pass over the jobs: report those that ended."""
        for rec in list(self.jobs.values()):
            status = self.launcher.poll(rec)
            if status is not None:
                await self._finish(rec, status)

    async def _finish(self, rec: JobRecord, status: ExitStatus) -> None:
        left = await asyncio.to_thread(self.launcher.cleanup, rec)
        if left:
            log.warning(
                "job %s node %d left processes %s behind: killed", rec.job_id, rec.node_rank, left
            )
        cancelled = rec.cancel_signal is not None
        reason = rec.cancel_reason if cancelled else ("lost" if status.lost else "")
        sig = status.signal if status.signal is not None else rec.cancel_signal
        ev = JobExited(
            host=self.host,
            job_id=rec.job_id,
            node_rank=rec.node_rank,
            ts=time.time(),
            exit_code=status.exit_code,
            signal=sig,
            reason=reason,
            launch_id=rec.cmd_ids[0] if rec.cmd_ids else "",
        )
        line = ending_words(ev.exit_code, ev.signal, reason)
        await asyncio.to_thread(append_notice, rec.log_path, line)
        log.info(
            "job %s node %d exited: code %s, signal %s %s",
            rec.job_id,
            rec.node_rank,
            ev.exit_code,
            ev.signal,
            reason,
        )
        self.jobs.pop(rec.key, None)
        self.store.remember_exit(ev)
        self._queue_event(ev)
        self._status_dirty.set()
