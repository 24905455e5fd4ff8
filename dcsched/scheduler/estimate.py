"""Expected remaining run time of a job, from the run times of its user's completed jobs.

Helios's QSSF, made duration-blind in the same way: the daemon (or the harness) keeps, per
(user, time limit), the run times of that user's last `HISTORY_RUNS` completed jobs
(`Snapshot.history`). A job that has already run (or been served) `served` seconds is
expected to need E[run - served | run > served] more: the mean of the recorded runs longer
than what it has had, less what it has had (the Gittins view: a job that has outlived most
of its peers is expected to be one of the long ones). Capped by what its time limit leaves.

Too few runs, or none longer than `served`, give None: callers fall back to what needs no
history (the time limit, or the LAS premise that a job that has run long runs long).
"""

from __future__ import annotations

from collections.abc import Mapping

# runs kept per (user, time limit): enough for a mean, few enough to follow a change
HISTORY_RUNS = 32
# fewer recorded runs than this: no estimate
MIN_RUNS = 4

History = Mapping[tuple[str, float], tuple[float, ...]]


def remember(runs: tuple[float, ...], ran_s: float) -> tuple[float, ...]:
    """`runs` with one more completed run, the oldest dropped past HISTORY_RUNS."""
    return (*runs, ran_s)[-HISTORY_RUNS:]


def expected_left(runs: tuple[float, ...], served_s: float, cap_s: float) -> float | None:
    """E[run - served | run > served] over `runs`, at most `cap_s` (what the time limit
    leaves); None when there are fewer than MIN_RUNS runs or none longer than `served_s`."""
    if len(runs) < MIN_RUNS:
        return None
    longer = [r for r in runs if r > served_s]
    if not longer:
        return None
    return max(0.0, min(cap_s, sum(longer) / len(longer) - served_s))
