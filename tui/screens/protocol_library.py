"""The protocol library (an admin's screen): every protocol with every version and its approval status.

One row per version, oldest first within each protocol: the protocol's name (marked when retired), the
version, its status (``draft``, ``submitted``, ``approved``, ``rejected``), its author and who decided (or
submitted) it; the note says which version is the one used for treatment (``in use``), or why a version was
rejected. The
line under the table says all about the highlighted version.

Keys: ``i`` imports a protocol file (its path typed, and the protocol's name: a new protocol, or the next
draft version of an existing one), checked as ``tosca protocol validate`` checks it; ``e`` opens the
highlighted version's steps in the protocol editor (``tui/screens/protocol_editor.py``), whose save is the
protocol's next draft version, and ``n`` the editor for a new protocol; ``s`` submits the highlighted draft
for approval; ``a`` approves it and ``x`` rejects it with a reason (an admin other than its author); ``r``
retires the highlighted protocol (kept for history, no longer offered for treatment). Every action goes
through ``control/protocol_approval.py``, which checks again in the database (the admin's role now, what
another admin did meanwhile) and audits the action or the refusal; each refusal is shown here with its
reason, every error of a refused file included. A refusal this screen can tell before asking (the author
approving or rejecting their own version, a version already approved or rejected, a name that cannot be a
protocol's, someone who is not an admin) is refused here at once and audited all the same.

Open it with ``ProtocolLibraryScreen(context, user)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label
from textual.worker import Worker, WorkerState

from control.account_rules import UserInfo
from control.protocol_approval import (
    ACTION_APPROVE,
    ACTION_EDIT,
    ACTION_IMPORT,
    ACTION_REJECT,
    ACTION_RETIRE,
    ACTION_SUBMIT,
    APPROVED,
    DRAFT,
    REJECTED,
    SUBMITTED,
    ApprovalRefused,
    ImportResult,
    LibraryEntry,
    VersionInfo,
    change_version_status,
    check_name,
    import_protocol_file,
    list_library,
    record_refusal,
    retire_protocol,
)
from storage.errors import one_line
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.screens.dialogs import ConfirmDialog, DialogScreen, ReasonDialog
from tui.screens.protocol_editor import EditorStart, ProtocolEditorScreen
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: The table's columns.
LIBRARY_COLUMNS = ("Protocol", "V", "Status", "Author", "Decided by", "Note")
#: Widest the name and note columns get (cut with an ellipsis; the line under the table has them whole).
_NAME_LIMIT = 34
_NOTE_LIMIT = 28
#: The name's limit on a screen narrower than :data:`_WIDE` columns.
_NARROW_NAME_LIMIT = 22
_WIDE = 110


class ImportDialog(DialogScreen[ImportResult | None]):
    """The path of a protocol file and the protocol's name; returns what was stored, or None on Escape.
    A refused file stays in the dialog with every error shown."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Next / import", priority=True)]

    def __init__(
        self,
        sessions_owner: ProtocolLibraryScreen,
        name: str,
        *,
        cursor_blink: bool,
    ) -> None:
        super().__init__("Import a protocol file", cursor_blink=cursor_blink)
        self.owner = sessions_owner
        self.initial_name = name
        #: True while the import is being stored.
        self.saving = False

    def compose(self) -> ComposeResult:
        with self.panel():
            yield Label(
                plain("A new protocol, or the next draft version of an existing one (same name)."),
                classes="dialog-prompt",
            )
            with Grid(classes="dialog-grid"):
                yield Label("File")
                yield self.text_input("path", "path of the protocol JSON file")
                yield Label("Name")
                yield self.text_input("name", "the protocol's name", value=self.initial_name)
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field("path").focus()

    def action_submit(self) -> None:
        if self.saving:
            return
        focused = self.focused
        if focused is not None and focused.id == "path":
            if not self.field("path").value.strip():
                self.show_error("type the path of a protocol file")
                return
            self.show_error("")
            self.field("name").focus()
            return
        try:
            check_name(self.field("name").value)
        except ApprovalRefused as exc:
            self.show_error(str(exc))
            self.field("name").focus()
            self.owner.audit_refusal(
                ACTION_IMPORT, str(exc), protocol=self.field("name").value.strip() or None
            )
            return
        self.saving = True
        self.show_error("checking and storing...")
        self.run_import(self.field("path").value.strip(), self.field("name").value)

    @work(exclusive=True, group="protocol-import", exit_on_error=False)
    async def run_import(self, path: str, name: str) -> None:
        try:
            done = await self.owner.import_file(path, name)
        except ApprovalRefused as exc:
            self.saving = False
            self.show_error("; ".join(exc.errors))
            return
        self.saving = False
        self.dismiss(done)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR:
            self.saving = False
            self.show_error(f"not stored: {one_line(event.worker.error or RuntimeError('failed'))}")


class ProtocolLibraryScreen(Screen[None]):
    """Every protocol and version (an admin's screen); import, submit, approve, reject, retire."""

    DEFAULT_CSS = """
    ProtocolLibraryScreen #library {
        height: 1fr;
        padding: 0 1;
    }
    ProtocolLibraryScreen #library-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    ProtocolLibraryScreen #library-detail {
        width: 100%;
        height: auto;
        color: $text-muted;
    }
    ProtocolLibraryScreen #status {
        width: 100%;
        height: auto;
    }
    ProtocolLibraryScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("i", "import_file", "Import"),
        Binding("e", "edit", "Edit"),
        Binding("n", "new_protocol", "New"),
        Binding("s", "submit", "Submit"),
        Binding("a", "approve", "Approve"),
        Binding("x", "reject", "Reject"),
        Binding("r", "retire", "Retire"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        #: Every protocol as last read.
        self.entries: list[LibraryEntry] = []
        #: The table's rows: each version with its protocol.
        self.rows: list[tuple[LibraryEntry, VersionInfo]] = []
        #: True once the table has been filled the first time.
        self.loaded = False
        self._select_after_load: tuple[str, int] | None = None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Protocol library",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="library"):
            yield DataTable(id="library-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="library-detail")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_resize(self) -> None:
        if self.loaded:
            self._select_after_load = self.highlighted_key()
            self.show_entries()

    def on_mount(self) -> None:
        self.query_one("#library-table", DataTable).focus()
        if self.user.role != "admin":
            self.show_status(
                f"only an admin may use this screen ({self.user.username} is {self.user.role})", error=True
            )
            return
        self.reload()

    # -- the list --------------------------------------------------------------------------------------------

    @property
    def terminal(self) -> str | None:
        terminal = getattr(self.app, "terminal", None)
        return terminal if isinstance(terminal, str) else self.context.accounts.terminal

    def reload(self, select: tuple[str, int] | None = None) -> None:
        """Read the library again (``select``, a protocol name and version, is highlighted afterwards)."""
        self._select_after_load = select or self.highlighted_key()
        self.load()

    @work(exclusive=True, group="library-load", exit_on_error=False)
    async def load(self) -> None:
        self.entries = await list_library(self.context.accounts.sessions)
        self.show_entries()
        self.loaded = True

    def show_entries(self) -> None:
        table: DataTable[Cell] = self.query_one("#library-table", DataTable)
        self.rows = [(entry, version) for entry in self.entries for version in entry.versions]
        cells: list[list[Cell]] = []
        for entry, version in self.rows:
            name = entry.name + ("" if entry.active else " (retired)")
            in_use = entry.active and entry.approved is not None and entry.approved.version == version.version
            note = "in use" if in_use else (version.rejection_reason or "")
            decided = version.approved_by or version.rejected_by or version.submitted_by or ""
            style = {APPROVED: "bold", DRAFT: "", SUBMITTED: "italic"}.get(version.status, "dim")
            cells.append(
                [
                    plain(name),
                    plain(str(version.version)),
                    plain(version.status, style),
                    plain(version.created_by),
                    plain(decided),
                    plain(note),
                ]
            )
        keys = [f"{entry.protocol_id}:{version.version}" for entry, version in self.rows]
        wide = not self.size.width or self.size.width >= _WIDE
        limits = {0: _NAME_LIMIT if wide else _NARROW_NAME_LIMIT, 5: _NOTE_LIMIT}
        fill_table(table, LIBRARY_COLUMNS, cells, keys=keys, limits=limits)
        select = self._select_after_load
        found = [(entry.name, version.version) for entry, version in self.rows]
        if select is not None and select in found:
            table.move_cursor(row=found.index(select))
        if not self.rows:
            self.show_status("no protocol yet: press i to import a protocol file", error=False)
        self.show_detail()
        self.refresh_bindings()

    def highlighted(self) -> tuple[LibraryEntry, VersionInfo] | None:
        table: DataTable[Cell] = self.query_one("#library-table", DataTable)
        row = table.cursor_row
        if not self.rows or not 0 <= row < len(self.rows) or row >= table.row_count:
            return None
        return self.rows[row]

    def highlighted_key(self) -> tuple[str, int] | None:
        found = self.highlighted()
        return (found[0].name, found[1].version) if found is not None else None

    def show_detail(self) -> None:
        """All about the highlighted version on the line under the table."""
        found = self.highlighted()
        text = ""
        if found is not None:
            entry, version = found
            parts = [f"{entry.name} v{version.version}: {version.status}"]
            created = f" at {version.created_at:%Y-%m-%d %H:%M} UTC" if version.created_at else ""
            parts.append(f"by {version.created_by}{created}")
            if version.change_summary:
                parts.append(version.change_summary)
            if version.submitted_by:
                parts.append(f"submitted by {version.submitted_by}")
            if version.approved_by:
                when = f" at {version.approved_at:%Y-%m-%d %H:%M} UTC" if version.approved_at else ""
                parts.append(f"approved by {version.approved_by}{when}")
            if version.rejected_by:
                parts.append(f"rejected by {version.rejected_by}: {version.rejection_reason}")
            if not entry.active:
                parts.append("protocol retired")
            text = "; ".join(parts)
        self.query_one("#library-detail", Label).update(plain(text))

    @on(DataTable.RowHighlighted, "#library-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()
        self.refresh_bindings()

    # -- actions ---------------------------------------------------------------------------------------------

    def show_status(self, text: str, *, error: bool = True) -> None:
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed database read or write is shown on the status line."""
        if event.state is WorkerState.ERROR:
            self.show_status(f"failed: {one_line(event.worker.error or RuntimeError('failed'))}")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys shown dimmed where they cannot apply. Approve and reject stay live on every version of an
        active protocol: pressed where they are refused (a decided version, one's own), the refusal is said
        and audited rather than silently ignored."""
        if action in ("back", "import_file", "new_protocol"):
            return True
        if self.user.role != "admin":
            return True  # refused and audited by the action itself
        found = self.highlighted()
        if found is None:
            return None
        entry, version = found
        if action == "retire":
            return entry.active or None
        if not entry.active:
            return None
        if action == "submit":
            return version.status == DRAFT or None
        return True

    def audit_refusal(
        self,
        action: str,
        reason: str,
        *,
        protocol: str | None = None,
        version: VersionInfo | None = None,
        new_status: str | None = None,
    ) -> None:
        """Say ``reason`` on the status line and audit it as a refused ``action`` (decided here, before the
        library was asked)."""
        self.show_status(f"refused: {reason}")
        self.write_refusal(action, reason, protocol, version, new_status)

    @work(group="library-refusal", exit_on_error=False)
    async def write_refusal(
        self,
        action: str,
        reason: str,
        protocol: str | None,
        version: VersionInfo | None,
        new_status: str | None,
    ) -> None:
        await record_refusal(
            self.context.accounts.sessions,
            action,
            self.user.username,
            reason,
            protocol=protocol,
            version=None if version is None else version.version,
            old_status=None if version is None else version.status,
            new_status=new_status,
            terminal=self.terminal,
        )

    def refused_here(self, action: str, new_status: str | None) -> bool:
        """Refuse (and audit) ``action`` on the highlighted version when this screen already knows the
        library would: not an admin, the author deciding their own version, a version already decided."""
        found = self.highlighted()
        entry, version = found if found is not None else (None, None)
        name = None if entry is None else entry.name
        reason: str | None = None
        if self.user.role != "admin":
            reason = (
                f"only an admin may change the protocol library ({self.user.username} is {self.user.role})"
            )
        elif entry is not None and version is not None and new_status in (APPROVED, REJECTED):
            verb = "approve" if new_status == APPROVED else "reject"
            if version.status in (APPROVED, REJECTED):
                reason = (
                    f"{entry.name} v{version.version}: already {version.status}; a version is decided once"
                )
            elif version.created_by == self.user.username:
                who = self.user.username
                reason = f"{entry.name} v{version.version}: {who} is its author; another admin must {verb} it"
        if reason is None:
            return False
        self.audit_refusal(action, reason, protocol=name, version=version, new_status=new_status)
        return True

    def action_back(self) -> None:
        self.dismiss(None)

    async def import_file(self, typed: str, name: str) -> ImportResult:
        """Store the file at the ``typed`` path as the next version of ``name``, expecting the newest version
        shown here."""

        shown = next((entry for entry in self.entries if entry.name == name.strip()), None)
        latest = shown.latest.version if shown is not None and shown.latest is not None else 0
        return await import_protocol_file(
            self.context.accounts.sessions,
            Path(typed),
            name=name,
            admin=self.user.username,
            expected_latest=latest,
            terminal=self.terminal,
        )

    def _editor_done(self, result: ImportResult | None) -> None:
        if result is not None:
            kind = "a new protocol" if result.created_protocol else "its next version"
            self.show_status(
                f"{result.name} v{result.version} saved as a draft ({kind}); another admin approves it",
                error=False,
            )
            self.reload(select=(result.name, result.version))

    def action_edit(self) -> None:
        """The highlighted version's steps in the editor; its save is the protocol's next draft version."""
        if self.refused_here(ACTION_EDIT, None):
            return
        found = self.highlighted()
        if found is None:
            return
        entry, version = found
        latest = entry.latest.version if entry.latest is not None else version.version
        start = EditorStart(
            name=entry.name,
            based_on=version.version,
            data=version.protocol_data,
            latest=latest,
            taken=frozenset(e.name for e in self.entries),
        )
        self.app.push_screen(ProtocolEditorScreen(self.context, self.user, start), callback=self._editor_done)

    def action_new_protocol(self) -> None:
        """The editor for a new protocol (one step to start from)."""
        if self.refused_here(ACTION_EDIT, None):
            return
        start = EditorStart(taken=frozenset(e.name for e in self.entries))
        self.app.push_screen(ProtocolEditorScreen(self.context, self.user, start), callback=self._editor_done)

    def action_import_file(self) -> None:
        if self.refused_here(ACTION_IMPORT, None):
            return
        found = self.highlighted()
        name = found[0].name if found is not None and found[0].active else ""

        def done(result: ImportResult | None) -> None:
            if result is not None:
                kind = "a new protocol" if result.created_protocol else "its next version"
                self.show_status(
                    f"{result.name} v{result.version} stored as a draft ({kind}); another admin approves it",
                    error=False,
                )
                self.reload(select=(result.name, result.version))

        dialog = ImportDialog(self, name, cursor_blink=self.context.settings.cursor_blink)
        self.app.push_screen(dialog, callback=done)

    def action_submit(self) -> None:
        if self.refused_here(ACTION_SUBMIT, SUBMITTED):
            return
        found = self.highlighted()
        if found is not None:
            self.change_status(found, SUBMITTED, None)

    def action_approve(self) -> None:
        if self.refused_here(ACTION_APPROVE, APPROVED):
            return
        found = self.highlighted()
        if found is None:
            return
        entry, version = found

        def answered(yes: bool | None) -> None:
            if yes:
                self.change_status(found, APPROVED, None)

        question = f"Approve {entry.name} v{version.version} for treatment?"
        self.app.push_screen(ConfirmDialog(question), callback=answered)

    def action_reject(self) -> None:
        if self.refused_here(ACTION_REJECT, REJECTED):
            return
        found = self.highlighted()
        if found is None:
            return
        entry, version = found

        def answered(reason: str | None) -> None:
            if reason:
                self.change_status(found, REJECTED, reason)

        dialog = ReasonDialog(
            f"Reject {entry.name} v{version.version}",
            "Why is it rejected? (recorded and shown to the author)",
            cursor_blink=self.context.settings.cursor_blink,
        )
        self.app.push_screen(dialog, callback=answered)

    def action_retire(self) -> None:
        if self.refused_here(ACTION_RETIRE, None):
            return
        found = self.highlighted()
        if found is None:
            return
        entry = found[0]

        def answered(yes: bool | None) -> None:
            if yes:
                self.retire(entry.name)

        question = f"Retire {entry.name}? It is no longer offered for treatment; its versions are kept."
        self.app.push_screen(ConfirmDialog(question), callback=answered)

    @work(exclusive=True, group="library-change", exit_on_error=False)
    async def change_status(
        self, found: tuple[LibraryEntry, VersionInfo], new: str, reason: str | None
    ) -> None:
        entry, version = found
        sessions = self.context.accounts.sessions
        admin, seen, terminal = self.user.username, version.status, self.terminal
        try:
            change = await change_version_status(
                sessions,
                entry.name,
                version.version,
                new,
                admin=admin,
                reason=(reason or "") if new == REJECTED else None,
                expected_status=seen,
                terminal=terminal,
            )
        except ApprovalRefused as exc:
            self.show_status(f"refused: {exc}")
            self.reload()
            return
        self.show_status(
            f"{change.name} v{change.version}: {change.old_status} -> {change.new_status}", error=False
        )
        self.reload(select=(entry.name, version.version))

    @work(exclusive=True, group="library-change", exit_on_error=False)
    async def retire(self, name: str) -> None:
        try:
            await retire_protocol(
                self.context.accounts.sessions, name, admin=self.user.username, terminal=self.terminal
            )
        except ApprovalRefused as exc:
            self.show_status(f"refused: {exc}")
            self.reload()
            return
        self.show_status(f"{name} retired: no longer offered for treatment (kept for history)", error=False)
        self.reload()
