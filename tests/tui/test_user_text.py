"""Text from people and devices is drawn as text: never parsed as markup, control characters shown escaped.

Markup (``[/bold]`` with nothing open, ``[red]``), ANSI colour sequences, an OSC window title and a C1 CSI
are put in every place a person's or a device's words reach a screen: a session's abort reason, notes,
protocol name and event details, a safety row's description, a user's full name, the pre-treatment checks'
values, the dashboard's fault and interlock texts, a dialog's question and error line, a toast. Each screen
must open without an error and show the words literally, every control character as its escape, and no
control character may reach the terminal.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import unicodedata
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, FakeClock, make_settings, seed_sync, showing, wait_until
from test_end_session_screen import START, user_info, write_fixed_session
from textual.app import App
from textual.screen import Screen
from textual.widgets import DataTable, Input
from textual.widgets._toast import Toast

import tui
from control.accounts import AccountService, UserInfo
from control.messages import (
    FaultView,
    InterlockView,
    LaserView,
    PrecheckView,
    RingView,
    SessionView,
    Snapshot,
)
from storage import create_engine, session_factory
from tests.support import CHEAP
from tui.app import make_app
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext
from tui.screens.change_password import ChangePasswordScreen
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.dialogs import ConfirmDialog, ReasonDialog
from tui.screens.end_session import EndOfSessionScreen
from tui.screens.home import HomeScreen
from tui.screens.lock import LockScreen
from tui.screens.past_session import PastSessionScreen
from tui.screens.subjects import SubjectFormScreen, SubjectHistoryScreen, SubjectsScreen

TOSCA_CSS = Path(tui.__file__).parent / "tosca.tcss"

#: The hostile strings: Rich markup, an unbalanced tag, ANSI SGR, an OSC title, a C1 CSI.
REASON = "reason [/bold] unbalanced ["
NOTES = "[/bold] [red]x\n\x1b[31mred\x1b[0m \x1b]0;title\x07 \x9b2J"
PROTOCOL = "[/bold] \x9b2J proto"
DEVICE = "\x1b]0;pwned\x07 [/x] dev"
OVERRIDE = "[red]x \x1b[0m warm"
FULL_NAME = "Tina [red]x\x1b[31m"


def escaped(text: str) -> str:
    return escape_controls(text)


def screen_text(app: App[Any]) -> str:
    """What the terminal would show of the screen on top, line by line (with its controls, if any)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def assert_shown(app: App[Any], *expected: str) -> None:
    text = screen_text(app)
    controls = {ch for line in text.split("\n") for ch in line if unicodedata.category(ch) == "Cc"}
    assert not controls, f"control characters reached the terminal: {controls}"
    for words in expected:
        assert words in text, f"{words!r} not shown literally in:\n{text}"


def write_hostile_session() -> None:
    """The fixed session of the end-of-session tests, then a second session of the same subject whose
    words are all hostile (no telemetry file: its trace says so)."""
    write_fixed_session()

    def at(seconds: float) -> str:
        return (START + timedelta(hours=1, seconds=seconds)).isoformat(" ", "microseconds")

    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        (tech_id,) = db.execute("SELECT tech_id FROM tech_users WHERE username = 'tina'").fetchone()
        db.execute("UPDATE tech_users SET full_name = ? WHERE tech_id = ?", (FULL_NAME, tech_id))
        db.execute("UPDATE subjects SET notes = ? WHERE subject_code = 'P-2026-0001'", (NOTES,))
        db.execute(
            "INSERT INTO sessions (session_id, subject_id, tech_id, start_time, end_time, duration_seconds, "
            "status, abort_reason, protocol_name, treatment_notes, post_treatment_notes) "
            "VALUES (2, 1, ?, ?, ?, 9, 'aborted', ?, ?, ?, ?)",
            (tech_id, at(0), at(9), REASON, PROTOCOL, NOTES, NOTES),
        )
        override = {
            "action": "protocol_power_override",
            "old_value": 2.0,
            "new_value": 1.5,
            "reason": OVERRIDE,
            "by": "tina",
            "protocol_step": 1,
        }
        abort = {"action": "abort", "reason": REASON, "by": "tina"}
        db.executemany(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, event_details) "
            "VALUES (2, ?, ?, 'user_action', ?)",
            [(at(4), 4000, json.dumps(override)), (at(8), 8000, json.dumps(abort))],
        )
        db.execute(
            "INSERT INTO safety_log (timestamp, session_id, tech_id, event_type, severity, description, "
            "details) VALUES (?, 2, NULL, 'device_error', 'warning', ?, ?)",
            (at(6), DEVICE, json.dumps({"reply": DEVICE})),
        )


class Host(App[None]):
    """The console's styles around one screen made by ``make``."""

    CSS_PATH = str(TOSCA_CSS)

    def __init__(
        self,
        clock: FakeClock,
        user: UserInfo,
        make: Callable[[ScreenContext, UserInfo], Screen[Any]],
        link: Any = None,
    ) -> None:
        super().__init__()
        self._engine = create_engine(DATA_DIR / "tosca.db")
        accounts = AccountService(sessions=session_factory(self._engine), terminal="/dev/tty1", hashing=CHEAP)
        self.context = ScreenContext(settings=make_settings(clock), accounts=accounts, link=link)
        self.user = user
        self.make = make

    def on_mount(self) -> None:
        self.push_screen(self.make(self.context, self.user))

    async def on_unmount(self) -> None:
        await self._engine.dispose()


def hostile_user() -> UserInfo:
    write_hostile_session()
    return asyncio.run(user_info("tina"))


async def test_end_of_session_shows_hostile_words_as_text(data_dir: Path, clock: FakeClock) -> None:
    user = await asyncio.to_thread(hostile_user)
    app = Host(clock, user, lambda c, u: EndOfSessionScreen(c, u, 2))
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: showing(app, EndOfSessionScreen), "the end-of-session screen")
        screen = app.screen
        assert isinstance(screen, EndOfSessionScreen)
        await wait_until(pilot, lambda: screen.review is not None, "the review")
        await pilot.pause()
        assert_shown(app, REASON, escaped(PROTOCOL), "[/bold] [red]x", escaped("\x1b[31mred\x1b[0m"))
        table = screen.query_one("#events", DataTable)
        rows = [str(table.get_row_at(i)[4]) for i in range(table.row_count)]
        table.move_cursor(row=next(i for i, r in enumerate(rows) if r.startswith("power override")))
        await pilot.pause()
        assert_shown(app, escaped(OVERRIDE))
        table.move_cursor(row=next(i for i, r in enumerate(rows) if "dev" in r))
        await pilot.pause()
        assert_shown(app, escaped(DEVICE))
        # The status line, where a failure would be said, draws hostile words as text too.
        screen.show_status(f"not saved: {REASON} {DEVICE}")
        await pilot.pause()
        assert_shown(app, f"not saved: {REASON} {escaped(DEVICE)}")


async def test_past_session_and_history_show_hostile_words_as_text(data_dir: Path, clock: FakeClock) -> None:
    user = await asyncio.to_thread(hostile_user)
    app = Host(clock, user, lambda c, u: SubjectHistoryScreen(c, u, "P-2026-0001"))
    async with app.run_test(size=(200, 60)) as pilot:
        screen = app.screen
        await wait_until(
            pilot, lambda: isinstance(app.screen, SubjectHistoryScreen) and app.screen.rows, "rows"
        )
        await pilot.pause()
        assert_shown(app, escaped(PROTOCOL), escaped(FULL_NAME))
        await pilot.press("enter")  # the newest: the hostile session
        await wait_until(pilot, lambda: showing(app, PastSessionScreen), "the past session")
        screen = app.screen
        assert isinstance(screen, PastSessionScreen)
        await wait_until(pilot, lambda: screen.review is not None, "the review")
        await pilot.pause()
        assert screen.session_id == 2
        assert_shown(app, REASON, "[/bold] [red]x", escaped("\x1b[31mred\x1b[0m \x1b]0;title\x07 \x9b2J"))


async def test_subject_notes_are_edited_as_text(data_dir: Path, clock: FakeClock) -> None:
    user = await asyncio.to_thread(hostile_user)
    app = Host(clock, user, SubjectsScreen)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SubjectsScreen) and app.screen.loaded, "list")
        await pilot.press("e")
        await wait_until(pilot, lambda: showing(app, SubjectFormScreen), "the subject form")
        await pilot.pause()
        assert_shown(app, escaped(NOTES)[:40], "shown escaped")
        assert app.screen.query_one("#notes", Input).value == escaped(NOTES)


@pytest.mark.parametrize("which", ["home", "lock", "change-password"])
async def test_full_names_are_drawn_as_text(data_dir: Path, clock: FakeClock, which: str) -> None:
    user = await asyncio.to_thread(hostile_user)
    makers: dict[str, Callable[[ScreenContext, UserInfo], Screen[Any]]] = {
        "home": HomeScreen,
        "lock": LockScreen,
        "change-password": lambda c, u: ChangePasswordScreen(c, u, "old password"),
    }
    app = Host(clock, user, makers[which])
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        assert_shown(app, escaped(FULL_NAME))


async def test_checks_values_are_drawn_as_text(data_dir: Path, clock: FakeClock) -> None:
    user = await asyncio.to_thread(hostile_user)
    app = Host(clock, user, ChecksScreen)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: showing(app, ChecksScreen), "the checks")
        screen = app.screen
        assert isinstance(screen, ChecksScreen)
        screen.checks = [
            PrecheckView(name="laser [b]", ok=True, value=DEVICE, detail=""),
            PrecheckView(name="tec", ok=False, value=PROTOCOL, detail=OVERRIDE),
        ]
        screen._show_checks()
        await pilot.pause()
        assert_shown(app, "laser [b]", escaped(DEVICE), escaped(f"{PROTOCOL} ({OVERRIDE})"))


class FakeLink:
    """What the dashboard reads of the link: the newest snapshot and preview, and the link's problem."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.preview = None
        self.problem = ""


def hostile_snapshot() -> Snapshot:
    return Snapshot(
        seq=1,
        time_s=10.0,
        state="fault",
        emitting=False,
        sim=False,
        session=SessionView(
            session_id=2,
            subject_code="P-2026-0001",
            protocol_name=PROTOCOL,
            technician="tina",
            status="paused",
            clock_s=3.0,
            treating_s=1.0,
            delivered_energy_j=0.5,
        ),
        laser=LaserView(commanded_w=0.0, output_on=False),
        ring=RingView(),
        interlocks=[InterlockView(name="tec", ok=False, value="x", detail=DEVICE)],
        fault=FaultView(
            what=DEVICE, action=OVERRIDE, how_to_reset=REASON, cause_cleared=False, at="2026-03-14T09:00:00"
        ),
    )


async def test_dashboard_fault_and_device_texts_are_drawn_as_text(data_dir: Path, clock: FakeClock) -> None:
    user = await asyncio.to_thread(hostile_user)
    app = Host(clock, user, DashboardScreen, link=FakeLink(hostile_snapshot()))
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: showing(app, DashboardScreen), "the dashboard")
        await pilot.pause()
        assert_shown(app, escaped(DEVICE), escaped(OVERRIDE), REASON, escaped(PROTOCOL))


async def test_dialogs_draw_hostile_words_as_text(data_dir: Path, clock: FakeClock) -> None:
    user = await asyncio.to_thread(hostile_user)
    app = Host(clock, user, HomeScreen)
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        app.push_screen(ConfirmDialog(f"Deactivate subject {PROTOCOL}?"))
        await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the question")
        assert_shown(app, escaped(f"Deactivate subject {PROTOCOL}?"))
        app.pop_screen()
        dialog = ReasonDialog("Abort session", "Why?", cursor_blink=False)
        app.push_screen(dialog)
        await wait_until(pilot, lambda: showing(app, ReasonDialog), "the reason dialog")
        dialog.show_error(f"refused: {REASON} {DEVICE}")
        await pilot.pause()
        assert_shown(app, f"refused: {REASON} {escaped(DEVICE)}".removesuffix(" dev"))


async def test_toasts_are_drawn_as_text(data_dir: Path, clock: FakeClock) -> None:
    await asyncio.to_thread(seed_sync)
    app = make_app(make_settings(clock))
    async with app.run_test(size=(200, 60), notifications=True) as pilot:
        await pilot.pause()
        app.notify(f"controller: {REASON} {DEVICE}", timeout=30)
        await wait_until(pilot, lambda: bool(app.screen.query(Toast)), "the toast")
        await pilot.pause()
        (toast,) = app.screen.query(Toast)
        shown = str(toast.render())
        assert f"controller: {REASON} {escaped(DEVICE)}" in shown.replace("\n", " ")
        assert not any(unicodedata.category(ch) == "Cc" for ch in shown.replace("\n", ""))


def test_plain_escapes_every_control_and_reads_no_markup() -> None:
    for hostile in (REASON, NOTES, PROTOCOL, DEVICE, OVERRIDE, "\x00\x7f\x85\u202e\u2028"):
        text = plain(hostile)
        assert text.spans == []
        assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text.plain)
        assert escape_controls(text.plain) == text.plain, "escaping twice changes nothing"
    assert plain("\x1b[31mred").plain == "\\x1b[31mred"
    assert plain("a\nb", keep_newlines=True).plain == "a\nb" and plain("a\nb").plain == "a\\nb"
    assert plain("\x9b2J\u202e").plain == "\\x9b2J\\u202e"
