"""Snapshots of the home screen per role and of the users and roles screen with its dialogs, at 80x24 and
120x40: fixed clock and time zone, relative data directory, fixed disk figures, steady cursor."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import (
    ADMIN_PASSWORD,
    CLI,
    DATA_DIR,
    FakeClock,
    enter_text,
    make_settings,
    seed,
    showing,
    tables_measured,
    wait_until,
)
from textual.pilot import Pilot
from textual.widgets import Input, Label

from control.accounts import MAX_FAILED_LOGINS, AccountService
from storage import create_engine, session_factory
from storage.paths import DataDir, DiskUsage
from tests.support import CHEAP
from tui.app import make_app
from tui.screens import HomeScreen, LoginScreen
from tui.screens.user_dialogs import AddUserDialog, RoleDialog
from tui.screens.users import UsersScreen

SnapCompare = Callable[..., bool]
SIZES = [(80, 24), (120, 40)]
by_size = pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")


@pytest.fixture(autouse=True)
def fixed_screen_facts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times shown in UTC, and the same disk figures on every machine."""
    fixed = DiskUsage(free_bytes=41_250_000_000, total_bytes=63_800_000_000, sessions_bytes=1_234_000_000)
    monkeypatch.setattr(DataDir, "disk_usage", lambda self: fixed)
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def seed_people(clock: FakeClock) -> None:
    """ada (admin) and tina (technician); bob, a second admin who must change the password given to him; eric,
    an engineer; mal, deactivated, whose name looks like markup; tina locked out by failed logins."""

    async def run() -> None:
        await seed()
        engine = create_engine(DATA_DIR / "tosca.db")
        try:
            service = AccountService(
                sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP, clock=clock
            )
            await service.create_user("bob", "Bob Admin", "admin", "bob password 1", CLI)
            await service.set_password("bob", "given password 1", CLI)
            await service.create_user("eric", "Eric Engineer", "engineer", "eric password 1", CLI)
            await service.create_user("mal", "Mal [red]Formed[/red]", "technician", None, CLI)
            await service.deactivate("mal", CLI)
            for _ in range(MAX_FAILED_LOGINS):
                await service.login("tina", "wrong password")
        finally:
            await engine.dispose()

    asyncio.run(run())


async def logged_in(pilot: Pilot[Any], username: str, password: str) -> HomeScreen:
    app = pilot.app
    await wait_until(
        pilot, lambda: showing(app, LoginScreen) and isinstance(app.focused, Input), "the login form"
    )
    await enter_text(pilot, username)
    await pilot.press("enter")
    await enter_text(pilot, password)
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
    home = app.screen
    assert isinstance(home, HomeScreen)
    await wait_until(pilot, lambda: home.facts is not None, "the database facts")
    return home


async def users_screen(pilot: Pilot[Any]) -> UsersScreen:
    await logged_in(pilot, "ada", ADMIN_PASSWORD)
    await pilot.press("u")
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, UsersScreen), "the users screen")
    screen = app.screen
    assert isinstance(screen, UsersScreen)
    await wait_until(pilot, lambda: screen.loaded, "the accounts")
    await tables_measured(pilot)
    return screen


@by_size
def test_admin_home(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_people(clock)

    async def ready(pilot: Pilot[Any]) -> None:
        await logged_in(pilot, "ada", ADMIN_PASSWORD)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=ready)


@by_size
def test_engineer_home(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_people(clock)

    async def ready(pilot: Pilot[Any]) -> None:
        # The technician's home is in test_snapshots.py.
        await logged_in(pilot, "eric", "eric password 1")

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=ready)


@by_size
def test_users_screen(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_people(clock)

    async def ready(pilot: Pilot[Any]) -> None:
        await users_screen(pilot)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=ready)


@by_size
def test_users_screen_refusal(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_people(clock)

    async def ready(pilot: Pilot[Any]) -> None:
        screen = await users_screen(pilot)
        await pilot.press("r")  # ada is highlighted first: she tries to demote herself
        app = pilot.app
        await wait_until(pilot, lambda: showing(app, RoleDialog), "the role dialog")
        await enter_text(pilot, "technician")
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: (
                showing(app, UsersScreen) and "demote" in str(screen.query_one("#status", Label).render())
            ),
            "the refusal",
        )

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=ready)


@by_size
def test_add_user_dialog_refusal(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_people(clock)

    async def ready(pilot: Pilot[Any]) -> None:
        await users_screen(pilot)
        await pilot.press("a")
        app = pilot.app
        await wait_until(pilot, lambda: showing(app, AddUserDialog), "the add dialog")
        dialog = app.screen
        assert isinstance(dialog, AddUserDialog)
        typed = {
            "username": "tom",
            "full-name": "Tom Tech",
            "role": "surgeon",
            "password": "x",
            "repeat": "x",
        }
        for field, value in typed.items():
            dialog.field(field).value = value
        repeat = dialog.field("repeat")
        repeat.focus()
        await wait_until(pilot, lambda: app.focused is repeat, "the last field focused")
        await pilot.press("enter")
        error = dialog.query_one("#dialog-error", Label)
        await wait_until(pilot, lambda: "role must be" in str(error.render()), "the refusal")

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=ready)
