"""A fixed-bucket histogram of observations (cumulative counts and a sum, Prometheus-style),
kept by the parts that time things and exported by `/metrics`. Plain data, no dependency:
the daemon's loops observe into it whether or not anything scrapes."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

# Scheduling passes: a few ms for a small cluster, up to seconds for 10,000 queued jobs.
PASS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Queue wait: seconds (an idle cluster) to days (a full one).
WAIT_BUCKETS_S = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200)


class Histogram:
    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (`le`).
        self._counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, +Inf last."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out
