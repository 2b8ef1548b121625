"""The TOSCA console application.

:func:`make_app` is the one factory, used by ``tosca`` and by the tests, configured by a
:class:`control.settings.ConsoleSettings`. The app expects a database already brought to the head revision
(``tosca`` does that before starting it, see :mod:`tui.commands.console`).

Flow: at start, if no active admin with a password exists the first-run screen creates one, otherwise the
login screen asks for a username and password. A user whose password was set by an admin must then choose
their own on the change-password screen (or log out). After that the home screen shows who is logged in and
the state of the database. After ``auto_lock_minutes`` (``system_config``) without a key press or mouse input
the console locks and asks the same user's password again, or lets them log out. In kiosk mode there is no
quit key and no command palette, and Ctrl+C does nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from textual import events, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.worker import Worker, WorkerState

from control.accounts import AccountService, UserInfo
from control.settings import DEFAULT_AUTO_LOCK_MINUTES, ConsoleSettings, read_auto_lock_minutes
from control.terminal import detect_terminal
from storage import DataDir, StorageError, create_engine, session_factory
from tui.screens import (
    ChangePasswordScreen,
    EntryScreenRequested,
    FirstRunScreen,
    HomeScreen,
    LockScreen,
    LoggedIn,
    LoginScreen,
    LogoutRequested,
    PasswordChanged,
    ScreenContext,
    Unlocked,
)

#: Input that counts as activity for the automatic lock.
_ACTIVITY_EVENTS = (
    events.Key,
    events.MouseDown,
    events.MouseUp,
    events.MouseMove,
    events.MouseScrollDown,
    events.MouseScrollUp,
)


class ToscaApp(App[int]):
    """The console. Build it with :func:`make_app`."""

    CSS_PATH = "tosca.tcss"
    TITLE = "TOSCA"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit_console", "Quit", priority=True),
        Binding("ctrl+c", "quit_console", "Quit", show=False, priority=True),
    ]

    def __init__(self, settings: ConsoleSettings) -> None:
        # Read by App.__init__: the kiosk has no command palette.
        self.ENABLE_COMMAND_PALETTE = not settings.kiosk
        super().__init__()
        self.settings = settings
        self.data_dir = DataDir(settings.data_dir)
        self.terminal = settings.terminal if settings.terminal is not None else detect_terminal()
        self._engine: AsyncEngine = create_engine(self.data_dir.db_path)
        self.accounts = AccountService(
            sessions=session_factory(self._engine),
            terminal=self.terminal,
            clock=settings.clock,
            hashing=settings.hashing,
        )
        self.context = ScreenContext(settings=settings, accounts=self.accounts)
        #: The logged-in user, or None.
        self.user: UserInfo | None = None
        #: Inactivity after which the console locks (from ``system_config`` at each login).
        self.auto_lock = timedelta(minutes=DEFAULT_AUTO_LOCK_MINUTES)
        self.last_activity = settings.clock()

    # -- life cycle ----------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.set_interval(self.settings.idle_check_seconds, self.check_inactivity, name="auto-lock")
        self.show_entry_screen()

    async def on_unmount(self) -> None:
        await self._engine.dispose()

    @work(exclusive=True, group="entry", exit_on_error=False)
    async def show_entry_screen(self) -> None:
        """First-run screen when no usable admin exists, else the login screen."""
        first_run = await self.accounts.needs_first_admin()
        screen = FirstRunScreen(self.context) if first_run else LoginScreen(self.context)
        await self._show_screen(screen)

    async def _show_screen(
        self, screen: FirstRunScreen | LoginScreen | ChangePasswordScreen | HomeScreen
    ) -> None:
        while isinstance(self.screen, LockScreen):
            await self.pop_screen()
        if len(self.screen_stack) > 1:
            await self.switch_screen(screen)
        else:
            await self.push_screen(screen)

    # -- activity and the automatic lock -------------------------------------------------------------------

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, _ACTIVITY_EVENTS) and not event.is_forwarded:
            self.last_activity = self.settings.clock()
        await super().on_event(event)

    def check_inactivity(self) -> None:
        """Lock the console if a user is logged in and has been idle for ``auto_lock``."""
        if self.user is None or self.is_locked:
            return
        idle = self.settings.clock() - self.last_activity
        if idle >= self.auto_lock:
            self.lock(idle_minutes=round(idle.total_seconds() / 60, 1))

    @property
    def is_locked(self) -> bool:
        """True while the lock screen is showing."""
        return any(isinstance(screen, LockScreen) for screen in self.screen_stack)

    def action_lock(self) -> None:
        """Lock the console now (Ctrl+L on the home screen)."""
        if self.user is not None and not self.is_locked:
            self.lock(idle_minutes=0.0)

    def lock(self, *, idle_minutes: float) -> None:
        """Show the lock screen over the current one and record it."""
        user = self.user
        if user is None:
            return
        self.push_screen(LockScreen(self.context, user))
        self.record_lock(user, idle_minutes)

    @work(group="audit", exit_on_error=False)
    async def record_lock(self, user: UserInfo, idle_minutes: float) -> None:
        """Write the screen-lock audit row."""
        await self.accounts.screen_locked(user, idle_minutes=idle_minutes)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A failed app worker (the database unreadable, an audit row not written) is shown, not swallowed."""
        if event.worker.node is self and event.state is WorkerState.ERROR:
            self.notify(f"{event.worker.name} failed: {event.worker.error}", severity="error", timeout=30)

    # -- messages from the screens -------------------------------------------------------------------------

    async def on_logged_in(self, message: LoggedIn) -> None:
        self.user = message.user
        self.last_activity = self.settings.clock()
        try:
            minutes, problem = await read_auto_lock_minutes(self.accounts.sessions)
        except (SQLAlchemyError, StorageError) as exc:
            minutes, problem = (
                DEFAULT_AUTO_LOCK_MINUTES,
                f"cannot read auto_lock_minutes ({exc}); using default",
            )
        self.auto_lock = timedelta(minutes=minutes)
        if problem is not None:
            self.notify(problem, severity="warning", timeout=15)
        if message.user.must_change_password:
            await self._show_screen(ChangePasswordScreen(self.context, message.user, message.password))
        else:
            await self._show_screen(HomeScreen(self.context, message.user))

    async def on_password_changed(self, message: PasswordChanged) -> None:
        user = self.user
        if user is None or user.tech_id != message.user.tech_id:
            return  # logged out meanwhile
        self.user = message.user
        if not self.is_locked:  # else the home screen is shown once the console is unlocked
            await self._show_screen(HomeScreen(self.context, message.user))

    async def on_unlocked(self, message: Unlocked) -> None:
        self.last_activity = self.settings.clock()
        while isinstance(self.screen, LockScreen):
            await self.pop_screen()
        user = self.user
        if (
            isinstance(self.screen, ChangePasswordScreen)
            and user is not None
            and not user.must_change_password
        ):
            # The new password was saved while the console was locked.
            await self._show_screen(HomeScreen(self.context, user))

    def on_entry_screen_requested(self, message: EntryScreenRequested) -> None:
        self.show_entry_screen()

    async def on_logout_requested(self, message: LogoutRequested) -> None:
        user = self.user
        if user is None:
            return
        reason = "lock_screen" if self.is_locked else "user"
        self.user = None
        try:
            await self.accounts.logout(user, reason=reason)
        except (SQLAlchemyError, StorageError) as exc:
            self.notify(f"logged out, but the audit row was not written: {exc}", severity="error", timeout=30)
        self.show_entry_screen()

    # -- quitting ------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The kiosk has no quit key: the binding is hidden and inactive there."""
        if action == "quit_console" and self.settings.kiosk:
            return False
        return True

    async def action_quit_console(self) -> None:
        """Close the console (not available in kiosk mode); a logged-in user is logged out first."""
        user = self.user
        if user is not None:
            self.user = None
            try:
                await self.accounts.logout(user, reason="quit")
            except (SQLAlchemyError, StorageError):
                # Closing must not be prevented by a database that can no longer be written.
                self.log.error("the logout audit row could not be written")
        self.exit(0)


def make_app(settings: ConsoleSettings) -> ToscaApp:
    """Build the console for ``settings`` (the one factory, for ``tosca`` and the tests)."""
    return ToscaApp(settings)
