"""dctop's data layer (no terminal): N/A everywhere, rows, filters, flags, sparklines."""

from __future__ import annotations

import pytest

from dcsched.tui import data
from tests.tui.fakes import NOW, FixtureSource, load


def test_the_data_layer_does_not_import_textual() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(data.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "textual"]


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (data.pct, None, "N/A"),
        (data.pct, 42.4, "42%"),
        (data.pct, float("nan"), "N/A"),
        (data.pct, True, "N/A"),
        (data.watts, None, "N/A"),
        (data.watts, 612.4, "612 W"),
        (data.watts, 5828.3, "5.8 kW"),
        (data.celsius, None, "N/A"),
        (data.celsius, 66.2, "66°C"),
        (data.duration, None, ""),
        (data.duration, 3725, "01:02:05"),
        (data.duration, 90061, "1-01:01:01"),
    ],
)
def test_formatting(fn: object, value: object, text: str) -> None:
    assert fn(value) == text  # type: ignore[operator]


def test_memory_and_relative_times() -> None:
    assert data.memory(None, 80 * 2**30) == "N/A"
    assert data.memory(40 * 2**30, 80 * 2**30) == "40.0/80.0 GiB"
    assert data.relative(NOW + 300, NOW) == "in 5m"
    assert data.relative(NOW - 7200, NOW) == "2.0h ago"
    assert data.relative(None, NOW) == ""


def test_a_gpu_with_every_number_null_reads_na() -> None:
    g = {
        "host": "h",
        "index": 0,
        "util": None,
        "mem_used": None,
        "mem_total": None,
        "temp_c": None,
        "power_w": None,
        "job_id": None,
        "user": None,
        "health": None,
    }
    (cells,) = data.gpu_rows([g]).values()
    assert [c.text for c in cells][3:7] == ["N/A", "N/A", "N/A", "N/A"]
    assert data.gpu_glyph(g) == ("○--", "dim")
    (row,) = data.cluster_rows([{"host": "h", "state": "down"}], [g]).values()
    assert row[2].text == "○--"


def test_cluster_rows_mark_allocation_and_colour_by_util() -> None:
    src = FixtureSource()
    rows = data.cluster_rows(src.nodes(), src.gpus())
    assert list(rows) == ["sim-1", "sim-2", "sim-3"]
    sim2 = rows["sim-2"][2]
    assert sim2.text.count("●") == 3 and sim2.text.count("○") == 1
    styles = {s for _, s in sim2.runs if s}
    assert "red1" in styles and "grey50" in styles  # busy and idle GPUs differ
    assert rows["sim-3"][1].text == "drained (fan check)"


def test_row_filter_terms() -> None:
    rows = data.gpu_rows(FixtureSource().gpus())

    def n(text: str) -> int:
        return len(data.RowFilter(text).apply(rows, data.GPU_COLUMNS)[0])

    assert n("alice") == 3
    assert n("host=sim-1") == 4
    assert n("HOST=SIM-1 job=9") == 1
    assert n("health=lost") == 1
    assert n("  ") == len(rows)
    # a key= the view has no column for is skipped (and reported), not "nothing matches"
    shown, ignored = data.RowFilter("account=vision host=sim-1").apply(rows, data.GPU_COLUMNS)
    assert len(shown) == 4 and ignored == ["account"]


def test_row_filter_in_the_jobs_view_host_means_the_nodelist() -> None:
    rows = data.job_rows(load("jobs.json")["jobs"], NOW)
    shown, _ = data.RowFilter("host=sim-2").apply(rows, data.JOB_COLUMNS)
    where = [c.key for c in data.JOB_COLUMNS].index("where")
    assert shown and all("sim-2" in cells[where].text for cells in shown.values())
    users = {
        cells[2].text
        for cells in data.RowFilter("user=alice").apply(rows, data.JOB_COLUMNS)[0].values()
    }
    assert users == {"alice"}


def test_order_rows_by_a_column() -> None:
    rows = data.gpu_rows(FixtureSource().gpus())
    ci = [c.key for c in data.GPU_COLUMNS].index("util")
    keys = data.order_rows(rows, ci)
    utils = [data.sort_key(rows[k][ci].key) for k in keys]
    assert utils == sorted(utils)
    assert data.order_rows(rows, ci, reverse=True) == sorted(
        keys, key=lambda k: data.sort_key(rows[k][ci].key), reverse=True
    )


def test_exit_text() -> None:
    assert data.exit_text(0, None) == "exit 0"
    assert data.exit_text(None, 9) == "signal 9"
    assert data.exit_text(None, None) == ""


def test_jobs_running_first_queue_by_priority_and_idle_flagged() -> None:
    jobs = load("jobs.json")["jobs"]
    rows = data.job_rows(jobs, NOW)
    ids = list(rows)
    assert ids[:2] == ["2", "4"] and ids[-2:] == ["7", "13"]
    assert rows["9"][-1].text == "IDLE GPUs"  # running 10 min at 1 %
    assert [r[-1].text for k, r in rows.items() if k != "9"] == [""] * (len(rows) - 1)
    assert rows["13"][-2].text == "(Resources) start in 15m"
    assert rows["7"][-2].text == "(JobHeldUser)"
    young = dict(jobs[0], gpu_util=0.0, elapsed_s=30.0)
    assert not data.job_idle(young)  # start-up is allowed to be quiet


def test_fairshare_rows_group_users_under_accounts() -> None:
    rows = data.fairshare_rows(load("fairshare.json"))
    assert list(rows) == ["demo/", "demo/root", "vision/", "vision/alice"]
    assert rows["vision/alice"][0].text == "  └ alice"
    assert rows["vision/"][5].text.startswith("0.580")
    assert data.fairshare_rows({"rows": []}) == {}


def test_sparkline_scales_and_pads() -> None:
    assert data.sparkline([0, 50, 100], 0, 100, 3) == "▁▅█"
    assert data.sparkline([None, 100], 0, 100, 4) == "   █"
    assert data.sparkline(list(range(100)), 0, 99, 5) == "█████"
    assert data.sparkline([], 0, 1, 2) == "  "


def test_sort_key_orders_na_first() -> None:
    assert sorted([3, None, 1], key=data.sort_key) == [None, 1, 3]
    assert sorted(["b", None, 2], key=data.sort_key) == [None, 2, "b"]


def test_fetch_snapshot_marks_a_missing_fairshare() -> None:
    from dcsched.client import ApiError

    snap = data.fetch_snapshot(
        FixtureSource(fairshare=False), fairshare=True, clock=lambda: NOW, unavailable=(ApiError,)
    )
    assert snap.fairshare is None and "http_404" in snap.fairshare_error
    snap = data.fetch_snapshot(FixtureSource(), fairshare=True, finished=True, clock=lambda: NOW)
    assert snap.fairshare is not None and snap.finished is not None
    assert {j["state"] for j in snap.finished} == {"COMPLETED", "FAILED", "CANCELLED"}


def test_job_order_moves_only_the_changed_jobs_and_matches_a_full_sort() -> None:
    jobs = {str(j["id"]): j for j in load("jobs.json")["jobs"]}
    order = data.JobOrder()
    full = [str(j["id"]) for j in data.job_order(jobs.values())]
    assert order.update(jobs, 1, None) == full
    assert order.update(jobs, 1, frozenset({"2"})) == full  # same version: kept
    # job 13 (pending) is now first in the queue; job 2 ended
    jobs = dict(jobs, **{"13": dict(jobs["13"], priority=10**9)})
    del jobs["2"]
    moved = order.update(jobs, 2, frozenset({"13", "2"}))
    assert moved == [str(j["id"]) for j in data.job_order(jobs.values())]
    assert "2" not in moved
    # a version skipped (a refresh this view did not see): a full sort
    assert order.update(jobs, 5, frozenset()) == moved
