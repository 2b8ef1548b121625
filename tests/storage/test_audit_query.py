"""Reading the audit trail: filters, keyset pages, refused filters, the CSV export, and the indexes of
revision 20261207_001 that keep a filtered page quick."""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic import command

import storage.audit_query as audit_query
from storage import DataDir
from storage.audit_query import (
    AuditFilter,
    AuditFilterError,
    export_csv,
    fetch_page,
    iter_rows,
    open_read_only,
    record_action,
    safe_cell,
)
from storage.maintenance import alembic_config, check_database, head_revision

T0 = datetime(2026, 3, 1, 8, 0, 0)


def _insert(db_path: Path, rows: list[tuple[datetime, str | None, str, str, str]]) -> None:
    """Rows of (time, user, action, outcome, details text)."""
    connection = sqlite3.connect(str(db_path))
    with connection:
        connection.executemany(
            "INSERT INTO audit_log (timestamp, username, action, terminal, outcome, details) "
            "VALUES (?, ?, ?, 'tty1', ?, ?)",
            [(t.isoformat(sep=" ", timespec="microseconds"), u, a, o, d) for t, u, a, o, d in rows],
        )
    connection.close()


@pytest.fixture
def trail(db_path: Path) -> Path:
    """125 rows: ana and ben alternate, every 10th a failure; rows 40 to 44 share one timestamp."""
    rows = []
    for n in range(125):
        moment = T0 + timedelta(minutes=40 if 40 <= n < 45 else n)
        user = "ana" if n % 2 == 0 else "ben"
        action = "login" if n % 3 == 0 else "config_change"
        outcome = "failure" if n % 10 == 0 else "success"
        rows.append((moment, user, action, outcome, json.dumps({"n": n, "note": f"row {n}"})))
    _insert(db_path, rows)
    return db_path


def _numbers(rows: list[object]) -> list[int]:
    return [json.loads(row.details)["n"] for row in rows]  # type: ignore[attr-defined]


def test_pages_are_newest_first_and_keyset_pages_cover_every_row_once(trail: Path) -> None:
    connection = open_read_only(trail)
    seen: list[int] = []
    page = fetch_page(connection, limit=20)
    first_ids = [row.audit_id for row in page.rows]
    pages = 1
    while True:
        seen.extend(row.audit_id for row in page.rows)
        if page.next_cursor is None:
            break
        page = fetch_page(connection, after=page.next_cursor, limit=20)
        pages += 1
    connection.close()
    assert pages == 7
    assert (
        len(seen) == len(set(seen)) == 125
    )  # the five rows sharing a timestamp are neither lost nor doubled
    assert first_ids[0] == 125 and first_ids == sorted(first_ids, reverse=True)


def test_each_filter_narrows_the_rows(trail: Path) -> None:
    connection = open_read_only(trail)

    def numbers(**filters: str) -> list[int]:
        return _numbers(list(iter_rows(connection, AuditFilter.build(**filters))))

    assert numbers(user="ana") == [n for n in range(124, -1, -1) if n % 2 == 0]
    assert numbers(action="login", outcome="failure") == [120, 90, 60, 30, 0]
    assert numbers(outcome="FAILURE", user="ben") == []
    since = (T0 + timedelta(minutes=120)).isoformat()
    assert numbers(since=since) == [124, 123, 122, 121, 120]
    assert numbers(since="2026-03-01T08:02", until="2026-03-01 08:04") == [3, 2]
    assert numbers(text="ROW 12") == [124, 123, 122, 121, 120, 12]
    assert numbers(text="%") == []  # a wildcard typed is looked for as a character
    assert numbers(since="2026-03-01T09:00:00+01:00", until="2026-03-01T08:01Z") == [0]
    connection.close()


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"since": "yesterday"}, "since: 'yesterday' is not a date"),
        ({"until": "2026-02-30"}, "until: '2026-02-30' is not a date"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "since must be before until"),
        ({"outcome": "maybe"}, "outcome: must be one of success, failure"),
        ({"text": "x" * 201}, "text: longer than 200 characters"),
        ({"user": "ana\x1b[2J"}, "user: control characters are not allowed"),
    ],
)
def test_bad_filters_are_refused_with_the_reason(filters: dict[str, str], reason: str) -> None:
    with pytest.raises(AuditFilterError) as caught:
        AuditFilter.build(**filters)
    assert str(caught.value).startswith(reason)


def test_csv_export_guards_formulas_and_never_overwrites(trail: Path, data_dir: DataDir) -> None:
    _insert(trail, [(T0 + timedelta(days=1), '=HYPERLINK("x")', "@SUM(1)", "success", "-2+3")])
    exports = data_dir.root / "exports"
    now = datetime(2026, 3, 2, 9, 0, 0)
    first = export_csv(trail, exports, AuditFilter.build(since="2026-03-02"), now=now)
    second = export_csv(trail, exports, AuditFilter.build(since="2026-03-02"), now=now)
    assert first.path == exports / "audit_20260302_090000.csv"
    assert second.path == exports / "audit_20260302_090000_1.csv"
    assert first.rows == 1
    with first.path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:5] == ["audit_id", "timestamp_utc", "username", "action", "outcome"]
    assert rows[1][2:4] == ['\'=HYPERLINK("x")', "'@SUM(1)"]
    assert rows[1][8] == "'-2+3"
    assert [p.name for p in exports.iterdir() if p.name.startswith(".")] == []
    everything = export_csv(trail, exports, None, now=now)
    assert everything.rows == 126
    assert [safe_cell(v) for v in ("+1", "a=b", None, 5)] == ["'+1", "a=b", "", "5"]


def test_record_action_names_the_account(db_path: Path) -> None:
    connection = sqlite3.connect(str(db_path))
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('ada', 'Ada', 'admin')"
        )
    connection.close()
    record_action(db_path, "audit_export", "success", user="ada", terminal="tty1", details={"rows": 3})
    connection = open_read_only(db_path)
    row = connection.execute("SELECT tech_id, username, action, terminal, details FROM audit_log").fetchone()
    connection.close()
    assert row == (1, "ada", "audit_export", "tty1", '{"rows": 3}')


def test_a_filtered_page_uses_an_index_not_a_scan(db_path: Path) -> None:
    connection = open_read_only(db_path)
    for column in ("username", "action", "outcome"):
        plan = " ".join(
            str(row[3])
            for row in connection.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE {column} = 'x' "
                "ORDER BY timestamp DESC, audit_id DESC LIMIT 51"
            )
        )
        assert "SEARCH audit_log USING" in plan and "TEMP B-TREE" not in plan, plan
    connection.close()


def _audit_indexes(db_path: Path) -> set[str]:
    connection = sqlite3.connect(str(db_path))
    names = {str(row[1]) for row in connection.execute("PRAGMA index_list(audit_log)")}
    connection.close()
    return names


def test_the_index_revision_upgrades_and_downgrades(data_dir: DataDir, trail: Path) -> None:
    added = {"idx_audit_user_time", "idx_audit_action_time", "idx_audit_outcome_time"}
    assert head_revision() == "20261207_005"
    assert added <= _audit_indexes(trail)
    config = alembic_config(data_dir.db_path)
    command.downgrade(config, "20261206_001")
    assert not added & _audit_indexes(trail)
    assert check_database(trail, require_head=False).revision == "20261206_001"
    command.upgrade(config, "head")
    assert added <= _audit_indexes(trail)
    assert check_database(trail).revision == "20261207_005"
    connection = open_read_only(trail)
    assert len(list(iter_rows(connection))) == 125  # no row touched either way
    connection.close()


def test_free_text_reads_a_bounded_window_per_page_and_goes_on_after_it(
    trail: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_query, "TEXT_SCAN_WINDOW", 30)
    connection = open_read_only(trail)
    wanted = AuditFilter.build(text='"n": 3,')  # only row 3, the 122nd newest
    first = fetch_page(connection, wanted)
    assert first.rows == [] and first.next_cursor is not None
    assert first.searched_to == T0 + timedelta(minutes=95)  # the 30 newest rows were read
    assert _numbers(list(iter_rows(connection, wanted))) == [3]
    # A page that fills up inside its window ends at its last row, as without text.
    common = fetch_page(connection, AuditFilter.build(text="row"), limit=10)
    assert common.searched_to is None and _numbers(common.rows) == list(range(124, 114, -1))
    connection.close()
