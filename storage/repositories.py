"""Async repositories, one per aggregate, each working on a caller's :class:`AsyncSession`.

A repository adds, finds and changes rows; it flushes so that generated keys are known, but it never commits:
the caller owns the unit of work (``async with factory() as s: ...; await s.commit()``). A value that would
break a rule (an unknown role, a malformed subject code, a negative power) is refused with ``ValueError``
before anything is written.

The seed schema's six common queries and three views are methods here:

=================================  ================================================
seed                               method
=================================  ================================================
1 Find Subject by Code             :meth:`SubjectsRepository.find_subject_by_code`
2 Get All Sessions for Subject     :meth:`SessionsRepository.sessions_for_subject`
3 Get Treatment Events for Session :meth:`TreatmentEventsRepository.events_for_session`
4 Get Active Calibration           :meth:`CalibrationsRepository.active_calibration`
5 Safety Events in Last 24 Hours   :meth:`SafetyLogRepository.safety_events_last_24h`
6 Protocol Usage Statistics        :meth:`ProtocolsRepository.protocol_usage_statistics`
view active_sessions               :meth:`SessionsRepository.active_sessions`
view subject_session_history       :meth:`SessionsRepository.subject_session_history`
view safety_events_summary         :meth:`SafetyLogRepository.safety_events_summary`
=================================  ================================================
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Final

from sqlalchemy import Row, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.chain import CHAIN_COLUMNS, append_async, append_one_async
from storage.errors import ConfigValueError, StorageError
from storage.models import (
    AUDIT_OUTCOMES,
    CONFIG_TYPES,
    RECORDING_TYPES,
    ROLES,
    SESSION_STATUSES,
    AuditLog,
    Calibration,
    Protocol,
    ProtocolVersion,
    SafetyLog,
    SessionRecording,
    Subject,
    SystemConfig,
    TechUser,
    TreatmentEvent,
    TreatmentSession,
    utc_now,
)
from storage.safety_records import SafetyRecord

#: Columns a caller may give for one treatment event in :meth:`TreatmentEventsRepository.add_many`.
TREATMENT_EVENT_COLUMNS: Final = frozenset(c.key for c in TreatmentEvent.__table__.columns) - {
    "event_id",
    *CHAIN_COLUMNS,
}
#: Columns every treatment event must have.
TREATMENT_EVENT_REQUIRED: Final = frozenset({"session_id", "timestamp", "time_offset_ms", "event_type"})
_NON_NEGATIVE_EVENT_COLUMNS: Final = ("laser_power_commanded_watts", "laser_power_actual_watts")
_EVENT_INSERT_ORDER: Final = tuple(
    c.key for c in TreatmentEvent.__table__.columns if c.key in TREATMENT_EVENT_COLUMNS
)
_EVENT_REQUIRED_KEYS: Final = set(TREATMENT_EVENT_REQUIRED)


@dataclass(frozen=True, slots=True)
class _EventLayout:
    """One set of event columns, and where the checked and converted values sit in a row."""

    columns: tuple[str, ...]
    timestamp: int
    non_negative: tuple[tuple[int, str], ...]
    required: tuple[tuple[int, str], ...]
    json: tuple[tuple[int, str], ...]


@functools.lru_cache(maxsize=64)
def _event_layout(columns: tuple[str, ...]) -> _EventLayout:
    def positions(names: Iterable[str]) -> tuple[tuple[int, str], ...]:
        return tuple((columns.index(n), n) for n in names if n in columns)

    required = positions(sorted(_EVENT_REQUIRED_KEYS))
    return _EventLayout(
        columns=columns,
        timestamp=columns.index("timestamp"),
        non_negative=positions(_NON_NEGATIVE_EVENT_COLUMNS),
        required=required,
        json=positions(("interlock_status", "event_details")),
    )


_NON_NEGATIVE_SESSION_COLUMNS: Final = (
    "total_laser_on_time_seconds",
    "avg_power_watts",
    "max_power_watts",
    "total_energy_joules",
)


def _require_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _require_text(name: str, value: str | None) -> str:
    if value is None or not str(value).strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _require_non_negative(name: str, value: float | None) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")


def _json_text(name: str, value: Mapping[str, Any] | Sequence[Any] | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from exc
        return value
    return json.dumps(value, allow_nan=False, sort_keys=True)


def _as_date(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


# ---- rows


@dataclass(frozen=True, slots=True)
class SubjectSessionRow:
    """One row of seed query 2 (a subject's sessions, newest first); energy in joules."""

    session_id: int
    start_time: datetime
    end_time: datetime | None
    status: str
    protocol_name: str | None
    total_energy_joules: float | None
    technician: str


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of seed query 3: powers in watts, ring size in mm, photodiode in volts."""

    timestamp: datetime
    event_type: str
    laser_power_commanded_watts: float | None
    laser_power_actual_watts: float | None
    ring_size_mm: float | None
    photodiode_voltage_v: float | None


@dataclass(frozen=True, slots=True)
class SafetyEventRow:
    """One row of seed query 5 (safety events of the last 24 hours, newest first)."""

    timestamp: datetime
    event_type: str
    severity: str
    description: str
    session_id: int | None


@dataclass(frozen=True, slots=True)
class ProtocolUsageRow:
    """One row of seed query 6: ``actual_usage`` counts the sessions that used the protocol."""

    protocol_name: str
    usage_count: int | None
    last_used_date: datetime | None
    actual_usage: int


@dataclass(frozen=True, slots=True)
class ActiveSessionRow:
    """One row of the ``active_sessions`` view; ``duration_seconds`` is seconds since the start."""

    session_id: int
    subject_id: int
    subject_code: str
    tech_id: int
    tech_name: str
    start_time: datetime
    status: str
    protocol_name: str | None
    duration_seconds: int | None


@dataclass(frozen=True, slots=True)
class SubjectHistoryRow:
    """One row of the ``subject_session_history`` view (session fields are None for a subject with none)."""

    subject_id: int
    subject_code: str
    session_id: int | None
    start_time: datetime | None
    end_time: datetime | None
    status: str | None
    protocol_name: str | None
    total_laser_on_time_seconds: float | None
    avg_power_watts: float | None
    total_energy_joules: float | None
    technician: str | None


@dataclass(frozen=True, slots=True)
class SafetySummaryRow:
    """One row of the ``safety_events_summary`` view: events per day, severity and type."""

    event_date: date | None
    severity: str
    event_type: str
    event_count: int


# ---- users


class UsersRepository:
    """Console users (``tech_users``)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_username(self, username: str) -> TechUser | None:
        """Return the user with exactly this user name, or None."""
        result = await self.session.execute(select(TechUser).where(TechUser.username == username))
        return result.scalar_one_or_none()

    async def get_by_id(self, tech_id: int) -> TechUser | None:
        """Return the user with this id, or None."""
        return await self.session.get(TechUser, tech_id)

    async def add(self, user: TechUser) -> TechUser:
        """Insert a new user (role checked, user name unique) and return it with its ``tech_id`` set."""
        _require_text("username", user.username)
        _require_text("full_name", user.full_name)
        _require_choice("role", user.role, ROLES)
        if await self.get_by_username(user.username) is not None:
            raise ValueError(f"user name {user.username!r} is already taken")
        self.session.add(user)
        await self.session.flush()
        return user

    async def list_all(self, *, include_inactive: bool = True) -> list[TechUser]:
        """Return users ordered by user name; deactivated ones only if ``include_inactive``."""
        query = select(TechUser).order_by(TechUser.username)
        if not include_inactive:
            query = query.where(TechUser.is_active.is_(True))
        return list((await self.session.execute(query)).scalars())

    async def count_active_admins_with_password(self) -> int:
        """Count active admins who can log in (a password is set): the last one must never be removed."""
        query = (
            select(func.count())
            .select_from(TechUser)
            .where(
                TechUser.role == "admin", TechUser.is_active.is_(True), TechUser.password_hash.is_not(None)
            )
        )
        return int((await self.session.execute(query)).scalar_one())

    async def save(self, user: TechUser) -> TechUser:
        """Write the changes made to ``user`` (role checked) and return it."""
        _require_choice("role", user.role, ROLES)
        if user.failed_login_count is not None and user.failed_login_count < 0:
            raise ValueError(f"failed_login_count must be >= 0; got {user.failed_login_count}")
        self.session.add(user)
        await self.session.flush()
        return user


# ---- audit


class AuditRepository:
    """The append-only audit trail (``audit_log``)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(
        self,
        action: str,
        outcome: str,
        *,
        tech_id: int | None = None,
        username: str | None = None,
        entity_type: str | None = None,
        entity_id: int | None = None,
        terminal: str | None = None,
        details: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> AuditLog:
        """Append one audit record (``outcome`` is ``success`` or ``failure``; ``details`` stored as JSON)."""
        _require_text("action", action)
        _require_choice("outcome", outcome, AUDIT_OUTCOMES)
        row = {
            "timestamp": timestamp or utc_now(),
            "tech_id": tech_id,
            "username": username,
            "action": action,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "terminal": terminal,
            "outcome": outcome,
            "details": _json_text("details", details),
        }
        audit_id = await append_one_async(self.session, "audit_log", row)
        entry = await self.session.get(AuditLog, audit_id)
        if entry is None:  # pragma: no cover - written just above, in this transaction
            raise StorageError(f"audit row {audit_id} vanished after it was written")
        return entry

    async def recent(
        self, *, limit: int = 100, tech_id: int | None = None, action: str | None = None
    ) -> list[AuditLog]:
        """Return up to ``limit`` records, newest first, optionally of one user or one action."""
        if limit <= 0:
            raise ValueError(f"limit must be > 0; got {limit}")
        query = select(AuditLog).order_by(AuditLog.timestamp.desc(), AuditLog.audit_id.desc()).limit(limit)
        if tech_id is not None:
            query = query.where(AuditLog.tech_id == tech_id)
        if action is not None:
            query = query.where(AuditLog.action == action)
        return list((await self.session.execute(query)).scalars())


# ---- subjects


class SubjectsRepository:
    """Treated subjects, known by their code (the clinic's pattern, default ``P-YYYY-NNNN``)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def find_subject_by_code(self, subject_code: str) -> Subject | None:
        """Seed query 1: the subject with this code, or None."""
        result = await self.session.execute(select(Subject).where(Subject.subject_code == subject_code))
        return result.scalar_one_or_none()

    async def get_by_id(self, subject_id: int) -> Subject | None:
        """Return the subject with this id, or None."""
        return await self.session.get(Subject, subject_id)

    async def add(
        self,
        subject_code: str,
        *,
        created_by_tech_id: int | None = None,
        date_of_birth: date | None = None,
        gender: str | None = None,
        notes: str | None = None,
    ) -> Subject:
        """Insert a subject with an unused code. The code's form is the console's rule
        (``control.subject_codes``, checked before a subject is created); the database's CHECK keeps it to 1
        to 32 characters of ``A-Z a-z 0-9 - _``."""
        _require_text("subject_code", subject_code)
        if await self.find_subject_by_code(subject_code) is not None:
            raise ValueError(f"subject code {subject_code} already exists")
        subject = Subject(
            subject_code=subject_code,
            created_by_tech_id=created_by_tech_id,
            date_of_birth=date_of_birth,
            gender=gender,
            notes=notes,
        )
        self.session.add(subject)
        await self.session.flush()
        return subject

    async def search(self, code_prefix: str = "", *, limit: int = 50) -> list[Subject]:
        """Return active subjects whose code starts with ``code_prefix``, by code."""
        if limit <= 0:
            raise ValueError(f"limit must be > 0; got {limit}")
        escaped = code_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = (
            select(Subject)
            .where(Subject.subject_code.like(f"{escaped}%", escape="\\"), Subject.is_active.is_(True))
            .order_by(Subject.subject_code)
            .limit(limit)
        )
        return list((await self.session.execute(query)).scalars())


# ---- protocols


class ProtocolsRepository:
    """Protocol templates and their versions (a saved version is never rewritten)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, protocol_id: int) -> Protocol | None:
        """Return the protocol with this id, or None."""
        return await self.session.get(Protocol, protocol_id)

    async def get_by_name(self, protocol_name: str) -> Protocol | None:
        """Return the protocol with this name, or None."""
        result = await self.session.execute(select(Protocol).where(Protocol.protocol_name == protocol_name))
        return result.scalar_one_or_none()

    async def list_active(self) -> list[Protocol]:
        """Return active protocols by name."""
        query = select(Protocol).where(Protocol.is_active.is_(True)).order_by(Protocol.protocol_name)
        return list((await self.session.execute(query)).scalars())

    async def add(
        self,
        protocol_name: str,
        protocol_type: str,
        protocol_data: str,
        *,
        description: str | None = None,
        created_by_tech_id: int | None = None,
    ) -> Protocol:
        """Insert a protocol (``protocol_data`` JSON text) and its version 1."""
        _require_text("protocol_name", protocol_name)
        _require_text("protocol_type", protocol_type)
        _json_text("protocol_data", protocol_data)
        if await self.get_by_name(protocol_name) is not None:
            raise ValueError(f"a protocol named {protocol_name!r} already exists")
        protocol = Protocol(
            protocol_name=protocol_name,
            protocol_type=protocol_type,
            protocol_data=protocol_data,
            description=description,
            created_by_tech_id=created_by_tech_id,
        )
        self.session.add(protocol)
        await self.session.flush()
        self.session.add(
            ProtocolVersion(
                protocol_id=protocol.protocol_id,
                version=1,
                protocol_data=protocol_data,
                change_summary="created",
                created_by_tech_id=created_by_tech_id,
            )
        )
        await self.session.flush()
        return protocol

    async def add_version(
        self,
        protocol_id: int,
        protocol_data: str,
        *,
        change_summary: str | None = None,
        created_by_tech_id: int | None = None,
    ) -> ProtocolVersion:
        """Save a new version of a protocol and make it the protocol's current data."""
        _json_text("protocol_data", protocol_data)
        protocol = await self.get_by_id(protocol_id)
        if protocol is None:
            raise ValueError(f"no protocol with id {protocol_id}")
        latest = (
            await self.session.execute(
                select(func.max(ProtocolVersion.version)).where(ProtocolVersion.protocol_id == protocol_id)
            )
        ).scalar_one_or_none()
        version = ProtocolVersion(
            protocol_id=protocol_id,
            version=(latest or 0) + 1,
            protocol_data=protocol_data,
            change_summary=change_summary,
            created_by_tech_id=created_by_tech_id,
        )
        self.session.add(version)
        protocol.protocol_data = protocol_data
        protocol.last_modified_date = utc_now()
        await self.session.flush()
        return version

    async def versions(self, protocol_id: int) -> list[ProtocolVersion]:
        """Return every saved version of a protocol, oldest first."""
        query = (
            select(ProtocolVersion)
            .where(ProtocolVersion.protocol_id == protocol_id)
            .order_by(ProtocolVersion.version)
        )
        return list((await self.session.execute(query)).scalars())

    async def record_use(self, protocol_id: int, *, when: datetime | None = None) -> None:
        """Count one more use of the protocol and set its last-used time (UTC)."""
        result = await self.session.execute(
            update(Protocol)
            .where(Protocol.protocol_id == protocol_id)
            .values(usage_count=func.coalesce(Protocol.usage_count, 0) + 1, last_used_date=when or utc_now())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise ValueError(f"no protocol with id {protocol_id}")

    async def protocol_usage_statistics(self) -> list[ProtocolUsageRow]:
        """Seed query 6: active protocols by usage count, with the number of sessions that used each."""
        actual = (
            select(func.count())
            .select_from(TreatmentSession)
            .where(TreatmentSession.protocol_id == Protocol.protocol_id)
            .scalar_subquery()
        )
        query = (
            select(Protocol.protocol_name, Protocol.usage_count, Protocol.last_used_date, actual)
            .where(Protocol.is_active.is_(True))
            .order_by(Protocol.usage_count.desc())
        )
        return [ProtocolUsageRow(*row) for row in await self.session.execute(query)]


# ---- sessions


_ACTIVE_SESSIONS_SQL: Final = text(
    "SELECT session_id, subject_id, subject_code, tech_id, tech_name, start_time, status, protocol_name, "
    "duration_seconds FROM active_sessions ORDER BY start_time"
)
_HISTORY_SQL: Final = (
    "SELECT subject_id, subject_code, session_id, start_time, end_time, status, protocol_name, "
    "total_laser_on_time_seconds, avg_power_watts, total_energy_joules, technician "
    "FROM subject_session_history"
)


class SessionsRepository:
    """Treatment sessions (``sessions``) and their recordings."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, session_id: int) -> TreatmentSession | None:
        """Return the session with this id, or None."""
        return await self.session.get(TreatmentSession, session_id)

    async def add(self, treatment_session: TreatmentSession) -> TreatmentSession:
        """Insert a new session (status and summary values checked) and return it with its id."""
        self._check(treatment_session)
        self.session.add(treatment_session)
        await self.session.flush()
        return treatment_session

    async def save(self, treatment_session: TreatmentSession) -> TreatmentSession:
        """Write the changes made to a session (status and summary values checked)."""
        self._check(treatment_session)
        self.session.add(treatment_session)
        await self.session.flush()
        return treatment_session

    @staticmethod
    def _check(row: TreatmentSession) -> None:
        _require_choice("status", row.status, SESSION_STATUSES)
        for name in _NON_NEGATIVE_SESSION_COLUMNS:
            _require_non_negative(name, getattr(row, name))
        if row.duration_seconds is not None and row.duration_seconds < 0:
            raise ValueError(f"duration_seconds must be >= 0; got {row.duration_seconds}")
        if row.status == "aborted" and not (row.abort_reason or "").strip():
            raise ValueError("an aborted session needs an abort_reason")

    async def abort_interrupted(self, reason: str, *, when: datetime | None = None) -> list[int]:
        """Close every session left ``in_progress`` or ``paused`` as ``aborted``; return their ids."""
        _require_text("reason", reason)
        end = when or utc_now()
        query = select(TreatmentSession).where(TreatmentSession.status.in_(("in_progress", "paused")))
        closed: list[int] = []
        for row in (await self.session.execute(query)).scalars():
            row.status = "aborted"
            row.abort_reason = reason
            row.end_time = end
            row.duration_seconds = max(0, int((end - row.start_time).total_seconds()))
            closed.append(row.session_id)
        await self.session.flush()
        return closed

    async def add_recording(self, recording: SessionRecording) -> SessionRecording:
        """Insert a recording's metadata (type checked) and return it with its id."""
        _require_choice("recording_type", recording.recording_type, RECORDING_TYPES)
        _require_text("file_path", recording.file_path)
        self.session.add(recording)
        await self.session.flush()
        return recording

    async def sessions_for_subject(self, subject_id: int) -> list[SubjectSessionRow]:
        """Seed query 2: the subject's sessions with the technician's name, newest first."""
        query = (
            select(
                TreatmentSession.session_id,
                TreatmentSession.start_time,
                TreatmentSession.end_time,
                TreatmentSession.status,
                TreatmentSession.protocol_name,
                TreatmentSession.total_energy_joules,
                TechUser.full_name,
            )
            .join(TechUser, TreatmentSession.tech_id == TechUser.tech_id)
            .where(TreatmentSession.subject_id == subject_id)
            .order_by(TreatmentSession.start_time.desc())
        )
        return [SubjectSessionRow(*row) for row in await self.session.execute(query)]

    async def active_sessions(self) -> list[ActiveSessionRow]:
        """The ``active_sessions`` view: sessions in progress or paused, oldest first."""
        rows = await self.session.execute(_ACTIVE_SESSIONS_SQL)
        return [
            ActiveSessionRow(
                session_id=r.session_id,
                subject_id=r.subject_id,
                subject_code=r.subject_code,
                tech_id=r.tech_id,
                tech_name=r.tech_name,
                start_time=_as_datetime(r.start_time),  # type: ignore[arg-type]
                status=r.status,
                protocol_name=r.protocol_name,
                duration_seconds=r.duration_seconds,
            )
            for r in rows
        ]

    async def subject_session_history(self, subject_id: int | None = None) -> list[SubjectHistoryRow]:
        """The ``subject_session_history`` view, for one subject or (None) for all, in the view's order."""
        order = " ORDER BY subject_id, start_time DESC"
        if subject_id is None:
            rows: Iterable[Row[Any]] = await self.session.execute(text(_HISTORY_SQL + order))
        else:
            rows = await self.session.execute(
                text(_HISTORY_SQL + " WHERE subject_id = :subject_id" + order), {"subject_id": subject_id}
            )
        return [
            SubjectHistoryRow(
                subject_id=r.subject_id,
                subject_code=r.subject_code,
                session_id=r.session_id,
                start_time=_as_datetime(r.start_time),
                end_time=_as_datetime(r.end_time),
                status=r.status,
                protocol_name=r.protocol_name,
                total_laser_on_time_seconds=r.total_laser_on_time_seconds,
                avg_power_watts=r.avg_power_watts,
                total_energy_joules=r.total_energy_joules,
                technician=r.technician,
            )
            for r in rows
        ]


# ---- events


class TreatmentEventsRepository:
    """Events of treatment sessions (append-only; the database refuses UPDATE and DELETE)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, event: TreatmentEvent) -> TreatmentEvent:
        """Insert one event and return it with its id."""
        _require_text("event_type", event.event_type)
        for name in _NON_NEGATIVE_EVENT_COLUMNS:
            _require_non_negative(name, getattr(event, name))
        row = {name: getattr(event, name) for name in _EVENT_INSERT_ORDER}
        event_id = await append_one_async(self.session, "treatment_events", row)
        stored = await self.session.get(TreatmentEvent, event_id)
        if stored is None:  # pragma: no cover - written just above, in this transaction
            raise StorageError(f"event {event_id} vanished after it was written")
        return stored

    async def add_many(self, batch: Sequence[Mapping[str, Any]]) -> int:
        """Insert a batch of events with one ``executemany`` and return how many were inserted.

        Each mapping gives column values: ``session_id``, ``timestamp`` (naive UTC or aware datetime),
        ``time_offset_ms`` and ``event_type`` are required; powers are watts >= 0; ``interlock_status`` and
        ``event_details`` are JSON text or a mapping. The whole batch is checked before anything is written;
        the caller commits, typically once per batch (this is the recorder's hot path, so the rows go to the
        driver directly, converted here exactly as the models would store them).
        """
        if not batch:
            return 0
        present: set[str] = set().union(*(row.keys() for row in batch))
        if not present <= TREATMENT_EVENT_COLUMNS:
            for index, row in enumerate(batch):
                unknown = set(row.keys()) - TREATMENT_EVENT_COLUMNS
                if unknown:
                    raise ValueError(f"event {index}: unknown columns {', '.join(sorted(unknown))}")
        present |= _EVENT_REQUIRED_KEYS  # a batch lacking one is refused, row by row, below
        # Only the columns the batch gives are bound (the others are NULL either way).
        layout = _event_layout(tuple(name for name in _EVENT_INSERT_ORDER if name in present))
        columns = layout.columns
        # Column by column rather than row by row: this is the recorder's hot path, and a comprehension per
        # column costs a fraction of a Python loop with branches per value.
        rows: list[list[Any]] = [list(map(row.get, columns)) for row in batch]
        for position, name in layout.non_negative:
            bad = [
                i
                for i, values in enumerate(rows)
                if (value := values[position]) is not None
                and not (isinstance(value, (int, float)) and 0.0 <= value < math.inf)
            ]
            if bad:
                value = rows[bad[0]][position]
                raise ValueError(f"event {bad[0]}: {name} must be a finite number >= 0; got {value!r}")
        for position, name in layout.required:
            missing = [i for i, values in enumerate(rows) if values[position] is None]
            if missing:
                raise ValueError(f"event {missing[0]}: missing {name}")
        at = layout.timestamp
        for index, values in enumerate(rows):
            stamp = values[at]
            if stamp.__class__ is not datetime:
                if not isinstance(stamp, datetime):
                    raise ValueError(f"event {index}: timestamp must be a datetime; got {stamp!r}")
            if stamp.tzinfo is not None:
                stamp = stamp.astimezone(UTC).replace(tzinfo=None)
            values[at] = stamp.isoformat(" ", "microseconds")
        for position, name in layout.json:
            for index, values in enumerate(rows):
                if values[position] is not None:
                    values[position] = _json_text(f"event {index}: {name}", values[position])
        # Pending ORM changes are flushed first: the events may refer to a session row not yet written.
        await append_async(self.session, "treatment_events", columns, rows)
        return len(rows)

    async def events_for_session(self, session_id: int) -> list[EventRow]:
        """Seed query 3: a session's events in time order (by ``time_offset_ms``)."""
        query = (
            select(
                TreatmentEvent.timestamp,
                TreatmentEvent.event_type,
                TreatmentEvent.laser_power_commanded_watts,
                TreatmentEvent.laser_power_actual_watts,
                TreatmentEvent.ring_size_mm,
                TreatmentEvent.photodiode_voltage_v,
            )
            .where(TreatmentEvent.session_id == session_id)
            .order_by(TreatmentEvent.time_offset_ms)
        )
        return [EventRow(*row) for row in await self.session.execute(query)]

    async def count_for_session(self, session_id: int) -> int:
        """Return how many events a session has."""
        query = select(func.count()).where(TreatmentEvent.session_id == session_id)
        return int((await self.session.execute(query)).scalar_one())


# ---- safety


class SafetyLogRepository:
    """Safety events (append-only; the database refuses UPDATE and DELETE), as :class:`SafetyRecord`."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, record: SafetyRecord) -> int:
        """Append one safety event and return its ``log_id``; ``ValueError`` (nothing written) when the record
        cannot be stored. A record without a timestamp is stamped now (UTC)."""
        record.check()
        if record.timestamp is None:
            record = replace(record, timestamp=utc_now())
        return await append_one_async(self.session, "safety_log", record.columns())

    async def safety_events_last_24h(self) -> list[SafetyEventRow]:
        """Seed query 5: safety events of the last 24 hours (database clock, UTC), newest first."""
        query = (
            select(
                SafetyLog.timestamp,
                SafetyLog.event_type,
                SafetyLog.severity,
                SafetyLog.description,
                SafetyLog.session_id,
            )
            .where(SafetyLog.timestamp >= func.datetime("now", "-1 day"))
            .order_by(SafetyLog.timestamp.desc())
        )
        return [SafetyEventRow(*row) for row in await self.session.execute(query)]

    async def for_session(self, session_id: int) -> list[SafetyRecord]:
        """Return a session's safety events, oldest first."""
        query = select(SafetyLog).where(SafetyLog.session_id == session_id).order_by(SafetyLog.log_id)
        return [SafetyRecord.from_row(row) for row in (await self.session.execute(query)).scalars()]

    async def safety_events_summary(self) -> list[SafetySummaryRow]:
        """The ``safety_events_summary`` view: counts per day (newest first), severity and event type."""
        rows = await self.session.execute(
            text("SELECT event_date, severity, event_type, event_count FROM safety_events_summary")
        )
        return [SafetySummaryRow(_as_date(r[0]), r[1], r[2], int(r[3])) for r in rows]


# ---- calibrations


class CalibrationsRepository:
    """Device calibrations; one active calibration per device type and calibration type."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def active_calibration(self, device_type: str) -> Calibration | None:
        """Seed query 4: the newest active calibration of ``device_type``, or None."""
        query = (
            select(Calibration)
            .where(Calibration.device_type == device_type, Calibration.is_active.is_(True))
            .order_by(Calibration.calibration_date.desc())
            .limit(1)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def add(self, calibration: Calibration) -> Calibration:
        """Insert a calibration; when active, earlier active ones of the same device and type are retired."""
        _require_text("device_type", calibration.device_type)
        _require_text("calibration_type", calibration.calibration_type)
        _json_text("calibration_data", calibration.calibration_data)
        _json_text("validation_data", calibration.validation_data)
        if calibration.is_active is None or calibration.is_active:
            calibration.is_active = True
            await self.session.execute(
                update(Calibration)
                .where(
                    Calibration.device_type == calibration.device_type,
                    Calibration.calibration_type == calibration.calibration_type,
                    Calibration.is_active.is_(True),
                )
                .values(is_active=False)
                .execution_options(synchronize_session="fetch")
            )
        self.session.add(calibration)
        await self.session.flush()
        return calibration

    async def history(self, device_type: str) -> list[Calibration]:
        """Return every calibration of ``device_type``, newest first."""
        query = (
            select(Calibration)
            .where(Calibration.device_type == device_type)
            .order_by(Calibration.calibration_date.desc(), Calibration.calibration_id.desc())
        )
        return list((await self.session.execute(query)).scalars())


# ---- config


_MISSING: Final[Any] = object()


def parse_config_value(key: str, raw: str, config_type: str) -> Any:
    """Interpret a stored ``config_value`` by its ``config_type``; ConfigValueError if it does not fit."""
    try:
        if config_type == "string":
            return raw
        if config_type == "integer":
            return int(raw)
        if config_type == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError("not finite")
            return value
        if config_type == "boolean":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("not a boolean")
        if config_type == "json":
            return json.loads(raw)
    except ValueError as exc:
        raise ConfigValueError(f"config {key}: {raw!r} is not a valid {config_type} ({exc})") from exc
    raise ConfigValueError(f"config {key}: unknown config_type {config_type!r}")


def format_config_value(key: str, value: Any, config_type: str) -> str:
    """Turn a Python value into the stored text of ``config_type``; ConfigValueError if it does not fit."""
    _bad = ConfigValueError(f"config {key}: {value!r} is not a valid {config_type}")
    if config_type == "string":
        if not isinstance(value, str):
            raise _bad
        return value
    if config_type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad
        return str(value)
    if config_type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad
        return repr(float(value))
    if config_type == "boolean":
        if not isinstance(value, bool):
            raise _bad
        return "true" if value else "false"
    if config_type == "json":
        try:
            return json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise _bad from exc
    raise ConfigValueError(f"config {key}: unknown config_type {config_type!r}")


class ConfigRepository:
    """Typed system configuration (``system_config``)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_entry(self, key: str) -> SystemConfig | None:
        """Return the stored entry for ``key``, or None."""
        return await self.session.get(SystemConfig, key)

    async def get(self, key: str, default: Any = _MISSING) -> Any:
        """Return the value of ``key`` converted by its ``config_type``.

        A missing key returns ``default`` when one is given and raises ConfigValueError otherwise.
        """
        entry = await self.get_entry(key)
        if entry is None:
            if default is _MISSING:
                raise ConfigValueError(f"config {key}: no such setting")
            return default
        return parse_config_value(key, entry.config_value, entry.config_type)

    async def probe_writable(self) -> None:
        """Take the database's write lock without changing anything: raises when the database cannot be
        written (locked past the busy timeout, read-only, disk I/O error)."""
        await self.session.execute(text("UPDATE system_config SET config_value = config_value WHERE 0"))

    async def all(self) -> list[SystemConfig]:
        """Return every entry, by key."""
        query = select(SystemConfig).order_by(SystemConfig.config_key)
        return list((await self.session.execute(query)).scalars())

    async def set(
        self,
        key: str,
        value: Any,
        *,
        modified_by: int | None,
        config_type: str | None = None,
        description: str | None = None,
    ) -> SystemConfig:
        """Set ``key`` to ``value`` (checked against its type) and record who changed it and when (UTC).

        An existing key keeps its type (``config_type``, if given, must match); a new key needs one.
        """
        _require_text("key", key)
        entry = await self.get_entry(key)
        if entry is None:
            if config_type is None:
                raise ConfigValueError(f"config {key}: new setting needs a config_type")
            _require_choice("config_type", config_type, CONFIG_TYPES)
            entry = SystemConfig(config_key=key, config_type=config_type, description=description)
        elif config_type is not None and config_type != entry.config_type:
            raise ConfigValueError(f"config {key}: is a {entry.config_type}, not a {config_type}")
        text_value = format_config_value(key, value, entry.config_type)
        entry.config_value = text_value
        entry.modified_by_tech_id = modified_by
        entry.last_modified = utc_now()
        if description is not None:
            entry.description = description
        self.session.add(entry)
        await self.session.flush()
        return entry


__all__ = [
    "ActiveSessionRow",
    "AuditRepository",
    "CalibrationsRepository",
    "ConfigRepository",
    "EventRow",
    "ProtocolUsageRow",
    "ProtocolsRepository",
    "SafetyEventRow",
    "SafetyLogRepository",
    "SafetySummaryRow",
    "SessionsRepository",
    "SubjectHistoryRow",
    "SubjectSessionRow",
    "SubjectsRepository",
    "TreatmentEventsRepository",
    "UsersRepository",
    "format_config_value",
    "parse_config_value",
]
