"""dctop under Pilot against a fake daemon (recorded fixtures behind a real Unix socket and
the real dcsched.client.Client): navigation, every action with its confirmation, read-only
mode, errors from the daemon, a lost daemon, in-place updates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dcsched.client import Client
from dcsched.tui.app import DctopApp
from dcsched.tui.data import sort_key
from dcsched.tui.screens import (
    ConfirmScreen,
    DrainScreen,
    HelpScreen,
    JobDetailScreen,
    NodeDetailScreen,
)
from dcsched.tui.widgets import Banner
from tests.tui.fakes import NOW, FakeDaemon, FixtureSource, fake_daemon
from tests.tui.helpers import notices, polled, repoll, select, table, wait_for

SIZE = (140, 40)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeDaemon]:
    async with fake_daemon(tmp_path) as f:
        yield f


def make_app(fake: FakeDaemon, **kw: object) -> DctopApp:
    opts: dict[str, object] = {"interval": 0, "clock": lambda: NOW, **kw}
    return DctopApp(Client(fake.socket, timeout=5), **opts)  # type: ignore[arg-type]


async def test_views_switch_by_number_colon_and_mouse(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        assert set(table(app, "cluster").rows) == {"sim-1", "sim-2", "sim-3"}
        await pilot.press("2")
        assert app.current_view.id == "view-gpus"
        assert len(table(app, "gpus").rows) == 12
        await pilot.press("3")
        assert app.current_view.id == "view-jobs"
        assert "13" in table(app, "jobs").rows
        await pilot.press("4")
        await wait_for(pilot, lambda: "vision/alice" in table(app, "fairshare").rows)
        await pilot.press("5")
        await wait_for(pilot, lambda: "3" in table(app, "history").rows, what="history rows")
        await pilot.press("colon", *"gpus", "enter")
        assert app.current_view.id == "view-gpus"
        await pilot.press("colon", *"job 13", "enter")
        assert isinstance(app.screen, JobDetailScreen)
        await pilot.press("1")  # a view key leaves the detail
        assert app.current_view.id == "view-cluster" and not isinstance(app.screen, JobDetailScreen)
        await pilot.click("#--content-tab-jobs")  # the mouse works on tabs
        assert app.current_view.id == "view-jobs"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("t")
        assert app.theme == "textual-light"


async def test_job_detail_shows_priority_allocation_and_log(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await pilot.press("3")
        await select(pilot, app, "jobs", "13")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        await wait_for(pilot, lambda: screen.detail is not None, what="job detail")
        assert screen.detail is not None and screen.detail.explain is not None
        await pilot.press("escape")
        await select(pilot, app, "jobs", "2")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        await wait_for(pilot, lambda: screen.detail is not None, what="job detail")
        d = screen.detail
        assert d is not None and "sim-1" in d.histories and d.log is not None
        assert d.explain is None and not d.explain_error  # a running job is not ranked
        assert d.efficiency is not None and d.efficiency["gpu_hours"] == 1.5
        await pilot.press("escape")
        await select(pilot, app, "jobs", "7")  # held, and no explain served for it
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        await wait_for(pilot, lambda: screen.detail is not None, what="job detail")
        d = screen.detail
        assert d is not None and d.explain is None and "404" in d.explain_error


async def test_node_detail_from_cluster_and_gpus(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await select(pilot, app, "cluster", "sim-2")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, NodeDetailScreen) and screen.host == "sim-2"
        await wait_for(pilot, lambda: screen.detail is not None, what="node detail")
        await pilot.press("escape")
        await pilot.press("2")
        await select(pilot, app, "gpus", "sim-1/1")
        await pilot.press("j")
        assert isinstance(app.screen, JobDetailScreen) and app.screen.job_id == "9"


@pytest.mark.parametrize(
    ("key", "job", "path"),
    [
        ("c", "2", "/v1/jobs/2/cancel"),
        ("h", "13", "/v1/jobs/13/hold"),
        ("r", "7", "/v1/jobs/7/release"),
    ],
)
async def test_job_actions_ask_then_post(fake: FakeDaemon, key: str, job: str, path: str) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await pilot.press("3")
        await select(pilot, app, "jobs", job)
        await pilot.press(key)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # refused: nothing sent
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.pause(0.1)
        assert fake.posts == []
        await pilot.press(key)
        await pilot.press("y")
        await wait_for(pilot, lambda: fake.posts, what="the POST")
        assert fake.posts == [(path, None)]
        await wait_for(pilot, lambda: any("sent" in n for n in notices(app)))


async def test_job_action_from_the_detail_screen(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await pilot.press("colon", *"job 12", "enter")
        assert isinstance(app.screen, JobDetailScreen)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#yes")
        await wait_for(pilot, lambda: fake.posts, what="the POST")
        assert fake.posts == [("/v1/jobs/12/cancel", None)]


async def test_drain_asks_for_a_reason_and_resume_confirms(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await select(pilot, app, "cluster", "sim-2")
        await pilot.press("d")
        assert isinstance(app.screen, DrainScreen)
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert fake.posts == []
        await pilot.press("d")
        await pilot.press(*"bad fan", "enter")
        await wait_for(pilot, lambda: fake.posts, what="drain POST")
        assert fake.posts == [("/v1/nodes/sim-2/drain", {"reason": "bad fan"})]
        await select(pilot, app, "cluster", "sim-3")
        await pilot.press("u")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: len(fake.posts) == 2, what="resume POST")
        assert fake.posts[1] == ("/v1/nodes/sim-3/resume", None)


async def test_drain_from_node_detail(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await pilot.press("colon", *"node sim-1", "enter")
        assert isinstance(app.screen, NodeDetailScreen)
        await pilot.press("d")
        await pilot.press(*"x", "enter")
        await wait_for(pilot, lambda: fake.posts, what="drain POST")
        assert fake.posts == [("/v1/nodes/sim-1/drain", {"reason": "x"})]


async def test_readonly_refuses_every_action(fake: FakeDaemon) -> None:
    app = make_app(fake, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        for key in ("d", "u"):
            await pilot.press(key)
            assert not isinstance(app.screen, ConfirmScreen | DrainScreen)
        await pilot.press("3")
        for key in ("c", "h", "r"):
            await pilot.press(key)
            assert not isinstance(app.screen, ConfirmScreen)
        await pilot.pause(0.1)
        assert fake.posts == []
        assert any("read-only" in n for n in notices(app))


async def test_permission_error_is_a_message_not_a_crash(fake: FakeDaemon) -> None:
    fake.errors["/v1/nodes/sim-1/drain"] = (
        403,
        "permission_denied",
        "draining a node needs an admin ([daemon] admins)",
    )
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await select(pilot, app, "cluster", "sim-1")
        await pilot.press("d", "enter")
        await wait_for(
            pilot, lambda: any("needs an admin" in n for n in notices(app)), what="the error"
        )
        assert any(n.startswith("permission denied") for n in notices(app))
        assert app.is_running


async def test_lost_daemon_shows_a_banner_and_recovers(fake: FakeDaemon) -> None:
    app = make_app(fake, interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        banner = app.query_one("#banner", Banner)
        assert not banner.display
        await fake.go_down()
        await wait_for(pilot, lambda: banner.display, what="the banner")
        assert "daemon unreachable — retrying" in str(banner.render())
        assert len(table(app, "cluster").rows) == 3  # the last data stays on screen
        await fake.come_back()
        await wait_for(pilot, lambda: not banner.display, what="recovery")


async def test_no_socket_at_all_is_unreachable(tmp_path: Path) -> None:
    app = DctopApp(Client(str(tmp_path / "nothing.sock")), interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query("#banner")), what="the main screen")
        banner = app.query_one("#banner", Banner)
        await wait_for(pilot, lambda: banner.display, what="the banner")
        assert "no daemon socket" in str(banner.render())
        assert "the config's [daemon] socket" in str(banner.render())  # not eaten as markup


class ChangingSource(FixtureSource):
    """Fixture data where each poll changes: utilisation moves, a job ends, one arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.tick = 0

    def gpus(self) -> list[dict[str, object]]:
        gpus = super().gpus()
        for g in gpus:
            if g["util"] is not None:
                g["util"] = (float(g["util"]) + 7 * self.tick) % 100  # type: ignore[arg-type]
        return gpus

    def jobs(self, *, all_states: bool = False) -> list[dict[str, object]]:
        jobs = super().jobs(all_states=all_states)
        if self.tick:
            jobs = [j for j in jobs if j["id"] != 2]
            new = dict(jobs[0], id=100 + self.tick, state="PENDING", reasons=["Priority"])
            jobs.append(new)
        return jobs


async def test_refresh_updates_in_place_and_keeps_selection_and_sort() -> None:
    source = ChangingSource()
    app = DctopApp(source, interval=0, clock=lambda: NOW)
    async with app.run_test(size=(140, 20)) as pilot:
        await polled(pilot, app)
        await pilot.press("2")
        gpus = table(app, "gpus")
        gpus.sort_by("util")  # sorted by a column that changes every tick
        await select(pilot, app, "gpus", "sim-2/1")
        gpus.scroll_to(y=3, animate=False)
        await pilot.pause()
        scroll = gpus.scroll_y
        for _ in range(3):
            source.tick += 1
            await repoll(pilot, app)
            assert gpus.selected_key == "sim-2/1"
            assert gpus.scroll_y == scroll
            utils = [sort_key(gpus.rows[k][3].key) for k in gpus.order]
            assert utils == sorted(utils)
        await pilot.press("3")
        jobs = table(app, "jobs")
        await select(pilot, app, "jobs", "13")
        source.tick += 1
        await repoll(pilot, app)
        assert "2" not in jobs.rows and f"{100 + source.tick}" in jobs.rows
        assert jobs.selected_key == "13"


async def test_gpu_filter_and_header_sort(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await pilot.press("2", "slash", *"alice")
        await pilot.press("enter")
        gpus = table(app, "gpus")
        assert set(gpus.rows) == {"sim-2/0", "sim-2/1", "sim-2/2"}
        await pilot.press("escape")
        assert len(gpus.rows) == 12
        await pilot.press("slash", *"host=sim-3", "enter")
        assert {k.split("/")[0] for k in gpus.rows} == {"sim-3"}
        await pilot.press("escape")
        await pilot.click("#view-gpus-table", offset=(60, 0))  # the Power header
        await pilot.pause()
        assert gpus.sort_column is not None
        first = gpus.sort_column
        await pilot.press("s")
        assert gpus.sort_column != first


async def test_only_rows_in_view_are_drawn_and_a_changed_row_is_redrawn() -> None:
    source = ChangingSource()
    app = DctopApp(source, interval=0, clock=lambda: NOW)
    async with app.run_test(size=(140, 12)) as pilot:
        await polled(pilot, app)
        await pilot.press("2")
        gpus = table(app, "gpus")
        await pilot.pause()
        drawn = set(gpus._strips)
        assert drawn and len(drawn) < len(gpus.rows)  # 12 lines high: not every row
        source.tick += 1
        await repoll(pilot, app)
        first = gpus.order[0]
        assert gpus._strips[first][0] is gpus.rows[first]  # redrawn from the new cells
        gpus.scroll_end(animate=False)
        await pilot.pause(0.1)
        last = gpus.order[-1]
        assert gpus._strips[last][0] is gpus.rows[last]


async def test_command_palette_opens_views_jobs_and_nodes(fake: FakeDaemon) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await polled(pilot, app)
        await pilot.press("ctrl+p", *"View: Fair")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_view.id == "view-fairshare", what="fair-share")
        await pilot.press("ctrl+p", *"Node sim-2")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, NodeDetailScreen), what="node")
        await pilot.press("escape")
        await pilot.press("colon", *"bogus", "enter")
        assert any("unknown command" in n for n in notices(app))
