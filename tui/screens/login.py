"""The login screen: username and password; a refusal says why (without telling whether a username exists)."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.widgets import Footer, Input, Label

from control.accounts import AccountError
from tui.screens._base import FormScreen, LoggedIn
from tui.widgets.header import ConsoleHeader

FIELDS = ("username", "password")


class LoginScreen(FormScreen):
    """Username and password; Enter moves to the next field, then logs in."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Log in", priority=True)]

    def compose(self) -> ComposeResult:
        yield ConsoleHeader("Log in", sim=self.context.settings.sim)
        with Vertical(id="form", classes="panel"):
            yield Label("Log in to the console", classes="form-title")
            with Grid(classes="form-grid"):
                yield Label("Username")
                yield self.text_input("username", "your username")
                yield Label("Password")
                yield self.text_input("password", "your password", password=True)
            yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#username").focus()

    def action_submit(self) -> None:
        """Enter: next field, or log in from the password field."""
        if self.busy or not self.focus_next_or_submit(FIELDS):
            return
        username = self.value("username").strip()
        if not username:
            self.show_status("enter your username")
            self.query_one("#username").focus()
            return
        self.busy = True
        self.show_status("checking...", error=False)
        self.log_in(username, self.value("password"))

    @work(exclusive=True, group="login", exit_on_error=False)
    async def log_in(self, username: str, password: str) -> None:
        """Check the password off the event loop; on success tell the app, else say why."""
        try:
            result = await self.context.accounts.login(username, password)
        except AccountError as exc:
            self.show_status(str(exc))
            return
        finally:
            self.busy = False
        if result.ok and result.user is not None:
            self.post_message(LoggedIn(result.user, password))
            return
        self.show_status(result.message)
        password_field = self.query_one("#password", Input)
        password_field.value = ""
        password_field.focus()
