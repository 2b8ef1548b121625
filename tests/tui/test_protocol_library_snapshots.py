"""Snapshots of the admin's protocol library (every version with its status, the author's approval refused)
and of its import dialog with a refused file, at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp
from console_fixtures import FakeClock, enter_text, tables_measured, wait_until
from protocol_library_fixtures import (
    NAME,
    library_loaded,
    library_screen,
    protocol_text,
    seed_library,
    write_file,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Label

from tui.screens.protocol_library import ImportDialog

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


@pytest.mark.parametrize("size", SIZES)
def test_protocol_library_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(seed_library())
    app = AdminScreenApp(library_screen, clock)

    async def refused(pilot: Pilot[Any]) -> None:
        screen = await library_loaded(pilot)
        await tables_measured(pilot)
        table = screen.query_one("#library-table", DataTable)
        table.focus()
        table.move_cursor(row=[entry.name for entry, _v in screen.rows].index(NAME))
        await pilot.press("a")
        await wait_until(
            pilot, lambda: "author" in str(screen.query_one("#status", Label).render()), "the refusal"
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=refused)


@pytest.mark.parametrize("size", SIZES)
def test_protocol_import_refusal_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any, tmp_path: Path
) -> None:
    asyncio.run(seed_library(imported=False))
    write_file(Path.cwd(), "bad.json", protocol_text(12.0, colour="red"))
    app = AdminScreenApp(library_screen, clock)

    async def refused(pilot: Pilot[Any]) -> None:
        await library_loaded(pilot)
        await tables_measured(pilot)
        await pilot.press("i")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ImportDialog), "the import dialog")
        dialog = pilot.app.screen
        assert isinstance(dialog, ImportDialog)
        await enter_text(pilot, "bad.json")
        await pilot.press("enter")
        await pilot.pause()
        dialog.field("name").value = "Too hot"
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: "unknown key" in str(dialog.query_one("#dialog-error", Label).render()),
            "the refusal",
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=refused)
