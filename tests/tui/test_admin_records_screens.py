"""The admin's audit trail and backups screens on a real migrated database: what they list, paging and
filters, the CSV export, backing up, verifying and restoring, and each refusal (a bad date, a restore while a
session is open on the rig or in the records)."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from datetime import datetime, timedelta
from typing import Any

import pytest
from admin_records_fixtures import (
    AdminScreenApp,
    LinkStandIn,
    SessionShown,
    SnapshotShown,
    add_audit_rows,
    audit_actions,
    fixed_space,
)
from console_fixtures import DATA_DIR, FakeClock, seed, status_text, wait_until
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label

import storage.audit_query as audit_query
from control.accounts import UserInfo
from storage import DataDir
from storage.backup import backup_database
from tui.screens._base import ScreenContext
from tui.screens.audit import AuditScreen
from tui.screens.backups import BackupsScreen
from tui.screens.dialogs import ConfirmDialog

T0 = datetime(2026, 3, 1, 8, 0, 0)


def audit_screen(context: ScreenContext, user: UserInfo) -> AuditScreen:
    return AuditScreen(context, user)


def backups_screen(context: ScreenContext, user: UserInfo) -> BackupsScreen:
    return BackupsScreen(context, user, space=fixed_space)


def many_rows() -> None:
    """120 rows a minute apart from T0: ana and ben alternate; row 7 has markup and an escape in it."""
    rows = []
    for n in range(120):
        user = "ana" if n % 2 == 0 else "ben"
        details = json.dumps({"n": n, "note": "[red]boom[/red] \x1b[2J" if n == 7 else f"row {n}"})
        rows.append((T0 + timedelta(minutes=n), user, "config_change", "success", details))
    add_audit_rows(rows)


def table_column(pilot: Pilot[Any], column: int) -> list[str]:
    table = pilot.app.screen.query_one(DataTable)
    return [str(table.get_row_at(row)[column]) for row in range(table.row_count)]


def page_text(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#page", Label).render())


async def audit_loaded(pilot: Pilot[Any], expected: str) -> AuditScreen:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, AuditScreen), "the audit screen")
    screen = pilot.app.screen
    assert isinstance(screen, AuditScreen)
    await wait_until(pilot, lambda: expected in page_text(pilot), f"the page line to say {expected!r}")
    return screen


async def type_filter(pilot: Pilot[Any], name: str, value: str) -> None:
    field = pilot.app.screen.query_one(f"#filter-{name}", Input)
    field.focus()
    field.value = value
    await pilot.pause()
    await pilot.press("enter")


def _audit_count() -> int:
    connection = sqlite3.connect(str(DATA_DIR / "tosca.db"))
    count = int(connection.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    connection.close()
    return count


def test_audit_pages_newest_first_and_back(data_dir: object, clock: FakeClock) -> None:
    asyncio.run(seed())
    seeded = _audit_count()  # the accounts made by the seed, recorded now: newer than the rows below
    many_rows()
    total = seeded + 120

    def row(n: int) -> str:
        return f"n={n}, note=row {n}"

    async def run() -> None:
        async with AdminScreenApp(audit_screen, clock).run_test(size=(120, 40)) as pilot:
            await audit_loaded(pilot, "page 1, 50 rows")
            details = table_column(pilot, 4)
            assert details[seeded : seeded + 2] == [row(119), row(118)]
            await pilot.press("pagedown")
            await audit_loaded(pilot, "page 2, 50 rows")
            assert table_column(pilot, 4)[0] == row(119 - (50 - seeded))
            await pilot.press("pagedown")
            await audit_loaded(pilot, f"page 3, {total - 100} rows")
            assert "last page" in page_text(pilot)
            assert table_column(pilot, 4)[-1] == row(0)
            assert table_column(pilot, 4)[-13] == row(12)
            # Text from the log is shown as typed: neither markup nor a terminal escape.
            assert table_column(pilot, 4)[-8] == "n=7, note=[red]boom[/red] \\x1b[2J"
            await pilot.press("pageup")
            await audit_loaded(pilot, "page 2, 50 rows")
            assert table_column(pilot, 4)[0] == row(119 - (50 - seeded))

    asyncio.run(run())


def test_audit_filters_and_a_refused_date(data_dir: object, clock: FakeClock) -> None:
    asyncio.run(seed())
    many_rows()
    add_audit_rows([(T0 + timedelta(hours=5), "ben", "login", "failure", '{"reason": "bad password"}')])

    async def run() -> None:
        async with AdminScreenApp(audit_screen, clock).run_test(size=(120, 40)) as pilot:
            await audit_loaded(pilot, "page 1")
            await type_filter(pilot, "user", "ben")
            await audit_loaded(pilot, "page 1, 50 rows, newest first; more follow (PageDown); user=ben")
            assert set(table_column(pilot, 1)) == {"ben"}
            await type_filter(pilot, "outcome", "failure")
            await audit_loaded(pilot, "page 1, 1 rows")
            assert table_column(pilot, 4) == ["reason=bad password"]
            assert table_column(pilot, 3) == ["failure"]
            # A date that is not one: refused with the reason, and the rows shown stay.
            await type_filter(pilot, "since", "2026-03-32")
            await wait_until(pilot, lambda: "filter refused" in status_text(pilot), "the refusal")
            assert status_text(pilot) == (
                "filter refused: since: '2026-03-32' is not a date (use YYYY-MM-DD or YYYY-MM-DD HH:MM, UTC)"
            )
            assert table_column(pilot, 4) == ["reason=bad password"]
            # A range the wrong way round.
            await type_filter(pilot, "since", "2026-03-02")
            await type_filter(pilot, "until", "2026-03-01")
            await wait_until(pilot, lambda: "before until" in status_text(pilot), "the refusal")
            assert status_text(pilot) == "filter refused: since must be before until"
            # A good range, and free text.
            await type_filter(pilot, "outcome", "")
            await type_filter(pilot, "user", "")
            await type_filter(pilot, "since", "2026-03-01 08:10")
            await type_filter(pilot, "until", "2026-03-01T08:20")
            await audit_loaded(pilot, "page 1, 10 rows")
            assert status_text(pilot) == ""
            await type_filter(pilot, "text", "ROW 15")
            await audit_loaded(pilot, "page 1, 1 rows")
            assert table_column(pilot, 4) == ["n=15, note=row 15"]
            await pilot.press("f3")
            await audit_loaded(pilot, "page 1, 50 rows, newest first; more follow (PageDown); all rows")

    asyncio.run(run())


def test_audit_export_writes_the_filtered_rows_and_is_audited(data_dir: object, clock: FakeClock) -> None:
    asyncio.run(seed())
    many_rows()
    add_audit_rows([(T0 + timedelta(hours=5), "=cmd", "login", "failure", '{"x": 1}')])

    async def run() -> None:
        async with AdminScreenApp(audit_screen, clock).run_test(size=(120, 40)) as pilot:
            await audit_loaded(pilot, "page 1")
            await type_filter(pilot, "outcome", "failure")
            await audit_loaded(pilot, "page 1, 1 rows")
            pilot.app.screen.query_one(DataTable).focus()
            await pilot.press("f5")
            await wait_until(pilot, lambda: status_text(pilot).startswith("exported"), "the export")
            screen = pilot.app.screen
            assert isinstance(screen, AuditScreen) and screen.last_export is not None
            assert status_text(pilot) == f"exported 1 rows to {screen.last_export}"

    asyncio.run(run())
    exports = list((DATA_DIR / "exports").glob("audit_*.csv"))
    assert len(exports) == 1
    with exports[0].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 2 and rows[1][2:5] == ["'=cmd", "login", "failure"]
    assert audit_actions("audit_export") == [("audit_export", "success", "ada")]


def backup_names(pilot: Pilot[Any]) -> list[str]:
    return table_column(pilot, 3)


async def backups_loaded(pilot: Pilot[Any], count: int) -> BackupsScreen:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, BackupsScreen), "the backups screen")
    screen = pilot.app.screen
    assert isinstance(screen, BackupsScreen)
    await wait_until(
        pilot,
        lambda: screen.overview is not None and len(screen.overview.entries) == count,
        f"{count} backups listed",
    )
    return screen


def facts(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#facts", Label).render())


def test_backups_listed_made_and_verified(data_dir: object, clock: FakeClock) -> None:
    asyncio.run(seed())
    folder = DataDir(DATA_DIR)
    older = backup_database(folder, now=datetime.now() - timedelta(days=3))
    damaged = backup_database(folder, now=datetime.now() - timedelta(days=2))
    with damaged.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 8192)

    async def run() -> None:
        async with AdminScreenApp(backups_screen, clock).run_test(size=(120, 40)) as pilot:
            await backups_loaded(pilot, 2)
            assert backup_names(pilot) == [damaged.name, older.name]
            assert table_column(pilot, 2) == ["not checked", "not checked"]
            assert facts(pilot) == "2 backups; kept 30 days; free space 12.3 GB of 64.0 GB"
            await pilot.press("v")
            await wait_until(
                pilot, lambda: "verif" in status_text(pilot) and "…" not in status_text(pilot), "v"
            )
            assert status_text(pilot).startswith(f"{damaged.name} does NOT verify: ")
            await wait_until(pilot, lambda: table_column(pilot, 2)[0] == "no", "the verdict listed")
            await pilot.press("down", "v")
            await wait_until(pilot, lambda: table_column(pilot, 2)[1] == "yes", "the second verdict")
            assert status_text(pilot).startswith(f"{older.name} verified: schema 20261207_005, integrity ok")
            await pilot.press("b")
            await backups_loaded(pilot, 3)
            assert status_text(pilot).startswith("backed up to tosca_")
            assert table_column(pilot, 2)[0] == "yes"

    asyncio.run(run())
    assert audit_actions("db_") == [
        ("db_backup_verify", "failure", "ada"),
        ("db_backup_verify", "success", "ada"),
        ("db_backup", "success", "ada"),
    ]


def _subjects() -> list[str]:
    connection = sqlite3.connect(str(DATA_DIR / "tosca.db"))
    codes = [str(r[0]) for r in connection.execute("SELECT subject_code FROM subjects ORDER BY subject_code")]
    connection.close()
    return codes


def _execute(sql: str) -> None:
    connection = sqlite3.connect(str(DATA_DIR / "tosca.db"))
    with connection:
        connection.execute(sql)
    connection.close()


def test_restore_refused_while_the_rig_or_the_records_have_a_session_open(
    data_dir: object, clock: FakeClock
) -> None:
    asyncio.run(seed())
    saved = backup_database(DataDir(DATA_DIR), now=datetime.now() - timedelta(days=1))
    _execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
    link = LinkStandIn(SnapshotShown(SessionShown(12, "P-2026-0001", "running")))

    async def run() -> None:
        async with AdminScreenApp(backups_screen, clock, link=link).run_test(size=(120, 40)) as pilot:
            await backups_loaded(pilot, 1)
            await pilot.press("r")
            await wait_until(pilot, lambda: "refused" in status_text(pilot), "the refusal")
            assert status_text(pilot) == (
                "restore refused while a session is open (session 12 for P-2026-0001 is running on the rig); "
                "end the session first"
            )
            assert not isinstance(pilot.app.screen, ConfirmDialog)
            # The rig's session ended, but the records still hold one open (a controller stopped mid-way).
            link.snapshot = None
            _execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
                "VALUES (1, 1, '2026-03-01', 'paused')"
            )
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog), "the question")
            await pilot.press("y")
            await wait_until(pilot, lambda: "in the records" in status_text(pilot), "the second refusal")
            assert status_text(pilot) == (
                "restore refused while a session is open (a treatment session is open in the records); "
                "end the session first"
            )

    asyncio.run(run())
    assert _subjects() == ["P-2026-0001"]
    assert audit_actions("db_restore") == [("db_restore", "failure", "ada")] * 2
    assert [p.name for p in (DATA_DIR / "backups").glob("tosca_*.db")] == [saved.name]


def test_restore_after_yes_backs_up_first_and_no_changes_nothing(data_dir: object, clock: FakeClock) -> None:
    asyncio.run(seed())
    saved = backup_database(DataDir(DATA_DIR), now=datetime.now() - timedelta(days=1))
    _execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")

    async def run() -> None:
        async with AdminScreenApp(backups_screen, clock, link=LinkStandIn()).run_test(
            size=(120, 40)
        ) as pilot:
            await backups_loaded(pilot, 1)
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog), "the question")
            await pilot.press("n")
            await wait_until(pilot, lambda: "cancelled" in status_text(pilot), "the answer")
            assert _subjects() == ["P-2026-0001"]
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog), "the question")
            await pilot.press("y")
            await wait_until(pilot, lambda: status_text(pilot).startswith("restored"), "the restore")
            screen = await backups_loaded(pilot, 2)
            assert screen.overview is not None
            replaced = screen.overview.entries[0].name
            assert status_text(pilot) == (
                f"restored {saved.name} (schema 20261207_005); the records it replaced are in {replaced}"
            )

    asyncio.run(run())
    assert _subjects() == []
    assert audit_actions("db_restore") == [("db_restore", "success", "ada")]


def test_a_rare_text_pages_through_bounded_windows(
    data_dir: object, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_query, "TEXT_SCAN_WINDOW", 40)
    asyncio.run(seed())
    seeded = _audit_count()
    many_rows()

    def minute(n: int) -> str:
        return f"{T0 + timedelta(minutes=n):%Y-%m-%d %H:%M}"

    async def run() -> None:
        async with AdminScreenApp(audit_screen, clock).run_test(size=(120, 40)) as pilot:
            await audit_loaded(pilot, "page 1")
            await type_filter(pilot, "text", '"n": 50,')  # only row 50
            # Each page reads 40 rows, newest first: the seed's rows, then row 119 down.
            await audit_loaded(pilot, f"page 1, 0 rows; searched back to {minute(119 - 39 + seeded)}")
            assert "PageDown searches further" in page_text(pilot)
            await pilot.press("pagedown")
            await audit_loaded(pilot, f"page 2, 1 rows; searched back to {minute(119 - 79 + seeded)}")
            assert table_column(pilot, 4) == ["n=50, note=row 50"]
            await pilot.press("pagedown")
            await audit_loaded(pilot, "page 3, 0 rows")
            await pilot.press("pageup", "pageup")
            await audit_loaded(pilot, "page 1, 0 rows")

    asyncio.run(run())


def test_a_technician_is_refused_both_screens(data_dir: object, clock: FakeClock) -> None:
    asyncio.run(seed())
    before = audit_actions()

    async def run(maker: Any, who: str) -> None:
        async with AdminScreenApp(maker, clock, username="tina").run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: "only an admin" in status_text(pilot), "the refusal")
            assert status_text(pilot) == f"only {who} may use this screen (tina is technician)"
            assert pilot.app.screen.query_one(DataTable).row_count == 0
            await pilot.press("b", "f5", "pagedown")
            await pilot.pause()

    asyncio.run(run(audit_screen, "an admin"))
    asyncio.run(run(backups_screen, "an admin or an engineer"))
    assert audit_actions() == before
    assert not (DATA_DIR / "exports").exists()
    assert list((DATA_DIR / "backups").glob("tosca_*.db")) == []
