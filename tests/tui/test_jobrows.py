"""The Jobs view's rows at scale (jobrows.py): filtering and sorting without building rows
give what the plain path over built rows gives; array tasks and the daemon's idle flag."""

from __future__ import annotations

from typing import Any

import pytest

from dcsched.tui import data
from dcsched.tui.jobrows import JobRowCache, JobRows
from tests.tui.fakes import NOW, load


def _jobs() -> dict[str, dict[str, Any]]:
    return {str(j["id"]): j for j in load("jobs.json")["jobs"]}


def _rows(jobs: dict[str, Any], cache: JobRowCache | None = None) -> JobRows:
    items = {str(j["id"]): j for j in data.job_order(jobs.values())}
    series = {"2": data.Series([50.0, 70.0], [10.0, 20.0])}
    return JobRows(items, NOW, series, cache or JobRowCache())


def test_rows_equal_the_plain_builder_and_are_built_only_when_read() -> None:
    jobs = _jobs()
    rows = _rows(jobs)
    assert rows.keys() == data.job_rows(jobs.values(), NOW).keys()
    assert rows["13"] == data.job_row((jobs["13"], NOW, None))
    assert rows["13"][-2].text == "(Resources) start in 15m"
    assert len(rows._cache.built) == 1  # only the row read


@pytest.mark.parametrize("text", ["state=pending", "user=alice", "host=sim-2", "train", "zzz"])
def test_filter_on_fixed_cells_matches_the_plain_filter(text: str) -> None:
    rows = _rows(_jobs())
    fast, _ = data.RowFilter(text).apply(rows, data.JOB_COLUMNS)
    assert isinstance(fast, JobRows)
    plain, _ = data.RowFilter(text).apply(dict(rows.items()), data.JOB_COLUMNS)
    assert list(fast) == list(plain)


def test_a_filter_on_a_moving_column_filters_the_built_rows() -> None:
    rows = _rows(_jobs())
    shown, _ = data.RowFilter("util=1%").apply(rows, data.JOB_COLUMNS)
    assert list(shown) == ["9"]


@pytest.mark.parametrize("column", [c.key for c in data.JOB_COLUMNS])
@pytest.mark.parametrize("reverse", [False, True])
def test_sort_by_any_column_matches_a_sort_of_the_built_rows(column: str, reverse: bool) -> None:
    rows = _rows(_jobs())
    ci = [c.key for c in data.JOB_COLUMNS].index(column)
    assert rows.order_by(ci, reverse=reverse) == data.order_rows(
        dict(rows.items()), ci, reverse=reverse
    )


def test_a_fixed_column_sort_is_reused_while_no_job_changed() -> None:
    cache = JobRowCache()
    jobs = _jobs()
    rows = _rows(jobs, cache)
    first = rows.order_by(2)
    assert rows.order_by(2) is first
    # a job changed (a new object): sorted again, with its new key
    rows = _rows(dict(jobs, **{"13": dict(jobs["13"], user="aaa")}), cache)
    again = rows.order_by(2)
    assert again is not first and again[0] == "13"


def test_an_array_task_reads_as_array_underscore_task() -> None:
    j = dict(_jobs()["13"], array_job_id=12, array_task_id=1)
    assert data.job_label(j) == "12_1"
    assert data.job_row((j, NOW, None))[0].text == "12_1"
    assert data.RowFilter("id=12_1").apply(_rows({"13": j}), data.JOB_COLUMNS)[0].keys() == {"13"}


def test_the_daemons_idle_flag_shows_unless_the_gpus_got_busy() -> None:
    j = dict(_jobs()["2"], idle_s=900.0, gpu_util=1.0, elapsed_s=30.0)
    assert data.job_row((j, NOW, None))[-1].text == "IDLE GPUs"  # flagged: no grace needed
    busy = data.Series([80.0], [50.0])
    assert data.job_row((j, NOW, busy))[-1].text == ""  # the latest sample says busy


def test_a_sort_by_a_moving_column_reads_only_the_last_samples_of_the_live_series() -> None:
    from dcsched.tui.live import Frame, JobSeries

    jobs = _jobs()
    running = [k for k, j in jobs.items() if j["state"] == "RUNNING"]
    cols = len(running)
    frames = tuple(
        Frame(
            n,
            {k: (lambda col, i=i: (col[i],)) for i, k in enumerate(running)},
            [float((i * 37 + n) % 100) for i in range(cols)],
            [float(i) for i in range(cols)],
            [100.0] * cols,
        )
        for n in (1, 2)
    )
    series = JobSeries(frames, {k: 1 for k in running})
    assert len(series[running[0]].util) == 2
    items = {str(j["id"]): j for j in data.job_order(jobs.values())}
    for column in ("util", "util_trend", "mem_trend", "time", "flag"):
        ci = [c.key for c in data.JOB_COLUMNS].index(column)
        fast = JobRows(items, NOW, JobSeries(frames, {k: 1 for k in running}), JobRowCache())
        plain = JobRows(items, NOW, dict(series.items()), JobRowCache())
        assert fast.order_by(ci) == data.order_rows(dict(plain.items()), ci), column
