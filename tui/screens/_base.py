"""What the console's screens share: the messages they post up to the app, and a base for form screens."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label
from textual.worker import Worker, WorkerState

from control.account_rules import UserInfo
from tui.safe_text import plain
from tui.settings import ConsoleSettings
from tui.widgets.header import ConsoleHeader

if TYPE_CHECKING:
    from control.accounts import AccountService
    from control.messages import Event, Preview, Snapshot
    from tui.link import ConsoleLink


class ScreenContext:
    """What a screen is given by the app (attributes down): the settings, the account service (whose
    ``sessions`` is the console's database) and the link to the controller (``None`` where no screen needs
    one, as in some tests).

    The console draws its first screen before its database is open (opening loads SQLAlchemy and may
    migrate): until :meth:`database_opened`, :attr:`accounts` is not there, and the login and first-run
    screens wait for it with :meth:`opened_accounts` when a form is submitted.
    """

    def __init__(
        self,
        settings: ConsoleSettings,
        accounts: AccountService | None = None,
        link: ConsoleLink | None = None,
    ) -> None:
        self.settings = settings
        self.link = link
        self._accounts = accounts
        self._opened = asyncio.Event()
        if accounts is not None:
            self._opened.set()

    @property
    def accounts(self) -> AccountService:
        """The account service (always there once someone has logged in)."""
        if self._accounts is None:
            raise RuntimeError("the console's database is not open yet")
        return self._accounts

    def database_opened(self, accounts: AccountService) -> None:
        """The database is open: the screens may use ``accounts``."""
        self._accounts = accounts
        self._opened.set()

    async def opened_accounts(self) -> AccountService:
        """The account service, once the database is open (the console opens it right after its first frame;
        if that fails the console exits)."""
        await self._opened.wait()
        return self.accounts


class SnapshotUpdated(Message):
    """The controller's newest state, posted to the screen on top (a newer one replaces one still queued)."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotUpdated)


class PreviewUpdated(Message):
    """The newest camera preview, posted to the screen on top (a newer one replaces one still queued)."""

    def __init__(self, preview: Preview) -> None:
        super().__init__()
        self.preview = preview

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PreviewUpdated)


class ControllerEvent(Message):
    """Something the controller reported (a transition, a warning, a fault); never coalesced."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class SessionRequested(Message):
    """The technician chose a subject and a protocol: the app opens the session and shows the checks."""

    def __init__(
        self, subject_code: str, protocol_name: str, treatment_site: str | None = None, *, draft: bool = False
    ) -> None:
        super().__init__()
        self.subject_code = subject_code
        self.protocol_name = protocol_name
        self.treatment_site = treatment_site
        #: Try the protocol's newest draft (the simulated rig only).
        self.draft = draft


class SessionFinished(Message):
    """The end-of-session notes were saved: the app goes back to the subjects."""

    def __init__(self, session_id: int) -> None:
        super().__init__()
        self.session_id = session_id


class LoggedIn(Message):
    """A user has logged in (from the login or first-run screen).

    ``password`` is the one just typed; the app hands it only to the change-password screen, which refuses
    it as the new password. Messages show none of their attributes in logs.
    """

    def __init__(self, user: UserInfo, password: str) -> None:
        super().__init__()
        self.user = user
        self.password = password


class PasswordChanged(Message):
    """The logged-in user chose their own password (from the change-password screen)."""

    def __init__(self, user: UserInfo) -> None:
        super().__init__()
        self.user = user


class LogoutRequested(Message):
    """The user asked to log out (from the home, lock or change-password screen)."""


class Unlocked(Message):
    """The locked console was reopened with the same user's password (``password``: what was typed, which
    the app uses only to authenticate its link to the controller again when the controller asked for it)."""

    def __init__(self, password: str = "") -> None:
        super().__init__()
        self.password = password


class EntryScreenRequested(Message):
    """The screen shown is out of date (an administrator now exists): show first-run or login afresh."""


@dataclass(frozen=True)
class FormField:
    """One labelled one-line field of a form screen; ``hint`` shows while it is empty."""

    id: str
    label: str
    hint: str
    password: bool = False


class FormScreen(Screen[None]):
    """A screen with text fields, a status line and one submit action that runs in a worker.

    Each screen declares its header title, form title and fields; the layout (header, panel, fields, status
    line, footer) is the same for all, and the first field has the focus when the screen opens. Enter moves
    from field to field and submits from the last. While a submission is being processed (hashing takes a
    moment) further submissions are ignored.
    """

    HEADER_TITLE: ClassVar[str] = ""
    FORM_TITLE: ClassVar[str] = ""
    FORM_FIELDS: ClassVar[tuple[FormField, ...]] = ()

    def __init__(self, context: ScreenContext) -> None:
        super().__init__()
        self.context = context
        self.busy = False

    def header_user_text(self) -> str:
        """Who is shown as logged in, in the header ("" for nobody)."""
        return ""

    def intro(self) -> Label | None:
        """A line under the form title explaining the screen, if it needs one."""
        return None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            self.HEADER_TITLE, sim=self.context.settings.sim, user_text=self.header_user_text()
        )
        with Vertical(id="form", classes="panel"):
            yield Label(self.FORM_TITLE, classes="form-title")
            intro = self.intro()
            if intro is not None:
                yield intro
            with Grid(classes="form-grid"):
                for field in self.FORM_FIELDS:
                    yield Label(field.label)
                    yield self.text_input(field.id, field.hint, password=field.password)
            yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(f"#{self.FORM_FIELDS[0].id}", Input).focus()

    def text_input(self, input_id: str, hint: str, *, password: bool = False) -> Input:
        """A one-line field showing ``hint`` while empty, following the console's cursor settings."""
        field = Input(None, hint, password=password, id=input_id, compact=True)
        field.cursor_blink = self.context.settings.cursor_blink
        return field

    def value(self, input_id: str) -> str:
        """The text of the field ``input_id``."""
        return self.query_one(f"#{input_id}", Input).value

    def show_status(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` on the status line (styled as an error unless ``error`` is False)."""
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")
        status.set_class(not error, "info")

    def focus_next_or_submit(self) -> bool:
        """Move focus to the next field; True when focus was already on the last one (then submit)."""
        field_ids = [field.id for field in self.FORM_FIELDS]
        focused = self.focused
        current = focused.id if isinstance(focused, Input) else None
        if current in field_ids[:-1]:
            index = field_ids.index(current)
            # At once, not after this message (``Widget.focus``): keys typed right after Enter are already
            # queued, and belong in the next field.
            self.set_focus(self.query_one(f"#{field_ids[index + 1]}", Input))
            return False
        return True

    def clear_fields(self, *field_ids: str) -> None:
        """Empty the named fields and put the focus in the first of them (after a refusal)."""
        for field_id in field_ids:
            self.query_one(f"#{field_id}", Input).value = ""
        self.query_one(f"#{field_ids[0]}", Input).focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that failed unexpectedly (a database error) is reported on the status line."""
        if event.state is WorkerState.ERROR:
            event.stop()
            self.busy = False
            error = event.worker.error
            self.show_status(f"failed: {error}" if error is not None else "failed")
