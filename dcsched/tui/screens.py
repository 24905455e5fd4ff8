"""Pushed screens: job and node detail (each with its own poll), confirmations, help."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Static

from dcsched.client import ApiError, ClientError, DaemonUnreachable
from dcsched.tui import data
from dcsched.tui.data import JobDetail, NodeDetail, Source
from dcsched.tui.messages import (
    DetailFailed,
    JobAction,
    JobDetailReady,
    NodeAction,
    NodeDetailReady,
    OpenNode,
)

if TYPE_CHECKING:
    from dcsched.tui.app import DctopApp

SPARK_WIDTH = 60
LOG_LINES = 20


def _titled_table(title: str, columns: tuple[str, ...]) -> Table:
    """A borderless table with an underlined title, as the detail screens show them."""
    t = Table(
        box=None, padding=(0, 1), title=title, title_justify="left", title_style="bold underline"
    )
    for col in columns:
        t.add_column(col)
    return t


def _kv(rows: list[tuple[str, Any]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v if isinstance(v, Text) else Text(str(v)))
    return t


class DetailScreen(Screen[None]):
    """A detail screen polls its own extra data (history, logs, explain) in a worker."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="detail.back"),
        Binding("q", "app.pop_screen", "Back", show=False, id="detail.back_q"),
    ]

    def __init__(self, source: Source, interval: float) -> None:
        super().__init__()
        self.source = source
        self.interval = interval
        self._busy = False

    @property
    def dctop(self) -> DctopApp:
        return self.app  # type: ignore[return-value]

    def on_mount(self) -> None:
        self.poll()
        if self.interval > 0:
            self.set_interval(self.interval, self.poll)

    def on_resize(self, event: events.Resize) -> None:
        # side-by-side panels stack on a narrow terminal instead of clipping
        self.set_class(event.size.width < 100, "narrow")

    def poll(self) -> None:
        if not self._busy:
            self._busy = True
            self.run_worker(self.fetch, thread=True, group="detail", exit_on_error=False)

    def fetch(self) -> None:
        raise NotImplementedError

    def on_detail_failed(self, message: DetailFailed) -> None:
        self._busy = False
        self.query_one("#detail-error", Static).update(Text(message.error, style="bold red1"))


class JobDetailScreen(DetailScreen):
    BINDINGS = [
        Binding("c", "act('cancel')", "Cancel", id="job.cancel"),
        Binding("h", "act('hold')", "Hold", id="job.hold"),
        Binding("r", "act('release')", "Release", id="job.release"),
        Binding("n", "next_node", "Next node log", id="job.next_node"),
    ]

    def __init__(self, source: Source, job_id: str, interval: float) -> None:
        super().__init__(source, interval)
        self.job_id = job_id
        self.log_node = 0
        self.detail: JobDetail | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="job-detail"):
            yield Static(f"Job {self.job_id}", id="job-title", classes="title")
            yield Static("", id="detail-error")
            with Horizontal(classes="pair"):
                yield Static("loading…", id="job-info", classes="box")
                yield Static("", id="job-priority", classes="box")
            yield Static("", id="job-alloc", classes="box")
            yield Static("", id="job-procs", classes="box")
            yield Static("", id="job-log", classes="box")
        yield Footer()

    def fetch(self) -> None:
        try:
            job = self.source.job(self.job_id)
            detail = JobDetail(job=job)
            if job.get("state") in data.QUEUED:  # only a queued job's priority means anything
                try:
                    detail.explain = self.source.explain(self.job_id)
                except ApiError as exc:
                    detail.explain_error = f"{exc.code}: {exc.message}"
            for host in dict.fromkeys(p.get("host") for p in job.get("node_parts") or []):
                if host:
                    with contextlib.suppress(ApiError):
                        detail.histories[str(host)] = self.source.node_history(str(host))
            efficiency = getattr(self.source, "efficiency", None)
            if efficiency is not None and job.get("start_ts") is not None:
                # GPU-hours and energy so far: optional (an older daemon has no such
                # endpoint, and may answer its 404 in plain text), only unreachable counts
                try:
                    detail.efficiency = efficiency(self.job_id)
                except DaemonUnreachable:
                    raise
                except ClientError:
                    pass
            if job.get("node_parts"):
                try:
                    detail.log = self.source.logs(
                        self.job_id, node=self.log_node, offset=-1, max_bytes=16384
                    )
                except ApiError as exc:
                    detail.log_error = exc.message
            self.post_message(JobDetailReady(detail))
        except ClientError as exc:
            self.post_message(DetailFailed(str(exc)))

    def on_job_detail_ready(self, message: JobDetailReady) -> None:
        self._busy = False
        self.detail = d = message.detail
        j = d.job
        now = self.dctop.clock()
        self.query_one("#detail-error", Static).update("")
        state = str(j.get("state", ""))
        self.query_one("#job-title", Static).update(
            Text.assemble(
                (f"Job {data.job_label(j)}  {j.get('name', '')}  ", "bold"),
                (state, data.STATE_STYLE.get(state, "")),
                ("   IDLE GPUs" if data.job_flagged_idle(j) else "", "bold red1"),
            )
        )
        info: list[tuple[str, Any]] = [
            ("User", f"{j.get('user')} (account {j.get('account')}, qos {j.get('qos')})"),
            (
                "Resources",
                f"{j.get('nodes')} node(s) x {j.get('gpus_per_node')} GPU(s)"
                + (f" {j['gpu_type']}" if j.get("gpu_type") else ""),
            ),
            (
                "Elapsed / limit",
                f"{data.duration(j.get('elapsed_s')) or '-'} / "
                f"{data.duration(j.get('time_limit_s'))}",
            ),
            ("Submitted", data.relative(j.get("submit_ts"), now)),
        ]
        if j.get("array_job_id") is not None:
            info.append(("Array", f"task {j.get('array_task_id')} of array {j['array_job_id']}"))
        if j.get("gpu_util") is not None:
            info.append(
                ("GPU util", Text(data.pct(j["gpu_util"]), style=data.util_style(j["gpu_util"])))
            )
        eff = d.efficiency or {}
        if eff.get("gpu_hours") is not None:
            energy = eff.get("energy_kwh")
            info.append(
                (
                    "GPU-hours",
                    f"{eff['gpu_hours']:,.2f}"
                    + (f", energy {energy:,.2f} kWh" if energy is not None else "")
                    + (
                        f", mean util {data.pct(eff.get('mean_util'))}"
                        if eff.get("mean_util") is not None
                        else ""
                    ),
                )
            )
        if j.get("idle_s") is not None:
            info.append(
                (
                    "Idle",
                    Text(
                        f"its GPUs idle for {data.duration(j['idle_s'])} "
                        "(flagged by the daemon's idle check)",
                        style="bold red1",
                    ),
                )
            )
        if j.get("exit_code") is not None or j.get("signal"):
            info.append(("Exit", data.exit_text(j.get("exit_code"), j.get("signal"))))
        if j.get("reason"):
            info.append(("Reason", str(j["reason"])))
        cmd = (j.get("spec") or {}).get("command")
        if cmd:
            info.append(("Command", " ".join(str(x) for x in cmd)))
        self.query_one("#job-info", Static).update(
            Group(Text("Job", style="bold underline"), _kv(info))
        )
        self.query_one("#job-priority", Static).update(self._priority(d, now))
        self.query_one("#job-alloc", Static).update(self._alloc(d))
        procs = self.query_one("#job-procs", Static)
        procs.display = bool(j.get("node_parts")) and j.get("state") in data.ACTIVE
        if procs.display:
            procs.update(self._procs(d))
        self.query_one("#job-log", Static).update(self._log(d))

    def _procs(self, d: JobDetail) -> RenderableType:
        rows, nodes = data.job_procs(d.job.get("id"), d.histories)
        t = _titled_table("Processes on every node", data.JOB_PROC_HEADER)
        t.columns[-1].overflow = "ellipsis"
        t.columns[-1].no_wrap = True
        for row in rows:
            t.add_row(*row)
        per_node = _titled_table(
            "CPU and host memory per node", ("host", "processes", "CPU", "memory")
        )
        for n in nodes:
            per_node.add_row(*n)
        if not rows and not nodes:
            return Group(
                Text("Processes", style="bold underline"), Text("none reported yet", style="dim")
            )
        return Group(t, per_node)

    def _priority(self, d: JobDetail, now: float) -> RenderableType:
        parts: list[RenderableType] = [Text("Priority", style="bold underline")]
        state = str(d.job.get("state", ""))
        if state not in data.QUEUED:
            parts.append(Text(f"not ranked: the job is {state} (priority orders the queue)"))
            return Group(*parts)
        ex = d.explain
        if ex is not None:
            t = Table(box=None, padding=(0, 1), show_edge=False)
            for col in ("factor", "value", "weight", "contribution"):
                t.add_column(col, justify="left" if col == "factor" else "right")
            for f in ex.get("factors") or []:
                t.add_row(
                    str(f.get("name")),
                    _num(f.get("value"), ".3f"),
                    _num(f.get("weight"), ",.0f"),
                    _num(f.get("contribution"), ",.1f"),
                )
            parts.append(Text(f"priority {_num(ex.get('priority'), ',.1f')}"))
            parts.append(t)
            reasons = ex.get("reasons") or []
            if reasons:
                parts.append(
                    Text("waiting: " + ", ".join(str(r) for r in reasons), style="yellow3")
                )
            if ex.get("est_start"):
                parts.append(Text(f"estimated start {data.relative(ex['est_start'], now)}"))
        else:
            j = d.job
            if j.get("priority") is not None:
                parts.append(Text(f"priority {_num(j.get('priority'), ',.1f')}"))
            reasons = j.get("reasons") or []
            if reasons:
                parts.append(
                    Text("waiting: " + ", ".join(str(r) for r in reasons), style="yellow3")
                )
            if j.get("est_start"):
                parts.append(Text(f"estimated start {data.relative(j['est_start'], now)}"))
            parts.append(
                Text(f"breakdown not available ({d.explain_error or 'no answer'})", style="dim")
            )
        return Group(*parts)

    def _alloc(self, d: JobDetail) -> RenderableType:
        parts = d.job.get("node_parts") or []
        if not parts:
            return Text("Allocation: none yet (the job has not started)", style="dim")
        t = _titled_table(
            "Allocation and GPU utilisation history",
            ("rank", "host", "GPU", "state", "pid", "util", "history"),
        )
        for p in parts:
            host = str(p.get("host"))
            hist = d.histories.get(host)
            for i, gpu in enumerate(p.get("gpus") or []):
                series = data.gpu_series(hist, gpu, "util")
                last = series[-1] if series else None
                t.add_row(
                    str(p.get("node_rank")) if i == 0 else "",
                    host if i == 0 else "",
                    str(gpu),
                    str(p.get("state", "")) if i == 0 else "",
                    str(p.get("pid") or "") if i == 0 else "",
                    Text(data.pct(last), style=data.util_style(last)),
                    Text(data.sparkline(series, 0, 100, SPARK_WIDTH), style=data.util_style(last)),
                )
        return t

    def _log(self, d: JobDetail) -> RenderableType:
        head = Text(f"Log (node {self.log_node}, n: next node)", style="bold underline")
        if d.log_error:
            return Group(head, Text(d.log_error, style="dim"))
        if d.log is None:
            return Group(head, Text("no log yet", style="dim"))
        tail = data.log_tail(str(d.log.get("data", "")), LOG_LINES)
        return Group(
            head, Text(f"{d.log.get('host')}  {d.log.get('size')} bytes", style="dim"), Text(tail)
        )

    def action_act(self, action: str) -> None:
        label = data.job_label(self.detail.job) if self.detail is not None else self.job_id
        self.post_message(JobAction(label, action))

    def action_next_node(self) -> None:
        n = len((self.detail.job.get("node_parts") if self.detail else None) or []) or 1
        self.log_node = (self.log_node + 1) % n
        self.poll()


def _num(v: Any, fmt: str) -> str:
    return "N/A" if not isinstance(v, int | float) else format(v, fmt)


class NodeDetailScreen(DetailScreen):
    BINDINGS = [
        Binding("d", "act('drain')", "Drain", id="node.drain"),
        Binding("u", "act('resume')", "Resume", id="node.resume"),
    ]

    def __init__(self, source: Source, host: str, interval: float) -> None:
        super().__init__(source, interval)
        self.host = host
        self.detail: NodeDetail | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="node-detail"):
            yield Static(f"Node {self.host}", id="node-title", classes="title")
            yield Static("", id="detail-error")
            yield Static("loading…", id="node-info", classes="box")
            yield Static("", id="node-gpus", classes="box")
            yield Static("", id="node-procs", classes="box")
        yield Footer()

    def fetch(self) -> None:
        d = NodeDetail(self.host)
        try:
            d.history = self.source.node_history(self.host)
        except ApiError as exc:
            d.history_error = exc.message
        except ClientError as exc:
            self.post_message(DetailFailed(str(exc)))
            return
        self.post_message(NodeDetailReady(d))

    def on_node_detail_ready(self, message: NodeDetailReady) -> None:
        self._busy = False
        self.detail = message.detail
        self.query_one("#detail-error", Static).update("")
        self.render_node()

    def render_node(self) -> None:
        snap = self.dctop.snapshot
        node = next((n for n in snap.nodes if n.get("host") == self.host), {}) if snap else {}
        gpus = data.host_gpus(snap.gpus, self.host) if snap else []
        gpus.sort(key=lambda g: int(g.get("index") or 0))
        state = str(node.get("state", "?"))
        self.query_one("#node-title", Static).update(
            Text.assemble((f"Node {self.host}  ", "bold"), (state, data.STATE_STYLE.get(state, "")))
        )
        info = [
            (
                "State",
                f"{state}" + (f" ({node['drain_reason']})" if node.get("drain_reason") else ""),
            ),
            (
                "GPUs",
                f"{node.get('gpus_allocated', 0)}/{node.get('gpus', 0)} allocated, "
                f"{node.get('model', '')}" + (" (simulated)" if node.get("simulated") else ""),
            ),
            (
                "Agent",
                f"{node.get('agent_version', '')} backend {node.get('backend', '')} "
                f"driver {node.get('driver', '')} at {node.get('addr', '')}",
            ),
            ("Jobs", ", ".join(str(j) for j in node.get("jobs") or []) or "none"),
            (
                "Mean util",
                Text(data.pct(node.get("mean_util")), style=data.util_style(node.get("mean_util"))),
            ),
        ]
        self.query_one("#node-info", Static).update(_kv(info))
        hist = self.detail.history if self.detail else None
        t = _titled_table(
            "GPUs: now, and history (last 300 samples)",
            ("GPU", "metric", "now", "history", "job", "user", "pids"),
        )
        for g in gpus:
            idx = g.get("index")
            mem_total = float(g.get("mem_total") or 1)
            metrics = [
                ("util", data.pct(g.get("util")), "util", 0.0, 100.0),
                (
                    "memory",
                    data.memory(g.get("mem_used"), g.get("mem_total")),
                    "mem_used",
                    0.0,
                    mem_total,
                ),
                ("power", data.watts(g.get("power_w")), "power_w", 0.0, 1000.0),
                ("temp", data.celsius(g.get("temp_c")), "temp_c", 0.0, 100.0),
            ]
            for i, (name, now, key, lo, hi) in enumerate(metrics):
                series = data.gpu_series(hist, idx if idx is not None else -1, key)
                style = data.util_style(g.get("util")) if key == "util" else "cyan"
                t.add_row(
                    str(idx) if i == 0 else "",
                    name,
                    now,
                    Text(data.sparkline(series, lo, hi, SPARK_WIDTH), style=style),
                    str(g.get("job_id") or "") if i == 0 else "",
                    str(g.get("user") or "") if i == 0 else "",
                    " ".join(str(p) for p in g.get("pids") or []) if i == 0 else "",
                    end_section=i == len(metrics) - 1,
                )
        if self.detail and self.detail.history_error:
            self.query_one("#node-gpus", Static).update(
                Group(t, Text(f"history: {self.detail.history_error}", style="dim"))
            )
        else:
            self.query_one("#node-gpus", Static).update(t)
        procs = _titled_table(
            "Processes (per job: CPU and host memory over its processes)", data.PROC_HEADER
        )
        procs.columns[-1].overflow = "ellipsis"
        procs.columns[-1].no_wrap = True
        rows = data.node_procs(hist)
        for row in rows:
            procs.add_row(*row)
        self.query_one("#node-procs", Static).update(
            procs
            if rows
            else Group(
                Text("Processes", style="bold underline"), Text("no GPU processes", style="dim")
            )
        )

    def action_act(self, action: str) -> None:
        self.post_message(NodeAction(self.host, action))

    def on_open_node(self, message: OpenNode) -> None:
        message.stop()


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no before anything destructive; y / enter confirm, n / escape refuse."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n", "answer(False)", "No", id="confirm.no"),
        Binding("escape", "answer(False)", "No", show=False, id="confirm.escape"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(self.question, id="confirm-question")
            yield Button("Yes (y)", variant="error", id="yes")
            yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class DrainScreen(ModalScreen[str | None]):
    """Drain asks why (the reason shows in `dcctl nodes` and the cluster view)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="drain.cancel")]

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def compose(self) -> ComposeResult:
        with Vertical(id="drain"):
            yield Label(f"Drain {self.host}? Running jobs finish; nothing new starts there.")
            yield Input(placeholder="reason (enter drains, escape cancels)", id="drain-reason")
            with Horizontal(id="drain-buttons"):
                yield Button("Drain", variant="error", id="yes")
                yield Button("Cancel", variant="primary", id="no")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "yes":
            self.dismiss(self.query_one("#drain-reason", Input).value)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


HELP = """\
[b]dctop[/b]: the cluster live, and the queue you can act on.

[b]Views[/b]
  1 Cluster     a row per node, a cell per GPU: ● allocated ○ free
                ! allocated but idle ✗ unhealthy; colour = util
  2 GPUs        every GPU
  3 Jobs        running and waiting jobs, util and memory trends;
                IDLE GPUs: a running job doing nothing
  4 Fair-share  accounts and users: shares, usage, factor
  5 History     finished jobs

[b]In every view[/b]
  /             filter: text, or user= account= state= host= name=
                job= ...; escape clears (dctop --filter sets one)
  s / S         sort by the next column / reverse; or click a header
  enter         the selected node or job (GPUs view: j, the job)
  escape        back

[b]Actions[/b] (each asks first; all off with --readonly)
  c / h / r     cancel, hold, release the selected job
  d / u         drain, resume the selected node

[b]Commands[/b] (: opens the command line)
  cluster gpus jobs fairshare history   job ID   node HOST
  filter TEXT   sort KEY [desc]   columns KEY...   (saved)
  theme dark|light   help   quit

[b]Elsewhere[/b]
  ctrl+p        command palette: every action
  t             light / dark theme
  ?             this help
  q             quit
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Close", id="help.close"),
        Binding("question_mark", "app.pop_screen", "Close", show=False, id="help.close_q"),
        Binding("q", "app.pop_screen", "Close", show=False, id="help.close_qq"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP, id="help-text")
