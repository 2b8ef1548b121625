"""The protocol choice: the active protocols, a preview of the highlighted one (its steps and its power
curve), an optional treatment site, and the key that asks for the session to be opened.

Choosing posts :class:`~tui.screens._base.SessionRequested` and does nothing else: the app opens the session
on the controller. A protocol whose stored data no longer parses, or that breaks a system limit, is listed
with the reason and cannot be chosen.

Each protocol is listed with its newest approved version, the only one used for treatment. On the simulated
rig (``--sim``) a protocol's newer draft (or one with no approved version yet) is listed too, on a row of its
own marked ``DRAFT vN``: choosing it asks the controller to try that draft, which it refuses on a real rig,
and the session's screens and record say it was a trial of a draft.

The list sits above the preview, so the screen fits 80 x 24; on a taller terminal the plot takes the room.
Durations are shown as mm:ss, powers in watts, ring diameters in mm.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label
from textual.worker import Worker, WorkerState

from control.accounts import UserInfo
from control.catalog import CatalogError, ProtocolCatalog, ProtocolPreview, ProtocolSummary
from tui.safe_text import plain
from tui.screens._base import ScreenContext, SessionRequested
from tui.widgets.header import ConsoleHeader
from tui.widgets.plot import PowerPlot
from tui.widgets.tables import Cell, fill_table

#: Longest treatment site accepted, in characters.
MAX_SITE_LENGTH = 200


def mm_ss(seconds: float | None) -> str:
    """A duration in seconds shown as ``mm:ss`` (rounded to the second); ``—`` when unknown."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    return f"{whole // 60:02d}:{whole % 60:02d}"


def _name_cell(summary: ProtocolSummary) -> Text:
    """The protocol's name; a draft's marked (it is tried on the simulated rig only)."""
    if not summary.draft:
        return plain(summary.name)
    return plain(f"DRAFT v{summary.version} ", "bold reverse") + plain(summary.name)


def _number(value: float | None, decimals: int = 1) -> str:
    return f"{value:.{decimals}f}" if value is not None else "—"


#: The columns of the highlighted protocol's steps.
STEP_COLUMNS = ("#", "Time s", "Start W", "End W", "Ramp", "Ring mm")


class ProtocolChoiceScreen(Screen[None]):
    """Choose the protocol for ``subject_code``: list, preview (steps and power curve) and treatment site."""

    DEFAULT_CSS = """
    ProtocolChoiceScreen #choice {
        width: 100%;
        height: 1fr;
        padding: 0 1;
    }
    ProtocolChoiceScreen #choice-title {
        width: 100%;
        text-style: bold;
        color: $accent;
    }
    ProtocolChoiceScreen #protocol-table {
        height: auto;
        max-height: 8;
        background: $surface;
    }
    ProtocolChoiceScreen #preview {
        height: 1fr;
        min-height: 7;
        margin: 1 0 0 0;
    }
    ProtocolChoiceScreen #step-table {
        width: auto;
        max-width: 60%;
        height: auto;
        max-height: 100%;
        background: $surface;
    }
    ProtocolChoiceScreen #curve {
        height: 100%;
        min-height: 5;
        margin: 0 0 0 1;
    }
    ProtocolChoiceScreen #protocol-note {
        width: 100%;
        height: auto;
        max-height: 3;
        color: $text-muted;
    }
    ProtocolChoiceScreen #protocol-note.error {
        color: $error;
        text-style: bold;
    }
    ProtocolChoiceScreen #site-row {
        height: 1;
    }
    ProtocolChoiceScreen #site-row Label {
        width: auto;
        padding: 0 1 0 0;
        color: $text-muted;
    }
    ProtocolChoiceScreen #site {
        width: 1fr;
        background: $panel;
    }
    ProtocolChoiceScreen #site:focus {
        background: $primary 30%;
    }
    ProtocolChoiceScreen #status {
        width: 100%;
        height: 1;
    }
    ProtocolChoiceScreen #status.error {
        color: $error;
        text-style: bold;
    }
    ProtocolChoiceScreen #status.info {
        color: $text-muted;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "start", "Start session", priority=True),
        Binding("s", "start_now", "Start"),
        Binding("t", "site", "Treatment site"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo, subject_code: str) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.subject_code = subject_code
        self.catalog = ProtocolCatalog(context.accounts.sessions)
        #: The protocols listed, in table order (empty until read).
        self.protocols: list[ProtocolSummary] = []
        #: The preview shown (None until one is read).
        self.preview: ProtocolPreview | None = None
        self._previews: dict[tuple[str, bool], ProtocolPreview] = {}
        #: True once the list has been read.
        self.loaded = False

    def compose(self) -> ComposeResult:
        user_text = f"{self.user.username} ({self.user.role})"
        yield ConsoleHeader("Choose a protocol", sim=self.context.settings.sim, user_text=user_text)
        with Vertical(id="choice"):
            yield Label(plain(f"Protocol for subject {self.subject_code}"), id="choice-title")
            protocols: DataTable[str | Text] = DataTable(
                id="protocol-table", cursor_type="row", zebra_stripes=True
            )
            yield protocols
            with Horizontal(id="preview"):
                steps: DataTable[str | Text] = DataTable(
                    id="step-table", cursor_type="none", zebra_stripes=True
                )
                steps.add_columns(*STEP_COLUMNS)
                steps.can_focus = False
                yield steps
                yield PowerPlot(y_unit="W", x_unit="s", id="curve")
            yield Label("", id="protocol-note")
            with Horizontal(id="site-row"):
                yield Label("Treatment site")
                site = Input(None, "optional, e.g. left forearm", id="site", compact=True)
                site.cursor_blink = self.context.settings.cursor_blink
                yield site
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#protocol-table", DataTable).focus()
        self.load()

    # -- loading -------------------------------------------------------------------------------------------

    @work(exclusive=True, group="protocols-load", exit_on_error=False)
    async def load(self) -> None:
        """Read the active protocols and show them."""
        listed = await self.catalog.active(drafts=self.context.settings.sim)
        table: DataTable[str | Text] = self.query_one("#protocol-table", DataTable)
        name_width = max(20, min(72, self.size.width - 44))
        cells: list[list[Cell]] = [
            [
                _name_cell(summary),
                plain(summary.protocol_type) if summary.error is None else "unreadable",
                mm_ss(summary.total_duration_s),
                _number(summary.max_power_w),
                str(summary.step_count) if summary.step_count is not None else "—",
            ]
            for summary in listed
        ]
        headings = ("Protocol", "Type", "Time", "Max W", "Steps")
        keys = [f"{summary.name}\x00{summary.version}" for summary in listed]
        fill_table(table, headings, cells, keys=keys, fixed={0: name_width})
        self.protocols = listed
        self.loaded = True
        if listed:
            drafts = sum(1 for summary in listed if summary.draft)
            tried = f" ({drafts} drafts to try on the simulated rig)" if drafts else ""
            self.show_status(f"{len(listed)} protocols{tried}; enter starts the session", error=False)
            self.show_preview(listed[min(table.cursor_row, len(listed) - 1)])
        else:
            self.show_status("no active protocols; an administrator adds them")

    @on(DataTable.RowHighlighted, "#protocol-table")
    def protocol_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.protocols):
            self.show_preview(self.protocols[event.cursor_row])

    @on(DataTable.RowSelected, "#protocol-table")
    def protocol_clicked(self, event: DataTable.RowSelected) -> None:
        """A click on the highlighted row starts the session, as Enter does."""
        self.action_start()

    @work(exclusive=True, group="protocols-preview", exit_on_error=False)
    async def show_preview(self, listed: ProtocolSummary) -> None:
        """Show the steps and power curve of the protocol version ``listed``."""
        key = (listed.name, listed.draft)
        preview = self._previews.get(key)
        if preview is None:
            try:
                preview = await self.catalog.preview(listed.name, draft=listed.draft)
            except CatalogError as exc:
                self.show_note(str(exc), error=True)
                return
            self._previews[key] = preview
        self.preview = preview
        steps: DataTable[str | Text] = self.query_one("#step-table", DataTable)
        step_cells: list[list[Cell]] = [
            [
                str(step.number),
                _number(step.duration_s),
                _number(step.start_w, 2),
                _number(step.end_w, 2),
                plain(step.ramp_type),
                _number(step.ring_mm, 2),
            ]
            for step in preview.steps
        ]
        fill_table(steps, STEP_COLUMNS, step_cells)
        plot = self.query_one("#curve", PowerPlot)
        if preview.curve:
            plot.set_series(
                "setpoint", preview.curve, label=f"setpoint ({mm_ss(preview.summary.total_duration_s)})"
            )
        else:
            plot.clear_series()
        summary = preview.summary
        if summary.error is not None:
            self.show_note(f"cannot be used: the stored protocol is unreadable: {summary.error}", error=True)
        elif summary.limit_problems:
            self.show_note("cannot be used: " + "; ".join(summary.limit_problems), error=True)
        elif summary.draft:
            self.show_note(
                f"DRAFT version {summary.version}, not approved: a trial on the simulated rig only, recorded "
                f"as such. {summary.description}",
                error=False,
            )
        else:
            version = f"version {summary.version}. " if summary.version else ""
            self.show_note(f"{version}{summary.description}", error=False)

    def show_note(self, text: str, *, error: bool) -> None:
        """The line under the preview: the description, or why the protocol cannot be used."""
        note = self.query_one("#protocol-note", Label)
        note.update(plain(text))
        note.set_class(error, "error")

    def show_status(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` on the status line (styled as an error unless ``error`` is False)."""
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")
        status.set_class(not error, "info")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed database read is shown on the status line."""
        if event.state is WorkerState.ERROR:
            self.show_status(f"failed: {event.worker.error}")

    # -- actions -------------------------------------------------------------------------------------------

    def highlighted(self) -> ProtocolSummary | None:
        """The protocol under the cursor, or None when the list is empty."""
        table: DataTable[str | Text] = self.query_one("#protocol-table", DataTable)
        row = table.cursor_row
        if 0 <= row < len(self.protocols) and row < table.row_count:
            return self.protocols[row]
        return None

    def action_start(self) -> None:
        """Ask for the session with the highlighted protocol (the app opens it)."""
        summary = self.highlighted()
        if summary is None:
            self.show_status("no protocol to choose")
            return
        if summary.error is not None:
            self.show_status(f"{summary.name} cannot be used: its stored data is unreadable")
            return
        if summary.limit_problems:
            self.show_status(f"{summary.name} cannot be used: it breaks a system limit (see above)")
            return
        if summary.draft and not self.context.settings.sim:
            self.show_status(f"{summary.name} v{summary.version} is a draft: only an approved version treats")
            return
        site = self.query_one("#site", Input).value.strip()
        if len(site) > MAX_SITE_LENGTH:
            self.show_status(f"the treatment site is {len(site)} characters; at most {MAX_SITE_LENGTH}")
            return
        trial = f" (trial of draft v{summary.version})" if summary.draft else ""
        self.show_status(f"opening a session: {self.subject_code}, {summary.name}{trial}...", error=False)
        self.post_message(
            SessionRequested(self.subject_code, summary.name, site or None, draft=summary.draft)
        )

    def action_start_now(self) -> None:
        """``s``: the same as Enter on the list (its own action, so the footer shows both keys)."""
        self.action_start()

    def action_site(self) -> None:
        """Put the cursor in the treatment site field."""
        self.query_one("#site", Input).focus()

    def action_back(self) -> None:
        """Escape: from the site field back to the list; from the list back to the subjects."""
        if isinstance(self.focused, Input):
            self.query_one("#protocol-table", DataTable).focus()
            return
        self.dismiss(None)


__all__ = ["MAX_SITE_LENGTH", "ProtocolChoiceScreen", "mm_ss"]
