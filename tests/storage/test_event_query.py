"""The safety log and event browser's reader: pages of both tables merged newest first, keyset paging with
rows at the same time in both tables, a rare type read on its own index (the same rows, in the same order,
as a common one read on the time index), severities of treatment events, and its refusals."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

import pytest

from storage import DataDir
from storage.audit_query import open_read_only
from storage.event_query import (
    SPARSE_ROWS,
    EventCursor,
    EventFilter,
    EventFilterError,
    EventRow,
    fetch_page,
)

T0 = datetime(2026, 5, 1, 8, 0, 0)


def fill(data_dir: DataDir, pairs: int) -> None:
    """``pairs`` times, a safety row and a treatment event at the same second (session 1); every 10th safety
    row a ``tec_out_of_window`` warning, every 10th event a ``safety_trigger``."""
    with sqlite3.connect(data_dir.db_path) as db:
        db.execute(
            "INSERT INTO tech_users (tech_id, username, full_name, role) VALUES (1, 't', 'T', 'technician')"
        )
        db.execute("INSERT INTO subjects (subject_id, subject_code) VALUES (1, 'P-1')")
        db.execute(
            "INSERT INTO sessions (session_id, subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, 1, ?, 'completed')",
            (T0.isoformat(" ", "microseconds"),),
        )
        for n in range(pairs):
            at = (T0 + timedelta(seconds=n)).isoformat(" ", "microseconds")
            rare = n % 10 == 0
            db.execute(
                "INSERT INTO safety_log (timestamp, session_id, event_type, severity, description) "
                "VALUES (?, 1, ?, ?, ?)",
                (at, "tec_out_of_window" if rare else "state_change", "warning" if rare else "info", f"s{n}"),
            )
            db.execute(
                "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type) "
                "VALUES (1, ?, ?, ?)",
                (at, n * 1000, "safety_trigger" if rare else "power_set"),
            )


def every_page(connection: sqlite3.Connection, filters: EventFilter, size: int) -> list[EventRow]:
    rows: list[EventRow] = []
    cursor: EventCursor | None = None
    while True:
        page = fetch_page(connection, filters, after=cursor, limit=size)
        rows.extend(page.rows)
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


def test_pages_cover_both_tables_once_newest_first(data_dir: DataDir) -> None:
    fill(data_dir, 40)
    connection = open_read_only(data_dir.db_path)
    try:
        rows = every_page(connection, EventFilter.build(session="1"), 7)
    finally:
        connection.close()
    assert len(rows) == 80 and len({row.key for row in rows}) == 80
    # Same second: the treatment event before the safety row (newest first), then the next second down.
    assert [(row.source, row.description or row.event_type) for row in rows[:3]] == [
        ("treatment", "power_set"),
        ("safety", "s39"),
        ("treatment", "power_set"),
    ]
    assert [row.timestamp for row in rows] == sorted((row.timestamp for row in rows), reverse=True)


def test_a_rare_filter_on_its_own_index_gives_the_rows_of_the_time_index(data_dir: DataDir) -> None:
    fill(data_dir, 300)  # 30 rare rows of each kind, well under the sparse bound
    assert SPARSE_ROWS > 30
    connection = open_read_only(data_dir.db_path)
    try:
        sparse = every_page(connection, EventFilter.build(severity="warning+"), 4)
        # The same filter with a session: read on the time and session indexes, filtered as it goes.
        dense = every_page(connection, EventFilter.build(severity="warning+", session="1"), 4)
        kinds = {row.event_type for row in sparse}
        typed = every_page(connection, EventFilter.build(event_type="tec_out_of_window"), 3)
    finally:
        connection.close()
    assert [row.key for row in sparse] == [row.key for row in dense]
    assert len(sparse) == 60 and kinds == {"tec_out_of_window", "safety_trigger"}
    assert {row.severity for row in sparse} == {"warning", "critical"}
    assert len(typed) == 30 and {row.source for row in typed} == {"safety"}


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        (
            {"since": "2026-05-02", "until": "2026-05-01"},
            "the start of the time range must be before its end",
        ),
        ({"severity": "fatal"}, "severity: must be one of info, warning, critical, emergency"),
        ({"session": "-3"}, "session: '-3' is not a session id"),
        ({"event_type": "x" * 65}, "event type: longer than 64 characters"),
    ],
)
def test_bad_filters_are_refused(filters: dict[str, str], reason: str) -> None:
    with pytest.raises(EventFilterError, match=reason):
        EventFilter.build(**filters)


def test_an_unknown_session_is_refused(data_dir: DataDir) -> None:
    connection = open_read_only(data_dir.db_path)
    try:
        with pytest.raises(EventFilterError, match="no session with id 5"):
            fetch_page(connection, EventFilter.build(session="5"))
    finally:
        connection.close()
