"""The end-of-session screen: the session's summary, post-treatment notes, its events and its power trace.

Shown once a treatment session has closed (completed or aborted). The top of the screen is the summary
(status, laser-on time, average and maximum measured power, delivered energy against the energy the
protocol plans, steps completed, and the reason of an abort) next to, or above, the notes field. Below, two
panes: the session's events (treatment events, safety log rows and the session's opening and closing, in
time order) and the power trace (commanded and measured power over the session). Everything comes from
:func:`control.review.load_review`, read in a worker, and is drawn by the widgets of
:mod:`tui.widgets.session_review`, which the past-session screen shares.

Typing goes into the notes wherever the focus is: a printable key or a paste while the events or the tabs
have the focus lands in the notes at their cursor, and the focus moves there.

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

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState

from control.accounts import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import EndSession, SessionEnded
from control.review import SessionReviewData, load_review
from control.sessions import MAX_NOTES_LENGTH
from storage import DataDir
from tui.link import read_reply
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext, SessionFinished
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.header import ConsoleHeader
from tui.widgets.session_review import (
    EventsPane,
    NotesArea,
    ReviewFacts,
    TracePane,
    event_cells,
    format_energy,
    format_seconds,
    format_steps,
    format_watts,
    review_screen_css,
)

#: The question asked before finishing without notes (y finishes, n or escape goes back to the notes).
EMPTY_NOTES_QUESTION = "No post-treatment notes were typed. Finish the session without notes?"
#: Pane ids of the lower half, in the order ctrl+t cycles through them.
PANES = ("events-pane", "trace-pane")


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
    CSS = (
        review_screen_css("EndOfSessionScreen")
        + """
    EndOfSessionScreen #notes:focus {
        background: $primary 20%;
    }
    """
    )

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
            yield ReviewFacts(self.session_id, id="eos-summary")
            with Vertical(id="eos-notes-box"):
                yield Label("Post-treatment notes (what you type goes here)", id="notes-label")
                notes = NotesArea(
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
                yield EventsPane()
            with TabPane("Power trace", id=PANES[1]):
                yield TracePane()
        yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
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
        self.query_one(ReviewFacts).show(review)
        self.query_one(EventsPane).show(review)
        self.query_one(TracePane).show(review)
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
        notes.text = escape_controls(summary.post_treatment_notes, keep_newlines=True)
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
                ended = read_reply(
                    SessionEnded, await link.call(EndSession(notes=text if text.strip() else None))
                )
            except CommandFailed as exc:
                self.show_status(f"not saved: {exc}")
                return
            except ControllerUnavailable as exc:
                self.show_status(f"not saved, the controller cannot be reached: {exc}")
                return
            if ended.session_id != self.session_id:
                self.show_status(f"the controller answered for session {ended.session_id}")
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

    def on_key(self, event: events.Key) -> None:
        """A printable key typed while another pane (the events, the tabs) has the focus goes into the notes,
        at their cursor, and the focus moves there: nothing typed on this screen is dropped."""
        if event.is_printable and event.character is not None and self._take_typing():
            event.stop()
            event.prevent_default()
            self.query_one("#notes", TextArea).insert(event.character)

    def on_paste(self, event: events.Paste) -> None:
        """Text pasted while another pane has the focus goes into the notes too."""
        if event.text and self._take_typing():
            event.stop()
            event.prevent_default()
            text = event.text.replace("\r\n", "\n").replace("\r", "\n")
            self.query_one("#notes", TextArea).insert(escape_controls(text, keep_newlines=True))

    def _take_typing(self) -> bool:
        """True when typing elsewhere must go into the notes (and the focus has been moved there); False
        when the notes have the focus already, or cannot take text (recorded, saved: then it says so)."""
        notes = self.query_one("#notes", TextArea)
        if self.focused is notes:
            return False
        if notes.read_only:
            self.show_status("the notes are recorded and cannot be changed: ctrl+s finishes", error=False)
            return False
        # At once, not after this message: keys typed right after are already queued, and belong there too.
        self.set_focus(notes)
        return True

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
        status.update(plain(text))
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
    "PANES",
    "EndOfSessionScreen",
    "event_cells",
    "format_energy",
    "format_seconds",
    "format_steps",
    "format_watts",
]
