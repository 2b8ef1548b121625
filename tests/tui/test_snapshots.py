"""Snapshots of the first screens at 80x24 and 120x40: fixed clock, relative data directory, steady cursor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
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

from storage.paths import DataDir, DiskUsage
from tui.app import make_app
from tui.screens import ChangePasswordScreen, FirstRunScreen, HomeScreen, LockScreen, LoginScreen

SnapCompare = Callable[..., bool]
SIZES = [(80, 24), (120, 40)]
by_size = pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")


async def focused_on(pilot: Pilot[Any], screen_type: type) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, screen_type) and isinstance(app.focused, Input), "the form")


@by_size
def test_first_run_screen(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, FirstRunScreen)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=ready)


@by_size
def test_login_screen_on_the_simulated_rig(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_sync()

    async def ready(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, LoginScreen)

    assert snap_compare(make_app(make_settings(clock, sim=True)), terminal_size=size, run_before=ready)


@by_size
def test_home_screen(
    data_dir: Path,
    clock: FakeClock,
    snap_compare: SnapCompare,
    size: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_sync()
    # The disk's real figures change from machine to machine; the screenshot shows fixed ones.
    fixed = DiskUsage(free_bytes=41_250_000_000, total_bytes=63_800_000_000, sessions_bytes=1_234_000_000)
    monkeypatch.setattr(DataDir, "disk_usage", lambda self: fixed)

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

    assert snap_compare(make_app(make_settings(clock, sim=True)), terminal_size=size, run_before=logged_in)


@by_size
def test_lock_screen(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
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

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=locked)


@by_size
def test_change_password_screen(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_sync()
    admin_sets_password_sync("tina", GIVEN_PASSWORD)

    async def must_change(pilot: Pilot[Any]) -> None:
        await focused_on(pilot, LoginScreen)
        await enter_text(pilot, "tina")
        await pilot.press("enter")
        await enter_text(pilot, GIVEN_PASSWORD)
        await pilot.press("enter")
        await focused_on(pilot, ChangePasswordScreen)

    assert snap_compare(make_app(make_settings(clock)), terminal_size=size, run_before=must_change)
