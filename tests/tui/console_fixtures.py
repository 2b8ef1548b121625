"""Shared pieces of the console tests: settings with a drivable clock, seeding users, waiting on the app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.coordinate import Coordinate
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Input, Label

from control.accounts import AccountService, Actor
from storage import create_engine, session_factory
from storage.repositories import ConfigRepository
from tests import support
from tests.support import CHEAP, FakeClock
from tui.screens import FormScreen
from tui.settings import ConsoleSettings

#: Relative on purpose: the tests run inside their tmp_path, so the screen shows the same text every time.
DATA_DIR = Path("data")
ADMIN_PASSWORD = "admin pass 1"
TECH_PASSWORD = "tech pass 1"
#: What an admin gives ``tina`` with ``tosca user set-password`` (she must then choose her own at login).
GIVEN_PASSWORD = "given by admin 1"
CLI = Actor.command_line("opsadmin", "/dev/pts/9")


def make_settings(clock: FakeClock, **overrides: Any) -> ConsoleSettings:
    values: dict[str, Any] = {
        "data_dir": DATA_DIR,
        "clock": clock,
        "hashing": CHEAP,
        "cursor_blink": False,
        "terminal": "/dev/tty1",
        "idle_check_seconds": 0.05,
        "controller": "off",
        "over_ssh": False,
        "image_protocol": "halfblock",
    }
    values.update(overrides)
    return ConsoleSettings(**values)


async def seed(auto_lock_minutes: int | None = None) -> None:
    """An admin ``ada`` and a technician ``tina`` (and optionally an automatic-lock setting)."""
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        accounts = AccountService(sessions=sessions, terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user("ada", "Ada Admin", "admin", ADMIN_PASSWORD, CLI)
        await accounts.create_user("tina", "Tina Tech", "technician", TECH_PASSWORD, CLI)
        if auto_lock_minutes is not None:
            async with sessions() as session, session.begin():
                await ConfigRepository(session).set("auto_lock_minutes", auto_lock_minutes, modified_by=None)
    finally:
        await engine.dispose()


def seed_sync(auto_lock_minutes: int | None = None) -> None:
    asyncio.run(seed(auto_lock_minutes))


async def admin_sets_password(username: str, password: str) -> None:
    """What ``tosca user set-password`` does: the user must change ``password`` at their next login."""
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.set_password(username, password, CLI)
    finally:
        await engine.dispose()


def admin_sets_password_sync(username: str, password: str) -> None:
    asyncio.run(admin_sets_password(username, password))


async def wait_until(
    pilot: Pilot[Any], predicate: Callable[[], bool], what: str, limit: float = 10.0
) -> None:
    """Let the app run (its pilot pausing between two looks) until ``predicate()`` holds; fail after
    ``limit`` seconds, saying what the console showed."""
    await support.wait_until(
        predicate, limit, what, poll=lambda: pilot.pause(0.01), describe=lambda: app_state(pilot.app)
    )


def app_state(app: Any) -> str:
    """What the console showed when a wait gave up: the controller's state and fault, the screen's text."""
    snapshot = getattr(app, "snapshot", None)
    state = "no snapshot" if snapshot is None else f"state {snapshot.state}, fault {snapshot.fault}"
    try:
        text = " | ".join(
            " ".join(str(widget.render()).split())
            for widget in app.screen.query("Static")
            if widget.region.area and str(widget.render()).strip()
        )
        panels = [" ".join(panel.text.plain.split()) for panel in app.screen.query("LinePanel")]
        text = " | ".join([text, *panels])
    except Exception as exc:  # a diagnostic only: the screen may be half built
        text = f"(screen unreadable: {exc})"
    return f"{state}; screen {type(app.screen).__name__}: {text[:1500]}"


async def tables_measured(pilot: Pilot[Any]) -> None:
    """Wait until every table on the screen has measured its columns to fit their cells.

    A table measures new rows when the app is next idle; until then its columns are only as wide as their
    headings, and a snapshot taken then would show the cells cut short."""

    def measured() -> bool:
        for table in pilot.app.screen.query(DataTable):
            for index, column in enumerate(table.ordered_columns):
                widest = max((len(str(cell)) for cell in table.get_column_at(index)), default=0)
                if column.content_width < widest:
                    return False
        return True

    await wait_until(pilot, measured, "the tables' columns to fit their cells")

    def drawn() -> bool:
        # And drawn so: each table's first row, as the table draws it now, holds its first cell whole (a line
        # drawn before the measuring keeps it cut to the width of its heading).
        for table in pilot.app.screen.query(DataTable):
            if table.row_count and table.columns and table.region.area:  # not in a hidden tab
                first = str(table.get_cell_at(Coordinate(0, 0)))
                line = table.render_line(1 if table.show_header else 0).text
                if first and first not in line:
                    return False
        return True

    await wait_until(pilot, drawn, "the tables drawn with their measured columns")
    await pilot.pause()


def status_text(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#status", Label).render())


async def enter_text(pilot: Pilot[Any], text: str) -> None:
    """Put ``text`` in the focused field (as a paste would: quicker than one key press per character)."""
    await wait_until(pilot, lambda: isinstance(pilot.app.focused, Input), "a focused text field")
    focused = pilot.app.focused
    assert isinstance(focused, Input)
    focused.value = text
    await pilot.pause()


async def wait_for_check(pilot: Pilot[Any]) -> None:
    """Wait until the form on screen has finished checking what was submitted."""

    def settled() -> bool:
        screen = pilot.app.screen
        return isinstance(screen, FormScreen) and not screen.busy

    await wait_until(pilot, settled, "the form's check")


def showing(app: App[Any], screen_type: type[Screen[Any]]) -> bool:
    """True once a screen of ``screen_type`` is on top and mounted (its widgets exist)."""
    return isinstance(app.screen, screen_type) and app.screen.is_mounted


async def quit_by_palette(pilot: Pilot[Any]) -> None:
    """Ctrl+P, "quit", Enter: each step once the palette has shown what the next one needs."""
    from textual.command import CommandList, CommandPalette

    app = pilot.app
    await pilot.press("ctrl+p")
    await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), "the command palette")
    await enter_text(pilot, "quit")
    await wait_until(
        pilot,
        lambda: any(
            "quit" in str(option.prompt).lower() for option in app.screen.query_one(CommandList).options
        ),
        "the palette offering to quit",
    )
    await pilot.press("enter")
