"""Users and roles (admins only): every account in a table, narrowed by a find field, with keys to add a user,
change a full name or a role, reset a password, unlock, deactivate and reactivate.

The screen works on the console's records database through :class:`control.accounts.AccountService`, as the
login and the change of password do: account administration is not the controller's business (the controller
reads an account when someone authenticates, so a change here applies at the next login or key control). The
rules live in the service, the one place the command line (``tosca user ...``) uses too: the last active admin
is never demoted nor deactivated, an admin never demotes or deactivates themselves, passwords follow the
policy, and each change is an audit row with the old and new values. A refusal is shown on the status line in
one line and changes nothing.

Every change is made against the account as this screen showed it: if someone else changed it since (another
admin, or a lockout), the change is refused with what changed, and the table is read again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label
from textual.worker import Worker, WorkerState

from control.accounts import AccountError, AccountService, Actor, ConcurrentChangeError, UserInfo
from control.clock import to_local
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext
from tui.screens.dialogs import ConfirmDialog
from tui.screens.user_dialogs import (
    AddUserDialog,
    FullNameDialog,
    NewAccount,
    ResetPasswordDialog,
    RoleDialog,
)
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

#: The table's columns, in order, as headed where the screen is wide enough.
COLUMNS = ("Username", "Full name", "Role", "Active", "Last login", "Locked until", "Must change pw")
#: The same, headed short so that the table fits 80 columns (the line under the table says each in full for
#: the highlighted account).
SHORT_COLUMNS = ("Username", "Full name", "Role", "Active", "Last login", "Locked", "Chg pw")
#: Width of every column but the full name's, their padding included (the widest value or heading each).
_OTHER_COLUMNS_WIDTH = sum(2 + width for width in (8, 10, 6, 12, 12, 6))
#: What the long headings add to that.
_LONG_HEADINGS_EXTRA = len("Must change pw") - len("Chg pw")
#: The full name column never gets narrower than this.
_MIN_NAME_WIDTH = 10


def short_time(moment: datetime | None, now: datetime, *, empty: str = "—") -> str:
    """A naive UTC time in local time, as short as it stays clear: ``HH:MM`` today, ``14 Mar 09:30`` this
    year, ``2025-03-14`` before."""
    if moment is None:
        return empty
    local, today = to_local(moment), to_local(now)
    if local.date() == today.date():
        return local.strftime("%H:%M")
    if local.year == today.year:
        return local.strftime("%d %b %H:%M")
    return local.strftime("%Y-%m-%d")


def describe(info: UserInfo, now: datetime) -> str:
    """One line saying everything about an account in full (under the table, for the highlighted one)."""
    locked = f"locked until {short_time(info.locked_until, now)}" if info.locked_at(now) else "not locked"
    return (
        f"{info.username}: {info.full_name}, {info.role}, {'active' if info.is_active else 'inactive'}; "
        f"last login {short_time(info.last_login, now, empty='never')}; {locked}; "
        f"{'must change password' if info.must_change_password else 'own password'}"
        f"{'' if info.has_password else ' (none set)'}"
    )


def matches(user: UserInfo, fragment: str) -> bool:
    """Whether the find field's ``fragment`` is part of the user's username, full name or role (any case)."""
    wanted = fragment.strip().casefold()
    if not wanted:
        return True
    return any(wanted in text.casefold() for text in (user.username, user.full_name, user.role))


class UsersScreen(Screen[None]):
    """The accounts table with a find field; keys for each change."""

    DEFAULT_CSS = """
    UsersScreen #users {
        width: 100%;
        height: 1fr;
        padding: 0 1;
    }
    UsersScreen #user-find-row {
        height: 1;
        margin: 1 0 0 0;
    }
    UsersScreen #user-find-row Label {
        width: auto;
        padding: 0 1 0 0;
        color: $text-muted;
    }
    UsersScreen #user-find {
        width: 1fr;
        background: $panel;
    }
    UsersScreen #user-find:focus {
        background: $primary 30%;
    }
    UsersScreen #user-table {
        height: 1fr;
        margin: 1 0 0 0;
        background: $surface;
    }
    UsersScreen #user-detail {
        width: 100%;
        height: 1;
        color: $text-muted;
    }
    UsersScreen #status {
        width: 100%;
        height: auto;
        margin: 0;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add"),
        Binding("n", "full_name", "Name"),
        Binding("r", "role", "Role"),
        Binding("p", "password", "Password"),
        Binding("u", "unlock", "Unlock"),
        Binding("d", "deactivate", "Deactivate"),
        Binding("d", "reactivate", "Reactivate"),
        Binding("slash", "find", "Find"),
        Binding("escape", "back", "Back"),
    ]

    #: Keys that act on the highlighted account.
    ROW_ACTIONS: ClassVar[frozenset[str]] = frozenset({"full_name", "role", "password"})

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        #: Every account as last read, by username.
        self.accounts: list[UserInfo] = []
        #: The accounts shown (those the find field matches), in table order.
        self.shown: list[UserInfo] = []
        #: True once the table has been filled the first time.
        self.loaded = False
        #: True while a change is being saved (further changes wait).
        self.busy = False
        self._select_after_load: str | None = None

    @property
    def service(self) -> AccountService:
        return self.context.accounts

    def actor(self) -> Actor:
        """Who makes the changes: the admin logged in at this console."""
        return Actor.console_user(self.user, self.service.terminal)

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Users and roles",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="users"):
            with Horizontal(id="user-find-row"):
                yield Label("Find")
                field = Input(
                    None,
                    "part of a username, name or role",
                    id="user-find",
                    compact=True,
                    select_on_focus=False,
                )
                field.cursor_blink = self.context.settings.cursor_blink
                yield field
            yield DataTable(id="user-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="user-detail")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#user-table", DataTable).focus()
        self.reload()

    # -- loading ---------------------------------------------------------------------------------------------

    def reload(self, select: str | None = None) -> None:
        """Read every account again (``select`` is highlighted afterwards, if shown)."""
        self._select_after_load = select or self.highlighted_name()
        self.load()

    @work(exclusive=True, group="users-load", exit_on_error=False)
    async def load(self) -> None:
        """Read the accounts and show those the find field matches."""
        self.accounts = await self.service.list_users()
        self.show_accounts()

    def show_accounts(self, *, status: bool = True) -> None:
        """Fill the table with the accounts the find field matches (keeping the highlighted one)."""
        table: DataTable[str | Text] = self.query_one("#user-table", DataTable)
        keep = self._select_after_load or self.highlighted_name()
        fragment = self.query_one("#user-find", Input).value
        now = self.context.settings.clock()
        shown = [info for info in self.accounts if matches(info, fragment)]
        headings, name_width = self._headings(shown)
        cells: list[list[Cell]] = [
            [
                plain(info.username),
                plain(info.full_name),
                plain(info.role),
                "yes" if info.is_active else "no",
                short_time(info.last_login, now, empty="never"),
                short_time(info.locked_until, now) if info.locked_at(now) else "—",
                "yes" if info.must_change_password else "no",
            ]
            for info in shown
        ]
        fill_table(
            table,
            headings,
            cells,
            keys=[info.username for info in shown],
            column_keys=COLUMNS,
            fixed={1: name_width} if name_width is not None else None,
            ellipsis=False,  # the line under the table shows the highlighted name whole
        )
        self.shown = shown
        names = [info.username for info in shown]
        if keep in names:
            table.move_cursor(row=names.index(keep))
        self._select_after_load = None
        self.loaded = True
        self.show_detail()
        if status:
            where = f" matching {fragment.strip()!r}" if fragment.strip() else ""
            if shown:
                self.show_status(f"{len(shown)} of {len(self.accounts)} accounts{where}", error=False)
            else:
                self.show_status(f"no accounts{where}; a adds one", error=False)
        self.refresh_bindings()

    def _headings(self, shown: list[UserInfo]) -> tuple[tuple[str, ...], int | None]:
        """The column headings, and the full name's width when the screen leaves it less than the widest name
        (names longer are cut in the table and shown whole on the line under it)."""
        room = self.size.width - 4 - _OTHER_COLUMNS_WIDTH - 2
        widest = max((len(info.full_name) for info in shown), default=len("Full name"))
        long_headings = room - _LONG_HEADINGS_EXTRA >= widest
        name_width = None if room >= widest or self.size.width == 0 else max(_MIN_NAME_WIDTH, room)
        return (COLUMNS if long_headings else SHORT_COLUMNS), name_width

    def on_resize(self, event: events.Resize) -> None:
        if self.loaded:
            self.show_accounts(status=False)

    def show_detail(self) -> None:
        """Say everything about the highlighted account on the line under the table."""
        info = self.highlighted()
        text = describe(info, self.context.settings.clock()) if info is not None else ""
        self.query_one("#user-detail", Label).update(plain(text))

    @on(Input.Changed, "#user-find")
    def find_changed(self, event: Input.Changed) -> None:
        if self.loaded:
            self.show_accounts()

    @on(DataTable.RowHighlighted, "#user-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()
        self.refresh_bindings()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed database read or write is shown on the status line."""
        if event.state is WorkerState.ERROR:
            self.busy = False
            self.show_status(f"failed: {event.worker.error}")

    def show_status(self, text: str, *, error: bool = True) -> None:
        """Show ``text`` on the status line (styled as an error unless ``error`` is False)."""
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")
        status.set_class(not error, "info")

    # -- what is highlighted -----------------------------------------------------------------------------

    def highlighted(self) -> UserInfo | None:
        """The account under the cursor, or None when the table is empty."""
        table: DataTable[str | Text] = self.query_one("#user-table", DataTable)
        row = table.cursor_row
        if not self.shown or not 0 <= row < len(self.shown) or row >= table.row_count:
            return None
        return self.shown[row]

    def highlighted_name(self) -> str | None:
        info = self.highlighted()
        return info.username if info is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``d`` deactivates an active account and reactivates an inactive one; ``u`` is dimmed unless the
        highlighted account is locked; the keys that act on an account are dimmed while none is
        highlighted."""
        if action in ("deactivate", "reactivate"):
            info = self.highlighted()
            if info is None:
                return None if action == "deactivate" else False
            return info.is_active == (action == "deactivate")
        if action == "unlock":
            info = self.highlighted()
            return True if info is not None and info.locked_at(self.context.settings.clock()) else None
        if action in self.ROW_ACTIONS:
            return self.highlighted() is not None or None
        return True

    # -- keys --------------------------------------------------------------------------------------------

    def on_key(self, event: events.Key) -> None:
        """Escape in the find field goes back to the table."""
        if event.key == "escape" and isinstance(self.focused, Input):
            event.stop()
            event.prevent_default()
            self.query_one("#user-table", DataTable).focus()

    def action_find(self) -> None:
        """Put the cursor in the find field."""
        self.query_one("#user-find", Input).focus()

    def action_back(self) -> None:
        """Escape: back to the home screen."""
        self.dismiss(None)

    def _cursor_blink(self) -> bool:
        return self.context.settings.cursor_blink

    def action_add(self) -> None:
        """Add an account (the new user must choose their own password at the first login)."""

        def done(result: object) -> None:
            if isinstance(result, NewAccount):
                name = result.username
                self.change(
                    f"user {name} added ({result.role}); they choose their own password at the first login",
                    lambda: self.service.create_user(
                        name,
                        result.full_name,
                        result.role,
                        result.password,
                        self.actor(),
                        must_change_password=True,
                    ),
                    select=name,
                )

        self.app.push_screen(AddUserDialog(cursor_blink=self._cursor_blink()), callback=done)

    def action_full_name(self) -> None:
        """Change the highlighted account's full name."""
        info = self.highlighted()
        if info is None:
            return

        def done(result: object) -> None:
            if isinstance(result, str):
                self.change(
                    f"full name of {info.username} is now {result}",
                    lambda: self.service.change_full_name(info.username, result, self.actor(), expected=info),
                )

        self.app.push_screen(FullNameDialog(info, cursor_blink=self._cursor_blink()), callback=done)

    def action_role(self) -> None:
        """Give the highlighted account another role."""
        info = self.highlighted()
        if info is None:
            return

        def done(result: object) -> None:
            if isinstance(result, str):
                self.change(
                    f"{info.username} is now {result} (was {info.role})",
                    lambda: self.service.change_role(info.username, result, self.actor(), expected=info),
                )

        self.app.push_screen(RoleDialog(info, cursor_blink=self._cursor_blink()), callback=done)

    def action_password(self) -> None:
        """Set a new password for the highlighted account; they must change it at their next login."""
        info = self.highlighted()
        if info is None:
            return
        own = info.tech_id == self.user.tech_id

        def done(result: object) -> None:
            if isinstance(result, str):
                then = "" if own else "; it must be changed at the next login"
                self.change(
                    f"password of {info.username} set{then}",
                    lambda: self.service.set_password(info.username, result, self.actor(), expected=info),
                )

        dialog = ResetPasswordDialog(info, cursor_blink=self._cursor_blink(), own=own)
        self.app.push_screen(dialog, callback=done)

    def action_unlock(self) -> None:
        """Clear the highlighted account's lockout, after asking."""
        info = self.highlighted()
        if info is None:
            return
        self._confirm(
            f"Unlock {info.username}? They can then try their password again at once.",
            info,
            f"user {info.username} unlocked",
            lambda: self.service.unlock(info.username, self.actor(), expected=info),
        )

    def action_deactivate(self) -> None:
        """Deactivate the highlighted account, after asking; it stays in the records."""
        info = self.highlighted()
        if info is None:
            return
        self._confirm(
            f"Deactivate {info.username}? They can no longer log in; their records stay.",
            info,
            f"user {info.username} deactivated",
            lambda: self.service.deactivate(info.username, self.actor(), expected=info),
        )

    def action_reactivate(self) -> None:
        """Reactivate the highlighted (inactive) account, after asking."""
        info = self.highlighted()
        if info is None:
            return
        self._confirm(
            f"Reactivate {info.username}? They can log in again as {info.role}.",
            info,
            f"user {info.username} reactivated",
            lambda: self.service.reactivate(info.username, self.actor(), expected=info),
        )

    def _confirm(
        self, question: str, info: UserInfo, done: str, make: Callable[[], Awaitable[UserInfo]]
    ) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.change(done, make)
            else:
                self.show_status(f"{info.username} left as it was", error=False)

        self.app.push_screen(ConfirmDialog(question), callback=answered)

    # -- the change itself ---------------------------------------------------------------------------------

    def change(
        self, done: str, make: Callable[[], Awaitable[UserInfo]], *, select: str | None = None
    ) -> None:
        """Save one change (``make`` calls the account service); ``done`` is said when it is saved."""
        if self.busy:
            self.show_status("a change is being saved; try again in a moment")
            return
        self.busy = True
        self.show_status("saving...", error=False)
        self.save(done, make, select)

    @work(exclusive=True, group="users-change", exit_on_error=False)
    async def save(self, done: str, make: Callable[[], Awaitable[UserInfo]], select: str | None) -> None:
        """Make the change; say why if the rules refuse it (nothing is then changed), and read the table
        again after a success or a change made meanwhile."""
        try:
            saved = await make()
        except ConcurrentChangeError as exc:
            self.busy = False
            await self._read_again()
            self.show_status(str(exc))
            return
        except AccountError as exc:
            self.busy = False
            self.show_status(str(exc))
            return
        self.busy = False
        if saved.tech_id == self.user.tech_id:
            self.user = saved
        await self._read_again(select or saved.username)
        self.show_status(done, error=False)
        self.notify(escape_controls(done), timeout=4, markup=False)

    async def _read_again(self, select: str | None = None) -> None:
        self._select_after_load = select or self.highlighted_name()
        self.accounts = await self.service.list_users()
        self.show_accounts(status=False)
