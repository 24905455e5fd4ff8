"""The one read model behind the API and `/metrics`: views of jobs, nodes, GPUs and the
cluster, built from memory (the model, the node inventory, the latest telemetry). Only
finished jobs come from the store, by id or newest first with a limit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from dcsched.daemon.bus import Bus
from dcsched.daemon.cluster import Cluster
from dcsched.daemon.ingest import Ingest
from dcsched.daemon.jobs import JobManager
from dcsched.daemon.lifecycle import Job, Part
from dcsched.daemon.model import Model
from dcsched.daemon.scheduling import SchedulingLoop
from dcsched.daemon.states import ACTIVE, QUEUED, TERMINAL
from dcsched.daemon.store import Store
from dcsched.protocol.jobspec import array_limit
from dcsched.scheduler import decay

_encode = msgspec.json.Encoder().encode
# (host, GPU index) -> (job id, user) for every GPU a job holds
Allocations = Mapping[tuple[str, int], tuple[int, str]]


class ReadModel:
    def __init__(
        self,
        store: Store,
        model: Model,
        cluster: Cluster,
        ingest: Ingest,
        jobs: JobManager,
        scheduling: SchedulingLoop,
        bus: Bus,
    ) -> None:
        self.store = store
        self.model = model
        self.cluster = cluster
        self.ingest = ingest
        self.jobs = jobs
        self.scheduling = scheduling
        self.bus = bus
        self._encoded: dict[int, tuple[Job, int, bytes]] = {}

    # --- jobs ----------------------------------------------------------------------------------

    def job_view(self, job: Job, detail: bool = True) -> dict[str, Any]:
        out = self._fixed_view(job, detail)
        out.update(self._moving_view(job))
        return out

    def _fixed_view(self, job: Job, detail: bool) -> dict[str, Any]:
        """What changes only when the job (or, while it waits, the scheduler's pass) does."""
        out = job.to_dict()
        if job.array_job_id is not None:
            # for the array's line in `dcctl queue` (`123_[2-99%8]`): listings carry no spec
            out["array_limit"] = array_limit(job.spec.get("array") or "")
        if not detail:
            del out["spec"]
        if job.state in QUEUED:
            info = self.scheduling.stats.last.pending.get(str(job.id))
            if info is not None:
                out["reasons"] = list(info.reasons)
                out["priority"] = info.priority
                out["est_start"] = info.est_start
            out["reason"] = job.reason or self.scheduling.reasons.get(job.id, "")
        parts = self._parts(job)
        out["node_parts"] = [p.to_dict() for p in (job.parts if detail else parts)]
        out["hosts"] = [p.host for p in parts]
        return out

    def _moving_view(self, job: Job) -> dict[str, Any]:
        """What changes with the clock and the telemetry."""
        out: dict[str, Any] = {}
        now = time.time()
        if job.start_ts is not None:
            out["elapsed_s"] = (job.end_ts or now) - job.start_ts
        if job.state in ACTIVE:
            utils = [
                u
                for p in self._parts(job)
                if (u := self.ingest.job_util(p.host, list(p.gpus))) is not None
            ]
            out["gpu_util"] = sum(utils) / len(utils) if utils else None
            # seconds its GPUs have all been idle, once the idle check has flagged it
            flagged = job.id in self.jobs.idle_flagged
            out["idle_s"] = self.jobs.accounting.idle_for(job.id, now) if flagged else None
        return out

    @staticmethod
    def _parts(job: Job) -> list[Part]:
        return [p for p in job.parts if p.live] if job.state in ACTIVE else list(job.parts)

    async def list_jobs(
        self,
        states: set[str],
        user: str | None,
        limit: int | None,
        *,
        since: float | None = None,
        until: float | None = None,
    ) -> bytes:
        """`{"jobs": [...]}` as JSON: live jobs from memory (all of them), finished ones from
        the store (newest first, up to `limit`); newest first overall. With `since`/`until`
        only the jobs that ended in that window (live jobs have not ended)."""
        window = since is not None or until is not None
        live = [
            (i, j)
            for i in sorted(self.model.jobs, reverse=True)
            if not window
            and (j := self.model.jobs[i]).state in states
            and (not user or j.user == user)
        ]
        done = states & TERMINAL
        if done:
            n = 1000 if limit is None else limit
            live += [
                (j.id, j)
                for j in await self.store.finished_jobs(done, user, n, since=since, until=until)
            ]
            live.sort(key=lambda ij: -ij[0])
        if limit is not None:
            live = live[:limit]
        return b'{"jobs":[' + b",".join(self._row(j) for _, j in live) + b"]}"

    def _row(self, job: Job) -> bytes:
        """A job's listing row, encoded. Its fixed part is encoded once per change of the
        job (and, while it waits, once per pass for the scheduler's reasons), not per read;
        a running job's elapsed time and utilisation are appended to it."""
        if job.state in TERMINAL:
            return _encode(self.job_view(job, detail=False))
        stamp = self.scheduling.stats.passes if job.state in QUEUED else -1
        hit = self._encoded.get(job.id)
        if hit is not None and hit[0] is job and hit[1] == stamp:
            fixed = hit[2]
        else:
            fixed = _encode(self._fixed_view(job, detail=False))
            self._encoded[job.id] = (job, stamp, fixed)
            if len(self._encoded) > 2 * len(self.model.jobs) + 10_000:
                self._encoded = {i: v for i, v in self._encoded.items() if i in self.model.jobs}
        moving = self._moving_view(job)
        return fixed[:-1] + b"," + _encode(moving)[1:] if moving else fixed

    def counts(self) -> dict[str, int]:
        return {s: n for s, n in self.model.counts.items() if n}

    def queue_depth(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """(state, account, QOS) -> (jobs, GPUs asked for) over every job not finished."""
        out: dict[tuple[str, str, str], tuple[int, int]] = {}
        for job in self.model.jobs.values():
            key = (job.state, job.account, job.qos)
            n, gpus = out.get(key, (0, 0))
            out[key] = (n + 1, gpus + job.nodes * job.gpus_per_node)
        return out

    def fairshare_usage(self, now: float) -> dict[tuple[str, str], float]:
        """(account, user) -> decayed, billed GPU-seconds as of `now` (no charge made)."""
        tracker = self.scheduling.usage
        return dict(decay(tracker.usage, now, tracker.config.half_life_s).gpu_seconds)

    # --- nodes and GPUs ------------------------------------------------------------------------

    def node_views(self, alloc: Allocations | None = None) -> list[dict[str, Any]]:
        if alloc is None:
            alloc = self.model.allocations()
        out = []
        for node in sorted(self.cluster.nodes.values(), key=lambda n: n.host):
            st = node.status
            held = [alloc[k] for g in st.gpus if (k := (node.host, g.index)) in alloc]
            ht = self.ingest.hosts.get(node.host)
            utils = [s.util for s in ht.latest.gpus if s.util is not None] if ht else []
            out.append(
                {
                    "host": node.host,
                    "state": self.cluster.state(node),
                    "online": node.online,
                    "drained": node.drained,
                    # Slurm's words: DRAINING while jobs still run there, then DRAINED
                    "drain_state": drain_state(node.drained, len(held)),
                    "drain_reason": node.drain_reason,
                    "unhealthy_gpus": sorted(self.cluster.unhealthy(node.host)),
                    "addr": st.addr,
                    "gpu_type": node.gpu_type,
                    "gpus": len(st.gpus),
                    "gpus_allocated": len(held),
                    "model": st.gpus[0].model if st.gpus else "",
                    "simulated": st.simulated,
                    "backend": st.backend,
                    "agent_version": st.agent_version,
                    "driver": st.driver,
                    "jobs": sorted({j for j, _ in held}),
                    "mean_util": sum(utils) / len(utils) if utils else None,
                    "telemetry_age_s": self.ingest.age(node.host),
                }
            )
        return out

    def node_view(self, host: str) -> dict[str, Any] | None:
        return next((n for n in self.node_views() if n["host"] == host), None)

    def gpu_views(self, alloc: Allocations | None = None) -> list[dict[str, Any]]:
        if alloc is None:
            alloc = self.model.allocations()
        out = []
        for node in sorted(self.cluster.nodes.values(), key=lambda n: n.host):
            ht = self.ingest.hosts.get(node.host)
            samples = {s.index: s for s in ht.latest.gpus} if ht else {}
            node_state = self.cluster.state(node)
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
                        "node_state": node_state,
                    }
                )
        return out

    #: what `GET /v1/gpus?form=columns` carries: what changes every second, plus what says
    #: whose the GPU is (so a client refetches the full rows only when GPUs come or go)
    TELEMETRY_COLUMNS = ("util", "mem_used", "temp_c", "power_w", "health", "job_id", "user")

    def gpu_columns(self) -> dict[str, Any]:
        """Every GPU's telemetry as one list per field, in `gpu_views` order, keyed
        "host/index": a tenth of the bytes of the rows and far cheaper to decode, for
        clients (dctop) that read it every second and hold the rest from one full read."""
        alloc = self.model.allocations()
        keys: list[str] = []
        cols: dict[str, list[Any]] = {c: [] for c in self.TELEMETRY_COLUMNS}
        util, mem, temp, power, health, job_id, user = cols.values()
        for node in sorted(self.cluster.nodes.values(), key=lambda n: n.host):
            ht = self.ingest.hosts.get(node.host)
            samples = {s.index: s for s in ht.latest.gpus} if ht else {}
            for g in node.status.gpus:
                keys.append(f"{node.host}/{g.index}")
                s = samples.get(g.index)
                job = alloc.get((node.host, g.index))
                util.append(s.util if s else None)
                mem.append(s.mem_used if s else None)
                temp.append(s.temp_c if s else None)
                power.append(s.power_w if s else None)
                health.append(s.health if s else "unknown")
                job_id.append(job[0] if job else None)
                user.append(job[1] if job else None)
        return {"form": "columns", "keys": keys, **cols}

    def cluster_summary(self) -> dict[str, Any]:
        # Polled every second by every dctop: counted in one walk, no per-GPU views.
        alloc = self.model.allocations()
        states = {"up": 0, "drained": 0, "joining": 0, "down": 0}
        total = allocated = 0
        utils: list[float] = []
        power: list[float] = []
        for node in self.cluster.nodes.values():
            state = self.cluster.state(node)
            states[state] = states.get(state, 0) + 1
            ht = self.ingest.hosts.get(node.host)
            samples = {s.index: s for s in ht.latest.gpus} if ht else {}
            for g in node.status.gpus:
                total += 1
                allocated += (node.host, g.index) in alloc
                sample = samples.get(g.index)
                if sample is not None:
                    if sample.util is not None:
                        utils.append(sample.util)
                    if sample.power_w is not None:
                        power.append(sample.power_w)
        st = self.scheduling.stats
        return {
            "nodes": states,
            "gpus": {"total": total, "allocated": allocated, "idle": total - allocated},
            "mean_util": sum(utils) / len(utils) if utils else None,
            "power_w": sum(power) if power else None,
            "jobs": self.counts(),
            "scheduler": {
                "passes": st.passes,
                "last_pass_ms": st.last_ms,
                "last_pass_total_ms": st.last_total_ms,
            },
            "telemetry": {
                "messages": self.ingest.received,
                "stale": self.ingest.stale,
                "dropped": {k: dict(c.dropped) for k, c in self.bus.codecs().items()},
            },
            "storage": {"ok": not self.jobs.storage_error, "error": self.jobs.storage_error},
            # the epoch every command carries (agents refuse older ones; docs/security.md)
            "epoch": self.jobs.sender.epoch,
        }


def drain_state(drained: bool, gpus_allocated: int) -> str:
    """ "draining" while a drained node still runs jobs, then "drained"; "" when not drained."""
    if not drained:
        return ""
    return "draining" if gpus_allocated else "drained"


def last_requeue(events: list[dict[str, Any]], going: bool = False) -> dict[str, Any] | None:
    """`{"ts", "why"}` of the newest stop of a run that went back to the queue, from the
    job's history (`Store.job_events`): the step into COMPLETING after an allocation that a
    REQUEUED follows. `going`: the job is on its way back now (COMPLETING, ending
    REQUEUED), so its current stop counts too. None if no run was requeued."""
    begun: dict[str, Any] | None = None  # the stop of the run in hand
    found: dict[str, Any] | None = None
    for ev in events:
        state = ev["state"]
        if state == "STARTING":
            begun = None
        elif state == "COMPLETING" and begun is None:
            begun = ev
        elif state == "REQUEUED" and begun is not None:
            found, begun = begun, None
        elif state in TERMINAL:
            begun = None
    last = begun if going and begun is not None else found
    return None if last is None else {"ts": last["ts"], "why": last["detail"]}
