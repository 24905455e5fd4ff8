"""The five main views; each turns a Snapshot into its table's rows (data.py) and asks
the app, by message, to open details or to act."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from dcsched.tui import data
from dcsched.tui.data import Snapshot
from dcsched.tui.messages import JobAction, NodeAction, OpenJob, OpenNode
from dcsched.tui.widgets import LiveTable


class View(Vertical):
    """One tab's content: a live table plus, for some views, a note."""

    title = ""
    columns: list[data.Column] = []

    def compose(self) -> ComposeResult:
        yield LiveTable(self.columns, id=f"{self.id}-table")

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def refresh_from(self, snap: Snapshot) -> None:
        raise NotImplementedError

    def focus_table(self) -> None:
        self.table.focus()


class ClusterView(View):
    title = "Cluster"
    columns = data.CLUSTER_COLUMNS
    BINDINGS = [
        Binding("enter", "open", "Node detail", id="node.open"),
        Binding("d", "node('drain')", "Drain", id="node.drain"),
        Binding("u", "node('resume')", "Resume", id="node.resume"),
    ]

    def refresh_from(self, snap: Snapshot) -> None:
        self.table.sync(data.cluster_rows(snap.nodes, snap.gpus))

    def action_open(self) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(OpenNode(k))

    def action_node(self, action: str) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(NodeAction(k, action))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(OpenNode(event.row_key.value))


class GpusView(View):
    title = "GPUs"
    columns = data.GPU_COLUMNS
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="gpus.filter"),
        Binding("enter", "open", "Node detail", id="gpus.open_node"),
        Binding("j", "open_job", "Job detail", id="gpus.open_job"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="gpus.clear_filter"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.needle = ""
        self._last: Snapshot | None = None
        self._by_key: dict[str, data.JSON] = {}

    def compose(self) -> ComposeResult:
        inp = Input(placeholder="filter: text, or host= model= job= user= state=", id="gpus-filter")
        inp.display = False
        yield inp
        yield Static("", id="gpus-filter-note")
        yield from super().compose()

    def refresh_from(self, snap: Snapshot) -> None:
        self._last = snap
        gpus = [g for g in snap.gpus if data.gpu_matches(g, self.needle)]
        self._by_key = {data.gpu_key(g): g for g in gpus}
        self.table.sync(data.gpu_rows(gpus))
        note = self.query_one("#gpus-filter-note", Static)
        note.display = bool(self.needle)
        if self.needle:
            note.update(
                f"filter: {self.needle}  ({len(gpus)} of {len(snap.gpus)} GPUs; esc clears)"
            )

    def action_filter(self) -> None:
        inp = self.query_one("#gpus-filter", Input)
        inp.display = True
        inp.value = self.needle
        inp.focus()

    def action_clear_filter(self) -> None:
        self._set_filter("")

    def _set_filter(self, needle: str) -> None:
        self.needle = needle.strip()
        inp = self.query_one("#gpus-filter", Input)
        inp.display = False
        self.table.focus()
        if self._last is not None:
            self.refresh_from(self._last)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._set_filter(event.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._last is not None and event.input.display:
            self.needle = event.value.strip()
            self.refresh_from(self._last)

    def _selected(self) -> data.JSON | None:
        k = self.table.selected_key
        return None if k is None else self._by_key.get(k)

    def action_open(self) -> None:
        if (g := self._selected()) is not None:
            self.post_message(OpenNode(str(g.get("host"))))

    def action_open_job(self) -> None:
        g = self._selected()
        if g is not None and g.get("job_id") is not None:
            self.post_message(OpenJob(str(g["job_id"])))
        else:
            self.notify("no job on this GPU", severity="warning")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()


class JobsView(View):
    title = "Jobs"
    columns = data.JOB_COLUMNS
    BINDINGS = [
        Binding("enter", "open", "Job detail", id="job.open"),
        Binding("c", "job('cancel')", "Cancel", id="job.cancel"),
        Binding("h", "job('hold')", "Hold", id="job.hold"),
        Binding("r", "job('release')", "Release", id="job.release"),
    ]

    def refresh_from(self, snap: Snapshot) -> None:
        self.table.sync(data.job_rows(snap.jobs, snap.now))

    def action_open(self) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(OpenJob(k))

    def action_job(self, action: str) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(JobAction(k, action))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(OpenJob(event.row_key.value))


class FairshareView(View):
    title = "Fair-share"
    columns = data.FAIRSHARE_COLUMNS

    def compose(self) -> ComposeResult:
        yield Static("", id="fairshare-note")
        yield from super().compose()

    def refresh_from(self, snap: Snapshot) -> None:
        note = self.query_one("#fairshare-note", Static)
        if snap.fairshare is None:
            note.display = True
            why = snap.fairshare_error or "not fetched yet"
            note.update(f"Fair-share is not available from this daemon: {why}")
            self.table.sync({})
            return
        note.display = False
        self.table.sync(data.fairshare_rows(snap.fairshare))


class HistoryView(View):
    title = "History"
    columns = data.HISTORY_COLUMNS
    BINDINGS = [Binding("enter", "open", "Job detail", id="history.open")]

    def refresh_from(self, snap: Snapshot) -> None:
        if snap.finished is not None:
            self.table.sync(data.history_rows(snap.finished, snap.now))

    def action_open(self) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(OpenJob(k))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(OpenJob(event.row_key.value))


VIEWS: dict[str, type[View]] = {
    "cluster": ClusterView,
    "gpus": GpusView,
    "jobs": JobsView,
    "fairshare": FairshareView,
    "history": HistoryView,
}
