"""The end-of-session screen: the session's summary, post-treatment notes, its events and its power trace.

Shown once a treatment session has closed (completed or aborted). The top of the screen is the summary
(status, laser-on time, average and maximum measured power, delivered energy against the energy the
protocol plans, steps completed, and the reason of an abort) next to, or above, the notes field. Below, two
panes: the session's events (treatment events, safety log rows and the session's opening and closing, in
time order) and the power trace (commanded and measured power over the session). Everything comes from
:func:`control.review.load_review`, read in a worker.

The notes step must be answered: there is no way out with escape. Ctrl+S sends the notes to the controller
(:class:`control.messages.EndSession`), which writes them to the session it just closed; empty notes are
allowed but first ask for a y/n confirmation. Notes already in the record (saved before the console was
restarted) are shown read-only, and ctrl+s then only finishes. Before sending, the screen checks that the
controller's last session is the one shown, so notes never land on another session. Once the controller has
accepted them the screen posts :class:`tui.screens._base.SessionFinished`. A refusal, or a controller that
cannot be reached, is shown on the status line and the notes stay as typed.

Powers are shown in watts, energies in joules, times in seconds (minutes and seconds past a minute); clock
times are UTC.
"""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState

from control.accounts import UserInfo
from control.ipc import CommandFailed, ControllerUnavailable
from control.messages import EndSession
from control.review import ReviewEvent, SessionReviewData, load_review
from control.sessions import MAX_NOTES_LENGTH
from storage import DataDir
from tui.screens._base import ScreenContext, SessionFinished
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.header import ConsoleHeader
from tui.widgets.plot import PowerPlot

#: Shown in place of a value the review has not read yet.
READING = "reading..."
#: Shown for a value the record does not have (a laser that never emitted has no average power).
NO_VALUE = "-"
#: The question asked before finishing without notes (y finishes, n or escape goes back to the notes).
EMPTY_NOTES_QUESTION = "No post-treatment notes were typed. Finish the session without notes?"
#: Pane ids of the lower half, in the order ctrl+t cycles through them.
PANES = ("events-pane", "trace-pane")
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


#: The events table's headings, one per cell of :func:`event_cells`.
EVENT_COLUMNS = ("Time", "+s", "Severity", "By", "Event", "Kind")


def event_cells(event: ReviewEvent) -> tuple[str, str, Text, str, str, str]:
    """The events table's cells for one event: UTC clock time, seconds since the session started, severity,
    who, description and the stored event type."""
    loud = event.severity in _LOUD_SEVERITIES
    severity = Text(event.severity.upper() if loud else event.severity, style="bold" if loud else "")
    return (
        event.at.strftime("%H:%M:%S"),
        f"{event.offset_s:.1f}",
        severity,
        event.who,
        event.description,
        event.kind,
    )


class EndOfSessionScreen(Screen[None]):
    """End of a treatment session: summary, notes, events and power trace; ctrl+s saves and finishes.

    Args:
        context: the console's settings, account service (its database) and controller link.
        user: the technician logged in.
        session_id: the session that has just closed.
    """

    # Textual declares these on Screen as plain attributes, so they are not ClassVars here either.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]  # noqa: RUF012

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save notes and finish", priority=True),
        Binding("tab", "app.focus_next", "Next pane"),
        Binding("shift+tab", "app.focus_previous", "Previous pane", show=False),
        Binding("ctrl+t", "next_pane", "Events/trace", priority=True),
        Binding("escape", "explain_no_escape", "Notes must be saved", show=False),
    ]

    # Screen-level CSS (not DEFAULT_CSS) so that it takes precedence over the console's shared rules for
    # ``#status``.
    CSS = """
    EndOfSessionScreen #eos-top {
        layout: vertical;
        height: auto;
        margin: 0 1;
    }
    EndOfSessionScreen #eos-summary {
        height: auto;
        padding: 0 1;
        background: $surface;
    }
    EndOfSessionScreen #eos-title {
        width: 100%;
        text-style: bold;
        color: $accent;
    }
    EndOfSessionScreen #eos-facts {
        grid-size: 4;
        grid-columns: 10 16 10 1fr;
        grid-rows: auto;
        grid-gutter: 0 1;
        height: auto;
    }
    EndOfSessionScreen #eos-facts .fact-name {
        color: $text-muted;
    }
    EndOfSessionScreen #eos-facts Static {
        height: 1;
    }
    EndOfSessionScreen #fact-reason-name, EndOfSessionScreen #fact-reason {
        display: none;
    }
    EndOfSessionScreen #eos-facts.-aborted #fact-reason-name,
    EndOfSessionScreen #eos-facts.-aborted #fact-reason {
        display: block;
    }
    EndOfSessionScreen #eos-facts #fact-reason {
        column-span: 3;
        height: auto;
        max-height: 2;
    }
    EndOfSessionScreen #fact-status.-completed {
        color: $success;
        text-style: bold;
    }
    EndOfSessionScreen #fact-status.-aborted {
        color: $error;
        text-style: bold;
    }
    EndOfSessionScreen #eos-notes-box {
        height: auto;
    }
    EndOfSessionScreen #notes-label {
        color: $text-muted;
        padding: 0 1;
    }
    EndOfSessionScreen #notes {
        height: 3;
        background: $panel;
    }
    EndOfSessionScreen #notes:focus {
        background: $primary 20%;
    }
    EndOfSessionScreen.-tall #notes {
        height: 6;
    }
    EndOfSessionScreen.-wide #eos-top {
        layout: horizontal;
        height: 10;
    }
    EndOfSessionScreen.-wide #eos-summary {
        width: 1fr;
        height: 100%;
    }
    EndOfSessionScreen.-wide #eos-facts {
        grid-size: 2;
        grid-columns: 12 1fr;
    }
    EndOfSessionScreen.-wide #eos-facts #fact-reason {
        column-span: 1;
        max-height: 1;
    }
    EndOfSessionScreen.-wide #eos-notes-box {
        width: 1fr;
        height: 100%;
        margin: 0 0 0 1;
    }
    EndOfSessionScreen.-wide #notes {
        height: 1fr;
    }
    EndOfSessionScreen #eos-tabs {
        height: 1fr;
        margin: 0 1;
    }
    EndOfSessionScreen #eos-tabs TabPane {
        padding: 0;
    }
    EndOfSessionScreen #events {
        height: 1fr;
    }
    EndOfSessionScreen #trace-note {
        width: 100%;
        color: $text-muted;
    }
    EndOfSessionScreen #trace-note.-problem {
        color: $warning;
        text-style: bold;
    }
    EndOfSessionScreen #trace-plot {
        height: 1fr;
    }
    EndOfSessionScreen #status {
        margin: 0 1;
        height: 1;
        min-height: 1;
    }
    """

    def __init__(self, context: ScreenContext, user: UserInfo, session_id: int) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.session_id = session_id
        #: The loaded review, None until the worker has read it.
        self.review: SessionReviewData | None = None
        #: True while the notes are on their way to the controller.
        self.busy = False
        #: True once the controller has accepted the notes.
        self.finished = False

    # -- layout --------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        user = self.user
        yield ConsoleHeader(
            "End of session", sim=self.context.settings.sim, user_text=f"{user.username} ({user.role})"
        )
        with Vertical(id="eos-top"):
            with Vertical(id="eos-summary"):
                yield Label(f"Session {self.session_id}", id="eos-title")
                with Grid(id="eos-facts"):
                    for fact_id, name in FACTS:
                        yield Label(name, classes="fact-name", id=f"fact-{fact_id}-name")
                        yield Static(READING, id=f"fact-{fact_id}")
            with Vertical(id="eos-notes-box"):
                yield Label("Post-treatment notes", id="notes-label")
                notes = TextArea(
                    id="notes",
                    soft_wrap=True,
                    tab_behavior="focus",
                    compact=True,
                    placeholder="observations after the treatment (ctrl+s saves and finishes)",
                )
                notes.cursor_blink = self.context.settings.cursor_blink
                yield notes
        with TabbedContent(id="eos-tabs", initial=PANES[0]):
            with TabPane("Events", id=PANES[0]):
                yield DataTable(id="events", cursor_type="row", zebra_stripes=True)
            with TabPane("Power trace", id=PANES[1]):
                yield Label("", id="trace-note")
                yield PowerPlot(y_unit="W", x_unit="s", id="trace-plot")
        yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#events", DataTable).add_columns(*EVENT_COLUMNS)
        self.query_one("#notes", TextArea).focus()
        self.show_status("reading the session's records...", error=False)
        self.load()

    # -- the review ----------------------------------------------------------------------------------------

    @work(exclusive=True, group="end-session-review", exit_on_error=False)
    async def load(self) -> None:
        """Read the session's summary, events and power trace and show them."""
        settings = self.context.settings
        review = await load_review(
            self.context.accounts.sessions, DataDir(settings.data_dir), self.session_id
        )
        self.show_review(review)

    def show_review(self, review: SessionReviewData) -> None:
        """Fill the summary, the events table and the power trace from ``review``."""
        self.review = review
        summary = review.summary
        title = f"Session {summary.session_id}"
        for part in (summary.subject_code, summary.protocol_name):
            if part:
                title += f" · {part}"
        self.query_one("#eos-title", Label).update(title)
        status = self.query_one("#fact-status", Static)
        status.update(summary.status)
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
            self.query_one(f"#fact-{fact_id}", Static).update(text)

        # The columns get their widths here, from the cells: a table left to measure them itself draws a
        # first frame with every column cut to its heading, and keeps those lines in its cache.
        table = self.query_one("#events", DataTable)
        table.clear(columns=True)
        rows = [event_cells(event) for event in review.events]
        for index, label in enumerate(EVENT_COLUMNS):
            cells = (label, *(row[index] for row in rows))
            table.add_column(label, width=max(cell_len(str(cell)) for cell in cells))
        for row in rows:
            table.add_row(*row)

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
            note.update(review.trace_problem)
        else:
            note.update(f"{trace.sample_count} samples; seconds since the session opened")
        note.set_class(review.trace_problem is not None, "-problem")
        if summary.post_treatment_notes is None:
            self.show_status("type the post-treatment notes, then ctrl+s", error=False)
            return
        # The notes were saved before (the console was restarted since): show them; they are part of the
        # record and cannot be changed, so ctrl+s only finishes.
        notes = self.query_one("#notes", TextArea)
        if notes.text.strip():
            self.show_status(
                "this session already has post-treatment notes: what you typed cannot be added to them"
            )
            return
        notes.text = summary.post_treatment_notes
        notes.read_only = True
        self.show_status(
            "this session already has post-treatment notes (they cannot be changed): ctrl+s finishes",
            error=False,
        )

    @property
    def has_recorded_notes(self) -> bool:
        """True when the session's record already holds post-treatment notes."""
        return self.review is not None and self.review.summary.post_treatment_notes is not None

    # -- saving --------------------------------------------------------------------------------------------

    def action_save(self) -> None:
        """Save the notes and finish (asks first when there are none)."""
        if self.busy or self.finished:
            return
        notes = self.query_one("#notes", TextArea)
        if self.has_recorded_notes and notes.read_only:
            self.busy = True
            self.send_notes("")  # the notes on screen are the recorded ones: only finish
            return
        text = notes.text
        if len(text) > MAX_NOTES_LENGTH:
            self.show_status(f"the notes have {len(text)} characters; at most {MAX_NOTES_LENGTH} are kept")
            return
        if text.strip():
            self.busy = True
            self.send_notes(text)
            return

        def answered(finish: bool | None) -> None:
            if finish:
                self.busy = True
                self.send_notes("")
            else:
                self.show_status("type the post-treatment notes, then ctrl+s", error=False)
                self.query_one("#notes", TextArea).focus()

        self.app.push_screen(ConfirmDialog(EMPTY_NOTES_QUESTION), answered)

    @work(exclusive=True, group="end-session-save", exit_on_error=False)
    async def send_notes(self, text: str) -> None:
        """Send the notes to the controller; on success post :class:`SessionFinished`."""
        try:
            link = self.context.link
            if link is None:
                self.show_status("not connected to the controller: the notes were not saved")
                return
            snapshot = link.snapshot
            if snapshot is None:
                why = link.problem or "no state received from it yet"
                self.show_status(f"not saved, the controller cannot be reached: {why}")
                return
            if snapshot.last_session_id != self.session_id:
                self.show_status(
                    f"the controller's last session is {snapshot.last_session_id}, not {self.session_id}: "
                    "the notes were not saved"
                )
                return
            self.show_status("saving the notes...", error=False)
            try:
                reply = await link.call(EndSession(notes=text if text.strip() else None))
            except CommandFailed as exc:
                self.show_status(f"not saved: {exc}")
                return
            except ControllerUnavailable as exc:
                self.show_status(f"not saved, the controller cannot be reached: {exc}")
                return
            if reply.get("session_id") != self.session_id:
                self.show_status(f"the controller answered for session {reply.get('session_id')}")
                return
            self.finished = True
            notes = self.query_one("#notes", TextArea)
            notes.read_only = True
            if text.strip():
                done = "notes saved; session finished"
            elif self.has_recorded_notes:
                done = "session finished; the notes recorded earlier are kept"
            else:
                done = "finished without notes"
            self.show_status(done, error=False)
            self.post_message(SessionFinished(self.session_id))
        finally:
            self.busy = False

    # -- keys ----------------------------------------------------------------------------------------------

    def action_next_pane(self) -> None:
        """Show the other lower pane (events or power trace)."""
        tabs = self.query_one("#eos-tabs", TabbedContent)
        index = PANES.index(tabs.active) if tabs.active in PANES else -1
        tabs.active = PANES[(index + 1) % len(PANES)]

    def action_explain_no_escape(self) -> None:
        """Escape does not leave this screen: say how to finish instead."""
        if not self.finished:
            self.show_status(
                "the notes step must be answered: ctrl+s saves the notes and finishes", error=False
            )

    # -- status --------------------------------------------------------------------------------------------

    def show_status(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` on the status line (styled as an error unless ``error`` is False)."""
        status = self.query_one("#status", Label)
        status.update(text)
        status.set_class(error, "error")
        status.set_class(not error, "info")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that failed (the database unreadable, an unexpected reply) is reported on the status
        line; the notes stay as typed."""
        if event.state is not WorkerState.ERROR:
            return
        event.stop()
        error = event.worker.error
        if event.worker.group == "end-session-review":
            self.show_status(f"cannot read the review of session {self.session_id}: {error}")
        else:
            self.busy = False
            self.show_status(f"not saved: {error}")


__all__ = [
    "EMPTY_NOTES_QUESTION",
    "EndOfSessionScreen",
    "event_cells",
    "format_energy",
    "format_seconds",
    "format_steps",
    "format_watts",
]
