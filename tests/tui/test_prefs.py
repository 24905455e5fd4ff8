"""k9s habits: columns and sort saved per view, a start-up filter, the palette's actions."""

from __future__ import annotations

from pathlib import Path

from dcsched.tui.app import DctopApp
from dcsched.tui.prefs import Prefs, ViewPrefs, dump_prefs, load_prefs
from tests.tui.fakes import NOW, FixtureSource
from tests.tui.helpers import notices, polled, table, wait_for

SIZE = (120, 30)


def app(prefs: Prefs | None = None, **kw: object) -> DctopApp:
    return DctopApp(FixtureSource(), interval=0, clock=lambda: NOW, prefs=prefs, **kw)  # type: ignore[arg-type]


def test_prefs_round_trip_and_a_broken_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "dctop.toml"
    prefs = Prefs(path=path, views={"gpus": ViewPrefs(["host", "util"], "util", True)})
    path.write_text(dump_prefs(prefs))
    again = load_prefs(path)
    assert again.views["gpus"] == ViewPrefs(["host", "util"], "util", True) and not again.error
    path.write_text("[views.gpus\ncolumns = ")
    broken = load_prefs(path)
    assert broken.error and str(path) in broken.error and broken.views == {}
    assert load_prefs(tmp_path / "none.toml").error == ""  # no file: the defaults


async def test_columns_and_sort_are_saved_and_come_back(tmp_path: Path) -> None:
    path = tmp_path / "dctop.toml"
    a = app(Prefs(path=path))
    async with a.run_test(size=SIZE) as pilot:
        await polled(pilot, a)
        await pilot.press("2", "colon", *"columns host util user", "enter")
        await pilot.press("colon", *"sort util desc", "enter")
        gpus = table(a, "gpus")
        assert gpus.shown == ["host", "util", "user"]
        assert (gpus.sort_column, gpus.sort_reverse) == ("util", True)
        await pilot.press("colon", *"columns bogus", "enter")
        assert any("no column bogus" in n for n in notices(a))
    saved = load_prefs(path)
    assert saved.views["gpus"] == ViewPrefs(["host", "util", "user"], "util", True)
    b = app(saved)
    async with b.run_test(size=SIZE) as pilot:
        await polled(pilot, b)
        gpus = table(b, "gpus")
        assert gpus.shown == ["host", "util", "user"] and gpus.sort_column == "util"


async def test_start_up_filter_applies_in_every_view_where_it_can() -> None:
    a = app(start_filter="user=alice")
    async with a.run_test(size=SIZE) as pilot:
        await polled(pilot, a)
        await pilot.press("3")
        await wait_for(pilot, lambda: bool(table(a, "jobs").rows), what="jobs")
        assert {c[2].text for c in table(a, "jobs").rows.values()} == {"alice"}
        await pilot.press("1")
        await wait_for(pilot, lambda: bool(table(a, "cluster").rows), what="nodes")
        assert len(table(a, "cluster").rows) == 3  # no user column there: skipped


async def test_palette_sorts_and_hides_columns(tmp_path: Path) -> None:
    a = app(Prefs(path=tmp_path / "dctop.toml"))
    async with a.run_test(size=SIZE) as pilot:
        await polled(pilot, a)
        await pilot.press("2", "ctrl+p", *"GPUs: sort by Power")
        await pilot.pause(0.3)
        await pilot.press("enter")
        gpus = table(a, "gpus")
        await wait_for(pilot, lambda: gpus.sort_column == "power", what="sorted by power")
        await pilot.press("ctrl+p", *"GPUs: hide column Model")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: "model" not in gpus.shown, what="model hidden")
