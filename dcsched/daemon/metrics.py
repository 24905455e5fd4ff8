"""`/metrics`: a prometheus_client collector over the read model, served on a read-only TCP
listener. Nothing is kept twice: every scrape reads the live model, the node inventory, the
latest telemetry and the histograms the loops keep (`histogram.py`).

Per-GPU series use dcgm-exporter's names, units and labels (`Hostname`, `gpu`, `UUID`,
`modelName`), so its dashboards and alert rules work on dcsched unchanged. Which job holds a
GPU is one series to join on, `dcsched_gpu_job_info{Hostname,gpu,job,user,account}`, not a
job label on every series (a label that changes with every job would make new series each
time). The rest is `dcsched_*`. Every name is listed in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from dcsched import __version__
from dcsched.daemon.histogram import Histogram
from dcsched.daemon.states import JobState

if TYPE_CHECKING:
    from dcsched.daemon.readmodel import ReadModel

GPU_LABELS = ["Hostname", "gpu", "UUID", "modelName"]
MIB = 1024 * 1024

# dcgm-exporter's field, the read model's key, the factor to its unit, help text.
DCGM_FIELDS: tuple[tuple[str, str, float, str], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "util", 1.0, "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "mem_used", 1 / MIB, "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "power_w", 1.0, "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "temp_c", 1.0, "GPU temperature (in C)."),
    ("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", 1.0, "SM clock frequency (in MHz)."),
    # dcgm-exporter types this one counter; the text format wants a counter's name to end
    # in _total, so it is typed gauge here to keep the name. rate() works on either.
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "energy_j",
        1000.0,
        "Total energy consumption since the driver loaded (in mJ; a counter).",
    ),
)


def _histogram(name: str, help_: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(_bound(b), float(n)) for b, n in h.cumulative()]
    return HistogramMetricFamily(name, help_, buckets=buckets, sum_value=h.sum)


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a scrape reads of the live state, copied: per-GPU and per-node views as fresh
    plain data (turned into metric families anywhere, a worker thread included) and the
    small families built at once."""

    gpus: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    accounts: dict[int, str]  # job -> account
    rest: list[Metric]


class DaemonCollector(Collector):
    def __init__(self, read: ReadModel) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        return self.families(self.snapshot())

    def snapshot(self) -> Snapshot:
        """In the event loop: everything read from live state."""
        d = self.read
        alloc = d.model.allocations()
        rest = [*self._jobs(), *self._scheduler(), *self._bus()]
        up = GaugeMetricFamily("dcsched_store_writable", "1 while the state store can be written.")
        up.add_metric([], float(not d.jobs.storage_error))
        info = GaugeMetricFamily(
            "dcsched_build_info", "Always 1; the daemon's version.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        return Snapshot(
            d.gpu_views(alloc),
            d.node_views(alloc),
            {j.id: j.account for j in d.model.jobs.values()},
            [*rest, up, info],
        )

    def families(self, snap: Snapshot) -> Iterator[Metric]:
        """Anywhere: the snapshot's metric families (reads nothing live)."""
        yield from self._gpus(snap.gpus, snap.accounts)
        yield from self._nodes(snap.nodes)
        yield from snap.rest

    def _gpus(self, gpus: list[dict[str, Any]], accounts: dict[int, str]) -> Iterable[Metric]:
        def labels(g: dict[str, Any]) -> list[str]:
            return [g["host"], str(g["index"]), g["uuid"], g["model"]]

        for name, key, factor, help_ in DCGM_FIELDS:
            fam = GaugeMetricFamily(name, help_, labels=GPU_LABELS)
            for g in gpus:
                if g[key] is not None:  # N/A on this GPU: no sample, as dcgm-exporter does
                    fam.add_metric(labels(g), g[key] * factor)
            yield fam
        healthy = GaugeMetricFamily(
            "dcsched_gpu_healthy",
            "1 while the GPU's agent reports it healthy (0: XID error, lost, ...).",
            labels=GPU_LABELS[:3],
        )
        job_info = GaugeMetricFamily(
            "dcsched_gpu_job_info",
            "1 for each GPU a job holds; join on Hostname and gpu for per-job GPU series.",
            labels=["Hostname", "gpu", "job", "user", "account"],
        )
        for g in gpus:
            healthy.add_metric(labels(g)[:3], float(g["health"] in ("ok", "unknown")))
            if g["job_id"] is not None:
                job = g["job_id"]
                job_info.add_metric(
                    [g["host"], str(g["index"]), str(job), g["user"], accounts.get(job, "")], 1.0
                )
        yield healthy
        yield job_info

    def _nodes(self, nodes: list[dict[str, Any]]) -> Iterable[Metric]:
        by_state = dict.fromkeys(("up", "drained", "joining", "down"), 0)
        per_node = GaugeMetricFamily(
            "dcsched_node_state",
            "1 for a node's scheduling state (up, drained, joining, down).",
            labels=["Hostname", "state"],
        )
        for n in nodes:
            by_state[n["state"]] = by_state.get(n["state"], 0) + 1
            per_node.add_metric([n["host"], n["state"]], 1.0)
        counts = GaugeMetricFamily("dcsched_nodes", "Nodes by scheduling state.", labels=["state"])
        for state, k in by_state.items():
            counts.add_metric([state], float(k))
        yield counts
        yield per_node

    def _jobs(self) -> Iterable[Metric]:
        d = self.read
        counts = d.counts()
        jobs = GaugeMetricFamily(
            "dcsched_jobs",
            "Jobs by state (finished states: since the store began).",
            labels=["state"],
        )
        for s in JobState:
            jobs.add_metric([s.value], float(counts.get(s.value, 0)))
        yield jobs
        depth = GaugeMetricFamily(
            "dcsched_queue_jobs",
            "Jobs not finished, by state, account and QOS.",
            labels=["state", "account", "qos"],
        )
        gpus = GaugeMetricFamily(
            "dcsched_queue_gpus",
            "GPUs asked for by jobs not finished, by state, account and QOS.",
            labels=["state", "account", "qos"],
        )
        for (state, account, qos), (n, g) in sorted(d.queue_depth().items()):
            depth.add_metric([state, account, qos], float(n))
            gpus.add_metric([state, account, qos], float(g))
        yield depth
        yield gpus
        yield _histogram(
            "dcsched_job_queue_wait_seconds",
            "Time from submission to start, observed as each job starts.",
            d.jobs.queue_wait_s,
        )
        idle = GaugeMetricFamily(
            "dcsched_jobs_idle", "Running jobs flagged idle ([daemon] idle_after_s)."
        )
        idle.add_metric([], float(len(d.jobs.idle_flagged)))
        yield idle
        idle_s = GaugeMetricFamily(
            "dcsched_job_idle_seconds",
            "How long each job flagged idle has had all its GPUs under idle_util_pct.",
            labels=["job", "user", "account"],
        )
        now = time.time()
        for job_id in sorted(d.jobs.idle_flagged):
            job = d.model.jobs.get(job_id)
            secs = d.jobs.accounting.idle_for(job_id, now)
            if job is not None and secs is not None:
                idle_s.add_metric([str(job_id), job.user, job.account], secs)
        yield idle_s
        usage = GaugeMetricFamily(
            "dcsched_fairshare_usage_gpu_seconds",
            "Decayed, billed GPU-seconds that fair-share charges to each account and user.",
            labels=["account", "user"],
        )
        for (account, user), v in sorted(d.fairshare_usage(time.time()).items()):
            usage.add_metric([account, user], v)
        yield usage

    def _scheduler(self) -> Iterable[Metric]:
        st = self.read.scheduling.stats
        yield _histogram(
            "dcsched_scheduler_pass_seconds",
            "Whole scheduling passes: snapshot, decide() and applying its decisions.",
            st.pass_s,
        )
        yield _histogram(
            "dcsched_scheduler_decide_seconds", "decide() alone, per scheduling pass.", st.decide_s
        )

    def _bus(self) -> Iterable[Metric]:
        d = self.read
        received = CounterMetricFamily(
            "dcsched_telemetry_messages", "Telemetry messages ingested (rate(): ingest rate)."
        )
        received.add_metric([], float(d.ingest.received))
        yield received
        stale = CounterMetricFamily(
            "dcsched_telemetry_stale_messages",
            "Telemetry messages dropped as older than one already seen from the host.",
        )
        stale.add_metric([], float(d.ingest.stale))
        yield stale
        dropped = CounterMetricFamily(
            "dcsched_messages_dropped",
            "Bus messages dropped, by topic kind and reason: did not decode, named another host"
            " than their topic, came from a host not in [daemon] hosts, or from one with no"
            " status.",
            labels=["kind", "reason"],
        )
        for kind, codec in sorted(d.bus.codecs().items()):
            for reason, n in sorted(codec.dropped.items()):
                dropped.add_metric([kind, reason], float(n))
        yield dropped
        reconnects = CounterMetricFamily("dcsched_broker_reconnects", "Broker reconnections.")
        reconnects.add_metric([], float(d.bus.reconnects))
        yield reconnects
        connected = GaugeMetricFamily(
            "dcsched_broker_connected", "1 while the daemon is connected to the broker."
        )
        connected.add_metric([], float(d.bus.connected.is_set()))
        yield connected


def registry(read: ReadModel) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)  # no collect() at registration
    reg.register(DaemonCollector(read))
    return reg


def render(read: ReadModel) -> bytes:
    return generate_latest(registry(read))


class _FromSnapshot(Collector):
    def __init__(self, collector: DaemonCollector, snap: Snapshot) -> None:
        self.collector, self.snap = collector, snap

    def collect(self) -> Iterator[Metric]:
        return self.collector.families(self.snap)


def metrics_app(read: ReadModel) -> web.Application:
    collector = DaemonCollector(read)

    async def handler(request: web.Request) -> web.Response:
        # The live state is read in the event loop (a snapshot: ~40 ms for 8,000 GPUs); the
        # metric families and their text, most of a scrape's cost (~300 ms for 8,000 GPUs
        # with prometheus_client), are made in a worker thread so that ingest and
        # scheduling go on meanwhile.
        snap = collector.snapshot()
        body = await asyncio.to_thread(generate_latest, _FromSnapshot(collector, snap))
        return web.Response(
            body=body,
            headers={"Content-Type": CONTENT_TYPE_LATEST, "X-Content-Type-Options": "nosniff"},
        )

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
