"""dcctl's array display: index ranges and one queue line per array's waiting tasks."""

from __future__ import annotations

from typing import Any

import pytest

from dcsched.cli.dcctl import collapse_arrays, index_ranges
from dcsched.cli.queue_format import display_id


@pytest.mark.parametrize(
    ("indexes", "text"),
    [([], ""), ([3], "3"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([4, 0, 2], "0,2,4")],
)
def test_index_ranges(indexes: list[int], text: str) -> None:
    assert index_ranges(indexes) == text


def _task(job_id: int, task: int, state: str, array: int = 10) -> dict[str, Any]:
    return {"id": job_id, "array_job_id": array, "array_task_id": task, "state": state}


def test_waiting_tasks_collapse_running_ones_do_not() -> None:
    jobs = [
        _task(10, 0, "RUNNING"),
        _task(11, 1, "RUNNING"),
        _task(12, 2, "PENDING"),
        _task(13, 3, "PENDING"),
        _task(14, 4, "HELD"),
        _task(15, 5, "PENDING"),
        {"id": 20, "state": "PENDING"},
    ]
    rows = collapse_arrays(jobs)
    assert [r.get("display_id") or display_id(r) for r in rows] == [
        "10_0",
        "10_1",
        "10_[2-3,5]",
        "10_4",
        "20",
    ]


def test_the_array_line_shows_its_limit_as_squeue_does() -> None:
    jobs = [{**_task(10 + i, i, "PENDING"), "array_limit": 8} for i in range(2, 6)]
    jobs.append({**_task(30, 0, "PENDING", array=30), "array_limit": None})
    jobs.append({**_task(31, 1, "PENDING", array=30), "array_limit": None})
    rows = collapse_arrays(jobs)
    assert [r.get("display_id") or display_id(r) for r in rows] == ["10_[2-5%8]", "30_[0-1]"]


@pytest.mark.parametrize(
    ("by_start", "ids"),
    [
        # queue --start: tasks 4-5 start later and 6 has no time; one line showed the
        # soonest start for all of them
        (True, ["10_[2-3]", "10_[4-5]", "10_6"]),
        (False, ["10_[2-6]"]),  # the plain queue: start_ts is not the forecast
    ],
)
def test_queue_start_collapses_only_tasks_that_start_together(
    by_start: bool, ids: list[str]
) -> None:
    starts = {2: 100.0, 3: 100.0, 4: 200.0, 5: 200.0, 6: None}
    jobs = [{**_task(10 + i, i, "PENDING"), "start_ts": t} for i, t in starts.items()]
    rows = collapse_arrays(jobs, by_start=by_start)
    assert [r.get("display_id") or display_id(r) for r in rows] == ids
