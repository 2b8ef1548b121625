"""The research export: one session, or every ended session that started in a time range, written as a new
folder under the data directory's ``exports/`` (what it holds: :mod:`storage.export`, docs/exports.md).

Fields: the session's id, or a time range (from inclusive, to exclusive; ISO dates or date-times, UTC); the
format (``csv``, ``json``, or empty for both); the folder's name under ``exports/`` (empty:
``session_<id>_<UTC time>`` or ``sessions_<from>_<to>_<UTC time>``); and whether the export is identified
(subject demographics, technicians' full names and free-text notes added; de-identified otherwise). Ctrl+S or
F5 exports. Refused, with one line saying why and nothing written: both a session and a range given, or
neither; a bad date or a range the wrong way round; an unknown or still open session; no ended session in the
range; a folder name that is not a plain name or that exists already (an export never overwrites); a disk
error. Done, the status line says what was written where. Every export is an audit row naming the user.

The export reads the database directly (short read transactions) and writes files in a worker thread: it
needs no controller. On the remote console (read-only records) the controller writes it for the person signed
in there (``remote_export``: :mod:`control.controller.remote`), readable by the records group, and the status
line then gives the command that fetches it over SSH as a tar file
(``ssh -T <user>@<kiosk> fetch-export NAME > NAME.tar``). For engineers and admins.
``ExportScreen(context, user, session_id=N)`` opens with the session filled in (F6 on the safety log
browser).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Checkbox, Footer, Input, Label

from control.account_rules import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from storage import DataDir
from storage.audit_query import parse_time
from storage.errors import StorageError, one_line
from storage.export import ExportError, ExportResult, export_range, export_session
from tui.remote import RECORDS_WORK_TIMEOUT_S, fetch_command, is_remote, remote_refusal
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.widgets.header import ConsoleHeader

if TYPE_CHECKING:
    from control.messages import RemoteExportWritten

#: Roles that may export.
ROLES = frozenset({"engineer", "admin"})
#: The fields: (id, label, placeholder).
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("session", "Session", "id (or leave empty and give a range)"),
    ("since", "From", "YYYY-MM-DD (range start, UTC)"),
    ("until", "To", "YYYY-MM-DD (range end, exclusive)"),
    ("format", "Format", "csv or json (empty: both)"),
    ("folder", "Folder", "name under exports/ (empty: automatic)"),
)


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What the fields ask for, checked: a session id or a range (naive UTC), the formats (None: both), the
    target folder (None: an automatic name) and whether the export is identified."""

    session_id: int | None
    since: datetime | None
    until: datetime | None
    formats: list[str] | None
    target: Path | None
    identified: bool


def read_request(values: dict[str, str], identified: bool, exports: Path) -> ExportRequest:
    """Check the typed fields; raises :class:`~storage.export.ExportError` saying what is wrong."""
    session_text = values.get("session", "").strip()
    since_text, until_text = values.get("since", "").strip(), values.get("until", "").strip()
    session_id: int | None = None
    if session_text:
        if not session_text.isdigit() or int(session_text) < 1 or len(session_text) > 12:
            raise ExportError(f"session: {session_text[:20]!r} is not a session id (a whole number)")
        session_id = int(session_text)
    has_range = bool(since_text or until_text)
    if session_id is not None and has_range:
        raise ExportError("give a session or a time range, not both")
    if session_id is None and not has_range:
        raise ExportError("give a session id, or a time range (from and to)")
    since = until = None
    if has_range:
        if not (since_text and until_text):
            raise ExportError("a time range needs both its start (from) and its end (to)")
        since = parse_time(since_text, name="from")
        until = parse_time(until_text, name="to")
        if since >= until:
            raise ExportError("the start of the time range must be before its end")
    format_text = values.get("format", "").strip().lower()
    if format_text not in ("", "csv", "json"):
        raise ExportError(f"format: {format_text[:20]!r} is not csv or json (empty for both)")
    folder = values.get("folder", "").strip()
    target = None
    if folder:
        if "/" in folder or "\\" in folder or folder.startswith(".") or any(ord(c) < 32 for c in folder):
            raise ExportError("folder: a plain name under exports/ (no slashes, not starting with a dot)")
        target = exports / folder
    return ExportRequest(
        session_id=session_id,
        since=since,
        until=until,
        formats=[format_text] if format_text else None,
        target=target,
        identified=identified,
    )


class ExportScreen(Screen[None]):
    """Export sessions for research (see the module documentation)."""

    DEFAULT_CSS = """
    ExportScreen #export-form {
        height: 1fr;
        padding: 1 2;
    }
    ExportScreen #export-fields {
        grid-size: 2;
        grid-columns: 10 1fr;
        grid-rows: 1;
        grid-gutter: 1 1;
        height: auto;
    }
    ExportScreen #export-fields Label {
        color: $text-muted;
    }
    ExportScreen #export-fields Input {
        background: $panel;
    }
    ExportScreen #export-fields Input:focus {
        background: $primary 30%;
    }
    ExportScreen #identified {
        margin: 1 0 0 0;
        height: auto;
    }
    ExportScreen #export-help {
        margin: 1 0 0 0;
        width: 1fr;
        height: auto;
        color: $text-muted;
    }
    ExportScreen #status {
        margin: 1 0 0 0;
        width: 1fr;
        height: auto;
    }
    ExportScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "export", "Export"),
        Binding("f5", "export", "Export", show=False),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo, *, session_id: int | None = None) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.initial_session = session_id
        #: The last export written, None until one is.
        self.result: ExportResult | None = None
        #: The last export the controller wrote for this remote console, None until one is.
        self.remote_result: RemoteExportWritten | None = None
        #: True while an export is being written.
        self.busy = False

    @property
    def allowed(self) -> bool:
        return self.user.role in ROLES

    @property
    def exports_dir(self) -> Path:
        return Path(self.context.settings.data_dir) / "exports"

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Research export",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="export-form"):
            with Grid(id="export-fields"):
                for name, label, placeholder in FIELDS:
                    yield Label(label)
                    field = Input(placeholder=placeholder, id=f"field-{name}", compact=True)
                    field.cursor_blink = self.context.settings.cursor_blink
                    if name == "session" and self.initial_session is not None:
                        field.value = str(self.initial_session)
                    yield field
            yield Checkbox(
                "Identified: with demographics, full names and notes (audited)",
                id="identified",
                compact=True,
            )
            yield Label(
                "De-identified unless asked: subject codes only. Each session: summary, events, safety log, "
                "telemetry, protocol, power trace picture, snapshots.",
                id="export-help",
            )
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#field-session", Input).focus()
        if not self.allowed:
            who = f"{self.user.username} is {self.user.role}"
            self.show_status(f"only an engineer or an admin may use this screen ({who})", error=True)

    def show_status(self, text: str, *, error: bool) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text, keep_newlines=True))
        label.set_class(error, "error")

    def _terminal(self) -> str | None:
        terminal = getattr(self.app, "terminal", None)
        return terminal if isinstance(terminal, str) else self.context.settings.terminal

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self.allowed and action != "back":
            return False
        return True

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        """Enter in the last field exports; in another it moves to the next."""
        if event.input.id == "field-folder":
            self.action_export()
        else:
            self.focus_next()

    def _values(self) -> dict[str, str]:
        return {name: self.query_one(f"#field-{name}", Input).value for name, _l, _p in FIELDS}

    def action_export(self) -> None:
        """Check the fields and write the export (in a worker)."""
        if not self.allowed or self.busy:
            return
        refusal = remote_refusal(self.context, "export.write")
        if refusal is not None:
            self.show_status(refusal, error=True)
            return
        identified = self.query_one("#identified", Checkbox).value
        try:
            request = read_request(self._values(), identified, self.exports_dir)
        except StorageError as exc:
            self.show_status(f"refused: {one_line(exc)}", error=True)
            return
        self.busy = True
        self.show_status("exporting…", error=False)
        self.run_export(request)

    def _write(self, request: ExportRequest) -> ExportResult:
        data_dir = DataDir(self.context.settings.data_dir)
        terminal = self._terminal()
        if request.session_id is not None:
            return export_session(
                data_dir,
                request.session_id,
                target=request.target,
                formats=request.formats,
                identified=request.identified,
                user=self.user.username,
                terminal=terminal,
            )
        assert request.since is not None and request.until is not None
        return export_range(
            data_dir,
            request.since,
            request.until,
            target=request.target,
            formats=request.formats,
            identified=request.identified,
            user=self.user.username,
            terminal=terminal,
        )

    async def _write_remote(self, request: ExportRequest) -> RemoteExportWritten:
        """The controller writes the export for the person signed in on the remote console's link."""
        from control.messages import RemoteExport, RemoteExportWritten
        from tui.link import read_reply

        link = self.context.link
        if link is None:
            raise ControllerUnavailable("no link to the controller")
        formats: list[Literal["csv", "json"]] = [
            "csv" if name == "csv" else "json" for name in request.formats or []
        ]
        command = RemoteExport(
            session_id=request.session_id,
            since=request.since,
            until=request.until,
            formats=formats,
            folder=request.target.name if request.target is not None else None,
            identified=request.identified,
        )
        return read_reply(RemoteExportWritten, await link.call(command, RECORDS_WORK_TIMEOUT_S))

    @work(exclusive=True, group="research-export", exit_on_error=False)
    async def run_export(self, request: ExportRequest) -> None:
        try:
            if is_remote(self.context):
                written = await self._write_remote(request)
            else:
                result = await asyncio.to_thread(self._write, request)
        except (StorageError, OSError, CommandFailed, ControllerUnavailable, ValueError) as exc:
            self.show_status(f"refused: {one_line(exc)}", error=True)
            return
        finally:
            self.busy = False
        if is_remote(self.context):
            self.remote_result = written
            fetch = fetch_command(written.folder)
            self.show_status(
                f"{written.description}\nfetch it from your own machine with:\n{fetch}", error=False
            )
            return
        self.result = result
        self.show_status(result.describe(), error=False)

    def action_back(self) -> None:
        self.dismiss(None)


__all__ = ["ExportRequest", "ExportScreen", "read_request"]
