"""The safety log and event browser: every ``safety_log`` row and treatment event, newest first, filtered and
paged; a row's session opens read-only.

Filters: session (its id), from and to (ISO dates or date-times, UTC; from inclusive, to exclusive), severity
(``warning`` for warnings only, ``warning+`` for warnings and everything more serious), event type (as
recorded, e.g. ``photodiode_warning``) and source (``safety`` or ``treatment``; empty for both). Enter in a
filter field applies them; a bad value (a date that is not a date, a range the wrong way round, an unknown
severity, a session that does not exist) is refused with one line saying why, and the rows shown stay as they
were. PageDown / PageUp move by one page of :data:`storage.event_query.PAGE_SIZE` rows, found by keyset on
the time, so a page deep in the log comes as quickly as the first. F2 goes to the filters, F3 clears them.
The highlighted row is shown in full under the table, with where it was recorded (the safety log or the
treatment events). Enter on a row opens its session as the technician's
history does (:class:`~tui.screens.past_session.PastSessionScreen`, read-only); F6 opens the research export
for it (:class:`~tui.screens.export.ExportScreen`).

Everything is read from the records database directly (:mod:`storage.event_query`, one short read-only
transaction per page, in a worker thread): the screen needs no controller, and holds nothing between pages.
Descriptions, details and states are drawn as text, never as markup. For engineers and admins.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from control.account_rules import UserInfo
from control.review import details_text
from storage.audit_query import open_read_only
from storage.errors import StorageError, one_line
from storage.event_query import EventCursor, EventFilter, EventPage, EventRow, fetch_page
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: Roles that may use this screen.
ROLES = frozenset({"engineer", "admin"})
#: Filter fields: (id, label, placeholder), in two rows.
FILTER_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("session", "Session", "id"),
    ("since", "From", "YYYY-MM-DD"),
    ("until", "To", "YYYY-MM-DD"),
    ("severity", "Severity", "e.g. warning+"),
    ("event_type", "Type", "e.g. fault_reset"),
    ("source", "Source", "safety/treatment"),
)
#: The table's columns, in order.
EVENT_COLUMNS = ("Time (UTC)", "Session", "Severity", "Type", "Description")
_SEVERITY_STYLE = {"warning": "bold", "critical": "bold red", "emergency": "bold red reverse"}


def _watts(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f} W"


def describe(row: EventRow) -> str:
    """One line saying what the row records: a safety row's description and what was done; a treatment
    event's powers, ring size and details."""
    if row.source == "safety":
        text = row.description
        if row.action_taken and row.action_taken.split(" ", 1)[0] != "none":
            text += f" ({row.action_taken})"
        return text
    parts = []
    if row.commanded_w is not None:
        parts.append(f"commanded {_watts(row.commanded_w)}")
    if row.measured_w is not None:
        parts.append(f"measured {_watts(row.measured_w)}")
    if row.ring_mm is not None:
        parts.append(f"ring {row.ring_mm:.2f} mm")
    details = details_text(row.details)
    if details:
        parts.append(details)
    return ", ".join(parts) or row.event_type.replace("_", " ")


def detail_text(row: EventRow) -> str:
    """The row in full, for the line under the table."""
    head = f"{row.timestamp:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f" UTC, {row.source} row {row.row_id}"
    if row.session_id is not None:
        head += f", session {row.session_id}"
        if row.time_offset_ms is not None:
            head += f" at {row.time_offset_ms / 1000:.1f} s"
    lines = [head, f"{row.severity} {row.event_type}: {describe(row)}"]
    if row.source == "safety":
        states = [
            f"{name} {value}"
            for name, value in (("state", row.system_state), ("laser", row.laser_state))
            if value
        ]
        details = details_text(row.details)
        if states:
            lines.append("; ".join(states))
        if details:
            lines.append(details)
    return "\n".join(lines)


class SafetyEventsScreen(Screen[None]):
    """Browse and filter ``safety_log`` and ``treatment_events``; open a row's session (see the module
    documentation)."""

    DEFAULT_CSS = """
    SafetyEventsScreen #events-browser {
        height: 1fr;
        padding: 0 1;
    }
    SafetyEventsScreen .filter-row {
        height: 1;
        margin: 1 0 0 0;
    }
    SafetyEventsScreen .filter-row Label {
        width: auto;
        padding: 0 1 0 0;
        color: $text-muted;
    }
    SafetyEventsScreen .filter-row Input {
        width: 1fr;
        margin: 0 1 0 0;
        background: $panel;
    }
    SafetyEventsScreen .filter-row Input:focus {
        background: $primary 30%;
    }
    SafetyEventsScreen #event-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    SafetyEventsScreen #event-detail {
        height: 3;
        color: $text;
    }
    SafetyEventsScreen #page {
        height: 1;
        color: $text-muted;
    }
    SafetyEventsScreen #status {
        height: 1;
    }
    SafetyEventsScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pagedown", "next_page", "Next page", priority=True),
        Binding("pageup", "previous_page", "Prev page", priority=True),
        Binding("f2", "filters", "Filters"),
        Binding("f3", "clear_filters", "Clear"),
        Binding("f6", "export", "Export session"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.filters = EventFilter()
        #: The page shown; None until the first has been read.
        self.page: EventPage | None = None
        self._previous: list[EventCursor | None] = []
        self._current_start: EventCursor | None = None

    @property
    def allowed(self) -> bool:
        return self.user.role in ROLES

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Safety log and events",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="events-browser"):
            for row in (FILTER_FIELDS[:3], FILTER_FIELDS[3:]):
                with Horizontal(classes="filter-row"):
                    for name, label, placeholder in row:
                        yield Label(label)
                        field = Input(placeholder=placeholder, id=f"filter-{name}", compact=True)
                        field.cursor_blink = self.context.settings.cursor_blink
                        yield field
            table: DataTable[str | Text] = DataTable(id="event-table", cursor_type="row", zebra_stripes=True)
            table.add_columns(*EVENT_COLUMNS)
            yield table
            yield Static("", id="event-detail")
            yield Label("", id="page")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#event-table", DataTable).focus()
        if not self.allowed:
            who = f"{self.user.username} is {self.user.role}"
            self.show_status(f"only an engineer or an admin may use this screen ({who})", error=True)
            return
        self.load(None)

    # -- reading ---------------------------------------------------------------------------------------------

    def _read(self, filters: EventFilter, start: EventCursor | None) -> EventPage:
        connection = open_read_only(self.context.settings.data_dir / "tosca.db")
        try:
            return fetch_page(connection, filters, after=start)
        finally:
            connection.close()

    @work(exclusive=True, group="events-load", exit_on_error=False)
    async def load(self, start: EventCursor | None, *, filters: EventFilter | None = None) -> None:
        """Read the page after ``start`` with ``filters`` (default: the current ones) and show it; a refusal
        leaves the rows shown as they were."""
        wanted = filters if filters is not None else self.filters
        try:
            page = await asyncio.to_thread(self._read, wanted, start)
        except StorageError as exc:
            self.show_status(f"refused: {one_line(exc)}", error=True)
            return
        if filters is not None:
            self._previous = []
        self.filters = wanted
        self._current_start = start
        self.show_page(page)

    def show_page(self, page: EventPage) -> None:
        table: DataTable[str | Text] = self.query_one("#event-table", DataTable)
        cells: list[list[Cell]] = [
            [
                f"{row.timestamp:%Y-%m-%d %H:%M:%S}",
                "—" if row.session_id is None else str(row.session_id),
                plain(row.severity, _SEVERITY_STYLE.get(row.severity, "")),
                plain(row.event_type),
                plain(describe(row)),
            ]
            for row in page.rows
        ]
        fill_table(table, EVENT_COLUMNS, cells, keys=[row.key for row in page.rows], limits={3: 20, 4: 200})
        self.page = page
        number = len(self._previous) + 1
        if not page.rows:
            text = f"no rows match: {self.filters.describe()}"
        else:
            more = "more follow (PageDown)" if page.next_cursor is not None else "last page"
            text = f"page {number}, {len(page.rows)} rows, newest first; {more}; {self.filters.describe()}"
        self.query_one("#page", Label).update(plain(text))
        self.show_detail()
        self.refresh_bindings()

    def highlighted(self) -> EventRow | None:
        """The row under the table's cursor, if any."""
        if self.page is None or not self.page.rows:
            return None
        index = self.query_one("#event-table", DataTable).cursor_row
        return self.page.rows[index] if 0 <= index < len(self.page.rows) else None

    def show_detail(self) -> None:
        row = self.highlighted()
        self.query_one("#event-detail", Static).update(
            plain(detail_text(row), keep_newlines=True) if row else ""
        )

    @on(DataTable.RowHighlighted, "#event-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()
        self.refresh_bindings()

    def show_status(self, text: str, *, error: bool) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text))
        label.set_class(error, "error")

    # -- filters ---------------------------------------------------------------------------------------------

    def read_filters(self) -> EventFilter:
        """The filters typed (raises :class:`~storage.event_query.EventFilterError` naming a bad one)."""
        values = {name: self.query_one(f"#filter-{name}", Input).value for name, _l, _p in FILTER_FIELDS}
        return EventFilter.build(**values)

    @on(Input.Submitted)
    def apply_filters(self, event: Input.Submitted) -> None:
        """Enter in a filter field: check every filter and show the newest page that matches."""
        if not (event.input.id or "").startswith("filter-") or not self.allowed:
            return
        try:
            wanted = self.read_filters()
        except StorageError as exc:
            self.show_status(f"filter refused: {one_line(exc)}", error=True)
            return
        self.show_status("", error=False)
        self.load(None, filters=wanted)

    def action_filters(self) -> None:
        self.query_one("#filter-session", Input).focus()

    def action_clear_filters(self) -> None:
        for name, _label, _hint in FILTER_FIELDS:
            self.query_one(f"#filter-{name}", Input).value = ""
        self.show_status("", error=False)
        self.load(None, filters=EventFilter())
        self.query_one("#event-table", DataTable).focus()

    # -- paging and opening ----------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self.allowed and action != "back":
            return False
        if action == "next_page":
            return (self.page is not None and self.page.next_cursor is not None) or None
        if action == "previous_page":
            return bool(self._previous) or None
        if action == "export":
            row = self.highlighted()
            return (row is not None and row.session_id is not None) or None
        return True

    def action_next_page(self) -> None:
        if self.page is None or self.page.next_cursor is None:
            return
        self._previous.append(self._current_start)
        self.load(self.page.next_cursor)

    def action_previous_page(self) -> None:
        if not self._previous:
            return
        self.load(self._previous.pop())

    @on(DataTable.RowSelected, "#event-table")
    def open_session(self, event: DataTable.RowSelected) -> None:
        """Enter on a row: its session, read-only, as the technician's history shows it."""
        from tui.screens.past_session import PastSessionScreen

        row = self.highlighted()
        if row is None or not self.allowed:
            return
        if row.session_id is None:
            self.show_status("this row belongs to no session", error=True)
            return
        self.show_status("", error=False)
        self.app.push_screen(PastSessionScreen(self.context, self.user, row.session_id))

    def action_export(self) -> None:
        """F6: the research export, for the highlighted row's session."""
        from tui.screens.export import ExportScreen

        row = self.highlighted()
        if row is None or row.session_id is None:
            return
        self.app.push_screen(ExportScreen(self.context, self.user, session_id=row.session_id))

    def action_back(self) -> None:
        self.dismiss(None)


__all__ = ["EVENT_COLUMNS", "FILTER_FIELDS", "SafetyEventsScreen", "describe", "detail_text"]
