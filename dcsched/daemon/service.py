"""dcd: one asyncio process, a TaskGroup of named tasks, stopped in order by one event."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import zlib
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from dcsched.daemon.aio import wait_event
from dcsched.daemon.api import Api
from dcsched.daemon.bus import Bus
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.commands import CommandSender
from dcsched.daemon.errors import NoSuchThing
from dcsched.daemon.ingest import Ingest
from dcsched.daemon.jobs import JobManager
from dcsched.daemon.metrics import metrics_app
from dcsched.daemon.scheduling import SchedulingLoop
from dcsched.daemon.sdnotify import notify, watchdog_interval
from dcsched.daemon.states import ACTIVE
from dcsched.daemon.store import NotFound, Store
from dcsched.protocol.codec import load_key
from dcsched.protocol.config import Config, ConfigError
from dcsched.protocol.messages import Ack, GpuFault, HostStatus, JobExited, JobStarted, LogChunk
from dcsched.scheduler import SchedulerConfig

log = logging.getLogger("dcsched.daemon")
TELEMETRY_KEEP_S = 7 * 24 * 3600
# (host, GPU index) -> (job id, user) for every GPU a job holds
Allocations = dict[tuple[str, int], tuple[int, str]]


class Daemon:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        dc = config.daemon
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.ingest = Ingest()
        self.cluster = Cluster(self.ingest, dc.node_timeout_s)
        # One persistent MQTT session per daemon and topic prefix.
        client_id = (
            f"dcd-{socket.gethostname()}-{zlib.crc32(config.broker.topic_prefix.encode()):08x}"
        )
        self.bus = Bus(config.broker, client_id, self.ingest.handle)
        self.sender = CommandSender(
            store, self.bus, load_key(config.cluster.key_file or None), dc.command_retry_s
        )
        self.sender.offline = self._offline
        try:
            sched = SchedulerConfig.from_mapping(config.scheduler)
        except ValueError as exc:
            raise ConfigError(f"{config.path}: {exc} (see docs/scheduler.md)") from None
        self.scheduling = SchedulingLoop(
            store, self.cluster, self.sender, sched, dc.ports(), dc.pass_interval_s
        )
        self.jobs = JobManager(
            store,
            self.sender,
            self.bus,
            self.cluster,
            self.ingest,
            sched,
            dc.cancel_grace_s,
            dc.node_timeout_s,
            self.scheduling.wake.set,
        )
        self.scheduling.preempt = self.jobs.preempt
        self.api = Api(self)

    @classmethod
    async def open(cls, config: Config) -> Daemon:
        Path(config.daemon.state_dir).mkdir(parents=True, exist_ok=True)
        store = await Store.open(os.path.join(config.daemon.state_dir, "dcsched.db"))
        try:
            d = cls(config, store)
        except BaseException:
            await store.close()
            raise
        await d.scheduling.usage.load()
        for n in await store.nodes():
            # Offline until the broker replays the agent's retained status.
            d.cluster.load(n.host, n.status, False, n.drained, n.drain_reason)
        return d

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
                self.ready.set()
                notify("READY=1\nSTATUS=serving")
                log.info("dcd ready: API on %s", self.config.daemon.socket)
                await self.stop.wait()
                notify("STOPPING=1")
                self.bus.inbox.put_nowait(None)  # ends the events task after what is queued
        finally:
            for r in runners:
                await r.cleanup()
            await self._flush_once()
            await self.scheduling.usage.save()
            await self.store.close()
            log.info("dcd stopped")

    def _offline(self, host: str) -> bool:
        node = self.cluster.nodes.get(host)
        return node is not None and not node.online

    async def _serve_api(self) -> web.AppRunner:
        path = self.config.daemon.socket
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(path):
            if _answers(path):
                raise ConfigError(f"another dcd is serving on {path}; stop it first")
            os.unlink(path)  # a stale socket from a crashed run
        runner = web.AppRunner(self.api.app, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        os.chmod(path, self.config.daemon.socket_mode)
        return runner

    async def _serve_metrics(self) -> web.AppRunner:
        host, _, port = self.config.daemon.metrics_listen.rpartition(":")
        runner = web.AppRunner(metrics_app(self), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        return runner

    async def _until_stopped(self, seconds: float) -> bool:
        return await wait_event(self.stop, seconds)

    async def _events(self) -> None:
        """Status and agent events, one at a time, in arrival order."""
        while (msg := await self.bus.inbox.get()) is not None:
            try:
                await self._handle(msg)
            except Exception:
                log.exception(
                    "handling %s from %s failed; dropped",
                    type(msg).__name__,
                    getattr(msg, "host", "?"),
                )

    async def _handle(
        self, msg: HostStatus | Ack | JobStarted | JobExited | GpuFault | LogChunk
    ) -> None:
        match msg:
            case HostStatus():
                changed = self.cluster.on_status(msg)
                node = self.cluster.nodes[msg.host]
                await self.store.upsert_node(
                    msg.host, node.online, msgspec.to_builtins(node.status), time.time()
                )
                if changed:
                    log.info("node %s is %s", msg.host, msg.state)
                    self.scheduling.wake.set()
                    self.sender.wake.set()
                await self.jobs.reconcile(msg.host, msg.running_jobs)
            case Ack():
                await self.jobs.on_ack(msg)
            case JobStarted():
                await self.jobs.on_started(msg)
            case JobExited():
                await self.jobs.on_exited(msg)
            case LogChunk():
                self.sender.on_log_chunk(msg)
            case GpuFault():
                log.warning(
                    "GPU fault on %s GPU %d: %s %s %s",
                    msg.host,
                    msg.gpu_index,
                    msg.kind,
                    msg.code,
                    msg.detail,
                )
                self.scheduling.wake.set()

    async def _periodic(self) -> None:
        while not await self._until_stopped(1.0):
            try:
                await self.jobs.check()
            except Exception:
                log.exception("periodic job check failed")

    async def _flush_once(self) -> None:
        rows = self.ingest.drain_rows(time.time())
        if rows:
            await self.store.add_gpu_samples(rows, time.time() - TELEMETRY_KEEP_S)

    async def _flush_telemetry(self) -> None:
        while not await self._until_stopped(self.config.daemon.telemetry_flush_s):
            try:
                await self._flush_once()
            except Exception:
                log.exception("telemetry flush failed")

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while not await self._until_stopped(interval):
            notify("WATCHDOG=1")

    # --- views for the API and metrics -----------------------------------------------------

    async def set_drain(self, host: str, drained: bool, reason: str) -> None:
        try:
            await self.store.set_drain(host, drained, reason)
        except NotFound:
            raise NoSuchThing(f"no node {host!r}; `dcctl nodes` lists the nodes") from None
        node = self.cluster.nodes[host]
        node.drained, node.drain_reason = drained, reason
        self.scheduling.wake.set()

    async def allocations(self) -> Allocations:
        """(host, gpu) -> (job id, user) for every GPU a job holds."""
        users = {j.id: j.user for j in await self.store.jobs(ACTIVE)}
        out = {}
        for p in await self.store.job_nodes(states=("launching", "running")):
            if p.job_id in users:
                for g in p.gpus:
                    out[(p.host, g)] = (p.job_id, users[p.job_id])
        return out

    async def node_views(self, alloc: Allocations | None = None) -> list[dict[str, Any]]:
        """Every node for the API; `alloc` saves a second store read for callers that have it."""
        if alloc is None:
            alloc = await self.allocations()
        out = []
        for node in sorted(self.cluster.nodes.values(), key=lambda n: n.host):
            st = node.status
            n_alloc = sum(1 for g in st.gpus if (node.host, g.index) in alloc)
            ht = self.ingest.hosts.get(node.host)
            utils = [s.util for s in ht.latest.gpus if s.util is not None] if ht else []
            out.append(
                {
                    "host": node.host,
                    "state": self.cluster.state(node),
                    "online": node.online,
                    "drained": node.drained,
                    "drain_reason": node.drain_reason,
                    "addr": st.addr,
                    "gpu_type": node.gpu_type,
                    "gpus": len(st.gpus),
                    "gpus_allocated": n_alloc,
                    "model": st.gpus[0].model if st.gpus else "",
                    "simulated": st.simulated,
                    "backend": st.backend,
                    "agent_version": st.agent_version,
                    "driver": st.driver,
                    "jobs": sorted(
                        {
                            alloc[(node.host, g.index)][0]
                            for g in st.gpus
                            if (node.host, g.index) in alloc
                        }
                    ),
                    "mean_util": sum(utils) / len(utils) if utils else None,
                    "telemetry_age_s": self.ingest.age(node.host),
                }
            )
        return out

    async def gpu_views(self, alloc: Allocations | None = None) -> list[dict[str, Any]]:
        if alloc is None:
            alloc = await self.allocations()
        out = []
        for node in sorted(self.cluster.nodes.values(), key=lambda n: n.host):
            ht = self.ingest.hosts.get(node.host)
            samples = {s.index: s for s in ht.latest.gpus} if ht else {}
            for g in node.status.gpus:
                s = samples.get(g.index)
                job = alloc.get((node.host, g.index))
                out.append(
                    {
                        "host": node.host,
                        "index": g.index,
                        "uuid": g.uuid,
                        "model": g.model,
                        "util": s.util if s else None,
                        "mem_used": s.mem_used if s else None,
                        "mem_total": (s.mem_total if s and s.mem_total else g.mem_total),
                        "temp_c": s.temp_c if s else None,
                        "power_w": s.power_w if s else None,
                        "sm_clock_mhz": s.sm_clock_mhz if s else None,
                        "energy_j": s.energy_j if s else None,
                        "health": s.health if s else "unknown",
                        "pids": s.pids if s else [],
                        "job_id": job[0] if job else None,
                        "user": job[1] if job else None,
                        "node_state": self.cluster.state(node),
                    }
                )
        return out

    async def cluster_summary(self) -> dict[str, Any]:
        alloc = await self.allocations()
        nodes = await self.node_views(alloc)
        gpus = await self.gpu_views(alloc)
        utils = [g["util"] for g in gpus if g["util"] is not None]
        power = [g["power_w"] for g in gpus if g["power_w"] is not None]
        counts = await self.store.count_by_state()
        return {
            "nodes": {
                s: sum(1 for n in nodes if n["state"] == s) for s in ("up", "drained", "down")
            },
            "gpus": {
                "total": len(gpus),
                "allocated": sum(1 for g in gpus if g["job_id"] is not None),
                "idle": sum(1 for g in gpus if g["job_id"] is None),
            },
            "mean_util": sum(utils) / len(utils) if utils else None,
            "power_w": sum(power) if power else None,
            "jobs": counts,
            "scheduler": {
                "passes": self.scheduling.stats.passes,
                "last_pass_ms": self.scheduling.stats.last_ms,
            },
            "telemetry": {
                "messages": self.ingest.received,
                "stale": self.ingest.stale,
                "dropped": {k: dict(c.dropped) for k, c in self.bus.codecs().items()},
            },
        }


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
