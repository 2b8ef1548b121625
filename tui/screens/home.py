"""The home screen: who is logged in, the state of the records database and of the disk, and the way to
treatment (t).

While the controller has a fault latched it shows the fault and F4 resets it (with the password, once the
cause has cleared), so that a fault left after a session closed never blocks the next one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from control.accounts import UserInfo
from storage import DataDir
from storage.backup import last_backup
from storage.maintenance import schema_revision
from tui.safe_text import plain
from tui.screens._base import LogoutRequested, ScreenContext, SnapshotUpdated
from tui.widgets.fault import RESET_KEY, FaultNotice, in_fault, reset_fault
from tui.widgets.header import ConsoleHeader


@dataclass(frozen=True)
class DatabaseFacts:
    """What the home screen shows about the database (read off the event loop)."""

    path: str
    schema: str
    last_backup: str
    disk: str = ""


def read_database_facts(data_dir: DataDir) -> DatabaseFacts:
    """Read the schema revision, the newest backup and the disk use (free and total space of the data
    directory's file system, size of ``sessions/``): file system and SQLite work, call it in a thread."""
    revision = schema_revision(data_dir.db_path)
    newest = last_backup(data_dir)
    try:
        disk = data_dir.disk_usage().describe()
    except OSError as exc:
        disk = f"unknown ({exc.strerror or exc})"
    return DatabaseFacts(
        path=str(data_dir.db_path),
        schema=revision if revision is not None else "none (not initialised)",
        last_backup=newest.taken_at.strftime("%Y-%m-%d %H:%M:%S") if newest is not None else "none",
        disk=disk,
    )


class HomeScreen(Screen[None]):
    """Home: user, role, database path, schema version, last backup. Keys to lock and to log out."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "subjects", "Treat: subjects"),
        Binding("r", "records", "Records"),
        Binding(RESET_KEY, "reset_fault", "Reset fault"),
        Binding("ctrl+l", "app.lock", "Lock"),
        Binding("ctrl+o", "logout", "Log out"),
    ]

    #: Roles that treat subjects (engineers diagnose and calibrate; they do not treat).
    TREATING_ROLES: ClassVar[frozenset[str]] = frozenset({"technician", "admin"})

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.facts: DatabaseFacts | None = None

    def compose(self) -> ComposeResult:
        user = self.user
        yield ConsoleHeader("Home", sim=self.context.settings.sim, user_text=f"{user.username} ({user.role})")
        yield FaultNotice(id="fault")
        with Vertical(id="home", classes="panel"):
            yield Label(plain(f"Welcome, {user.full_name}"), classes="form-title")
            with Grid(id="facts"):
                yield Label("User", classes="fact-name")
                yield Static(plain(f"{user.full_name} ({user.username})"), id="fact-user")
                yield Label("Role", classes="fact-name")
                yield Static(plain(user.role), id="fact-role")
                yield Label("Database", classes="fact-name")
                yield Static("reading...", id="fact-db")
                yield Label("Schema version", classes="fact-name")
                yield Static("reading...", id="fact-schema")
                yield Label("Last backup", classes="fact-name")
                yield Static("reading...", id="fact-backup")
                yield Label("Disk", classes="fact-name")
                yield Static("reading...", id="fact-disk")
        yield Footer()

    def on_mount(self) -> None:
        self.load_facts()
        link = self.context.link
        self.query_one("#fault", FaultNotice).show(link.snapshot if link is not None else None)

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        """A latched fault shows (and F4 in the footer) while the controller reports one; under another
        screen this one waits until it shows again."""
        if self.is_current and self.query_one("#fault", FaultNotice).show(message.snapshot):
            self.refresh_bindings()

    def on_screen_resume(self) -> None:
        link = self.context.link
        if self.query_one("#fault", FaultNotice).show(link.snapshot if link is not None else None):
            self.refresh_bindings()

    @work(exclusive=True, group="home-facts", exit_on_error=False)
    async def load_facts(self) -> None:
        """Fill in the database facts without blocking the screen."""
        facts = await asyncio.to_thread(read_database_facts, DataDir(self.context.settings.data_dir))
        self.query_one("#fact-db", Static).update(plain(facts.path))
        self.query_one("#fact-schema", Static).update(plain(facts.schema))
        self.query_one("#fact-backup", Static).update(plain(facts.last_backup))
        self.query_one("#fact-disk", Static).update(plain(facts.disk))
        self.facts = facts

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "subjects":
            return self.user.role in self.TREATING_ROLES and self.context.link is not None
        if action == "reset_fault":
            link = self.context.link
            return link is not None and in_fault(link.snapshot)
        return True

    @work(group="reset", exclusive=True, exit_on_error=False)
    async def action_reset_fault(self) -> None:
        """F4: acknowledge the latched fault with the password (refused while its cause is there)."""
        await reset_fault(self, self.context, self.user)

    def action_subjects(self) -> None:
        """The subjects: find or create one, then choose a protocol and treat."""
        from tui.screens.subjects import SubjectsScreen

        self.app.push_screen(SubjectsScreen(self.context, self.user))

    def action_records(self) -> None:
        """The records, read-only, for every role: find a subject, open its history and its past sessions."""
        from tui.screens.subjects import SubjectsScreen

        self.app.push_screen(SubjectsScreen(self.context, self.user, read_only=True))

    def action_logout(self) -> None:
        """Log out: back to the login screen."""
        self.post_message(LogoutRequested())
