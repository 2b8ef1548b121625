"""A past session opened from a subject's history: read-only summary, notes, events with their details, the
abort reason and the power trace; the event table's columns fit the screen."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import (
    DATA_DIR,
    TECH_PASSWORD,
    FakeClock,
    enter_text,
    make_settings,
    showing,
    tables_measured,
    wait_until,
)
from test_end_session_screen import user_info, write_fixed_session
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Select, Static

import tui
from control.accounts import AccountService, UserInfo
from storage import create_engine, session_factory
from storage.chain import SqliteExecutor
from storage.signatures import append_signature
from tests.support import CHEAP
from tui.screens._base import ScreenContext
from tui.screens.end_session import SignDialog
from tui.screens.past_session import PastSessionScreen
from tui.screens.subjects import SubjectHistoryScreen
from tui.widgets.plot import PowerPlot
from tui.widgets.session_review import EVENT_COLUMNS

SnapCompare = Callable[..., bool]
TOSCA_CSS = Path(tui.__file__).parent / "tosca.tcss"


class HistoryHost(App[None]):
    """The console's styles around one subject's history."""

    CSS_PATH = str(TOSCA_CSS)

    def __init__(self, clock: FakeClock, user: UserInfo, subject_code: str) -> None:
        super().__init__()
        self._engine = create_engine(DATA_DIR / "tosca.db")
        accounts = AccountService(sessions=session_factory(self._engine), terminal="/dev/tty1", hashing=CHEAP)
        self.context = ScreenContext(settings=make_settings(clock, sim=False), accounts=accounts, link=None)
        self.user = user
        self.subject_code = subject_code

    def on_mount(self) -> None:
        self.push_screen(SubjectHistoryScreen(self.context, self.user, self.subject_code))

    async def on_unmount(self) -> None:
        await self._engine.dispose()


def fixed_history(clock: FakeClock, role: str = "technician") -> HistoryHost:
    """The fixed aborted session of the end-of-session tests, with notes, shown to a user of ``role``."""
    write_fixed_session()
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute(
            "UPDATE sessions SET treatment_notes = 'left forearm', "
            "post_treatment_notes = 'mild redness' || char(10) || 'faded after 5 min' WHERE session_id = 1"
        )
        db.execute("UPDATE tech_users SET role = ? WHERE username = 'tina'", (role,))
    user = asyncio.run(user_info("tina"))
    return HistoryHost(clock, user, "P-2026-0001")


async def past_session_shown(pilot: Pilot[Any]) -> PastSessionScreen:
    app = pilot.app
    await wait_until(
        pilot,
        lambda: isinstance(app.screen, SubjectHistoryScreen) and app.screen.rows is not None,
        "the history",
    )
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, PastSessionScreen), "the past session")
    screen = app.screen
    assert isinstance(screen, PastSessionScreen)
    await wait_until(pilot, lambda: screen.review is not None, "the session's review")
    await tables_measured(pilot)
    return screen


def shown(screen: PastSessionScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


@pytest.mark.parametrize("role", ["technician", "engineer", "admin"])
async def test_enter_on_a_session_opens_it_read_only(data_dir: Path, clock: FakeClock, role: str) -> None:
    app = await asyncio.to_thread(fixed_history, clock, role)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await past_session_shown(pilot)
        assert shown(screen, "#fact-status") == "aborted"
        assert shown(screen, "#fact-reason") == "subject moved"
        assert shown(screen, "#fact-energy") == "27.50 J of 50.00 J planned"
        assert shown(screen, "#fact-steps") == "1 of 2"
        notes = shown(screen, "#past-notes")
        assert "Treatment notes\nleft forearm" in notes
        assert "Post-treatment notes\nmild redness\nfaded after 5 min" in notes

        table = screen.query_one("#events", DataTable)
        rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
        event = EVENT_COLUMNS.index("Event")
        described = [row[event] for row in rows]
        # An operator's action says what it was, not "operator action".
        assert not any("operator action" in text for text in described)
        override = next(i for i, row in enumerate(rows) if row[event].startswith("power override"))
        table.move_cursor(row=override)
        await pilot.pause()
        detail = shown(screen, "#event-detail")
        assert "power override 2.60 W -> 2.50 W in step 2 by tina: subject felt warmth" in detail
        assert "reason: subject felt warmth" in detail and "new value: 2.5" in detail
        abort = next(i for i, row in enumerate(rows) if row[event].startswith("abort"))
        table.move_cursor(row=abort)
        await pilot.pause()
        assert "abort by tina: subject moved" in shown(screen, "#event-detail")

        plot = screen.query_one("#trace-plot", PowerPlot)
        assert plot.series_keys == ["commanded", "measured"]
        assert "191 samples" in str(screen.query_one("#trace-note", Static).render())

        # Read-only: typing changes nothing, and escape goes back to the history.
        await pilot.press("x", "y")
        assert "mild redness" in shown(screen, "#past-notes")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, SubjectHistoryScreen), "back to the history")
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        (post,) = db.execute("SELECT post_treatment_notes FROM sessions WHERE session_id = 1").fetchone()
    assert post == "mild redness\nfaded after 5 min"


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 60)], ids=["80x24", "120x40", "200x60"])
async def test_the_kind_column_shows_whole(data_dir: Path, clock: FakeClock, size: tuple[int, int]) -> None:
    app = await asyncio.to_thread(fixed_history, clock)
    async with app.run_test(size=size) as pilot:
        screen = await past_session_shown(pilot)
        table = screen.query_one("#events", DataTable)
        kind = EVENT_COLUMNS.index("Kind")
        kinds = [str(table.get_row_at(i)[kind]) for i in range(table.row_count)]
        assert "photodiode_warning" in kinds and "session_aborted" in kinds
        assert not any(k.endswith("…") for k in kinds)
        # Every column fits within the table: nothing is cut off at the right edge.
        used = sum(column.get_render_width(table) for column in table.ordered_columns)
        assert used <= table.size.width - table.styles.scrollbar_size_vertical
        assert table.ordered_columns[kind].width >= max(len(k) for k in kinds)


def sign_fixed(*, addendum: str | None = None, at: datetime = datetime(2026, 3, 14, 9, 40)) -> None:
    """Sign the fixed session as tina ("performed by"), as the signature dialog would after her password."""
    connection = sqlite3.connect(DATA_DIR / "tosca.db")
    try:
        with connection:
            (tech_id,) = connection.execute(
                "SELECT tech_id FROM tech_users WHERE username = 'tina'"
            ).fetchone()
            append_signature(
                SqliteExecutor(connection),
                1,
                tech_id=tech_id,
                username="tina",
                printed_name="Tina Tech",
                meaning="performed by",
                now=at,
                addendum=addendum,
            )
    finally:
        connection.close()


def signed_history(clock: FakeClock) -> HistoryHost:
    app = fixed_history(clock)
    sign_fixed()
    sign_fixed(addendum="redness gone next day", at=datetime(2026, 3, 15, 8, 5))
    return app


async def test_signatures_are_shown_and_a_signed_addendum_is_added(data_dir: Path, clock: FakeClock) -> None:
    app = await asyncio.to_thread(fixed_history, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await past_session_shown(pilot)
        assert "Signatures\nNot signed." in shown(screen, "#past-notes")
        await pilot.press("a")
        await wait_until(pilot, lambda: showing(app, SignDialog), "the addendum dialog")
        dialog = app.screen
        assert isinstance(dialog, SignDialog)
        await enter_text(pilot, "checked by phone: [b]fine[/b]")
        # The meaning chosen from its list with the keys: tab to it, enter opens it, down, enter picks.
        await pilot.press("tab", "enter", "down", "enter")
        meaning = dialog.query_one("#sign-meaning", Select)
        await wait_until(pilot, lambda: meaning.value == "reviewed by", "the meaning chosen")
        dialog.field("sign-notes").focus()
        await pilot.press("enter")  # from the notes to the password
        await enter_text(pilot, "wrong")
        await pilot.press("enter")
        await wait_until(pilot, lambda: dialog.field("sign-password").value == "", "the refusal")
        assert app.screen is dialog
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is screen, "back on the session")
        await wait_until(pilot, lambda: "checked by phone" in shown(screen, "#past-notes"), "the addendum")
        notes = shown(screen, "#past-notes")
        assert "addendum reviewed by Tina Tech (tina)," in notes
        assert "checked by phone: [b]fine[/b]" in notes  # text, never markup
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute("SELECT kind, meaning, notes FROM session_records ORDER BY record_id").fetchall()
        refused = db.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'session_addendum' AND outcome = 'failure'"
        ).fetchone()
    assert rows == [("addendum", "reviewed by", "checked by phone: [b]fine[/b]")]
    assert refused == (1,)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_signed_past_session(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        screen = await past_session_shown(pilot)
        await wait_until(pilot, lambda: "Tina Tech" in shown(screen, "#past-notes"), "the signatures")

    assert snap_compare(signed_history(clock), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_past_session(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await past_session_shown(pilot)

    assert snap_compare(fixed_history(clock), terminal_size=size, run_before=ready)


class RecordsHost(App[None]):
    """The console's styles around the home screen, for the records route every role has."""

    CSS_PATH = str(TOSCA_CSS)

    def __init__(self, clock: FakeClock, user: UserInfo) -> None:
        super().__init__()
        self._engine = create_engine(DATA_DIR / "tosca.db")
        accounts = AccountService(sessions=session_factory(self._engine), terminal="/dev/tty1", hashing=CHEAP)
        self.context = ScreenContext(settings=make_settings(clock, sim=False), accounts=accounts, link=None)
        self.user = user

    def on_mount(self) -> None:
        from tui.screens.home import HomeScreen

        self.push_screen(HomeScreen(self.context, self.user))

    async def on_unmount(self) -> None:
        await self._engine.dispose()


@pytest.mark.parametrize("role", ["technician", "engineer", "admin"])
async def test_every_role_reaches_past_sessions_from_home_read_only(
    data_dir: Path, clock: FakeClock, role: str
) -> None:
    from tui.screens.subjects import SubjectsScreen

    history = await asyncio.to_thread(fixed_history, clock, role)
    app = RecordsHost(clock, history.user)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the records")
        records = app.screen
        assert isinstance(records, SubjectsScreen) and records.read_only
        await wait_until(pilot, lambda: records.loaded, "the subjects listed")
        # Nothing that changes a subject is offered in the records view.
        for action in ("new", "edit", "deactivate", "reactivate"):
            assert records.check_action(action, ()) is False
        await pilot.press("n")
        await pilot.pause()
        assert app.screen is records
        await pilot.press("enter")
        screen = await past_session_shown(pilot)
        assert shown(screen, "#fact-reason") == "subject moved"


async def test_the_snapshots_of_the_session_are_listed(data_dir: Path, clock: FakeClock) -> None:
    """Each snapshot file recorded for the session, in order, with its size and resolution; a file no longer
    where its record says is marked missing."""
    app = await asyncio.to_thread(fixed_history, clock)
    folder = (DATA_DIR / "sessions" / "P-2026-0001" / "1").absolute()
    raw = folder / "snapshot_20260314_093005_120.png"
    await asyncio.to_thread(raw.write_bytes, b"\x89PNG\r\n\x1a\n" + bytes(1_400_000))
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        for path, size, notes in (
            (raw, 1_400_008, "snapshot: the camera frame"),
            (
                folder / "snapshot_20260314_093005_120_ring.png",
                1_420_000,
                "snapshot annotated: ring 3.00 mm drawn",
            ),
        ):
            db.execute(
                "INSERT INTO session_recordings (session_id, recording_type, file_path, file_size_bytes, "
                "timestamp, frame_count, resolution, notes) "
                "VALUES (1, 'snapshot', ?, ?, ?, 1, '1280x720', ?)",
                (str(path), size, "2026-03-14 09:30:05.120000", notes),
            )
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await past_session_shown(pilot)
        await pilot.press("ctrl+t", "ctrl+t")
        await wait_until(
            pilot, lambda: "snapshot_" in shown(screen, "#snapshots-list"), "the snapshots listed"
        )
        lines = shown(screen, "#snapshots-list").splitlines()
        assert lines[0].startswith("09:30:05 snapshot_20260314_093005_120.png  1.4 MB  1280x720")
        assert "the camera frame" in lines[0] and "MISSING" not in lines[0]
        assert "snapshot_20260314_093005_120_ring.png" in lines[1] and "ring 3.00 mm drawn" in lines[1]
        assert lines[1].endswith("MISSING")
        assert lines[2] == f"in {folder}"


async def test_a_session_without_snapshots_says_so(data_dir: Path, clock: FakeClock) -> None:
    app = await asyncio.to_thread(fixed_history, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await past_session_shown(pilot)
        await wait_until(
            pilot, lambda: "No snapshots" in shown(screen, "#snapshots-list"), "no snapshots said"
        )
