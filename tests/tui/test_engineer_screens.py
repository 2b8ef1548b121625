"""The engineer's screens on a real migrated database and real files, without a controller: the safety log and
event browser (filters, keyset paging, opening a past session read-only, each refusal), the research export
(a session, identified, each refusal, a disk error) and the controller's log (the last lines, following new
ones, a log moved aside, the level filter, pausing). Every screen refuses a technician."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, FakeClock, showing, status_text, wait_until
from engineer_fixtures import FAULT_AT, EngineerApp, audit_rows, stamp, write_engineer_records
from textual.pilot import Pilot
from textual.widgets import Checkbox, DataTable, Input, Label, RichLog, Static

from control.accounts import UserInfo
from tui.screens._base import ScreenContext
from tui.screens.export import ExportScreen
from tui.screens.logs import LogsScreen
from tui.screens.past_session import PastSessionScreen
from tui.screens.safety_events import EVENT_COLUMNS, SafetyEventsScreen

SIZE = (120, 40)
TECHNICIAN_REFUSED = "only an engineer or an admin may use this screen (tina is technician)"


@pytest.fixture
def records(data_dir: Path) -> Path:
    write_engineer_records()
    return data_dir


def events_screen(context: ScreenContext, user: UserInfo) -> SafetyEventsScreen:
    return SafetyEventsScreen(context, user)


def export_screen(context: ScreenContext, user: UserInfo) -> ExportScreen:
    return ExportScreen(context, user)


def logs_screen(context: ScreenContext, user: UserInfo) -> LogsScreen:
    return LogsScreen(context, user, poll_s=0.05)


def column(pilot: Pilot[Any], name: str) -> list[str]:
    table = pilot.app.screen.query_one("#event-table", DataTable)
    index = EVENT_COLUMNS.index(name)
    return [str(table.get_row_at(row)[index]) for row in range(table.row_count)]


def page_text(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#page", Label).render())


async def page_says(pilot: Pilot[Any], expected: str) -> None:
    await wait_until(pilot, lambda: expected in page_text(pilot), f"the page line to say {expected!r}")


async def type_into(pilot: Pilot[Any], selector: str, value: str, *, submit: bool = True) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    field.value = value
    await pilot.pause()
    if submit:
        await pilot.press("enter")


# ------------------------------------------------------------------------------------ the event browser


async def test_the_browser_merges_both_logs_newest_first_and_filters_them(
    records: Path, clock: FakeClock
) -> None:
    async with EngineerApp(events_screen, clock).run_test(size=SIZE) as pilot:
        # Newest first: the database's creation (today), session 2, the fault (no session), session 1.
        await page_says(pilot, "page 1, 22 rows, newest first; last page; all rows")
        sessions = column(pilot, "Session")
        assert sessions[:4] == ["—", "2", "—", "—"] and set(sessions[4:]) == {"1"}
        assert column(pilot, "Type")[:4] == [
            "database_initialized",
            "laser_on",
            "fault_reset",
            "emergency_stop",
        ]
        # A description that looks like markup is drawn as it was recorded.
        assert column(pilot, "Description")[3] == "E-stop pressed [red]x[/red] (laser output off (verified))"

        await type_into(pilot, "#filter-session", "1")
        await page_says(pilot, "18 rows, newest first; last page; session 1")
        await type_into(pilot, "#filter-severity", "warning+")
        await page_says(pilot, "1 rows, newest first; last page; session 1, severity warning+")
        assert column(pilot, "Type") == ["photodiode_warning"]
        await type_into(pilot, "#filter-session", "")
        await page_says(pilot, "2 rows, newest first; last page; severity warning+")
        assert column(pilot, "Severity") == ["critical", "warning"]
        await type_into(pilot, "#filter-severity", "")
        await type_into(pilot, "#filter-source", "treatment")
        await type_into(pilot, "#filter-event_type", "laser_on")
        await page_says(pilot, "3 rows")
        screen = pilot.app.screen
        assert isinstance(screen, SafetyEventsScreen) and screen.page is not None
        assert {row.source for row in screen.page.rows} == {"treatment"}
        await type_into(pilot, "#filter-event_type", "")
        await type_into(pilot, "#filter-source", "")
        await type_into(pilot, "#filter-since", "2026-03-15")
        await type_into(pilot, "#filter-until", "2026-03-16")
        await page_says(pilot, "2 rows, newest first; last page; from 2026-03-15 00:00, to 2026-03-16 00:00")
        await pilot.press("f3")
        await page_says(pilot, "22 rows")
        assert all(not pilot.app.screen.query_one(f"#filter-{n}", Input).value for n in ("since", "until"))


FILTER_REFUSALS = [
    ("since", "yesterday", "filter refused: from: 'yesterday' is not a date"),
    ("severity", "loud", "filter refused: severity: must be one of info, warning, critical, emergency"),
    ("source", "camera", "filter refused: source: must be safety or treatment"),
    ("session", "abc", "filter refused: session: 'abc' is not a session id"),
    ("session", "99", "refused: session: no session with id 99"),
]


async def test_a_bad_filter_or_range_is_refused_and_the_rows_stay(records: Path, clock: FakeClock) -> None:
    async with EngineerApp(events_screen, clock).run_test(size=SIZE) as pilot:
        await page_says(pilot, "22 rows")
        before = column(pilot, "Type")
        for field, value, reason in FILTER_REFUSALS:
            await type_into(pilot, f"#filter-{field}", value)
            await wait_until(pilot, lambda r=reason: r in status_text(pilot), f"the refusal {reason!r}")
            assert column(pilot, "Type") == before and "22 rows" in page_text(pilot)
            await type_into(pilot, f"#filter-{field}", "", submit=False)
        await type_into(pilot, "#filter-since", "2026-03-17", submit=False)
        await type_into(pilot, "#filter-until", "2026-03-14")
        expected = "filter refused: the start of the time range must be before its end"
        await wait_until(pilot, lambda: status_text(pilot) == expected, "the refusal of the range")
        assert column(pilot, "Type") == before and "22 rows" in page_text(pilot)


def add_system_rows(count: int) -> None:
    """``count`` safety rows of no session, a second apart from a day after the fixed session, the odd ones
    at the same time as a treatment event of session 2 (ties between the two tables)."""
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.executemany(
            "INSERT INTO safety_log (timestamp, event_type, severity, description) "
            "VALUES (?, 'state_change', 'info', ?)",
            [(stamp(FAULT_AT + timedelta(hours=1, seconds=n // 2)), f"row {n}") for n in range(count)],
        )
        db.executemany(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type) "
            "VALUES (2, ?, 0, 'power_set')",
            [(stamp(FAULT_AT + timedelta(hours=1, seconds=n)),) for n in range(count // 2)],
        )


async def test_pages_follow_each_other_without_gaps_or_repeats(records: Path, clock: FakeClock) -> None:
    await asyncio.to_thread(add_system_rows, 120)  # 22 + 120 + 60 = 202 rows
    async with EngineerApp(events_screen, clock).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, SafetyEventsScreen)
        await page_says(pilot, "page 1, 50 rows, newest first; more follow (PageDown)")
        seen: list[str] = []
        for number in range(1, 5):
            await page_says(pilot, f"page {number}, 50 rows")
            assert screen.page is not None
            seen.extend(row.key for row in screen.page.rows)
            await pilot.press("pagedown")
        await page_says(pilot, "page 5, 2 rows, newest first; last page")
        assert screen.page is not None
        seen.extend(row.key for row in screen.page.rows)
        assert len(seen) == len(set(seen)) == 202
        times = [row.timestamp for row in screen.page.rows]
        assert times == sorted(times, reverse=True)
        await pilot.press("pageup")
        await page_says(pilot, "page 4, 50 rows")
        assert [row.key for row in screen.page.rows] == seen[150:200]


async def test_enter_opens_the_rows_session_read_only_and_f6_exports_it(
    records: Path, clock: FakeClock
) -> None:
    async with EngineerApp(events_screen, clock).run_test(size=SIZE) as pilot:
        app = pilot.app
        await page_says(pilot, "22 rows")
        table = app.screen.query_one("#event-table", DataTable)
        table.focus()
        table.move_cursor(row=2)  # the E-stop fault's reset: no session
        await pilot.pause()
        assert "fault reset by tina" in str(app.screen.query_one("#event-detail", Static).render())
        await pilot.press("enter")
        await wait_until(pilot, lambda: status_text(pilot) == "this row belongs to no session", "the refusal")
        table.move_cursor(row=6)
        await pilot.pause()
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, PastSessionScreen), "the past session")
        past = app.screen
        assert isinstance(past, PastSessionScreen) and past.session_id == 1
        await wait_until(pilot, lambda: past.review is not None, "the session's review")
        assert str(past.query_one("#fact-reason", Static).render()) == "subject moved"
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, SafetyEventsScreen), "back to the browser")
        await pilot.press("f6")
        await wait_until(pilot, lambda: showing(app, ExportScreen), "the export")
        assert app.screen.query_one("#field-session", Input).value == "1"


async def test_every_engineer_screen_refuses_a_technician(records: Path, clock: FakeClock) -> None:
    for maker in (events_screen, export_screen, logs_screen):
        async with EngineerApp(maker, clock, username="tina").run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: status_text(pilot) == TECHNICIAN_REFUSED, "the refusal")
            await pilot.press("f5", "ctrl+s", "pagedown", "f", "v")
            await pilot.pause()
            if maker is events_screen:
                assert pilot.app.screen.query_one(DataTable).row_count == 0
    assert not (DATA_DIR / "exports").exists()


# ------------------------------------------------------------------------------------ the export


async def fill(pilot: Pilot[Any], **values: str) -> None:
    for name, value in values.items():
        pilot.app.screen.query_one(f"#field-{name}", Input).value = value
    await pilot.pause()


async def export_says(pilot: Pilot[Any], expected: str) -> None:
    await wait_until(pilot, lambda: expected in status_text(pilot), f"the status to say {expected!r}")


async def test_the_export_screen_writes_a_session_and_an_identified_one(
    records: Path, clock: FakeClock
) -> None:
    async with EngineerApp(export_screen, clock).run_test(size=SIZE) as pilot:
        await fill(pilot, session="1")
        await pilot.press("ctrl+s")
        await export_says(pilot, "exported session 1 (de-identified, 13 files) to data/exports/session_1_")
        screen = pilot.app.screen
        assert isinstance(screen, ExportScreen) and screen.result is not None
        folder = screen.result.folder
        assert json.loads((folder / "summary.json").read_text())["subject_code"] == "P-2026-0001"
        assert "subject_date_of_birth" not in json.loads((folder / "summary.json").read_text())

        await fill(pilot, session="", since="2026-03-14", until="2026-03-17", format="json", folder="study_a")
        screen.query_one("#identified", Checkbox).value = True
        await pilot.pause()
        await pilot.press("ctrl+s")
        await export_says(pilot, "exported 2 sessions (identified, ")
        sessions = json.loads((DATA_DIR / "exports" / "study_a" / "sessions.json").read_text())
        assert sessions[0]["subject_date_of_birth"] == "1961-04-12"
    rows = audit_rows("research_export")
    assert [(outcome, user, json.loads(d)["identified"]) for outcome, user, d in rows] == [
        ("success", "eric", False),
        ("success", "eric", True),
    ]


EXPORT_REFUSALS: list[tuple[dict[str, str], str]] = [
    ({}, "refused: give a session id, or a time range (from and to)"),
    ({"session": "1", "since": "2026-03-14"}, "refused: give a session or a time range, not both"),
    ({"since": "2026-03-14"}, "refused: a time range needs both its start (from) and its end (to)"),
    (
        {"since": "2026-03-17", "until": "2026-03-14"},
        "refused: the start of the time range must be before its end",
    ),
    ({"since": "soon", "until": "2026-03-14"}, "refused: from: 'soon' is not a date"),
    ({"session": "9"}, "refused: no session with id 9"),
    ({"session": "1", "format": "xml"}, "refused: format: 'xml' is not csv or json"),
    ({"session": "1", "folder": "../elsewhere"}, "refused: folder: a plain name under exports/"),
    ({"session": "1", "folder": "taken"}, "already exists: an export never overwrites"),
    ({"since": "2027-01-01", "until": "2027-02-01"}, "refused: no ended session started from 2027-01-01"),
]


async def test_the_export_screen_refuses_and_writes_nothing(records: Path, clock: FakeClock) -> None:
    (DATA_DIR / "exports" / "taken").mkdir(parents=True)
    async with EngineerApp(export_screen, clock).run_test(size=SIZE) as pilot:
        for values, reason in EXPORT_REFUSALS:
            await fill(
                pilot,
                **{name: values.get(name, "") for name in ("session", "since", "until", "format", "folder")},
            )
            await pilot.press("ctrl+s")
            await export_says(pilot, reason)
            assert pilot.app.screen.query_one("#status", Label).has_class("error")
    assert [p.name for p in (DATA_DIR / "exports").iterdir()] == ["taken"]
    assert not list((DATA_DIR / "exports" / "taken").iterdir())
    assert audit_rows("research_export") == []


async def test_a_disk_error_is_refused_on_the_screen(records: Path, clock: FakeClock) -> None:
    (DATA_DIR / "exports").write_text("a file where the folder should be")
    async with EngineerApp(export_screen, clock).run_test(size=SIZE) as pilot:
        await fill(pilot, session="1")
        await pilot.press("ctrl+s")
        await export_says(pilot, "refused: cannot create data/exports")
        await export_says(pilot, "nothing was exported")
    assert audit_rows("research_export") == []


# ------------------------------------------------------------------------------------ the log

LOG = DATA_DIR / "logs" / "controller.log"
FAULT_LINE = "control.supervisor: fault latched (emergency_stop): [b]E-stop"


def log_lines(pilot: Pilot[Any]) -> list[str]:
    view = pilot.app.screen.query_one("#log-view", RichLog)
    return [strip.text.rstrip() for strip in view.lines]


def append(*lines: str) -> None:
    with LOG.open("a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


async def shows(pilot: Pilot[Any], text: str) -> None:
    await wait_until(
        pilot, lambda: any(text in line for line in log_lines(pilot)), f"the log to show {text!r}"
    )


async def test_the_log_shows_the_last_lines_then_follows(records: Path, clock: FakeClock) -> None:
    LOG.parent.mkdir(exist_ok=True)
    append(*(f"2026-03-14T09:00:{n % 60:02d}.000+00:00 INFO devices.transport: line {n}" for n in range(700)))
    append(f"2026-03-14T09:01:00.250+00:00 ERROR {FAULT_LINE}\x1b[2J")
    async with EngineerApp(logs_screen, clock).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, LogsScreen)
        await wait_until(pilot, lambda: screen.loaded, "the first lines")
        lines = log_lines(pilot)
        assert len(screen.lines) == 500 and "line 201" in lines[0] and "line 200" not in "".join(lines)
        assert lines[-1] == f"2026-03-14 09:01:00.250 ERROR    {FAULT_LINE}\\x1b[2J"
        append("2026-03-14T09:02:00.000+00:00 INFO control.controller.treatment: session 3 opened for P-1")
        await shows(pilot, "session 3 opened for P-1")
        # Moved aside (as the rotating handler does): the new file is followed from its start.
        LOG.rename(LOG.with_name("controller.log.1"))
        append("2026-03-14T09:03:00.000+00:00 WARNING devices.transport: laser link lost")
        await shows(pilot, "laser link lost")
        # Paused: nothing new is read or drawn until following again.
        await pilot.press("f")
        await wait_until(pilot, lambda: not screen._reading, "no read under way")
        before = len(screen.lines)
        append("2026-03-14T09:04:00.000+00:00 INFO control.supervisor: fault reset by tina")
        screen.poll()  # the timer's look at the file: paused, it reads nothing
        await pilot.pause()
        assert not screen._reading and len(screen.lines) == before
        assert not any("fault reset by tina" in line for line in log_lines(pilot))
        assert "paused" in str(screen.query_one("#log-info", Label).render())
        await pilot.press("f")
        await shows(pilot, "fault reset by tina")
        # The level filter: warnings and above only.
        await pilot.press("v", "v")
        await wait_until(pilot, lambda: screen.level == "WARNING", "the level filter")
        assert [line.split()[2] for line in log_lines(pilot)] == ["ERROR", "WARNING"]


async def test_a_missing_log_is_said_and_shows_once_written(records: Path, clock: FakeClock) -> None:
    async with EngineerApp(logs_screen, clock).run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "no controller log yet" in status_text(pilot), "the notice")
        LOG.parent.mkdir(exist_ok=True)
        append("2026-03-14T09:00:00.000+00:00 INFO control.controller.process: controller ready")
        await shows(pilot, "controller ready")
        assert status_text(pilot) == ""


# ------------------------------------------------------------------------------------ the backups


async def test_an_engineer_backs_up_and_verifies_but_never_restores(records: Path, clock: FakeClock) -> None:
    from tui.screens.backups import BackupsScreen

    def backups(context: ScreenContext, user: UserInfo) -> BackupsScreen:
        return BackupsScreen(context, user, space=lambda _folder: (12_300_000_000, 64_000_000_000))

    async with EngineerApp(backups, clock).run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, BackupsScreen)
        await wait_until(pilot, lambda: screen.overview is not None, "the backups listed")
        await pilot.press("b")
        await wait_until(pilot, lambda: status_text(pilot).startswith("backed up to tosca_"), "the backup")
        await pilot.press("v")
        await wait_until(pilot, lambda: " verified: schema " in status_text(pilot), "the verification")
        assert screen.check_action("restore", ()) is False
        await pilot.press("r")
        await pilot.pause()
        assert pilot.app.screen is screen, "no restore question for an engineer"
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        done = db.execute("SELECT action, username FROM audit_log WHERE action LIKE 'db_%' ORDER BY audit_id")
        assert done.fetchall() == [("db_backup", "eric"), ("db_backup_verify", "eric")]
