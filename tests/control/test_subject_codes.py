"""Subject codes: the clinic's pattern language, and that no code is ever issued twice, also after the
database was restored from an older backup (the session folders and the issued codes file remember)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from account_fixtures import FakeClock
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.protocol_approval import approve_as_system
from control.sessions import SessionRefused, SessionService, SessionSummary
from control.subject_codes import CodePattern, CodePatternError, codes_on_disk
from control.subjects import SubjectError, SubjectService
from storage import DataDir, TechUser, create_engine, session_factory
from storage.maintenance import backup, restore
from storage.repositories import ConfigRepository, ProtocolsRepository, UsersRepository

PROTOCOL = "Standard 1 W"
PROTOCOL_TEXT = json.dumps({"protocol_name": PROTOCOL, "steps": [{"step_number": 1, "power": 1.0}]})


# ---- the pattern language


@pytest.mark.parametrize(
    ("pattern", "year", "number", "code"),
    [
        ("P-YYYY-NNNN", 2026, 1, "P-2026-0001"),
        ("P-YYYY-NNNN", 2027, 9999, "P-2027-9999"),
        ("LX_NNNNN", 2026, 42, "LX_00042"),
        ("YYYY-NNN-B", 2026, 7, "2026-007-B"),
        ("N", 2026, 9, "9"),
    ],
)
def test_patterns_format_and_read_back_codes(pattern: str, year: int, number: int, code: str) -> None:
    parsed = CodePattern.parse(pattern)
    assert parsed.format(year, number) == code
    assert parsed.parse_code(code) == ((year if "YYYY" in pattern else None), number)
    assert parsed.check(code, example_year=year) == code


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "must be non-empty text"),
        ("P-YYYY", "needs a run of N"),
        ("NN-NN", "more than one run of N"),
        ("YYYY-YYYY-N", "YYYY more than once"),
        ("P-YY-NNNN", "Y is only allowed as YYYY"),
        ("P/NNNN", "'/' is not allowed"),
        ("P NNNN", "' ' is not allowed"),
        ("P-NNNNNNNNNN", "at most 9 digits"),
        ("P" * 30 + "NNN", "at most 32"),
    ],
)
def test_bad_patterns_are_refused_with_the_reason(pattern: str, message: str) -> None:
    with pytest.raises(CodePatternError, match=message):
        CodePattern.parse(pattern)


def test_next_code_counts_per_year_only_with_a_year_and_ignores_other_forms() -> None:
    yearly = CodePattern.parse("P-YYYY-NNNN")
    used = ["P-2026-0041", "P-2025-0900", "X-2026-9999", "P-2026-00042"]
    assert yearly.next_code(used, 2026) == "P-2026-0042"
    assert yearly.next_code(used, 2024) == "P-2024-0001"
    plain = CodePattern.parse("LX_NNN")
    assert plain.next_code(["LX_004", "LX_010", "P-2026-0999"], 2030) == "LX_011"
    with pytest.raises(CodePatternError, match="every subject code is used"):
        plain.next_code(["LX_999"], 2030)
    with pytest.raises(CodePatternError, match=r"must look like LX_NNN \(e.g. LX_001\)"):
        plain.check("LX_1", example_year=2030)
    with pytest.raises(CodePatternError, match=r"start at 001"):
        plain.check("LX_000", example_year=2030)


# ---- the clinic's pattern in the console's service


@pytest.fixture
async def tech_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).add(
            TechUser(username="alice", full_name="Alice Example", role="technician")
        )
        protocols = ProtocolsRepository(session)
        standard = await protocols.add(PROTOCOL, "standard", PROTOCOL_TEXT, created_by_tech_id=user.tech_id)
        await protocols.add_version(standard.protocol_id, PROTOCOL_TEXT, change_summary="saved")
        await approve_as_system(session, standard.protocol_id)
        return user.tech_id


async def test_the_clinic_pattern_is_offered_and_a_typed_code_must_match_it(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock, tech_id: int, db_path: Path
) -> None:
    async with sessions() as db, db.begin():
        await ConfigRepository(db).set("subject_code_pattern", "LX_NNNNN", modified_by=tech_id)
    subjects = SubjectService(sessions, clock, data_dir=db_path.parent)
    assert await subjects.next_code() == "LX_00001"
    assert (await subjects.create(created_by_tech_id=tech_id)).subject_code == "LX_00001"
    assert (await subjects.create(created_by_tech_id=tech_id, code="LX_00040")).subject_code == "LX_00040"
    assert await subjects.next_code() == "LX_00041"
    with pytest.raises(SubjectError, match=r"subject code must look like LX_NNNNN \(e.g. LX_00001\)"):
        await subjects.create(created_by_tech_id=tech_id, code="P-2026-0001")
    # A session may create its subject with a code of the clinic's pattern.
    service = SessionService(sessions, DataDir(db_path.parent), clock=clock)
    opened = await service.open(
        subject_code="LX_00077", username="alice", protocol_name=PROTOCOL, create_subject=True, backup=False
    )
    assert opened.folder == DataDir(db_path.parent).sessions / "LX_00077" / opened.session_uid
    # An unusable pattern is a clear refusal, not codes made up from a pattern nobody chose.
    async with sessions() as db, db.begin():
        await ConfigRepository(db).set("subject_code_pattern", "P/NN", modified_by=tech_id)
    with pytest.raises(SubjectError, match=r"config subject_code_pattern: .*'/' is not allowed"):
        await subjects.next_code()


# ---- a restored backup never hands a code out again nor collides with a session folder


async def test_after_restoring_an_older_backup_no_code_is_reused_and_no_folder_collides(
    db_path: Path, clock: FakeClock, tech_id: int
) -> None:
    data_dir = DataDir(db_path.parent)
    older = backup(data_dir)  # the backup a clinic restores later: no subject in it yet

    engine = create_engine(db_path)
    try:
        sessions = session_factory(engine)
        subjects = SubjectService(sessions, clock, data_dir=data_dir)
        service = SessionService(sessions, data_dir, clock=clock)
        first = await subjects.create(created_by_tech_id=tech_id)
        assert first.subject_code == "P-2026-0001"
        treated = await service.open(
            subject_code=first.subject_code, username="alice", protocol_name=PROTOCOL, backup=False
        )
        (treated.folder / "telemetry.jsonl").write_text('{"t": 0}\n')
        await service.finish(
            treated.session_id,
            status="completed",
            reason=None,
            summary=SessionSummary.empty(),
            telemetry=None,
            video_path=None,
        )
        # A second subject created but never treated: only the issued codes file remembers it.
        assert (await subjects.create(created_by_tech_id=tech_id)).subject_code == "P-2026-0002"
    finally:
        await engine.dispose()

    restore(data_dir, older)
    assert {"P-2026-0001", "P-2026-0002"} <= codes_on_disk(data_dir.root)

    engine = create_engine(db_path)
    try:
        sessions = session_factory(engine)
        subjects = SubjectService(sessions, clock, data_dir=data_dir)
        service = SessionService(sessions, data_dir, clock=clock)
        assert await subjects.next_code() == "P-2026-0003"
        for reused in ("P-2026-0001", "P-2026-0002"):
            with pytest.raises(SubjectError, match=f"subject code {reused} was issued before.*P-2026-0003"):
                await subjects.create(created_by_tech_id=tech_id, code=reused)
            with pytest.raises(SessionRefused, match=f"subject code {reused} was issued before"):
                await service.open(
                    subject_code=reused,
                    username="alice",
                    protocol_name=PROTOCOL,
                    create_subject=True,
                    backup=False,
                )
        new = await subjects.create(created_by_tech_id=tech_id)
        assert new.subject_code == "P-2026-0003"
        opened = await service.open(
            subject_code=new.subject_code, username="alice", protocol_name=PROTOCOL, backup=True
        )
        # The restored database hands out session id 1 again; its folder is another one.
        assert opened.session_id == treated.session_id == 1
        assert opened.folder != treated.folder and opened.folder.is_dir()
        assert list(opened.folder.iterdir()) == []
        assert (treated.folder / "telemetry.jsonl").read_text() == '{"t": 0}\n'
    finally:
        await engine.dispose()


# ---- one rule, one way to create a subject


@pytest.mark.parametrize(
    "code",
    [
        "P-2026-\u0661\u0662\u0663\u0664",  # Arabic-Indic digits
        "P-\uff12\uff10\uff12\uff16-0001",  # full-width digits
        "P-2026-\u09e7\u09e8\u09e9\u09ea",  # Bengali digits
    ],
)
def test_only_ascii_digits_make_a_code(code: str) -> None:
    pattern = CodePattern.parse("P-YYYY-NNNN")
    assert pattern.parse_code(code) is None
    with pytest.raises(CodePatternError, match="must look like P-YYYY-NNNN"):
        pattern.check(code, example_year=2026)
    assert pattern.next_code([code], 2026) == "P-2026-0001"


async def test_a_non_ascii_code_is_refused_by_the_subjects_screen_and_by_a_session(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock, tech_id: int, db_path: Path
) -> None:
    code = "P-2026-\u0661\u0662\u0663\u0664"
    subjects = SubjectService(sessions, clock, data_dir=db_path.parent)
    with pytest.raises(SubjectError, match="must look like P-YYYY-NNNN"):
        await subjects.create(created_by_tech_id=tech_id, code=code)
    service = SessionService(sessions, DataDir(db_path.parent), clock=clock)
    with pytest.raises(SessionRefused, match="a new subject code: subject code must look like P-YYYY-NNNN"):
        await service.open(
            subject_code=code, username="alice", protocol_name=PROTOCOL, create_subject=True, backup=False
        )


async def _created_record(sessions: async_sessionmaker[AsyncSession], code: str) -> tuple[object, ...]:
    from sqlalchemy import select

    from storage import AuditLog, Subject

    async with sessions() as db:
        subject = (await db.execute(select(Subject).where(Subject.subject_code == code))).scalar_one()
        audit = (
            await db.execute(
                select(AuditLog).where(
                    AuditLog.action == "subject_create", AuditLog.entity_id == subject.subject_id
                )
            )
        ).scalar_one()
    return (
        subject.created_date,
        subject.created_by_tech_id,
        subject.is_active,
        audit.username,
        json.loads(audit.details or "{}"),
    )


async def test_a_subject_made_by_a_session_is_made_as_the_subjects_screen_makes_it(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock, tech_id: int, db_path: Path
) -> None:
    data_dir = DataDir(db_path.parent)
    subjects = SubjectService(sessions, clock, data_dir=data_dir)
    by_screen = await subjects.create(created_by_tech_id=tech_id, code="P-2026-0005")
    service = SessionService(sessions, data_dir, clock=clock)
    await service.open(
        subject_code="P-2026-0006",
        username="alice",
        protocol_name=PROTOCOL,
        create_subject=True,
        backup=False,
    )
    screen_record = await _created_record(sessions, by_screen.subject_code)
    session_record = await _created_record(sessions, "P-2026-0006")
    assert screen_record[:4] == session_record[:4] == (clock(), tech_id, True, "alice")
    assert screen_record[4] == {"subject_code": "P-2026-0005", "date_of_birth": None, "gender": None}
    assert session_record[4] == {"subject_code": "P-2026-0006", "date_of_birth": None, "gender": None}
    # Both are recorded as issued, so neither is ever given again.
    assert {"P-2026-0005", "P-2026-0006"} <= codes_on_disk(data_dir.root)
    assert await subjects.next_code() == "P-2026-0007"


def test_no_other_module_states_the_subject_code_rule() -> None:
    """Outside control/subject_codes.py no module states a code's form (a P-YYYY-NNNN regular expression or
    GLOB, with [0-9] or \\d), so every check and every next code goes through CodePattern."""
    root = Path(__file__).resolve().parents[2]
    form = re.compile(r"P-\(?(\[0-9\]|\\d)")
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for package in ("control", "storage", "tui")
        for path in sorted((root / package).rglob("*.py"))
        if path.name != "subject_codes.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if form.search(line)
    ]
    assert offenders == []
