"""What the end-of-session screen and the past-session screen both draw of one session's record.

* :class:`ReviewFacts`: the session's title (id, subject, protocol) and its summary facts (status, start,
  laser-on time, energy against the plan, average and maximum power, steps, technician, the reason of an
  abort);
* :class:`EventsPane`: the session's events in a table whose columns fit its width (time, seconds since the
  start, severity, who, the event, its stored kind: the event column takes what the others leave and is cut
  with an ellipsis), and under it the highlighted event in full with its recorded details;
* :class:`TracePane`: the power trace (commanded and measured) with a line saying how many samples it holds
  or what is wrong with the telemetry file.

Everything that came from a person or a device (names, reasons, descriptions, details) is drawn through
:func:`tui.safe_text.plain`: never read as markup, control characters escaped. Powers in watts, energies in
joules, times in seconds (minutes and seconds past a minute); clock times UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import DataTable, Label, Static, TextArea

from control.review import ReviewEvent, SessionReviewData
from storage.signatures import SessionSignature
from tui.safe_text import escape_controls, plain
from tui.widgets.plot import PowerPlot

#: Shown in place of a value the review has not read yet.
READING = "reading..."
#: Shown for a value the record does not have (a laser that never emitted has no average power).
NO_VALUE = "-"
#: The summary's facts (id, label), row by row: two to a row on a narrow screen, one on a wide one.
FACTS = (
    ("status", "Status"),
    ("started", "Started"),
    ("laser-on", "Laser on"),
    ("energy", "Energy"),
    ("avg", "Avg power"),
    ("max", "Max power"),
    ("steps", "Steps"),
    ("technician", "Technician"),
    ("reason", "Reason"),
)
#: Severities shown in capitals and bold in the events table.
_LOUD_SEVERITIES = frozenset({"critical", "emergency"})
#: The events table's headings, one per cell of :func:`event_cells`.
EVENT_COLUMNS = ("Time", "+s", "Severity", "By", "Event", "Kind")
#: Index of the column that takes the width the others leave.
_EVENT_COLUMN = EVENT_COLUMNS.index("Event")
#: Most cells given to the "By" and "Kind" columns (longer names are cut with an ellipsis).
_MAX_BY = 12
_MAX_KIND = 20
#: Fewest cells the event column keeps, even when the table must then scroll sideways.
_MIN_EVENT = 16


#: The layout of a screen reviewing a session, for :func:`review_screen_css` (``SCREEN`` stands for the
#: screen's class name): the summary beside the notes on a wide screen (above them on a narrow one), the
#: events and trace tabs below, a status line. The screen sets the breakpoints ``-wide`` (110 columns) and
#: ``-tall`` (32 rows).
_REVIEW_SCREEN_CSS = """
SCREEN #eos-top {
    layout: vertical;
    height: auto;
    margin: 0 1;
}
SCREEN #eos-notes-box {
    height: auto;
}
SCREEN #notes-label {
    color: $text-muted;
    padding: 0 1;
}
SCREEN #notes {
    height: 3;
    background: $panel;
}
SCREEN.-tall #notes {
    height: 6;
}
SCREEN.-wide #eos-top {
    layout: horizontal;
    height: 10;
}
SCREEN.-wide #eos-summary {
    width: 1fr;
    height: 100%;
}
SCREEN.-wide #eos-notes-box {
    width: 1fr;
    height: 100%;
    margin: 0 0 0 1;
}
SCREEN.-wide #notes {
    height: 1fr;
}
SCREEN #eos-tabs {
    height: 1fr;
    margin: 0 1;
}
SCREEN #eos-tabs TabPane {
    padding: 0;
}
SCREEN #status {
    margin: 0 1;
    height: 1;
    min-height: 1;
}
"""


def signatures_text(signatures: Sequence[SessionSignature]) -> Text:
    """The electronic signatures and signed addenda of a session, oldest first, under a heading: each one's
    meaning, printed name, login and time (UTC), and an addendum's notes below it (as text, never markup);
    says so when the session is not signed."""
    text = Text("Signatures\n", style="bold")
    if not signatures:
        text.append("Not signed.")
        return text
    for index, signature in enumerate(signatures):
        if index:
            text.append("\n")
        text.append_text(plain(signature.describe()))
        if signature.kind == "addendum" and signature.notes:
            text.append("\n")
            text.append_text(plain(signature.notes, keep_newlines=True))
    return text


def review_screen_css(screen_name: str) -> str:
    """The layout of a screen reviewing a session, for the screen class named ``screen_name`` (give it as the
    screen's ``CSS``, which takes precedence over the console's shared rules for ``#status``)."""
    return _REVIEW_SCREEN_CSS.replace("SCREEN", screen_name)


def format_seconds(seconds: float | None) -> str:
    """A duration in seconds as ``12.3 s``, or ``2 min 05.0 s`` from a minute on; ``-`` for None."""
    if seconds is None:
        return NO_VALUE
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s"


def format_watts(watts: float | None) -> str:
    """A power in watts with two decimals (``2.17 W``); ``-`` for None."""
    return NO_VALUE if watts is None else f"{watts:.2f} W"


def format_energy(energy_j: float | None, expected_j: float | None) -> str:
    """Delivered energy in joules, and the energy the protocol plans when known (``5.43 J of 5.50 J
    planned``)."""
    if energy_j is None:
        return NO_VALUE
    text = f"{energy_j:.2f} J"
    if expected_j is not None:
        text += f" of {expected_j:.2f} J planned"
    return text


def format_steps(completed: int, planned: int | None) -> str:
    """Steps completed, out of the steps planned when known (``2 of 3``)."""
    return f"{completed} of {planned}" if planned is not None else str(completed)


def event_cells(event: ReviewEvent) -> tuple[Text, Text, Text, Text, Text, Text]:
    """The events table's cells for one event: UTC clock time, seconds since the session started, severity,
    who, description and the stored event type (each drawn as text, never as markup)."""
    loud = event.severity in _LOUD_SEVERITIES
    return (
        Text(event.at.strftime("%H:%M:%S")),
        Text(f"{event.offset_s:.1f}"),
        plain(event.severity.upper() if loud else event.severity, "bold" if loud else ""),
        plain(event.who),
        plain(event.description),
        plain(event.kind),
    )


def event_detail(event: ReviewEvent) -> Text:
    """One event in full for the line under the table: time, who, the description and its details."""
    text = Text(f"{event.at:%H:%M:%S} +{event.offset_s:.1f} s  ", style="bold")
    text.append_text(plain(f"{event.kind} by {event.who}: {event.description}"))
    if event.details:
        text.append("\n")
        text.append_text(plain(event.details))
    return text


def _fit(cell: Text, width: int) -> Text:
    """``cell`` cut to ``width`` cells, ending in an ellipsis when cut."""
    if cell.cell_len <= width:
        return cell
    cut = cell.copy()
    cut.truncate(width, overflow="ellipsis")
    return cut


class NotesArea(TextArea):
    """A notes field that takes pasted text as it will be drawn: line ends become line breaks and every other
    control character is written as its escape (``\\x1b``), so that what is saved is what the field shows
    and nothing pasted reaches the terminal as a command."""

    async def _on_paste(self, event: events.Paste) -> None:
        # Textual calls each class's handler in turn, this one first: the text area's own then inserts the
        # text as made here.
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        event.text = escape_controls(text, keep_newlines=True)


class ReviewFacts(Vertical):
    """The session's title and summary facts (ids ``#eos-title`` and ``#fact-<name>``)."""

    SCOPED_CSS: ClassVar[bool] = False
    DEFAULT_CSS = """
    ReviewFacts {
        height: auto;
        padding: 0 1;
        background: $surface;
    }
    ReviewFacts #eos-title {
        width: 100%;
        text-style: bold;
        color: $accent;
    }
    ReviewFacts #eos-facts {
        grid-size: 4;
        grid-columns: 10 16 10 1fr;
        grid-rows: auto;
        grid-gutter: 0 1;
        height: auto;
    }
    ReviewFacts #eos-facts .fact-name {
        color: $text-muted;
    }
    ReviewFacts #eos-facts Static {
        height: 1;
    }
    ReviewFacts #fact-reason-name, ReviewFacts #fact-reason {
        display: none;
    }
    ReviewFacts #eos-facts.-aborted #fact-reason-name,
    ReviewFacts #eos-facts.-aborted #fact-reason {
        display: block;
    }
    ReviewFacts #eos-facts #fact-reason {
        column-span: 3;
        height: auto;
        max-height: 2;
    }
    ReviewFacts #fact-status.-completed {
        color: $success;
        text-style: bold;
    }
    ReviewFacts #fact-status.-aborted {
        color: $error;
        text-style: bold;
    }
    .-wide ReviewFacts #eos-facts {
        grid-size: 2;
        grid-columns: 12 1fr;
    }
    .-wide ReviewFacts #eos-facts #fact-reason {
        column-span: 1;
        max-height: 1;
    }
    """

    def __init__(self, session_id: int, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session_id = session_id

    def compose(self) -> ComposeResult:
        yield Label(f"Session {self.session_id}", id="eos-title")
        with Grid(id="eos-facts"):
            for fact_id, name in FACTS:
                yield Label(name, classes="fact-name", id=f"fact-{fact_id}-name")
                yield Static(READING, id=f"fact-{fact_id}")

    def show(self, review: SessionReviewData) -> None:
        """Fill the title and the facts from ``review``."""
        summary = review.summary
        title = f"Session {summary.session_id}"
        for part in (summary.subject_code, summary.protocol_name):
            if part:
                title += f" · {part}"
        self.query_one("#eos-title", Label).update(plain(title))
        status = self.query_one("#fact-status", Static)
        status.update(plain(summary.status))
        status.set_class(summary.status == "completed", "-completed")
        status.set_class(summary.status == "aborted", "-aborted")
        self.query_one("#eos-facts", Grid).set_class(bool(summary.abort_reason), "-aborted")
        values = {
            "started": f"{summary.start_time:%Y-%m-%d %H:%M:%S} UTC",
            "technician": summary.technician or NO_VALUE,
            "steps": format_steps(review.steps_completed, review.steps_planned),
            "laser-on": format_seconds(summary.laser_on_time_s),
            "energy": format_energy(summary.energy_j, review.expected_energy_j),
            "avg": format_watts(summary.avg_power_w),
            "max": format_watts(summary.max_power_w),
            "reason": summary.abort_reason or NO_VALUE,
        }
        for fact_id, text in values.items():
            self.query_one(f"#fact-{fact_id}", Static).update(plain(text))


class EventsTable(DataTable[Text]):
    """The session's events; the columns are laid out again for each width, so that every column but the
    event's shows whole and the event column takes what is left."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        #: The events shown, in table order.
        self.events: tuple[ReviewEvent, ...] = ()
        self._laid_out_for = -1

    def show(self, review_events: tuple[ReviewEvent, ...]) -> None:
        """Show ``review_events`` (in the order given)."""
        self.events = review_events
        self._lay_out(force=True)

    def on_resize(self, event: events.Resize) -> None:
        self._lay_out()

    def _lay_out(self, *, force: bool = False) -> None:
        # The columns get their widths here, from the cells: a table left to measure them itself draws a
        # first frame with every column cut to its heading, and keeps those lines in its cache.
        # Room is kept for the vertical scroll bar, which shows once the events outnumber the rows.
        width = self.size.width - self.styles.scrollbar_size_vertical
        if not force and width == self._laid_out_for:
            return
        self._laid_out_for = width
        row = self.cursor_row
        rows = [list(event_cells(event)) for event in self.events]
        widths = [
            max([cell_len(label), *(row[index].cell_len for row in rows)])
            for index, label in enumerate(EVENT_COLUMNS)
        ]
        widths[EVENT_COLUMNS.index("By")] = min(widths[EVENT_COLUMNS.index("By")], _MAX_BY)
        widths[EVENT_COLUMNS.index("Kind")] = min(widths[EVENT_COLUMNS.index("Kind")], _MAX_KIND)
        padding = 2 * self.cell_padding * len(EVENT_COLUMNS)
        others = sum(w for index, w in enumerate(widths) if index != _EVENT_COLUMN)
        if self.size.width > 0:
            widths[_EVENT_COLUMN] = min(widths[_EVENT_COLUMN], max(_MIN_EVENT, width - others - padding))
        self.clear(columns=True)
        for label, column_width in zip(EVENT_COLUMNS, widths, strict=True):
            self.add_column(label, width=column_width)
        for cells in rows:
            self.add_row(*(_fit(cell, w) for cell, w in zip(cells, widths, strict=True)))
        if rows:
            self.move_cursor(row=min(max(row, 0), len(rows) - 1))


class EventsPane(Vertical):
    """The events table and, under it, the highlighted event in full with its details."""

    SCOPED_CSS: ClassVar[bool] = False
    DEFAULT_CSS = """
    EventsPane {
        height: 1fr;
    }
    EventsPane #events {
        height: 1fr;
    }
    EventsPane #event-detail {
        width: 100%;
        height: auto;
        max-height: 3;
        color: $text-muted;
    }
    """

    def compose(self) -> ComposeResult:
        yield EventsTable(id="events")
        yield Static("", id="event-detail")

    def show(self, review: SessionReviewData) -> None:
        """Show the review's events."""
        table = self.query_one("#events", EventsTable)
        table.show(review.events)
        self._detail(table.cursor_row)

    @on(DataTable.RowHighlighted, "#events")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.cursor_row)

    def _detail(self, row: int) -> None:
        shown = self.query_one("#events", EventsTable).events
        detail = self.query_one("#event-detail", Static)
        detail.update(event_detail(shown[row]) if 0 <= row < len(shown) else "")


class TracePane(Vertical):
    """The power trace of the session and the line that says what it is made of (or what is wrong)."""

    SCOPED_CSS: ClassVar[bool] = False
    DEFAULT_CSS = """
    TracePane {
        height: 1fr;
    }
    TracePane #trace-note {
        width: 100%;
        color: $text-muted;
    }
    TracePane #trace-note.-problem {
        color: $warning;
        text-style: bold;
    }
    TracePane #trace-plot {
        height: 1fr;
    }
    """

    def compose(self) -> ComposeResult:
        yield Label("", id="trace-note")
        yield PowerPlot(y_unit="W", x_unit="s", id="trace-plot")

    def show(self, review: SessionReviewData) -> None:
        """Plot the review's trace and say what it holds."""
        note = self.query_one("#trace-note", Label)
        plot = self.query_one("#trace-plot", PowerPlot)
        trace = review.trace
        plot.clear_series()
        if not trace.is_empty:
            plot.set_series("commanded", trace.commanded, label="commanded")
            plot.set_series("measured", trace.measured, label="measured")
            span = trace.time_range_s
            top = trace.max_power_w
            plot.set_ranges(
                x=span if span is not None and span[1] > span[0] else None,
                y=(0.0, top * 1.1) if top is not None and top > 0 else None,
            )
        if review.trace_problem is not None:
            note.update(plain(review.trace_problem))
        else:
            note.update(f"{trace.sample_count} samples; seconds since the session opened")
        note.set_class(review.trace_problem is not None, "-problem")


__all__ = [
    "EVENT_COLUMNS",
    "FACTS",
    "NO_VALUE",
    "READING",
    "EventsPane",
    "EventsTable",
    "NotesArea",
    "ReviewFacts",
    "TracePane",
    "event_cells",
    "event_detail",
    "format_energy",
    "format_seconds",
    "format_steps",
    "format_watts",
    "review_screen_css",
    "signatures_text",
]
