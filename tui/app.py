"""The TOSCA console application.

:func:`make_app` is the one factory, used by ``tosca`` and by the tests, configured by a
:class:`tui.settings.ConsoleSettings`. The app draws its entry screen before it opens the database:
which one (first run or login) is read with a plain query (:mod:`storage.probe`), then the database is
opened in a thread (SQLAlchemy, and the upgrade ``tosca`` passes as ``prepare``, see
:mod:`tui.commands.console`) while the user types; a submitted form waits for it, the controller link starts
once it is open, and a failure ends the app with exit code 1 and :attr:`ToscaApp.startup_error`.

Flow: at start, if no active admin with a password exists the first-run screen creates one, otherwise the
login screen asks for a username and password. A user whose password was set by an admin must then choose
their own on the change-password screen (or log out). After that the home screen shows who is logged in and
the state of the database. After ``auto_lock_minutes`` (``system_config``) without a key press or mouse input
the console locks and asks the same user's password again, or lets them log out; never while the laser is
armed or emitting. In kiosk mode there is no quit key and no command palette, and Ctrl+C, Ctrl+Z, Ctrl+Q and
Ctrl+P do nothing.

The app holds the :class:`~tui.link.ConsoleLink` to the controller. Every snapshot, event and camera preview
it receives is posted to each screen on the stack (coalesced: a newer snapshot replaces one still queued), so
a dashboard under a dialog stays live. The treatment flow: the protocol screen posts
:class:`SessionRequested`; the app opens the session on the controller and shows the pre-treatment checks;
arming there shows the dashboard; when the session closes the end-of-session screen follows, and saving its
notes (:class:`SessionFinished`) goes back to the subjects. F12 stops emission from any screen; with
``--sim`` F5, F6 and F7 press or release the footpedal, hit or release the E-stop and inject faults, on the
screens that show the simulated hardware panel (the checks and the dashboard) and nowhere else.

Closing: every way out (Ctrl+Q, Ctrl+C, the command palette's Quit) asks :meth:`ToscaApp.exit_refusal`, the
one rule: the console does not close while a treatment session is open, nor ever on the kiosk. A hang-up
(SIGHUP: the terminal was closed) leaves no terminal to refuse on, and SIGTERM is the system ending the
console: it then closes, and a controller it started itself is stopped first (SIGTERM: laser off, an open
session closed as aborted), so no controller is left running with nobody attached; a controller it did not
start carries on (without its operator it stops emission and pauses the session).

The console's layouts are made for 80x24 and larger: below that, every screen is covered by a "terminal too
small" notice instead of cut readings. Only the theme the screens are made for is offered.

The controller takes commands only from a connection a person authenticated: after a login the app
authenticates the link with the password just typed (it keeps it only for that, and for taking over a
session no live console holds), and the link keeps the controller's token for its reconnections. When the
controller no longer knows the token (it restarted), the console locks, and unlocking authenticates again
with that password. Logging out logs the connection out too.

The remote console (``remote`` given, see :mod:`tui.remote`; ``tosca remote`` over SSH) is the same app with
its link on ``observe.sock`` only: its login, logout and lock are recorded by the controller with where it
came from; opening a session, the stop key and the simulator keys are refused with the reason (the controller
could not be asked anyway: that socket has no such command, and ``control.sock`` is closed to its Unix user);
it never shows a session's checks or dashboard; it may close while a session runs at the kiosk, and logging
out closes it (so the SSH session ends too). It has no command palette.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import signal
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar

from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.driver import Driver
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from control.account_rules import AccountError, UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.terminal import detect_terminal
from storage.errors import StorageError
from storage.paths import DataDir
from storage.probe import needs_first_admin
from tui.commands import start_failure
from tui.link import CONTROL_SOCKET, ConsoleLink, read_reply
from tui.memory import QuietCollector
from tui.safe_text import escape_controls
from tui.screens._base import (
    ControllerEvent,
    EntryScreenRequested,
    LoggedIn,
    LogoutRequested,
    PasswordChanged,
    PreviewUpdated,
    ScreenContext,
    SessionFinished,
    SessionRequested,
    SnapshotUpdated,
    Unlocked,
)
from tui.screens.change_password import ChangePasswordScreen
from tui.screens.first_run import FirstRunScreen
from tui.screens.lock import LockScreen
from tui.screens.login import LoginScreen
from tui.settings import ConsoleSettings, default_setting, read_auto_lock_minutes
from tui.stop_key import StopKeyAnswered, stop_now, with_stop_key

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from control.accounts import AccountService
    from control.messages import Event, Preview, Snapshot
    from tui.remote import RemoteOrigin
    from tui.screens.home import HomeScreen

#: Input that counts as activity for the automatic lock.
_ACTIVITY_EVENTS = (
    events.Key,
    events.MouseDown,
    events.MouseUp,
    events.MouseMove,
    events.MouseScrollDown,
    events.MouseScrollUp,
)

#: The smallest terminal the console's layouts are made for (columns, rows).
MIN_COLUMNS, MIN_ROWS = 80, 24
#: The terminal hung up (SIGHUP), or the system ends the console (SIGTERM): it closes, see :meth:`hang_up`.
HANG_UP_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
#: After a hang-up, once the controller is taken care of, the process ends within this many seconds, s.
HANG_UP_EXIT_S = 5.0
#: The themes offered: the one the screens are made and checked for (legible on a 16-colour console too).
CONSOLE_THEMES = frozenset({"textual-dark"})


class TooSmall(Static):
    """Covers the screen while the terminal is smaller than :data:`MIN_COLUMNS` x :data:`MIN_ROWS`."""

    DEFAULT_CSS = """
    TooSmall {
        dock: top;
        width: 100%;
        height: 100%;
        padding: 1 1;
        background: $error;
        color: $text;
        text-style: bold;
        content-align: center middle;
        text-align: center;
    }
    """


class ToscaApp(App[int]):
    """The console. Build it with :func:`make_app`."""

    CSS_PATH = "tosca.tcss"
    TITLE = "TOSCA"
    BINDINGS: ClassVar[list[BindingType]] = [
        # The stop key's label is in every screen's header (the footer may be cut at 80 columns).
        Binding("f12", "stop_emission", "STOP LASER", show=False, priority=True),
        Binding("ctrl+q", "quit_console", "Quit", priority=True),
        Binding("ctrl+c", "quit_console", "Quit", show=False, priority=True),
        Binding("ctrl+z", "inert", show=False, priority=True),
        # Shown on the simulated hardware panel (checks and dashboard) rather than in the footer.
        Binding("f5", "sim_pedal", "Pedal", show=False, priority=True),
        Binding("f6", "sim_estop", "E-stop", show=False, priority=True),
        Binding("f7", "sim_fault", "Fault", show=False, priority=True),
    ]

    #: States in which the console never locks itself (the laser is armed or emitting).
    NO_LOCK_STATES: ClassVar[frozenset[str]] = frozenset({"armed", "treating"})

    def __init__(
        self,
        settings: ConsoleSettings,
        prepare: Callable[[], object] | None = None,
        first_run: bool | None = None,
        remote: RemoteOrigin | None = None,
    ) -> None:
        # Read by App.__init__: the kiosk and the remote console have no command palette.
        self.ENABLE_COMMAND_PALETTE = not (settings.kiosk or remote)  # type: ignore[misc]  # per console
        super().__init__()
        self.settings = settings
        #: Where the remote console is used from (``None``: not a remote console).
        self.remote = remote
        self.data_dir = DataDir(settings.data_dir)
        self.terminal = settings.terminal if settings.terminal is not None else detect_terminal()
        #: Run (blocking, in a thread) before the database is opened: ``tosca`` upgrades it there.
        self._prepare = prepare
        #: The plain query's answer when ``tosca`` has already asked it (None: the app asks).
        self._first_run_at_start = first_run
        #: The database's engine, once it is open (see :meth:`open_database`).
        self._engine: AsyncEngine | None = None
        #: Why the database could not be opened (the console then exits with 1 and says this).
        self.startup_error: str | None = None
        #: Whether the database is being opened or is open.
        self._opening = False
        self.link: ConsoleLink | None = None
        if settings.controller != "off":
            self.link = ConsoleLink(
                settings.data_dir,
                sim=settings.sim,
                on_message=self._on_link_message,
                on_state=self._on_link_state,
                start_controller=settings.controller == "start" and remote is None,
                on_auth_lost=self._on_link_auth_lost,
                observe=remote is not None,
            )
        self.context = ScreenContext(settings=settings, link=self.link)
        #: The controller's newest state (``None`` before the first or while it is unreachable).
        self.snapshot: Snapshot | None = None
        #: This app's event loop, for the stop key's answers from other threads (set on mount).
        self._ui_loop: asyncio.AbstractEventLoop | None = None
        #: Keeps the garbage collector's full passes short while the laser may emit (on a terminal).
        self.collector: QuietCollector | None = None
        #: Sessions whose first emission has rung the terminal bell.
        self._belled: set[int] = set()
        #: The user who logged in before the controller's first snapshot: a session the controller has open
        #: is resumed for them when that snapshot comes (:meth:`resume_open_session`).
        self._resume_for: UserInfo | None = None
        #: True when the controller refused the link's token: the next unlock authenticates again.
        self._link_needs_password = False
        #: Screen updates delivered (snapshots posted to the screen on top), for the benchmark.
        self.snapshots_shown = 0
        #: The logged-in user, or None.
        self.user: UserInfo | None = None
        #: Inactivity after which the console locks (from ``system_config`` at each login; None before).
        self.auto_lock: timedelta | None = None
        self.last_activity = settings.clock()
        #: Set once the terminal has hung up (SIGHUP): the console is closing.
        self.hung_up = False

    # -- life cycle ----------------------------------------------------------------------------------------

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast is drawn as text: its message carries what people typed and devices sent, so it is
        never read as markup (``markup`` is ignored) and its control characters are shown escaped."""
        super().notify(
            escape_controls(message),
            title=escape_controls(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def get_driver_class(self) -> type[Driver]:
        """The terminal's driver, with F12 sent to the controller from its input thread (see
        :mod:`tui.stop_key`). Called by ``App.__init__``."""
        return with_stop_key(super().get_driver_class(), self._stop_key_read)

    @property
    def accounts(self) -> AccountService:
        """The account service on the console's database (there once it is open: before any login)."""
        return self.context.accounts

    def on_mount(self) -> None:
        self._ui_loop = asyncio.get_running_loop()
        self.set_interval(self.settings.idle_check_seconds, self.check_inactivity, name="auto-lock")
        self.screen_change_signal.subscribe(self, lambda _s: self.call_after_refresh(self.show_too_small))
        self.show_entry_screen()
        if not self.is_headless:
            # On a terminal only: the collector's state is the process's, and tests run many apps in one.
            self.collector = QuietCollector()
            self.call_after_refresh(self.collector.freeze)
            for signum in HANG_UP_SIGNALS:
                self._ui_loop.add_signal_handler(signum, self.hang_up)

    async def on_unmount(self) -> None:
        if not self.is_headless and self._ui_loop is not None:
            for signum in HANG_UP_SIGNALS:
                self._ui_loop.remove_signal_handler(signum)
        # Workers still reading the database are cancelled and waited for before the engine goes.
        self.workers.cancel_all()
        try:
            if self.link is not None:
                await self.link.close()
            with contextlib.suppress(Exception):
                await self.workers.wait_for_complete()
        finally:
            if self._engine is not None:
                await self._engine.dispose()
        # Connections whose queries were cancelled are still closing: the console leaves nothing running.
        from storage.engine import finish_closing_connections

        if self.collector is not None:
            gc.unfreeze()
        await finish_closing_connections()

    # -- the controller's pushes -----------------------------------------------------------------------

    def _on_link_message(self, message: Snapshot | Event | Preview) -> None:
        """Called by the link on this loop for every pushed message: hand it to every screen that shows it."""
        from control.messages import Preview, Snapshot  # loaded with the link, before its first message

        if isinstance(message, Snapshot):
            self.snapshot = message
            if self.collector is not None:
                self.collector.update(self.emission_possible)
            self._ring_on_first_emission(message)
            if self._resume_for is not None:
                user, self._resume_for = self._resume_for, None
                if user is self.user and not self.is_locked:
                    self.call_later(self.resume_open_session, user)
            update: SnapshotUpdated | PreviewUpdated | ControllerEvent = SnapshotUpdated(message)
            self.snapshots_shown += 1
        elif isinstance(message, Preview):
            update = PreviewUpdated(message)
        else:
            update = ControllerEvent(message)
            if message.severity in ("critical", "emergency"):
                self.notify(message.message, severity="error", timeout=20)
        for screen in self.screen_stack:
            # Only to the screens that handle it. A message to a covered screen that ignores it is not free:
            # Textual then repaints that screen whole, and with it the whole screen on top, every time.
            if hasattr(screen, update.handler_name):
                screen.post_message(update)

    def _on_link_state(self, connected: bool, reason: str) -> None:
        if connected:
            self.notify("connected to the controller", timeout=3)
        else:
            self.snapshot = None
            self.notify(f"controller: {reason}", severity="error", timeout=30)

    def _on_link_auth_lost(self, reason: str) -> None:
        """The reconnected link could not authenticate with its token (the controller restarted, or the token
        expired): the console locks, and the password typed to unlock it authenticates the link again."""
        self._link_needs_password = True
        if self.user is None:
            return
        self.notify(f"the controller asks for your password again ({reason})", severity="warning", timeout=30)
        if not self.is_locked:
            self.lock(idle_minutes=0.0)

    @work(group="link-sign-in", exclusive=True, exit_on_error=False)
    async def sign_in_link(self, user: UserInfo, password: str) -> None:
        """Authenticate the link for ``user`` with the password just typed; then, if the controller has a
        session open that no live console holds, take it over for them (the console re-attaching to it).
        The password lives only as long as this worker."""
        link = self.link
        if link is None:
            return
        try:
            await link.sign_in(user.username, password)
        except (CommandFailed, ControllerUnavailable) as exc:
            if self.user is user:
                self.notify(f"the controller did not accept your login: {exc}", severity="error", timeout=30)
            return
        self._link_needs_password = False
        if self.user is not user:
            # Logged out (or another person logged in) while the controller was still starting: the
            # connection must not stay signed in for someone who has left.
            if self.user is None:
                await link.sign_out()
            return
        snapshot = link.snapshot
        session = snapshot.session if snapshot is not None else None
        if session is None or session.held_by_connection is not None:
            if session is not None and not link.holds_session:
                self.notify(
                    f"session {session.session_id} is held by another console: it cannot be commanded here",
                    severity="warning",
                    timeout=20,
                )
            return
        try:
            await link.take_over(password)
        except (CommandFailed, ControllerUnavailable) as exc:
            self.notify(f"session {session.session_id} not taken over: {exc}", severity="error", timeout=30)
            return
        self.notify(
            f"session {session.session_id} taken over on this console: arm again with your password",
            severity="warning",
            timeout=10,
        )

    def _ring_on_first_emission(self, snapshot: Snapshot) -> None:
        """The terminal bell once, on the first emission of each session."""
        session = snapshot.session
        if snapshot.emitting and session is not None and session.session_id not in self._belled:
            self._belled.add(session.session_id)
            self.bell()

    @property
    def emission_possible(self) -> bool:
        """True while the laser is armed or emitting (then the console neither locks nor logs out)."""
        snapshot = self.snapshot
        return snapshot is not None and (snapshot.emitting or snapshot.state in self.NO_LOCK_STATES)

    # -- keys that work on every screen ----------------------------------------------------------------

    async def action_stop_emission(self) -> None:
        """F12: stop emission at once (laser off; an armed or treating session pauses)."""
        if self.link is None:
            self.notify("no controller: nothing to stop", severity="warning")
            return
        if self.remote is not None:
            from tui.link import OBSERVE_REFUSAL

            self.notify(f"STOP is {OBSERVE_REFUSAL} (or press the E-stop)", severity="error", timeout=20)
            return
        from control.messages import StateReply, Stop

        try:
            reply = read_reply(StateReply, await self.link.call(Stop(), timeout_s=2.0))
        except (CommandFailed, ControllerUnavailable) as exc:
            self.post_message(StopKeyAnswered("", str(exc)))
            return
        self.post_message(StopKeyAnswered(reply.state.value, ""))

    def _stop_key_read(self) -> bool:
        """F12 as the terminal's input thread reads it (not on the app's loop): stop now, show the answer
        later. False (the key goes on to the app's binding) when there is no controller link."""
        loop = self._ui_loop
        if self.link is None or self.remote is not None or loop is None:
            return False

        def answer(message: StopKeyAnswered) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self.post_message, message)

        stop_now(self.link.data_dir / CONTROL_SOCKET, answer)
        return True

    def on_stop_key_answered(self, message: StopKeyAnswered) -> None:
        """The controller's answer to the stop key, by either path."""
        self.last_activity = self.settings.clock()
        if message.error:
            self.notify(f"STOP failed: {message.error}", severity="error", timeout=30)
        else:
            self.notify(f"laser stopped ({message.state})", severity="warning", timeout=5)

    def action_inert(self) -> None:
        """Ctrl+Z does nothing: a suspended console could not stop the laser it armed."""

    async def _sim(self, command: str) -> None:
        if self.link is None:
            return
        from control.messages import Sim

        try:
            await self.link.call(Sim(command=command))
        except (CommandFailed, ControllerUnavailable) as exc:
            self.notify(f"simulator: {exc}", severity="error", timeout=10)

    async def action_sim_pedal(self) -> None:
        """F5 (--sim): press or release the simulated footpedal (a toggle)."""
        from tui.widgets.sim_panel import pedal_command

        await self._sim(pedal_command(self.snapshot))

    async def action_sim_estop(self) -> None:
        """F6 (--sim): hit or release the simulated E-stop."""
        from tui.widgets.sim_panel import estop_command

        await self._sim(estop_command(self.snapshot))

    @work(group="sim-fault", exclusive=True, exit_on_error=False)
    async def action_sim_fault(self) -> None:
        """F7 (--sim): choose a fault of the simulator's command language and inject it."""
        from tui.widgets.sim_panel import SimFaultScreen

        command = await self.push_screen_wait(SimFaultScreen(cursor_blink=self.settings.cursor_blink))
        if command:
            await self._sim(command)
            self.notify(f"simulator: {command}", timeout=4)

    # -- the database, opened after the first frame ---------------------------------------------------------

    @work(exclusive=True, group="entry", exit_on_error=False)
    async def show_entry_screen(self) -> None:
        """First-run screen when no usable admin exists, else the login screen.

        At start the answer is read with a plain query (:func:`storage.probe.needs_first_admin`), so the
        screen is drawn before the database is opened; the opening (the upgrade, SQLAlchemy) follows in a
        thread while the user types, and a submitted form waits for it. If the plain query cannot answer
        (no schema yet, an older one, a damaged file) the database is opened first.
        """
        first_run: bool | None = None
        if not self._opening:
            first_run = self._first_run_at_start
            if first_run is None:
                first_run = await asyncio.to_thread(needs_first_admin, self.data_dir.db_path)
            if first_run is None:
                self.open_database()
        if first_run is None:
            first_run = await (await self.context.opened_accounts()).needs_first_admin()
        screen = FirstRunScreen(self.context) if first_run else LoginScreen(self.context)
        await self._show_screen(screen)
        if not self._opening:
            self.call_after_refresh(self.open_database)

    def open_database(self) -> None:
        """Open the database in a thread (once); then the controller link starts."""
        if self._opening:
            return
        self._opening = True
        self._open_database()

    @work(thread=True, group="database", exit_on_error=False)
    def _open_database(self) -> None:
        try:
            if self._prepare is not None:
                self._prepare()
            from control.accounts import AccountService
            from storage.engine import create_engine, session_factory

            engine = create_engine(self.data_dir.db_path)
            accounts = AccountService(
                sessions=session_factory(engine),
                terminal=self.terminal,
                clock=self.settings.clock,
                hashing=self.settings.hashing,
            )
            if self.link is not None:
                # The socket protocol, loaded here (off the loop) before the link starts.
                importlib.import_module("control.ipc.client")
        except Exception as exc:  # whatever it is, the start ends with the reason, not a screen that waits
            self.call_from_thread(self._database_failed, start_failure(exc, self.settings.data_dir))
        else:
            self.call_from_thread(self._database_opened, engine, accounts)

    def _database_opened(self, engine: AsyncEngine, accounts: AccountService) -> None:
        self._engine = engine
        if self.remote is not None:
            from tui.remote import remote_accounts

            accounts = remote_accounts(accounts, self.link, self.remote)
        self.context.database_opened(accounts)
        # The controller checks the database is at the current schema: it starts once the upgrade is done.
        if self.link is not None:
            self.link.start()

    def _database_failed(self, reason: str) -> None:
        self.startup_error = reason
        self.exit(1, return_code=1)

    def _home(self, user: UserInfo) -> HomeScreen:
        from tui.screens.home import HomeScreen

        return HomeScreen(self.context, user)

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
        if self.emission_possible:
            # Never locked while armed or emitting: the idle time counts from when that ends.
            self.last_activity = self.settings.clock()
            return
        idle = self.settings.clock() - self.last_activity
        if self.auto_lock is not None and idle >= self.auto_lock:
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
        if self.link is not None and self.remote is None:
            self.sign_in_link(message.user, message.password)
        try:
            minutes, problem = await read_auto_lock_minutes(self.accounts.sessions)
        except database_errors() as exc:
            default = default_setting("auto_lock_minutes")
            assert isinstance(default, int)
            minutes, problem = (default, f"cannot read auto_lock_minutes ({exc}); using default")
        self.auto_lock = timedelta(minutes=minutes)
        if problem is not None:
            self.notify(problem, severity="warning", timeout=15)
        if message.user.must_change_password:
            await self._show_screen(ChangePasswordScreen(self.context, message.user, message.password))
        else:
            await self._show_screen(self._home(message.user))
            if self.snapshot is None and self.link is not None:
                self._resume_for = message.user  # decided when the controller's first snapshot comes
            else:
                await self.resume_open_session(message.user)

    async def on_password_changed(self, message: PasswordChanged) -> None:
        user = self.user
        if user is None or user.tech_id != message.user.tech_id:
            return  # logged out meanwhile
        self.user = message.user
        if not self.is_locked:  # else the home screen is shown once the console is unlocked
            await self._show_screen(self._home(message.user))

    async def on_unlocked(self, message: Unlocked) -> None:
        self.last_activity = self.settings.clock()
        if self._link_needs_password and self.user is not None and message.password:
            self.sign_in_link(self.user, message.password)
        while isinstance(self.screen, LockScreen):
            await self.pop_screen()
        user = self.user
        if (
            isinstance(self.screen, ChangePasswordScreen)
            and user is not None
            and not user.must_change_password
        ):
            # The new password was saved while the console was locked.
            await self._show_screen(self._home(user))

    # -- the treatment flow ----------------------------------------------------------------------------

    async def resume_open_session(self, user: UserInfo) -> None:
        """After a login, a session the controller still has open (the console restarted, or the screen was
        logged out) comes back on its dashboard, or on the checks while it is not yet armed."""
        snapshot = self.snapshot
        if self.link is None or self.remote is not None or snapshot is None or snapshot.session is None:
            return  # the remote console never shows a session's checks or dashboard
        from tui.screens.checks import ChecksScreen
        from tui.screens.dashboard import DashboardScreen

        if isinstance(self.screen, ChecksScreen | DashboardScreen):
            return  # already shown (the session was opened on this console meanwhile)

        if snapshot.state == "ready":
            await self.push_screen(ChecksScreen(self.context, user))
        else:
            await self.push_screen(DashboardScreen(self.context, user))

    @work(group="open-session", exclusive=True, exit_on_error=False)
    async def on_session_requested(self, message: SessionRequested) -> None:
        """Open the session on the controller, then show the pre-treatment checks in place of the protocol
        screen; a refusal is shown and nothing changes."""
        user = self.user
        if self.remote is not None:
            from tui.link import OBSERVE_REFUSAL

            self.notify(f"a treatment session is {OBSERVE_REFUSAL}", severity="error", timeout=20)
            return
        if user is None or self.link is None:
            self.notify("no controller: a session cannot be opened", severity="error", timeout=10)
            return
        from control.messages import OpenSession, SessionOpened
        from tui.screens.checks import ChecksScreen

        self.notify(f"opening a session for {message.subject_code}...", timeout=3)
        try:
            opened = read_reply(
                SessionOpened,
                await self.link.call(
                    OpenSession(
                        subject_code=message.subject_code,
                        username=user.username,
                        protocol_name=message.protocol_name,
                        treatment_site=message.treatment_site or None,
                        draft=message.draft,
                    ),
                    timeout_s=60.0,
                ),
            )
        except (CommandFailed, ControllerUnavailable) as exc:
            self.notify(f"session not opened: {exc}", severity="error", timeout=30)
            return
        await self.switch_screen(ChecksScreen(self.context, user, opened.session_id))

    async def on_session_finished(self, message: SessionFinished) -> None:
        """The notes are saved: back to the screen under the end-of-session screen (the subjects)."""
        if len(self.screen_stack) > 2:
            await self.pop_screen()

    def on_entry_screen_requested(self, message: EntryScreenRequested) -> None:
        self.show_entry_screen()

    async def on_logout_requested(self, message: LogoutRequested) -> None:
        user = self.user
        if user is None:
            return
        if self.emission_possible:
            self.notify("the laser is armed: stop (F12) or pause before logging out", severity="error")
            return
        reason = "lock_screen" if self.is_locked else "user"
        self.user = None
        if self.link is not None:
            await self.link.sign_out()
        try:
            await self.accounts.logout(user, reason=reason)
        except database_errors() as exc:
            self.notify(f"logged out, but the audit row was not written: {exc}", severity="error", timeout=30)
        if self.remote is not None:
            self.exit(0)  # logging out of the remote console ends it, and with it the SSH session
            return
        self.show_entry_screen()

    # -- quitting ------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The kiosk has no quit key: the binding is hidden and inactive there. The simulator keys exist only
        with ``--sim``, and act only where the simulated hardware panel is on screen; the stop key only with
        a controller."""
        if action == "quit_console" and self.settings.kiosk:
            return False
        if action.startswith("sim_"):
            return (
                self.settings.sim and self.link is not None and self.remote is None and self.sim_panel_shown
            )
        if action == "stop_emission" and self.link is None:
            return False
        return True

    @property
    def sim_panel_shown(self) -> bool:
        """Whether the screen on top shows the simulated hardware panel (where F5, F6 and F7 act)."""
        return any(panel.display for panel in self.screen.query("SimPanel"))

    def exit_refusal(self) -> str | None:
        """The one rule for every way out of the console (Ctrl+Q, Ctrl+C, the command palette's Quit): why
        it may not close now, or ``None`` when it may. Never on the kiosk; never while the controller has a
        treatment session open (it must be finished or aborted first)."""
        if self.settings.kiosk:
            return "the kiosk console does not close"
        if self.remote is not None:
            return None  # a session belongs to the kiosk's console: watching it remotely never holds it
        snapshot = self.snapshot
        if snapshot is not None and snapshot.session is not None:
            return "a treatment session is open: finish or abort it before closing the console"
        return None

    async def action_quit_console(self) -> None:
        """Close the console if :meth:`exit_refusal` allows it (a logged-in user is logged out first), else
        say why not (nothing on the kiosk, which has no way out)."""
        refusal = self.exit_refusal()
        if refusal is not None:
            if not self.settings.kiosk:
                self.notify(refusal, severity="error")
            return
        await self._log_out_for_exit("quit")
        self.exit(0)

    async def action_quit(self) -> None:
        """The command palette's Quit: the same rule as the quit key."""
        await self.action_quit_console()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The command palette's commands, without the theme picker (one theme is offered)."""
        for command in super().get_system_commands(screen):
            if command.title != "Theme":
                yield command

    @property
    def available_themes(self) -> dict[str, Theme]:
        """Only the themes the console's screens are made for (:data:`CONSOLE_THEMES`)."""
        return {name: theme for name, theme in super().available_themes.items() if name in CONSOLE_THEMES}

    async def _log_out_for_exit(self, reason: str) -> None:
        user = self.user
        if user is not None:
            self.user = None
            try:
                await self.accounts.logout(user, reason=reason)
            except database_errors():
                # Closing must not be prevented by a database that can no longer be written.
                self.log.error("the logout audit row could not be written")

    def hang_up(self) -> None:
        """SIGHUP (the terminal has gone, and with it every key) or SIGTERM: the console closes (see the
        module's docstring), stopping a controller it started itself before it goes."""
        if self.hung_up:
            return
        self.hung_up = True
        self.run_worker(self._close_after_hang_up(), name="hang-up", group="hang-up", exit_on_error=False)

    async def _close_after_hang_up(self) -> None:
        try:
            if self.remote is not None:
                await self._log_out_for_exit("hangup")  # recorded by the controller: before the link closes
            if self.link is not None:
                # A controller this console started is stopped here (SIGTERM: laser off, an open session
                # closed as aborted) and waited for; one it did not start is only disconnected.
                await self.link.close()
            await self._log_out_for_exit("hangup")
        finally:
            # Leaving a terminal that is gone can block (output to it, its input thread): once the controller
            # is taken care of, the process ends within HANG_UP_EXIT_S whatever the screen's cleanup does.
            ending = threading.Timer(HANG_UP_EXIT_S, os._exit, args=(0,))
            ending.daemon = True
            ending.start()
            self.exit(0)

    # -- the smallest supported terminal ---------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.show_too_small)

    def show_too_small(self) -> None:
        """Cover the screen on top with a "terminal too small" notice while the terminal is smaller than
        :data:`MIN_COLUMNS` x :data:`MIN_ROWS`, and remove it once it is large enough."""
        width, height = self.size
        small = width < MIN_COLUMNS or height < MIN_ROWS
        for screen in self.screen_stack:
            for notice in screen.query(TooSmall):
                if not small or screen is not self.screen:
                    notice.remove()
        if not small:
            return
        text = f"terminal too small\n\n{width}x{height}: the console needs at least {MIN_COLUMNS}x{MIN_ROWS}"
        text += "\n\nenlarge the window" + (" (F12 still stops the laser)" if self.link is not None else "")
        shown = self.screen.query(TooSmall)
        if shown:
            shown.first().update(text)
        else:
            self.screen.mount(TooSmall(text))


def database_errors() -> tuple[type[Exception], ...]:
    """What a failed database call raises (SQLAlchemy's errors are loaded when first needed: by then the
    database is open, and SQLAlchemy with it)."""
    from sqlalchemy.exc import SQLAlchemyError

    # AccountError: the remote console's records are written by the controller, which may refuse or be gone.
    return (SQLAlchemyError, StorageError, AccountError)


def make_app(
    settings: ConsoleSettings,
    prepare: Callable[[], object] | None = None,
    first_run: bool | None = None,
    *,
    remote: RemoteOrigin | None = None,
) -> ToscaApp:
    """Build the console for ``settings`` (the one factory, for ``tosca`` and the tests). ``prepare`` runs
    in a thread before the database is opened (``tosca`` upgrades the database there); ``first_run`` is
    :func:`storage.probe.needs_first_admin`'s answer where ``tosca`` already has it; ``remote`` makes it the
    remote console used from there (:mod:`tui.remote`)."""
    return ToscaApp(settings, prepare, first_run, remote)
