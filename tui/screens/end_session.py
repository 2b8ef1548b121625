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
controller's last session is the one shown, so notes never land on another session. A refusal, or a
controller that cannot be reached, is shown on the status line and the notes stay as typed.

Once the notes are in the record the technician signs the session (21 CFR Part 11): :class:`SignDialog`
asks for their password and the signature's meaning ("performed by" unless changed) and signs through
:func:`control.signing.sign_session`, which checks the password, audits every attempt and chains the
signature over the session's final record. A wrong password is refused in the dialog (nothing signed); escape
leaves the session unsigned and ctrl+s asks again. Only once signed does the screen post
:class:`tui.screens._base.SessionFinished`. A session already signed (the console was restarted after the
signature) only finishes.

Powers are shown in watts, energies in joules, times in seconds (minutes and seconds past a minute); clock
times are UTC.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Select, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState

from control.accounts import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import EndSession, SessionEnded
from control.review import SessionReviewData, load_review
from control.sessions import MAX_NOTES_LENGTH
from control.signing import SignatureRefused, sign_session, signatures
from storage import DataDir
from storage.signatures import DEFAULT_MEANING, MEANINGS, SessionSignature
from tui.link import read_reply
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext, SessionFinished
from tui.screens.dialogs import ConfirmDialog, DialogScreen
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
#: What the signature dialog says a signature is.
SIGNATURE_STATEMENT = (
    "Your electronic signature: you confirm this session's record (summary, events, telemetry and notes) "
    "with the meaning below. It cannot be changed afterwards."
)


class SignDialog(DialogScreen[bool]):
    """Sign a finished session (or an addendum to it): the signer's printed name as text, the meaning (a
    choice), the password. Enter signs; a refusal (a wrong password) is shown here and the password field is
    cleared; escape closes without signing (returns False).

    Args:
        title: the panel's title.
        context: the console's account service (its database) and settings.
        user: the person signing (the one logged in).
        session_id: the session signed.
        addendum: None to sign the session's record; text (may be empty) to ask for an addendum's notes
            (a field first) and sign them as an addendum.
    """

    DEFAULT_CSS = """
    SignDialog Select {
        width: 100%;
    }
    SignDialog .dialog-grid {
        grid-rows: 1 1 1;
    }
    """

    # Not a priority binding: the meaning's list takes its own enter; a field's enter arrives as Submitted.
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Sign")]

    def __init__(
        self,
        title: str,
        context: ScreenContext,
        user: UserInfo,
        session_id: int,
        *,
        addendum: str | None = None,
    ) -> None:
        super().__init__(title, cursor_blink=context.settings.cursor_blink)
        self.context = context
        self.user = user
        self.session_id = session_id
        self.addendum = addendum
        #: True while the signature is being checked and written.
        self.busy = False

    def compose(self) -> ComposeResult:
        with self.panel():
            yield Label(plain(SIGNATURE_STATEMENT), classes="dialog-prompt")
            if self.addendum is not None:
                yield Label("Notes to add (they are signed with the record)", classes="dialog-fact")
                yield self.text_input("sign-notes", "the addendum's notes", value=self.addendum)
            with Grid(classes="dialog-grid"):
                yield Label("Signer")
                yield Label(Text(f"{self.user.full_name} ({self.user.username})"), id="sign-who")
                yield Label("Meaning")
                yield Select(
                    [(meaning, meaning) for meaning in MEANINGS],
                    value=DEFAULT_MEANING,
                    allow_blank=False,
                    compact=True,
                    id="sign-meaning",
                )
                yield Label("Password")
                yield self.text_input("sign-password", "your password, then enter to sign", password=True)
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field("sign-notes" if self.addendum is not None else "sign-password").focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a field: on to the password, or sign."""
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        """Enter: sign with the meaning chosen and the password typed (on an addendum's notes, move to the
        password first)."""
        meaning = self.query_one("#sign-meaning", Select)
        if self.busy:
            return
        notes: str | None = None
        if self.addendum is not None:
            notes = self.field("sign-notes").value
            if not notes.strip():
                self.show_error("type the notes to add")
                self.field("sign-notes").focus()
                return
            if self.focused is self.field("sign-notes"):
                self.field("sign-password").focus()
                return
        password = self.field("sign-password").value
        if not password:
            self.show_error("enter your password to sign")
            return
        self.busy = True
        self.show_error("")
        self.sign(str(meaning.value), password, notes)

    @work(exclusive=True, group="sign-session", exit_on_error=False)
    async def sign(self, meaning: str, password: str, notes: str | None = None) -> None:
        """Check the password and sign; close on success, say why not otherwise."""
        try:
            await sign_session(
                self.context.accounts,
                self.session_id,
                self.user.username,
                password,
                meaning,
                addendum=notes,
            )
        except SignatureRefused as exc:
            self.field("sign-password").value = ""
            self.show_error(str(exc))
            self.busy = False
            return
        # Closed from the dialog's own message loop, not from this worker (which closing it cancels).
        self.post_message(self.Signed())

    class Signed(Message):
        """The signature is written: the dialog closes with True."""

    def on_sign_dialog_signed(self, event: SignDialog.Signed) -> None:
        event.stop()
        self.busy = False
        self.dismiss(True)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed write (the database unreadable or locked) is said in the dialog; nothing is signed."""
        if event.state is WorkerState.ERROR:
            event.stop()
            self.busy = False
            self.show_error(f"not signed: {event.worker.error}")

    def action_cancel(self) -> None:
        """Escape: close without signing."""
        if not self.busy:
            self.dismiss(False)


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
        #: True once the controller has accepted the notes (the session is then signed).
        self.notes_saved = False
        #: The session's signatures (read with the review).
        self.signatures: list[SessionSignature] = []
        #: True once the session is signed and finished.
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
        self.signatures = await signatures(self.context.accounts.sessions, self.session_id)
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

    @property
    def is_signed(self) -> bool:
        """True when the session carries a signature (made here or before a restart)."""
        return any(s.kind == "signature" for s in self.signatures)

    def action_save(self) -> None:
        """Save the notes, then sign (asks first when there are no notes)."""
        if self.busy or self.finished:
            return
        if self.notes_saved:
            self.ask_signature()
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
            self.notes_saved = True
            notes = self.query_one("#notes", TextArea)
            notes.read_only = True
            if self.is_signed:
                self.finished = True
                self.show_status("session finished; it was signed before", error=False)
                self.post_message(SessionFinished(self.session_id))
                return
            if text.strip():
                done = "notes saved"
            elif self.has_recorded_notes:
                done = "the notes recorded earlier are kept"
            else:
                done = "no notes"
            self.show_status(f"{done}; sign the session with your password", error=False)
            self.ask_signature()
        finally:
            self.busy = False

    def ask_signature(self) -> None:
        """Ask the technician to sign the session; finish once signed."""

        def answered(signed: bool | None) -> None:
            if not signed:
                self.show_status("the session is not signed yet: ctrl+s signs it", error=False)
                return
            self.finished = True
            self.show_status("signed; session finished", error=False)
            self.post_message(SessionFinished(self.session_id))

        self.app.push_screen(
            SignDialog(f"Sign session {self.session_id}", self.context, self.user, self.session_id), answered
        )

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
        if self.notes_saved and not self.finished:
            self.show_status("the session must be signed: ctrl+s signs it", error=False)
        elif not self.finished:
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
    "SIGNATURE_STATEMENT",
    "EndOfSessionScreen",
    "SignDialog",
    "event_cells",
    "format_energy",
    "format_seconds",
    "format_steps",
    "format_watts",
]
