"""The home screen: what the logged-in person can do from here, who they are, and the state of the records
database and of the disk.

What each role can do is one list, :data:`HOME_MENU`: one entry per screen, with its key (also in the footer),
its line in the menu and the roles it is offered to. A technician treats and reads the records; an admin also
administers (users, configuration, protocols, backups, the audit trail); an engineer reads the records, the
devices, the safety log and the controller's log, calibrates, adjusts the camera's focus, exports sessions for
research and keeps the backups. A screen not built yet for a role is named as such (:data:`NOT_YET`), never
silently missing: a new screen adds its entry to :data:`HOME_MENU` and leaves that list.

While the controller has a fault latched it shows the fault and F4 resets it (with the password, once the
cause has cleared), so that a fault left after a session closed never blocks the next one.

On the remote console the screens it does not open (:func:`tui.remote.remote_refusal`) stay in the menu,
marked "(kiosk only)" and disabled; their key says why."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, OptionList, Static
from textual.widgets.option_list import Option

from control.accounts import UserInfo
from storage import DataDir
from storage.backup import last_backup
from storage.maintenance import schema_revision
from storage.verifications import last_verification
from tui.remote import remote_refusal
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
    #: The last verification of the record chains (``tosca audit verify``), in one line; whether it failed.
    records: str = ""
    records_failed: bool = False


def read_database_facts(data_dir: DataDir) -> DatabaseFacts:
    """Read the schema revision, the newest backup and the disk use (free and total space of the data
    directory's file system, size of ``sessions/``): file system and SQLite work, call it in a thread."""
    revision = schema_revision(data_dir.db_path)
    newest = last_backup(data_dir)
    try:
        disk = data_dir.disk_usage().describe()
    except OSError as exc:
        disk = f"unknown ({exc.strerror or exc})"
    verified = last_verification(data_dir.db_path)
    return DatabaseFacts(
        path=str(data_dir.db_path),
        schema=revision if revision is not None else "none (not initialised)",
        last_backup=newest.taken_at.strftime("%Y-%m-%d %H:%M:%S") if newest is not None else "none",
        disk=disk,
        records=verified.describe() if verified is not None else "never verified (tosca audit verify)",
        records_failed=verified is not None and not verified.ok,
    )


ScreenOpener = Callable[[ScreenContext, UserInfo], Screen[None]]

#: Roles that treat subjects (engineers diagnose and calibrate; they do not treat).
TREATING_ROLES = frozenset({"technician", "admin"})
EVERY_ROLE = frozenset({"technician", "engineer", "admin"})
ADMIN_ONLY = frozenset({"admin"})
#: Calibrations are measured and signed by an engineer (an admin manages accounts, not the rig's optics).
ENGINEER_ONLY = frozenset({"engineer"})
#: Roles offered the engineer's screens.
ENGINEERS = frozenset({"engineer", "admin"})
#: Roles whose home screen shows the last verification of the records.
RECORD_KEEPERS = frozenset({"admin", "engineer"})


def _treatment(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.subjects import SubjectsScreen

    return SubjectsScreen(context, user)


def _records(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.subjects import SubjectsScreen

    return SubjectsScreen(context, user, read_only=True)


def _users(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.users import UsersScreen

    return UsersScreen(context, user)


def _backups(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.backups import BackupsScreen

    return BackupsScreen(context, user)


def _configuration(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.configuration import ConfigurationScreen

    return ConfigurationScreen(context, user)


def _protocol_library(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.protocol_library import ProtocolLibraryScreen

    return ProtocolLibraryScreen(context, user)


def _calibration(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.calibration import CalibrationScreen

    return CalibrationScreen(context, user)


def _devices(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.devices import DevicesScreen

    return DevicesScreen(context, user)


def _audit(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.audit import AuditScreen

    return AuditScreen(context, user)


def _safety_events(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.safety_events import SafetyEventsScreen

    return SafetyEventsScreen(context, user)


def _logs(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.logs import LogsScreen

    return LogsScreen(context, user)


def _export(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.export import ExportScreen

    return ExportScreen(context, user)


def _camera_focus(context: ScreenContext, user: UserInfo) -> Screen[None]:
    from tui.screens.camera_focus import CameraFocusScreen

    return CameraFocusScreen(context, user)


class MenuEntry(NamedTuple):
    """One thing to do from the home screen."""

    #: The key that opens it (shown in the footer and in the menu).
    key: str
    #: Its name (the action's parameter and the menu option's id).
    name: str
    #: Its label in the footer.
    label: str
    #: Its line in the menu.
    line: str
    #: The roles it is offered to.
    roles: frozenset[str]
    #: Builds the screen it opens.
    opener: ScreenOpener
    #: Offered only with a controller (a treatment needs one).
    needs_controller: bool = False


#: Everything the home screen offers, in menu order.
HOME_MENU: tuple[MenuEntry, ...] = (
    MenuEntry(
        key="t",
        name="subjects",
        label="Treat: subjects",
        line="Treatment: a subject, a protocol, the session",
        roles=TREATING_ROLES,
        opener=_treatment,
        needs_controller=True,
    ),
    MenuEntry(
        key="r",
        name="records",
        label="Records",
        line="Records: subjects, their history and past sessions",
        roles=EVERY_ROLE,
        opener=_records,
    ),
    MenuEntry(
        key="u",
        name="users",
        label="Users",
        line="Users and roles: add, role, password, unlock, deactivate",
        roles=ADMIN_ONLY,
        opener=_users,
    ),
    MenuEntry(
        key="p",
        name="protocol_library",
        label="Protocols",
        line="Protocol library: versions, import, submit, approve, reject, retire",
        roles=ADMIN_ONLY,
        opener=_protocol_library,
    ),
    MenuEntry(
        key="c",
        name="configuration",
        label="Config",
        line="Configuration: every setting, its value and default; change one",
        roles=ADMIN_ONLY,
        opener=_configuration,
    ),
    MenuEntry(
        key="b",
        name="backups",
        label="Backups",
        line="Backups: list, make one now, verify; restore (admin)",
        roles=ENGINEERS,
        opener=_backups,
    ),
    MenuEntry(
        key="w",
        name="calibration",
        label="Calibration",
        line="Calibrations: the ring size and laser power wizards",
        roles=ENGINEER_ONLY,
        opener=_calibration,
    ),
    MenuEntry(
        key="a",
        name="audit",
        label="Audit trail",
        line="Audit trail: browse, filter and export recorded actions",
        roles=ADMIN_ONLY,
        opener=_audit,
    ),
    MenuEntry(
        key="e",
        name="safety_events",
        label="Safety log",
        line="Safety log and events: filter, page, open a past session",
        roles=ENGINEERS,
        opener=_safety_events,
    ),
    MenuEntry(
        key="l",
        name="logs",
        label="Logs",
        line="Logs: the controller's log, following new lines",
        roles=ENGINEERS,
        opener=_logs,
    ),
    MenuEntry(
        key="x",
        name="export",
        label="Export",
        line="Research export: a session or a date range, de-identified",
        roles=ENGINEERS,
        opener=_export,
    ),
    MenuEntry(
        key="d",
        name="devices",
        label="Devices",
        line="Devices: identity, links, readings, loop",
        roles=ENGINEERS,
        opener=_devices,
        needs_controller=True,
    ),
    MenuEntry(
        key="f",
        name="camera_focus",
        label="Camera focus",
        line="Camera focus: live focus score, focus stacks",
        roles=ENGINEERS,
        opener=_camera_focus,
        needs_controller=True,
    ),
)

#: The screens not in this version yet, per role (said on that role's home screen).
NOT_YET: dict[str, tuple[str, ...]] = {}


def menu_for(role: str) -> tuple[MenuEntry, ...]:
    """The entries offered to ``role``, in menu order."""
    return tuple(entry for entry in HOME_MENU if role in entry.roles)


def not_yet_line(role: str) -> str | None:
    """The line naming what ``role`` would find here but is not in this version yet, if anything."""
    missing = NOT_YET.get(role, ())
    return f"Not in this version yet: {', '.join(missing)}." if missing else None


class HomeScreen(Screen[None]):
    """Home: what this role can do (a menu, and its keys in the footer), then the user, role, database path,
    schema version, last backup and disk. Keys to lock and to log out."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(entry.key, f"open('{entry.name}')", entry.label) for entry in HOME_MENU),
        Binding(RESET_KEY, "reset_fault", "Reset fault"),
        Binding("ctrl+l", "app.lock", "Lock"),
        Binding("ctrl+o", "logout", "Log out"),
    ]

    TREATING_ROLES: ClassVar[frozenset[str]] = TREATING_ROLES

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
            entries = self.entries()
            if entries:
                yield OptionList(*(self._option(entry) for entry in entries), id="home-menu")
            missing = not_yet_line(user.role)
            if missing is not None:
                yield Label(missing, id="home-not-yet")
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
                if user.role in RECORD_KEEPERS:
                    yield Label("Record chain", classes="fact-name")
                    yield Static("reading...", id="fact-records")
        yield Footer()

    def entries(self) -> tuple[MenuEntry, ...]:
        """What this user's role is offered."""
        return menu_for(self.user.role)

    def available(self, entry: MenuEntry) -> bool:
        """Whether ``entry`` can be opened now (a treatment needs the controller; the remote console does
        not open the screens :func:`tui.remote.remote_refusal` names)."""
        if remote_refusal(self.context, entry.name) is not None:
            return False
        return not entry.needs_controller or self.context.link is not None

    def _option(self, entry: MenuEntry) -> Option:
        line = Text.assemble((f"{entry.key}", "bold"), "  ", entry.line)
        if remote_refusal(self.context, entry.name) is not None:
            line.append(" (kiosk only)")
        elif not self.available(entry):
            line.append(" (no controller)")
        return Option(line, id=entry.name, disabled=not self.available(entry))

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
        if self.user.role in RECORD_KEEPERS:
            self.query_one("#fact-records", Static).update(
                plain(facts.records, "bold red" if facts.records_failed else "")
            )
        self.facts = facts

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open":
            entry = next((e for e in self.entries() if (e.name,) == parameters), None)
            if entry is not None and remote_refusal(self.context, entry.name) is not None:
                return True  # its key says why the remote console does not open it
            return entry is not None and self.available(entry)
        if action == "reset_fault":
            link = self.context.link
            return link is not None and in_fault(link.snapshot)
        return True

    @work(group="reset", exclusive=True, exit_on_error=False)
    async def action_reset_fault(self) -> None:
        """F4: acknowledge the latched fault with the password (refused while its cause is there)."""
        await reset_fault(self, self.context, self.user)

    def action_open(self, name: str) -> None:
        """Open the screen of the menu entry ``name``, if this role is offered it and it can open now."""
        entry = next((e for e in self.entries() if e.name == name), None)
        refusal = remote_refusal(self.context, name) if entry is not None else None
        if refusal is not None:
            self.notify(refusal, severity="warning", timeout=10, markup=False)
        elif entry is not None and self.available(entry):
            self.app.push_screen(entry.opener(self.context, self.user))

    def action_subjects(self) -> None:
        """The subjects: find or create one, then choose a protocol and treat."""
        self.action_open("subjects")

    def action_records(self) -> None:
        """The records, read-only, for every role: find a subject, open its history and its past sessions."""
        self.action_open("records")

    @on(OptionList.OptionSelected, "#home-menu")
    def menu_chosen(self, event: OptionList.OptionSelected) -> None:
        """Enter or a click on a menu line opens it."""
        if event.option.id is not None:
            self.action_open(event.option.id)

    def action_logout(self) -> None:
        """Log out: back to the login screen."""
        self.post_message(LogoutRequested())
