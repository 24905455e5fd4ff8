"""Prometheus text exposition on a read-only TCP listener (no client library needed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from dcsched.daemon.states import JobState

if TYPE_CHECKING:
    from dcsched.daemon.readmodel import ReadModel


def _labels(**kv: object) -> str:
    if not kv:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in kv.items()
    )
    return "{" + inner + "}"


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_: str,
        samples: Iterable[tuple[dict[str, object], float | int | None]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is not None:
                self.lines.append(f"{name}{_labels(**labels)} {value}")


def render(d: ReadModel) -> str:
    o = _Out()
    counts = d.counts()
    alloc = d.model.allocations()
    o.metric(
        "dcsched_jobs",
        "gauge",
        "Jobs by state.",
        (({"state": s.value}, counts.get(s.value, 0)) for s in JobState),
    )
    nodes = d.node_views(alloc)
    by_state: dict[str, int] = {}
    for n in nodes:
        by_state[n["state"]] = by_state.get(n["state"], 0) + 1
    o.metric(
        "dcsched_nodes",
        "gauge",
        "Nodes by scheduling state.",
        (({"state": s}, by_state.get(s, 0)) for s in ("up", "drained", "joining", "down")),
    )
    gpus = d.gpu_views(alloc)
    for name, key, help_ in (
        ("dcsched_gpu_utilization_percent", "util", "GPU utilisation."),
        ("dcsched_gpu_memory_used_bytes", "mem_used", "GPU memory used."),
        ("dcsched_gpu_power_watts", "power_w", "GPU power draw."),
        ("dcsched_gpu_temperature_celsius", "temp_c", "GPU temperature."),
    ):
        o.metric(
            name,
            "gauge",
            help_,
            (({"host": g["host"], "gpu": g["index"]}, g.get(key)) for g in gpus),
        )
    o.metric(
        "dcsched_gpu_allocated",
        "gauge",
        "1 when a job holds the GPU.",
        (({"host": g["host"], "gpu": g["index"]}, int(g["job_id"] is not None)) for g in gpus),
    )
    o.metric(
        "dcsched_telemetry_messages_total",
        "counter",
        "Telemetry messages ingested.",
        [({}, d.ingest.received)],
    )
    dropped = [
        ({"kind": kind, "reason": reason}, n)
        for kind, codec in d.bus.codecs().items()
        for reason, n in codec.dropped.items()
    ]
    o.metric(
        "dcsched_messages_dropped_total",
        "counter",
        "Bus messages dropped: did not decode, named another host than their topic, "
        "came from a host not in [daemon] hosts, or from a host with no status.",
        dropped,
    )
    o.metric(
        "dcsched_broker_reconnects_total",
        "counter",
        "Broker reconnections.",
        [({}, d.bus.reconnects)],
    )
    st = d.scheduling.stats
    o.metric("dcsched_scheduler_passes_total", "counter", "Scheduling passes.", [({}, st.passes)])
    o.metric(
        "dcsched_scheduler_pass_seconds",
        "gauge",
        "Duration of the last decide().",
        [({}, st.last_ms / 1000)],
    )
    o.metric(
        "dcsched_scheduler_pass_total_seconds",
        "gauge",
        "Duration of the last whole pass: snapshot, decide() and applying its decisions.",
        [({}, st.last_total_ms / 1000)],
    )
    o.metric(
        "dcsched_store_writable",
        "gauge",
        "1 while the state store can be written.",
        [({}, int(not d.jobs.storage_error))],
    )
    return "\n".join(o.lines) + "\n"


def metrics_app(d: ReadModel) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            text=render(d),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
