"""Subjects against a real migrated SQLite file: search, next code, creation (every refusal changes nothing,
two consoles never share a code), editing, deactivation and the treatment history."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control import subjects as subjects_module
from control.subjects import (
    ACTION_SUBJECT_DEACTIVATE,
    ACTION_SUBJECT_UPDATE,
    HistoryRow,
    SubjectError,
    SubjectService,
    history_totals,
)
from storage import AuditLog, Subject, TechUser, TreatmentSession, create_engine, session_factory
from storage.repositories import SessionsRepository, UsersRepository
from tests.support import FakeClock

TERMINAL = "/dev/tty1"


@pytest.fixture
async def tech_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).add(
            TechUser(username="tina", full_name="Tina Tech", role="technician")
        )
        return user.tech_id


@pytest.fixture
def subjects(sessions: async_sessionmaker[AsyncSession], clock: FakeClock) -> SubjectService:
    return SubjectService(sessions, clock, terminal=TERMINAL)


async def count_subjects(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Subject))).scalar_one())


async def audit_rows(sessions: async_sessionmaker[AsyncSession]) -> list[AuditLog]:
    async with sessions() as session:
        query = select(AuditLog).where(AuditLog.entity_type == "subject").order_by(AuditLog.audit_id)
        return list((await session.execute(query)).scalars())


async def insert_code(sessions: async_sessionmaker[AsyncSession], code: str, **values: Any) -> None:
    """A subject written as another program would (so its code need not follow the console's rules)."""
    async with sessions() as session, session.begin():
        await session.execute(insert(Subject).values(subject_code=code, **values))


async def test_create_numbers_codes_from_0001_in_the_clock_year(
    subjects: SubjectService, tech_id: int, clock: FakeClock
) -> None:
    first = await subjects.create(created_by_tech_id=tech_id)
    second = await subjects.create(
        created_by_tech_id=tech_id, gender="female", date_of_birth=date(1980, 5, 1)
    )
    assert (first.subject_code, second.subject_code) == ("P-2026-0001", "P-2026-0002")
    assert second.gender == "female"
    assert second.date_of_birth == date(1980, 5, 1)
    assert second.created_by_tech_id == tech_id
    assert second.created_date == clock()
    assert second.is_active and second.session_count == 0 and second.last_session is None
    clock.advance(timedelta(days=365))
    assert await subjects.next_code() == "P-2027-0001"
    assert await subjects.next_code(2026) == "P-2026-0003"


async def test_next_code_ignores_codes_of_other_forms_and_years(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # The schema's CHECK keeps malformed codes out; a code of another year must not count.
    await insert_code(sessions, "P-2026-0041")
    await insert_code(sessions, "P-2025-0900")
    assert await subjects.next_code() == "P-2026-0042"
    assert await subjects.next_code(2025) == "P-2025-0901"
    assert await subjects.next_code(2024) == "P-2024-0001"
    with pytest.raises(SubjectError, match="four digits"):
        await subjects.next_code(99)


async def test_next_code_refuses_when_a_year_is_full(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await insert_code(sessions, "P-2026-9999")
    with pytest.raises(SubjectError, match="every subject code of 2026 is used"):
        await subjects.next_code()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"code": "P-26-1"}, "must look like P-YYYY-NNNN"),
        ({"code": "p-2026-0001"}, "must look like P-YYYY-NNNN"),
        ({"code": "P-2026-0000"}, "start at 0001"),
        ({"date_of_birth": date(2026, 3, 15)}, "2026-03-15 is in the future"),
        ({"date_of_birth": date(1899, 12, 31)}, "before 1900-01-01"),
        ({"gender": "F"}, "gender must be one of female, male, other, unknown"),
        ({"notes": "x" * 2001}, "at most 2000"),
        ({"created_by_tech_id": 999}, "no user with id 999"),
    ],
)
async def test_create_refusals_write_nothing(
    subjects: SubjectService,
    sessions: async_sessionmaker[AsyncSession],
    tech_id: int,
    arguments: dict[str, Any],
    message: str,
) -> None:
    values: dict[str, Any] = {"created_by_tech_id": tech_id}
    values.update(arguments)
    with pytest.raises(SubjectError, match=message):
        await subjects.create(**values)
    assert await count_subjects(sessions) == 0
    assert await audit_rows(sessions) == []


async def test_a_duplicate_code_is_refused(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    await subjects.create(created_by_tech_id=tech_id, code="P-2026-0007", notes="first visit")
    with pytest.raises(SubjectError, match="P-2026-0007 already exists"):
        await subjects.create(created_by_tech_id=tech_id, code="P-2026-0007")
    assert await count_subjects(sessions) == 1
    assert (await subjects.get("P-2026-0007")).notes == "first visit"  # type: ignore[union-attr]


async def test_birth_date_today_is_accepted(subjects: SubjectService, tech_id: int) -> None:
    info = await subjects.create(created_by_tech_id=tech_id, date_of_birth=date(2026, 3, 14))
    assert info.date_of_birth == date(2026, 3, 14)


async def test_creation_is_audited(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    info = await subjects.create(created_by_tech_id=tech_id, gender="male")
    (row,) = await audit_rows(sessions)
    assert (row.action, row.tech_id, row.username, row.entity_id, row.terminal, row.outcome) == (
        "subject_create",
        tech_id,
        "tina",
        info.subject_id,
        TERMINAL,
        "success",
    )
    assert '"P-2026-0001"' in (row.details or "")


async def test_a_lost_race_for_a_code_retries_with_the_next_number(
    sessions: async_sessionmaker[AsyncSession],
    clock: FakeClock,
    tech_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = SubjectService(sessions, clock)
    real = subjects_module._next_free
    answers: list[str] = []

    async def other_console_first(session: AsyncSession, year: int, *rest: Any) -> str:
        code = await real(session, year, *rest)
        if not answers:
            # Another console commits this very code between our look-up and our insert.
            await insert_code(sessions, code)
        answers.append(code)
        return code

    monkeypatch.setattr(subjects_module, "_next_free", other_console_first)
    created = await service.create(created_by_tech_id=tech_id)
    assert answers == ["P-2026-0001", "P-2026-0002"]
    assert created.subject_code == "P-2026-0002"
    assert await count_subjects(sessions) == 2


async def test_two_consoles_creating_at_once_never_share_a_code(
    db_path: Path, sessions: async_sessionmaker[AsyncSession], clock: FakeClock, tech_id: int
) -> None:
    other_engine = create_engine(db_path)
    try:
        here = SubjectService(sessions, clock)
        there = SubjectService(session_factory(other_engine), clock)
        created = await asyncio.gather(
            *(
                service.create(created_by_tech_id=tech_id)
                for service in (here, there, here, there, here, there)
            )
        )
    finally:
        await other_engine.dispose()
    codes = sorted(info.subject_code for info in created)
    assert codes == [f"P-2026-{n:04d}" for n in range(1, 7)]


async def test_find_is_partial_case_insensitive_newest_first(
    subjects: SubjectService, tech_id: int, clock: FakeClock
) -> None:
    for _ in range(3):
        await subjects.create(created_by_tech_id=tech_id)
        clock.advance(timedelta(minutes=1))
    await subjects.create(created_by_tech_id=tech_id, code="P-2025-0012")
    every = [info.subject_code for info in await subjects.find("")]
    assert every == ["P-2025-0012", "P-2026-0003", "P-2026-0002", "P-2026-0001"]
    assert [info.subject_code for info in await subjects.find("p-2026")] == every[1:]
    assert [info.subject_code for info in await subjects.find(" 12 ")] == ["P-2025-0012"]
    assert [info.subject_code for info in await subjects.find("0002")] == ["P-2026-0002"]
    assert await subjects.find("%") == []  # LIKE wildcards are plain characters
    assert await subjects.find("_") == []
    assert len(await subjects.find("", limit=2)) == 2
    with pytest.raises(SubjectError, match="limit"):
        await subjects.find("", limit=0)


async def test_deactivate_hides_and_reactivate_shows(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession], tech_id: int, clock: FakeClock
) -> None:
    await subjects.create(created_by_tech_id=tech_id)
    other = await subjects.create(created_by_tech_id=tech_id)
    clock.advance(timedelta(hours=1))
    hidden = await subjects.deactivate(other.subject_code, tech_id=tech_id)
    assert not hidden.is_active
    assert hidden.last_modified_date == clock()
    assert [i.subject_code for i in await subjects.find("")] == ["P-2026-0001"]
    assert [i.subject_code for i in await subjects.find("", include_inactive=True)] == [
        "P-2026-0002",
        "P-2026-0001",
    ]
    with pytest.raises(SubjectError, match="already inactive"):
        await subjects.deactivate(other.subject_code)
    assert (await subjects.reactivate(other.subject_code)).is_active
    with pytest.raises(SubjectError, match="already active"):
        await subjects.reactivate(other.subject_code)
    actions = [row.action for row in await audit_rows(sessions)]
    assert actions == ["subject_create", "subject_create", ACTION_SUBJECT_DEACTIVATE, "subject_reactivate"]
    with pytest.raises(SubjectError, match="no subject with code 'P-2026-0404'"):
        await subjects.deactivate("P-2026-0404")


async def add_session(
    sessions: async_sessionmaker[AsyncSession],
    subject_id: int,
    tech_id: int,
    start: datetime,
    *,
    status: str = "completed",
    **summary: Any,
) -> int:
    async with sessions() as session, session.begin():
        row = await SessionsRepository(session).add(
            TreatmentSession(
                subject_id=subject_id,
                tech_id=tech_id,
                start_time=start,
                end_time=start + timedelta(minutes=5) if status in ("completed", "aborted") else None,
                status=status,
                abort_reason="pedal fault" if status == "aborted" else None,
                protocol_name="Seed example",
                **summary,
            )
        )
        return row.session_id


async def test_deactivate_is_refused_while_a_session_is_open(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    info = await subjects.create(created_by_tech_id=tech_id)
    session_id = await add_session(
        sessions, info.subject_id, tech_id, datetime(2026, 3, 14, 9), status="paused"
    )
    with pytest.raises(SubjectError, match=f"session {session_id} open"):
        await subjects.deactivate(info.subject_code)
    assert (await subjects.get(info.subject_code)).is_active  # type: ignore[union-attr]


async def test_update_replaces_details_and_is_audited(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession], tech_id: int, clock: FakeClock
) -> None:
    info = await subjects.create(created_by_tech_id=tech_id, gender="other", notes="first")
    clock.advance(timedelta(days=1))
    changed = await subjects.update(
        info.subject_code, date_of_birth=date(1970, 1, 2), gender=None, notes="  second  ", tech_id=tech_id
    )
    assert (changed.date_of_birth, changed.gender, changed.notes) == (date(1970, 1, 2), None, "second")
    assert changed.last_modified_date == clock()
    assert changed.subject_code == info.subject_code
    last = (await audit_rows(sessions))[-1]
    assert last.action == ACTION_SUBJECT_UPDATE
    assert '"gender": ["other", null]' in (last.details or "")
    with pytest.raises(SubjectError, match="in the future"):
        await subjects.update(info.subject_code, date_of_birth=date(2030, 1, 1), gender=None, notes=None)
    assert (await subjects.get(info.subject_code)).date_of_birth == date(1970, 1, 2)  # type: ignore[union-attr]
    with pytest.raises(SubjectError, match="no subject"):
        await subjects.update("P-2026-0999", date_of_birth=None, gender=None, notes=None)


async def test_history_lists_sessions_with_their_summaries(
    subjects: SubjectService, sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    info = await subjects.create(created_by_tech_id=tech_id)
    empty = await subjects.create(created_by_tech_id=tech_id)
    assert await subjects.history(empty.subject_code) == []
    first = await add_session(
        sessions,
        info.subject_id,
        tech_id,
        datetime(2026, 3, 1, 10),
        total_laser_on_time_seconds=90.0,
        avg_power_watts=5.5,
        total_energy_joules=495.0,
    )
    second = await add_session(
        sessions,
        info.subject_id,
        tech_id,
        datetime(2026, 3, 8, 10),
        status="aborted",
        total_laser_on_time_seconds=12.5,
        avg_power_watts=5.0,
        total_energy_joules=62.5,
    )
    rows = await subjects.history(info.subject_code)
    assert [row.session_id for row in rows] == [second, first]
    newest = rows[0]
    assert newest == HistoryRow(
        session_id=second,
        start_time=datetime(2026, 3, 8, 10),
        end_time=datetime(2026, 3, 8, 10, 5),
        status="aborted",
        protocol_name="Seed example",
        laser_on_time_s=12.5,
        avg_power_w=5.0,
        energy_j=62.5,
        technician="Tina Tech",
    )
    totals = history_totals(rows)
    assert (totals.sessions, totals.completed, totals.laser_on_time_s, totals.energy_j) == (
        2,
        1,
        102.5,
        557.5,
    )
    listed = (await subjects.find(info.subject_code))[0]
    assert (listed.session_count, listed.last_session) == (2, datetime(2026, 3, 8, 10))
    with pytest.raises(SubjectError, match="no subject"):
        await subjects.history("P-2026-0999")
