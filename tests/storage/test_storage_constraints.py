"""The database refuses what must never be stored: edits of append-only logs, dangling keys, bad values."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import TreatmentEvent, connect_sqlite


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection with the console's pragmas on a database holding one row in every table."""
    connection = connect_sqlite(db_path)
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('admin', 'A', 'admin')"
        )
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
        connection.execute(
            "INSERT INTO protocols (protocol_name, protocol_type, protocol_data) "
            "VALUES ('p', 'constant', '{}')"
        )
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, protocol_id, start_time, status) "
            "VALUES (1, 1, 1, '2026-01-01 10:00:00', 'in_progress')"
        )
        connection.execute(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type) "
            "VALUES (1, '2026-01-01 10:00:00', 0, 'laser_on')"
        )
        connection.execute(
            "INSERT INTO audit_log (timestamp, action, outcome) "
            "VALUES ('2026-01-01 10:00:00', 'login_success', 'success')"
        )
    yield connection
    connection.close()


APPEND_ONLY = {
    "treatment_events": ("event_type = 'tampered'", "event_id = 1"),
    "safety_log": ("description = 'tampered'", "log_id = 1"),
    "audit_log": ("outcome = 'failure'", "audit_id = 1"),
}


@pytest.mark.parametrize("table", sorted(APPEND_ONLY))
def test_append_only_tables_refuse_update_and_delete(conn: sqlite3.Connection, table: str) -> None:
    assignment, where = APPEND_ONLY[table]
    before = conn.execute(f"SELECT * FROM {table} WHERE {where}").fetchall()
    assert len(before) == 1
    with pytest.raises(sqlite3.IntegrityError, match=f"^{table} is append-only$"):
        conn.execute(f"UPDATE {table} SET {assignment} WHERE {where}")
    conn.rollback()
    with pytest.raises(sqlite3.IntegrityError, match=f"^{table} is append-only$"):
        conn.execute(f"DELETE FROM {table} WHERE {where}")
    conn.rollback()
    assert conn.execute(f"SELECT * FROM {table} WHERE {where}").fetchall() == before


async def test_append_only_holds_through_the_orm(
    conn: sqlite3.Connection, factory: async_sessionmaker[AsyncSession]
) -> None:
    async with factory() as s:
        with pytest.raises(IntegrityError, match="treatment_events is append-only"):
            await s.execute(update(TreatmentEvent).values(event_type="x"))
        await s.rollback()
        with pytest.raises(IntegrityError, match="treatment_events is append-only"):
            await s.execute(delete(TreatmentEvent))
        await s.rollback()
        count = (await s.execute(text("SELECT count(*) FROM treatment_events"))).scalar_one()
    assert count == 1


FOREIGN_KEY_VIOLATIONS = [
    "INSERT INTO sessions (subject_id, tech_id, start_time, status) VALUES (99, 1, '2026-01-01', 'paused')",
    "INSERT INTO sessions (subject_id, tech_id, start_time, status) VALUES (1, 99, '2026-01-01', 'paused')",
    "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type) "
    "VALUES (99, '2026-01-01', 0, 'x')",
    "INSERT INTO safety_log (timestamp, session_id, event_type, severity, description) "
    "VALUES ('2026-01-01', 99, 'x', 'info', 'd')",
    "INSERT INTO calibrations (calibration_date, tech_id, device_type, calibration_type, calibration_data) "
    "VALUES ('2026-01-01', 99, 'laser', 't', '{}')",
    "INSERT INTO audit_log (timestamp, tech_id, action, outcome) VALUES ('2026-01-01', 99, 'a', 'success')",
    "INSERT INTO protocol_versions (protocol_id, version, protocol_data) VALUES (99, 1, '{}')",
    "INSERT INTO session_recordings (session_id, recording_type, file_path, timestamp) "
    "VALUES (99, 'video', 'f', '2026-01-01')",
    "DELETE FROM subjects WHERE subject_id = 1",
    "DELETE FROM tech_users WHERE tech_id = 1",
]


@pytest.mark.parametrize("statement", FOREIGN_KEY_VIOLATIONS)
def test_foreign_key_violations_are_refused(conn: sqlite3.Connection, statement: str) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        conn.execute(statement)
    conn.rollback()


# constraint name -> a statement that breaks only it
CHECK_VIOLATIONS = {
    "ck_tech_users_role": "INSERT INTO tech_users (username, full_name, role) VALUES ('x', 'X', 'superuser')",
    "ck_tech_users_failed_login_count": "UPDATE tech_users SET failed_login_count = -1",
    "ck_subjects_subject_code": "INSERT INTO subjects (subject_code) VALUES ('P/26 1')",
    "ck_sessions_session_uid": "UPDATE sessions SET session_uid = '../etc'",
    "ck_protocols_usage_count": "UPDATE protocols SET usage_count = -1",
    "ck_sessions_status": "UPDATE sessions SET status = 'done'",
    "ck_sessions_duration_seconds": "UPDATE sessions SET duration_seconds = -5",
    "ck_sessions_total_laser_on_time_seconds": "UPDATE sessions SET total_laser_on_time_seconds = -0.1",
    "ck_sessions_avg_power_watts": "UPDATE sessions SET avg_power_watts = -1.0",
    "ck_sessions_max_power_watts": "UPDATE sessions SET max_power_watts = -1.0",
    "ck_sessions_total_energy_joules": "UPDATE sessions SET total_energy_joules = -3.0",
    "ck_treatment_events_laser_power_commanded_watts": (
        "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
        "laser_power_commanded_watts) VALUES (1, '2026-01-01', 1, 'power_set', -1.0)"
    ),
    "ck_treatment_events_laser_power_actual_watts": (
        "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
        "laser_power_actual_watts) VALUES (1, '2026-01-01', 1, 'power_set', -0.5)"
    ),
    "ck_session_recordings_recording_type": (
        "INSERT INTO session_recordings (session_id, recording_type, file_path, timestamp) "
        "VALUES (1, 'audio', 'f', '2026-01-01')"
    ),
    "ck_safety_log_severity": (
        "INSERT INTO safety_log (timestamp, event_type, severity, description) "
        "VALUES ('2026-01-01', 'x', 'fatal', 'd')"
    ),
    "ck_system_config_config_type": "UPDATE system_config SET config_type = 'date'",
    "ck_audit_log_outcome": (
        "INSERT INTO audit_log (timestamp, action, outcome) VALUES ('2026-01-01', 'login', 'partial')"
    ),
    "ck_protocol_versions_version": (
        "INSERT INTO protocol_versions (protocol_id, version, protocol_data) VALUES (1, 0, '{}')"
    ),
}


@pytest.mark.parametrize("constraint", sorted(CHECK_VIOLATIONS))
def test_each_check_constraint_refuses_a_bad_value(conn: sqlite3.Connection, constraint: str) -> None:
    with pytest.raises(sqlite3.IntegrityError, match=f"CHECK constraint failed: {constraint}$"):
        conn.execute(CHECK_VIOLATIONS[constraint])
    conn.rollback()


def test_good_values_pass_the_same_checks(conn: sqlite3.Connection) -> None:
    with conn:
        for role in ("technician", "engineer", "admin"):
            conn.execute(
                "INSERT INTO tech_users (username, full_name, role) VALUES (?, 'X', ?)", (f"u_{role}", role)
            )
        conn.execute("INSERT INTO subjects (subject_code) VALUES ('P-2025-9999')")
        for status in ("in_progress", "completed", "aborted", "paused"):
            conn.execute("UPDATE sessions SET status = ?", (status,))
        conn.execute("UPDATE sessions SET avg_power_watts = 0, total_energy_joules = NULL")
        for severity in ("info", "warning", "critical", "emergency"):
            conn.execute(
                "INSERT INTO safety_log (timestamp, event_type, severity, description) "
                "VALUES ('2026-01-01', 'x', ?, 'd')",
                (severity,),
            )
        for kind in ("video", "snapshot", "focus_stack"):
            conn.execute(
                "INSERT INTO session_recordings (session_id, recording_type, file_path, timestamp) "
                "VALUES (1, ?, 'f', '2026-01-01')",
                (kind,),
            )
    assert conn.execute("SELECT count(*) FROM safety_log").fetchone()[0] == 5
