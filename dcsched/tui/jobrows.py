"""The Jobs view's rows at 4,000 jobs: each job's cells split into the fixed ones (built once
per change of the job: id, name, user, state, nodelist, ...) and the moving ones (elapsed,
utilisation, spark lines, the idle flag, a waiting job's estimated start: built only for
the rows drawn). Filtering and sorting read the fixed cells, or a cheap key per moving
column, so neither builds every row; a sort by a fixed column is reused while no job
changed. Pure Python, no textual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dcsched.tui.data import (
    JOB_COLUMNS,
    JSON,
    KeyedRows,
    Row,
    RowFilter,
    Series,
    job_row_from,
    job_row_parts,
    job_sort_value,
    sort_key,
)

_INDEX = {col.key: i for i, col in enumerate(JOB_COLUMNS)}
#: the columns whose text moves with the clock or the telemetry
MOVING = frozenset({"time", "util", "util_trend", "mem_trend", "flag"})
_MOVING_AT = frozenset(_INDEX[k] for k in MOVING)


class JobRowCache:
    """What a Jobs view keeps between refreshes (one per view)."""

    def __init__(self) -> None:
        self.fixed: dict[str, tuple[JSON, Row, str]] = {}  # id -> (job, cells, where base)
        self.built: dict[str, tuple[JSON, float, Row]] = {}  # id -> (job, now, full row)
        self.matched: dict[str, tuple[JSON, bool]] = {}  # for `filter_text`
        self.filter_text = ""
        #: (column, reverse, the item dict it ordered) -> keys, for a fixed column
        self.sorted: tuple[int, bool, Mapping[str, JSON], list[str]] | None = None
        #: (column, id -> (job, its sort key)) for a fixed column
        self.sort_keys: tuple[int, dict[str, tuple[JSON, Any]]] = (-1, {})

    def fixed_of(self, k: str, j: JSON) -> tuple[Row, str]:
        hit = self.fixed.get(k)
        if hit is not None and hit[0] is j:
            return hit[1], hit[2]
        cells, where = job_row_parts(j)
        self.fixed[k] = (j, cells, where)
        return cells, where

    def prune(self, live: Mapping[str, Any]) -> None:
        for memo in (self.fixed, self.built, self.matched, self.sort_keys[1]):
            if len(memo) > 2 * len(live) + 1000:
                for k in [k for k in memo if k not in live]:
                    del memo[k]


class JobRows(KeyedRows):
    """The Jobs view's rows over `items` (id -> job, in display order; a view reuses the same
    dict while no job changed): a row is built only when read."""

    __slots__ = ("_cache", "_now", "_series")

    def __init__(
        self,
        items: Mapping[str, JSON],
        now: float,
        series: Mapping[str, Series],
        cache: JobRowCache,
        *,
        every: bool = True,
    ) -> None:
        self._items, self._now, self._series, self._cache = items, now, series, cache
        if every:  # (a filtered subset must not prune what the other rows keep)
            cache.prune(items)

    def __getitem__(self, key: str) -> Row:
        j = self._items[key]
        hit = self._cache.built.get(key)
        if hit is not None and hit[0] is j and hit[1] == self._now:
            return hit[2]
        fixed, where = self._cache.fixed_of(key, j)
        row = job_row_from(fixed, where, j, self._now, self._series.get(key))
        self._cache.built[key] = (j, self._now, row)
        return row

    # ------------------------------------------------------------ filter and sort

    def filtered(self, flt: RowFilter) -> JobRows | None:
        """The rows the filter keeps, matched on the fixed cells (a free-text term does not
        look at the moving numbers); None when a `key=` term names a moving column (the
        caller then filters the built rows)."""
        terms, _ = flt.terms(JOB_COLUMNS)
        if any(i in _MOVING_AT for cols, _ in terms for i in cols):
            return None
        cache = self._cache
        if cache.filter_text != flt.text:
            cache.filter_text, cache.matched = flt.text, {}
        matched = cache.matched
        keep: dict[str, JSON] = {}
        for k, j in self._items.items():
            hit = matched.get(k)
            if hit is None or hit[0] is not j:
                cells = cache.fixed_of(k, j)[0]
                hit = matched[k] = (j, RowFilter.matches(cells, terms))
            if hit[1]:
                keep[k] = j
        return JobRows(keep, self._now, self._series, cache, every=False)

    def order_by(self, column: int, *, reverse: bool = False) -> list[str]:
        """The keys sorted by one column (ties keep the given order), without building a row:
        a fixed column's keys come from the fixed cells (and the last such sort is reused
        while the items are the same), a moving column's from the job and its series."""
        cache = self._cache
        if column not in _MOVING_AT:
            last = cache.sorted
            if last is not None and last[:3] == (column, reverse, self._items):
                return last[3]
            if cache.sort_keys[0] != column:
                cache.sort_keys = (column, {})
            known = cache.sort_keys[1]
            keys: dict[str, Any] = {}
            for k, j in self._items.items():
                hit = known.get(k)
                if hit is None or hit[0] is not j:
                    hit = known[k] = (j, sort_key(cache.fixed_of(k, j)[0][column].key))
                keys[k] = hit[1]
            out = sorted(keys, key=keys.__getitem__, reverse=reverse)
            cache.sorted = (column, reverse, self._items, out)
            return out
        name = JOB_COLUMNS[column].key
        now, series = self._now, self._series
        last = getattr(series, "last", None)  # JobSeries: the last samples in one pass
        if last is not None and name in ("util", "util_trend", "mem_trend"):
            what = "mem" if name == "mem_trend" else "util"
            values = last(what)
            moving = {
                k: sort_key(values[k] if k in values else job_sort_value(name, j, now, None))
                for k, j in self._items.items()
            }
        else:
            util, mem = (last("util"), last("mem")) if last is not None else ({}, {})

            def latest(k: str) -> Series | None:
                if last is None:
                    return series.get(k)
                return Series((util[k],), (mem[k],)) if k in util else None

            moving = {
                k: sort_key(job_sort_value(name, j, now, latest(k))) for k, j in self._items.items()
            }
        return sorted(moving, key=moving.__getitem__, reverse=reverse)
