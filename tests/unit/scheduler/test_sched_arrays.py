"""Array `%N` limits, singletons and `after` dependencies in decide() and explain()."""

from __future__ import annotations

import pytest
from sched_builders import job, node, running, snap

from dcsched.scheduler import JobRequest, decide, explain
from dcsched.scheduler.filter import ARRAY_LIMIT, SINGLETON


def task(i: int, limit: int | None = 2, array: str = "10", **kw: object) -> JobRequest:
    return job(str(10 + i), name="sweep", array_id=array, array_limit=limit, submit=i, **kw)


@pytest.mark.parametrize("policy", ["default", "fifo", "greedy"])
def test_at_most_n_tasks_of_an_array_start(policy: str) -> None:
    s = snap([node("n1", 8)], [task(i) for i in range(5)], policy=policy)
    d = decide(s, 100.0)
    assert [x.job_id for x in d.starts] == ["10", "11"]
    for i in ("12", "13", "14"):
        assert d.pending[i].reasons[0] == ARRAY_LIMIT


def test_running_tasks_count_against_the_limit() -> None:
    run = [running("10", {"n1": [0]}, name="sweep", array_id="10")]
    s = snap([node("n1", 8, free=range(1, 8))], [task(i) for i in range(1, 4)], run)
    d = decide(s, 100.0)
    assert [x.job_id for x in d.starts] == ["11"]
    assert explain(s, 100.0, "12").reasons == (ARRAY_LIMIT,)


def test_no_limit_and_other_arrays_are_not_held_back() -> None:
    pending = [task(i, limit=None) for i in range(3)]
    pending += [task(i, limit=1, array="20") for i in range(3, 5)]
    d = decide(snap([node("n1", 8)], pending), 100.0)
    assert [x.job_id for x in d.starts] == ["10", "11", "12", "13"]
    assert d.pending["14"].reasons == (ARRAY_LIMIT,)


def test_singleton_waits_for_its_namesake() -> None:
    run = [running("1", {"n1": [0]}, name="etl", user="ann")]
    pending = [
        job("2", name="etl", user="ann", singleton=True),
        job("3", name="etl", user="bob", singleton=True),  # another user's: free to run
        job("4", name="etl", user="ann"),  # no singleton asked
    ]
    s = snap([node("n1", 8, free=range(1, 8))], pending, run)
    d = decide(s, 100.0)
    assert sorted(x.job_id for x in d.starts) == ["3", "4"]
    assert d.pending["2"].reasons == (SINGLETON,)


def test_two_singletons_of_one_name_start_one_at_a_time() -> None:
    pending = [job(str(i), name="etl", singleton=True, submit=i) for i in (1, 2)]
    d = decide(snap([node("n1", 8)], pending), 100.0)
    assert [x.job_id for x in d.starts] == ["1"]
    assert d.pending["2"].reasons == (SINGLETON,)


def test_after_starts_once_the_job_runs() -> None:
    pending = [job("2", depends=(("after", "1"),))]
    waiting = decide(snap([node("n1", 8)], [job("1", 8), *pending]), 100.0)
    assert [x.job_id for x in waiting.starts] == ["1"]
    assert waiting.pending["2"].reasons[0] == "Dependency"
    run = [running("1", {"n1": range(4)})]
    started = decide(snap([node("n1", 8, free=range(4, 8))], pending, run), 100.0)
    assert [x.job_id for x in started.starts] == ["2"]
