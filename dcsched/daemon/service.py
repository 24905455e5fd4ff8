"""dcd: one asyncio process, a TaskGroup of named tasks, stopped in order by one event."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import grp
import logging
import os
import secrets
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from dcsched import __version__
from dcsched.daemon import accounting
from dcsched.daemon.aio import wait_event
from dcsched.daemon.api import Api, serve_tcp
from dcsched.daemon.audit import AuditLog, written_with_change
from dcsched.daemon.bus import Bus
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import CommandSender
from dcsched.daemon.errors import NoSuchThing
from dcsched.daemon.events import EventHub
from dcsched.daemon.health import (
    FAULT_KINDS,
    TRANSIENT,
    HealthPolicy,
    describe,
    drain_reason,
)
from dcsched.daemon.ingest import Ingest
from dcsched.daemon.jobs import IdlePolicy, JobManager, Timing
from dcsched.daemon.leader import LEADER_URL_KEY, Standby, advertise_url
from dcsched.daemon.metrics import metrics_app
from dcsched.daemon.model import Model
from dcsched.daemon.readmodel import ReadModel, drain_state
from dcsched.daemon.scheduling import SchedulingLoop
from dcsched.daemon.states import TERMINAL
from dcsched.daemon.store import HEALTH_POLICY, AuditRow, NotFound, Store, StoreError
from dcsched.daemon.tokens import derive_key
from dcsched.daemon.usage import UsageTracker
from dcsched.protocol.codec import ProtocolError, load_key
from dcsched.protocol.config import Config, ConfigError
from dcsched.protocol.durations import parse_seconds
from dcsched.protocol.jobspec import parse_dependencies
from dcsched.protocol.messages import (
    Ack,
    Event,
    GpuFault,
    HostStatus,
    JobExited,
    JobReport,
    JobStarted,
    LogChunk,
    Telemetry,
)
from dcsched.protocol.sdnotify import notify, watchdog_interval
from dcsched.scheduler import SchedulerConfig
from dcsched.scheduler.estimate import HISTORY_RUNS

log = logging.getLogger("dcsched.daemon")
TELEMETRY_KEEP_S = 7 * 24 * 3600
ACCOUNTING_KEY = "job_accounting"  # the running jobs' accumulation (accounting.dump)
MQTT_ID_KEY = "mqtt_client_id"  # kv: the leader's broker session (_mqtt_client_id)
LEAD_CHECK_S = 2.0  # how often a leader on a shared store checks its connection when idle


class Daemon:
    def __init__(self, config: Config, store: Store, *, insecure: bool = False) -> None:
        self.config = config
        self.store = store
        dc = config.daemon
        self.stop = asyncio.Event()
        self.exit_code = 0  # 3: leadership lost (systemd restarts it, as a standby)
        self.ready = asyncio.Event()
        self._unsettled: set[str] = set()  # hosts whose status change the store lacks
        self._accounting_saved = ""
        self.ingest = Ingest()
        self.cluster = Cluster(self.ingest, dc.node_timeout_s)
        self.model = Model(self.cluster.gpu_type)
        self.hub = EventHub()
        self.audit = AuditLog(store)
        # One persistent MQTT session per store (Daemon.open reads its id from the store;
        # this one is for a daemon made without open, in tests).
        client_id = (
            f"dcd-{socket.gethostname()}-{zlib.crc32(config.broker.topic_prefix.encode()):08x}"
        )
        self.bus = Bus(
            config.broker,
            client_id,
            self._telemetry,
            admit=host_filter(dc.hosts),
            known=lambda host: host in self.cluster.nodes,
            may_connect=self._still_leading if store.shared else None,
        )
        key = _cluster_key(config, insecure)
        self.token_key = _token_key(config, key)
        if not config.broker.password_file and not dc.hosts:
            log.warning(
                "no [broker] password_file and no [daemon] hosts: if the broker admits "
                "anonymous clients, anyone can pose as a host (see docs/security.md)"
            )
        self.sender = CommandSender(
            self.bus,
            key,
            dc.command_retry_s,
            lambda host: not self.cluster.is_online(host),
            self._still_leading if store.shared else None,
        )
        try:
            sched = SchedulerConfig.from_mapping(config.scheduler, duration=parse_seconds)
        except ValueError as exc:
            raise ConfigError(f"{config.path}: {exc} (see docs/scheduler.md)") from None
        bad = sorted(set(dc.drain_on) - set(FAULT_KINDS))
        if bad:
            raise ConfigError(
                f"{config.path}: [daemon] drain_on: unknown fault {bad[0]!r}; faults are "
                + ", ".join(FAULT_KINDS)
            )
        self.health_policy = HealthPolicy(frozenset(dc.drain_on), frozenset(dc.ignore_xids))
        wake = asyncio.Event()
        self.jobs = JobManager(
            store,
            self.model,
            self.sender,
            self.cluster,
            self.hub,
            sched,
            Timing(dc.cancel_grace_s, sched.preempt_grace_s, dc.node_timeout_s),
            wake.set,
        )
        self.jobs.idle = IdlePolicy(dc.idle_util_pct, dc.idle_after_s, dc.idle_cancel_after_s)
        self.jobs.accounting.idle_util_pct = dc.idle_util_pct
        self.scheduling = SchedulingLoop(
            self.model,
            self.cluster,
            self.jobs,
            UsageTracker(store, sched),
            sched,
            dc.ports(),
            dc.pass_interval_s,
            wake,
        )
        self.read = ReadModel(
            store, self.model, self.cluster, self.ingest, self.jobs, self.scheduling, self.bus
        )
        self.api = Api(self)

    def _telemetry(self, msg: Telemetry) -> None:
        if self.ingest.handle(msg):
            self.jobs.accounting.on_telemetry(msg)

    @classmethod
    async def open(cls, config: Config, *, insecure: bool = False) -> Daemon:
        _cluster_key(config, insecure)  # refused before anything is created
        Path(config.daemon.state_dir).mkdir(parents=True, exist_ok=True)
        store = await Store.open(config.daemon.store_location())
        try:
            if not await store.try_lead():  # another dcd leads this (PostgreSQL) store
                if _answers(config.daemon.socket):
                    raise ConfigError(f"another dcd is serving on {config.daemon.socket}")
                # It answers reads from a copy of the store's state, never from d's memory.
                replica = cls(config, store, insecure=insecure)
                reload = functools.partial(replica.load_state, replica=True)
                serve = replica._serve_api
                await Standby(store, config.daemon, replica.api.app, reload, serve).wait()
            d = cls(config, store, insecure=insecure)
            d.sender.epoch = store.epoch = await _next_epoch(store)
            log.info("daemon epoch %d", d.sender.epoch)
            if store.shared:  # standbys tell remote clients where the leader listens
                await store.set_kv(LEADER_URL_KEY, advertise_url(config.daemon))
            d.bus.client_id = await _mqtt_client_id(store)
            saved = await store.get_kv(ACCOUNTING_KEY)
            await d.load_state()
            if saved:
                try:
                    accounting.load(d.jobs.accounting, saved, set(d.model.jobs))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("saved job accounting unreadable (%s); starting afresh", exc)
            d.sender.add(await store.unacked_commands())
        except BaseException:
            await store.close()
            raise
        return d

    async def load_state(self, replica: bool = False) -> None:
        """Nodes, live jobs and fair-share usage from the store into memory: a leader's at
        its start; a standby's read-only copy (`replica`), replaced whole at each call."""
        store = self.store
        await self.scheduling.usage.load()
        nodes = await store.nodes()
        live = await store.live_jobs()
        deps = {int(i) for j in live for _, i in parse_dependencies(j.spec.get("dependency", []))}
        finished = {i: s for i, s in (await store.job_states(deps)).items() if s in TERMINAL}
        counts = await store.count_by_state()
        # ~0.1-0.2 s over 100,000 finished jobs (docs/performance.md): only when it is read
        use = self.scheduling.config.use_history
        history = await store.completed_runs(HISTORY_RUNS) if use else {}
        epoch = await store.get_kv("epoch") if replica else None
        # No await below: a standby's readers never see half a copy.
        if replica:
            self.sender.epoch = int(epoch) if epoch and epoch.isdigit() else 0  # the leader's
            self.model.clear()
            self.cluster.nodes.clear()
        for n in nodes:
            # A leader's nodes are offline until the broker replays the agents' retained
            # status; a standby shows what the leader last stored.
            online = n.online and replica
            self.cluster.load(n.host, n.status, online, n.drained, n.drain_reason)
        self.model.load(live, counts, finished, history)

    async def run(self) -> None:
        runners: list[web.AppRunner] = []
        try:
            runners.append(await self._serve_api())
            if self.config.daemon.metrics_listen:
                runners.append(await self._serve_metrics())
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.bus.run(self.stop), name="bus")
                tg.create_task(self._events(), name="events")
                tg.create_task(self.sender.run(self.stop), name="commands")
                tg.create_task(self.scheduling.run(self.stop), name="scheduler")
                tg.create_task(self._periodic(), name="checks")
                tg.create_task(self._flush_telemetry(), name="telemetry-flush")
                tg.create_task(self._watchdog(), name="watchdog")
                if self.store.shared:
                    tg.create_task(self._leadership(), name="leadership")
                self.ready.set()
                notify("READY=1\nSTATUS=serving")
                dc = self.config.daemon
                tcp = f" and {advertise_url(dc)}" if dc.listen else ""
                log.info("dcd ready: API on %s%s", dc.socket, tcp)
                await self.stop.wait()
                notify("STOPPING=1")
                self.bus.inbox.put_nowait(None)  # ends the events task after what is queued
        finally:
            # A full disk must not keep the daemon from stopping: these are best effort.
            for what, work in (
                ("audit log", self.audit.flush()),
                ("telemetry and accounting", self._flush_once()),
                ("fair-share usage", self.scheduling.usage.save()),
            ):
                try:
                    await asyncio.wait_for(work, 5.0)
                except (StoreError, TimeoutError) as exc:
                    log.warning("%s not saved at stop: %s", what, exc or "timed out")
            for r in runners:
                await r.cleanup()
            await self.store.close()
            log.info("dcd stopped")

    async def _still_leading(self) -> bool:
        """Does this dcd still hold the leader lock of its shared store? A round trip on
        the lock's connection: the lock lives exactly as long as it does."""
        if not self.store.lost.is_set():
            with contextlib.suppress(StoreError):  # a lost connection sets store.lost
                await self.store.check_lead()
        return not self.store.lost.is_set()

    def health(self) -> dict[str, Any]:
        problems = []
        if self.jobs.storage_error:
            problems.append(f"state store not writable: {self.jobs.storage_error}")
        if not self.bus.connected.is_set():
            problems.append("not connected to the broker")
        if self.store.lost_leadership:
            problems.append(f"no longer the leader ({self.store.lost_leadership}); stopping")
        return {
            "ok": not problems,
            "role": "leader",
            "problems": problems,
            "version": __version__,
            "broker_connected": self.bus.connected.is_set(),
            "storage_ok": not self.jobs.storage_error,
        }

    async def _serve_api(self) -> web.AppRunner:
        path = self.config.daemon.socket
        group = self.config.daemon.socket_group
        gid = _group_id(group) if group else None  # a wrong group is said before binding
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(path):
            if _answers(path):
                raise ConfigError(f"another dcd is serving on {path}; stop it first")
            os.unlink(path)  # a stale socket from a crashed run
        runner = web.AppRunner(self.api.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        try:
            os.chmod(path, self.config.daemon.socket_mode)
            if gid is not None:
                _give_group(path, gid, group)
            await serve_tcp(runner, self.config.daemon)
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def _serve_metrics(self) -> web.AppRunner:
        host, _, port = self.config.daemon.metrics_listen.rpartition(":")
        runner = web.AppRunner(metrics_app(self.read), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        return runner

    async def _until_stopped(self, seconds: float) -> bool:
        return await wait_event(self.stop, seconds)

    async def _events(self) -> None:
        """Status and agent events, one at a time, in arrival order. A message the store
        cannot journal now is kept and retried (with the ones behind it waiting) until it
        can: an exit is never dropped because the disk was full."""
        while (msg := await self.bus.inbox.get()) is not None:
            while True:
                try:
                    await self._handle(msg)
                except StoreError:
                    if await self._until_stopped(1.0):
                        return
                    continue
                except Exception:
                    log.exception(
                        "handling %s from %s failed; dropped",
                        type(msg).__name__,
                        getattr(msg, "host", "?"),
                    )
                break

    async def _handle(self, msg: HostStatus | Event) -> None:
        match msg:
            case HostStatus():
                # A change is announced once the store has it; if the write fails, the retry
                # of this message must still announce it (memory already has the change).
                changed = self.cluster.on_status(msg) or msg.host in self._unsettled
                self._unsettled.add(msg.host)
                node = self.cluster.nodes[msg.host]
                await self.store.upsert_node(
                    msg.host, node.online, msgspec.to_builtins(node.status), time.time()
                )
                self._unsettled.discard(msg.host)
                if changed:
                    log.info("node %s is %s", msg.host, msg.state)
                    self.scheduling.wake.set()
                    self.sender.wake.set()
                    self.hub.publish("node", {"host": msg.host, "state": msg.state})
                await self.jobs.on_status(msg.host, node.online, msg.running_jobs)
            case Ack():
                await self.jobs.on_ack(msg)
            case JobStarted():
                await self.jobs.on_started(msg)
            case JobExited():
                await self.jobs.on_exited(msg)
            case JobReport():
                await self.jobs.on_report(msg)
            case LogChunk():
                self.sender.on_log_chunk(msg)
            case GpuFault():
                await self.on_fault(msg)

    async def _periodic(self) -> None:
        timeout = self.config.daemon.node_timeout_s
        while not await self._until_stopped(1.0):
            # Liveness is judged from the broker: while the daemon's own link is down, or
            # just back, every node looks silent, and that must not fail their jobs.
            bus = self.bus
            judge = bus.connected.is_set() and time.monotonic() - bus.connected_at > timeout
            try:
                await self.jobs.check(judge)
            except StoreError:
                pass  # said in the log and in /v1/health; retried next round
            except Exception:
                log.exception("periodic job check failed")

    async def _flush_once(self) -> None:
        rows = self.ingest.drain_rows(time.time())
        if rows:
            await self.store.add_gpu_samples(rows, time.time() - TELEMETRY_KEEP_S)
        # Running jobs' accounting so far: a restart loses at most one flush of it.
        saved = accounting.dump(self.jobs.accounting)
        if saved != self._accounting_saved:
            await self.store.set_kv(ACCOUNTING_KEY, saved)
            self._accounting_saved = saved

    async def _flush_telemetry(self) -> None:
        while not await self._until_stopped(self.config.daemon.telemetry_flush_s):
            try:
                await self._flush_once()
            except StoreError as exc:
                log.warning("telemetry samples not saved: %s", exc)
            except Exception:
                log.exception("telemetry flush failed")

    async def _leadership(self) -> None:
        """The leader lock lives as long as the store's connection: a lost one means another
        dcd may lead now, so this one stops at once (it cannot write any more: the store
        does not connect again) and exits non-zero for systemd to restart it, as a standby.
        An idle leader notices within LEAD_CHECK_S."""
        while not self.store.lost.is_set():
            waits = {asyncio.ensure_future(e.wait()) for e in (self.stop, self.store.lost)}
            await asyncio.wait(waits, timeout=LEAD_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if self.stop.is_set() and not self.store.lost.is_set():
                return
            with contextlib.suppress(StoreError):  # a lost connection sets store.lost
                await self.store.check_lead()
        log.critical(
            "lost leadership: %s; stopping (exit 3), another dcd may lead now",
            self.store.lost_leadership,
        )
        notify("STATUS=lost leadership")
        self.exit_code = 3
        self.stop.set()

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while not await self._until_stopped(interval):
            notify("WATCHDOG=1")

    async def on_fault(self, fault: GpuFault) -> None:
        """An agent's GPU fault: the GPU is unhealthy (avoided) until the node is resumed; the
        health policy may drain the node, with the reason, kept in its drain history; the
        fault itself is kept in the node's events."""
        what = describe(fault)
        seen = self.cluster.faults.setdefault(fault.host, {})
        if seen.get(fault.gpu_index) == what:
            return  # the same fault again (events arrive at least once)
        log.warning("GPU fault on %s: %s", fault.host, what)
        await self.store.add_node_event(fault.host, fault.ts, "fault", what)
        if fault.kind not in TRANSIENT:
            seen[fault.gpu_index] = what
        # A slowdown is unhealthy only while the agent's samples say so (Cluster.unhealthy).
        self.hub.publish("node", {"host": fault.host, "gpu_fault": fault.gpu_index, "fault": what})
        self.scheduling.wake.set()
        reason = drain_reason(self.health_policy, fault)
        node = self.cluster.nodes.get(fault.host)
        if reason and node is not None and not node.drained:
            await self.set_drain(fault.host, True, reason, HEALTH_POLICY)

    async def set_drain(
        self, host: str, drained: bool, reason: str, by: str = "", audit: AuditRow | None = None
    ) -> None:
        """Drains or resumes a node; `reason` and `by` go into its drain history."""
        try:
            await self.store.set_drain(host, drained, reason, by, audit)
        except NotFound:
            raise NoSuchThing(f"no node {host!r}; `dcctl nodes` lists the nodes") from None
        if audit is not None:
            written_with_change()
        node = self.cluster.nodes[host]
        node.drained, node.drain_reason = drained, reason if drained else ""
        if not drained:
            self.cluster.faults.pop(host, None)  # resumed: its GPUs are trusted again
        log.info("node %s %s", host, f"drained: {reason}" if drained else "resumed")
        # DRAINING while jobs still run there; the executor says DRAINED when the last ends.
        state = drain_state(drained, len(self.model.on_host.get(host, ())))
        self.hub.publish(
            "node", {"host": host, "drained": drained, "reason": reason, "drain_state": state}
        )
        self.scheduling.wake.set()


def host_filter(patterns: list[str]) -> Callable[[str], bool]:
    """`[daemon] hosts`: names or shell patterns (gpu-*); empty admits every host the
    broker lets publish (its ACL is then the only gate)."""
    if not patterns:
        return lambda host: True
    exact = {p for p in patterns if not any(c in p for c in "*?[")}
    globs = [p for p in patterns if p not in exact]
    return lambda host: host in exact or any(fnmatch.fnmatchcase(host, g) for g in globs)


def _token_key(config: Config, cluster_key: bytes | None) -> bytes:
    """The API tokens' key: [daemon] token_key_file, else derived from the cluster key;
    without either (an --insecure test), one of this run only."""
    path = config.daemon.token_key_file
    if path:
        try:
            key = load_key(path)
        except (OSError, ProtocolError) as exc:
            raise ConfigError(f"[daemon] token_key_file: {exc}") from None
        assert key is not None
        return key
    if cluster_key is not None:
        return derive_key(cluster_key)
    if config.daemon.listen:
        log.warning("no cluster key: API tokens are valid only until this dcd stops")
    return secrets.token_bytes(32)


def _cluster_key(config: Config, insecure: bool) -> bytes | None:
    try:
        key = load_key(config.cluster.key_file or None)
    except (OSError, ProtocolError) as exc:
        raise ConfigError(f"[cluster] key_file: {exc}") from None
    if key is None and not insecure:
        raise ConfigError(
            "no [cluster] key_file: agents refuse unsigned commands (and an agent run with "
            "--insecure would take anyone's). Make one with `head -c 32 /dev/urandom | "
            "base64 > /etc/dcsched/cluster.key`, or pass --insecure for a single-user test"
        )
    if key is None:
        log.warning("INSECURE: no [cluster] key_file: commands to agents are not signed")
    return key


async def _mqtt_client_id(store: Store) -> str:
    """The broker session of this store's leader: made once, kept in the store. Two daemons
    of two stores on one host never share it (each would knock the other off the broker),
    and a standby that takes over a shared store resumes the session of the leader before
    it (the broker kept the QoS 1 events queued for it)."""
    saved = await store.get_kv(MQTT_ID_KEY)
    if saved:
        return saved
    made = f"dcd-{secrets.token_hex(8)}"  # 20 characters: MQTT 3.1.1 servers must take 23
    await store.set_kv(MQTT_ID_KEY, made)
    return made


async def _next_epoch(store: Store) -> int:
    """This start's epoch: above every earlier one (kept in the store), and at least the
    current Unix time, so that a daemon whose store was rebuilt still starts above the
    epoch its agents remember (agents refuse commands from an older epoch)."""
    old = await store.get_kv("epoch")
    epoch = max(int(old) + 1 if old and old.isdigit() else 0, int(time.time()))
    await store.set_kv("epoch", str(epoch))
    return epoch


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"[daemon] socket_group = {group!r}: no such group; create it (groupadd --system"
            f' {group}) or set socket_group = ""'
        ) from None


def _give_group(path: str, gid: int, group: str) -> None:
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        raise ConfigError(
            f"[daemon] socket_group = {group!r}: the daemon (uid {os.getuid()}) is not a member;"
            " add it (SupplementaryGroups= in dcd.service, or usermod -aG)"
        ) from None


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
