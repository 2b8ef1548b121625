"""A pane of text lines that change many times a second, a few figures at a time.

The pane draws its lines itself (Textual's line API): when a line's text changes, that row alone is redrawn,
from a strip made once per text and width. On the dashboard, at up to 30 snapshots a second, most lines
(names, units, the interlocks that hold) stay as they are while a handful of figures move; a widget per line
cost about 0.3 ms a line redrawn, most of it the generic widget machinery.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget


class LinePanel(Widget):
    """A multi-line :class:`~rich.text.Text`, one row per line (cut with an ellipsis where too long),
    redrawing only the lines that changed."""

    DEFAULT_CSS = """
    LinePanel {
        height: auto;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._lines: list[Text] = []
        #: Each line's strip, with the width it was made for.
        self._strips: list[tuple[int, Strip] | None] = []

    @property
    def text(self) -> Text:
        """What the panel shows, its lines joined."""
        return Text("\n").join(self._lines)

    def show(self, text: Text) -> None:
        """Show ``text``; rows whose line is unchanged are left alone."""
        lines = list(text.split("\n", allow_blank=True)) if text.plain else []
        if len(lines) != len(self._lines):
            # A line more or fewer (rare: a session opens or closes): a layout pass.
            self._lines = lines
            self._strips = [None] * len(lines)
            self.refresh(layout=True)
            return
        width = self.content_size.width
        for index, line in enumerate(lines):
            if line != self._lines[index]:
                self._lines[index] = line
                self._strips[index] = None
                self.refresh(Region(0, index, width, 1))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return max((line.cell_len for line in self._lines), default=0)

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        base = self.rich_style
        if not 0 <= y < len(self._lines):
            return Strip.blank(width, base)
        cached = self._strips[y]
        if cached is not None and cached[0] == width:
            return cached[1]
        line = self._lines[y].copy()
        line.truncate(width, overflow="ellipsis")
        segments = Segment.apply_style(line.render(self.app.console), base)
        strip = Strip(segments, line.cell_len).extend_cell_length(width, Style(bgcolor=base.bgcolor))
        self._strips[y] = (width, strip)
        return strip
