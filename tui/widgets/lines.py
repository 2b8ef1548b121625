"""A pane of text lines that change many times a second, a few figures at a time.

Each line is a one-row :class:`~textual.widgets.Static`, updated only when its own text changes. A new
value then repaints that row alone, not the whole pane: on the dashboard, at up to 30 snapshots a second,
most lines (names, units, the interlocks that hold) stay as they are while a handful of figures move.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static


class LinePanel(Widget):
    """A multi-line :class:`~rich.text.Text`, one row per line, redrawing only the lines that changed."""

    DEFAULT_CSS = """
    LinePanel {
        height: auto;
        layout: vertical;
    }
    LinePanel > .line-panel--row {
        height: 1;
        width: 100%;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._rows: list[Static] = []
        self._lines: list[Text] = []

    @property
    def text(self) -> Text:
        """What the panel shows, its lines joined."""
        return Text("\n").join(self._lines)

    def compose(self) -> ComposeResult:
        yield from self._rows

    def show(self, text: Text) -> None:
        """Show ``text``; rows whose line is unchanged are left alone."""
        lines = list(text.split("\n", allow_blank=True)) if text.plain else []
        if len(lines) != len(self._rows):
            # A line more or fewer (rare: a session opens or closes): rows anew, and a layout pass.
            self._rows = [Static(line, classes="line-panel--row") for line in lines]
            self._lines = lines
            if self.is_mounted:
                self.remove_children()
                self.mount_all(self._rows)
            return
        for index, (row, line) in enumerate(zip(self._rows, lines, strict=True)):
            if line != self._lines[index]:
                row.update(line, layout=False)
                self._lines[index] = line
