"""Snapshots of the engineer's safety log browser, research export and controller log at 80x24 and 120x40."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, FakeClock, status_text, tables_measured, wait_until
from engineer_fixtures import EngineerApp, write_engineer_records
from textual.pilot import Pilot
from textual.widgets import Input, Label

from control.accounts import UserInfo
from tui.screens._base import ScreenContext
from tui.screens.export import ExportScreen
from tui.screens.logs import LogsScreen
from tui.screens.safety_events import SafetyEventsScreen

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


def events_screen(context: ScreenContext, user: UserInfo) -> SafetyEventsScreen:
    return SafetyEventsScreen(context, user)


def export_screen(context: ScreenContext, user: UserInfo) -> ExportScreen:
    return ExportScreen(context, user, session_id=1)


def logs_screen(context: ScreenContext, user: UserInfo) -> LogsScreen:
    return LogsScreen(context, user)


@pytest.mark.parametrize("size", SIZES)
def test_safety_events_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    write_engineer_records()

    async def filtered(pilot: Pilot[Any]) -> None:
        # One session's rows: the database's own first row carries the day the test database was made.
        field = pilot.app.screen.query_one("#filter-session", Input)
        field.focus()
        field.value = "1"
        await pilot.press("enter")
        page = pilot.app.screen.query_one("#page", Label)
        await wait_until(pilot, lambda: "18 rows" in str(page.render()), "the session's rows")
        pilot.app.screen.query_one("#event-table").focus()
        await tables_measured(pilot)
        await pilot.pause()

    assert snap_compare(EngineerApp(events_screen, clock), terminal_size=size, run_before=filtered)


@pytest.mark.parametrize("size", SIZES)
def test_export_snapshot(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any) -> None:
    write_engineer_records()
    (DATA_DIR / "exports" / "taken").mkdir(parents=True)

    async def refused(pilot: Pilot[Any]) -> None:
        pilot.app.screen.query_one("#field-folder", Input).value = "taken"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "already exists" in status_text(pilot), "the refusal")
        await pilot.pause()

    assert snap_compare(EngineerApp(export_screen, clock), terminal_size=size, run_before=refused)


@pytest.mark.parametrize("size", SIZES)
def test_logs_snapshot(data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any) -> None:
    write_engineer_records()
    log = DATA_DIR / "logs" / "controller.log"
    log.parent.mkdir(exist_ok=True)
    at = "2026-03-14T09:02"
    lines = [
        "--- started by the console (pid 4242) at Sat Mar 14 09:00:00 2026",
        "2026-03-14T09:00:01.120+00:00 INFO control.controller.process: safety board firmware 3.1",
        "controller ready: /var/lib/tosca (scheduling priority: nice -10)",
        f"{at}:10.004+00:00 INFO control.controller.treatment: session 1 opened for P-2026-0001 by tina",
        f"{at}:18.200+00:00 WARNING devices.transport: laser: bad reply 'E-1[x]' (1 in a row)",
        f"{at}:19.015+00:00 ERROR control.supervisor: fault latched (emergency_stop): E-stop pressed",
        f"{at}:40.530+00:00 INFO control.supervisor: fault reset by tina: E-stop pressed (emergency_stop)",
        f"{at}:50.001+00:00 INFO control.controller.treatment: session 1 aborted: subject moved",
    ]
    log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    async def shown(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        await wait_until(pilot, lambda: isinstance(screen, LogsScreen) and screen.loaded, "the log")
        assert isinstance(screen, LogsScreen)
        screen.following = False  # no look at the file between two snapshots
        screen.show_info()
        await pilot.pause()

    assert snap_compare(EngineerApp(logs_screen, clock), terminal_size=size, run_before=shown)
