"""The five main views; each turns a Snapshot into its table's rows (data.py), filters them
(`/`, data.RowFilter) and asks the app, by message, to open details or to act."""

from __future__ import annotations

from collections.abc import Mapping

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Static

from dcsched.tui import data
from dcsched.tui.data import Rows, Snapshot
from dcsched.tui.jobrows import JobRowCache, JobRows
from dcsched.tui.messages import JobAction, NodeAction, OpenJob, OpenNode
from dcsched.tui.table import LiveTable


class View(Vertical):
    """One tab's content: a filter line (hidden until `/`), a note, a live table."""

    name = ""
    title = ""
    columns: list[data.Column] = []
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="view.filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="view.clear_filter"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.filter = data.RowFilter()
        self._last: Snapshot | None = None
        self._memo: dict[str, tuple[object, data.Row]] = {}  # LazyRows' built rows
        self._note = ""

    def compose(self) -> ComposeResult:
        inp = Input(
            placeholder="filter: text, or user= account= state= host= name= (enter keeps)",
            id=f"{self.name}-filter",
            classes="filter",
        )
        inp.display = False
        yield inp
        yield Static("", id=f"{self.name}-note", classes="note")
        yield LiveTable(self.columns, id=f"{self.id}-table")

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def rows(self, snap: Snapshot) -> Rows | None:
        """This view's rows of a snapshot (None: nothing fetched for it yet)."""
        raise NotImplementedError

    def refresh_from(self, snap: Snapshot) -> None:
        self._last = snap
        rows = self.rows(snap)
        if rows is None:
            return
        shown, ignored = self.filter.apply(rows, self.columns)
        self.table.sync(shown)
        self.show_note(len(shown), len(rows), ignored)

    def show_note(self, shown: int, total: int, ignored: list[str]) -> None:
        note = self.query_one(f"#{self.name}-note", Static)
        if note.display != bool(self.filter.text):
            note.display = bool(self.filter.text)
        if self.filter.text:
            skip = f"; no {', '.join(k + '=' for k in ignored)} here" if ignored else ""
            text = f"filter: {self.filter.text}  ({shown} of {total}{skip}; esc clears)"
            if text != self._note:  # an update lays the screen out again: only on a change
                self._note = text
                note.update(text)

    def focus_table(self) -> None:
        self.table.focus()

    def action_filter(self) -> None:
        inp = self.query_one(f"#{self.name}-filter", Input)
        inp.display = True
        inp.value = self.filter.text
        inp.focus()

    def action_clear_filter(self) -> None:
        self.set_filter("")

    def set_filter(self, text: str) -> None:
        self.filter = data.RowFilter(text.strip())
        self.query_one(f"#{self.name}-filter", Input).display = False
        self.table.focus()
        if self._last is not None:
            self.refresh_from(self._last)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.set_filter(event.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._last is not None and event.input.display:
            self.filter = data.RowFilter(event.value.strip())
            self.refresh_from(self._last)


class ClusterView(View):
    name = "cluster"
    title = "Cluster"
    columns = data.CLUSTER_COLUMNS
    BINDINGS = [
        Binding("enter", "open", "Node detail", id="node.open"),
        Binding("d", "node('drain')", "Drain", id="node.drain"),
        Binding("u", "node('resume')", "Resume", id="node.resume"),
    ]

    def rows(self, snap: Snapshot) -> Rows:
        items = data.cluster_items(snap.nodes, snap.gpus)
        return data.LazyRows(items, data.cluster_row, self._memo)

    def action_open(self) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(OpenNode(k))

    def action_node(self, action: str) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(NodeAction(k, action))

    def on_live_table_row_selected(self, event: LiveTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenNode(event.key))


class GpusView(View):
    name = "gpus"
    title = "GPUs"
    columns = data.GPU_COLUMNS
    BINDINGS = [
        Binding("enter", "open", "Node detail", id="gpus.open_node"),
        Binding("j", "open_job", "Job detail", id="gpus.open_job"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._by_key: Mapping[str, data.JSON] = {}

    def rows(self, snap: Snapshot) -> Rows:
        self._by_key = data.gpus_by_key(snap.gpus)
        return data.LazyRows(self._by_key, data.gpu_row, self._memo)

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

    def on_live_table_row_selected(self, event: LiveTable.RowSelected) -> None:
        event.stop()
        self.action_open()


class JobsView(View):
    name = "jobs"
    title = "Jobs"
    columns = data.JOB_COLUMNS
    BINDINGS = [
        Binding("enter", "open", "Job detail", id="job.open"),
        Binding("c", "job('cancel')", "Cancel", id="job.cancel"),
        Binding("h", "job('hold')", "Hold", id="job.hold"),
        Binding("r", "job('release')", "Release", id="job.release"),
    ]

    def on_mount(self) -> None:
        self._order = data.JobOrder()
        self._cache = JobRowCache()
        # the jobs in display order, kept (the same dict) while no job changed, so that
        # the table's and the sort's caches see "nothing changed" at a glance
        self._items: tuple[int | None, dict[str, data.JSON]] = (None, {})

    def rows(self, snap: Snapshot) -> Rows:
        if snap.jobs_by_id is None:  # every read a full one: sort them all
            by_id = {str(j.get("id")): j for j in snap.jobs}
            items = {str(j.get("id")): j for j in data.job_order(by_id.values())}
        elif snap.jobs_version is not None and self._items[0] == snap.jobs_version:
            items = self._items[1]
        else:
            order = self._order.update(snap.jobs_by_id, snap.jobs_version, snap.jobs_changed)
            items = {k: snap.jobs_by_id[k] for k in order}
            self._items = (snap.jobs_version, items)
        return JobRows(items, snap.now, snap.job_series, self._cache)

    def action_open(self) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(OpenJob(k))

    def action_job(self, action: str) -> None:
        if (k := self.table.selected_key) is not None:
            # as users name it: `123_4` for an array's task (the API takes either)
            self.post_message(JobAction(self.table.rows[k][0].text or k, action))

    def on_live_table_row_selected(self, event: LiveTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenJob(event.key))


class FairshareView(View):
    name = "fairshare"
    title = "Fair-share"
    columns = data.FAIRSHARE_COLUMNS

    def compose(self) -> ComposeResult:
        yield Static("", id="fairshare-unavailable", classes="note")
        yield from super().compose()

    def rows(self, snap: Snapshot) -> Rows:
        note = self.query_one("#fairshare-unavailable", Static)
        if snap.fairshare is None:
            note.display = True
            why = snap.fairshare_error or "not fetched yet"
            note.update(f"Fair-share is not available from this daemon: {why}")
            return {}
        note.display = False
        return data.fairshare_rows(snap.fairshare)


class HistoryView(View):
    name = "history"
    title = "History"
    columns = data.HISTORY_COLUMNS
    BINDINGS = [Binding("enter", "open", "Job detail", id="history.open")]

    def rows(self, snap: Snapshot) -> Rows | None:
        return None if snap.finished is None else data.history_rows(snap.finished, snap.now)

    def action_open(self) -> None:
        if (k := self.table.selected_key) is not None:
            self.post_message(OpenJob(k))

    def on_live_table_row_selected(self, event: LiveTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenJob(event.key))


VIEWS: dict[str, type[View]] = {
    "cluster": ClusterView,
    "gpus": GpusView,
    "jobs": JobsView,
    "fairshare": FairshareView,
    "history": HistoryView,
}
