"""The lock screen: after a spell of inactivity the console hides what it showed and asks the same user's
password again. The user may instead log out (for someone else to log in)."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.widgets import Label

from control.account_rules import AccountError, UserInfo
from tui.safe_text import plain
from tui.screens._base import FormField, FormScreen, LogoutRequested, ScreenContext, Unlocked


class LockScreen(FormScreen):
    """Password of the user who was logged in; Enter unlocks, Ctrl+O logs out."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Unlock", priority=True),
        Binding("ctrl+o", "logout", "Log out", priority=True),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__(context)
        self.user = user

    HEADER_TITLE = "Locked"
    FORM_TITLE = "Console locked"
    FORM_FIELDS = (FormField("password", "Password", "your password", password=True),)

    def header_user_text(self) -> str:
        return f"{self.user.username} ({self.user.role})"

    def intro(self) -> Label:
        user = self.user
        return Label(
            plain(f"{user.full_name} ({user.username}), enter your password to continue."), id="lock-who"
        )

    def action_submit(self) -> None:
        """Enter: check the password."""
        if self.busy:
            return
        self.busy = True
        self.show_status("checking...", error=False)
        self.unlock(self.value("password"))

    def action_logout(self) -> None:
        """Log out instead of unlocking."""
        self.post_message(LogoutRequested())

    @work(exclusive=True, group="unlock", exit_on_error=False)
    async def unlock(self, password: str) -> None:
        """Check the password (it counts towards lockout like any login)."""
        try:
            result = await self.context.accounts.login(self.user.username, password, context="lock_screen")
        except AccountError as exc:
            self.show_status(str(exc))
            return
        finally:
            self.busy = False
        if result.ok:
            self.post_message(Unlocked(password))
            return
        self.show_status(result.message)
        self.clear_fields("password")
