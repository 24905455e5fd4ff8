"""dctop's data layer: what to fetch from the daemon and how each view's rows read.

Pure Python (no textual): every function here takes the API's JSON and returns plain
values, so it is tested without a terminal and the widgets stay thin. Any number the
daemon reports may be null; it reads "N/A", never raises.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import time
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol, overload

from dcsched.protocol.endings import end_text

JSON = dict[str, Any]

#: A running job whose GPUs' mean utilisation stays under this is flagged idle ...
IDLE_UTIL = 5.0
#: ... once it has run this long (start-up is allowed to be quiet).
IDLE_GRACE_S = 120.0

QUEUED = ("PENDING", "HELD", "REQUEUED")
ACTIVE = ("STARTING", "RUNNING", "COMPLETING")

SPARK = "▁▂▃▄▅▆▇█"


class Source(Protocol):
    """What dctop needs of the daemon: dcsched.client.Client has exactly these calls;
    tests and the benchmark pass an in-memory object with the same methods."""

    def cluster(self) -> JSON: ...
    def nodes(self) -> list[JSON]: ...
    def gpus(self) -> list[JSON]: ...
    def jobs(self, *, all_states: bool = False) -> list[JSON]: ...
    def job(self, job_id: int | str) -> JSON: ...
    def job_action(self, job_id: int | str, action: str) -> JSON: ...
    def node_action(self, host: str, action: str, reason: str = "") -> JSON: ...
    def logs(
        self, job_id: int | str, node: int = 0, offset: int = -1, max_bytes: int = 65536
    ) -> JSON: ...
    def node_history(self, host: str) -> JSON: ...
    def explain(self, job_id: int | str) -> JSON: ...
    def fairshare(self) -> JSON: ...


class GpuList(Sequence[JSON]):
    """Every GPU: the full rows (read at start and on a node event) overlaid with the latest
    telemetry columns (read every second). A GPU's merged row is built only when something
    asks for it (a row drawn, a node's detail), so a refresh at 10,000 GPUs does not build
    10,000 dicts; whole columns (`column`) are read without building any."""

    __slots__ = ("_built", "_cols", "_index", "rows")

    def __init__(
        self,
        rows: Sequence[JSON],
        cols: Mapping[str, Sequence[Any]] | None = None,
        index: GpuIndex | None = None,
    ) -> None:
        self.rows = rows
        self._cols = cols or {}
        self._built: list[JSON | None] = [None] * len(rows)
        self._index = index if index is not None else GpuIndex(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> JSON: ...
    @overload
    def __getitem__(self, i: slice) -> list[JSON]: ...
    def __getitem__(self, i: int | slice) -> JSON | list[JSON]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        g = self._built[i]
        if g is None:
            g = self.rows[i]
            if self._cols:
                g = {**g, **{n: c[i] for n, c in self._cols.items()}}
            self._built[i] = g
        return g

    def __iter__(self) -> Iterator[JSON]:
        for i in range(len(self.rows)):
            yield self[i]

    def with_columns(self, cols: Mapping[str, Sequence[Any]]) -> GpuList:
        return GpuList(self.rows, cols, self._index)

    @property
    def layout(self) -> GpuIndex:
        return self._index

    def column(self, name: str) -> Sequence[Any]:
        col = self._cols.get(name)
        if col is not None:
            return col
        static = self._index.columns.get(name)  # a field of the rows: kept with them
        if static is None:
            static = self._index.columns[name] = [g.get(name) for g in self.rows]
        return static

    def host(self, host: str) -> list[JSON]:
        return [self[i] for i in self._index.hosts.get(host, ())]


class GpuIndex:
    """Where each GPU and each host's GPUs are in a GPU listing (kept while it stays)."""

    __slots__ = ("columns", "hosts", "keys", "positions")

    def __init__(self, rows: Sequence[JSON]) -> None:
        self.columns: dict[str, list[Any]] = {}
        self.keys = [f"{g.get('host')}/{g.get('index')}" for g in rows]
        self.positions = {k: i for i, k in enumerate(self.keys)}
        self.hosts: dict[str, list[int]] = {}
        for i, g in enumerate(rows):
            self.hosts.setdefault(str(g.get("host")), []).append(i)


class GpusByKey(Mapping[str, JSON]):
    """A GpuList by "host/index", without building any GPU until it is read."""

    __slots__ = ("_gpus",)

    def __init__(self, gpus: GpuList) -> None:
        self._gpus = gpus

    def __getitem__(self, key: str) -> JSON:
        return self._gpus[self._gpus.layout.positions[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._gpus.layout.positions)

    def __len__(self) -> int:
        return len(self._gpus)

    def __contains__(self, key: object) -> bool:
        return key in self._gpus.layout.positions

    def keys(self) -> KeysView[str]:
        return self._gpus.layout.positions.keys()


def gpus_by_key(gpus: Sequence[JSON]) -> Mapping[str, JSON]:
    if isinstance(gpus, GpuList):
        return GpusByKey(gpus)
    return {f"{g.get('host')}/{g.get('index')}": g for g in gpus}


def host_gpus(gpus: Sequence[JSON], host: str) -> list[JSON]:
    if isinstance(gpus, GpuList):
        return gpus.host(host)
    return [g for g in gpus if g.get("host") == host]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll of the daemon: everything the main views show."""

    cluster: JSON
    nodes: list[JSON]
    gpus: Sequence[JSON]
    jobs: list[JSON]
    now: float
    finished: list[JSON] | None = None
    fairshare: JSON | None = None
    fairshare_error: str = ""
    job_series: Mapping[str, Series] = field(default_factory=dict)
    #: changes whenever a job comes, goes or changes state or priority (not at every
    #: utilisation sample): a view may keep its order while it stays; None: unknown
    jobs_version: int | None = None
    #: the jobs by id, and which of them changed since the last version (None: unknown)
    jobs_by_id: Mapping[str, JSON] | None = None
    jobs_changed: frozenset[str] | None = None


def fetch_snapshot(
    source: Source,
    *,
    finished: bool = False,
    fairshare: bool = False,
    clock: Callable[[], float] = time.time,
    unavailable: tuple[type[Exception], ...] = (),
) -> Snapshot:
    """The main poll: every read a full one (a daemon without the event stream)."""
    jobs = source.jobs()
    snap = Snapshot(
        cluster=source.cluster(),
        nodes=source.nodes(),
        gpus=source.gpus(),
        jobs=jobs,
        now=clock(),
    )
    return fetch_extras(
        source, snap, finished=finished, fairshare=fairshare, unavailable=unavailable
    )


def fetch_extras(
    source: Source,
    snap: Snapshot,
    *,
    finished: bool,
    fairshare: bool,
    unavailable: tuple[type[Exception], ...] = (),
) -> Snapshot:
    """What only one view shows, read only while it shows: the finished jobs, fair-share.
    `unavailable` are the errors that mean "this daemon has no such endpoint yet" for the
    optional parts (fair-share), shown in place of the view."""
    done: list[JSON] | None = None
    if finished:
        done = [j for j in source.jobs(all_states=True) if j.get("state") not in QUEUED + ACTIVE]
    fs: JSON | None = None
    fs_error = ""
    if fairshare:
        try:
            fs = source.fairshare()
        except unavailable as exc:
            code = getattr(exc, "code", "")
            fs_error = f"GET /v1/fairshare: {code + ': ' if code else ''}{exc}"
    return replace(snap, finished=done, fairshare=fs, fairshare_error=fs_error)


# ---------------------------------------------------------------- formatting


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return None if math.isnan(f) else f


def pct(v: Any) -> str:
    f = _num(v)
    return "N/A" if f is None else f"{f:.0f}%"


def watts(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "N/A"
    return f"{f / 1000:.1f} kW" if f >= 1000 else f"{f:.0f} W"


def celsius(v: Any) -> str:
    f = _num(v)
    return "N/A" if f is None else f"{f:.0f}°C"


def gib(v: Any) -> str:
    f = _num(v)
    return "N/A" if f is None else f"{f / 2**30:.1f}"


def memory(used: Any, total: Any) -> str:
    u, t = _num(used), _num(total)
    if u is None:
        return "N/A"
    return f"{gib(u)}/{gib(t)} GiB"


def duration(v: Any) -> str:
    """Seconds as [D-]HH:MM:SS, like squeue."""
    f = _num(v)
    if f is None or f < 0:
        return ""
    s = int(f)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def relative(ts: Any, now: float) -> str:
    """A timestamp as "in 4m" / "3m ago", relative to the snapshot's clock."""
    f = _num(ts)
    if f is None:
        return ""
    delta = f - now
    a = abs(delta)
    if a < 60:
        text = f"{a:.0f}s"
    elif a < 3600:
        text = f"{a / 60:.0f}m"
    elif a < 86400:
        text = f"{a / 3600:.1f}h"
    else:
        text = f"{a / 86400:.1f}d"
    return f"in {text}" if delta >= 0 else f"{text} ago"


def util_style(v: Any) -> str:
    """A heat colour for a utilisation (rich style names: readable on dark and light)."""
    f = _num(v)
    if f is None:
        return "dim"
    if f < 5:
        return "grey50"
    if f < 30:
        return "dodger_blue2"
    if f < 60:
        return "green3"
    if f < 85:
        return "yellow3"
    return "red1"


STATE_STYLE = {
    "up": "green3",
    "drained": "yellow3",
    "joining": "cyan",
    "down": "red1",
    "RUNNING": "green3",
    "STARTING": "cyan",
    "COMPLETING": "cyan",
    "PENDING": "yellow3",
    "HELD": "magenta",
    "REQUEUED": "yellow3",
    "COMPLETED": "green3",
    "FAILED": "red1",
    "CANCELLED": "grey50",
    "TIMEOUT": "red1",
    "NODE_FAIL": "red1",
}


def sparkline(values: Sequence[Any], lo: float, hi: float, width: int) -> str:
    """The last `width` values as block characters scaled to lo..hi; gaps are spaces."""
    vals = list(values)[-width:] if width > 0 else []
    span = hi - lo if hi > lo else 1.0
    out = []
    for v in vals:
        f = _num(v)
        if f is None:
            out.append(" ")
            continue
        i = round((min(max(f, lo), hi) - lo) / span * (len(SPARK) - 1))
        out.append(SPARK[i])
    return "".join(out).rjust(width)


# ---------------------------------------------------------------- rows


class Cell(NamedTuple):
    """One table cell: the text, a rich style, and the value it sorts by."""

    text: str
    style: str = ""
    key: Any = None
    #: styled pieces, when one cell has more than one colour (the cluster map)
    runs: tuple[tuple[str, str], ...] = ()


def sort_key(v: Any) -> Any:
    """A sort key where None (N/A) sorts before every number and string."""
    if v is None:
        return (0, 0)
    if isinstance(v, int | float):
        return (1, v)
    return (2, str(v))


def c(text: Any, style: str = "", key: Any = None) -> Cell:
    return Cell(str(text), style, text if key is None else key)


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int | None = None


Row = tuple[Cell, ...]
Rows = Mapping[str, Row]


class KeyedRows(Mapping[str, Row]):
    """Rows keyed like `_items` (key -> item, in display order), built by the subclass's
    __getitem__ only when read."""

    __slots__ = ("_items",)
    _items: Mapping[str, Any]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def keys(self) -> KeysView[str]:  # the dict's own: compared in C, not per key
        return self._items.keys()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class LazyRows(KeyedRows):
    """A view's rows over its plain items (key -> item), each row built on first access and
    kept while its item is the same object: the table reads only the rows in view, so at
    10,000 GPUs a refresh builds the few dozen rows on screen, not all of them."""

    __slots__ = ("_build", "_memo")

    def __init__(
        self,
        items: Mapping[str, Any],
        build: Callable[[Any], Row],
        memo: dict[str, tuple[Any, Row]],
    ) -> None:
        self._items, self._build, self._memo = items, build, memo
        if len(memo) > 2 * len(items) + 1000:
            for k in [k for k in memo if k not in items]:
                del memo[k]

    def __getitem__(self, key: str) -> Row:
        item = self._items[key]
        hit = self._memo.get(key)
        if hit is not None and hit[0] is item:
            return hit[1]
        row = self._build(item)
        self._memo[key] = (item, row)
        return row


def order_rows(rows: Rows, column: int, *, reverse: bool = False) -> list[str]:
    """The row keys sorted by one column's sort key (ties keep the given order)."""
    keys = {k: sort_key(cells[column].key) for k, cells in rows.items()}
    return sorted(keys, key=keys.__getitem__, reverse=reverse)


#: `key=value` names that mean another column in some views (the jobs view lists hosts in
#: its nodelist column, the GPUs view shows the job id as "job")
FILTER_ALIASES = {"host": ("where",), "id": ("job",), "job": ("id",), "name": ("who",)}


@dataclass(frozen=True, slots=True)
class RowFilter:
    """The `/` filter (and `dctop --filter`): whitespace-separated terms, all of which must
    match. `key=value` matches a column's text exactly (case-insensitive; one item of a
    comma-separated list counts), any other term is a substring of any cell. A `key=`
    that names no column of the view is skipped there (listed in `ignored`), so one
    start-up filter such as `user=alice` applies wherever it can."""

    text: str = ""

    def terms(self, columns: Sequence[Column]) -> tuple[list[tuple[list[int], str]], list[str]]:
        index = {col.key: i for i, col in enumerate(columns)}
        keyed: list[tuple[list[int], str]] = []
        ignored: list[str] = []
        for term in self.text.lower().split():
            k, eq, v = term.partition("=")
            if not eq:
                keyed.append(([], term))
                continue
            cols = [index[k]] if k in index else []
            cols += [index[a] for a in FILTER_ALIASES.get(k, ()) if a in index]
            if cols:
                keyed.append((cols, v))
            else:
                ignored.append(k)
        return keyed, ignored

    def apply(self, rows: Rows, columns: Sequence[Column]) -> tuple[Rows, list[str]]:
        """The rows that match, and the keys of `key=` terms this view has no column for."""
        terms, ignored = self.terms(columns)
        if not terms:
            return rows, ignored
        fast = getattr(rows, "filtered", None)  # rows that filter without being built
        if fast is not None and (kept := fast(self)) is not None:
            return kept, ignored
        out = {k: cells for k, cells in rows.items() if self.matches(cells, terms)}
        return out, ignored

    @staticmethod
    def matches(
        cells: Row, terms: list[tuple[list[int], str]], skip: frozenset[int] = frozenset()
    ) -> bool:
        """All terms match these cells (`skip`: cells a free-text term does not look at)."""
        for cols, v in terms:
            if cols:
                if not any(_equals(cells[i].text, v) for i in cols):
                    return False
            elif not any(v in cell.text.lower() for i, cell in enumerate(cells) if i not in skip):
                return False
        return True


def _equals(text: str, value: str) -> bool:
    t = text.lower()
    return t == value or value in (p.strip() for p in t.split(","))


def exit_text(code: Any, signal: Any) -> str:
    """How a job ended: "exit 0", "exit 1", "signal 9"; "" when not known yet."""
    if code is not None:
        return f"exit {code}"
    return f"signal {signal}" if signal else ""


def summary(cluster: JSON) -> list[tuple[str, str]]:
    """The header as (text, style) runs: nodes, GPUs, utilisation, power, jobs."""
    n = cluster.get("nodes") or {}
    g = cluster.get("gpus") or {}
    jobs = cluster.get("jobs") or {}
    runs: list[tuple[str, str]] = [
        ("Nodes ", "bold"),
        (f"{n.get('up', 0)} up", "green3"),
        (f" {n.get('drained', 0)} drained", "yellow3" if n.get("drained") else ""),
        (f" {n.get('down', 0)} down", "red1" if n.get("down") else ""),
        *([(f" {n['joining']} joining", "cyan")] if n.get("joining") else []),
        (" │ GPUs ", "bold"),
        (f"{g.get('allocated', 0)}/{g.get('total', 0)} allocated, {g.get('idle', 0)} idle", ""),
        (" │ Util ", "bold"),
        (pct(cluster.get("mean_util")), util_style(cluster.get("mean_util"))),
        (" │ Power ", "bold"),
        (watts(cluster.get("power_w")), ""),
        (" │ Jobs ", "bold"),
        (
            " ".join(
                f"{jobs.get(s, 0)} {s.lower()}"
                for s in ("RUNNING", "PENDING", "HELD")
                if jobs.get(s) or s != "HELD"
            ),
            "",
        ),
    ]
    return runs


def gpu_healthy(g: JSON) -> bool:
    return str(g.get("health") or "unknown") in ("ok", "unknown")


def gpu_glyph(g: JSON) -> tuple[str, str]:
    """One GPU in the cluster map: '●' allocated, '○' free, '!' allocated but idle (the
    waste to look at), '✗' unhealthy; then its utilisation, coloured by heat."""
    allocated = g.get("job_id") is not None
    u = _num(g.get("util"))
    if not gpu_healthy(g):
        return f"✗{'--' if u is None else min(round(u), 99):>2}", "bold red1"
    if g.get("node_state") == "down" or u is None:
        return f"{'●' if allocated else '○'}--", "dim"
    if allocated and u < IDLE_UTIL:
        return f"!{min(round(u), 99):>2}", "bold magenta"
    return f"{'●' if allocated else '○'}{min(round(u), 99):>2}", util_style(u)


CLUSTER_COLUMNS = [
    Column("host", "Host"),
    Column("state", "State"),
    Column("gpus", "GPUs (● allocated ○ free ! idle ✗ unhealthy; colour: util)"),
    Column("alloc", "Alloc"),
    Column("util", "Util"),
    Column("model", "Model"),
    Column("jobs", "Jobs"),
]


def gpus_by_host(gpus: Iterable[JSON]) -> dict[str, list[JSON]]:
    by_host: dict[str, list[JSON]] = {}
    # the daemon lists GPUs host by host: grouped runs, in C, then joined
    for host, run in itertools.groupby(gpus, key=_host):
        by_host.setdefault(str(host), []).extend(run)
    return by_host


_host = operator.itemgetter("host")


def cluster_row(item: tuple[JSON, Sequence[JSON]]) -> Row:
    """A node's row from (node, its GPUs)."""
    n, host_gpus = item
    host = str(n.get("host"))
    state = str(n.get("state", "?"))
    gl = sorted(host_gpus, key=lambda g: int(g.get("index") or 0))
    runs: list[tuple[str, str]] = []
    for i, g in enumerate(gl):
        if i:
            runs.append((" ", ""))
        runs.append(gpu_glyph(g))
    alloc = f"{n.get('gpus_allocated', 0)}/{n.get('gpus', 0)}"
    jobs = n.get("jobs") or []
    state_text = state if not n.get("drain_reason") else f"{state} ({n['drain_reason']})"
    utils = [u for g in gl if (u := _num(g.get("util"))) is not None]
    mean = sum(utils) / len(utils) if utils else _num(n.get("mean_util"))
    return (
        c(host),
        Cell(state_text, STATE_STYLE.get(state, ""), state),
        Cell("".join(t for t, _ in runs), "", mean, tuple(runs)),
        c(alloc, key=n.get("gpus_allocated", 0)),
        Cell(pct(mean), util_style(mean), mean),
        c(n.get("model") or ""),
        c(",".join(str(j) for j in jobs), key=len(jobs)),
    )


def cluster_items(nodes: Iterable[JSON], gpus: Sequence[JSON]) -> dict[str, Any]:
    if isinstance(gpus, GpuList):  # each node's GPUs built only if its row is drawn
        return {str(n.get("host")): (n, _HostGpus(gpus, str(n.get("host")))) for n in nodes}
    by_host = gpus_by_host(gpus)
    return {str(n.get("host")): (n, tuple(by_host.get(str(n.get("host")), ()))) for n in nodes}


class _HostGpus(Sequence[JSON]):
    __slots__ = ("_gpus", "_host")

    def __init__(self, gpus: GpuList, host: str) -> None:
        self._gpus, self._host = gpus, host

    def __len__(self) -> int:
        return len(self._gpus.layout.hosts.get(self._host, ()))

    @overload
    def __getitem__(self, i: int) -> JSON: ...
    @overload
    def __getitem__(self, i: slice) -> list[JSON]: ...
    def __getitem__(self, i: int | slice) -> JSON | list[JSON]:
        at = self._gpus.layout.hosts.get(self._host, [])
        if isinstance(i, slice):
            return [self._gpus[k] for k in at[i]]
        return self._gpus[at[i]]


def cluster_rows(nodes: Iterable[JSON], gpus: Sequence[JSON]) -> dict[str, Row]:
    return {k: cluster_row(v) for k, v in cluster_items(nodes, gpus).items()}


GPU_COLUMNS = [
    Column("host", "Host"),
    Column("index", "GPU"),
    Column("model", "Model"),
    Column("util", "Util"),
    Column("mem", "Memory"),
    Column("temp", "Temp"),
    Column("power", "Power"),
    Column("job", "Job"),
    Column("user", "User"),
    Column("health", "Health"),
]


def gpu_key(g: JSON) -> str:
    return f"{g.get('host')}/{g.get('index')}"


_GPU_STATIC: dict[tuple[Any, ...], tuple[Cell, ...]] = {}


def _gpu_static(g: JSON) -> tuple[Cell, ...]:
    """The cells of a GPU that rarely change (host, index, model, job, user, health),
    memoised: at 1,000 GPUs a refresh then builds only the four that move."""
    raw = (
        g.get("host", ""),
        g.get("index"),
        g.get("model"),
        g.get("job_id"),
        g.get("user"),
        g.get("health"),
    )
    cells = _GPU_STATIC.get(raw)
    if cells is None:
        if len(_GPU_STATIC) > 50_000:
            _GPU_STATIC.clear()
        host, index, model, job, user, health = raw
        h = str(health or "unknown")
        cells = _GPU_STATIC[raw] = (
            c(host),
            c("" if index is None else index, key=index),
            c(model or "N/A"),
            c("" if job is None else job, key=job),
            c(user or "", key=user),
            Cell(h, "" if h == "ok" else "red1", h),
        )
    return cells


def gpu_row(g: JSON) -> Row:
    host, index, model, job, user, health = _gpu_static(g)
    util, mem_used, temp, power = (
        g.get("util"),
        g.get("mem_used"),
        g.get("temp_c"),
        g.get("power_w"),
    )
    return (
        host,
        index,
        model,
        Cell(pct(util), util_style(util), _num(util)),
        Cell(memory(mem_used, g.get("mem_total")), "", _num(mem_used)),
        Cell(celsius(temp), "", _num(temp)),
        Cell(watts(power), "", _num(power)),
        job,
        user,
        health,
    )


def gpu_rows(gpus: Iterable[JSON]) -> dict[str, Row]:
    return {gpu_key(g): gpu_row(g) for g in gpus}


def job_idle(j: JSON) -> bool:
    """A running job whose GPUs sit idle: the waste dctop is meant to show."""
    u = _num(j.get("gpu_util"))
    elapsed = _num(j.get("elapsed_s")) or 0.0
    return (
        j.get("state") == "RUNNING" and u is not None and u < IDLE_UTIL and elapsed >= IDLE_GRACE_S
    )


JOB_COLUMNS = [
    Column("id", "ID"),
    Column("name", "Name"),
    Column("user", "User"),
    Column("account", "Account"),
    Column("state", "State"),
    Column("prio", "Priority"),
    Column("nodes", "Nodes"),
    Column("gpus", "GPUs"),
    Column("time", "Elapsed / Limit"),
    Column("util", "Util"),
    Column("util_trend", "Util trend"),
    Column("mem_trend", "Mem trend"),
    Column("where", "Nodelist (Reason)"),
    Column("flag", ""),
]

#: samples in a job's spark lines (one per refresh)
TREND = 10


class Series(NamedTuple):
    """A running job's recent GPU utilisation and memory use (% of its GPUs' memory), one
    sample per telemetry read, kept by dctop itself (the daemon keeps no per-job series).
    The latest utilisation is the job's: fresher than the listing's."""

    util: Sequence[float | None] = ()
    mem: Sequence[float | None] = ()


def _reasons(j: JSON) -> str:
    reasons = j.get("reasons") or ([j["reason"]] if j.get("reason") else [])
    return ", ".join(str(r) for r in reasons)


def _job_order_key(j: JSON) -> tuple[int, float, int]:
    jid = int(j.get("id") or 0)
    if j.get("state") in ACTIVE:
        return (0, 0.0, jid)
    if j.get("state") in QUEUED:
        return (1, -(_num(j.get("priority")) or 0.0), jid)
    return (2, 0.0, -jid)


def job_order(jobs: Iterable[JSON]) -> list[JSON]:
    """Running first (oldest first), then the queue by priority (highest first)."""
    return sorted(jobs, key=_job_order_key)


class JobOrder:
    """The Jobs view's order (job_order's), kept between refreshes: unchanged while no job
    changed, only the changed jobs moved (taken out and put back by key, by bisection) when
    the stream named a few, and a full sort otherwise. At 4,000 jobs with a few changing
    every second this is the difference between sorting 4,000 jobs and moving a few."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.keys: list[tuple[int, float, int]] = []
        self.ids: list[str] = []
        self.key_of: dict[str, tuple[int, float, int]] = {}

    def update(
        self, jobs: Mapping[str, JSON], version: int | None, changed: frozenset[str] | None
    ) -> list[str]:
        if version is not None and version == self.version:
            return self.ids
        if (
            version is not None
            and self.version is not None
            and version == self.version + 1
            and changed is not None
            and len(changed) <= 200
        ):
            keys, ids, key_of = list(self.keys), list(self.ids), dict(self.key_of)
            for i in changed:
                old = key_of.pop(i, None)
                if old is not None:  # keys are unique (they end with the id)
                    at = bisect.bisect_left(keys, old)
                    del keys[at], ids[at]
                if (j := jobs.get(i)) is not None:
                    key = key_of[i] = _job_order_key(j)
                    at = bisect.bisect_left(keys, key)
                    keys.insert(at, key)
                    ids.insert(at, i)
        else:
            ordered = sorted((_job_order_key(j), i) for i, j in jobs.items())
            keys, ids = [k for k, _ in ordered], [i for _, i in ordered]
            key_of = dict(zip(ids, keys, strict=True))
        self.version, self.keys, self.ids, self.key_of = version, keys, ids, key_of
        return ids


def job_label(j: JSON) -> str:
    """A job's id as users type it: `123_4` for task 4 of array 123, else the id."""
    array, task = j.get("array_job_id"), j.get("array_task_id")
    if array is not None and task is not None:
        return f"{array}_{task}"
    return str(j.get("id", ""))


def job_row_parts(j: JSON) -> tuple[Row, str]:
    """A job's cells that change only when the job does (the moving ones blank), and its
    nodelist / reason without a waiting job's estimated start (which moves)."""
    state = str(j.get("state", ""))
    queued = state in QUEUED
    nodes = int(j.get("nodes") or 0)
    gpn = int(j.get("gpus_per_node") or 0)
    if queued:
        where = f"({_reasons(j)})"
    elif state in ACTIVE:
        where = ",".join(j.get("hosts") or [])
    else:
        where = end_text(j)
    prio = _num(j.get("priority"))
    blank = Cell("")
    return (
        c(job_label(j), key=int(j.get("id") or 0)),
        c(j.get("name", "")),
        c(j.get("user", "")),
        c(j.get("account", "")),
        Cell(state, STATE_STYLE.get(state, ""), state),
        c("" if prio is None or not queued else f"{prio:.0f}", key=prio),
        c(nodes, key=nodes),
        c(nodes * gpn, key=nodes * gpn),
        blank,
        blank,
        blank,
        blank,
        c(where),
        blank,
    ), where


def _live_job(j: JSON, now: float, series: Series | None) -> tuple[JSON, Series]:
    """The job with its utilisation and elapsed time from dctop's own series (the live
    mode: fresher than the listing, which it reads only on changes)."""
    active = str(j.get("state", "")) in ACTIVE
    s = Series(list(series.util), list(series.mem)) if active and series else Series()
    if s.util:
        start = _num(j.get("start_ts"))
        j = dict(j, gpu_util=s.util[-1])
        if start is not None:
            j["elapsed_s"] = max(now - start, 0.0)
    return j, s


def job_flagged_idle(j: JSON) -> bool:
    """Idle: the daemon's idle check flagged it (`idle_s`) and the latest utilisation does not
    say otherwise, or dctop sees its GPUs idle past the start-up grace (job_idle)."""
    if j.get("idle_s") is not None and j.get("state") in ACTIVE:
        u = _num(j.get("gpu_util"))
        return u is None or u < IDLE_UTIL
    return job_idle(j)


def job_row_from(fixed: Row, where: str, j: JSON, now: float, series: Series | None) -> Row:
    """The whole row: the fixed cells with the moving ones filled in."""
    j, s = _live_job(j, now, series)
    state = str(j.get("state", ""))
    queued = state in QUEUED
    active = state in ACTIVE
    if queued and state == "PENDING" and (est := relative(j.get("est_start"), now)):
        where = f"{where} start {est}"
    limit = duration(j.get("time_limit_s"))
    elapsed = duration(j.get("elapsed_s")) if not queued else ""
    idle = job_flagged_idle(j)
    util = j.get("gpu_util")
    out = list(fixed)
    out[8] = Cell(f"{elapsed} / {limit}" if elapsed else limit, "", _num(j.get("elapsed_s")))
    out[9] = Cell(pct(util) if active else "", util_style(util), _num(util))
    out[10] = Cell(sparkline(s.util, 0, 100, TREND) if s.util else "", util_style(util), _num(util))
    out[11] = Cell(
        sparkline(s.mem, 0, 100, TREND) if s.mem else "", "cyan", s.mem[-1] if s.mem else None
    )
    out[12] = fixed[12] if where == fixed[12].text else c(where)
    out[13] = Cell("IDLE GPUs" if idle else "", "bold red1" if idle else "", int(idle))
    return tuple(out)


def job_sort_value(column: str, j: JSON, now: float, series: Series | None) -> Any:
    """A moving column's sort value without building the row (the values the row's cells
    sort by), cheap enough to take for every job at each refresh."""
    active = j.get("state") in ACTIVE
    util = series.util[-1] if active and series and series.util else j.get("gpu_util")
    if column == "time":
        start = j.get("start_ts")
        if active and series and series.util and start is not None:
            return max(now - start, 0.0)
        return _num(j.get("elapsed_s"))
    if column in ("util", "util_trend"):
        return _num(util)
    if column == "mem_trend":
        return series.mem[-1] if active and series and series.mem else None
    if column == "flag":
        return int(job_flagged_idle(dict(j, gpu_util=util) if util is not None else j))
    raise KeyError(column)


def job_row(item: tuple[JSON, float, Series | None]) -> Row:
    j, now, series = item
    fixed, where = job_row_parts(j)
    return job_row_from(fixed, where, j, now, series)


def job_items(
    jobs: Iterable[JSON] | Mapping[str, JSON],
    now: float,
    series: Mapping[str, Series] | None = None,
    order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Key -> (job, now, series), in the Jobs view's order (job_order, or `order`: the
    jobs' keys in that order, kept by JobOrder)."""
    series = series or {}
    if isinstance(jobs, Mapping):
        by_id: Mapping[str, JSON] = jobs
    else:
        by_id = {str(j.get("id")): j for j in jobs}
    if order is None:
        order = [str(j.get("id")) for j in job_order(by_id.values())]
    return {k: (by_id[k], now, series.get(k)) for k in order}


def job_rows(
    jobs: Iterable[JSON], now: float, series: Mapping[str, Series] | None = None
) -> dict[str, Row]:
    return {k: job_row(v) for k, v in job_items(jobs, now, series).items()}


HISTORY_COLUMNS = [
    Column("id", "ID"),
    Column("name", "Name"),
    Column("user", "User"),
    Column("account", "Account"),
    Column("state", "State"),
    Column("nodes", "Nodes"),
    Column("gpus", "GPUs"),
    Column("time", "Elapsed / Limit"),
    Column("ended", "Ended"),
    Column("where", "Exit (Reason)"),
]


def history_rows(jobs: Iterable[JSON], now: float) -> Rows:
    rows: dict[str, Row] = {}
    for j in sorted(jobs, key=lambda j: -int(j.get("id") or 0)):
        state = str(j.get("state", ""))
        nodes = int(j.get("nodes") or 0)
        gpn = int(j.get("gpus_per_node") or 0)
        where = end_text(j)
        rows[str(j.get("id"))] = (
            c(j.get("id", ""), key=int(j.get("id") or 0)),
            c(j.get("name", "")),
            c(j.get("user", "")),
            c(j.get("account", "")),
            Cell(state, STATE_STYLE.get(state, ""), state),
            c(nodes, key=nodes),
            c(nodes * gpn, key=nodes * gpn),
            Cell(
                f"{duration(j.get('elapsed_s'))} / {duration(j.get('time_limit_s'))}",
                "",
                _num(j.get("elapsed_s")),
            ),
            Cell(relative(j.get("end_ts"), now), "", _num(j.get("end_ts"))),
            c(where.strip()),
        )
    return rows


FAIRSHARE_COLUMNS = [
    Column("who", "Account / User"),
    Column("shares", "Shares"),
    Column("norm", "Norm shares"),
    Column("raw", "Raw usage"),
    Column("eff", "Effective usage"),
    Column("factor", "Fair-share factor"),
]


def _f(v: Any, fmt: str) -> str:
    f = _num(v)
    return "N/A" if f is None else format(f, fmt)


def fairshare_rows(payload: JSON) -> Rows:
    """Accounts, each followed by its users (indented), as `dcctl fairshare` lists them.
    A row with an empty user is the account's own."""
    rows: dict[str, Row] = {}
    accounts: dict[str, list[JSON]] = {}
    for r in payload.get("rows") or []:
        accounts.setdefault(str(r.get("account")), []).append(r)
    for account in sorted(accounts):
        group = sorted(accounts[account], key=lambda r: (bool(r.get("user")), r.get("user") or ""))
        for r in group:
            user = r.get("user") or ""
            label = f"  └ {user}" if user else account
            factor = _num(r.get("fairshare"))
            bar = "█" * round((factor or 0.0) * 10)
            rows[f"{account}/{user}"] = (
                Cell(label, "" if user else "bold", f"{account}/{user}"),
                c(_f(r.get("raw_shares"), "g"), key=_num(r.get("raw_shares"))),
                c(_f(r.get("norm_shares"), ".3f"), key=_num(r.get("norm_shares"))),
                c(_f(r.get("raw_usage"), ",.0f"), key=_num(r.get("raw_usage"))),
                c(_f(r.get("effective_usage"), ".3f"), key=_num(r.get("effective_usage"))),
                Cell(
                    f"{_f(factor, '.3f')} {bar:<10}",
                    "green3" if (factor or 0) >= 0.5 else "yellow3",
                    factor,
                ),
            )
    return rows


# ---------------------------------------------------------------- detail screens


@dataclass(slots=True)
class JobDetail:
    job: JSON
    explain: JSON | None = None
    explain_error: str = ""
    histories: dict[str, JSON] = field(default_factory=dict)
    log: JSON | None = None
    log_error: str = ""
    efficiency: JSON | None = None  # GPU-hours, energy (GET /v1/jobs/{id}/efficiency)


@dataclass(slots=True)
class NodeDetail:
    host: str
    history: JSON | None = None
    history_error: str = ""


def gpu_series(history: JSON | None, index: int | str, key: str) -> list[Any]:
    if not history:
        return []
    samples = (history.get("gpus") or {}).get(str(index)) or []
    return [s.get(key) for s in samples]


def log_tail(data: str, lines: int) -> str:
    return "\n".join(data.splitlines()[-lines:])


# ---------------------------------------------------------------- processes (nvitop-like)


def bytes_text(v: Any) -> str:
    """Bytes as MiB below 1 GiB, else GiB; N/A when not reported."""
    f = _num(v)
    if f is None:
        return "N/A"
    return f"{f / 2**20:.0f} MiB" if f < 2**30 else f"{f / 2**30:.1f} GiB"


def cpu_text(v: Any) -> str:
    f = _num(v)
    return "N/A" if f is None else f"{f:.0f}%"


PROC_HEADER = ("GPU", "PID", "user", "GPU mem", "job", "job CPU", "job mem", "command")


def node_procs(history: JSON | None) -> list[tuple[str, ...]]:
    """The node's GPU processes from its latest sample, a row each (GPU order): GPU, pid,
    user, the GPU memory it holds, its job and that job's CPU and host memory on this node
    (measured over the job's process tree), command line."""
    if not history:
        return []
    by_pid: dict[int, JSON] = {}
    for j in history.get("jobs") or []:
        for pid in j.get("pids") or []:
            by_pid[int(pid)] = j
    rows: list[tuple[str, ...]] = []
    procs = history.get("procs") or {}
    for index in sorted(procs, key=lambda i: int(i) if str(i).isdigit() else 0):
        for p in procs[index] or []:
            pid = int(p.get("pid") or 0)
            job = by_pid.get(pid) or {}
            rows.append(
                (
                    str(index),
                    str(pid),
                    str(p.get("user") or "?"),
                    bytes_text(p.get("gpu_mem")),
                    str(job.get("job_id") or ""),
                    cpu_text(job.get("cpu_pct")) if job else "",
                    bytes_text(job.get("rss")) if job else "",
                    str(p.get("cmd") or ""),
                )
            )
    return rows


JOB_PROC_HEADER = ("host", "GPU", "PID", "user", "GPU mem", "command")


def job_procs(
    job_id: Any, histories: Mapping[str, JSON]
) -> tuple[list[tuple[str, ...]], list[tuple[str, str, str, str]]]:
    """A job's GPU processes on every node it runs on, and per node (host, pids, CPU, host
    memory) over its process tree."""
    jid = str(job_id)
    procs: list[tuple[str, ...]] = []
    nodes: list[tuple[str, str, str, str]] = []
    for host in sorted(histories):
        hist = histories[host]
        mine = [j for j in hist.get("jobs") or [] if str(j.get("job_id")) == jid]
        pids = {int(p) for j in mine for p in j.get("pids") or []}
        for j in mine:
            nodes.append(
                (
                    host,
                    str(len(j.get("pids") or [])),
                    cpu_text(j.get("cpu_pct")),
                    bytes_text(j.get("rss")),
                )
            )
        gpus = {int(g) for j in mine for g in j.get("gpus") or []}
        for index, plist in sorted((hist.get("procs") or {}).items(), key=lambda kv: int(kv[0])):
            for p in plist or []:
                if int(p.get("pid") or 0) in pids or (not pids and int(index) in gpus):
                    procs.append(
                        (
                            host,
                            str(index),
                            str(p.get("pid")),
                            str(p.get("user") or "?"),
                            bytes_text(p.get("gpu_mem")),
                            str(p.get("cmd") or ""),
                        )
                    )
    return procs, nodes
