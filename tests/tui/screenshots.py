"""Writes docs/screenshots/*.svg: each view of dctop on the recorded demo fixtures.

python -m tests.tui.screenshots
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from dcsched.tui.app import DctopApp
from tests.tui.fakes import NOW, FixtureSource
from tests.tui.helpers import select, wait_for

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SIZE = (130, 36)


async def shoot() -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    app = DctopApp(FixtureSource(), interval=0, clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1)

        async def save(name: str) -> None:
            await pilot.pause(0.3)
            path = OUT / f"{name}.svg"
            app.save_screenshot(path.name, str(OUT))
            written.append(path)

        await save("cluster")
        for key, name in (("2", "gpus"), ("3", "jobs"), ("4", "fairshare"), ("5", "history")):
            await pilot.press(key)
            await save(name)
        await pilot.press("3")
        await select(pilot, app, "jobs", "13")
        await pilot.press("enter")
        await save("job-detail-pending")
        await pilot.press("escape")
        await select(pilot, app, "jobs", "2")
        await pilot.press("enter")
        await save("job-detail-running")
        await pilot.press("escape", "1", "enter")
        await save("node-detail")
        await pilot.press("escape", "3", "c")
        await save("confirm-cancel")
        await pilot.press("n", "question_mark")
        await save("help")
        await pilot.press("escape", "t", "2")
        await save("gpus-light")
    return written


if __name__ == "__main__":
    for p in asyncio.run(shoot()):
        print(p)
