"""Snapshots of the admin's audit trail and backups screens at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp, add_audit_rows, fixed_space
from console_fixtures import DATA_DIR, FakeClock, seed, tables_measured, wait_until
from textual.pilot import Pilot
from textual.widgets import Input, Label

from control.accounts import UserInfo
from storage import DataDir
from storage.backup import backup_database
from storage.backups import verify_backup
from tui.screens._base import ScreenContext
from tui.screens.audit import AuditScreen
from tui.screens.backups import BackupsScreen

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
T0 = datetime(2026, 3, 1, 8, 0, 0)


def audit_screen(context: ScreenContext, user: UserInfo) -> AuditScreen:
    return AuditScreen(context, user)


def backups_screen(context: ScreenContext, user: UserInfo) -> BackupsScreen:
    return BackupsScreen(context, user, space=fixed_space)


@pytest.mark.parametrize("size", SIZES)
def test_audit_trail_snapshot(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any) -> None:
    asyncio.run(seed())
    actions = ["login", "config_change", "db_backup", "user_role_change", "login"]
    add_audit_rows(
        [
            (
                T0 + timedelta(minutes=7 * n),
                ["ana", "ben", "[b]carl[/b]"][n % 3],
                actions[n % 5],
                "failure" if n % 4 == 3 else "success",
                json.dumps({"key": "auto_lock_minutes", "old": n, "new": n + 1}),
            )
            for n in range(60)
        ]
    )

    async def filtered(pilot: Pilot[Any]) -> None:
        field = pilot.app.screen.query_one("#filter-until", Input)
        field.focus()
        field.value = "2026-03-10"
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: "until 2026-03-10" in str(pilot.app.screen.query_one("#page", Label).render()),
            "the filtered page",
        )
        # The filter keeps the focus: its cursor must not blink between two snapshots of the same screen.
        field.cursor_blink = False
        await tables_measured(pilot)
        await pilot.pause()

    assert snap_compare(AdminScreenApp(audit_screen, clock), terminal_size=size, run_before=filtered)


@pytest.mark.parametrize("size", SIZES)
def test_backups_snapshot(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any) -> None:
    asyncio.run(seed())
    folder = DataDir(DATA_DIR)
    names = [backup_database(folder, now=datetime(2026, 3, day, 2, 0, 0)).name for day in (10, 11, 12)]
    verify_backup(folder, names[1], user="ada")
    damaged = folder.backups / names[0]
    damaged.write_bytes(damaged.read_bytes()[:3000])
    verify_backup(folder, names[0], user="ada")

    async def listed(pilot: Pilot[Any]) -> None:
        def ready() -> bool:
            screen = pilot.app.screen
            return isinstance(screen, BackupsScreen) and screen.overview is not None

        await wait_until(pilot, ready, "the backups listed")
        await tables_measured(pilot)

    assert snap_compare(AdminScreenApp(backups_screen, clock), terminal_size=size, run_before=listed)
