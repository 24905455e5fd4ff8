"""dctop's table: a line-API widget (ScrollView + render_line) over keyed rows of plain cells.

The rows, their order (data.order_rows) and any filter are plain data decided outside the
widget; the widget draws the header and only the rows in view, one cached Strip per row,
rebuilt only when that row's cells, its stripe/cursor state, the column layout or the theme
changed. A refresh that changes rows nobody sees therefore costs a dict update, not a
repaint. Only Textual's public API is used (ScrollView, Strip, component classes, messages).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dcsched.tui.data import Cell, Column, Rows, order_rows

_STYLES: dict[str, Style] = {}


def _style(name: str) -> Style:
    style = _STYLES.get(name)
    if style is None:
        style = _STYLES[name] = Style.parse(name) if name else Style.null()
    return style


#: blank columns between two cells (and before the first)
GAP = 1


def cell_segments(cell: Cell, width: int, base: Style) -> list[Segment]:
    """One cell as segments exactly `width` cells wide (cut, or padded with spaces)."""
    out: list[Segment] = []
    used = 0
    for text, style in cell.runs or ((cell.text, cell.style),):
        if used >= width:
            break
        piece = text[: width - used]
        used += len(piece)
        out.append(Segment(piece, base + _style(style) if style else base))
    if used < width:
        out.append(Segment(" " * (width - used), base))
    return out


class LiveTable(ScrollView, can_focus=True):
    """A table fed whole keyed row sets (`sync`), e.g. every second. The selected row (by
    key) and the scroll position survive every sync; `s` / a header click sorts by a
    column (again: reversed), `S` reverses."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("right", "scroll_right", "Right", show=False),
        Binding("enter", "select", "Open", show=False),
        Binding("s", "cycle_sort", "Sort", id="table.sort"),
        Binding("S", "reverse_sort", "Reverse", show=False, id="table.reverse"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "live-table--header",
        "live-table--cursor",
        "live-table--even-row",
    }

    DEFAULT_CSS = """
    LiveTable {
        background: $surface;
        color: $foreground;
        & > .live-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .live-table--even-row { background: $surface-lighten-1 50%; }
        & > .live-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        &:focus > .live-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        &:dark > .live-table--even-row { background: $surface-darken-1 40%; }
    }
    """

    class RowSelected(Message):
        """Enter, or a click on the row already under the cursor."""

        def __init__(self, table: LiveTable, key: str) -> None:
            super().__init__()
            self.table, self.key = table, key

        @property
        def control(self) -> LiveTable:
            return self.table

    class Synced(Message):
        """Posted after each sync applied (the benchmark and tests wait for it)."""

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.spec = list(columns)
        self.shown: list[str] = [col.key for col in self.spec]  # which columns, in order
        self.rows: Rows = {}
        self.order: list[str] = []  # the keys as displayed
        self._index: dict[str, int] = {}
        self.cursor_row = 0
        self.sort_column: str | None = None
        self.sort_reverse = False
        self._widths: dict[str, int] = {}
        self._layout = 0  # bumped when widths or columns change: every cached strip is stale
        self._strips: dict[str, tuple[object, ...]] = {}

    # ------------------------------------------------------------ data in

    @property
    def selected_key(self) -> str | None:
        if 0 <= self.cursor_row < len(self.order):
            return self.order[self.cursor_row]
        return None

    @property
    def row_count(self) -> int:
        return len(self.order)

    def get_row_index(self, key: str) -> int:
        return self._index[key]

    def sync(self, rows: Rows) -> None:
        """Applies a whole new row set (in the caller's order unless a sort is set). `rows`
        may build its rows lazily (data.LazyRows): only the rows drawn are read, unless a
        sort needs every row's key (rows with an `order_by(column, reverse=)` sort
        themselves, e.g. jobrows.JobRows, without building a row)."""
        selected = self.selected_key
        old = self.rows
        self.rows = rows
        same_keys = len(old) == len(rows) and old.keys() == rows.keys()
        order = self._ordered()
        moved = order != self.order
        if moved:
            self.order = order
            self._index = {k: i for i, k in enumerate(order)}
        if selected is not None and selected in self._index:
            self.cursor_row = self._index[selected]
        else:
            self.cursor_row = min(self.cursor_row, max(len(order) - 1, 0))
        self._fit_columns(reset=not same_keys)
        if moved:
            self.virtual_size = Size(self._total_width(), len(order) + 1)
            self.refresh()
        else:
            self._refresh_changed()
        if not self._strips.keys() <= rows.keys():
            self._strips = {k: v for k, v in self._strips.items() if k in rows}
        self.post_message(self.Synced())

    def _ordered(self) -> list[str]:
        if self.sort_column is None:
            return list(self.rows)
        ci = [col.key for col in self.spec].index(self.sort_column)
        fast = getattr(self.rows, "order_by", None)  # rows that sort without being built
        if fast is not None:
            return list(fast(ci, reverse=self.sort_reverse))
        return order_rows(self.rows, ci, reverse=self.sort_reverse)

    def _visible(self) -> range:
        top = int(self.scroll_y)
        return range(top, min(top + max(self.size.height, 1), len(self.order)))

    def _refresh_changed(self) -> None:
        """Repaints only the visible lines whose row is not the one last drawn."""
        for i in self._visible():
            k = self.order[i]
            hit = self._strips.get(k)
            if hit is None or hit[0] is not self.rows[k]:
                self.refresh_line(i + 1)

    def set_columns(self, keys: Sequence[str]) -> None:
        """Shows these columns in this order (unknown keys are ignored; never none)."""
        known = {col.key for col in self.spec}
        shown = [k for k in keys if k in known] or [col.key for col in self.spec]
        if shown != self.shown:
            self.shown = shown
            self._layout += 1
            self.virtual_size = Size(self._total_width(), len(self.order) + 1)
            self.refresh()

    #: tables up to this many rows fit their columns to every row; larger ones to the rows
    #: drawn so far (widths then only grow while the same rows stay)
    MEASURE_ALL = 200

    def _fit_columns(self, *, reset: bool = False) -> None:
        """Column widths from the cells' text lengths: of every row in a small table, of
        the rows in view in a large one (building every row to measure it would cost more
        than the rest of a refresh). A new set of rows starts from the labels again."""
        spec = self.spec
        widths = (
            {col.key: len(self._label(col)) for col in spec}
            if reset or not self._widths
            else dict(self._widths)
        )
        if len(self.order) <= self.MEASURE_ALL:
            keys: Iterable[str] = self.order
            if not reset:
                widths = {col.key: len(self._label(col)) for col in spec}
        else:
            keys = [self.order[i] for i in self._visible()]
        rows = self.rows
        for k in keys:
            for i, cell in enumerate(rows[k]):
                n = len(cell.text)
                key = spec[i].key
                widths[key] = max(widths[key], n)
        for col in spec:
            if col.width is not None:
                widths[col.key] = col.width
        if widths != self._widths:
            self._widths = widths
            self._layout += 1
            self.virtual_size = Size(self._total_width(), len(self.order) + 1)
            self.refresh()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if len(self.order) > self.MEASURE_ALL:
            self._fit_columns()

    def on_resize(self) -> None:
        self._fit_columns()

    def _total_width(self) -> int:
        return sum(self._widths.get(k, 0) + GAP for k in self.shown) + GAP

    def _label(self, col: Column) -> str:
        if col.key == self.sort_column:
            return col.label + (" ▼" if self.sort_reverse else " ▲")
        return col.label

    # ------------------------------------------------------------ drawing

    def render_lines(self, crop: Region) -> list[Strip]:
        # the widget's style once per paint, not once per line (it walks the DOM)
        self._base = self.rich_style
        try:
            return super().render_lines(crop)
        finally:
            self._base = None

    _base: Style | None = None

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self._base or self.rich_style
        if y == 0:
            strip = self._header(base)
        else:
            i = scroll_y + y - 1
            if i >= len(self.order):
                return Strip.blank(width, base)
            strip = self._row(i, base)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _header(self, base: Style) -> Strip:
        style = base + self.get_component_rich_style("live-table--header")
        by_key = {col.key: col for col in self.spec}
        segs = [Segment(" " * GAP, style)]
        for k in self.shown:
            segs += cell_segments(Cell(self._label(by_key[k])), self._widths.get(k, 0), style)
            segs.append(Segment(" " * GAP, style))
        return Strip(segs)

    def _row(self, i: int, base: Style) -> Strip:
        key = self.order[i]
        cells = self.rows[key]
        cursor = i == self.cursor_row
        if cursor:
            style = base + self.get_component_rich_style("live-table--cursor")
        elif i % 2:
            style = base + self.get_component_rich_style("live-table--even-row")
        else:
            style = base
        context = (self._layout, style, cursor)
        hit = self._strips.get(key)
        if hit is not None and hit[0] is cells and hit[1] == context:
            strip: Strip = hit[2]  # type: ignore[assignment]
            return strip
        index = {col.key: n for n, col in enumerate(self.spec)}
        gap = Segment(" " * GAP, style)
        segs = [gap]
        for k in self.shown:
            cell = cells[index[k]]
            if cursor:  # the cursor's colours win over the cell's
                segs.append(Segment(cell.text[: self._widths[k]].ljust(self._widths[k]), style))
            else:
                segs += cell_segments(cell, self._widths[k], style)
            segs.append(gap)
        strip = Strip(segs)
        self._strips[key] = (cells, context, strip)
        return strip

    # ------------------------------------------------------------ cursor and sort

    def move_cursor(self, *, row: int, scroll: bool = True) -> None:
        if not self.order:
            return
        row = max(0, min(row, len(self.order) - 1))
        old, self.cursor_row = self.cursor_row, row
        if old != row:
            self.refresh_line(old + 1)
            self.refresh_line(row + 1)
        if scroll:
            self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        view = max(self.scrollable_content_region.height - 1, 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + view:
            self.scroll_to(y=self.cursor_row - view + 1, animate=False)

    def action_cursor(self, step: int) -> None:
        self.move_cursor(row=self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self.move_cursor(row=self.cursor_row + step * max(self.size.height - 2, 1))

    def action_jump(self, where: int) -> None:
        self.move_cursor(row=len(self.order) - 1 if where < 0 else 0)

    def action_select(self) -> None:
        if (k := self.selected_key) is not None:
            self.post_message(self.RowSelected(self, k))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = offset.x + int(self.scroll_x)
            edge = GAP
            for k in self.shown:
                edge += self._widths.get(k, 0) + GAP
                if x < edge:
                    self.sort_by(k)
                    return
            return
        row = int(self.scroll_y) + offset.y - 1
        if row < len(self.order):
            again = row == self.cursor_row
            self.move_cursor(row=row)
            if again or event.chain > 1:
                self.action_select()

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        """Orders the rows by a column's sort key; the selected row stays selected."""
        if reverse is None:
            reverse = (not self.sort_reverse) if column == self.sort_column else False
        self.sort_column, self.sort_reverse = column, reverse
        selected = self.selected_key
        self.order = self._ordered()
        self._index = {k: i for i, k in enumerate(self.order)}
        if selected is not None:
            self.cursor_row = self._index[selected]
        self._fit_columns(reset=True)  # the label's arrow may widen a column
        self._layout += 1
        self.refresh()
        self._scroll_to_cursor()

    def action_cycle_sort(self) -> None:
        keys = self.shown
        cur = self.sort_column
        nxt = 0 if cur not in keys else (keys.index(cur) + 1) % len(keys)
        self.sort_by(keys[nxt], reverse=self.sort_reverse)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column or self.shown[0], reverse=not self.sort_reverse)
