"""Initial schema: the nine TOSCA tables, audit_log, protocol_versions, views, append-only triggers, defaults.

Revision ID: 20261123_001
Revises:
Create Date: 2026-11-23

Table, column and index names, types and server defaults follow the TOSCA schema document exactly, so the seed's
sample INSERTs, views and common queries run unchanged. The view bodies are the seed's CREATE VIEW statements.
This file is a frozen snapshot: it never imports the models, which may move on in later revisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261123_001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")
TRUE = sa.text("1")
FALSE = sa.text("0")
ZERO = sa.text("0")

APPEND_ONLY_TABLES = ("treatment_events", "safety_log", "audit_log")

VIEWS = {
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
WHERE s.status IN ('in_progress', 'paused')""",
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
ORDER BY p.subject_id, s.start_time DESC""",
    "safety_events_summary": """CREATE VIEW safety_events_summary AS
SELECT
    DATE(timestamp) as event_date,
    severity,
    event_type,
    COUNT(*) as event_count
FROM safety_log
GROUP BY DATE(timestamp), severity, event_type
ORDER BY event_date DESC, severity""",
}

DEFAULT_CONFIG = (
    ("max_laser_power_watts", "10.0", "float", "Hard limit for laser power"),
    ("treatment_loop_frequency_hz", "10", "integer", "Control loop update rate"),
    ("photodiode_warning_threshold_percent", "15", "float", "Deviation % before warning"),
    ("photodiode_fault_threshold_percent", "30", "float", "Deviation % before fault"),
    ("video_resolution", "1920x1080", "string", "Recording resolution"),
    ("video_fps", "30", "integer", "Recording frame rate"),
    ("session_data_path", "data/sessions", "string", "Base path for session data"),
    ("auto_lock_minutes", "10", "integer", "Minutes of inactivity before the console locks"),
)


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _non_negative(column: str) -> str:
    return f"{column} IS NULL OR {column} >= 0"


def upgrade() -> None:
    """Create every table, index, view and trigger, and write the default configuration."""
    op.create_table(
        "tech_users",
        sa.Column("tech_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("full_name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("created_date", sa.DateTime(), server_default=NOW, nullable=True),
        sa.Column("last_login", sa.DateTime(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=TRUE, nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("must_change_password", sa.Boolean(), server_default=FALSE, nullable=False),
        sa.Column("failed_login_count", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.CheckConstraint(_in_list("role", ("technician", "engineer", "admin")), name="ck_tech_users_role"),
        sa.CheckConstraint("failed_login_count >= 0", name="ck_tech_users_failed_login_count"),
        sa.PrimaryKeyConstraint("tech_id"),
        sa.UniqueConstraint("username"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_tech_username", "tech_users", ["username"])
    op.create_index("idx_tech_active", "tech_users", ["is_active"])

    op.create_table(
        "subjects",
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("subject_code", sa.Text(), nullable=False),
        sa.Column("date_of_birth", sa.Date(), nullable=True),
        sa.Column("gender", sa.Text(), nullable=True),
        sa.Column("created_date", sa.DateTime(), server_default=NOW, nullable=True),
        sa.Column("created_by_tech_id", sa.Integer(), nullable=True),
        sa.Column("last_modified_date", sa.DateTime(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=TRUE, nullable=True),
        sa.CheckConstraint(
            "subject_code GLOB 'P-[0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9]'", name="ck_subjects_subject_code"
        ),
        sa.ForeignKeyConstraint(["created_by_tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("subject_id"),
        sa.UniqueConstraint("subject_code"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_subject_code", "subjects", ["subject_code"], unique=True)
    op.create_index("idx_subject_active", "subjects", ["is_active"])
    op.create_index("idx_subject_created_date", "subjects", ["created_date"])

    op.create_table(
        "protocols",
        sa.Column("protocol_id", sa.Integer(), nullable=False),
        sa.Column("protocol_name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("protocol_type", sa.Text(), nullable=False),
        sa.Column("protocol_data", sa.Text(), nullable=False),
        sa.Column("created_date", sa.DateTime(), server_default=NOW, nullable=True),
        sa.Column("created_by_tech_id", sa.Integer(), nullable=True),
        sa.Column("last_modified_date", sa.DateTime(), nullable=True),
        sa.Column("last_used_date", sa.DateTime(), nullable=True),
        sa.Column("usage_count", sa.Integer(), server_default=ZERO, nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=TRUE, nullable=True),
        sa.CheckConstraint("usage_count IS NULL OR usage_count >= 0", name="ck_protocols_usage_count"),
        sa.ForeignKeyConstraint(["created_by_tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("protocol_id"),
        sa.UniqueConstraint("protocol_name"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_protocol_name", "protocols", ["protocol_name"], unique=True)
    op.create_index("idx_protocol_type", "protocols", ["protocol_type"])
    op.create_index("idx_protocol_active", "protocols", ["is_active"])

    op.create_table(
        "sessions",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("tech_id", sa.Integer(), nullable=False),
        sa.Column("protocol_id", sa.Integer(), nullable=True),
        sa.Column("start_time", sa.DateTime(), nullable=False),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("abort_reason", sa.Text(), nullable=True),
        sa.Column("treatment_site", sa.Text(), nullable=True),
        sa.Column("treatment_notes", sa.Text(), nullable=True),
        sa.Column("protocol_name", sa.Text(), nullable=True),
        sa.Column("protocol_data_snapshot", sa.Text(), nullable=True),
        sa.Column("session_folder_path", sa.Text(), nullable=True),
        sa.Column("video_path", sa.Text(), nullable=True),
        sa.Column("total_laser_on_time_seconds", sa.REAL(), nullable=True),
        sa.Column("avg_power_watts", sa.REAL(), nullable=True),
        sa.Column("max_power_watts", sa.REAL(), nullable=True),
        sa.Column("total_energy_joules", sa.REAL(), nullable=True),
        sa.Column("post_treatment_notes", sa.Text(), nullable=True),
        sa.Column("created_date", sa.DateTime(), server_default=NOW, nullable=True),
        sa.CheckConstraint(
            _in_list("status", ("in_progress", "completed", "aborted", "paused")), name="ck_sessions_status"
        ),
        sa.CheckConstraint(_non_negative("duration_seconds"), name="ck_sessions_duration_seconds"),
        sa.CheckConstraint(
            _non_negative("total_laser_on_time_seconds"), name="ck_sessions_total_laser_on_time_seconds"
        ),
        sa.CheckConstraint(_non_negative("avg_power_watts"), name="ck_sessions_avg_power_watts"),
        sa.CheckConstraint(_non_negative("max_power_watts"), name="ck_sessions_max_power_watts"),
        sa.CheckConstraint(_non_negative("total_energy_joules"), name="ck_sessions_total_energy_joules"),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.subject_id"]),
        sa.ForeignKeyConstraint(["tech_id"], ["tech_users.tech_id"]),
        sa.ForeignKeyConstraint(["protocol_id"], ["protocols.protocol_id"]),
        sa.PrimaryKeyConstraint("session_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_session_subject", "sessions", ["subject_id"])
    op.create_index("idx_session_tech", "sessions", ["tech_id"])
    op.create_index("idx_session_start_time", "sessions", ["start_time"])
    op.create_index("idx_session_status", "sessions", ["status"])
    op.create_index("idx_session_date_status", "sessions", ["start_time", "status"])
    # Not in the seed: the seed's protocol usage query counts sessions per protocol, and foreign keys are to be
    # indexed ("Performance Considerations").
    op.create_index("idx_session_protocol", "sessions", ["protocol_id"])

    op.create_table(
        "treatment_events",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("time_offset_ms", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("laser_power_commanded_watts", sa.REAL(), nullable=True),
        sa.Column("laser_power_actual_watts", sa.REAL(), nullable=True),
        sa.Column("ring_size_mm", sa.REAL(), nullable=True),
        sa.Column("actuator_position_um", sa.REAL(), nullable=True),
        sa.Column("photodiode_voltage_v", sa.REAL(), nullable=True),
        sa.Column("footpedal_state", sa.Boolean(), nullable=True),
        sa.Column("smoothing_device_state", sa.Boolean(), nullable=True),
        sa.Column("interlock_status", sa.Text(), nullable=True),
        sa.Column("image_path", sa.Text(), nullable=True),
        sa.Column("video_timestamp_ms", sa.Integer(), nullable=True),
        sa.Column("event_details", sa.Text(), nullable=True),
        sa.CheckConstraint(
            _non_negative("laser_power_commanded_watts"),
            name="ck_treatment_events_laser_power_commanded_watts",
        ),
        sa.CheckConstraint(
            _non_negative("laser_power_actual_watts"), name="ck_treatment_events_laser_power_actual_watts"
        ),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.session_id"]),
        sa.PrimaryKeyConstraint("event_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_event_session", "treatment_events", ["session_id"])
    op.create_index("idx_event_timestamp", "treatment_events", ["timestamp"])
    op.create_index("idx_event_type", "treatment_events", ["event_type"])
    op.create_index("idx_event_session_time", "treatment_events", ["session_id", "time_offset_ms"])

    op.create_table(
        "session_recordings",
        sa.Column("recording_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("recording_type", sa.Text(), nullable=False),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.Column("file_size_bytes", sa.Integer(), nullable=True),
        sa.Column("duration_seconds", sa.REAL(), nullable=True),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("frame_count", sa.Integer(), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.CheckConstraint(
            _in_list("recording_type", ("video", "snapshot", "focus_stack")),
            name="ck_session_recordings_recording_type",
        ),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.session_id"]),
        sa.PrimaryKeyConstraint("recording_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_recording_session", "session_recordings", ["session_id"])
    op.create_index("idx_recording_type", "session_recordings", ["recording_type"])

    op.create_table(
        "safety_log",
        sa.Column("log_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=True),
        sa.Column("tech_id", sa.Integer(), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("system_state", sa.Text(), nullable=True),
        sa.Column("laser_state", sa.Text(), nullable=True),
        sa.Column("footpedal_state", sa.Boolean(), nullable=True),
        sa.Column("smoothing_device_state", sa.Boolean(), nullable=True),
        sa.Column("photodiode_voltage_v", sa.REAL(), nullable=True),
        sa.Column("action_taken", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.CheckConstraint(
            _in_list("severity", ("info", "warning", "critical", "emergency")), name="ck_safety_log_severity"
        ),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.session_id"]),
        sa.ForeignKeyConstraint(["tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("log_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_safety_timestamp", "safety_log", ["timestamp"])
    op.create_index("idx_safety_session", "safety_log", ["session_id"])
    op.create_index("idx_safety_severity", "safety_log", ["severity"])
    op.create_index("idx_safety_type", "safety_log", ["event_type"])

    op.create_table(
        "calibrations",
        sa.Column("calibration_id", sa.Integer(), nullable=False),
        sa.Column("calibration_date", sa.DateTime(), nullable=False),
        sa.Column("tech_id", sa.Integer(), nullable=False),
        sa.Column("device_type", sa.Text(), nullable=False),
        sa.Column("device_serial_number", sa.Text(), nullable=True),
        sa.Column("calibration_type", sa.Text(), nullable=False),
        sa.Column("calibration_data", sa.Text(), nullable=False),
        sa.Column("validation_data", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=TRUE, nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("calibration_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_calib_device", "calibrations", ["device_type"])
    op.create_index("idx_calib_date", "calibrations", ["calibration_date"])
    op.create_index("idx_calib_active", "calibrations", ["is_active"])

    system_config = op.create_table(
        "system_config",
        sa.Column("config_key", sa.Text(), nullable=False),
        sa.Column("config_value", sa.Text(), nullable=False),
        sa.Column("config_type", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("last_modified", sa.DateTime(), server_default=NOW, nullable=True),
        sa.Column("modified_by_tech_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            _in_list("config_type", ("string", "integer", "float", "boolean", "json")),
            name="ck_system_config_config_type",
        ),
        sa.ForeignKeyConstraint(["modified_by_tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("config_key"),
    )

    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("tech_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("entity_type", sa.Text(), nullable=True),
        sa.Column("entity_id", sa.Integer(), nullable=True),
        sa.Column("terminal", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=True),
        sa.CheckConstraint(_in_list("outcome", ("success", "failure")), name="ck_audit_log_outcome"),
        sa.ForeignKeyConstraint(["tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("audit_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_audit_timestamp", "audit_log", ["timestamp"])
    op.create_index("idx_audit_tech_time", "audit_log", ["tech_id", "timestamp"])

    op.create_table(
        "protocol_versions",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("protocol_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("protocol_data", sa.Text(), nullable=False),
        sa.Column("change_summary", sa.Text(), nullable=True),
        sa.Column("created_by_tech_id", sa.Integer(), nullable=True),
        sa.Column("created_date", sa.DateTime(), server_default=NOW, nullable=True),
        sa.CheckConstraint("version >= 1", name="ck_protocol_versions_version"),
        sa.ForeignKeyConstraint(["protocol_id"], ["protocols.protocol_id"]),
        sa.ForeignKeyConstraint(["created_by_tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("version_id"),
        sa.UniqueConstraint("protocol_id", "version", name="uq_protocol_versions_protocol_version"),
        sqlite_autoincrement=True,
    )

    for sql in VIEWS.values():
        op.execute(sql)

    for table in APPEND_ONLY_TABLES:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER trg_{table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )

    op.bulk_insert(
        system_config,
        [
            {"config_key": key, "config_value": value, "config_type": kind, "description": description}
            for key, value, kind, description in DEFAULT_CONFIG
        ],
    )
    op.execute(
        "INSERT INTO safety_log (timestamp, event_type, severity, description, system_state, action_taken) "
        "VALUES (CURRENT_TIMESTAMP, 'database_initialized', 'info', 'Database schema created', 'idle', 'none')"
    )


def downgrade() -> None:
    """Drop every trigger, view and table this revision created (all records are lost)."""
    for table in APPEND_ONLY_TABLES:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_no_{operation}")
    for view in reversed(tuple(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for table in (
        "protocol_versions",
        "audit_log",
        "system_config",
        "calibrations",
        "safety_log",
        "session_recordings",
        "treatment_events",
        "sessions",
        "protocols",
        "subjects",
        "tech_users",
    ):
        op.drop_table(table)
