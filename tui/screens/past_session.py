"""A past treatment session, read-only: its summary, notes, events with their details, and power trace.

Opened from a subject's history (Enter on a session), by a technician, an engineer or an admin. Everything
comes from the record through :func:`control.review.load_review` (read in a worker) and is drawn by the same
widgets as the end-of-session screen (:mod:`tui.widgets.session_review`): the summary (status, start,
laser-on time, energy against the plan, average and maximum power, steps, technician, the reason of an
abort), the treatment notes and post-treatment notes, the events (the highlighted one in full, with what its
record says: the reason of a pause or an abort, an override's old and new power and its reason) and the
power trace read from the session's telemetry file (what is wrong with that file, when something is, is
said above the plot), and the snapshots taken during the session, as a list
(:mod:`tui.widgets.snapshots_pane`). Below the notes: the session's electronic signatures and signed
addenda (who, printed name, meaning, when; an addendum's notes). Nothing on this screen changes the record;
"a" adds a signed addendum to a finished session (later notes, signed with the password and a meaning, by
:class:`tui.screens.end_session.SignDialog`), which is appended, never written over anything. Escape goes
back to the history.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Label, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from control.accounts import UserInfo
from control.imaging_records import session_snapshots
from control.review import SessionReviewData, load_review
from control.signing import signatures
from storage import DataDir
from storage.signatures import SessionSignature
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.screens.end_session import SignDialog
from tui.widgets.header import ConsoleHeader
from tui.widgets.session_review import (
    READING,
    EventsPane,
    ReviewFacts,
    TracePane,
    review_screen_css,
    signatures_text,
)
from tui.widgets.snapshots_pane import SnapshotsPane

#: Pane ids of the lower half, in the order ctrl+t cycles through them.
PANES = ("past-events-pane", "past-trace-pane", "past-snapshots-pane")


def notes_text(review: SessionReviewData, signed: list[SessionSignature] | None = None) -> Text:
    """The session's signatures (``signed``, when given: first, they say whose record it is), then its
    treatment notes and post-treatment notes as recorded (drawn as text, line breaks kept, control
    characters escaped), each under its heading; says so when there are no notes."""
    summary = review.summary
    text = Text()
    if signed is not None:
        text.append_text(signatures_text(signed))
        text.append("\n")
    parts = (
        ("Treatment notes", summary.treatment_notes),
        ("Post-treatment notes", summary.post_treatment_notes),
    )
    for name, value in parts:
        if not value:
            continue
        if text.plain:
            text.append("\n")
        text.append(f"{name}\n", style="bold")
        text.append_text(plain(value, keep_newlines=True))
    if not any(value for _name, value in parts):
        text.append(("\n" if text.plain else "") + "No notes were recorded for this session.")
    return text


class PastSessionScreen(Screen[None]):
    """One past session, read-only (see the module documentation).

    Args:
        context: the console's settings and account service (its database).
        user: who is logged in (a technician, an engineer or an admin).
        session_id: the session to show.
    """

    # Textual declares these on Screen as plain attributes, so they are not ClassVars here either.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]  # noqa: RUF012

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("tab", "app.focus_next", "Next pane"),
        Binding("shift+tab", "app.focus_previous", "Previous pane", show=False),
        Binding("ctrl+t", "next_pane", "Events/trace/snapshots", priority=True),
        Binding("a", "addendum", "Signed addendum"),
    ]

    CSS = (
        review_screen_css("PastSessionScreen")
        + """
    PastSessionScreen #notes {
        background: $surface;
        padding: 0 1;
    }
    PastSessionScreen #notes:focus {
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
        #: The session's signatures and signed addenda, oldest first.
        self.signatures: list[SessionSignature] = []

    def compose(self) -> ComposeResult:
        user = self.user
        yield ConsoleHeader(
            "Past session", sim=self.context.settings.sim, user_text=f"{user.username} ({user.role})"
        )
        with Vertical(id="eos-top"):
            yield ReviewFacts(self.session_id, id="eos-summary")
            with Vertical(id="eos-notes-box"):
                yield Label("Signatures and notes (read-only)", id="notes-label")
                with VerticalScroll(id="notes"):
                    yield Static(READING, id="past-notes")
        with TabbedContent(id="eos-tabs", initial=PANES[0]):
            with TabPane("Events", id=PANES[0]):
                yield EventsPane()
            with TabPane("Power trace", id=PANES[1]):
                yield TracePane()
            with TabPane("Snapshots", id=PANES[2]):
                yield SnapshotsPane()
        yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#events").focus()
        self.show_status("reading the session's records...", error=False)
        self.load()

    @work(exclusive=True, group="past-session-review", exit_on_error=False)
    async def load(self) -> None:
        """Read the session's summary, notes, events, power trace and snapshots and show them."""
        sessions = self.context.accounts.sessions
        review = await load_review(sessions, DataDir(self.context.settings.data_dir), self.session_id)
        self.signatures = await signatures(sessions, self.session_id)
        self.show_review(review)
        self.query_one(SnapshotsPane).show(await session_snapshots(sessions, self.session_id))

    def show_review(self, review: SessionReviewData) -> None:
        """Fill the summary, the notes, the events table and the power trace from ``review``."""
        self.review = review
        self.query_one(ReviewFacts).show(review)
        self.query_one("#past-notes", Static).update(notes_text(review, self.signatures))
        self.query_one(EventsPane).show(review)
        self.query_one(TracePane).show(review)
        open_now = " (still open: the record is not complete)" if review.summary.is_open else ""
        self.show_status(
            f"{len(review.events)} events{open_now}; the highlighted event is shown in full under the table",
            error=False,
        )

    def action_next_pane(self) -> None:
        """Show the next lower pane (events, power trace or snapshots)."""
        tabs = self.query_one("#eos-tabs", TabbedContent)
        index = PANES.index(tabs.active) if tabs.active in PANES else -1
        tabs.active = PANES[(index + 1) % len(PANES)]

    def action_addendum(self) -> None:
        """Add later notes to a finished session as a signed addendum."""
        if self.review is None:
            return
        if self.review.summary.is_open:
            self.show_status("the session is still open: an addendum is added once it has finished")
            return

        def answered(signed: bool | None) -> None:
            if signed:
                self.show_status("the addendum is signed and added to the record", error=False)
                self.load()
            else:
                self.show_status("no addendum added", error=False)

        self.app.push_screen(
            SignDialog(
                f"Addendum to session {self.session_id}",
                self.context,
                self.user,
                self.session_id,
                addendum="",
            ),
            answered,
        )

    def action_back(self) -> None:
        """Back to the subject's history."""
        self.dismiss(None)

    def show_status(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` on the status line (styled as an error unless ``error`` is False)."""
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")
        status.set_class(not error, "info")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed read (the database unreadable, the session gone) is said on the status line."""
        if event.state is WorkerState.ERROR:
            event.stop()
            self.show_status(f"cannot read session {self.session_id}: {event.worker.error}")


__all__ = ["PANES", "PastSessionScreen", "notes_text"]
