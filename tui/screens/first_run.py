"""First start: no active admin with a password exists, so the first administrator is created here.

There are no default accounts or passwords; whoever installs the console chooses them. The new admin is logged
in at once.
"""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.binding import Binding, BindingType

from control.account_rules import (
    AccountError,
    FirstAdminExistsError,
    check_full_name,
    check_password_policy,
    check_username,
)
from tui.screens._base import EntryScreenRequested, FormField, FormScreen, LoggedIn


class FirstRunScreen(FormScreen):
    """Username, full name, password and the password again; Enter moves on, then creates the admin."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Create", priority=True)]

    HEADER_TITLE = "First start"
    FORM_TITLE = "Create the first administrator"
    FORM_FIELDS = (
        FormField("username", "Username", "2-32 lower-case letters, digits, . _ -"),
        FormField("full-name", "Full name", "as it should appear in records"),
        FormField("password", "Password", "at least 8 characters", password=True),
        FormField("repeat", "Repeat password", "the same password again", password=True),
    )

    def action_submit(self) -> None:
        """Enter: next field, or create the administrator from the last field."""
        if self.busy or not self.focus_next_or_submit():
            return
        username = self.value("username").strip()
        full_name = self.value("full-name")
        password = self.value("password")
        try:
            check_username(username)
            check_full_name(full_name)
            check_password_policy(password, username)
        except AccountError as exc:
            self.show_status(str(exc))
            return
        if password != self.value("repeat"):
            self.show_status("the two passwords differ; type them again")
            return
        self.busy = True
        self.show_status("creating the administrator...", error=False)
        self.create_admin(username, full_name, password)

    @work(exclusive=True, group="first-run", exit_on_error=False)
    async def create_admin(self, username: str, full_name: str, password: str) -> None:
        """Create the admin and log them in (both recorded in the audit trail)."""
        accounts = await self.context.opened_accounts()
        try:
            await accounts.create_first_admin(username, full_name, password)
            result = await accounts.login(username, password)
        except FirstAdminExistsError:
            # Created meanwhile from another terminal (``tosca user add``): log in instead.
            self.post_message(EntryScreenRequested())
            return
        except AccountError as exc:
            self.show_status(str(exc))
            return
        finally:
            self.busy = False
        if result.ok and result.user is not None:
            self.post_message(LoggedIn(result.user, password))
        else:
            self.show_status(result.message)
