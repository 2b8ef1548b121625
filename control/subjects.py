"""Subjects: finding, creating, editing, deactivating, and each subject's treatment history.

A subject is known only by a pseudonymous code of the clinic's pattern, the setting ``subject_code_pattern``
(default ``P-YYYY-NNNN``: ``YYYY`` the year it was created, ``NNNN`` its number within that year, from 0001;
the pattern language is in :mod:`control.subject_codes`). :meth:`SubjectService.next_code` gives the next free
number of a year, counting the codes in the database and, when the service knows the data directory, the
codes its session folders and its issued codes file show were issued before (a database restored from an
older backup does not know them); a typed code must match the pattern and must never have been issued. When
two consoles create a subject at the same moment, the database's UNIQUE constraint on ``subject_code`` refuses
the second insert and :meth:`SubjectService.create` retries with the next number, so no code is ever given
twice. Each created code is appended to the issued codes file before the subject is written.

Checks made before anything is written (each refusal raises :class:`SubjectError` with a message a person can
act on, and changes nothing): the code's form and that it is unused, a birth date not in the future nor before
:data:`EARLIEST_BIRTH_DATE`, a gender from :data:`GENDERS` (the HL7 administrative genders; the schema leaves
the column free, so the console is what keeps it to a known set), notes of at most :data:`MAX_NOTES_LENGTH`
characters, and that the creating user exists.

Every change writes an ``audit_log`` row (entity ``subject``) in the same transaction as the change.
Deactivating hides a subject from the default search and prevents new sessions for it; the records stay.

Times are naive UTC from the service's clock. Summary numbers in the history: laser-on time in seconds,
average power in watts, energy in joules.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.clock import Clock, utc_now
from control.sessions import ACTION_SUBJECT_CREATE, ENTITY_SUBJECT, OPEN_STATUSES
from control.settings import read_subject_code_pattern
from control.subject_codes import CodePattern, CodePatternError, codes_on_disk, record_issued
from storage import AuditRepository, DataDir, SessionsRepository, Subject, TechUser, TreatmentSession

#: Values accepted in ``subjects.gender`` (None means not recorded).
GENDERS: Final = ("female", "male", "other", "unknown")
#: Earliest birth date accepted.
EARLIEST_BIRTH_DATE: Final = date(1900, 1, 1)
#: Longest subject note accepted, in characters.
MAX_NOTES_LENGTH: Final = 2000
#: How many times :meth:`SubjectService.create` tries the next number after losing a race for a code.
CREATE_ATTEMPTS: Final = 20
#: Most rows :meth:`SubjectService.find` returns in one call.
MAX_FIND_LIMIT: Final = 10_000

#: ``audit_log.action`` values written by this module (``subject_create`` is shared with session opening).
ACTION_SUBJECT_UPDATE: Final = "subject_update"
ACTION_SUBJECT_DEACTIVATE: Final = "subject_deactivate"
ACTION_SUBJECT_REACTIVATE: Final = "subject_reactivate"


class SubjectError(ValueError):
    """A subject operation was refused; nothing was changed. The message says why, in one line."""


@dataclass(frozen=True, slots=True)
class SubjectInfo:
    """One subject as the console shows it: the ``subjects`` row, plus how many sessions it has and when the
    newest began (naive UTC; None when it has none)."""

    subject_id: int
    subject_code: str
    date_of_birth: date | None
    gender: str | None
    created_date: datetime | None
    created_by_tech_id: int | None
    last_modified_date: datetime | None
    notes: str | None
    is_active: bool
    session_count: int
    last_session: datetime | None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One session of a subject (from the ``subject_session_history`` view).

    Attributes:
        session_id: the session's id.
        start_time: when it began (naive UTC).
        end_time: when it ended (naive UTC), None while open.
        status: ``in_progress``, ``paused``, ``completed`` or ``aborted``.
        protocol_name: the protocol's name as recorded when the session opened.
        laser_on_time_s: seconds with the laser on (None until the session ends).
        avg_power_w: time-weighted average measured power while on, W (None if never on).
        energy_j: delivered energy, J (None until the session ends).
        technician: the full name of the user who ran it.
    """

    session_id: int
    start_time: datetime | None
    end_time: datetime | None
    status: str | None
    protocol_name: str | None
    laser_on_time_s: float | None
    avg_power_w: float | None
    energy_j: float | None
    technician: str | None


@dataclass(frozen=True, slots=True)
class HistoryTotals:
    """Totals over a subject's sessions: how many, laser-on time in seconds, delivered energy in joules
    (sessions with no summary yet count as zero)."""

    sessions: int
    completed: int
    laser_on_time_s: float
    energy_j: float


def history_totals(rows: Sequence[HistoryRow]) -> HistoryTotals:
    """Add up a subject's history."""
    return HistoryTotals(
        sessions=len(rows),
        completed=sum(1 for row in rows if row.status == "completed"),
        laser_on_time_s=math.fsum(row.laser_on_time_s or 0.0 for row in rows),
        energy_j=math.fsum(row.energy_j or 0.0 for row in rows),
    )


def check_gender(gender: str | None) -> str | None:
    """Return ``gender`` (None or one of :data:`GENDERS`); SubjectError for anything else."""
    if gender is None or gender in GENDERS:
        return gender
    raise SubjectError(f"gender must be one of {', '.join(GENDERS)} (or not recorded); got {gender!r}")


def check_birth_date(date_of_birth: date | None, today: date) -> date | None:
    """Return ``date_of_birth`` if it is None or between :data:`EARLIEST_BIRTH_DATE` and ``today``."""
    if date_of_birth is None:
        return None
    if isinstance(date_of_birth, datetime) or not isinstance(date_of_birth, date):
        raise SubjectError(f"date of birth must be a date; got {date_of_birth!r}")
    if date_of_birth > today:
        raise SubjectError(
            f"date of birth {date_of_birth.isoformat()} is in the future (today is {today.isoformat()})"
        )
    if date_of_birth < EARLIEST_BIRTH_DATE:
        raise SubjectError(
            f"date of birth {date_of_birth.isoformat()} is before {EARLIEST_BIRTH_DATE.isoformat()}"
        )
    return date_of_birth


def check_notes(notes: str | None) -> str | None:
    """Return the notes stripped of surrounding blanks (None when empty); SubjectError when too long."""
    if notes is None:
        return None
    if not isinstance(notes, str):
        raise SubjectError(f"notes must be text; got {type(notes).__name__}")
    stripped = notes.strip()
    if len(stripped) > MAX_NOTES_LENGTH:
        raise SubjectError(f"notes are {len(stripped)} characters long; at most {MAX_NOTES_LENGTH} are kept")
    return stripped or None


def _is_code_collision(exc: IntegrityError) -> bool:
    return "subjects.subject_code" in str(exc.orig)


_SESSION_COUNTS = (
    select(
        TreatmentSession.subject_id.label("subject_id"),
        func.count(TreatmentSession.session_id).label("session_count"),
        func.max(TreatmentSession.start_time).label("last_session"),
    )
    .group_by(TreatmentSession.subject_id)
    .subquery("session_counts")
)


def _info(row: Any) -> SubjectInfo:
    subject: Subject = row[0]
    last = row[2]
    if last is not None and not isinstance(last, datetime):
        last = datetime.fromisoformat(str(last))
    return SubjectInfo(
        subject_id=subject.subject_id,
        subject_code=subject.subject_code,
        date_of_birth=subject.date_of_birth,
        gender=subject.gender,
        created_date=subject.created_date,
        created_by_tech_id=subject.created_by_tech_id,
        last_modified_date=subject.last_modified_date,
        notes=subject.notes,
        is_active=bool(subject.is_active) if subject.is_active is not None else True,
        session_count=int(row[1] or 0),
        last_session=last,
    )


def _with_counts() -> Any:
    return select(Subject, _SESSION_COUNTS.c.session_count, _SESSION_COUNTS.c.last_session).outerjoin(
        _SESSION_COUNTS, _SESSION_COUNTS.c.subject_id == Subject.subject_id
    )


async def _code_pattern(session: AsyncSession) -> CodePattern:
    """The clinic's pattern; SubjectError when the setting is unusable."""
    try:
        return await read_subject_code_pattern(session)
    except CodePatternError as exc:
        raise SubjectError(str(exc)) from None


async def _next_free(session: AsyncSession, year: int, pattern: CodePattern, on_disk: frozenset[str]) -> str:
    """The next free code of ``year``: one more than the highest number among the database's codes and the
    codes ``on_disk`` (the one algorithm, :meth:`CodePattern.next_code`)."""
    codes = (await session.execute(select(Subject.subject_code))).scalars()
    try:
        return pattern.next_code(itertools.chain(codes, on_disk), year)
    except CodePatternError as exc:
        raise SubjectError(str(exc)) from None


def _issued_codes(data_root: Path | None) -> frozenset[str]:
    return frozenset() if data_root is None else frozenset(codes_on_disk(data_root))


async def check_new_code(session: AsyncSession, code: str, *, year: int, data_root: Path | None) -> None:
    """Refuse (SubjectError) a typed ``code`` for a new subject unless it has the clinic's pattern with a
    number from 1 and was never issued according to the data directory ``data_root`` (None: not checked)."""
    pattern = await _code_pattern(session)
    try:
        pattern.check(code, example_year=year)
    except CodePatternError as exc:
        raise SubjectError(str(exc)) from None
    on_disk = await asyncio.to_thread(_issued_codes, data_root)
    if code in on_disk:
        following = await _next_free(session, year, pattern, on_disk)
        raise SubjectError(
            f"subject code {code} was issued before (the data directory keeps it); "
            f"codes are never given twice: the next free code is {following}"
        )


async def insert_subject(
    session: AsyncSession,
    *,
    user: TechUser,
    now: datetime,
    code: str | None = None,
    data_root: Path | None = None,
    terminal: str | None = None,
    date_of_birth: date | None = None,
    gender: str | None = None,
    notes: str | None = None,
) -> tuple[int, str]:
    """Create one subject in the caller's transaction and return its id and code: the only way a subject is
    created (the subjects screen through :meth:`SubjectService.create`, and a session opened for a new code).

    A given ``code`` is checked by :func:`check_new_code`; without one the next free code of ``now``'s year
    is taken. The code is appended to the data directory's issued codes file (when ``data_root`` is given)
    before the row is written, and an ``audit_log`` row ``subject_create`` is written with it. The caller has
    checked ``date_of_birth``, ``gender`` and ``notes``. SubjectError for a refused code; the database's
    IntegrityError when another console wrote the same code first.
    """
    if code is not None:
        await check_new_code(session, code, year=now.year, data_root=data_root)
        chosen = code
    else:
        on_disk = await asyncio.to_thread(_issued_codes, data_root)
        chosen = await _next_free(session, now.year, await _code_pattern(session), on_disk)
    if data_root is not None:
        try:
            await asyncio.to_thread(record_issued, data_root, chosen)
        except OSError as exc:
            raise SubjectError(
                f"cannot record the issued code {chosen} in the data directory: {exc}"
            ) from exc
    result = await session.execute(
        insert(Subject)
        .values(
            subject_code=chosen,
            date_of_birth=date_of_birth,
            gender=gender,
            notes=notes,
            created_by_tech_id=user.tech_id,
            created_date=now,
            is_active=True,
        )
        .returning(Subject.subject_id)
    )
    subject_id = int(result.scalar_one())
    await AuditRepository(session).add(
        ACTION_SUBJECT_CREATE,
        "success",
        tech_id=user.tech_id,
        username=user.username,
        entity_type=ENTITY_SUBJECT,
        entity_id=subject_id,
        terminal=terminal,
        details={
            "subject_code": chosen,
            "date_of_birth": date_of_birth.isoformat() if date_of_birth else None,
            "gender": gender,
        },
        timestamp=now,
    )
    return subject_id, chosen


class SubjectService:
    """Subject operations against the records database.

    Args:
        sessions: the session maker of the records database.
        clock: returns naive UTC now (the year of new codes, "today" for birth dates, modification times).
        terminal: the terminal recorded in audit rows (None when unknown).
        data_dir: the data directory; when given, codes its session folders and issued codes file show were
            issued count as used, and each created code is recorded there.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock = utc_now,
        *,
        terminal: str | None = None,
        data_dir: DataDir | Path | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._terminal = terminal
        self._data_root = (
            None if data_dir is None else data_dir.root if isinstance(data_dir, DataDir) else Path(data_dir)
        )

    async def pattern(self) -> CodePattern:
        """The clinic's subject code pattern (SubjectError when the setting is unusable)."""
        async with self._sessions() as session:
            return await _code_pattern(session)

    # -- reading -------------------------------------------------------------------------------------------

    async def find(
        self, fragment: str, *, include_inactive: bool = False, limit: int = 200
    ) -> list[SubjectInfo]:
        """Subjects whose code contains ``fragment`` (case-insensitive; blanks around it ignored; empty lists
        all), newest first, at most ``limit``; deactivated ones only with ``include_inactive``."""
        if not isinstance(fragment, str):
            raise SubjectError(f"the search text must be text; got {type(fragment).__name__}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_FIND_LIMIT:
            raise SubjectError(f"limit must be a whole number from 1 to {MAX_FIND_LIMIT}; got {limit!r}")
        query = _with_counts()
        wanted = fragment.strip().upper()
        if wanted:
            query = query.where(func.upper(Subject.subject_code).contains(wanted, autoescape=True))
        if not include_inactive:
            query = query.where(Subject.is_active.is_not(False))
        query = query.order_by(Subject.created_date.desc(), Subject.subject_id.desc()).limit(limit)
        async with self._sessions() as session:
            return [_info(row) for row in await session.execute(query)]

    async def get(self, subject_code: str) -> SubjectInfo | None:
        """The subject with exactly this code, or None."""
        async with self._sessions() as session:
            row = (await session.execute(_with_counts().where(Subject.subject_code == subject_code))).first()
        return None if row is None else _info(row)

    async def next_code(self, year: int | None = None) -> str:
        """The next free code of the clinic's pattern in ``year`` (default: the clock's year): one more than
        the highest number used that year in the database or issued before (see the module documentation);
        codes not of the pattern's form are ignored."""
        on_disk = await asyncio.to_thread(_issued_codes, self._data_root)
        async with self._sessions() as session:
            return await _next_free(session, self._year(year), await _code_pattern(session), on_disk)

    def _year(self, year: int | None) -> int:
        chosen = self._clock().year if year is None else year
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1000 <= chosen <= 9999:
            raise SubjectError(f"the year of a subject code must have four digits; got {chosen!r}")
        return chosen

    async def history(self, subject_code: str) -> list[HistoryRow]:
        """The subject's sessions, newest first, with each session's summary numbers."""
        async with self._sessions() as session:
            subject = await self._subject(session, subject_code)
            rows = await SessionsRepository(session).subject_session_history(subject.subject_id)
        return [
            HistoryRow(
                session_id=row.session_id,
                start_time=row.start_time,
                end_time=row.end_time,
                status=row.status,
                protocol_name=row.protocol_name,
                laser_on_time_s=row.total_laser_on_time_seconds,
                avg_power_w=row.avg_power_watts,
                energy_j=row.total_energy_joules,
                technician=row.technician,
            )
            for row in rows
            if row.session_id is not None
        ]

    # -- changing ------------------------------------------------------------------------------------------

    async def create(
        self,
        *,
        created_by_tech_id: int,
        date_of_birth: date | None = None,
        gender: str | None = None,
        notes: str | None = None,
        code: str | None = None,
    ) -> SubjectInfo:
        """Add a subject and return it. With no ``code`` the next free one of the clock's year is used
        (and, if another console takes it first, the one after). A given ``code`` must match the clinic's
        pattern, and is refused when it exists or was ever issued."""
        now = self._clock()
        if code is not None and not isinstance(code, str):
            raise SubjectError(f"subject code must be text; got {type(code).__name__}")
        dob = check_birth_date(date_of_birth, now.date())
        gender = check_gender(gender)
        notes = check_notes(notes)
        for _attempt in range(CREATE_ATTEMPTS):
            try:
                async with self._sessions() as session, session.begin():
                    user = await session.get(TechUser, created_by_tech_id)
                    if user is None:
                        raise SubjectError(f"no user with id {created_by_tech_id}")
                    _subject_id, chosen = await insert_subject(
                        session,
                        user=user,
                        now=now,
                        code=code,
                        data_root=self._data_root,
                        terminal=self._terminal,
                        date_of_birth=dob,
                        gender=gender,
                        notes=notes,
                    )
            except IntegrityError as exc:
                if not _is_code_collision(exc):
                    raise
                if code is not None:
                    raise SubjectError(f"subject code {code} already exists") from exc
                continue  # another console took this number first: try the next one
            created = await self.get(chosen)
            if created is None:
                raise SubjectError(f"subject {chosen} was not found after it was created")
            return created
        raise SubjectError(f"could not find a free subject code after {CREATE_ATTEMPTS} attempts; try again")

    async def update(
        self,
        subject_code: str,
        *,
        date_of_birth: date | None,
        gender: str | None,
        notes: str | None,
        tech_id: int | None = None,
    ) -> SubjectInfo:
        """Replace the subject's birth date, gender and notes (the code never changes); ``tech_id`` is who
        made the change, for the audit trail."""
        now = self._clock()
        dob = check_birth_date(date_of_birth, now.date())
        gender = check_gender(gender)
        notes = check_notes(notes)
        async with self._sessions() as session, session.begin():
            subject = await self._subject(session, subject_code)
            user = await self._user(session, tech_id)
            changes = {
                name: [_shown(old), _shown(new)]
                for name, old, new in (
                    ("date_of_birth", subject.date_of_birth, dob),
                    ("gender", subject.gender, gender),
                    ("notes", subject.notes, notes),
                )
                if old != new
            }
            await session.execute(
                update(Subject)
                .where(Subject.subject_id == subject.subject_id)
                .values(date_of_birth=dob, gender=gender, notes=notes, last_modified_date=now)
                .execution_options(synchronize_session=False)
            )
            await self._audit(
                session,
                ACTION_SUBJECT_UPDATE,
                user,
                subject.subject_id,
                {"subject_code": subject_code, "changes": changes},
                now,
            )
        return await self._reread(subject_code)

    async def deactivate(self, subject_code: str, *, tech_id: int | None = None) -> SubjectInfo:
        """Hide the subject from the default search and from new sessions (its records stay). Refused while
        one of its sessions is open, or when it is already inactive."""
        return await self._set_active(subject_code, False, tech_id)

    async def reactivate(self, subject_code: str, *, tech_id: int | None = None) -> SubjectInfo:
        """Make a deactivated subject active again. Refused when it is already active."""
        return await self._set_active(subject_code, True, tech_id)

    async def _set_active(self, subject_code: str, active: bool, tech_id: int | None) -> SubjectInfo:
        now = self._clock()
        async with self._sessions() as session, session.begin():
            subject = await self._subject(session, subject_code)
            currently = subject.is_active is not False
            if currently == active:
                raise SubjectError(f"subject {subject_code} is already {'active' if active else 'inactive'}")
            if not active:
                open_session = (
                    await session.execute(
                        select(TreatmentSession.session_id).where(
                            TreatmentSession.subject_id == subject.subject_id,
                            TreatmentSession.status.in_(OPEN_STATUSES),
                        )
                    )
                ).first()
                if open_session is not None:
                    raise SubjectError(
                        f"subject {subject_code} has session {open_session[0]} open; finish it first"
                    )
            user = await self._user(session, tech_id)
            await session.execute(
                update(Subject)
                .where(Subject.subject_id == subject.subject_id)
                .values(is_active=active, last_modified_date=now)
                .execution_options(synchronize_session=False)
            )
            await self._audit(
                session,
                ACTION_SUBJECT_REACTIVATE if active else ACTION_SUBJECT_DEACTIVATE,
                user,
                subject.subject_id,
                {"subject_code": subject_code},
                now,
            )
        return await self._reread(subject_code)

    # -- lookups -------------------------------------------------------------------------------------------

    @staticmethod
    async def _subject(session: AsyncSession, subject_code: str) -> Subject:
        if not isinstance(subject_code, str):
            raise SubjectError(f"subject code must be text; got {type(subject_code).__name__}")
        row = (
            await session.execute(select(Subject).where(Subject.subject_code == subject_code))
        ).scalar_one_or_none()
        if row is None:
            raise SubjectError(f"no subject with code {subject_code!r}")
        return row

    @staticmethod
    async def _user(session: AsyncSession, tech_id: int | None) -> TechUser | None:
        if tech_id is None:
            return None
        user = await session.get(TechUser, tech_id)
        if user is None:
            raise SubjectError(f"no user with id {tech_id}")
        return user

    async def _reread(self, subject_code: str) -> SubjectInfo:
        info = await self.get(subject_code)
        if info is None:
            raise SubjectError(f"subject {subject_code} disappeared while it was being changed")
        return info

    async def _audit(
        self,
        session: AsyncSession,
        action: str,
        user: TechUser | None,
        subject_id: int,
        details: dict[str, Any],
        now: datetime,
    ) -> None:
        await AuditRepository(session).add(
            action,
            "success",
            tech_id=user.tech_id if user is not None else None,
            username=user.username if user is not None else None,
            entity_type=ENTITY_SUBJECT,
            entity_id=subject_id,
            terminal=self._terminal,
            details=details,
            timestamp=now,
        )


def _shown(value: date | str | None) -> str | None:
    return value.isoformat() if isinstance(value, date) else value


__all__ = [
    "ACTION_SUBJECT_DEACTIVATE",
    "ACTION_SUBJECT_REACTIVATE",
    "ACTION_SUBJECT_UPDATE",
    "EARLIEST_BIRTH_DATE",
    "GENDERS",
    "MAX_NOTES_LENGTH",
    "HistoryRow",
    "HistoryTotals",
    "SubjectError",
    "SubjectInfo",
    "SubjectService",
    "check_birth_date",
    "check_gender",
    "check_new_code",
    "check_notes",
    "history_totals",
    "insert_subject",
]
