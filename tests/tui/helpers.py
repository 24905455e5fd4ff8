"""Shared Pilot helpers for dctop's tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual.pilot import Pilot

from dcsched.tui.app import DctopApp
from dcsched.tui.table import LiveTable


async def wait_for(
    pilot: Pilot[None], pred: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await pilot.pause(0.02)
        await asyncio.sleep(0.01)


async def polled(pilot: Pilot[None], app: DctopApp) -> None:
    """Waits for the first poll to land and the main screen to be mounted (under load the
    first poll can land before the screen is pushed)."""
    await wait_for(pilot, lambda: app.polls >= 1, what="the first poll")
    await wait_for(pilot, lambda: bool(app.screen.query("#banner")), what="the main screen")
    await pilot.pause()


async def repoll(pilot: Pilot[None], app: DctopApp) -> None:
    """Polls once more now and waits for it to land."""
    await wait_for(pilot, lambda: not app._polling, what="the poll in flight")
    n = app.polls
    app.poll()
    await wait_for(pilot, lambda: app.polls > n, what="a poll")
    await pilot.pause()


def table(app: DctopApp, view: str) -> LiveTable:
    return app.query_one(f"#view-{view}-table", LiveTable)


async def select(pilot: Pilot[None], app: DctopApp, view: str, key: str) -> None:
    t = table(app, view)
    t.move_cursor(row=t.get_row_index(key))
    t.focus()
    await pilot.pause()
    assert t.selected_key == key


def notices(app: DctopApp) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]
