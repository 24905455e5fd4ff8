"""dctop's widgets: a DataTable that is updated in place from keyed rows, and small parts."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Self

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.widgets.data_table import CellKey, ColumnKey, RowDoesNotExist, RowKey

from dcsched.tui.data import Cell, Column, Rows, sort_key


def render_cell(cell: Cell) -> Text:
    if cell.runs:
        t = Text()
        for text, style in cell.runs:
            t.append(text, style)
        return t
    return Text(cell.text, style=cell.style)


class LiveTable(DataTable[Text]):
    """A table fed whole keyed row sets every tick, applied as a diff: update_cell for the
    cells that changed, add_row / remove_row for rows that came or went, never clear().
    The selected row (by key) and the scroll position survive every refresh; a header
    click sorts by that column (again: reversed)."""

    BINDINGS = [
        Binding("s", "cycle_sort", "Sort", id="table.sort"),
        Binding("S", "reverse_sort", "Reverse", show=False, id="table.reverse"),
    ]

    _batching = False  # class defaults: DataTable.__init__ already refreshes
    _batched = False

    class Synced(Message):
        """Posted after each refresh applied (the benchmark waits for it)."""

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.spec = list(columns)
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._order: list[str] = []
        self.sort_column: str | None = None
        self.sort_reverse = False
        self._batching = False
        self._batched = False

    def refresh(
        self, *regions: Region, repaint: bool = True, layout: bool = False, recompose: bool = False
    ) -> Self:
        """While a sync applies its update_cell calls, their refreshes become one."""
        if self._batching and not (layout or recompose or regions):
            self._batched = True
            return self
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def on_mount(self) -> None:
        for col in self.spec:
            self.add_column(col.label, key=col.key, width=col.width)

    @property
    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        rows = self.ordered_rows
        if not 0 <= self.cursor_row < len(rows):
            return None
        return rows[self.cursor_row].key.value

    def sync(self, rows: Rows) -> None:
        selected = self.selected_key
        old = self._cells
        gone = [k for k in old if k not in rows]
        for k in gone:
            with contextlib.suppress(RowDoesNotExist):
                self.remove_row(k)
        added = False
        col_keys = [col.key for col in self.spec]
        self._batching, self._batched = True, False
        try:
            for k, cells in rows.items():
                prev = old.get(k)
                if prev is None:
                    self.add_row(*(render_cell(x) for x in cells), key=k)
                    added = True
                    continue
                if prev == cells:
                    continue
                for ck, a, b in zip(col_keys, prev, cells, strict=True):
                    if a != b:
                        self.update_cell(k, ck, render_cell(b))
        finally:
            self._batching = False
        if self._batched:
            self.refresh()
        self._cells = dict(rows)
        self._fit_columns()
        new_order = list(rows)
        if self.sort_column is not None:
            self._apply_sort()
        elif added or gone or new_order != self._order:
            self._apply_order(new_order)
        self._order = new_order
        if selected is not None and selected in self._cells:
            index = self.get_row_index(RowKey(selected))
            if index != self.cursor_row:
                self.move_cursor(row=index, animate=False, scroll=False)
        self.post_message(self.Synced())

    def _fit_columns(self) -> None:
        """Column widths from the rows' text lengths (cheap), set explicitly: DataTable's
        own auto width re-measures a whole column through rich whenever one cell shrinks,
        which at 1,000 rows costs more than the rest of a refresh together."""
        changed = False
        for i, col in enumerate(self.spec):
            if col.width is not None:
                continue
            width = max((len(cells[i].text) for cells in self._cells.values()), default=0)
            column = self.columns[ColumnKey(col.key)]
            width = max(width, len(str(column.label)))
            if column.auto_width or column.width != width:
                column.auto_width = False
                column.width = width
                changed = True
        if changed:
            self._require_update_dimensions = True
            self.refresh()

    def _update_column_widths(self, updated_cells: set[CellKey]) -> None:
        """Widths are set by _fit_columns; nothing to measure here."""

    def _apply_order(self, order: list[str]) -> None:
        rank = {k: i for i, k in enumerate(order)}
        first = self.spec[0].key
        # the key function sees the first column's cell; rank it by its row instead
        by_cell = {id(self.get_cell(k, first)): rank[k] for k in order}
        self.sort(first, key=lambda cell: by_cell.get(id(cell), 0))

    def _apply_sort(self) -> None:
        assert self.sort_column is not None
        ci = [col.key for col in self.spec].index(self.sort_column)
        keys = {k: (sort_key(cells[ci].key), i) for i, (k, cells) in enumerate(self._cells.items())}
        first = self.spec[0].key
        by_cell = {id(self.get_cell(k, first)): v for k, v in keys.items()}
        self.sort(
            first, key=lambda cell: by_cell.get(id(cell), ((0, 0), 0)), reverse=self.sort_reverse
        )

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        selected = self.selected_key
        if reverse is None:
            reverse = (not self.sort_reverse) if column == self.sort_column else False
        self.sort_column, self.sort_reverse = column, reverse
        for col in self.spec:
            label = col.label
            if col.key == column:
                label += " ▼" if reverse else " ▲"
            self.columns[ColumnKey(col.key)].label = Text(label)
        self._require_update_dimensions = True
        self._apply_sort()
        if selected is not None:
            self.move_cursor(row=self.get_row_index(RowKey(selected)), animate=False)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        if event.column_key.value is not None:
            self.sort_by(event.column_key.value)

    def action_cycle_sort(self) -> None:
        keys = [col.key for col in self.spec]
        nxt = 0 if self.sort_column is None else (keys.index(self.sort_column) + 1) % len(keys)
        self.sort_by(keys[nxt], reverse=self.sort_reverse)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column or self.spec[0].key, reverse=not self.sort_reverse)


class Banner(Static):
    """The one-line notice on top: "daemon unreachable — retrying"."""


class Summary(Static):
    """The cluster header: nodes, GPUs, utilisation, power, jobs."""

    def show(self, runs: Sequence[tuple[str, str]]) -> None:
        t = Text()
        for text, style in runs:
            t.append(text, style)
        self.update(t)
