"""dctop: the whole cluster live in a terminal, and the queue you can act on.

The app polls the daemon's API once per interval in a thread worker (the UI never waits on
the network), posts each result as a message, and applies it to the visible view in place.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import Hit, Hits, Provider
from textual.widgets import Footer, Input, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from dcsched import __version__
from dcsched.client import ApiError, Client, ClientError, DaemonUnreachable
from dcsched.tui.data import Snapshot, Source, fetch_extras, fetch_snapshot, summary
from dcsched.tui.live import Feed, LiveSource, LiveState
from dcsched.tui.messages import (
    ActionDone,
    JobAction,
    NodeAction,
    OpenJob,
    OpenNode,
    PollFailed,
    SnapshotReady,
)
from dcsched.tui.prefs import Prefs, load_prefs, save_prefs
from dcsched.tui.screens import (
    ConfirmScreen,
    DetailScreen,
    DrainScreen,
    HelpScreen,
    JobDetailScreen,
    NodeDetailScreen,
)
from dcsched.tui.views import VIEWS, View
from dcsched.tui.widgets import Banner, Summary

THEMES = ("textual-dark", "textual-light")
ACTION_VERB = {
    "cancel": "Cancel",
    "hold": "Hold",
    "release": "Release",
    "drain": "Drain",
    "resume": "Resume",
}


class DctopCommands(Provider):
    """The command palette (ctrl+p): views, details of what is on screen, theme."""

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = self.app
        assert isinstance(app, DctopApp)
        out: list[tuple[str, Callable[[], object], str]] = [
            (f"View: {cls.title}", partial(app.action_view, name), f"key {i}")
            for i, (name, cls) in enumerate(VIEWS.items(), 1)
        ]
        out.append(("Theme: toggle light / dark", app.action_toggle_theme, "key t"))
        out.append(("Help: keys", app.action_help, "key ?"))
        out.append(("Command line", app.action_command_line, "key :"))
        out.append(("Quit", app.exit, "key q"))
        view = app.current_view
        out.append((f"{view.title}: filter", view.action_filter, "key /"))
        if view.filter.text:
            out.append((f"{view.title}: clear filter", view.action_clear_filter, "escape"))
        t = view.table
        labels = {col.key: col.label or col.key for col in view.columns}
        for key in t.shown:
            out.append((f"{view.title}: sort by {labels[key]}", partial(t.sort_by, key), "s / S"))
            if len(t.shown) > 1:
                out.append(
                    (
                        f"{view.title}: hide column {labels[key]}",
                        partial(app.hide_column, key),
                        "saved in " + str(app.prefs.path or ""),
                    )
                )
        for col in view.columns:
            if col.key not in t.shown:
                out.append(
                    (
                        f"{view.title}: show column {labels[col.key]}",
                        partial(app.show_column, col.key),
                        "saved in " + str(app.prefs.path or ""),
                    )
                )
        for binding in view.BINDINGS:
            if isinstance(binding, Binding) and binding.show and binding.action != "filter":
                target = view.table.selected_key
                if target is not None:
                    out.append(
                        (
                            f"{binding.description}: {target}",
                            partial(view.run_action, binding.action),
                            f"key {binding.key}",
                        )
                    )
        snap = app.snapshot
        if snap is not None:
            for j in snap.jobs:
                jid = str(j.get("id"))
                out.append(
                    (
                        f"Job {jid}: {j.get('name', '')} ({j.get('state')})",
                        partial(app.open_job, jid),
                        "open the job's detail",
                    )
                )
            for n in snap.nodes:
                host = str(n.get("host"))
                out.append(
                    (
                        f"Node {host} ({n.get('state')})",
                        partial(app.open_node, host),
                        "open the node's detail",
                    )
                )
        return out

    async def discover(self) -> Hits:
        for name, cb, help_text in self._commands()[: len(VIEWS) + 2]:
            yield Hit(1.0, name, cb, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, cb, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_text)


class DctopApp(App[None]):
    CSS_PATH = "dctop.tcss"
    TITLE = "dctop"
    COMMANDS = App.COMMANDS | {DctopCommands}
    BINDINGS = [
        Binding("1", "view('cluster')", "Cluster", show=False, id="view.cluster"),
        Binding("2", "view('gpus')", "GPUs", show=False, id="view.gpus"),
        Binding("3", "view('jobs')", "Jobs", show=False, id="view.jobs"),
        Binding("4", "view('fairshare')", "Fair-share", show=False, id="view.fairshare"),
        Binding("5", "view('history')", "History", show=False, id="view.history"),
        Binding("colon", "command_line", "Command", id="app.command_line"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("t", "toggle_theme", "Theme", show=False, id="app.theme"),
        Binding("q", "quit", "Quit", id="app.quit"),
    ]

    def __init__(
        self,
        source: Source,
        *,
        readonly: bool = False,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        theme: str = "textual-dark",
        target: str = "",
        tune_gc: bool = False,
        prefs: Prefs | None = None,
        start_filter: str = "",
    ) -> None:
        super().__init__()
        self.source = source
        self.readonly = readonly
        self.interval = interval
        self.clock = clock
        self.target = target
        self.snapshot: Snapshot | None = None
        self.polls = 0
        self._polling = False
        self._wanted_theme = theme
        self._tune_gc = tune_gc
        self.prefs = prefs if prefs is not None else Prefs()
        self.start_filter = start_filter
        # live mode: the event stream says what changed, reads fetch only that
        self.feed = Feed()
        self.state = LiveState()
        self.live = False  # the stream is up (else: every read a full one)
        self.live_error = ""  # why not (an older daemon: 404)
        self.changes_query = True  # without the stream: poll "changed since" (until refused)
        self._stream: Any = None
        self.sub_title = target + ("  [read-only]" if readonly else "")

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        banner = Banner("", id="banner")
        banner.display = False
        yield banner
        yield Summary("connecting…", id="summary")
        with TabbedContent(id="views", initial="cluster"):
            for name, cls in VIEWS.items():
                with TabPane(f"{list(VIEWS).index(name) + 1} {cls.title}", id=name):
                    yield cls(id=f"view-{name}")
        cmd = Input(
            placeholder=":cluster :gpus :jobs :fairshare :history :job ID :node HOST "
            ":theme light|dark :help :quit",
            id="command",
        )
        cmd.display = False
        yield cmd
        yield Footer()

    def on_mount(self) -> None:
        self.theme = self._wanted_theme
        for view in self.query(View):
            vp = self.prefs.view(view.name)
            if vp.columns:
                view.table.set_columns(vp.columns)
            if vp.sort in {col.key for col in view.columns}:
                view.table.sort_by(vp.sort, reverse=vp.reverse)
            if self.start_filter:
                view.set_filter(self.start_filter)
        if self.prefs.error:
            self.notify(self.prefs.error, title="dctop settings", severity="warning", markup=False)
        self.poll()
        if self.interval > 0:
            self.set_interval(self.interval, self.poll, name="poll")
            self._follow()
        self.current_view.focus_table()

    def on_unmount(self) -> None:
        if self._stream is not None:
            self._stream.close()

    # ------------------------------------------------------------ the event stream

    @work(thread=True, group="events", exit_on_error=False)
    def _follow(self) -> None:
        """Follows `GET /v1/events` for as long as dctop runs: each change marks what the
        next read must fetch. An older daemon (404) leaves dctop polling in full; a lost
        stream is reopened after a pause (the next read after it is a full one)."""
        events = getattr(self.source, "events", None)
        if events is None or not hasattr(self.source, "gpu_columns"):
            self.live_error = "this source has no event stream"
            return
        try:
            self._stream = stream = events()
            for ev in stream:
                if ev.kind == "hello":
                    self.feed.reset()  # what changed before the stream opened: read it all
                    self.live, self.live_error = True, ""
                else:
                    self.feed.on_event(ev.kind, ev.data)
        except ApiError as exc:
            self.live_error = f"GET /v1/events: {exc.code}: {exc}"
            self.live = False
            return
        except ClientError as exc:
            self.live_error = f"event stream lost: {exc}"
        self.live = False
        if self.is_running:
            self.call_from_thread(self.set_timer, 5.0, self._follow)

    @property
    def current_view(self) -> View:
        tabs = self.query_one("#views", TabbedContent)
        return self.query_one(f"#view-{tabs.active or 'cluster'}", View)

    # ------------------------------------------------------------ polling

    def poll(self) -> None:
        """One tick: start a fetch unless the last one is still out (a slow daemon
        gets one request at a time, not a pile-up)."""
        if self._polling:
            return
        self._polling = True
        active = self.query_one("#views", TabbedContent).active
        # GPU telemetry changes every second: read only while something shows it
        telemetry = active in ("cluster", "gpus", "jobs") or isinstance(
            self.screen, NodeDetailScreen
        )
        self._fetch(active == "history", active == "fairshare", telemetry)

    def _poll_changes(self, source: LiveSource) -> bool:
        """The fallback without the stream: True while the daemon answers the "changed
        since" query (then only what changed is read), False for one older than it."""
        if not hasattr(source, "jobs_changed_since") or not hasattr(source, "gpu_columns"):
            return False
        try:
            return self.state.poll_changes(source, self.feed)
        except ApiError as exc:
            if exc.status >= 500:  # the daemon's trouble, not a missing query: try again
                raise
            return False

    @property
    def read_mode(self) -> str:
        """How the last refreshes read: "stream", "changes" (polled), or "full"."""
        return "stream" if self.live else "changes" if self.changes_query else "full"

    @work(thread=True, group="poll", exit_on_error=False)
    def _fetch(self, finished: bool, fairshare: bool, telemetry: bool) -> None:
        try:
            source: LiveSource = self.source  # type: ignore[assignment]
            if not self.live and self.changes_query:
                self.changes_query = self._poll_changes(source)
            if self.live or self.changes_query:
                snap = self.state.read(source, self.feed, telemetry=telemetry, clock=self.clock)
                snap = fetch_extras(
                    self.source,
                    snap,
                    finished=finished,
                    fairshare=fairshare,
                    unavailable=(ApiError,),
                )
            else:
                snap = fetch_snapshot(
                    self.source,
                    finished=finished,
                    fairshare=fairshare,
                    clock=self.clock,
                    unavailable=(ApiError,),
                )
        except DaemonUnreachable as exc:
            self.post_message(PollFailed(str(exc), unreachable=True))
        except ClientError as exc:
            self.post_message(PollFailed(str(exc), unreachable=False))
        else:
            self.post_message(SnapshotReady(snap))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        if not self.query("#banner"):  # read before the main screen is composed: soon
            self.set_timer(0.01, partial(self.on_snapshot_ready, message))
            return
        self._polling = False
        prev = self.snapshot
        snap = message.snapshot
        # views not polled this tick keep what they had
        if snap.finished is None and prev is not None and prev.finished is not None:
            snap = replace(snap, finished=prev.finished)
        if snap.fairshare is None and not snap.fairshare_error and prev is not None:
            snap = replace(snap, fairshare=prev.fairshare, fairshare_error=prev.fairshare_error)
        self.snapshot = snap
        self.polls += 1
        if self.polls == 1 and self._tune_gc:
            # A refresh at 1,000 GPUs allocates ~10^5 short-lived containers (rich
            # segments, cells) that refcounting frees anyway; with the default thresholds
            # the cyclic collector runs full passes over the whole widget tree mid-refresh
            # (p90 twice the median, bench/tui.py). What exists now lives for the run.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 50, 1000)
        self.query_one("#banner", Banner).display = False
        self.query_one("#summary", Summary).show(summary(snap.cluster))
        self.current_view.refresh_from(snap)
        if isinstance(self.screen, NodeDetailScreen):
            self.screen.render_node()

    def on_poll_failed(self, message: PollFailed) -> None:
        banner = next(self.query("#banner").results(Banner), None)
        if banner is None:  # failed before the main screen was composed: soon
            self.set_timer(0.01, partial(self.on_poll_failed, message))
            return
        self._polling = False
        lead = "daemon unreachable — retrying" if message.unreachable else "daemon error"
        banner.show(f"{lead}: {message.error}")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a worker's unexpected error lands: shown, never a crash."""
        if event.state == WorkerState.ERROR:
            if event.worker.group == "poll":
                self._polling = False
            elif isinstance(self.screen, DetailScreen):
                self.screen._busy = False
            self.notify(
                f"{event.worker.error!r}",
                title="dctop internal error",
                severity="error",
                timeout=10,
            )

    # ------------------------------------------------------------ views and keys

    def action_view(self, name: str) -> None:
        while isinstance(self.screen, DetailScreen | HelpScreen):
            self.pop_screen()
        self.query_one("#views", TabbedContent).active = name

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        view = self.current_view
        if self.snapshot is not None:
            view.refresh_from(self.snapshot)
        view.focus_table()
        if view.id in ("view-history", "view-fairshare"):
            self.poll()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]

    def action_command_line(self) -> None:
        cmd = self.query_one("#command", Input)
        cmd.value = ""
        cmd.display = True
        cmd.focus()

    @on(Input.Submitted, "#command")
    def _command(self, event: Input.Submitted) -> None:
        event.stop()
        cmd = event.input
        cmd.display = False
        self.current_view.focus_table()
        self.run_command(event.value)

    def run_command(self, text: str) -> None:
        words = text.strip().lstrip(":").split()
        if not words:
            return
        head, args = words[0].lower(), words[1:]
        aliases = {
            "c": "cluster",
            "nodes": "cluster",
            "g": "gpus",
            "j": "jobs",
            "queue": "jobs",
            "fs": "fairshare",
            "fair-share": "fairshare",
            "h": "history",
        }
        head = aliases.get(head, head)
        if head in VIEWS and not args:
            self.action_view(head)
        elif head == "job" and args:
            self.open_job(args[0])
        elif head == "node" and args:
            self.open_node(args[0])
        elif head == "theme":
            self.theme = "textual-light" if args and args[0] == "light" else "textual-dark"
        elif head == "help":
            self.action_help()
        elif head == "filter":
            self.current_view.set_filter(" ".join(args))
        elif head in ("columns", "cols"):
            self.set_columns(args)
        elif head == "sort" and args:
            self.sort(args[0], reverse=args[1:] in (["desc"], ["reverse"]))
        elif head in ("q", "quit", "exit"):
            self.exit()
        else:
            self.notify(f"unknown command {text!r}; ? lists them", severity="warning")

    # ------------------------------------------------------------ columns and sort

    def set_columns(self, keys: list[str]) -> None:
        """`:columns KEY...` shows these columns of the current view in this order (no
        keys: the defaults) and saves the choice."""
        view = self.current_view
        known = [col.key for col in view.columns]
        wrong = [k for k in keys if k not in known]
        if wrong:
            self.notify(
                f"no column {', '.join(wrong)} in {view.title}; columns: {' '.join(known)}",
                severity="warning",
                markup=False,
            )
            return
        view.table.set_columns(keys or known)
        self.prefs.view(view.name).columns = list(keys)
        self._save_prefs()

    def hide_column(self, key: str) -> None:
        self.set_columns([k for k in self.current_view.table.shown if k != key])

    def show_column(self, key: str) -> None:
        self.set_columns([*self.current_view.table.shown, key])

    def sort(self, key: str, *, reverse: bool) -> None:
        view = self.current_view
        if key not in {col.key for col in view.columns}:
            known = " ".join(col.key for col in view.columns)
            self.notify(f"no column {key} in {view.title}; columns: {known}", severity="warning")
            return
        view.table.sort_by(key, reverse=reverse)
        vp = self.prefs.view(view.name)
        vp.sort, vp.reverse = key, reverse
        self._save_prefs()

    def _save_prefs(self) -> None:
        if error := save_prefs(self.prefs):
            self.notify(error, title="dctop settings", severity="warning", markup=False)

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape":
            cmd = self.query_one("#command", Input)
            if cmd.display:
                cmd.display = False
                self.current_view.focus_table()

    # ------------------------------------------------------------ details

    def open_job(self, job_id: str) -> None:
        self.push_screen(JobDetailScreen(self.source, job_id, self.interval))

    def open_node(self, host: str) -> None:
        self.push_screen(NodeDetailScreen(self.source, host, self.interval))

    def on_open_job(self, message: OpenJob) -> None:
        self.open_job(message.job_id)

    def on_open_node(self, message: OpenNode) -> None:
        self.open_node(message.host)

    # ------------------------------------------------------------ actions

    def _refuse_readonly(self) -> bool:
        if self.readonly:
            self.notify(
                "dctop runs read-only (--readonly): actions are off",
                title="read-only",
                severity="warning",
            )
        return self.readonly

    def on_job_action(self, message: JobAction) -> None:
        if self._refuse_readonly():
            return
        job_id, action = message.job_id, message.action

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(
                    partial(self.source.job_action, job_id, action), f"job {job_id}: {action} sent"
                )

        self.push_screen(ConfirmScreen(f"{ACTION_VERB[action]} job {job_id}?"), answered)

    def on_node_action(self, message: NodeAction) -> None:
        if self._refuse_readonly():
            return
        host, action = message.host, message.action
        if action == "drain":

            def drained(reason: str | None) -> None:
                if reason is not None:
                    self._act(
                        partial(self.source.node_action, host, "drain", reason), f"{host}: drained"
                    )

            self.push_screen(DrainScreen(host), drained)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(partial(self.source.node_action, host, action), f"{host}: {action}d")

        self.push_screen(ConfirmScreen(f"{ACTION_VERB[action]} node {host}?"), answered)

    @work(thread=True, group="action", exit_on_error=False)
    def _act(self, call: Callable[[], object], done: str) -> None:
        try:
            call()
        except ApiError as exc:
            self.post_message(ActionDone(False, exc.message, exc.code))
        except ClientError as exc:
            self.post_message(ActionDone(False, str(exc), "unreachable"))
        else:
            self.post_message(ActionDone(True, done))

    def on_action_done(self, message: ActionDone) -> None:
        if message.ok:
            self.notify(message.text, title="done")
        else:
            title = {"permission_denied": "permission denied"}.get(message.code, message.code)
            self.notify(message.text, title=title, severity="error", timeout=8, markup=False)
        self.poll()
        if isinstance(self.screen, DetailScreen):
            self.screen.poll()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dctop", description="The dcsched cluster live in a terminal: GPUs, jobs, queue."
    )
    from dcsched.protocol.config import add_connection_args

    add_connection_args(p)
    p.add_argument(
        "--readonly",
        action="store_true",
        help="look only: cancel, hold, release, drain and resume are off",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (1)")
    p.add_argument("--theme", choices=("dark", "light"), default="dark")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--filter",
        default="",
        help="start with this filter in every view, as `/` takes it "
        "(e.g. 'user=alice state=running'); a key= a view has no column for is skipped there",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from dcsched.client import read_token
    from dcsched.protocol.config import ConfigError, api_target

    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        print("dctop: --interval must be > 0", file=sys.stderr)
        return 2
    try:
        t = api_target(args.socket, args.server, args.ca_file, args.config)
        token = read_token(t.token_file) if t.servers else None
    except (ConfigError, ClientError) as exc:
        print(f"dctop: {exc}", file=sys.stderr)
        return 2
    path = ",".join(t.servers) or t.socket
    app = DctopApp(
        Client(t.socket, 10.0, servers=t.servers, token=token or "", ca_file=t.ca_file),
        readonly=args.readonly,
        interval=args.interval,
        theme=f"textual-{args.theme}",
        target=path,
        tune_gc=True,
        prefs=load_prefs(),
        start_filter=args.filter,
    )
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
