"""Snapshots of the protocol editor at 80x24 and 120x40: a two-step version being edited with its power
curve, and the same form with an error shown under the step it belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp
from console_fixtures import FakeClock, tables_measured, wait_until
from protocol_library_fixtures import NAME, library_loaded, library_screen, seed_library
from textual.pilot import Pilot
from textual.widgets import DataTable

from tui.screens.protocol_editor import ProtocolEditorScreen

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


async def two_steps(pilot: Pilot[Any], end_power: str) -> ProtocolEditorScreen:
    screen = await library_loaded(pilot)
    await tables_measured(pilot)
    table = screen.query_one("#library-table", DataTable)
    table.focus()
    table.move_cursor(row=[entry.name for entry, _v in screen.rows].index(NAME))
    await pilot.press("e")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProtocolEditorScreen), "the editor")
    editor = pilot.app.screen
    assert isinstance(editor, ProtocolEditorScreen)
    await wait_until(pilot, lambda: editor.limits is not None, "the limits")
    await pilot.press("ctrl+n")
    await wait_until(pilot, lambda: len(editor.rows) == 2, "the second step")
    editor.step_input(1, "ramp_type").value = "linear"
    editor.step_input(1, "power_end_watts").value = end_power
    editor.step_input(1, "duration_seconds").focus()
    await pilot.pause()
    await pilot.pause()
    return editor


@pytest.mark.parametrize("size", SIZES)
def test_protocol_editor_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(seed_library())
    app = AdminScreenApp(library_screen, clock, username="bob")

    async def edited(pilot: Pilot[Any]) -> None:
        editor = await two_steps(pilot, "6")
        await wait_until(pilot, lambda: editor.plan is not None, "the curve")

    assert snap_compare(app, terminal_size=size, run_before=edited)


@pytest.mark.parametrize("size", SIZES)
def test_protocol_editor_error_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(seed_library())
    app = AdminScreenApp(library_screen, clock, username="bob")

    async def refused(pilot: Pilot[Any]) -> None:
        editor = await two_steps(pilot, "9")
        await wait_until(pilot, lambda: len(editor.errors) == 1, "the error")

    assert snap_compare(app, terminal_size=size, run_before=refused)
