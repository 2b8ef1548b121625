"""The audit trail: every recorded action, newest first, filtered and paged, exported to CSV.

Filters: user, action, outcome, from and to (ISO dates or date-times, UTC) and free text. Enter in any filter
field applies them; a bad value (a date that is not a date, a range the wrong way round, an unknown outcome)
is refused with one line saying why, and the rows shown stay as they were. PageDown / PageUp move by one
page of :data:`storage.audit_query.PAGE_SIZE` rows, found by keyset on the timestamp and id, so a page deep
in a million rows comes as quickly as the first. F2 goes to the filters, F3 clears them. F5 exports every
row matching the filters to ``<data dir>/exports/audit_YYYYMMDD_HHMMSS.csv`` (cells that a spreadsheet
would run as a formula are guarded) and shows the path; the export is itself audited. On the remote console
(read-only records) the controller writes it for the admin signed in there (``remote_audit_export``:
:mod:`control.controller.remote`) and the status line gives the command that fetches it over SSH.

Everything shown from the log (names, actions, terminals, details) is drawn as text, never as markup.
Open it with ``AuditScreen(context, user)``.
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
from textual.widgets import DataTable, Footer, Input, Label

from control.account_rules import UserInfo
from storage.audit_query import (
    AuditFilter,
    AuditPage,
    Cursor,
    export_csv,
    fetch_page,
    open_read_only,
    record_action,
)
from storage.errors import StorageError, one_line
from tui.remote import RECORDS_WORK_TIMEOUT_S, fetch_command, is_remote, remote_refusal
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: Filter fields: (id, label, placeholder).
FILTER_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("user", "User", "name"),
    ("action", "Action", "e.g. login"),
    ("outcome", "Outcome", "success/failure"),
    ("since", "From", "YYYY-MM-DD"),
    ("until", "To", "YYYY-MM-DD"),
    ("text", "Text", "any text"),
)


#: The audit table's columns, in order.
AUDIT_COLUMNS = ("Time (UTC)", "User", "Action", "Outcome", "Details", "Terminal")


class AuditScreen(Screen[None]):
    """Browse, filter and export ``audit_log`` (an admin's screen)."""

    DEFAULT_CSS = """
    AuditScreen #audit {
        height: 1fr;
        padding: 0 1;
    }
    AuditScreen .filter-row {
        height: 1;
        margin: 1 0 0 0;
    }
    AuditScreen .filter-row Label {
        width: auto;
        padding: 0 1 0 0;
        color: $text-muted;
    }
    AuditScreen .filter-row Input {
        width: 1fr;
        margin: 0 1 0 0;
        background: $panel;
    }
    AuditScreen .filter-row Input:focus {
        background: $primary 30%;
    }
    AuditScreen #audit-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    AuditScreen #page {
        height: 1;
        color: $text-muted;
    }
    AuditScreen #status {
        height: 1;
    }
    AuditScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        # Priority: the table would otherwise take PageDown/PageUp to scroll within the page.
        Binding("pagedown", "next_page", "Next page", priority=True),
        Binding("pageup", "previous_page", "Prev page", priority=True),
        Binding("f2", "filters", "Filters"),
        Binding("f3", "clear_filters", "Clear"),
        Binding("f5", "export", "Export CSV"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.filters = AuditFilter()
        #: The page shown; None until the first has been read.
        self.page: AuditPage | None = None
        #: Where each page before the current one started (None: the newest), for PageUp.
        self._previous: list[Cursor | None] = []
        self._current_start: Cursor | None = None
        #: The last export written (shown under the table).
        self.last_export: str | None = None

    def _terminal(self) -> str | None:
        terminal = getattr(self.app, "terminal", None)
        return terminal if isinstance(terminal, str) else self.context.settings.terminal

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Audit trail", sim=self.context.settings.sim, user_text=f"{self.user.username} ({self.user.role})"
        )
        with Vertical(id="audit"):
            for row in (FILTER_FIELDS[:3], FILTER_FIELDS[3:]):
                with Horizontal(classes="filter-row"):
                    for name, label, placeholder in row:
                        yield Label(label)
                        field = Input(placeholder=placeholder, id=f"filter-{name}", compact=True)
                        field.cursor_blink = self.context.settings.cursor_blink
                        yield field
            table: DataTable[str | Text] = DataTable(id="audit-table", cursor_type="row", zebra_stripes=True)
            table.add_columns(*AUDIT_COLUMNS)
            yield table
            yield Label("", id="page")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#audit-table", DataTable).focus()
        if self.user.role != "admin":
            # Reached only from an admin's menu; anyone else is told so and nothing is read.
            self.show_status(
                f"only an admin may use this screen ({self.user.username} is {self.user.role})", error=True
            )
            return
        self.load(None)

    # -- reading ---------------------------------------------------------------------------------------------

    def _read(self, filters: AuditFilter, start: Cursor | None) -> AuditPage:
        connection = open_read_only(self.context.settings.data_dir / "tosca.db")
        try:
            return fetch_page(connection, filters, after=start)
        finally:
            connection.close()

    @work(exclusive=True, group="audit-load", exit_on_error=False)
    async def load(self, start: Cursor | None, *, filters: AuditFilter | None = None) -> None:
        """Read the page starting after ``start`` with ``filters`` (default: the current ones) and show it."""
        wanted = filters if filters is not None else self.filters
        try:
            page = await asyncio.to_thread(self._read, wanted, start)
        except StorageError as exc:
            self.show_status(one_line(exc), error=True)
            return
        self.filters = wanted
        self._current_start = start
        self.show_page(page)

    def show_page(self, page: AuditPage) -> None:
        table: DataTable[str | Text] = self.query_one("#audit-table", DataTable)
        # Columns as wide as this page's cells: a wide cell on an earlier page must not push them aside.
        cells: list[list[Cell]] = [
            [
                f"{row.timestamp:%Y-%m-%d %H:%M:%S}",
                plain(row.username or "—"),
                plain(row.action),
                plain(row.outcome, "bold red" if row.outcome == "failure" else ""),
                plain(row.details_summary(120)),
                plain(row.terminal or "—"),
            ]
            for row in page.rows
        ]
        fill_table(table, AUDIT_COLUMNS, cells, keys=[str(row.audit_id) for row in page.rows])
        self.page = page
        number = len(self._previous) + 1
        more = "more follow (PageDown)" if page.next_cursor is not None else "last page"
        if page.searched_to is not None:
            text = (
                f"page {number}, {len(page.rows)} rows; searched back to {page.searched_to:%Y-%m-%d %H:%M}, "
                f"PageDown searches further; {self.filters.describe()}"
            )
        elif not page.rows:
            text = f"no rows match: {self.filters.describe()}"
        else:
            text = f"page {number}, {len(page.rows)} rows, newest first; {more}; {self.filters.describe()}"
        self.query_one("#page", Label).update(plain(text))
        self.refresh_bindings()

    def show_status(self, text: str, *, error: bool) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text))
        label.set_class(error, "error")

    # -- filters ---------------------------------------------------------------------------------------------

    def _field(self, name: str) -> str:
        return self.query_one(f"#filter-{name}", Input).value

    def read_filters(self) -> AuditFilter:
        """The filters typed (raises :class:`~storage.audit_query.AuditFilterError` naming a bad one)."""
        return AuditFilter.build(**{name: self._field(name) for name, _label, _hint in FILTER_FIELDS})

    @on(Input.Submitted)
    def apply_filters(self, event: Input.Submitted) -> None:
        """Enter in a filter field: check every filter and show the newest page that matches."""
        if not (event.input.id or "").startswith("filter-"):
            return
        try:
            wanted = self.read_filters()
        except StorageError as exc:
            self.show_status(f"filter refused: {one_line(exc)}", error=True)
            return
        self.show_status("", error=False)
        self._previous = []
        self.load(None, filters=wanted)

    def action_filters(self) -> None:
        self.query_one("#filter-user", Input).focus()

    def action_clear_filters(self) -> None:
        for name, _label, _hint in FILTER_FIELDS:
            self.query_one(f"#filter-{name}", Input).value = ""
        self.show_status("", error=False)
        self._previous = []
        self.load(None, filters=AuditFilter())
        self.query_one("#audit-table", DataTable).focus()

    # -- paging ----------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.user.role != "admin" and action != "back":
            return False
        if action == "next_page":
            return (self.page is not None and self.page.next_cursor is not None) or None
        if action == "previous_page":
            return bool(self._previous) or None
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

    # -- export ----------------------------------------------------------------------------------------------

    @work(exclusive=True, group="audit-export", exit_on_error=False)
    async def action_export(self) -> None:
        """Write every row matching the filters applied to a CSV file in ``exports/``; show its path."""
        refusal = remote_refusal(self.context, "audit.export")
        if refusal is not None:
            self.show_status(refusal, error=True)
            return
        filters = self.filters
        data_dir = self.context.settings.data_dir
        self.show_status("exporting…", error=False)
        if is_remote(self.context):
            await self.export_remote(filters)
            return
        try:
            result = await asyncio.to_thread(export_csv, data_dir / "tosca.db", data_dir / "exports", filters)
        except (StorageError, OSError) as exc:
            self.show_status(f"export failed: {one_line(exc)}", error=True)
            return
        try:
            await asyncio.to_thread(
                record_action,
                data_dir / "tosca.db",
                "audit_export",
                "success",
                user=self.user.username,
                terminal=self._terminal(),
                details={"file": str(result.path), "rows": result.rows, "filters": filters.describe()},
            )
        except StorageError as exc:
            self.show_status(f"exported, but not recorded: {one_line(exc)}", error=True)
            return
        self.last_export = str(result.path)
        self.show_status(f"exported {result.rows} rows to {escape_controls(str(result.path))}", error=False)

    async def export_remote(self, filters: AuditFilter) -> None:
        """The controller writes the CSV for the admin signed in on this remote console, audits it with where
        the console is used from, and the status line says how to fetch it over SSH."""
        from control.ipc_errors import CommandFailed, ControllerUnavailable
        from control.messages import RemoteAuditExport, RemoteAuditExported
        from tui.link import read_reply

        link = self.context.link
        try:
            if link is None:
                raise ControllerUnavailable("no link to the controller")
            command = RemoteAuditExport(
                user=filters.user,
                action=filters.action,
                outcome=filters.outcome,
                since=filters.since,
                until=filters.until,
                text=filters.text,
            )
            done = read_reply(RemoteAuditExported, await link.call(command, RECORDS_WORK_TIMEOUT_S))
        except (CommandFailed, ControllerUnavailable, ValueError) as exc:
            self.show_status(f"export failed: {one_line(exc)}", error=True)
            return
        self.last_export = done.path
        self.show_status(
            f"exported {done.rows} rows to {escape_controls(done.path)}; fetch it from your own machine "
            f"with: {fetch_command(done.file)}",
            error=False,
        )

    def action_back(self) -> None:
        self.dismiss(None)
