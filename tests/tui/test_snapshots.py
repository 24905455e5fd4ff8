"""One snapshot per view, from the recorded fixtures, at a fixed size and a fixed clock.

Update after a deliberate change with `pytest tests/tui --snapshot-update`, and look at
the SVGs under tests/tui/__snapshots__ before committing them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from dcsched.tui.app import DctopApp
from dcsched.tui.screens import DetailScreen
from tests.tui.fakes import NOW, FixtureSource
from tests.tui.helpers import select, wait_for

SIZE = (80, 24)
Compare = Callable[..., bool]


def app(**kw: Any) -> DctopApp:
    return DctopApp(FixtureSource(**kw), interval=0, clock=lambda: NOW)


def keys(*press: str, job: str | None = None) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        a = pilot.app
        assert isinstance(a, DctopApp)
        await wait_for(pilot, lambda: a.polls >= 1, what="the first poll")
        for k in press:
            await pilot.press(k)
            await pilot.pause()
        if job is not None:
            await select(pilot, a, "jobs", job)
            await pilot.press("enter")
        if isinstance(a.screen, DetailScreen):
            screen = a.screen
            await wait_for(pilot, lambda: getattr(screen, "detail", None) is not None)
        n = a.polls
        a.poll()
        await wait_for(pilot, lambda: a.polls > n, what="a settled poll")
        await pilot.pause()

    return run_before


SIZES = {"80x24": (80, 24), "200x60": (200, 60)}
SCREENS = {
    "cluster": keys(),
    "gpus": keys("2"),
    "jobs": keys("3"),
    "fairshare": keys("4"),
    "history": keys("5"),
    "help": keys("question_mark"),
    "job-running": keys("3", job="2"),
    "job-pending": keys("3", job="13"),
    "node": keys("enter"),
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen(snap_compare: Compare, name: str, size: str) -> None:
    assert snap_compare(app(), terminal_size=SIZES[size], run_before=SCREENS[name])


def test_small_terminal_job_detail(snap_compare: Compare) -> None:
    """60x15: panels stack, nothing essential is cut off."""
    assert snap_compare(app(), terminal_size=(60, 15), run_before=keys("3", job="2"))


def test_gpus_sorted_by_util_and_filtered(snap_compare: Compare) -> None:
    press = ("2", "slash", *"sim-2", "enter", "s", "s", "s", "s", "S")
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys(*press))


def test_jobs_filtered_by_user(snap_compare: Compare) -> None:
    press = ("3", "slash", *"user=alice", "enter")
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys(*press))


def test_fairshare_unavailable(snap_compare: Compare) -> None:
    assert snap_compare(app(fairshare=False), terminal_size=SIZE, run_before=keys("4"))


def test_confirm_modal(snap_compare: Compare) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=keys("3", "c"))
