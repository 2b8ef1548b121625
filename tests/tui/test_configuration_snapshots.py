"""Snapshots of the admin's configuration screen and its edit dialog with a refusal, at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp, LinkStandIn, SessionShown, SnapshotShown
from console_fixtures import DATA_DIR, FakeClock, enter_text, seed, tables_measured, wait_until
from textual.pilot import Pilot
from textual.widgets import DataTable, Label

from control.accounts import UserInfo
from control.config_editor import change_setting
from storage import create_engine, session_factory
from tui.screens._base import ScreenContext
from tui.screens.configuration import ConfigurationScreen, EditSettingDialog

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


def configuration(context: ScreenContext, user: UserInfo) -> ConfigurationScreen:
    return ConfigurationScreen(context, user)


def seed_with_a_change() -> None:
    """ada and tina; ada has lowered the automatic lock to 5 minutes."""

    async def run() -> None:
        await seed()
        engine = create_engine(DATA_DIR / "tosca.db")
        try:
            await change_setting(
                session_factory(engine), "auto_lock_minutes", "5", admin="ada", reason="ward", expected=10
            )
        finally:
            await engine.dispose()

    asyncio.run(run())


async def listed(pilot: Pilot[Any]) -> ConfigurationScreen:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfigurationScreen), "the screen")
    screen = pilot.app.screen
    assert isinstance(screen, ConfigurationScreen)
    await wait_until(pilot, lambda: screen.loaded, "the settings")
    await tables_measured(pilot)
    return screen


@pytest.mark.parametrize("size", SIZES)
def test_configuration_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    seed_with_a_change()
    link = LinkStandIn(SnapshotShown(SessionShown(12, "P-2026-0003", "in_progress")))
    app = AdminScreenApp(configuration, clock, link=link)

    async def ready(pilot: Pilot[Any]) -> None:
        await listed(pilot)

    assert snap_compare(app, terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES)
def test_configuration_refusal_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(seed())
    app = AdminScreenApp(configuration, clock)

    async def refused(pilot: Pilot[Any]) -> None:
        screen = await listed(pilot)
        screen.query_one("#config-table", DataTable).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, EditSettingDialog), "the dialog")
        await enter_text(pilot, "12")
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: "refused" in str(pilot.app.screen.query_one("#dialog-error", Label).render()),
            "the refusal",
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=refused)
