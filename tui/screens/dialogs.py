"""The console's modal dialogs: a reason, a power override, a password, and a yes/no question.

Each dialog is a small bordered panel over the screen it was opened from. Enter moves from field to field and
submits from the last; Escape cancels (the dialog dismisses with ``None``, or ``False`` for a question).
Whatever was typed is checked in the dialog itself: a bad value shows a specific message in the panel, the
dialog stays open, and nothing is returned until the value is valid. The dialogs only collect input; the
screen that opened one sends the command and shows the controller's answer.

The checks are plain functions (:func:`check_reason`, :func:`check_power`, :func:`check_credentials`) so the
rules can be read and tested without a screen.

A dialog is centred, or docked at the bottom (:meth:`DialogScreen.docked`) where the screen below must stay
readable: over the treatment dashboard the banner, the power and the interlocks stay visible, undimmed.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import ClassVar, Self, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label

from tui.safe_text import plain

#: The longest reason accepted, in characters (after surrounding spaces are removed).
MAX_REASON_CHARS = 500
#: Decimals accepted in a power override (0.01 W steps).
POWER_DECIMALS = 2

_DECIMAL = re.compile(r"(?P<sign>[-+]?)(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?:w|W)?")

ResultT = TypeVar("ResultT")


class DialogInputError(ValueError):
    """What was typed in a dialog is not acceptable; ``str(error)`` is the message shown to the operator and
    ``field`` names the field it is about (``None`` when the check has a single field)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def format_watts(watts: float) -> str:
    """Power as shown in the dialogs, in W: two decimals, one trailing zero dropped ("8.0", "4.5", "4.25")."""
    text = f"{watts:.{POWER_DECIMALS}f}"
    return text[:-1] if text.endswith("0") else text


def check_reason(text: str, *, what: str = "reason") -> str:
    """The reason with surrounding spaces removed; not blank and at most :data:`MAX_REASON_CHARS` characters.

    Raises :class:`DialogInputError` naming ``what`` otherwise.
    """
    reason = text.strip()
    if not reason:
        raise DialogInputError(f"the {what} cannot be blank; say why")
    if len(reason) > MAX_REASON_CHARS:
        raise DialogInputError(
            f"the {what} is {len(reason)} characters long; at most {MAX_REASON_CHARS} are allowed"
        )
    return reason


def check_power(text: str, max_w: float) -> float:
    """A typed power in watts: a finite decimal number (an optional trailing "W" is allowed), at most
    :data:`POWER_DECIMALS` decimals, from 0 to ``max_w`` W inclusive.

    Raises :class:`DialogInputError` with the operator's message otherwise.
    """
    match = _DECIMAL.fullmatch(text.strip())
    if match is None:
        raise DialogInputError("power must be a number in watts, e.g. 4.5")
    try:
        value = Decimal(match["number"])
    except InvalidOperation:
        raise DialogInputError("power must be a number in watts, e.g. 4.5") from None
    if match["sign"] == "-" and value != 0:
        raise DialogInputError("power cannot be negative")
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -POWER_DECIMALS:
        raise DialogInputError(f"power can have at most {POWER_DECIMALS} decimals (steps of 0.01 W)")
    watts = float(value)
    if not math.isfinite(watts):
        raise DialogInputError("power must be a number in watts, e.g. 4.5")
    if watts > max_w:
        raise DialogInputError(
            f"{format_watts(watts)} W is above this protocol's limit of {format_watts(max_w)} W"
        )
    return watts


def check_credentials(username: str, password: str) -> tuple[str, str]:
    """The username (surrounding spaces removed) and the password (as typed); neither may be empty.

    Raises :class:`DialogInputError` otherwise. The password itself is checked by the controller.
    """
    name = username.strip()
    if not name:
        raise DialogInputError("enter the username", field="username")
    if not password:
        raise DialogInputError("enter the password", field="password")
    return name, password


class DialogScreen(ModalScreen[ResultT]):
    """Base of the console's dialogs: a bordered panel (``#dialog``) centred over the screen below, an error
    line (``#dialog-error``) and a footer showing the keys. Escape cancels."""

    DEFAULT_CSS = """
    DialogScreen {
        align: center middle;
    }
    DialogScreen > #dialog {
        width: 64;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        padding: 0 1;
        border: round $primary;
        border-title-color: $foreground;
        border-title-style: bold;
        background: $surface;
    }
    DialogScreen .dialog-prompt {
        width: 100%;
        height: auto;
    }
    DialogScreen .dialog-fact {
        width: 100%;
        color: $text-muted;
    }
    DialogScreen .dialog-grid {
        grid-size: 2;
        grid-columns: 16 1fr;
        grid-rows: 1;
        grid-gutter: 1 0;
        height: auto;
        margin: 1 0 0 0;
    }
    DialogScreen .dialog-grid Label {
        color: $text-muted;
    }
    DialogScreen Input {
        width: 100%;
        background: $panel;
    }
    DialogScreen Input:focus {
        background: $primary 30%;
    }
    DialogScreen #dialog-error {
        width: 100%;
        height: auto;
        min-height: 1;
        margin: 1 0 0 0;
        color: $error;
        text-style: bold;
    }
    DialogScreen.-docked {
        align: center bottom;
    }
    DialogScreen.-docked > #dialog {
        width: 100%;
        max-width: 100;
    }
    DialogScreen.-docked .dialog-grid {
        grid-gutter: 0 0;
        margin: 0;
    }
    DialogScreen.-docked #dialog-error {
        margin: 0;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    #: Each dialog puts the focus where it belongs when mounted (not on the first field that can take it).
    AUTO_FOCUS: ClassVar[str | None] = ""

    def __init__(self, title: str, *, cursor_blink: bool = True) -> None:
        super().__init__()
        self.dialog_title = title
        self.cursor_blink = cursor_blink

    def docked(self) -> Self:
        """Dock the panel at the bottom, compact, without dimming the screen below (which stays readable
        above it); returns the dialog."""
        self.add_class("-docked")
        return self

    def panel(self) -> Vertical:
        """The bordered panel the dialog's content goes in (titled with the dialog's title)."""
        box = Vertical(id="dialog")
        box.border_title = self.dialog_title
        return box

    def text_input(self, input_id: str, hint: str, *, value: str = "", password: bool = False) -> Input:
        """A one-line field showing ``hint`` while empty, with the cursor blinking as configured."""
        field = Input(value, hint, password=password, id=input_id, compact=True)
        field.cursor_blink = self.cursor_blink
        return field

    def error_line(self) -> Label:
        """The (initially empty) line where refusals are shown."""
        return Label("", id="dialog-error")

    def show_error(self, text: str) -> None:
        """Show why the input was refused (the dialog stays open)."""
        self.query_one("#dialog-error", Label).update(plain(text))

    def field(self, input_id: str) -> Input:
        """The text field ``input_id``."""
        return self.query_one(f"#{input_id}", Input)

    def refuse(self, error: DialogInputError, input_id: str) -> None:
        """Show ``error`` and put the focus in the field it is about."""
        self.show_error(str(error))
        self.field(input_id).focus()

    def action_cancel(self) -> None:
        """Escape: close the dialog without a result."""
        self.dismiss(None)


class ReasonDialog(DialogScreen[str | None]):
    """Ask for a one-line reason (e.g. "Abort session"): returns it stripped, or ``None`` on Escape.

    Args:
        title: the panel's title.
        prompt: the question above the field.
        cursor_blink: whether the text cursor blinks.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Confirm", priority=True)]

    def __init__(self, title: str, prompt: str, *, cursor_blink: bool) -> None:
        super().__init__(title, cursor_blink=cursor_blink)
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with self.panel():
            yield Label(plain(self.prompt), classes="dialog-prompt")
            with Grid(classes="dialog-grid"):
                yield Label("Reason")
                yield self.text_input("reason", f"why (at most {MAX_REASON_CHARS} characters)")
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field("reason").focus()

    def action_submit(self) -> None:
        """Enter: return the reason if it is acceptable, else say why not."""
        try:
            reason = check_reason(self.field("reason").value)
        except DialogInputError as exc:
            self.refuse(exc, "reason")
            return
        self.dismiss(reason)


class OverrideDialog(DialogScreen[tuple[float, str] | None]):
    """Override the running step's power: returns ``(watts, reason)`` or ``None`` on Escape.

    The new power (W) must be a finite decimal number from 0 to ``max_w`` with at most two decimals; the
    reason must not be blank. The power commanded when the dialog opened is shown, and the step the override
    is for (it applies to that step only).

    Args:
        current_w: the power commanded now, W (finite, >= 0).
        max_w: the protocol's power limit, W (finite, >= 0).
        cursor_blink: whether the text cursor blinks.
        step: the number of the protocol step the override is for, shown in the title.

    Raises:
        ValueError: ``current_w`` or ``max_w`` is negative or not finite.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Next / override", priority=True)]

    def __init__(
        self, *, current_w: float, max_w: float, cursor_blink: bool, step: int | None = None
    ) -> None:
        for name, value in (("current_w", current_w), ("max_w", max_w)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite power >= 0 W, got {value!r}")
        title = "Override power" if step is None else f"Override power of step {step}"
        super().__init__(title, cursor_blink=cursor_blink)
        self.step = step
        self.current_w = current_w
        self.max_w = max_w

    def compose(self) -> ComposeResult:
        with self.panel():
            yield Label(
                f"Commanded now: {format_watts(self.current_w)} W    "
                f"Protocol limit: {format_watts(self.max_w)} W",
                id="override-now",
                classes="dialog-fact",
            )
            with Grid(classes="dialog-grid"):
                yield Label("New power (W)")
                yield self.text_input("power", f"0 to {format_watts(self.max_w)}, e.g. 4.5")
                yield Label("Reason")
                yield self.text_input("reason", "why the power is changed")
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field("power").focus()

    def action_submit(self) -> None:
        """Enter: from the power field, check it and move to the reason; from the reason, return both."""
        try:
            watts = check_power(self.field("power").value, self.max_w)
        except DialogInputError as exc:
            self.refuse(exc, "power")
            return
        reason_field = self.field("reason")
        if self.focused is not reason_field:
            self.show_error("")
            reason_field.focus()
            return
        try:
            reason = check_reason(reason_field.value)
        except DialogInputError as exc:
            self.refuse(exc, "reason")
            return
        self.dismiss((watts, reason))


class PasswordDialog(DialogScreen[tuple[str, str] | None]):
    """Ask for a password (arming, fault reset) and, where the person is not known, a username: returns
    ``(username, password)`` or ``None`` on Escape. The password is never shown.

    With ``username`` given, the dialog is for that person alone: who it is (``who``, default the username)
    is shown as text, not as a field anyone could edit, so nobody can type their own credentials into
    someone else's key control. With ``username`` ``None`` a username field is asked first (an admin's
    credentials, for instance).

    Args:
        title: the panel's title.
        prompt: what the credentials are for.
        username: the person whose password it is, or ``None`` to ask for a username.
        cursor_blink: whether the text cursor blinks.
        who: how the person is named in the dialog (e.g. "Tina Turner (tina)"); shown as plain text.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Next / confirm", priority=True)]

    def __init__(
        self, title: str, prompt: str, *, username: str | None, cursor_blink: bool, who: str | None = None
    ) -> None:
        super().__init__(title, cursor_blink=cursor_blink)
        self.prompt = prompt
        self.username = username
        self.who = who if who is not None else username

    def compose(self) -> ComposeResult:
        with self.panel():
            yield Label(plain(self.prompt), classes="dialog-prompt")
            with Grid(classes="dialog-grid"):
                if self.username is not None:
                    yield Label("Who")
                    # Text, never markup: a name is whatever a person typed.
                    yield Label(Text(self.who or self.username), id="password-who")
                else:
                    yield Label("Username")
                    yield self.text_input("username", "your username")
                yield Label("Password")
                yield self.text_input("password", "your password", password=True)
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field("password" if self.username is not None else "username").focus()

    def _typed_username(self) -> str:
        return self.username if self.username is not None else self.field("username").value

    def action_submit(self) -> None:
        """Enter: from the username, move to the password; from the password, return both."""
        password_field = self.field("password")
        if self.focused is not password_field:
            if not self._typed_username().strip():
                self.refuse(DialogInputError("enter the username", field="username"), "username")
                return
            self.show_error("")
            password_field.focus()
            return
        try:
            credentials = check_credentials(self._typed_username(), password_field.value)
        except DialogInputError as exc:
            self.refuse(exc, exc.field or "password")
            return
        self.dismiss(credentials)


class ConfirmDialog(DialogScreen[bool]):
    """A yes/no question: Y or the Yes button returns True; N, the No button or Escape return False.

    The No button has the focus when the dialog opens, so Enter alone answers no.
    """

    DEFAULT_CSS = """
    ConfirmDialog #confirm-buttons {
        width: 100%;
        height: auto;
        align-horizontal: center;
        margin: 1 0 0 0;
    }
    ConfirmDialog #confirm-buttons Button {
        margin: 0 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "cancel", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__("Confirm")
        self.question = question

    def compose(self) -> ComposeResult:
        with self.panel():
            yield Label(plain(self.question), classes="dialog-prompt", id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes (y)", id="yes", variant="warning", compact=True)
                yield Button("No (n)", id="no", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        """Answer the question."""
        self.dismiss(yes)

    def action_cancel(self) -> None:
        """Escape: the answer is no."""
        self.dismiss(False)
