"""dctop's widgets: a DataTable that is updated in place from keyed rows, and small parts."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Self

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Static
from textual.widgets.data_table import CellKey, ColumnKey, RowDoesNotExist, RowKey

from dcsched.tui.data import Cell, Column, Rows, sort_key

_STYLES: dict[str, Style] = {}


def _style(name: str) -> Style:
    style = _STYLES.get(name)
    if style is None:
        style = _STYLES[name] = Style.parse(name) if name else Style.null()
    return style


class FastCell:
    """A one-line table cell that renders straight to segments: a DataTable re-renders
    every visible cell after any update, and going through rich Text's wrapping and
    justification for a few characters was most of a refresh at 1,000 GPUs."""

    __slots__ = ("parts", "text")

    def __init__(self, cell: Cell) -> None:
        self.text = cell.text
        runs = cell.runs or ((cell.text, cell.style),)
        self.parts = [(text, _style(style)) for text, style in runs]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        used = 0
        for text, style in self.parts:
            if used >= width:
                break
            piece = text[: width - used]
            used += len(piece)
            yield Segment(piece, style)
        if used < width:
            yield Segment(" " * (width - used))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(len(self.text), len(self.text))

    def __str__(self) -> str:
        return self.text


def render_cell(cell: Cell) -> FastCell:
    return FastCell(cell)


class LiveTable(DataTable[FastCell]):
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
        self._cells: dict[str, tuple[Cell, ...]] = {}  # the latest rows
        self._shown: dict[str, tuple[Cell, ...]] = {}  # what the table holds
        self._cell_cache: dict[tuple[object, object], tuple[object, tuple[object, ...], Any]] = {}
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
        """Applies a whole new row set. Rows that came or went are added / removed at
        once; changed cells are written with update_cell for the rows on screen (and a
        margin), and for the others when they scroll into view: at 1,000 GPUs most of a
        refresh's changes are to rows nobody sees, and each update_cell costs."""
        selected = self.selected_key
        old = self._cells
        gone = [k for k in old if k not in rows]
        for k in gone:
            self._shown.pop(k, None)
            for col in self.spec:
                self._cell_cache.pop((RowKey(k), ColumnKey(col.key)), None)
            with contextlib.suppress(RowDoesNotExist):
                self.remove_row(k)
        added = False
        for k, cells in rows.items():
            if k not in self._shown:
                self.add_row(*(render_cell(x) for x in cells), key=k)
                self._shown[k] = cells
                added = True
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
        self.flush_visible()
        self.post_message(self.Synced())

    #: rows above and below the view kept current too (scrolling a page shows no stale rows)
    flush_margin = 10

    def flush_visible(self) -> None:
        """Writes the latest cells of the rows in view (plus a margin) into the table."""
        if not self._cells:
            return
        margin = self.flush_margin
        top = max(int(self.scroll_y) - margin, 0)
        bottom = min(int(self.scroll_y) + self.size.height + margin, self.row_count)
        col_keys = [col.key for col in self.spec]
        self._batching, self._batched = True, False
        try:
            for index in range(top, bottom):
                k = self._row_locations.get_key(index)
                if k is None or k.value is None:
                    continue
                key = k.value
                shown, latest = self._shown.get(key), self._cells.get(key)
                if latest is None or shown is None or shown == latest:
                    continue
                for ck, a, b in zip(col_keys, shown, latest, strict=True):
                    if a != b:
                        self.update_cell(key, ck, render_cell(b))
                self._shown[key] = latest
        finally:
            self._batching = False
        if self._batched:
            self.refresh()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self.flush_visible()

    def on_resize(self) -> None:
        self.flush_visible()

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> list[list[Segment]]:
        """DataTable caches a cell's rendering under a table-wide update count, so one
        update_cell re-renders every visible cell. Keyed instead on the cell's own value
        (held, so its identity cannot be reused) and everything else the rendering reads,
        a refresh re-renders only the cells that changed."""
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or column_key is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        value = self._data.get(row_key, {}).get(column_key)
        context = (
            row_index,
            base_style,
            width,
            cursor,
            hover,
            self._show_hover_cursor,
            self._pseudo_class_state,
            self.cursor_type,
            self.show_cursor,
            self.app.theme,
        )
        cache_key = (row_key, column_key)
        hit = self._cell_cache.get(cache_key)
        if hit is not None and hit[0] is value and hit[1] == context:
            cached: list[list[Segment]] = hit[2]
            return cached
        lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        self._cell_cache[cache_key] = (value, context, lines)
        return lines

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


class Summary(Widget):
    """The cluster header: nodes, GPUs, utilisation, power, jobs. One line of fixed
    height, so a new text repaints it without a layout pass of the whole screen."""

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text(text)

    def render(self) -> Text:
        return self._text

    def show(self, runs: Sequence[tuple[str, str]]) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        for text, style in runs:
            t.append(text, style)
        if t != self._text:
            self._text = t
            self.refresh()
