"""The login screen: username and password; a refusal says why (without telling whether a username exists)."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.binding import Binding, BindingType

from control.account_rules import AccountError
from tui.screens._base import FormField, FormScreen, LoggedIn


class LoginScreen(FormScreen):
    """Username and password; Enter moves to the next field, then logs in."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Log in", priority=True)]

    HEADER_TITLE = "Log in"
    FORM_TITLE = "Log in to the console"
    FORM_FIELDS = (
        FormField("username", "Username", "your username"),
        FormField("password", "Password", "your password", password=True),
    )

    def action_submit(self) -> None:
        """Enter: next field, or log in from the password field."""
        if self.busy or not self.focus_next_or_submit():
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
            accounts = await self.context.opened_accounts()
            result = await accounts.login(username, password)
        except AccountError as exc:
            self.show_status(str(exc))
            return
        finally:
            self.busy = False
        if result.ok and result.user is not None:
            self.post_message(LoggedIn(result.user, password))
            return
        self.show_status(result.message)
        self.clear_fields("password")
