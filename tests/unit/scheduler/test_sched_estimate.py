"""Expected remaining run from a user's completed runs (estimate.py)."""

from __future__ import annotations

import pytest

from dcsched.scheduler.estimate import HISTORY_RUNS, MIN_RUNS, expected_left, remember

RUNS = (100.0, 200.0, 300.0, 1000.0)


@pytest.mark.parametrize(
    ("runs", "served", "cap", "want"),
    [
        # a fresh job: the mean of the runs
        (RUNS, 0.0, 5000.0, 400.0),
        # served 250 s: the runs longer than that are 300 and 1000, mean 650, less 250
        (RUNS, 250.0, 5000.0, 400.0),
        # served 500 s: only the 1000 s run is longer: 500 more
        (RUNS, 500.0, 5000.0, 500.0),
        # what the time limit leaves caps it
        (RUNS, 500.0, 120.0, 120.0),
        # outlived every recorded run: unknown
        (RUNS, 1000.0, 5000.0, None),
        # too few runs to say
        (RUNS[: MIN_RUNS - 1], 0.0, 5000.0, None),
        ((), 0.0, 5000.0, None),
    ],
)
def test_expected_left(
    runs: tuple[float, ...], served: float, cap: float, want: float | None
) -> None:
    assert expected_left(runs, served, cap) == want


def test_remember_keeps_the_newest_runs() -> None:
    runs: tuple[float, ...] = ()
    for i in range(HISTORY_RUNS + 3):
        runs = remember(runs, float(i))
    assert len(runs) == HISTORY_RUNS
    assert runs[0] == 3.0 and runs[-1] == HISTORY_RUNS + 2.0
