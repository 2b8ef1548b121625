"""What the remote console's Pilot tests share: an in-process controller on the simulated rig with an engineer
account, the remote console app (its link on observe.sock, an SSH origin) and its login."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from console_fixtures import CLI, DATA_DIR, enter_text, make_settings, seed, showing
from console_fixtures import wait_until as pilot_wait
from textual.pilot import Pilot

from control.accounts import AccountService
from control.controller import Controller
from storage import create_engine, session_factory
from tests.support import CHEAP, FakeClock
from tui.app import ToscaApp, make_app
from tui.remote import RemoteOrigin
from tui.screens.home import HomeScreen
from tui.screens.login import LoginScreen

ENGINEER_PASSWORD = "engineer pass 1"
ORIGIN = RemoteOrigin(ssh_client="192.0.2.9", unix_user="eng1")


@contextlib.asynccontextmanager
async def sim_controller() -> AsyncIterator[Controller]:
    """The seeded console database with the engineer ``eric``, and a controller on the simulated rig over it,
    in this process."""
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user("eric", "Eric Engineer", "engineer", ENGINEER_PASSWORD, CLI)
    finally:
        await engine.dispose()
    ctl = Controller(DATA_DIR, sim=True, hashing=CHEAP, terminal="controller")
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.close()


def remote_console(clock: FakeClock) -> ToscaApp:
    """The console as ``tosca remote`` runs it, connecting to the running controller."""
    return make_app(make_settings(clock, controller="connect"), first_run=False, remote=ORIGIN)


def notifications(app: ToscaApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


async def remote_log_in(pilot: Pilot[int], username: str, password: str) -> HomeScreen:
    """Log in at the remote console's login screen; the home screen it lands on."""
    app = pilot.app
    await pilot_wait(pilot, lambda: showing(app, LoginScreen), "the login screen")
    await enter_text(pilot, username)
    await pilot.press("enter")
    await enter_text(pilot, password)
    await pilot.press("enter")
    await pilot_wait(pilot, lambda: showing(app, HomeScreen), "the home screen", 20.0)
    assert isinstance(app.screen, HomeScreen)
    return app.screen


__all__ = [
    "ENGINEER_PASSWORD",
    "ORIGIN",
    "notifications",
    "remote_console",
    "remote_log_in",
    "sim_controller",
]
