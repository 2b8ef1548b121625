"""First start: no active admin with a password exists, so the first administrator is created here.

There are no default accounts or passwords; whoever installs the console chooses them. The new admin is logged
in at once.
"""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.widgets import Footer, Label

from control.accounts import (
    AccountError,
    FirstAdminExistsError,
    check_full_name,
    check_password_policy,
    check_username,
)
from tui.screens._base import EntryScreenRequested, FormScreen, LoggedIn
from tui.widgets.header import ConsoleHeader

FIELDS = ("username", "full-name", "password", "repeat")


class FirstRunScreen(FormScreen):
    """Username, full name, password and the password again; Enter moves on, then creates the admin."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "Create", priority=True)]

    def compose(self) -> ComposeResult:
        yield ConsoleHeader("First start", sim=self.context.settings.sim)
        with Vertical(id="form", classes="panel"):
            yield Label("Create the first administrator", classes="form-title")
            with Grid(classes="form-grid"):
                yield Label("Username")
                yield self.text_input("username", "2-32 lower-case letters, digits, . _ -")
                yield Label("Full name")
                yield self.text_input("full-name", "as it should appear in records")
                yield Label("Password")
                yield self.text_input("password", "at least 8 characters", password=True)
                yield Label("Repeat password")
                yield self.text_input("repeat", "the same password again", password=True)
            yield Label("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#username").focus()

    def action_submit(self) -> None:
        """Enter: next field, or create the administrator from the last field."""
        if self.busy or not self.focus_next_or_submit(FIELDS):
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
        accounts = self.context.accounts
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
