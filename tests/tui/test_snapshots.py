"""Snapshots of the first screens at 80x24: fixed clock, relative data directory, steady cursor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from console_fixtures import (
    GIVEN_PASSWORD,
    TECH_PASSWORD,
    FakeClock,
    admin_sets_password_sync,
    enter_text,
    make_settings,
    seed_sync,
    showing,
    wait_until,
)
from textual.pilot import Pilot
from textual.widgets import Input

from tui.app import make_app
from tui.screens import ChangePasswordScreen, FirstRunScreen, HomeScreen, LockScreen, LoginScreen

SnapCompare = Callable[..., bool]


async def focused_on(pilot: Pilot[Any], screen_type: type) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, screen_type) and isinstance(app.focused, Input), "the form")


def test_first_run_screen(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, FirstRunScreen)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=(80, 24), run_before=ready)


def test_login_screen_on_the_simulated_rig(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare
) -> None:
    seed_sync()

    async def ready(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, LoginScreen)

    assert snap_compare(make_app(make_settings(clock, sim=True)), terminal_size=(80, 24), run_before=ready)


def test_home_screen(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    seed_sync()

    async def logged_in(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, LoginScreen)
        await enter_text(pilot, "tina")
        await pilot.press("enter")
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        app = pilot.app
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
        home = app.screen
        assert isinstance(home, HomeScreen)
        await wait_until(pilot, lambda: home.facts is not None, "the database facts")

    assert snap_compare(
        make_app(make_settings(clock, sim=True)), terminal_size=(80, 24), run_before=logged_in
    )


def test_lock_screen(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    seed_sync()

    async def locked(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, LoginScreen)
        await enter_text(pilot, "tina")
        await pilot.press("enter")
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(pilot.app, HomeScreen), "the home screen")
        await pilot.press("ctrl+l")
        await focused_on(pilot, LockScreen)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=(80, 24), run_before=locked)


def test_change_password_screen(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare) -> None:
    seed_sync()
    admin_sets_password_sync("tina", GIVEN_PASSWORD)

    async def must_change(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, LoginScreen)
        await enter_text(pilot, "tina")
        await pilot.press("enter")
        await enter_text(pilot, GIVEN_PASSWORD)
        await pilot.press("enter")
        await focused_on(pilot, ChangePasswordScreen)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=(80, 24), run_before=must_change)
