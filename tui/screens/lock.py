"""The lock screen: after a spell of inactivity the console hides what it showed and asks the same user's
password again. The user may instead log out (for someone else to log in)."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.widgets import Footer, Input, Label

from control.accounts import AccountError, UserInfo
from tui.screens._base import FormScreen, LogoutRequested, ScreenContext, Unlocked
from tui.widgets.header import ConsoleHeader


class LockScreen(FormScreen):
    """Password of the user who was logged in; Enter unlocks, Ctrl+O logs out."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Unlock", priority=True),
        Binding("ctrl+o", "logout", "Log out", priority=True),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__(context)
        self.user = user

    def compose(self) -> ComposeResult:
        user = self.user
        yield ConsoleHeader(
            "Locked", sim=self.context.settings.sim, user_text=f"{user.username} ({user.role})"
        )
        with Vertical(id="form", classes="panel"):
            yield Label("Console locked", classes="form-title")
            yield Label(
                f"{user.full_name} ({user.username}), enter your password to continue.", id="lock-who"
            )
            with Grid(classes="form-grid"):
                yield Label("Password")
                yield self.text_input("password", "your password", password=True)
            yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#password").focus()

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
            self.post_message(Unlocked())
            return
        self.show_status(result.message)
        field = self.query_one("#password", Input)
        field.value = ""
        field.focus()
