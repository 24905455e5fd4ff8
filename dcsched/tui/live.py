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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter, truediv
from typing import Any, NamedTuple, Protocol

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
    _since: dict[str, int] = field(default_factory=dict)
    _frames: deque[Frame] = field(default_factory=lambda: deque(maxlen=TREND))
    _reads = 0

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

    def _job_util_from_gpus(self, now: float) -> None:
        """One sample of each running job's utilisation and memory use from the GPU
        telemetry (the listing's gpu_util is as old as the job's last change). Kept as the
        read's columns plus which GPU positions each job holds (worked out again only when
        the job column changed, rarely): a job's values are gathered only when its row is
        drawn or the view sorts by them (JobSeries), not for 2,400 jobs every second."""
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
        self._reads += 1
        self._frames.append(
            Frame(
                self._reads,
                self._owners[1],
                g.column("util"),
                g.column("mem_used"),
                g.column("mem_total"),
            )
        )
        self._active()

    @property
    def series(self) -> JobSeries:
        """The running jobs' samples as of the last read (a frozen view: the UI thread reads
        it while the next read goes on)."""
        return JobSeries(tuple(self._frames), self._since)

    def _active(self) -> list[str]:
        """The running jobs' ids, and the read since which each has been running (a new
        dict when they change: a snapshot keeps the one it was given)."""
        if self._active_at != self.jobs_version:
            self._active_ids = [k for k, j in self.jobs.items() if j.get("state") in ACTIVE]
            self._active_at = self.jobs_version
            since = self._since
            self._since = {k: since.get(k, self._reads) for k in self._active_ids}
        return self._active_ids


class Frame(NamedTuple):
    """One telemetry read's columns, and which positions each job's GPUs have in them."""

    n: int
    getters: Mapping[str, Callable[[Sequence[Any]], tuple[Any, ...]]]
    util: Sequence[Any]
    used: Sequence[Any]
    total: Sequence[Any]


class JobSeries(Mapping[str, Series]):
    """Each running job's samples over the last TREND reads (`Series`: utilisation and
    memory use, a sample per read since it has been running), gathered from the reads'
    columns when asked for and kept for this view's lifetime (one refresh)."""

    __slots__ = ("_frames", "_last", "_memo", "_since")

    def __init__(self, frames: tuple[Frame, ...], since: Mapping[str, int]) -> None:
        self._frames, self._since = frames, since
        self._memo: dict[str, Series] = {}
        self._last: dict[str, dict[str, float | None]] = {}

    def __getitem__(self, key: str) -> Series:
        s = self._memo.get(key)
        if s is None:
            start = self._since[key]
            samples = [_sample(f, key) for f in self._frames if f.n >= start]
            s = self._memo[key] = Series([u for u, _ in samples], [m for _, m in samples])
        return s

    def last(self, what: str) -> dict[str, float | None]:
        """Every running job's last utilisation (`util`) or memory use (`mem`): what a sort
        by those needs, in one pass over the last read only."""
        out = self._last.get(what)
        if out is None:
            f = self._frames[-1] if self._frames else None
            out = self._last[what] = {} if f is None else _last(f, what, self._since)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._since)

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, key: object) -> bool:
        return key in self._since


def _last(f: Frame, what: str, keys: Iterable[str]) -> dict[str, float | None]:
    get = f.getters.get
    out: dict[str, float | None] = {}
    for k in keys:
        g = get(k)
        if g is None:
            out[k] = None
        elif what == "util":
            out[k] = _mean(g(f.util))
        else:
            out[k] = _mem_pct(g(f.used), g(f.total))
    return out


def _sample(f: Frame, key: str) -> tuple[float | None, float | None]:
    get = f.getters.get(key)
    if get is None:  # running, but none of its GPUs in the telemetry
        return None, None
    return _mean(get(f.util)), _mem_pct(get(f.used), get(f.total))


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
