"""dctop's small widgets: the banner and the cluster summary line (the table is table.py)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static


class Banner(Static):
    """The one-line notice on top: "daemon unreachable — retrying". Plain text, never
    markup: an error message quoting "[daemon] socket" must read as written."""

    def show(self, text: str) -> None:
        self.update(Text(text))
        self.display = True


class Summary(Widget):
    """The cluster header: nodes, GPUs, utilisation, power, jobs. One line, wrapped onto
    a second on a narrow terminal rather than clipped."""

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text(text)

    def render(self) -> Text:
        return self._text

    def show(self, runs: Sequence[tuple[str, str]]) -> None:
        t = Text(overflow="ellipsis")
        for text, style in runs:
            t.append(text, style)
        if t != self._text:
            self._text = t
            self.refresh(layout=len(t) > self.size.width)
