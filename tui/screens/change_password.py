"""Change your password: shown after login, instead of the home screen, when an admin set the password.

The user chooses a new password (typed twice) that meets the password policy and differs from the one just
used to log in; saving it clears the account's must-change flag and is recorded in the audit trail. The user
may log out instead.
"""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.widgets import Label

from control.account_rules import AccountError, Actor, UserInfo, check_password_policy
from tui.safe_text import plain
from tui.screens._base import FormField, FormScreen, LogoutRequested, PasswordChanged, ScreenContext


class ChangePasswordScreen(FormScreen):
    """New password and the same again; Enter moves on, then saves it. Ctrl+O logs out instead."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Change", priority=True),
        Binding("ctrl+o", "logout", "Log out", priority=True),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo, current_password: str) -> None:
        super().__init__(context)
        self.user = user
        self._current_password = current_password

    HEADER_TITLE = "Change password"
    FORM_TITLE = "Change your password"
    FORM_FIELDS = (
        FormField("password", "New password", "at least 8 characters", password=True),
        FormField("repeat", "Repeat password", "the same password again", password=True),
    )

    def header_user_text(self) -> str:
        return f"{self.user.username} ({self.user.role})"

    def intro(self) -> Label:
        user = self.user
        return Label(
            plain(
                f"{user.full_name} ({user.username}), your password was set by an admin. "
                "Choose your own to continue."
            ),
            id="change-why",
        )

    def action_submit(self) -> None:
        """Enter: next field, or save the new password from the last field."""
        if self.busy or not self.focus_next_or_submit():
            return
        password = self.value("password")
        try:
            check_password_policy(password, self.user.username)
        except AccountError as exc:
            self.refuse(str(exc))
            return
        if password == self._current_password:
            self.refuse("the new password must differ from the one you logged in with")
            return
        if password != self.value("repeat"):
            self.refuse("the two passwords differ; type them again")
            return
        self.busy = True
        self.show_status("saving the new password...", error=False)
        self.change_password(password)

    def refuse(self, text: str) -> None:
        """Say why the new password was refused and start again from the first field."""
        self.show_status(text)
        self.clear_fields("password", "repeat")

    def action_logout(self) -> None:
        """Log out instead of changing the password (not while a new one is being saved)."""
        if not self.busy:
            self.post_message(LogoutRequested())

    @work(exclusive=True, group="change-password", exit_on_error=False)
    async def change_password(self, password: str) -> None:
        """Hash and store the new password as the user's own (audited), then tell the app."""
        accounts = self.context.accounts
        actor = Actor.console_user(self.user, accounts.terminal)
        try:
            user = await accounts.set_password(self.user.username, password, actor)
        except AccountError as exc:
            self.show_status(str(exc))
            return
        finally:
            self.busy = False
        self.post_message(PasswordChanged(user))
