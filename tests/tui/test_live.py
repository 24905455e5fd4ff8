"""The live mode's reads: after one full read, only what the event stream said changed."""

from __future__ import annotations

import copy
from typing import Any

from dcsched.tui import data
from dcsched.tui.live import Feed, LiveState
from tests.tui.fakes import NOW, FixtureSource


class CountingSource(FixtureSource):
    """The fixtures, with the live calls, counting what is read."""

    def __init__(self, *, columns: bool = True, ids: bool = True) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.util = 10.0
        self.columns, self.ids = columns, ids
        self.store = {str(j["id"]): j for j in super().jobs()}

    def __getattribute__(self, name: str) -> Any:
        if name in ("cluster", "nodes", "gpus", "jobs", "gpu_columns", "jobs_by_id"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)

    def jobs(self, *, all_states: bool = False) -> list[dict[str, Any]]:
        return copy.deepcopy([j for j in self.store.values() if j["state"] != "COMPLETED"])

    def gpu_columns(self) -> dict[str, Any]:
        gpus = self.gpus()
        self.calls.pop()  # counted as gpu_columns only
        if not self.columns:  # an older daemon ignores form=columns
            return {"gpus": gpus}
        return {
            "form": "columns",
            "keys": [f"{g['host']}/{g['index']}" for g in gpus],
            "util": [self.util for _ in gpus],
            "job_id": [g["job_id"] for g in gpus],
        }

    def jobs_by_id(self, ids: Any) -> list[dict[str, Any]]:
        if not self.ids:
            return self.jobs()
        return copy.deepcopy([self.store[str(i)] for i in ids if str(i) in self.store])


def test_first_read_is_full_then_only_telemetry_and_changed_jobs() -> None:
    src, feed, state = CountingSource(), Feed(), LiveState()
    snap = state.read(src, feed, telemetry=True, clock=lambda: NOW)
    assert set(src.calls) == {"cluster", "nodes", "gpus", "jobs"}
    n_jobs = len(snap.jobs)
    src.calls.clear()
    src.util = 42.0
    snap = state.read(src, feed, telemetry=True, clock=lambda: NOW + 1)
    assert src.calls == ["cluster", "gpu_columns"]  # nothing changed but telemetry
    assert {g["util"] for g in snap.gpus} == {42.0}
    running = [j for j in snap.jobs if j["state"] == "RUNNING"]
    series = [snap.job_series[str(j["id"])] for j in running]
    assert running and all(len(s.util) == 2 and s.util[-1] == 42.0 for s in series)
    row = data.job_row((running[0], NOW + 1, series[0]))
    assert row[9].text == "42%" and row[10].text.strip()  # util, and its spark line
    # a job ends, one is held: the stream says so, only those two are read
    src.store["2"] = dict(src.store["2"], state="COMPLETED")
    src.store["13"] = dict(src.store["13"], state="HELD")
    feed.on_event("job", {"id": 2, "state": "COMPLETED"})
    feed.on_event("job", {"id": 13, "state": "HELD"})
    src.calls.clear()
    snap = state.read(src, feed, telemetry=False, clock=lambda: NOW + 2)
    assert src.calls == ["cluster", "jobs_by_id"]  # no telemetry: not shown
    states = {str(j["id"]): j["state"] for j in snap.jobs}
    assert "2" not in states and states["13"] == "HELD" and len(states) == n_jobs - 1
    # a node changed: nodes and the full GPU rows are read again
    feed.on_event("node", {"host": "sim-3", "state": "up"})
    src.calls.clear()
    state.read(src, feed, telemetry=True, clock=lambda: NOW + 3)
    assert src.calls == ["cluster", "nodes", "gpus"]
    # a reset (daemon restart): everything again
    feed.on_event("reset", {})
    src.calls.clear()
    state.read(src, feed, telemetry=True, clock=lambda: NOW + 4)
    assert set(src.calls) == {"cluster", "nodes", "gpus", "jobs"}


def test_an_older_daemon_that_ignores_the_new_queries_still_reads_right() -> None:
    src, feed, state = CountingSource(columns=False, ids=False), Feed(), LiveState()
    state.read(src, feed, telemetry=True, clock=lambda: NOW)
    src.store["2"] = dict(src.store["2"], state="COMPLETED")
    feed.on_event("job", {"id": 2})
    snap = state.read(src, feed, telemetry=True, clock=lambda: NOW + 1)
    assert "2" not in {str(j["id"]) for j in snap.jobs}
    assert len(snap.gpus) == 12
