"""The dialogs of the users screen: a new account, another full name, another role, a new password.

Each dialog checks what was typed with the account rules (:mod:`control.account_rules`) before it returns: a
bad value shows the rule's reason in the panel, puts the focus in the field it is about, and the dialog stays
open. Enter moves from field to field and submits from the last; Escape cancels (``None``). The screen that
opened a dialog makes the change, where the rules that need the database (the last active admin, a change
made meanwhile) are applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.widgets import Footer, Label

from control.account_rules import (
    AccountError,
    UserInfo,
    check_full_name,
    check_password_policy,
    check_username,
)
from tui.safe_text import escape_controls, plain
from tui.screens.dialogs import DialogInputError, DialogScreen

#: The roles, in the order they are offered.
ROLE_NAMES = ("technician", "engineer", "admin")


def parse_role(text: str) -> str:
    """The role named by ``text``: a role's name or its first letters (case and spaces ignored).

    Raises :class:`DialogInputError` otherwise.
    """
    typed = text.strip().lower()
    matches = [role for role in ROLE_NAMES if typed and role.startswith(typed)]
    if len(matches) != 1:
        raise DialogInputError(f"the role must be one of {', '.join(ROLE_NAMES)}")
    return matches[0]


def check_new_password(password: str, repeat: str, username: str) -> str:
    """The new password, if it follows the password rules and was typed the same twice.

    Raises :class:`DialogInputError` naming the field (``password`` or ``repeat``).
    """
    try:
        check_password_policy(password, username)
    except AccountError as exc:
        raise DialogInputError(str(exc), field="password") from None
    if password != repeat:
        raise DialogInputError("the two passwords differ; type them again", field="repeat")
    return password


def _who(user: UserInfo) -> str:
    return f"{user.full_name} ({user.username})"


@dataclass(frozen=True)
class NewAccount:
    """What the add dialog collected (checked)."""

    username: str
    full_name: str
    role: str
    password: str


class _FieldsDialog(DialogScreen[object]):
    """A dialog of labelled fields; Enter goes to the next field, and from the last one submits."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Next / save", priority=True)]
    #: (id, label, hint, password) of each field, in order.
    FIELDS: ClassVar[tuple[tuple[str, str, str, bool], ...]] = ()

    def __init__(self, title: str, *, cursor_blink: bool, prompt: str = "") -> None:
        super().__init__(title, cursor_blink=cursor_blink)
        self.prompt = prompt

    def initial(self, field_id: str) -> str:
        """The value a field opens with."""
        return ""

    def compose(self) -> ComposeResult:
        with self.panel():
            if self.prompt:
                yield Label(plain(self.prompt), classes="dialog-prompt", id="dialog-prompt")
            with Grid(classes="dialog-grid"):
                for field_id, label, hint, password in self.FIELDS:
                    yield Label(label)
                    yield self.text_input(field_id, hint, value=self.initial(field_id), password=password)
            yield self.error_line()
        yield Footer()

    def on_mount(self) -> None:
        self.field(self.FIELDS[0][0]).focus()

    def action_submit(self) -> None:
        """Enter: the next field, or from the last one check everything and return it."""
        ids = [field_id for field_id, *_ in self.FIELDS]
        focused = self.focused
        current = focused.id if focused is not None else None
        if current in ids[:-1]:
            self.show_error("")
            self.set_focus(self.field(ids[ids.index(current) + 1]))
            return
        try:
            result = self.collect()
        except DialogInputError as exc:
            field_id = exc.field or ids[0]
            if field_id in ("password", "repeat") and "password" in ids:
                self.field("password").value = ""
                self.field("repeat").value = ""
                field_id = "password"
            self.refuse(exc, field_id)
            return
        self.dismiss(result)

    def collect(self) -> object:
        """The checked values (raise :class:`DialogInputError` naming the field otherwise)."""
        raise NotImplementedError


class AddUserDialog(_FieldsDialog):
    """A new account: username, full name, role and a first password (typed twice). Returns a
    :class:`NewAccount`; the new user chooses their own password at the first login."""

    FIELDS = (
        ("username", "Username", "2-32 lower-case letters, digits, . _ -", False),
        ("full-name", "Full name", "as shown in the records", False),
        ("role", "Role", "technician, engineer or admin", False),
        ("password", "Password", "at least 8 characters", True),
        ("repeat", "Repeat", "the same password again", True),
    )

    def __init__(self, *, cursor_blink: bool) -> None:
        super().__init__(
            "Add a user",
            cursor_blink=cursor_blink,
            prompt="The new user chooses their own password at the first login.",
        )

    def collect(self) -> NewAccount:
        username = self.field("username").value.strip()
        try:
            check_username(username)
        except AccountError as exc:
            raise DialogInputError(str(exc), field="username") from None
        try:
            full_name = check_full_name(self.field("full-name").value)
        except AccountError as exc:
            raise DialogInputError(str(exc), field="full-name") from None
        try:
            role = parse_role(self.field("role").value)
        except DialogInputError as exc:
            raise DialogInputError(str(exc), field="role") from None
        password = check_new_password(self.field("password").value, self.field("repeat").value, username)
        return NewAccount(username, full_name, role, password)


class FullNameDialog(_FieldsDialog):
    """Another full name for ``user``; returns it (checked, stripped)."""

    FIELDS = (("full-name", "Full name", "as shown in the records", False),)

    def __init__(self, user: UserInfo, *, cursor_blink: bool) -> None:
        super().__init__(
            "Change full name", cursor_blink=cursor_blink, prompt=f"Full name of {user.username}:"
        )
        self.user = user

    def initial(self, field_id: str) -> str:
        # Shown as text: control characters in a stored name appear escaped.
        return escape_controls(self.user.full_name)

    def collect(self) -> str:
        try:
            return check_full_name(self.field("full-name").value)
        except AccountError as exc:
            raise DialogInputError(str(exc), field="full-name") from None


class RoleDialog(_FieldsDialog):
    """Another role for ``user``; returns it. A role's first letters are enough (t, e, a)."""

    FIELDS = (("role", "New role", "technician, engineer or admin", False),)

    def __init__(self, user: UserInfo, *, cursor_blink: bool) -> None:
        super().__init__("Change role", cursor_blink=cursor_blink, prompt=f"{_who(user)} is {user.role} now.")
        self.user = user

    def collect(self) -> str:
        role = parse_role(self.field("role").value)
        if role == self.user.role:
            raise DialogInputError(f"{self.user.username} is already {role}", field="role")
        return role


class ResetPasswordDialog(_FieldsDialog):
    """A new password for ``user`` (typed twice); returns it. The user must change it at the next login."""

    FIELDS = (
        ("password", "New password", "at least 8 characters", True),
        ("repeat", "Repeat", "the same password again", True),
    )

    def __init__(self, user: UserInfo, *, cursor_blink: bool, own: bool = False) -> None:
        then = "" if own else " They must change it at their next login."
        super().__init__(
            "Reset password", cursor_blink=cursor_blink, prompt=f"New password for {_who(user)}.{then}"
        )
        self.user = user

    def collect(self) -> str:
        return check_new_password(
            self.field("password").value, self.field("repeat").value, self.user.username
        )
