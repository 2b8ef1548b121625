"""The migrated database has the seed schema, and the seed's own SQL runs unchanged against it."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import (
    Calibration,
    TreatmentSession,
    utc_now,
)
from storage.repositories import (
    CalibrationsRepository,
    ConfigRepository,
    ProtocolsRepository,
    SafetyLogRepository,
    SessionsRepository,
    SubjectsRepository,
    TreatmentEventsRepository,
    UsersRepository,
)
from storage.safety_records import SafetyRecord

# ---- the seed's SQL, copied verbatim from seeds/000 (only `?` parameters are bound)

SEED_TECH_INSERT = """INSERT INTO tech_users (username, full_name, role) VALUES
    ('admin', 'System Administrator', 'admin');"""

SEED_SUBJECT_INSERT = """INSERT INTO subjects (subject_code, created_by_tech_id, notes) VALUES
('P-2025-0001', 1, 'Initial consultation');"""

SEED_CONFIG_INSERT = """INSERT INTO system_config (config_key, config_value, config_type, description) VALUES
('max_laser_power_watts', '10.0', 'float', 'Hard limit for laser power'),
('treatment_loop_frequency_hz', '10', 'integer', 'Control loop update rate'),
('photodiode_warning_threshold_percent', '15', 'float', 'Deviation % before warning'),
('photodiode_fault_threshold_percent', '30', 'float', 'Deviation % before fault'),
('video_resolution', '1920x1080', 'string', 'Recording resolution'),
('video_fps', '30', 'integer', 'Recording frame rate'),
('session_data_path', 'data/sessions', 'string', 'Base path for session data');"""

SEED_SAFETY_INSERT = """INSERT INTO safety_log (timestamp, event_type, severity, description, system_state, action_taken)
VALUES (CURRENT_TIMESTAMP, 'database_initialized', 'info', 'Database schema created', 'idle', 'none');"""  # noqa: E501

Q1_FIND_SUBJECT = """SELECT * FROM subjects
WHERE subject_code = 'P-2025-0001';"""

Q2_SESSIONS_FOR_SUBJECT = """SELECT
    s.session_id,
    s.start_time,
    s.end_time,
    s.status,
    s.protocol_name,
    s.total_energy_joules,
    t.full_name as technician
FROM sessions s
JOIN tech_users t ON s.tech_id = t.tech_id
WHERE s.subject_id = ?
ORDER BY s.start_time DESC;"""

Q3_EVENTS_FOR_SESSION = """SELECT
    timestamp,
    event_type,
    laser_power_commanded_watts,
    laser_power_actual_watts,
    ring_size_mm,
    photodiode_voltage_v
FROM treatment_events
WHERE session_id = ?
ORDER BY time_offset_ms;"""

Q4_ACTIVE_CALIBRATION = """SELECT calibration_data
FROM calibrations
WHERE device_type = 'photodiode'
      AND is_active = 1
ORDER BY calibration_date DESC
LIMIT 1;"""

Q5_SAFETY_24H = """SELECT
    timestamp,
    event_type,
    severity,
    description,
    session_id
FROM safety_log
WHERE timestamp >= datetime('now', '-1 day')
ORDER BY timestamp DESC;"""

Q6_PROTOCOL_USAGE = """SELECT
    protocol_name,
    usage_count,
    last_used_date,
    (SELECT COUNT(*) FROM sessions WHERE protocol_id = p.protocol_id) as actual_usage
FROM protocols p
WHERE is_active = 1
ORDER BY usage_count DESC;"""

SEED_VIEWS = {
    "active_sessions": """CREATE VIEW active_sessions AS
SELECT
    s.session_id,
    s.subject_id,
    p.subject_code,
    s.tech_id,
    t.full_name as tech_name,
    s.start_time,
    s.status,
    s.protocol_name,
    strftime('%s', 'now') - strftime('%s', s.start_time) as duration_seconds
FROM sessions s
JOIN subjects p ON s.subject_id = p.subject_id
JOIN tech_users t ON s.tech_id = t.tech_id
WHERE s.status IN ('in_progress', 'paused');""",
    "subject_session_history": """CREATE VIEW subject_session_history AS
SELECT
    p.subject_id,
    p.subject_code,
    s.session_id,
    s.start_time,
    s.end_time,
    s.status,
    s.protocol_name,
    s.total_laser_on_time_seconds,
    s.avg_power_watts,
    s.total_energy_joules,
    t.full_name as technician
FROM subjects p
LEFT JOIN sessions s ON p.subject_id = s.subject_id
LEFT JOIN tech_users t ON s.tech_id = t.tech_id
ORDER BY p.subject_id, s.start_time DESC;""",
    "safety_events_summary": """CREATE VIEW safety_events_summary AS
SELECT
    DATE(timestamp) as event_date,
    severity,
    event_type,
    COUNT(*) as event_count
FROM safety_log
GROUP BY DATE(timestamp), severity, event_type
ORDER BY event_date DESC, severity;""",
}

# ---- the schema the seed (and DESIGN section 9) describes: table -> [(column, declared type)]

SEED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "tech_users": [
        ("tech_id", "INTEGER"),
        ("username", "TEXT"),
        ("full_name", "TEXT"),
        ("role", "TEXT"),
        ("created_date", "DATETIME"),
        ("last_login", "DATETIME"),
        ("is_active", "BOOLEAN"),
        ("notes", "TEXT"),
        ("password_hash", "TEXT"),
        ("must_change_password", "BOOLEAN"),
        ("failed_login_count", "INTEGER"),
        ("locked_until", "DATETIME"),
    ],
    "subjects": [
        ("subject_id", "INTEGER"),
        ("subject_code", "TEXT"),
        ("date_of_birth", "DATE"),
        ("gender", "TEXT"),
        ("created_date", "DATETIME"),
        ("created_by_tech_id", "INTEGER"),
        ("last_modified_date", "DATETIME"),
        ("notes", "TEXT"),
        ("is_active", "BOOLEAN"),
    ],
    "protocols": [
        ("protocol_id", "INTEGER"),
        ("protocol_name", "TEXT"),
        ("description", "TEXT"),
        ("protocol_type", "TEXT"),
        ("protocol_data", "TEXT"),
        ("created_date", "DATETIME"),
        ("created_by_tech_id", "INTEGER"),
        ("last_modified_date", "DATETIME"),
        ("last_used_date", "DATETIME"),
        ("usage_count", "INTEGER"),
        ("is_active", "BOOLEAN"),
    ],
    "sessions": [
        ("session_id", "INTEGER"),
        ("subject_id", "INTEGER"),
        ("tech_id", "INTEGER"),
        ("protocol_id", "INTEGER"),
        ("start_time", "DATETIME"),
        ("end_time", "DATETIME"),
        ("duration_seconds", "INTEGER"),
        ("status", "TEXT"),
        ("abort_reason", "TEXT"),
        ("treatment_site", "TEXT"),
        ("treatment_notes", "TEXT"),
        ("protocol_name", "TEXT"),
        ("protocol_data_snapshot", "TEXT"),
        ("session_folder_path", "TEXT"),
        ("video_path", "TEXT"),
        ("total_laser_on_time_seconds", "REAL"),
        ("avg_power_watts", "REAL"),
        ("max_power_watts", "REAL"),
        ("total_energy_joules", "REAL"),
        ("post_treatment_notes", "TEXT"),
        ("created_date", "DATETIME"),
        # Not in the seed: the session's telemetry file (revision 20261123_002).
        ("telemetry_path", "TEXT"),
        ("telemetry_line_count", "INTEGER"),
        ("telemetry_sha256", "TEXT"),
        # Not in the seed: the session's unique identifier, its folder's name (revision 20261206_001).
        ("session_uid", "TEXT"),
    ],
    "treatment_events": [
        ("event_id", "INTEGER"),
        ("session_id", "INTEGER"),
        ("timestamp", "DATETIME"),
        ("time_offset_ms", "INTEGER"),
        ("event_type", "TEXT"),
        ("laser_power_commanded_watts", "REAL"),
        ("laser_power_actual_watts", "REAL"),
        ("ring_size_mm", "REAL"),
        ("actuator_position_um", "REAL"),
        ("photodiode_voltage_v", "REAL"),
        ("footpedal_state", "BOOLEAN"),
        ("smoothing_device_state", "BOOLEAN"),
        ("interlock_status", "TEXT"),
        ("image_path", "TEXT"),
        ("video_timestamp_ms", "INTEGER"),
        ("event_details", "TEXT"),
        # Not in the seed: the record chain (revision 20261207_002), NULL on rows the chain did not write.
        ("chain_seq", "INTEGER"),
        ("chain_prev", "BLOB"),
        ("chain_mac", "BLOB"),
    ],
    "session_recordings": [
        ("recording_id", "INTEGER"),
        ("session_id", "INTEGER"),
        ("recording_type", "TEXT"),
        ("file_path", "TEXT"),
        ("file_size_bytes", "INTEGER"),
        ("duration_seconds", "REAL"),
        ("timestamp", "DATETIME"),
        ("frame_count", "INTEGER"),
        ("resolution", "TEXT"),
        ("notes", "TEXT"),
    ],
    "safety_log": [
        ("log_id", "INTEGER"),
        ("timestamp", "DATETIME"),
        ("session_id", "INTEGER"),
        ("tech_id", "INTEGER"),
        ("event_type", "TEXT"),
        ("severity", "TEXT"),
        ("description", "TEXT"),
        ("system_state", "TEXT"),
        ("laser_state", "TEXT"),
        ("footpedal_state", "BOOLEAN"),
        ("smoothing_device_state", "BOOLEAN"),
        ("photodiode_voltage_v", "REAL"),
        ("action_taken", "TEXT"),
        ("details", "TEXT"),
        # Not in the seed: the record chain (revision 20261207_002), NULL on rows the chain did not write.
        ("chain_seq", "INTEGER"),
        ("chain_prev", "BLOB"),
        ("chain_mac", "BLOB"),
    ],
    "calibrations": [
        ("calibration_id", "INTEGER"),
        ("calibration_date", "DATETIME"),
        ("tech_id", "INTEGER"),
        ("device_type", "TEXT"),
        ("device_serial_number", "TEXT"),
        ("calibration_type", "TEXT"),
        ("calibration_data", "TEXT"),
        ("validation_data", "TEXT"),
        ("is_active", "BOOLEAN"),
        ("notes", "TEXT"),
    ],
    "system_config": [
        ("config_key", "TEXT"),
        ("config_value", "TEXT"),
        ("config_type", "TEXT"),
        ("description", "TEXT"),
        ("last_modified", "DATETIME"),
        ("modified_by_tech_id", "INTEGER"),
    ],
    "audit_log": [
        ("audit_id", "INTEGER"),
        ("timestamp", "DATETIME"),
        ("tech_id", "INTEGER"),
        ("username", "TEXT"),
        ("action", "TEXT"),
        ("entity_type", "TEXT"),
        ("entity_id", "INTEGER"),
        ("terminal", "TEXT"),
        ("outcome", "TEXT"),
        ("details", "TEXT"),
        # Not in the seed: the record chain (revision 20261207_002), NULL on rows the chain did not write.
        ("chain_seq", "INTEGER"),
        ("chain_prev", "BLOB"),
        ("chain_mac", "BLOB"),
    ],
    "protocol_versions": [
        ("version_id", "INTEGER"),
        ("protocol_id", "INTEGER"),
        ("version", "INTEGER"),
        ("protocol_data", "TEXT"),
        ("change_summary", "TEXT"),
        ("created_by_tech_id", "INTEGER"),
        ("created_date", "DATETIME"),
        # Not in the seed: the approval state (revision 20261207_005).
        ("status", "TEXT"),
        ("submitted_by_tech_id", "INTEGER"),
        ("submitted_at", "DATETIME"),
        ("approved_by_tech_id", "INTEGER"),
        ("approved_at", "DATETIME"),
        ("rejected_by_tech_id", "INTEGER"),
        ("rejected_at", "DATETIME"),
        ("rejection_reason", "TEXT"),
    ],
}

# (table, column) -> server default as SQLite reports it
SEED_DEFAULTS = {
    ("tech_users", "created_date"): "CURRENT_TIMESTAMP",
    ("tech_users", "is_active"): "1",
    ("tech_users", "must_change_password"): "0",
    ("tech_users", "failed_login_count"): "0",
    ("subjects", "created_date"): "CURRENT_TIMESTAMP",
    ("subjects", "is_active"): "1",
    ("protocols", "created_date"): "CURRENT_TIMESTAMP",
    ("protocols", "usage_count"): "0",
    ("protocols", "is_active"): "1",
    ("sessions", "created_date"): "CURRENT_TIMESTAMP",
    ("calibrations", "is_active"): "1",
    ("system_config", "last_modified"): "CURRENT_TIMESTAMP",
    ("protocol_versions", "created_date"): "CURRENT_TIMESTAMP",
    ("protocol_versions", "status"): "'draft'",
}

# index name -> (table, columns, unique)
SEED_INDEXES = {
    "idx_tech_username": ("tech_users", ["username"], False),
    "idx_tech_active": ("tech_users", ["is_active"], False),
    "idx_subject_code": ("subjects", ["subject_code"], True),
    "idx_subject_active": ("subjects", ["is_active"], False),
    "idx_subject_created_date": ("subjects", ["created_date"], False),
    "idx_protocol_name": ("protocols", ["protocol_name"], True),
    "idx_protocol_type": ("protocols", ["protocol_type"], False),
    "idx_protocol_active": ("protocols", ["is_active"], False),
    "idx_session_subject": ("sessions", ["subject_id"], False),
    "idx_session_tech": ("sessions", ["tech_id"], False),
    "idx_session_start_time": ("sessions", ["start_time"], False),
    "idx_session_status": ("sessions", ["status"], False),
    "idx_session_date_status": ("sessions", ["start_time", "status"], False),
    "idx_event_session": ("treatment_events", ["session_id"], False),
    "idx_event_timestamp": ("treatment_events", ["timestamp"], False),
    "idx_event_type": ("treatment_events", ["event_type"], False),
    "idx_event_session_time": ("treatment_events", ["session_id", "time_offset_ms"], False),
    "idx_recording_session": ("session_recordings", ["session_id"], False),
    "idx_recording_type": ("session_recordings", ["recording_type"], False),
    "idx_safety_timestamp": ("safety_log", ["timestamp"], False),
    "idx_safety_session": ("safety_log", ["session_id"], False),
    "idx_safety_severity": ("safety_log", ["severity"], False),
    "idx_safety_type": ("safety_log", ["event_type"], False),
    "idx_calib_device": ("calibrations", ["device_type"], False),
    "idx_calib_date": ("calibrations", ["calibration_date"], False),
    "idx_calib_active": ("calibrations", ["is_active"], False),
    "idx_audit_timestamp": ("audit_log", ["timestamp"], False),
    "idx_audit_tech_time": ("audit_log", ["tech_id", "timestamp"], False),
}

# table -> {(column, referenced table, referenced column)}
SEED_FOREIGN_KEYS = {
    "subjects": {("created_by_tech_id", "tech_users", "tech_id")},
    "protocols": {("created_by_tech_id", "tech_users", "tech_id")},
    "sessions": {
        ("subject_id", "subjects", "subject_id"),
        ("tech_id", "tech_users", "tech_id"),
        ("protocol_id", "protocols", "protocol_id"),
    },
    "treatment_events": {("session_id", "sessions", "session_id")},
    "session_recordings": {("session_id", "sessions", "session_id")},
    "safety_log": {("session_id", "sessions", "session_id"), ("tech_id", "tech_users", "tech_id")},
    "calibrations": {("tech_id", "tech_users", "tech_id")},
    "system_config": {("modified_by_tech_id", "tech_users", "tech_id")},
    "audit_log": {("tech_id", "tech_users", "tech_id")},
    "protocol_versions": {
        ("protocol_id", "protocols", "protocol_id"),
        ("created_by_tech_id", "tech_users", "tech_id"),
        ("submitted_by_tech_id", "tech_users", "tech_id"),
        ("approved_by_tech_id", "tech_users", "tech_id"),
        ("rejected_by_tech_id", "tech_users", "tech_id"),
    },
}


def _connect(db_path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(db_path))
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def test_every_seed_table_and_column_exists_with_its_type_and_default(db_path: Path) -> None:
    with _connect(db_path) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(SEED_COLUMNS) <= tables
        for table, expected in SEED_COLUMNS.items():
            info = connection.execute(f"PRAGMA table_info({table})").fetchall()
            assert [(row[1], row[2]) for row in info] == expected, table
            for row in info:
                assert row[4] == SEED_DEFAULTS.get((table, row[1])), (table, row[1])
            assert sum(1 for row in info if row[5]) == 1, f"{table} has one primary key column"
            sql = connection.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            if table != "system_config":
                assert "AUTOINCREMENT" in sql, table
    connection.close()


def test_added_user_columns_have_the_required_nullability(db_path: Path) -> None:
    connection = _connect(db_path)
    info = {row[1]: row for row in connection.execute("PRAGMA table_info(tech_users)")}
    connection.close()
    assert info["password_hash"][3] == 0
    assert info["must_change_password"][3] == 1
    assert info["failed_login_count"][3] == 1
    assert info["locked_until"][3] == 0


def test_every_seed_index_exists_on_its_columns(db_path: Path) -> None:
    connection = _connect(db_path)
    for name, (table, columns, unique) in SEED_INDEXES.items():
        listed = {row[1]: row for row in connection.execute(f"PRAGMA index_list({table})")}
        assert name in listed, name
        assert bool(listed[name][2]) is unique, name
        assert [row[2] for row in connection.execute(f"PRAGMA index_info({name})")] == columns, name
    connection.close()


def test_foreign_keys_match_the_seed(db_path: Path) -> None:
    connection = _connect(db_path)
    for table, expected in SEED_FOREIGN_KEYS.items():
        found = {(r[3], r[2], r[4]) for r in connection.execute(f"PRAGMA foreign_key_list({table})")}
        assert found == expected, table
    connection.close()


def test_protocol_versions_are_unique_per_protocol(db_path: Path) -> None:
    connection = _connect(db_path)
    with connection:
        connection.execute(SEED_TECH_INSERT)
        connection.execute(
            "INSERT INTO protocols (protocol_name, protocol_type, protocol_data) "
            "VALUES ('p', 'constant', '{}')"
        )
        connection.execute(
            "INSERT INTO protocol_versions (protocol_id, version, protocol_data) VALUES (1, 1, '{}')"
        )
    try:
        connection.execute(
            "INSERT INTO protocol_versions (protocol_id, version, protocol_data) VALUES (1, 1, '{}')"
        )
    except sqlite3.IntegrityError as exc:
        assert "UNIQUE" in str(exc)
    else:
        raise AssertionError("a second version 1 of the same protocol was accepted")
    finally:
        connection.close()


def _normalized(sql: str) -> str:
    return " ".join(sql.replace(";", " ").split())


def test_the_seed_views_exist_with_the_seed_text(db_path: Path) -> None:
    connection = _connect(db_path)
    views = dict(connection.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'").fetchall())
    assert set(views) == set(SEED_VIEWS)
    for name, seed_sql in SEED_VIEWS.items():
        assert _normalized(views[name]) == _normalized(seed_sql), name
    # The seed's statements themselves run unchanged (into a scratch schema).
    with connection:
        for name, seed_sql in SEED_VIEWS.items():
            connection.execute(f"DROP VIEW {name}")
            connection.execute(seed_sql)
    assert connection.execute("SELECT count(*) FROM subject_session_history").fetchone() == (0,)
    connection.close()


def test_the_seed_config_rows_equal_the_migrated_defaults(db_path: Path, tmp_path: Path) -> None:
    connection = _connect(db_path)
    migrated = connection.execute(
        "SELECT config_key, config_value, config_type, description FROM system_config"
    ).fetchall()
    init_rows = connection.execute(
        "SELECT event_type, severity, description, system_state, action_taken FROM safety_log"
    ).fetchall()
    connection.close()
    # Run the seed's own INSERT into an empty table of the same shape and compare row for row.
    scratch = sqlite3.connect(str(tmp_path / "seed.db"))
    scratch.execute(
        "CREATE TABLE system_config (config_key TEXT PRIMARY KEY, config_value TEXT NOT NULL, "
        "config_type TEXT NOT NULL, description TEXT)"
    )
    scratch.execute(SEED_CONFIG_INSERT)
    seed = scratch.execute(
        "SELECT config_key, config_value, config_type, description FROM system_config"
    ).fetchall()
    scratch.close()
    assert len(seed) == 7
    assert set(seed) <= set(migrated)
    extra = set(migrated) - set(seed)
    assert extra == {
        ("auto_lock_minutes", "10", "integer", "Minutes of inactivity before the console locks"),
        (
            "min_free_disk_mb",
            "1024",
            "integer",
            "Free space (MB) the data directory must keep; no session opens below it",
        ),
        (
            "subject_code_pattern",
            "P-YYYY-NNNN",
            "string",
            "Subject codes: literal letters, digits, - and _; YYYY the year; one run of N the number",
        ),
        (
            "aiming_beam_during_emission",
            "true",
            "boolean",
            "Whether the aiming beam stays on while the treatment laser emits (false: it goes off)",
        ),
        ("retention_video_days", "3653", "integer", "Days the raw video of a finished session is kept"),
        (
            "retention_telemetry_days",
            "3653",
            "integer",
            "Days the telemetry file of a finished session is kept",
        ),
        (
            "retention_sessions_days",
            "3653",
            "integer",
            "Days a finished session is kept: its record, events, signatures and folder",
        ),
        ("retention_safety_days", "3653", "integer", "Days a safety_log row is kept"),
        (
            "retention_audit_days",
            "3653",
            "integer",
            "Days an audit_log row is kept (at least 2192: six years)",
        ),
    }
    assert init_rows == [("database_initialized", "info", "Database schema created", "idle", "none")]


async def _populate(factory: async_sessionmaker[AsyncSession], db_path: Path) -> dict[str, int]:
    """Seed INSERTs first, then a known set of rows written through the repositories."""
    connection = _connect(db_path)
    with connection:
        connection.execute(SEED_TECH_INSERT)
        connection.execute(SEED_SUBJECT_INSERT)
        connection.execute(SEED_SAFETY_INSERT)
    connection.close()
    now = utc_now()
    async with factory() as s:
        users = UsersRepository(s)
        admin = await users.get_by_username("admin")
        assert admin is not None and admin.tech_id == 1 and admin.is_active is True
        from storage import TechUser

        jane = await users.add(TechUser(username="jane", full_name="Jane Tech", role="technician"))
        subjects = SubjectsRepository(s)
        first = await subjects.find_subject_by_code("P-2025-0001")
        assert first is not None
        second = await subjects.add("P-2025-0002", created_by_tech_id=jane.tech_id)
        protocols = ProtocolsRepository(s)
        standard = await protocols.add("Standard 5W", "constant", json.dumps({"steps": []}))
        ramp = await protocols.add("Ramp", "linear_ramp", json.dumps({"steps": []}))
        retired = await protocols.add("Retired", "constant", json.dumps({"steps": []}))
        retired.is_active = False
        for _ in range(3):
            await protocols.record_use(standard.protocol_id)
        await protocols.record_use(ramp.protocol_id)
        sessions = SessionsRepository(s)
        done = await sessions.add(
            TreatmentSession(
                subject_id=first.subject_id,
                tech_id=1,
                protocol_id=standard.protocol_id,
                protocol_name="Standard 5W",
                start_time=datetime(2026, 1, 1, 10, 0, 0),
                end_time=datetime(2026, 1, 1, 10, 5, 0),
                status="completed",
                total_energy_joules=300.0,
                total_laser_on_time_seconds=60.0,
                avg_power_watts=5.0,
            )
        )
        aborted = await sessions.add(
            TreatmentSession(
                subject_id=first.subject_id,
                tech_id=jane.tech_id,
                protocol_id=standard.protocol_id,
                protocol_name="Standard 5W",
                start_time=datetime(2026, 1, 2, 9, 0, 0),
                status="aborted",
                abort_reason="subject discomfort",
            )
        )
        running = await sessions.add(
            TreatmentSession(
                subject_id=first.subject_id,
                tech_id=jane.tech_id,
                protocol_id=ramp.protocol_id,
                protocol_name="Ramp",
                start_time=now - timedelta(minutes=10),
                status="in_progress",
            )
        )
        events = TreatmentEventsRepository(s)
        base = datetime(2026, 1, 1, 10, 0, 0)
        await events.add_many(
            [
                {
                    "session_id": done.session_id,
                    "timestamp": base,
                    "time_offset_ms": 0,
                    "event_type": "laser_on",
                    "laser_power_commanded_watts": 5.0,
                    "laser_power_actual_watts": 4.9,
                    "ring_size_mm": 3.0,
                    "photodiode_voltage_v": 2.45,
                },
                {
                    "session_id": done.session_id,
                    "timestamp": base + timedelta(seconds=60),
                    "time_offset_ms": 60000,
                    "event_type": "laser_off",
                },
                {
                    "session_id": done.session_id,
                    "timestamp": base + timedelta(seconds=30),
                    "time_offset_ms": 30000,
                    "event_type": "power_change",
                    "laser_power_commanded_watts": 6.0,
                },
            ]
        )
        calibrations = CalibrationsRepository(s)
        for day, value, active in ((1, 1, False), (15, 3, True), (1, 2, True)):
            month = 2 if value == 2 else 1
            await calibrations.add(
                Calibration(
                    calibration_date=datetime(2026, month, day),
                    tech_id=1,
                    device_type="photodiode",
                    calibration_type=f"photodiode_voltage_to_power_{value}",
                    calibration_data=json.dumps({"value": value}),
                    is_active=active,
                )
            )
        safety = SafetyLogRepository(s)
        await safety.add(
            SafetyRecord(
                event_type="e_stop_pressed",
                severity="critical",
                description="E-stop",
                session_id=running.session_id,
                timestamp=now - timedelta(hours=1),
            )
        )
        await safety.add(
            SafetyRecord(
                event_type="footpedal_released",
                severity="info",
                description="old",
                timestamp=now - timedelta(days=2),
            )
        )
        await s.commit()
        return {
            "first": first.subject_id,
            "second": second.subject_id,
            "done": done.session_id,
            "aborted": aborted.session_id,
            "running": running.session_id,
            "jane": jane.tech_id,
        }


async def test_seed_queries_and_views_run_unchanged_and_agree_with_the_repositories(
    factory: async_sessionmaker[AsyncSession], db_path: Path
) -> None:
    ids = await _populate(factory, db_path)
    connection = _connect(db_path)
    connection.row_factory = sqlite3.Row

    # 1. Find Subject by Code
    found = connection.execute(Q1_FIND_SUBJECT).fetchall()
    assert (
        len(found) == 1
        and found[0]["notes"] == "Initial consultation"
        and found[0]["created_by_tech_id"] == 1
    )
    assert found[0]["is_active"] == 1 and found[0]["created_date"] is not None

    # 2. Get All Sessions for Subject
    rows = connection.execute(Q2_SESSIONS_FOR_SUBJECT, (ids["first"],)).fetchall()
    assert [r["session_id"] for r in rows] == [ids["running"], ids["aborted"], ids["done"]]
    assert [r["technician"] for r in rows] == ["Jane Tech", "Jane Tech", "System Administrator"]
    assert rows[2]["total_energy_joules"] == 300.0
    assert connection.execute(Q2_SESSIONS_FOR_SUBJECT, (ids["second"],)).fetchall() == []

    # 3. Get Treatment Events for Session
    events = connection.execute(Q3_EVENTS_FOR_SESSION, (ids["done"],)).fetchall()
    assert [e["event_type"] for e in events] == ["laser_on", "power_change", "laser_off"]
    assert events[0]["laser_power_actual_watts"] == 4.9 and events[0]["photodiode_voltage_v"] == 2.45

    # 4. Get Active Calibration for Device
    assert [tuple(r) for r in connection.execute(Q4_ACTIVE_CALIBRATION)] == [(json.dumps({"value": 2}),)]

    # 5. Safety Events in Last 24 Hours
    recent = connection.execute(Q5_SAFETY_24H).fetchall()
    # The migration's own initialisation row, the seed's one inserted above, the E-stop an hour ago; the event
    # two days old is left out.
    assert [r["event_type"] for r in recent] == [
        "database_initialized",
        "database_initialized",
        "e_stop_pressed",
    ]
    assert recent[2]["session_id"] == ids["running"]

    # 6. Protocol Usage Statistics
    usage = [tuple(r) for r in connection.execute(Q6_PROTOCOL_USAGE).fetchall()]
    assert [(u[0], u[1], u[3]) for u in usage] == [("Standard 5W", 3, 2), ("Ramp", 1, 1)]
    assert all(u[2] is not None for u in usage)

    # Views
    active = connection.execute("SELECT * FROM active_sessions").fetchall()
    assert [(a["session_id"], a["subject_code"], a["tech_name"]) for a in active] == [
        (ids["running"], "P-2025-0001", "Jane Tech")
    ]
    assert 590 <= active[0]["duration_seconds"] <= 700
    history = connection.execute("SELECT * FROM subject_session_history").fetchall()
    assert [(h["subject_code"], h["session_id"]) for h in history] == [
        ("P-2025-0001", ids["running"]),
        ("P-2025-0001", ids["aborted"]),
        ("P-2025-0001", ids["done"]),
        ("P-2025-0002", None),
    ]
    summary = [tuple(r) for r in connection.execute("SELECT * FROM safety_events_summary").fetchall()]
    assert sum(r[3] for r in summary) == 4
    assert summary[-1][2] == "footpedal_released"  # oldest day last
    connection.close()

    # The repository methods give the same answers.
    async with factory() as s:
        subject = await SubjectsRepository(s).find_subject_by_code("P-2025-0001")
        assert subject is not None and subject.subject_id == found[0]["subject_id"]
        repo_sessions = await SessionsRepository(s).sessions_for_subject(ids["first"])
        assert [(r.session_id, r.technician, r.total_energy_joules) for r in repo_sessions] == [
            (r["session_id"], r["technician"], r["total_energy_joules"]) for r in rows
        ]
        repo_events = await TreatmentEventsRepository(s).events_for_session(ids["done"])
        assert [(e.event_type, e.laser_power_commanded_watts) for e in repo_events] == [
            (e["event_type"], e["laser_power_commanded_watts"]) for e in events
        ]
        assert repo_events[0].timestamp == datetime(2026, 1, 1, 10, 0, 0)
        calibration = await CalibrationsRepository(s).active_calibration("photodiode")
        assert calibration is not None and json.loads(calibration.calibration_data) == {"value": 2}
        assert await CalibrationsRepository(s).active_calibration("camera") is None
        repo_recent = await SafetyLogRepository(s).safety_events_last_24h()
        assert [r.event_type for r in repo_recent] == [r["event_type"] for r in recent]
        repo_usage = await ProtocolsRepository(s).protocol_usage_statistics()
        assert [(u.protocol_name, u.usage_count, u.actual_usage) for u in repo_usage] == [
            (u[0], u[1], u[3]) for u in usage
        ]
        repo_active = await SessionsRepository(s).active_sessions()
        assert [(a.session_id, a.subject_code, a.tech_name) for a in repo_active] == [
            (ids["running"], "P-2025-0001", "Jane Tech")
        ]
        repo_history = await SessionsRepository(s).subject_session_history(None)
        assert [(h.subject_code, h.session_id) for h in repo_history] == [
            (h["subject_code"], h["session_id"]) for h in history
        ]
        only_second = await SessionsRepository(s).subject_session_history(ids["second"])
        assert [(h.subject_code, h.session_id) for h in only_second] == [("P-2025-0002", None)]
        repo_summary = await SafetyLogRepository(s).safety_events_summary()
        assert [(r.severity, r.event_type, r.event_count) for r in repo_summary] == [
            (r[1], r[2], r[3]) for r in summary
        ]
        assert await ConfigRepository(s).get("max_laser_power_watts") == 10.0


def test_telemetry_columns_refuse_a_negative_line_count_and_a_malformed_sha256(db_path: Path) -> None:
    connection = _connect(db_path)
    with connection:
        connection.execute(SEED_TECH_INSERT)
        connection.execute(SEED_SUBJECT_INSERT)
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, '2026-01-01', 'completed')"
        )
    good = "0123456789abcdef" * 4
    bad_values = [
        ("telemetry_line_count", -1, "ck_sessions_telemetry_line_count"),
        ("telemetry_sha256", good.upper(), "ck_sessions_telemetry_sha256"),
        ("telemetry_sha256", good[:-1], "ck_sessions_telemetry_sha256"),
        ("telemetry_sha256", good[:-1] + "g", "ck_sessions_telemetry_sha256"),
        ("telemetry_sha256", good + "0", "ck_sessions_telemetry_sha256"),
    ]
    try:
        for column, value, constraint in bad_values:
            try:
                connection.execute(f"UPDATE sessions SET {column} = ? WHERE session_id = 1", (value,))
            except sqlite3.IntegrityError as exc:
                assert constraint in str(exc), (column, value)
            else:
                raise AssertionError(f"{column} = {value!r} was accepted")
        with connection:
            connection.execute(
                "UPDATE sessions SET telemetry_path = 'sessions/P-2025-0001/1/telemetry.jsonl', "
                "telemetry_line_count = 0, telemetry_sha256 = ? WHERE session_id = 1",
                (good,),
            )
        row = connection.execute(
            "SELECT telemetry_path, telemetry_line_count, telemetry_sha256 FROM sessions"
        ).fetchone()
        assert row == ("sessions/P-2025-0001/1/telemetry.jsonl", 0, good)
    finally:
        connection.close()
