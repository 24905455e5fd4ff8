"""dctop's copy of the daemon's state between reads, and what it reads each second.

With the daemon's event stream (`GET /v1/events`) dctop reads everything once, then only:
the cluster summary (small), the GPU telemetry as columns (`/v1/gpus?form=columns`, only
while a view shows GPUs or jobs' utilisation), the jobs the stream said changed
(`/v1/jobs?ids=`), and the nodes and full GPU rows when a node changed. Without the stream
(a proxy that buffers it, or while it reconnects) dctop asks each second what changed
(`/v1/jobs?changed_since=CURSOR`, which carries the changed jobs' rows) and reads the
same way; a daemon older than both gets a full read every time, as before. Pure Python,
no textual: the event thread and the poll worker share only a `Feed`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter, truediv
from typing import Any, Protocol

from dcsched.tui.data import (
    ACTIVE,
    JSON,
    QUEUED,
    TREND,
    GpuList,
    Series,
    Snapshot,
    Source,
)

#: a batch of changed jobs larger than this is read as one full listing
MAX_IDS = 500


class LiveSource(Source, Protocol):
    """What the live mode needs beyond Source (dcsched.client.Client has these)."""

    def gpu_columns(self) -> JSON: ...
    def jobs_by_id(self, ids: Any) -> list[JSON]: ...
    def jobs_changed_since(self, cursor: str = "") -> JSON: ...


class Feed:
    """What the event stream said changed since the last read, gathered by the event
    thread and taken by the poll worker. Starts dirty: the first read is a full one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: set[str] = set()
        self._nodes = False
        self._reset = True
        self.events = 0

    def job(self, job_id: Any) -> None:
        with self._lock:
            self._jobs.add(str(job_id))
            self.events += 1

    def node(self) -> None:
        with self._lock:
            self._nodes = True
            self.events += 1

    def reset(self) -> None:
        with self._lock:
            self._reset = True

    def on_event(self, kind: str, data: JSON) -> None:
        if kind == "job" and data.get("id") is not None:
            self.job(data["id"])
        elif kind == "node":
            self.node()
        elif kind == "reset":
            self.reset()

    def take(self) -> tuple[bool, set[str], bool]:
        """(re-read everything, changed job ids, nodes changed), and clears them."""
        with self._lock:
            out = (self._reset, self._jobs, self._nodes)
            self._reset, self._jobs, self._nodes = False, set(), False
            return out


@dataclass
class LiveState:
    cluster: JSON = field(default_factory=dict)
    nodes: list[JSON] = field(default_factory=list)
    gpus: GpuList = field(default_factory=lambda: GpuList([]))
    jobs: dict[str, JSON] = field(default_factory=dict)  # waiting and running, by id
    series: dict[str, Series] = field(default_factory=dict)
    full_reads = 0
    partial_reads = 0
    jobs_version = 0  # bumped when the set of jobs or one's state / priority changes
    # which GPU positions each job holds, for the job column it was worked out from
    _owners: tuple[list[Any], dict[str, Callable[[Sequence[Any]], tuple[Any, ...]]]] | None = None
    _active_at: int | None = None
    #: the polling fallback's cursor, and the changed jobs' rows its last answer carried
    cursor: str = ""
    _prefetched: dict[str, JSON] = field(default_factory=dict)
    _active_ids: list[str] = field(default_factory=list)

    def read(
        self,
        source: LiveSource,
        feed: Feed,
        *,
        telemetry: bool,
        clock: Callable[[], float] = time.time,
    ) -> Snapshot:
        """One refresh, following the stream: reads only what `feed` says changed."""
        reset, ids, nodes = feed.take()
        changed: frozenset[str] | None = None  # the jobs that changed, when known
        cluster = source.cluster()
        if reset:
            self.full_reads += 1
            self._prefetched = {}
            self.nodes = source.nodes()
            self._set_gpus(source.gpus())
            self.jobs = {str(j.get("id")): j for j in source.jobs()}
            self.jobs_version += 1
            self._prune_series()
        else:
            self.partial_reads += 1
            if nodes:
                self.nodes = source.nodes()
                self._set_gpus(source.gpus())
            elif telemetry:
                self._telemetry(source)
            if ids:
                changed = None if self._jobs_changed(source, ids) else frozenset(ids)
                self.jobs_version += 1
        self.cluster = cluster
        now = clock()
        if telemetry or reset or nodes:
            self._job_util_from_gpus(now)
        return Snapshot(
            cluster=cluster,
            nodes=self.nodes,
            gpus=self.gpus,
            jobs=list(self.jobs.values()),
            jobs_version=self.jobs_version,
            jobs_by_id=dict(self.jobs),
            jobs_changed=changed,
            now=now,
            job_series=self.series,
        )

    def poll_changes(self, source: LiveSource, feed: Feed) -> bool:
        """Without the event stream: asks the daemon what changed since the last answer
        (`GET /v1/jobs?changed_since=`) and marks it in `feed`, as the stream would have
        (the changed jobs' rows come with the answer: the read after it does not ask for
        them again). False: this daemon has no such query (an older one): poll in full."""
        ans = source.jobs_changed_since(self.cursor)
        if not isinstance(ans.get("cursor"), str):
            return False
        if ans.get("reset"):
            feed.reset()
            self._prefetched = {}
        else:
            for j in ans.get("jobs") or []:
                self._prefetched[str(j.get("id"))] = j
                feed.job(j.get("id"))
            if ans.get("nodes_changed"):
                feed.node()
        self.cursor = ans["cursor"]
        return True

    def _set_gpus(self, gpus: list[JSON]) -> None:
        self.gpus = GpuList(gpus)

    def _telemetry(self, source: LiveSource) -> None:
        cols = source.gpu_columns()
        if "keys" not in cols:  # an older daemon: its full rows
            self._set_gpus(list(cols.get("gpus") or []))
            return
        if cols["keys"] != self.gpus.layout.keys:
            self._set_gpus(source.gpus())  # GPUs came or went between two node events
            return
        # a new overlay, not the old rows changed: the UI thread may still draw the last one
        self.gpus = self.gpus.with_columns(
            {n: v for n, v in cols.items() if n not in ("keys", "form") and isinstance(v, list)}
        )

    def _jobs_changed(self, source: LiveSource, ids: set[str]) -> bool:
        """Reads the changed jobs; True when that became a read of them all."""
        if len(ids) > MAX_IDS:
            self.jobs = {str(j.get("id")): j for j in source.jobs()}
            return True
        got = {k: self._prefetched.pop(k) for k in ids if k in self._prefetched}
        if rest := ids - got.keys():
            read = {str(j.get("id")): j for j in source.jobs_by_id(sorted(rest, key=_id_order))}
            if set(read) - rest:  # an older daemon ignored ids= and listed every live job
                self.jobs = read
                return True
            got.update(read)
        for k in ids:
            j = got.get(k)
            if j is not None and j.get("state") in QUEUED + ACTIVE:
                self.jobs[k] = j
            else:
                self.jobs.pop(k, None)
        return False

    def _prune_series(self) -> None:
        self.series = {k: v for k, v in self.series.items() if k in self.jobs}

    def _job_util_from_gpus(self, now: float) -> None:
        """Each running job's mean utilisation and memory use from the GPU telemetry (the
        listing's gpu_util is as old as the job's last change), then one sample onto each
        job's series (the row reads its latest). Which GPUs each job holds is worked out
        again only when the job column changed (rarely), so a refresh gathers each job's
        values by position, in C, instead of walking 10,000 GPUs in Python."""
        g = self.gpus
        owners = g.column("job_id")
        if self._owners is None or self._owners[0] != owners:
            places: dict[str, list[int]] = {}
            for i, jid in enumerate(owners):
                if jid is not None:
                    places.setdefault(str(jid), []).append(i)
            # a getter always returns a tuple (itemgetter of one index would not)
            self._owners = (
                list(owners),
                {k: (itemgetter(*p) if len(p) > 1 else _one(p[0])) for k, p in places.items()},
            )
        getters = self._owners[1]
        util, used, total = g.column("util"), g.column("mem_used"), g.column("mem_total")
        for k in self._active():
            get = getters.get(k)
            u = m = None
            if get is not None:
                u, m = _mean(get(util)), _mem_pct(get(used), get(total))
            s = self.series.get(k)
            if s is None:
                s = self.series[k] = Series(deque(maxlen=TREND), deque(maxlen=TREND))
            # appends (atomic): the UI thread copies a series whole when it draws the row
            s.util.append(u)  # type: ignore[attr-defined]
            s.mem.append(m)  # type: ignore[attr-defined]
        if len(self.series) > len(self.jobs) + 1000:
            self._prune_series()

    def _active(self) -> list[str]:
        """The running jobs' ids, kept while the jobs stay the same."""
        if self._active_at != self.jobs_version:
            self._active_ids = [k for k, j in self.jobs.items() if j.get("state") in ACTIVE]
            self._active_at = self.jobs_version
        return self._active_ids


def _one(i: int) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    return lambda col: (col[i],)


def _mean(values: tuple[Any, ...]) -> float | None:
    """The mean of the numbers (the daemon's JSON numbers are numbers or null)."""
    try:
        return float(sum(values)) / len(values)
    except TypeError:  # a null among them
        nums = [v for v in values if v is not None]
        return sum(nums) / len(nums) if nums else None


def _mem_pct(used: tuple[Any, ...], total: tuple[Any, ...]) -> float | None:
    """The mean memory use in % of each GPU's memory (GPUs without both numbers left out)."""
    try:
        return float(sum(map(truediv, used, total))) * 100 / len(used)
    except (TypeError, ZeroDivisionError):  # a null, or a total of 0, among them
        pcts = [u / t * 100 for u, t in zip(used, total, strict=True) if u is not None and t]
        return sum(pcts) / len(pcts) if pcts else None


def _id_order(k: str) -> tuple[int, str]:
    return (int(k), "") if k.isdigit() else (0, k)
