"""The configuration: every setting with its value, default, unit and meaning; an admin changes one at a time.

The table lists the settings in the settings model's order (:mod:`control.system_config`): key, value (the
stored one, or the default where none is stored; a stored value the model refuses is shown as the default
with ``!`` and the reason under the table), default, unit and meaning (left out where the screen is too
narrow for it). The line under the table says all about the highlighted setting: its meaning, its range, who
changed it last and when.

Enter (or ``e``) on a row opens the edit dialog: the new value and the reason. The value is checked as it is
typed into the dialog (its type, its range, the settings as a whole) and the reason must not be blank; a
refusal says why in the dialog and changes nothing. The change itself goes through
:func:`control.config_editor.change_setting`, which checks again in the database (the admin's role now, a
change made meanwhile by another admin) and writes the value with its audit row.

A line says when changes take effect (:data:`control.config_editor.WHEN_APPLIED`): the controller reads the
settings each time a session opens, never during one. While the controller reports an open session, a second
line says the change applies after it.

Open it with ``ConfigurationScreen(context, user)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.cells import cell_len
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label
from textual.worker import Worker, WorkerState

from control.account_rules import UserInfo
from control.config_editor import (
    WHEN_APPLIED,
    ConfigChangeRefused,
    SettingChange,
    SettingEntry,
    change_setting,
    check_reason,
    format_value,
    parse_setting_text,
    read_entries,
)
from control.system_config import SettingError, settings_from
from storage.errors import one_line
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext, SnapshotUpdated
from tui.screens.dialogs import DialogInputError, DialogScreen
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: The table's columns.
CONFIG_COLUMNS = ("Key", "Value", "Default", "Unit", "Meaning")
#: The narrowest the meaning column gets (it is cut with an ellipsis; the line under the table has it whole).
_MIN_MEANING = 12
#: The value and default columns where the meaning is left out (a longer value is whole on the line under the
#: table).
_NARROW_VALUE = 11
#: Columns of the table that are not cells: its cursor column and the screen's padding.
_TABLE_FRAME = 4


def _range(entry: SettingEntry) -> str:
    described = entry.spec
    if described.config_type == "string":
        return f"text of {described.low} to {described.high} characters"
    return f"{described.low} to {described.high} {described.unit}"


Save = Callable[[str, str], Awaitable[SettingChange]]


class EditSettingDialog(DialogScreen[SettingChange | None]):
    """A new value for one setting and the reason; returns the change made, or None on Escape.

    ``others`` are the values of the other settings, so that a value that breaks the settings as a whole
    (the photodiode warning threshold at or above the fault threshold) is refused as it is typed. ``save``
    makes the change (value text, reason); a refusal it raises is shown and the dialog stays open.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Next / save", priority=True)]

    def __init__(
        self, entry: SettingEntry, others: dict[str, object], save: Save, *, cursor_blink: bool
    ) -> None:
        super().__init__(f"Change {entry.key}", cursor_blink=cursor_blink)
        self.entry = entry
        self.others = others
        self.save = save
        #: True while the change is being saved.
        self.saving = False

    def compose(self) -> ComposeResult:
        entry = self.entry
        with self.panel():
            yield Label(plain(entry.spec.meaning), classes="dialog-prompt", id="dialog-prompt")
            yield Label(
                plain(
                    f"Now {format_value(entry.value)} {entry.spec.unit}; default "
                    f"{format_value(entry.spec.default)}; {_range(entry)}"
                ),
                classes="dialog-fact",
                id="dialog-fact",
            )
            with Grid(classes="dialog-grid"):
                yield Label("New value")
                yield self.text_input(
                    "value", f"{entry.spec.config_type} ({entry.spec.unit})", value=format_value(entry.value)
                )
                yield Label("Reason")
                yield self.text_input("reason", "why it changes (recorded)")
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field("value").focus()

    def check_value(self) -> object:
        """The typed value, if the key, its range and the settings as a whole accept it."""
        key = self.entry.key
        try:
            value = parse_setting_text(key, self.field("value").value)
        except ConfigChangeRefused as exc:
            raise DialogInputError(str(exc), field="value") from None
        try:
            settings_from({**self.others, key: value})
        except SettingError as exc:
            reason = str(exc).removeprefix("config: ")
            raise DialogInputError(
                f"config {key}: {format_value(value)} refused: {reason}", field="value"
            ) from None
        return value

    def action_submit(self) -> None:
        """Enter: from the value to the reason (once the value is accepted); from the reason, save."""
        if self.saving:
            return
        focused = self.focused
        try:
            self.check_value()
        except DialogInputError as exc:
            self.refuse(exc, "value")
            return
        if focused is not None and focused.id == "value":
            self.show_error("")
            self.field("reason").focus()
            return
        try:
            reason = check_reason(self.field("reason").value)
        except ConfigChangeRefused as exc:
            self.refuse(DialogInputError(str(exc), field="reason"), "reason")
            return
        self.saving = True
        self.show_error("saving...")
        self.run_save(self.field("value").value, reason)

    @work(exclusive=True, group="config-save", exit_on_error=False)
    async def run_save(self, text: str, reason: str) -> None:
        try:
            done = await self.save(text, reason)
        except ConfigChangeRefused as exc:
            self.saving = False
            self.show_error(str(exc))
            return
        self.saving = False
        self.dismiss(done)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A database failure while saving is shown; the dialog stays open."""
        if event.state is WorkerState.ERROR:
            self.saving = False
            self.show_error(f"not saved: {one_line(event.worker.error or RuntimeError('failed'))}")


class ConfigurationScreen(Screen[None]):
    """Every setting (an admin's screen); Enter changes the highlighted one."""

    DEFAULT_CSS = """
    ConfigurationScreen #configuration {
        height: 1fr;
        padding: 0 1;
    }
    ConfigurationScreen #config-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    ConfigurationScreen #config-detail {
        width: 100%;
        height: auto;
        color: $text-muted;
    }
    ConfigurationScreen #config-when {
        width: 100%;
        height: auto;
    }
    ConfigurationScreen #config-session {
        width: 100%;
        height: auto;
        color: $warning;
        text-style: bold;
    }
    ConfigurationScreen #status {
        width: 100%;
        height: auto;
    }
    ConfigurationScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "edit", "Change"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        #: Every setting as last read, in the model's order.
        self.entries: list[SettingEntry] = []
        #: True once the table has been filled the first time.
        self.loaded = False
        self._select_after_load: str | None = None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Configuration",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="configuration"):
            yield DataTable(id="config-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="config-detail")
            yield Label(WHEN_APPLIED, id="config-when")
            yield Label("", id="config-session")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#config-table", DataTable).focus()
        self.show_session()
        if self.user.role != "admin":
            self.show_status(
                f"only an admin may use this screen ({self.user.username} is {self.user.role})", error=True
            )
            return
        self.reload()

    # -- the list --------------------------------------------------------------------------------------------

    def reload(self, select: str | None = None) -> None:
        """Read every setting again (``select`` is highlighted afterwards)."""
        self._select_after_load = select or self.highlighted_key()
        self.load()

    @work(exclusive=True, group="config-load", exit_on_error=False)
    async def load(self) -> None:
        self.entries = await read_entries(self.context.accounts.sessions)
        self.show_entries()
        self.loaded = True

    def show_entries(self) -> None:
        table: DataTable[Cell] = self.query_one("#config-table", DataTable)
        rows: list[list[Cell]] = []
        for entry in self.entries:
            value = format_value(entry.value) + (" !" if entry.problem is not None else "")
            # A value stored by a person is text, never markup; one that differs from its default is bold.
            style = "bold" if entry.value != entry.spec.default else ""
            rows.append(
                [
                    plain(entry.key),
                    plain(value, style),
                    plain(format_value(entry.spec.default)),
                    plain(entry.spec.unit),
                    plain(entry.spec.meaning),
                ]
            )
        others = sum(max((cell_len(str(r[i])) for r in rows), default=0) for i in (0, 1, 2, 3))
        room = self.size.width - _TABLE_FRAME - 2 * len(CONFIG_COLUMNS) - others
        headings: tuple[str, ...] = CONFIG_COLUMNS
        if self.size.width and room < _MIN_MEANING:
            # Too narrow for the meaning: the line under the table says it for the highlighted setting.
            headings = CONFIG_COLUMNS[:4]
            rows = [row[:4] for row in rows]
        limits = {4: room} if len(headings) == 5 else {1: _NARROW_VALUE, 2: _NARROW_VALUE}
        if not self.size.width:
            limits = {}
        fill_table(table, headings, rows, keys=[entry.key for entry in self.entries], limits=limits)
        select = self._select_after_load
        if select is not None and select in [entry.key for entry in self.entries]:
            table.move_cursor(row=[entry.key for entry in self.entries].index(select))
        self.show_detail()
        self.refresh_bindings()

    def on_resize(self) -> None:
        if self.loaded:
            self._select_after_load = self.highlighted_key()
            self.show_entries()

    def highlighted(self) -> SettingEntry | None:
        table: DataTable[Cell] = self.query_one("#config-table", DataTable)
        row = table.cursor_row
        if not self.entries or not 0 <= row < len(self.entries) or row >= table.row_count:
            return None
        return self.entries[row]

    def highlighted_key(self) -> str | None:
        entry = self.highlighted()
        return entry.key if entry is not None else None

    def show_detail(self) -> None:
        """All about the highlighted setting on the line under the table."""
        entry = self.highlighted()
        if entry is None:
            text = ""
        else:
            who = (
                f"changed by {entry.changed_by}"
                + (f" at {entry.changed_at:%Y-%m-%d %H:%M} UTC" if entry.changed_at is not None else "")
                if entry.changed_by is not None
                else ("never changed here" if entry.stored else "not stored: the default applies")
            )
            now = f"now {format_value(entry.value)}, default {format_value(entry.spec.default)}"
            text = f"{entry.key}: {entry.spec.meaning}; {now}; {_range(entry)}; {who}"
            if entry.problem is not None:
                text += f". Stored value refused, the default applies: {entry.problem}"
        self.query_one("#config-detail", Label).update(plain(text))

    @on(DataTable.RowHighlighted, "#config-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#config-table")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    # -- the controller's session ----------------------------------------------------------------------------

    def open_session(self) -> str | None:
        """The session the controller reports open (its newest snapshot over the link), or None."""
        link = self.context.link
        snapshot = link.snapshot if link is not None else None
        if snapshot is None or snapshot.session is None:
            return None
        view = snapshot.session
        return f"session {view.session_id} for {escape_controls(str(view.subject_code))}"

    def show_session(self) -> None:
        session = self.open_session()
        text = (
            ""
            if session is None
            else f"A session is open ({session}): a change to a safety limit applies after it, never to it."
        )
        self.query_one("#config-session", Label).update(plain(text))

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        self.show_session()

    def on_screen_resume(self) -> None:
        self.show_session()

    # -- keys ------------------------------------------------------------------------------------------------

    def show_status(self, text: str, *, error: bool = True) -> None:
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed database read is shown on the status line."""
        if event.state is WorkerState.ERROR:
            self.show_status(f"failed: {one_line(event.worker.error or RuntimeError('failed'))}")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "edit":
            return (self.highlighted() is not None and self.user.role == "admin") or None
        return True

    def action_back(self) -> None:
        self.dismiss(None)

    def action_edit(self) -> None:
        """Open the edit dialog of the highlighted setting."""
        entry = self.highlighted()
        if entry is None or self.user.role != "admin":
            return
        others: dict[str, object] = {
            other.key: other.value
            for other in self.entries
            if other.key != entry.key and other.problem is None
        }
        accounts = self.context.accounts
        terminal = getattr(self.app, "terminal", None)

        async def save(text: str, reason: str) -> SettingChange:
            return await change_setting(
                accounts.sessions,
                entry.key,
                text,
                admin=self.user.username,
                reason=reason,
                expected=entry.value,
                terminal=terminal if isinstance(terminal, str) else accounts.terminal,
            )

        def done(result: SettingChange | None) -> None:
            if result is not None:
                old, new = format_value(result.old), format_value(result.new)
                self.show_status(
                    f"{result.key} changed from {old} to {new} {entry.spec.unit}",
                    error=False,
                )
            self.reload(select=entry.key)

        dialog = EditSettingDialog(entry, others, save, cursor_blink=self.context.settings.cursor_blink)
        self.app.push_screen(dialog, callback=done)
