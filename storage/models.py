"""The records database as SQLAlchemy 2.0 declarative models.

The nine TOSCA tables keep the seed schema's table names, column names, column types, server defaults,
foreign keys and index names exactly, so the seed's sample INSERTs, views and common queries run
unchanged. Two tables come from the neighbouring clinical systems: ``audit_log`` (who did what, from which
terminal, with what outcome) and ``protocol_versions`` (every saved version of a protocol, never rewritten).

Conventions:

* Times are naive UTC, stored in SQLite's text form ``YYYY-MM-DD HH:MM:SS[.ffffff]`` so they compare
  correctly with ``CURRENT_TIMESTAMP`` and ``datetime('now', ...)``. :class:`UTCDateTime` converts an aware
  datetime to UTC before it is written; :func:`utc_now` is the clock to use.
* Powers are in watts, energies in joules, durations in seconds unless a column name says otherwise
  (``time_offset_ms``, ``actuator_position_um``, ``ring_size_mm``).
* Every enumeration and every power, energy and laser-on-time column has a named CHECK constraint, here and in
  the migration (the migration owns the schema; ``tests/storage`` checks the two never drift apart).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Final

from sqlalchemy import (
    REAL,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from storage.safety_records import SEVERITIES

#: The roles a console user can have, weakest first.
ROLES: Final = ("technician", "engineer", "admin")
#: Allowed ``sessions.status`` values.
SESSION_STATUSES: Final = ("in_progress", "completed", "aborted", "paused")
#: Allowed ``session_recordings.recording_type`` values.
RECORDING_TYPES: Final = ("video", "snapshot", "focus_stack")
#: Allowed ``system_config.config_type`` values.
CONFIG_TYPES: Final = ("string", "integer", "float", "boolean", "json")
#: Allowed ``protocol_versions.status`` values (revision 20261207_004).
PROTOCOL_VERSION_STATUSES: Final = ("draft", "submitted", "approved", "rejected")
#: Allowed ``audit_log.outcome`` values.
AUDIT_OUTCOMES: Final = ("success", "failure")
#: ``subjects.subject_code`` CHECK: 1 to 32 characters of ``A-Z a-z 0-9 - _`` (a clinic's own pattern; codes
#: are also folder names). The console checks codes against the clinic's pattern (``control.subject_codes``).
SUBJECT_CODE_CHECK: Final = (
    "length(subject_code) BETWEEN 1 AND 32 AND subject_code NOT GLOB '*[^A-Za-z0-9_-]*'"
)
#: Tables that triggers in the database keep append-only.
APPEND_ONLY_TABLES: Final = ("treatment_events", "safety_log", "audit_log")
#: The record chains: the append-only tables and the session records (docs/records-chain.md).
CHAINED_TABLES: Final = (*APPEND_ONLY_TABLES, "session_records")
#: ``session_records.kind`` values.
SESSION_RECORD_KINDS: Final = ("final", "signature", "addendum")
#: The seed's convenience views.
VIEW_NAMES: Final = ("active_sessions", "subject_session_history", "safety_events_summary")


def utc_now() -> datetime:
    """Return the current time as a naive UTC datetime (the form stored in the database)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def _non_negative(column: str) -> str:
    return f"{column} IS NULL OR {column} >= 0"


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DATETIME`` column holding naive UTC.

    An aware datetime is converted to UTC and stripped of its zone before it is written; a naive one is taken
    to be UTC already. Values read back are naive UTC.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


class Base(DeclarativeBase):
    """Declarative base of every TOSCA table."""

    metadata = MetaData()
    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012
        datetime: UTCDateTime(),
        date: Date(),
        bool: Boolean(),
        int: Integer(),
        float: REAL(),
        str: Text(),
    }


_NOW = text("CURRENT_TIMESTAMP")
_TRUE = text("1")
_FALSE = text("0")
_ZERO = text("0")


class TechUser(Base):
    """A console user (technician, engineer or admin).

    ``password_hash`` NULL means the account cannot log in (created but no password set yet).
    ``locked_until`` is naive UTC; ``failed_login_count`` counts consecutive failures since the last success.
    """

    __tablename__ = "tech_users"
    __table_args__ = (
        CheckConstraint(_in_list("role", ROLES), name="ck_tech_users_role"),
        CheckConstraint("failed_login_count >= 0", name="ck_tech_users_failed_login_count"),
        Index("idx_tech_username", "username"),
        Index("idx_tech_active", "is_active"),
        {"sqlite_autoincrement": True},
    )

    tech_id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(unique=True)
    full_name: Mapped[str]
    role: Mapped[str]
    created_date: Mapped[datetime | None] = mapped_column(server_default=_NOW)
    last_login: Mapped[datetime | None]
    is_active: Mapped[bool | None] = mapped_column(server_default=_TRUE)
    notes: Mapped[str | None]
    password_hash: Mapped[str | None]
    must_change_password: Mapped[bool] = mapped_column(server_default=_FALSE)
    failed_login_count: Mapped[int] = mapped_column(server_default=_ZERO)
    locked_until: Mapped[datetime | None]


class Subject(Base):
    """A treated subject, known only by a pseudonymous code of the clinic's pattern."""

    __tablename__ = "subjects"
    __table_args__ = (
        CheckConstraint(SUBJECT_CODE_CHECK, name="ck_subjects_subject_code"),
        Index("idx_subject_code", "subject_code", unique=True),
        Index("idx_subject_active", "is_active"),
        Index("idx_subject_created_date", "created_date"),
        {"sqlite_autoincrement": True},
    )

    subject_id: Mapped[int] = mapped_column(primary_key=True)
    subject_code: Mapped[str] = mapped_column(unique=True)
    date_of_birth: Mapped[date | None]
    gender: Mapped[str | None]
    created_date: Mapped[datetime | None] = mapped_column(server_default=_NOW)
    created_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    last_modified_date: Mapped[datetime | None]
    notes: Mapped[str | None]
    is_active: Mapped[bool | None] = mapped_column(server_default=_TRUE)


class Protocol(Base):
    """A saved treatment protocol (template); ``protocol_data`` is the seed's JSON format."""

    __tablename__ = "protocols"
    __table_args__ = (
        CheckConstraint("usage_count IS NULL OR usage_count >= 0", name="ck_protocols_usage_count"),
        Index("idx_protocol_name", "protocol_name", unique=True),
        Index("idx_protocol_type", "protocol_type"),
        Index("idx_protocol_active", "is_active"),
        {"sqlite_autoincrement": True},
    )

    protocol_id: Mapped[int] = mapped_column(primary_key=True)
    protocol_name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str | None]
    protocol_type: Mapped[str]
    protocol_data: Mapped[str]
    created_date: Mapped[datetime | None] = mapped_column(server_default=_NOW)
    created_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    last_modified_date: Mapped[datetime | None]
    last_used_date: Mapped[datetime | None]
    usage_count: Mapped[int | None] = mapped_column(server_default=_ZERO)
    is_active: Mapped[bool | None] = mapped_column(server_default=_TRUE)


class TreatmentSession(Base):
    """One treatment session (table ``sessions``).

    Summary columns are filled at the end: laser-on time in seconds, time-weighted average and maximum
    measured power in watts, delivered energy in joules. The telemetry columns describe the session's
    JSON-lines telemetry file: its path, its number of complete lines and the SHA-256 of its bytes (64
    lower-case hex digits). ``session_uid`` is the session's unique identifier, the name of its folder (NULL
    for sessions recorded before it existed, whose folders are named by their id).
    """

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint(_in_list("status", SESSION_STATUSES), name="ck_sessions_status"),
        CheckConstraint(_non_negative("duration_seconds"), name="ck_sessions_duration_seconds"),
        CheckConstraint(
            _non_negative("total_laser_on_time_seconds"), name="ck_sessions_total_laser_on_time_seconds"
        ),
        CheckConstraint(_non_negative("avg_power_watts"), name="ck_sessions_avg_power_watts"),
        CheckConstraint(_non_negative("max_power_watts"), name="ck_sessions_max_power_watts"),
        CheckConstraint(_non_negative("total_energy_joules"), name="ck_sessions_total_energy_joules"),
        CheckConstraint(_non_negative("telemetry_line_count"), name="ck_sessions_telemetry_line_count"),
        CheckConstraint(
            "telemetry_sha256 IS NULL OR (length(telemetry_sha256) = 64 "
            "AND telemetry_sha256 NOT GLOB '*[^0-9a-f]*')",
            name="ck_sessions_telemetry_sha256",
        ),
        CheckConstraint(
            "session_uid IS NULL OR (length(session_uid) BETWEEN 8 AND 64 "
            "AND session_uid NOT GLOB '*[^0-9A-Za-z-]*')",
            name="ck_sessions_session_uid",
        ),
        Index("uq_sessions_session_uid", "session_uid", unique=True),
        Index("idx_session_subject", "subject_id"),
        Index("idx_session_tech", "tech_id"),
        Index("idx_session_start_time", "start_time"),
        Index("idx_session_status", "status"),
        Index("idx_session_date_status", "start_time", "status"),
        Index("idx_session_protocol", "protocol_id"),
        {"sqlite_autoincrement": True},
    )

    session_id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.subject_id"))
    tech_id: Mapped[int] = mapped_column(ForeignKey("tech_users.tech_id"))
    protocol_id: Mapped[int | None] = mapped_column(ForeignKey("protocols.protocol_id"))
    start_time: Mapped[datetime]
    end_time: Mapped[datetime | None]
    duration_seconds: Mapped[int | None]
    status: Mapped[str]
    abort_reason: Mapped[str | None]
    treatment_site: Mapped[str | None]
    treatment_notes: Mapped[str | None]
    protocol_name: Mapped[str | None]
    protocol_data_snapshot: Mapped[str | None]
    session_folder_path: Mapped[str | None]
    video_path: Mapped[str | None]
    total_laser_on_time_seconds: Mapped[float | None]
    avg_power_watts: Mapped[float | None]
    max_power_watts: Mapped[float | None]
    total_energy_joules: Mapped[float | None]
    post_treatment_notes: Mapped[str | None]
    created_date: Mapped[datetime | None] = mapped_column(server_default=_NOW)
    telemetry_path: Mapped[str | None]
    telemetry_line_count: Mapped[int | None]
    telemetry_sha256: Mapped[str | None]
    session_uid: Mapped[str | None]


class TreatmentEvent(Base):
    """One event of a session (append-only).

    Powers in watts, ring size in mm, actuator position in µm, photodiode in volts, offsets in ms.
    """

    __tablename__ = "treatment_events"
    __table_args__ = (
        CheckConstraint(
            _non_negative("laser_power_commanded_watts"),
            name="ck_treatment_events_laser_power_commanded_watts",
        ),
        CheckConstraint(
            _non_negative("laser_power_actual_watts"), name="ck_treatment_events_laser_power_actual_watts"
        ),
        Index("idx_event_session", "session_id"),
        Index("idx_event_timestamp", "timestamp"),
        Index("idx_event_type", "event_type"),
        Index("idx_event_session_time", "session_id", "time_offset_ms"),
        {"sqlite_autoincrement": True},
    )

    event_id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.session_id"))
    timestamp: Mapped[datetime]
    time_offset_ms: Mapped[int]
    event_type: Mapped[str]
    laser_power_commanded_watts: Mapped[float | None]
    laser_power_actual_watts: Mapped[float | None]
    ring_size_mm: Mapped[float | None]
    actuator_position_um: Mapped[float | None]
    photodiode_voltage_v: Mapped[float | None]
    footpedal_state: Mapped[bool | None]
    smoothing_device_state: Mapped[bool | None]
    interlock_status: Mapped[str | None]
    image_path: Mapped[str | None]
    video_timestamp_ms: Mapped[int | None]
    event_details: Mapped[str | None]
    # The record chain (revision 20261207_002, docs/records-chain.md): NULL on rows written before it.
    chain_seq: Mapped[int | None]
    chain_prev: Mapped[bytes | None] = mapped_column(LargeBinary)
    chain_mac: Mapped[bytes | None] = mapped_column(LargeBinary)


class SessionRecording(Base):
    """A recorded video or image file of a session; sizes in bytes, durations in seconds."""

    __tablename__ = "session_recordings"
    __table_args__ = (
        CheckConstraint(
            _in_list("recording_type", RECORDING_TYPES), name="ck_session_recordings_recording_type"
        ),
        Index("idx_recording_session", "session_id"),
        Index("idx_recording_type", "recording_type"),
        {"sqlite_autoincrement": True},
    )

    recording_id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.session_id"))
    recording_type: Mapped[str]
    file_path: Mapped[str]
    file_size_bytes: Mapped[int | None]
    duration_seconds: Mapped[float | None]
    timestamp: Mapped[datetime]
    frame_count: Mapped[int | None]
    resolution: Mapped[str | None]
    notes: Mapped[str | None]


class SafetyLog(Base):
    """A safety-related event (append-only); photodiode in volts, ``details`` JSON."""

    __tablename__ = "safety_log"
    __table_args__ = (
        CheckConstraint(_in_list("severity", SEVERITIES), name="ck_safety_log_severity"),
        Index("idx_safety_timestamp", "timestamp"),
        Index("idx_safety_session", "session_id"),
        Index("idx_safety_severity", "severity"),
        Index("idx_safety_type", "event_type"),
        {"sqlite_autoincrement": True},
    )

    log_id: Mapped[int] = mapped_column(primary_key=True)
    timestamp: Mapped[datetime]
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.session_id"))
    tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    event_type: Mapped[str]
    severity: Mapped[str]
    description: Mapped[str]
    system_state: Mapped[str | None]
    laser_state: Mapped[str | None]
    footpedal_state: Mapped[bool | None]
    smoothing_device_state: Mapped[bool | None]
    photodiode_voltage_v: Mapped[float | None]
    action_taken: Mapped[str | None]
    details: Mapped[str | None]
    # The record chain (revision 20261207_002, docs/records-chain.md): NULL on rows written before it.
    chain_seq: Mapped[int | None]
    chain_prev: Mapped[bytes | None] = mapped_column(LargeBinary)
    chain_mac: Mapped[bytes | None] = mapped_column(LargeBinary)


class Calibration(Base):
    """A device calibration; ``calibration_data`` and ``validation_data`` are JSON."""

    __tablename__ = "calibrations"
    __table_args__ = (
        Index("idx_calib_device", "device_type"),
        Index("idx_calib_date", "calibration_date"),
        Index("idx_calib_active", "is_active"),
        {"sqlite_autoincrement": True},
    )

    calibration_id: Mapped[int] = mapped_column(primary_key=True)
    calibration_date: Mapped[datetime]
    tech_id: Mapped[int] = mapped_column(ForeignKey("tech_users.tech_id"))
    device_type: Mapped[str]
    device_serial_number: Mapped[str | None]
    calibration_type: Mapped[str]
    calibration_data: Mapped[str]
    validation_data: Mapped[str | None]
    is_active: Mapped[bool | None] = mapped_column(server_default=_TRUE)
    notes: Mapped[str | None]


class SystemConfig(Base):
    """A configuration entry: ``config_value`` is text, interpreted according to ``config_type``."""

    __tablename__ = "system_config"
    __table_args__ = (
        CheckConstraint(_in_list("config_type", CONFIG_TYPES), name="ck_system_config_config_type"),
    )

    config_key: Mapped[str] = mapped_column(primary_key=True)
    config_value: Mapped[str]
    config_type: Mapped[str]
    description: Mapped[str | None]
    last_modified: Mapped[datetime | None] = mapped_column(server_default=_NOW)
    modified_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))


class AuditLog(Base):
    """Who did what to which record, when, from which terminal, with what outcome (append-only).

    ``username`` is the name as typed at login (it may match no user); ``terminal`` is the tty name or the SSH
    client address; ``details`` is JSON.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(_in_list("outcome", AUDIT_OUTCOMES), name="ck_audit_log_outcome"),
        Index("idx_audit_timestamp", "timestamp"),
        Index("idx_audit_tech_time", "tech_id", "timestamp"),
        # Browsing by user, action or outcome, newest first (revision 20261207_001).
        Index("idx_audit_user_time", "username", "timestamp"),
        Index("idx_audit_action_time", "action", "timestamp"),
        Index("idx_audit_outcome_time", "outcome", "timestamp"),
        {"sqlite_autoincrement": True},
    )

    audit_id: Mapped[int] = mapped_column(primary_key=True)
    timestamp: Mapped[datetime]
    tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    username: Mapped[str | None]
    action: Mapped[str]
    entity_type: Mapped[str | None]
    entity_id: Mapped[int | None]
    terminal: Mapped[str | None]
    outcome: Mapped[str]
    details: Mapped[str | None]
    # The record chain (revision 20261207_002, docs/records-chain.md): NULL on rows written before it.
    chain_seq: Mapped[int | None]
    chain_prev: Mapped[bytes | None] = mapped_column(LargeBinary)
    chain_mac: Mapped[bytes | None] = mapped_column(LargeBinary)


class ProtocolVersion(Base):
    """One saved version of a protocol; versions are numbered 1, 2, ... per protocol and their data is never
    rewritten.

    The approval columns (revision 20261207_004) say where the version is in its approval: ``draft`` when
    saved, ``submitted`` for approval, then ``approved`` or ``rejected`` (with the reason), each with who and
    when. An approved version with no approving user was approved by the system (a shipped protocol).
    """

    __tablename__ = "protocol_versions"
    __table_args__ = (
        UniqueConstraint("protocol_id", "version", name="uq_protocol_versions_protocol_version"),
        CheckConstraint("version >= 1", name="ck_protocol_versions_version"),
        CheckConstraint(_in_list("status", PROTOCOL_VERSION_STATUSES), name="ck_protocol_versions_status"),
        {"sqlite_autoincrement": True},
    )

    version_id: Mapped[int] = mapped_column(primary_key=True)
    protocol_id: Mapped[int] = mapped_column(ForeignKey("protocols.protocol_id"))
    version: Mapped[int]
    protocol_data: Mapped[str]
    change_summary: Mapped[str | None]
    created_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    created_date: Mapped[datetime | None] = mapped_column(server_default=_NOW)
    status: Mapped[str] = mapped_column(server_default=text("'draft'"))
    submitted_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    submitted_at: Mapped[datetime | None]
    approved_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    approved_at: Mapped[datetime | None]
    rejected_by_tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    rejected_at: Mapped[datetime | None]
    rejection_reason: Mapped[str | None]


class ChainCheckpoint(Base):
    """A signed checkpoint of one record chain: its length and head hash at ``created_at`` (append-only;
    revision 20261207_002, docs/records-chain.md). ``reason`` says what took it (``seal``, ``session_end``,
    ``backup``, ``manual``); ``signature`` is Ed25519 over the encoding in the docs."""

    __tablename__ = "chain_checkpoints"
    __table_args__ = (
        CheckConstraint(_in_list("chain", CHAINED_TABLES), name="ck_chain_checkpoints_chain"),
        CheckConstraint("length >= 0", name="ck_chain_checkpoints_length"),
        Index("idx_checkpoint_chain", "chain", "checkpoint_id"),
        {"sqlite_autoincrement": True},
    )

    checkpoint_id: Mapped[int] = mapped_column(primary_key=True)
    chain: Mapped[str]
    length: Mapped[int]
    head_hash: Mapped[bytes] = mapped_column(LargeBinary)
    head_row_id: Mapped[int]
    created_at: Mapped[datetime]
    reason: Mapped[str]
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class SessionRecord(Base):
    """One row of the session records chain (append-only; revision 20261207_005, docs/records-chain.md): a
    finished session's final record (``final``, its summary as JSON in ``summary``), an electronic signature
    (``signature``) or a signed addendum (``addendum``, its notes in ``notes``). ``record_hash`` is the
    SHA-256 (hex) of the session's record as signed. Written only through ``storage.signatures``."""

    __tablename__ = "session_records"
    __table_args__ = (
        CheckConstraint(_in_list("kind", SESSION_RECORD_KINDS), name="ck_session_records_kind"),
        Index("idx_session_records_session", "session_id", "kind"),
        {"sqlite_autoincrement": True},
    )

    record_id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.session_id"))
    kind: Mapped[str]
    recorded_at: Mapped[datetime]
    tech_id: Mapped[int | None] = mapped_column(ForeignKey("tech_users.tech_id"))
    username: Mapped[str | None]
    printed_name: Mapped[str | None]
    meaning: Mapped[str | None]
    record_hash: Mapped[str]
    summary: Mapped[str | None]
    notes: Mapped[str | None]
    chain_seq: Mapped[int | None]
    chain_prev: Mapped[bytes | None] = mapped_column(LargeBinary)
    chain_mac: Mapped[bytes | None] = mapped_column(LargeBinary)


class RetentionPermit(Base):
    """Holds a row only inside a retention run's transaction: the delete triggers of the chained tables and
    of ``sessions`` refuse a delete without one (revision 20261207_005)."""

    __tablename__ = "retention_permit"

    permit_id: Mapped[int] = mapped_column(primary_key=True)
    granted_at: Mapped[datetime]
