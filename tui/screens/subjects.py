"""The subjects: find one by code, create, edit, deactivate or reactivate, see the treatment history, and
choose one to treat.

:class:`SubjectsScreen` lists subjects newest first. Typing digits, ``-`` or ``p`` anywhere on the list (or
``/``) goes to the search field, which narrows the list as it is typed (a partial, case-insensitive match on
the code, read in a worker). Enter on a subject opens the protocol choice for it. Deactivated subjects are
hidden until ``i`` shows all; ``d`` deactivates the highlighted subject (after a yes/no question) or, for an
inactive one, reactivates it.

:class:`SubjectFormScreen` creates a subject (its code is the next free ``P-YYYY-NNNN``, shown before saving)
or edits one's birth date, gender and notes. :class:`SubjectHistoryScreen` lists a subject's sessions with
their summaries and a total line; Enter opens one, read-only.

Times are shown in the console's local time zone; durations in seconds, powers in watts, energies in joules.
While the controller has a fault latched the subjects screen shows it, and F4 resets it (with the password).
"""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label
from textual.worker import Worker, WorkerState

from control.accounts import UserInfo
from control.clock import format_local
from control.subjects import (
    GENDERS,
    HistoryRow,
    SubjectError,
    SubjectInfo,
    SubjectService,
    check_birth_date,
    check_gender,
    check_notes,
    history_totals,
)
from tui.safe_text import escape_controls, plain
from tui.screens._base import FormField, FormScreen, ScreenContext, SnapshotUpdated
from tui.screens.dialogs import ConfirmDialog
from tui.screens.past_session import PastSessionScreen
from tui.screens.protocols import ProtocolChoiceScreen
from tui.widgets.fault import RESET_KEY, FaultNotice, in_fault, reset_fault
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: Keys that, typed on the list, start a search with that character.
SEARCH_KEYS = frozenset("0123456789-pP")
#: The subject list's columns.
SUBJECT_COLUMNS = ("Code", "Born", "Gender", "Sessions", "Last session", "Active")


def subject_service(context: ScreenContext) -> SubjectService:
    """The subject service of the console's database, recording the console's terminal in the audit."""
    return SubjectService(
        context.accounts.sessions,
        context.settings.clock,
        terminal=context.accounts.terminal,
        data_dir=context.settings.data_dir,
    )


def _user_text(user: UserInfo) -> str:
    return f"{user.username} ({user.role})"


def _shown_date(value: date | None) -> str:
    return value.isoformat() if value is not None else "—"


class SubjectsScreen(Screen[None]):
    """The list of subjects with a search field; keys to create, edit, (de)activate, see the history and
    choose a subject for treatment."""

    DEFAULT_CSS = """
    SubjectsScreen #subjects {
        width: 100%;
        height: 1fr;
        padding: 0 1;
    }
    SubjectsScreen #search-row {
        height: 1;
        margin: 1 0 0 0;
    }
    SubjectsScreen #search-row Label {
        width: auto;
        padding: 0 1 0 0;
        color: $text-muted;
    }
    SubjectsScreen #search {
        width: 1fr;
        background: $panel;
    }
    SubjectsScreen #search:focus {
        background: $primary 30%;
    }
    SubjectsScreen #subject-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    SubjectsScreen #status {
        width: 100%;
        height: 1;
        margin: 0;
    }
    SubjectsScreen #status.error {
        color: $error;
        text-style: bold;
    }
    SubjectsScreen #status.info {
        color: $text-muted;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Choose", priority=True),
        Binding("n", "new", "New"),
        Binding("e", "edit", "Edit"),
        Binding("d", "deactivate", "Deactivate"),
        Binding("d", "reactivate", "Reactivate"),
        Binding("i", "toggle_inactive", "All"),
        Binding("h", "history", "History"),
        Binding("slash", "search", "Find"),
        Binding("escape", "back", "Back"),
        Binding(RESET_KEY, "reset_fault", "Reset fault"),
    ]

    #: Keys that change a subject or lead to a treatment; absent from the read-only records view.
    CHANGING_ACTIONS: ClassVar[frozenset[str]] = frozenset({"new", "edit", "deactivate", "reactivate"})

    def __init__(self, context: ScreenContext, user: UserInfo, *, read_only: bool = False) -> None:
        super().__init__()
        self.context = context
        self.user = user
        #: The records view (any role): find a subject and open its past sessions; nothing is changed and no
        #: treatment starts from it (Enter opens the history).
        self.read_only = read_only
        self.service = subject_service(context)
        self.show_inactive = False
        #: The subjects listed, in table order.
        self.subjects: list[SubjectInfo] = []
        #: True once the first list has been shown.
        self.loaded = False
        self._select_after_load: str | None = None
        self._stale = False

    def compose(self) -> ComposeResult:
        title = "Records: subjects" if self.read_only else "Subjects"
        yield ConsoleHeader(title, sim=self.context.settings.sim, user_text=_user_text(self.user))
        yield FaultNotice(id="fault")
        with Vertical(id="subjects"):
            with Horizontal(id="search-row"):
                yield Label("Find code")
                field = Input(
                    None,
                    "part of a code, e.g. 2026-00",
                    id="search",
                    compact=True,
                    select_on_focus=False,
                )
                field.cursor_blink = self.context.settings.cursor_blink
                yield field
            table: DataTable[str | Text] = DataTable(
                id="subject-table", cursor_type="row", zebra_stripes=True
            )
            table.add_columns(*SUBJECT_COLUMNS)
            yield table
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#subject-table", DataTable).focus()
        self.reload()
        link = self.context.link
        self.query_one("#fault", FaultNotice).show(link.snapshot if link is not None else None)

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        """A latched fault shows above the list (and F4 in the footer) while the controller reports one."""
        if self.is_current and self.query_one("#fault", FaultNotice).show(message.snapshot):
            self.refresh_bindings()

    @work(group="reset", exclusive=True, exit_on_error=False)
    async def action_reset_fault(self) -> None:
        """F4: acknowledge the latched fault with the password (refused while its cause is there)."""
        await reset_fault(self, self.context, self.user)

    def on_screen_resume(self) -> None:
        """Back from choosing a protocol (and perhaps a treatment): read the list again, as session counts
        may have changed; and a fault latched meanwhile shows."""
        if self._stale:
            self._stale = False
            self.reload(select_code=self.highlighted_code())
        link = self.context.link
        if self.query_one("#fault", FaultNotice).show(link.snapshot if link is not None else None):
            self.refresh_bindings()

    # -- loading -------------------------------------------------------------------------------------------

    def reload(self, select_code: str | None = None) -> None:
        """Read the list again for the current search text (``select_code`` is highlighted afterwards)."""
        self._select_after_load = select_code
        self.load(self.query_one("#search", Input).value, self.show_inactive)

    @work(exclusive=True, group="subjects-load", exit_on_error=False)
    async def load(self, fragment: str, include_inactive: bool) -> None:
        """Read the subjects matching ``fragment`` and show them."""
        found = await self.service.find(fragment, include_inactive=include_inactive)
        self.show_subjects(found, fragment)

    def show_subjects(self, found: list[SubjectInfo], fragment: str) -> None:
        """Fill the table with ``found`` (keeping the highlighted subject when it is still listed)."""
        table: DataTable[str | Text] = self.query_one("#subject-table", DataTable)
        keep = self._select_after_load or self.highlighted_code()
        rows: list[list[Cell]] = [
            [
                plain(info.subject_code),
                _shown_date(info.date_of_birth),
                plain(info.gender or "—"),
                str(info.session_count),
                format_local(info.last_session, empty="—"),
                "yes" if info.is_active else "no",
            ]
            for info in found
        ]
        fill_table(table, SUBJECT_COLUMNS, rows, keys=[info.subject_code for info in found])
        self.subjects = found
        codes = [info.subject_code for info in found]
        if keep in codes:
            table.move_cursor(row=codes.index(keep))
        self._select_after_load = None
        self.loaded = True
        where = f" matching {fragment.strip()!r}" if fragment.strip() else ""
        which = "subjects" if self.show_inactive else "active subjects"
        if found:
            self.show_status(f"{len(found)} {which}{where}", error=False)
        elif fragment.strip():
            self.show_status(f"no {which}{where}; n creates a new subject", error=False)
        else:
            self.show_status(f"no {which} yet; n creates the first", error=False)
        self.refresh_bindings()

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        self.reload()

    @on(DataTable.RowHighlighted, "#subject-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#subject-table")
    def row_clicked(self, event: DataTable.RowSelected) -> None:
        """A click on the highlighted row chooses it, as Enter does."""
        self.action_choose()

    def on_key(self, event: events.Key) -> None:
        """Typing a code's characters on the list starts a search with them."""
        character = event.character
        if character in SEARCH_KEYS and isinstance(self.focused, DataTable):
            event.stop()
            event.prevent_default()
            search = self.query_one("#search", Input)
            search.value = search.value + character
            search.cursor_position = len(search.value)
            search.focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed database read or write is shown on the status line."""
        if event.state is WorkerState.ERROR:
            self.show_status(f"failed: {event.worker.error}")

    # -- what is highlighted -------------------------------------------------------------------------------

    def highlighted(self) -> SubjectInfo | None:
        """The subject under the cursor, or None when the list is empty."""
        table: DataTable[str | Text] = self.query_one("#subject-table", DataTable)
        row = table.cursor_row
        if not self.subjects or not 0 <= row < len(self.subjects) or row >= table.row_count:
            return None
        return self.subjects[row]

    def highlighted_code(self) -> str | None:
        """The code of the subject under the cursor, or None."""
        info = self.highlighted()
        return info.subject_code if info is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``d`` is Deactivate on an active subject and Reactivate on an inactive one; the keys that act on
        a subject are dimmed while none is highlighted. The records view has no keys that change a subject."""
        if self.read_only and action in self.CHANGING_ACTIONS:
            return False
        if action in ("deactivate", "reactivate"):
            info = self.highlighted()
            if info is None:
                return None if action == "deactivate" else False
            return info.is_active == (action == "deactivate")
        if action == "choose" and isinstance(self.focused, Input):
            return True  # Enter in the search field goes on to the list
        if action in ("choose", "edit", "history"):
            return self.highlighted() is not None or None
        if action == "reset_fault":
            link = self.context.link
            return link is not None and in_fault(link.snapshot)
        return True

    def show_status(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` on the status line (styled as an error unless ``error`` is False)."""
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")
        status.set_class(not error, "info")

    # -- actions -------------------------------------------------------------------------------------------

    def action_search(self) -> None:
        """Put the cursor in the search field."""
        self.query_one("#search", Input).focus()

    def action_back(self) -> None:
        """Escape: from the search field back to the list; from the list back to the previous screen."""
        if isinstance(self.focused, Input):
            self.query_one("#subject-table", DataTable).focus()
            return
        self.dismiss(None)

    def action_toggle_inactive(self) -> None:
        """Show or hide deactivated subjects."""
        self.show_inactive = not self.show_inactive
        self.reload()

    def action_choose(self) -> None:
        """Enter: from the search field, on to the list; on the list, choose the highlighted subject and go on
        to the protocols."""
        if isinstance(self.focused, Input):
            self.query_one("#subject-table", DataTable).focus()
            return
        info = self.highlighted()
        if info is None:
            return
        if self.read_only:
            self.app.push_screen(SubjectHistoryScreen(self.context, self.user, info.subject_code))
            return
        if not info.is_active:
            self.show_status(f"{info.subject_code} is inactive; d reactivates it before a treatment")
            return
        self._stale = True
        self.app.push_screen(ProtocolChoiceScreen(self.context, self.user, info.subject_code))

    def action_new(self) -> None:
        """Create a subject."""
        self._open_form(SubjectFormScreen(self.context, self.user))

    def action_edit(self) -> None:
        """Edit the highlighted subject's details."""
        info = self.highlighted()
        if info is not None:
            self._open_form(SubjectFormScreen(self.context, self.user, info))

    def _open_form(self, form: SubjectFormScreen) -> None:
        def closed(_result: None) -> None:
            saved = form.saved
            if saved is not None:
                verb = "updated" if form.subject is not None else "created"
                self.reload(select_code=saved.subject_code)
                self.notify(escape_controls(f"subject {saved.subject_code} {verb}"), timeout=4, markup=False)

        self.app.push_screen(form, callback=closed)

    def action_history(self) -> None:
        """The highlighted subject's sessions."""
        info = self.highlighted()
        if info is not None:
            self.app.push_screen(SubjectHistoryScreen(self.context, self.user, info.subject_code))

    def action_deactivate(self) -> None:
        """Deactivate the highlighted subject, after asking."""
        self._ask_active(False)

    def action_reactivate(self) -> None:
        """Reactivate the highlighted (inactive) subject, after asking."""
        self._ask_active(True)

    def _ask_active(self, active: bool) -> None:
        info = self.highlighted()
        if info is None:
            return
        code = info.subject_code
        if active:
            question = f"Reactivate subject {code}? It can then be treated again."
        else:
            question = f"Deactivate subject {code}? It is hidden from the list and cannot be treated."

        def answered(yes: bool | None) -> None:
            if yes:
                self.set_active(code, active)
            else:
                self.show_status(f"{code} left as it was", error=False)

        self.app.push_screen(ConfirmDialog(question), callback=answered)

    @work(exclusive=True, group="subjects-change", exit_on_error=False)
    async def set_active(self, code: str, active: bool) -> None:
        """Deactivate or reactivate ``code`` and show the list again."""
        try:
            if active:
                await self.service.reactivate(code, tech_id=self.user.tech_id)
            else:
                await self.service.deactivate(code, tech_id=self.user.tech_id)
        except SubjectError as exc:
            self.show_status(str(exc))
            return
        self.reload(select_code=code)
        done = f"subject {code} {'reactivated' if active else 'deactivated'}"
        self.notify(escape_controls(done), timeout=4, markup=False)


class SubjectFormScreen(FormScreen):
    """Create a subject (``subject`` None: the next free code of the clinic's pattern is offered in the Code
    field, where another code of that pattern may be typed; the focus starts on the date of birth, Shift+Tab
    reaches the code) or edit one's birth date, gender and notes. Every value is checked before saving; a
    refusal names the field and saves nothing."""

    DEFAULT_CSS = """
    SubjectFormScreen #subject-code {
        width: 100%;
        margin: 1 0 0 0;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Next / save", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    HEADER_TITLE = "Subject"
    EDIT_FIELDS: ClassVar[tuple[FormField, ...]] = (
        FormField("birth-date", "Date of birth", "YYYY-MM-DD, or leave empty"),
        FormField("gender", "Gender", f"{', '.join(GENDERS)}, or empty"),
        FormField("notes", "Notes", "optional"),
    )
    CODE_FIELD: ClassVar[FormField] = FormField("code", "Code", "empty: the next free code")

    def __init__(self, context: ScreenContext, user: UserInfo, subject: SubjectInfo | None = None) -> None:
        super().__init__(context)
        self.user = user
        self.subject = subject
        self.service = subject_service(context)
        #: The subject as saved (None until saved).
        self.saved: SubjectInfo | None = None
        #: The code a new subject will get, once read.
        self.next_code: str | None = None

    @property
    def FORM_TITLE(self) -> str:  # type: ignore[override]
        return "New subject" if self.subject is None else f"Edit subject {self.subject.subject_code}"

    @property
    def FORM_FIELDS(self) -> tuple[FormField, ...]:  # type: ignore[override]
        """A new subject's form also has the code (first, offered filled in); an edit never changes it."""
        return self.EDIT_FIELDS if self.subject is not None else (self.CODE_FIELD, *self.EDIT_FIELDS)

    def header_user_text(self) -> str:
        return _user_text(self.user)

    def intro(self) -> Label | None:
        if self.subject is None:
            return Label("Code: reading the next free code...", id="subject-code")
        return Label(plain(f"Code: {self.subject.subject_code}"), id="subject-code")

    def on_mount(self, event: events.Mount) -> None:  # type: ignore[override]  # the Mount event is needed
        subject = self.subject
        if subject is None:
            # The code is offered filled in; typing starts at the date of birth, not in the form's first
            # field (the base class's handler, which would focus it, is not run).
            event.prevent_default()
            self.query_one("#birth-date", Input).focus()
            self.read_next_code()
            return
        super().on_mount()
        birth = subject.date_of_birth
        self.query_one("#birth-date", Input).value = birth.isoformat() if birth is not None else ""
        self.query_one("#gender", Input).value = subject.gender or ""
        # Shown as text: control characters in the stored notes appear escaped, and are saved as shown.
        notes = escape_controls(subject.notes or "")
        self.query_one("#notes", Input).value = notes
        if notes != (subject.notes or ""):
            self.show_status(
                "the notes hold control characters, shown escaped (\\x..); saving keeps them as shown",
                error=False,
            )

    @work(exclusive=True, group="subject-code", exit_on_error=False)
    async def read_next_code(self) -> None:
        """Show the code the new subject will get, and offer it in the Code field (unless one was typed)."""
        try:
            pattern = await self.service.pattern()
            code = await self.service.next_code()
        except SubjectError as exc:
            self.query_one("#subject-code", Label).update(Content(f"Code: {exc}"))
            return
        self.next_code = code
        self.query_one("#subject-code", Label).update(Content(f"Code: {code} (the next free code)"))
        field = self.query_one("#code", Input)
        field.placeholder = f"like {pattern.text}; empty: the next free code"
        if not field.value:
            field.value = code

    def parsed(self) -> tuple[date | None, str | None, str | None]:
        """The typed birth date, gender and notes, checked (SubjectError names the field)."""
        typed_date = self.value("birth-date").strip()
        birth: date | None = None
        if typed_date:
            try:
                birth = date.fromisoformat(typed_date)
            except ValueError:
                raise SubjectError(
                    f"date of birth must be YYYY-MM-DD, e.g. 1980-05-31; got {typed_date!r}"
                ) from None
        check_birth_date(birth, self.context.settings.clock().date())
        gender = check_gender(self.value("gender").strip().lower() or None)
        notes = check_notes(self.value("notes"))
        return birth, gender, notes

    def action_submit(self) -> None:
        """Enter: next field, or check and save from the last."""
        if self.busy or not self.focus_next_or_submit():
            return
        try:
            birth, gender, notes = self.parsed()
        except SubjectError as exc:
            self.show_status(str(exc))
            return
        code: str | None = None
        if self.subject is None:
            typed = self.value("code").strip()
            # The offered code (or none) is taken as "the next free one": another console may take it first.
            code = typed if typed and typed != self.next_code else None
        self.busy = True
        self.show_status("saving...", error=False)
        self.save(birth, gender, notes, code)

    @work(exclusive=True, group="subject-save", exit_on_error=False)
    async def save(
        self, birth: date | None, gender: str | None, notes: str | None, code: str | None = None
    ) -> None:
        """Write the subject (with the typed ``code``, or the next free one) and go back to the list."""
        try:
            if self.subject is None:
                saved = await self.service.create(
                    created_by_tech_id=self.user.tech_id,
                    date_of_birth=birth,
                    gender=gender,
                    notes=notes,
                    code=code,
                )
            else:
                saved = await self.service.update(
                    self.subject.subject_code,
                    date_of_birth=birth,
                    gender=gender,
                    notes=notes,
                    tech_id=self.user.tech_id,
                )
        except SubjectError as exc:
            self.show_status(str(exc))
            return
        finally:
            self.busy = False
        self.saved = saved
        self.dismiss(None)

    def action_cancel(self) -> None:
        """Escape: back to the list without saving."""
        self.dismiss(None)


def _seconds(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "—"


def _watts(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "—"


def _joules(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "—"


class SubjectHistoryScreen(Screen[None]):
    """A subject's sessions, newest first, each with its summary, and the totals; Enter opens the highlighted
    session (read-only: :class:`tui.screens.past_session.PastSessionScreen`)."""

    DEFAULT_CSS = """
    SubjectHistoryScreen #history {
        width: 100%;
        height: 1fr;
        padding: 0 1;
    }
    SubjectHistoryScreen #history-title {
        width: 100%;
        margin: 1 0 0 0;
        text-style: bold;
        color: $accent;
    }
    SubjectHistoryScreen #history-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    SubjectHistoryScreen #history-detail {
        width: 100%;
        height: auto;
        color: $text-muted;
    }
    SubjectHistoryScreen #history-total {
        width: 100%;
        height: auto;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open session", priority=True),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo, subject_code: str) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.subject_code = subject_code
        self.service = subject_service(context)
        #: The sessions shown (None until read).
        self.rows: list[HistoryRow] | None = None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader("Subject history", sim=self.context.settings.sim, user_text=_user_text(self.user))
        with Vertical(id="history"):
            yield Label(plain(f"Sessions of {self.subject_code}"), id="history-title")
            yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="history-detail")
            yield Label("reading...", id="history-total")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#history-table", DataTable).focus()
        self.load()

    @work(exclusive=True, group="history-load", exit_on_error=False)
    async def load(self) -> None:
        """Read and show the sessions."""
        try:
            rows = await self.service.history(self.subject_code)
        except SubjectError as exc:
            self.query_one("#history-total", Label).update(plain(exc))
            return
        table: DataTable[str | Text] = self.query_one("#history-table", DataTable)
        wide = self.size.width >= 110
        fixed = 80 if wide else 62
        protocol_width = max(12, min(48, self.size.width - fixed))
        headings = ["Started", "Ended", "Status", "On s", "Avg W", "Energy J", "Protocol"]
        if wide:
            headings.append("Technician")
        cells: list[list[Cell]] = []
        for row in rows:
            line: list[Cell] = [
                format_local(row.start_time, empty="—"),
                _ended(row),
                plain(row.status or "—"),
                _seconds(row.laser_on_time_s),
                _watts(row.avg_power_w),
                _joules(row.energy_j),
                plain(row.protocol_name or "—"),
            ]
            if wide:
                line.append(plain(row.technician or "—"))
            cells.append(line)
        cut_to = {6: protocol_width, 7: 20} if wide else {6: protocol_width}
        fill_table(table, headings, cells, keys=[str(row.session_id) for row in rows], fixed=cut_to)
        totals = history_totals(rows)
        if totals.sessions == 0:
            text = f"{self.subject_code} has no sessions yet"
        else:
            noun = "session" if totals.sessions == 1 else "sessions"
            text = (
                f"Total: {totals.sessions} {noun} ({totals.completed} completed), "
                f"laser on {totals.laser_on_time_s:.1f} s, {totals.energy_j:.1f} J delivered"
            )
        self.query_one("#history-total", Label).update(plain(text))
        self.rows = rows
        self.refresh_bindings()
        if rows:
            self.show_detail(rows[0])

    @on(DataTable.RowHighlighted, "#history-table")
    def session_highlighted(self, event: DataTable.RowHighlighted) -> None:
        rows = self.rows or []
        if 0 <= event.cursor_row < len(rows):
            self.show_detail(rows[event.cursor_row])

    def show_detail(self, row: HistoryRow) -> None:
        """The highlighted session in full: its id, protocol and technician."""
        detail = (
            f"Session {row.session_id}: {row.protocol_name or 'no protocol recorded'}; "
            f"technician {row.technician or 'unknown'}"
        )
        self.query_one("#history-detail", Label).update(plain(detail))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed database read is shown in place of the totals."""
        if event.state is WorkerState.ERROR:
            self.query_one("#history-total", Label).update(plain(f"failed: {event.worker.error}"))

    def highlighted_session(self) -> HistoryRow | None:
        """The session under the cursor, or None (nothing read yet, no sessions)."""
        rows = self.rows or []
        row = self.query_one("#history-table", DataTable).cursor_row
        return rows[row] if 0 <= row < len(rows) else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Enter is dimmed while no session is highlighted."""
        if action == "open":
            return self.highlighted_session() is not None or None
        return True

    @on(DataTable.RowSelected, "#history-table")
    def session_clicked(self, event: DataTable.RowSelected) -> None:
        """A click on the highlighted session opens it, as Enter does."""
        self.action_open()

    def action_open(self) -> None:
        """Open the highlighted session, read-only: its summary, notes, events and power trace."""
        row = self.highlighted_session()
        if row is not None:
            self.app.push_screen(PastSessionScreen(self.context, self.user, row.session_id))

    def action_back(self) -> None:
        """Back to the subjects."""
        self.dismiss(None)


def _ended(row: HistoryRow) -> str:
    """The end time: ``HH:MM`` on the day it started, the full date and time otherwise, ``open`` while the
    session has not ended."""
    if row.end_time is None:
        return "open"
    ended = format_local(row.end_time)
    started = format_local(row.start_time, empty="")
    return ended[11:] if started[:10] == ended[:10] else ended


__all__ = [
    "SEARCH_KEYS",
    "SubjectFormScreen",
    "SubjectHistoryScreen",
    "SubjectsScreen",
    "subject_service",
]
