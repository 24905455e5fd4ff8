"""Reserve step: backfill reservations from running jobs' time limits (never true durations).

Each node has a timeline of usable GPUs: its free GPUs now, plus releases when running (and
just started) jobs reach their time limit, minus reservations made for higher-priority
pending jobs over [start, start + time limit). A reserved job takes the earliest start at
which enough nodes have room for its whole time limit. A lower-priority job may then start
now on a node with reservations only if its own time limit fits under every reservation's
floor: it "backfills" and never delays a reservation. Nodes without reservations only ever
gain GPUs over time, so their earliest start is a plain lookup, cached per node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dcsched.scheduler.model import JobRequest, RunningJob
from dcsched.scheduler.score import Cluster


@dataclass(frozen=True, slots=True)
class Slot:
    start: float
    nodes: tuple[int, ...]


class Timeline:
    def __init__(
        self,
        cluster: Cluster,
        running: Iterable[RunningJob],
        now: float,
        started: Iterable[tuple[int, int, float]],
    ) -> None:
        self.cluster = cluster
        self.now = now
        self.events: dict[int, list[tuple[float, int]]] = {}
        self._profile: dict[int, tuple[list[float], list[int]]] = {}
        self._earliest: dict[tuple[int, int], float | None] = {}
        views = cluster.views
        for job in running:
            end = now if job.terminating else max(now, job.start_ts + job.time_limit_s)
            for name, gpus in job.allocation:
                i = cluster.rank.get(name)
                if i is None or views[i].state != "up":
                    continue
                bad = views[i].unhealthy
                n = len(gpus) - len(bad.intersection(gpus)) if bad else len(gpus)
                if n:
                    self.events.setdefault(i, []).append((end, n))
        for node, count, end in started:
            self.events.setdefault(node, []).append((end, count))

    def add(self, node: int, at: float, delta: int) -> None:
        self.events.setdefault(node, []).append((at, delta))
        self.touch(node)

    def touch(self, node: int) -> None:
        """The node changed (a start or a reservation): drop its cached profile."""
        self._profile.pop(node, None)
        size = len(self.cluster.index[self.cluster.types[node]].counts)
        for p in range(size):
            self._earliest.pop((node, p), None)

    def profile(self, node: int) -> tuple[list[float], list[int]]:
        """(times, usable GPUs from each time on), starting with (now, free now)."""
        got = self._profile.get(node)
        if got is not None:
            return got
        times, avail = [self.now], [len(self.cluster.free[node])]
        for when, delta in sorted(self.events.get(node, ())):
            at = max(when, self.now)
            if at == times[-1]:
                avail[-1] += delta
            else:
                times.append(at)
                avail.append(avail[-1] + delta)
        self._profile[node] = (times, avail)
        return times, avail

    def fits(self, node: int, gpus: int, start: float, end: float) -> bool:
        """At least `gpus` usable on `node` all through [start, end)."""
        times, avail = self.profile(node)
        i = 0
        while i + 1 < len(times) and times[i + 1] <= start:
            i += 1
        while i < len(times) and times[i] < end:
            if avail[i] < gpus:
                return False
            i += 1
        return True

    def backfill_ok(self, node: int, gpus: int, end: float) -> bool:
        """May a job take `gpus` on `node` now until `end` without delaying a reservation?"""
        return self.fits(node, gpus, self.now, end)

    def earliest(self, node: int, gpus: int, duration: float) -> float | None:
        pinned = node in self.cluster.index[self.cluster.types[node]].pinned
        if not pinned and (node, gpus) in self._earliest:
            return self._earliest[(node, gpus)]
        times, avail = self.profile(node)
        found: float | None = None
        if pinned:
            for i, t in enumerate(times):
                grew = i == 0 or avail[i] > avail[i - 1]
                if avail[i] >= gpus and grew and self.fits(node, gpus, t, t + duration):
                    found = t
                    break
        else:
            # no reservations: usable GPUs only grow, the first time there are enough is it
            for i, t in enumerate(times):
                if avail[i] >= gpus:
                    found = t
                    break
            self._earliest[(node, gpus)] = found
        return found

    def reserve(self, job: JobRequest, types: list[str]) -> Slot | None:
        """Earliest start for the whole job, on nodes of one GPU type; None if never."""
        cluster = self.cluster
        best: Slot | None = None
        for t in types:
            idx = cluster.index[t]
            if job.gpus_per_node >= len(idx.counts):
                continue
            cands: list[tuple[float, int]] = []
            p, limit, cache = job.gpus_per_node, job.time_limit_s, self._earliest
            for node in cluster.usable.get(t, ()):
                at = cache[(node, p)] if (node, p) in cache else self.earliest(node, p, limit)
                if at is not None:
                    cands.append((at, node))
            if len(cands) < job.nodes:
                continue
            cands.sort()
            slot = self._common_start(job, cands)
            if slot is not None and (best is None or slot.start < best.start):
                best = slot
        return best

    def _common_start(self, job: JobRequest, cands: list[tuple[float, int]]) -> Slot | None:
        if job.nodes == 1:
            return Slot(cands[0][0], (cands[0][1],))
        # nodes free earlier may be taken again by a reservation later: check the window
        for k in range(job.nodes - 1, len(cands)):
            start = cands[k][0]
            end = start + job.time_limit_s
            ok = [
                n for at, n in cands if at <= start and self.fits(n, job.gpus_per_node, start, end)
            ]
            if len(ok) >= job.nodes:
                return Slot(start, tuple(sorted(ok[: job.nodes])))
        return None

    def release_now(self, job_id: str, running: Iterable[RunningJob]) -> None:
        """A preempted job: its GPUs come back now instead of at its time limit."""
        for job in running:
            if job.job_id != job_id or job.terminating:
                continue
            end = max(self.now, job.start_ts + job.time_limit_s)
            for name, gpus in job.allocation:
                node = self.cluster.rank.get(name)
                if node is None:
                    continue
                bad = self.cluster.views[node].unhealthy
                n = len(gpus) - len(bad.intersection(gpus)) if bad else len(gpus)
                events = self.events.get(node, [])
                if (end, n) in events:
                    events.remove((end, n))
                    events.append((self.now, n))
                    self.touch(node)

    def hold(self, job: JobRequest, slot: Slot) -> None:
        """Record the reservation on its nodes and pin them out of the fast index."""
        for node in slot.nodes:
            self.cluster.pin(node)
            self.add(node, slot.start, -job.gpus_per_node)
            self.add(node, slot.start + job.time_limit_s, job.gpus_per_node)
