"""Session records: summary maths, opening (every refusal), pause/resume, finishing, notes, start-up close."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.protocol_approval import approve_as_system
from control.sessions import (
    DEFAULT_INTERRUPTED_REASON,
    EVENT_ABORTED_AT_STARTUP,
    OpenedSession,
    SessionRefused,
    SessionService,
    SessionSummary,
    SummaryAccumulator,
)
from storage import (
    AuditLog,
    DataDir,
    Protocol,
    TechUser,
    TreatmentSession,
)
from storage.repositories import (
    ConfigRepository,
    ProtocolsRepository,
    SafetyLogRepository,
    SessionsRepository,
    SubjectsRepository,
    TreatmentEventsRepository,
    UsersRepository,
)
from storage.safety_records import SafetyRecord
from tests.support import FakeClock

TERMINAL = "/dev/tty1"
SUBJECT = "P-2026-0001"
INACTIVE_SUBJECT = "P-2026-0002"
PROTOCOL = "Standard 1 W"
PROTOCOL_V1 = json.dumps({"protocol_name": PROTOCOL, "steps": [{"step_number": 1, "power": 1.0}]})
PROTOCOL_V2 = json.dumps({"protocol_name": PROTOCOL, "steps": [{"step_number": 1, "power": 1.5}]})


# ---- the summary maths


def test_hand_computed_summary() -> None:
    acc = SummaryAccumulator()
    acc.add(0.0, 0.0, False)  # [0, 1] off
    acc.add(1.0, 2.0, True)  # [1, 2] on: (2 + 4) / 2 * 1 = 3 J
    acc.add(2.0, 4.0, True)  # [2, 3] on: (4 + 6) / 2 * 1 = 5 J
    acc.add(3.0, 6.0, False)  # [3, 4] off: the 100 W below is light seen while off, not delivered
    acc.add(4.0, 100.0, False)
    assert acc.sample_count == 5
    assert acc.laser_on_time_s == pytest.approx(2.0)
    assert acc.energy_j == pytest.approx(8.0)
    assert acc.avg_power_w == pytest.approx(4.0)
    assert acc.max_power_w == pytest.approx(6.0)
    assert acc.summary() == SessionSummary(
        laser_on_time_s=acc.laser_on_time_s, avg_power_w=acc.avg_power_w, max_power_w=6.0, energy_j=8.0
    )


def test_average_is_weighted_by_time_not_by_sample_count() -> None:
    acc = SummaryAccumulator()
    acc.add(0.0, 1.0, True)
    acc.add(1.0, 1.0, True)  # 1 s at 1 W
    acc.add(1.0, 3.0, True)  # a step at t = 1 s (same time: no interval, no energy)
    acc.add(4.0, 3.0, False)  # 3 s at 3 W
    assert acc.laser_on_time_s == pytest.approx(4.0)
    assert acc.energy_j == pytest.approx(10.0)
    assert acc.avg_power_w == pytest.approx(2.5)  # the plain mean of the four samples would be 2.0
    assert acc.max_power_w == pytest.approx(3.0)


def test_linear_ramp_integrates_exactly() -> None:
    # P(t) = 2 t W for 10 s at 100 Hz: the integral is t^2 from 0 to 10 = 100 J.
    acc = SummaryAccumulator()
    for i in range(1001):
        t = i / 100
        acc.add(t, 2.0 * t, True)
    assert acc.laser_on_time_s == pytest.approx(10.0)
    assert acc.energy_j == pytest.approx(100.0, rel=1e-9)
    assert acc.avg_power_w == pytest.approx(10.0, rel=1e-9)
    assert acc.max_power_w == pytest.approx(20.0)


def test_ramp_with_pauses_counts_only_laser_on_intervals() -> None:
    # 1 W constant: on for [0, 5), off for [5, 8), on again for [8, 10].
    acc = SummaryAccumulator()
    for i in range(1001):
        t = i / 100
        acc.add(t, 1.0, not (5.0 <= t < 8.0) and t < 10.0)
    assert acc.laser_on_time_s == pytest.approx(7.0)
    assert acc.energy_j == pytest.approx(7.0)
    assert acc.avg_power_w == pytest.approx(1.0)


def test_never_on_gives_no_average_and_no_maximum() -> None:
    acc = SummaryAccumulator()
    assert acc.summary() == SessionSummary.empty()
    acc.add(0.0, 0.2, False)
    acc.add(5.0, 0.3, False)
    summary = acc.summary()
    assert summary.laser_on_time_s == 0.0
    assert summary.energy_j == 0.0
    assert summary.avg_power_w is None
    assert summary.max_power_w is None


def test_negative_measurements_count_as_zero() -> None:
    acc = SummaryAccumulator()
    acc.add(0.0, -0.5, True)
    acc.add(1.0, -0.1, True)
    acc.add(2.0, 2.0, False)
    assert acc.energy_j == pytest.approx(1.0)  # [0,1]: 0 J; [1,2]: (0 + 2) / 2 = 1 J
    assert acc.max_power_w == pytest.approx(2.0)
    assert acc.laser_on_time_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ((0.5, 1.0, True), "earlier than the previous one"),
        ((math.nan, 1.0, True), "sample time must be a finite number"),
        ((math.inf, 1.0, True), "sample time must be a finite number"),
        ((2.0, math.nan, True), "measured power must be a finite number"),
        ((2.0, -math.inf, True), "measured power must be a finite number"),
        ((2.0, 1.0, 1), "laser_on must be True or False"),
    ],
)
def test_bad_samples_are_refused_and_change_nothing(sample: tuple[Any, Any, Any], message: str) -> None:
    acc = SummaryAccumulator()
    acc.add(0.0, 1.0, True)
    acc.add(1.0, 1.0, True)
    before = acc.summary()
    with pytest.raises(ValueError, match=message):
        acc.add(*sample)
    assert acc.summary() == before
    assert acc.sample_count == 2
    acc.add(2.0, 1.0, False)  # still usable, continuing from t = 1 s
    assert acc.laser_on_time_s == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.05),
            st.floats(min_value=-1.0, max_value=20.0),
            st.booleans(),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_summary_invariants(samples: list[tuple[float, float, bool]]) -> None:
    acc = SummaryAccumulator()
    t = 0.0
    for dt, power, on in samples:
        t += dt
        acc.add(t, power, on)
    s = acc.summary()
    assert 0.0 <= s.laser_on_time_s <= t + 1e-9
    assert s.energy_j >= 0.0
    if s.avg_power_w is not None:
        assert s.max_power_w is not None
        assert s.avg_power_w <= s.max_power_w * (1 + 1e-9) + 1e-12
        assert s.energy_j == pytest.approx(s.avg_power_w * s.laser_on_time_s)
    if not any(on for _, _, on in samples):
        assert s.max_power_w is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("laser_on_time_s", -1.0), ("energy_j", math.nan), ("avg_power_w", math.inf), ("max_power_w", -0.1)],
)
def test_session_summary_refuses_impossible_values(field: str, value: float) -> None:
    values: dict[str, Any] = {"laser_on_time_s": 1.0, "avg_power_w": 1.0, "max_power_w": 1.0, "energy_j": 1.0}
    values[field] = value
    with pytest.raises(ValueError, match=field):
        SessionSummary(**values)


# ---- fixtures for the records


@pytest.fixture
def data_dir(db_path: Path) -> DataDir:
    return DataDir(db_path.parent)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 14, 9, 30, 0))


@pytest.fixture
async def records(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[dict[str, int]]:
    """Users, subjects and protocols the tests use; yields their ids by name."""
    async with sessions() as session, session.begin():
        users = UsersRepository(session)
        alice = await users.add(TechUser(username="alice", full_name="Alice Example", role="technician"))
        bob = await users.add(
            TechUser(username="bob", full_name="Bob Former", role="technician", is_active=False)
        )
        subjects = SubjectsRepository(session)
        active = await subjects.add(SUBJECT, created_by_tech_id=alice.tech_id)
        inactive = await subjects.add(INACTIVE_SUBJECT, created_by_tech_id=alice.tech_id)
        inactive.is_active = False
        protocols = ProtocolsRepository(session)
        standard = await protocols.add(PROTOCOL, "standard", PROTOCOL_V1, created_by_tech_id=alice.tech_id)
        await protocols.add_version(standard.protocol_id, PROTOCOL_V2, change_summary="1.5 W")
        await approve_as_system(session, standard.protocol_id)
        retired = await protocols.add("Retired", "standard", PROTOCOL_V1)
        await approve_as_system(session, retired.protocol_id)
        retired.is_active = False
        # A protocol row with no saved version (as the seed's sample INSERT makes one).
        bare = Protocol(protocol_name="Bare", protocol_type="standard", protocol_data=PROTOCOL_V1)
        session.add(bare)
        await session.flush()
        ids = {
            "alice": alice.tech_id,
            "bob": bob.tech_id,
            SUBJECT: active.subject_id,
            INACTIVE_SUBJECT: inactive.subject_id,
            PROTOCOL: standard.protocol_id,
        }
    yield ids


@pytest.fixture
def service(
    sessions: async_sessionmaker[AsyncSession], data_dir: DataDir, clock: FakeClock, records: dict[str, int]
) -> SessionService:
    return SessionService(sessions, data_dir, clock=clock, terminal=TERMINAL)


async def open_standard(service: SessionService, **overrides: Any) -> OpenedSession:
    arguments: dict[str, Any] = {
        "subject_code": SUBJECT,
        "username": "alice",
        "protocol_name": PROTOCOL,
        "backup": False,
    }
    arguments.update(overrides)
    return await service.open(**arguments)


async def session_row(sessions: async_sessionmaker[AsyncSession], session_id: int) -> TreatmentSession:
    async with sessions() as session:
        row = await SessionsRepository(session).get_by_id(session_id)
    assert row is not None
    return row


async def count_sessions(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(TreatmentSession))).scalar_one())


async def audit_actions(sessions: async_sessionmaker[AsyncSession]) -> list[AuditLog]:
    async with sessions() as session:
        rows = (await session.execute(select(AuditLog).order_by(AuditLog.audit_id))).scalars()
        return list(rows)


def backup_files(data_dir: DataDir) -> list[Path]:
    return sorted(data_dir.backups.glob("tosca_*.db"))


def completed_summary() -> SessionSummary:
    acc = SummaryAccumulator()
    for i in range(1001):  # 1.5 W for 10 s
        acc.add(i / 100, 1.5, True)
    acc.add(10.01, 1.5, False)  # switched off at 10.01 s, still reading 1.5 W
    return acc.summary()


# ---- opening


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"username": "nobody"}, "no user named 'nobody'"),
        ({"username": "bob"}, "user 'bob' is inactive"),
        ({"subject_code": "P-2026-0099"}, "no subject with code P-2026-0099"),
        ({"subject_code": INACTIVE_SUBJECT}, f"subject {INACTIVE_SUBJECT} is inactive"),
        (
            {"subject_code": INACTIVE_SUBJECT, "create_subject": True},
            f"subject {INACTIVE_SUBJECT} is inactive",
        ),
        ({"subject_code": "X-12", "create_subject": True}, "subject code must look like P-YYYY-NNNN"),
        (
            {"subject_code": "P-2026-12345", "create_subject": True},
            "subject code must look like P-YYYY-NNNN",
        ),
        ({"protocol_name": "Missing"}, "no protocol named 'Missing'"),
        ({"protocol_name": "Retired"}, "protocol 'Retired' is inactive"),
        ({"protocol_name": "Bare"}, "protocol 'Bare' has no saved version"),
        ({"username": "  "}, "the username must not be empty"),
        ({"subject_code": ""}, "the subject code must not be empty"),
        ({"protocol_name": ""}, "the protocol name must not be empty"),
        ({"treatment_site": 3}, "the treatment site must be text"),
    ],
)
async def test_open_refusals_change_nothing(
    service: SessionService,
    sessions: async_sessionmaker[AsyncSession],
    data_dir: DataDir,
    overrides: dict[str, Any],
    message: str,
) -> None:
    audit_before = len(await audit_actions(sessions))
    with pytest.raises(SessionRefused, match=message):
        await open_standard(service, backup=True, **overrides)
    assert await count_sessions(sessions) == 0
    assert backup_files(data_dir) == []  # a refused open costs no backup
    assert list(data_dir.sessions.iterdir()) == []
    assert len(await audit_actions(sessions)) == audit_before
    async with sessions() as session:
        assert await SubjectsRepository(session).find_subject_by_code("P-2026-0099") is None


async def test_open_round_trip_with_backup(
    service: SessionService,
    sessions: async_sessionmaker[AsyncSession],
    data_dir: DataDir,
    clock: FakeClock,
    records: dict[str, int],
) -> None:
    opened = await open_standard(service, backup=True, treatment_site="left forearm", treatment_notes="n1")
    assert opened.subject_code == SUBJECT
    assert opened.subject_id == records[SUBJECT]
    assert (opened.tech_id, opened.username, opened.technician) == (
        records["alice"],
        "alice",
        "Alice Example",
    )
    assert (opened.protocol_id, opened.protocol_name) == (records[PROTOCOL], PROTOCOL)
    assert opened.protocol_version == 2
    assert opened.protocol_data == PROTOCOL_V2
    assert opened.started_at == clock.now
    assert re.fullmatch(r"20260314T093000Z-[0-9a-f]{12}", opened.session_uid)
    assert opened.folder == data_dir.sessions / SUBJECT / opened.session_uid
    assert opened.folder.is_dir()

    row = await session_row(sessions, opened.session_id)
    assert row.status == "in_progress"
    assert row.start_time == clock.now
    assert row.end_time is None
    assert row.protocol_id == records[PROTOCOL]
    assert row.protocol_name == PROTOCOL
    assert row.protocol_data_snapshot == PROTOCOL_V2
    assert row.session_folder_path == str(opened.folder)
    assert (row.treatment_site, row.treatment_notes) == ("left forearm", "n1")
    async with sessions() as session:
        protocol = await ProtocolsRepository(session).get_by_id(records[PROTOCOL])
    assert protocol is not None
    assert protocol.usage_count == 1
    assert protocol.last_used_date == clock.now

    # The backup was taken first, is the only one, verifies, and holds the database as it was before.
    assert opened.backup_path is not None
    assert backup_files(data_dir) == [opened.backup_path]
    connection = sqlite3.connect(f"file:{opened.backup_path}?mode=ro", uri=True)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM subjects").fetchone() == (2,)
    finally:
        connection.close()

    actions = [(a.action, a.entity_id, a.terminal) for a in await audit_actions(sessions)]
    assert ("session_open", opened.session_id, TERMINAL) in actions


async def test_open_creates_a_new_subject(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], records: dict[str, int]
) -> None:
    opened = await open_standard(service, subject_code="P-2026-0042", create_subject=True)
    async with sessions() as session:
        subject = await SubjectsRepository(session).find_subject_by_code("P-2026-0042")
    assert subject is not None
    assert subject.subject_id == opened.subject_id
    assert subject.created_by_tech_id == records["alice"]
    audit = [a for a in await audit_actions(sessions) if a.action == "subject_create"]
    assert [(a.entity_id, a.username) for a in audit] == [(subject.subject_id, "alice")]


async def test_open_with_create_subject_uses_an_existing_subject(
    service: SessionService, records: dict[str, int]
) -> None:
    opened = await open_standard(service, create_subject=True)
    assert opened.subject_id == records[SUBJECT]


@pytest.mark.parametrize("status", ["in_progress", "paused"])
async def test_open_refused_while_a_session_is_open(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], status: str
) -> None:
    first = await open_standard(service)
    if status == "paused":
        await service.set_status(first.session_id, "paused")
    with pytest.raises(SessionRefused, match=f"session {first.session_id} for {SUBJECT} is still {status}"):
        await open_standard(service, subject_code="P-2026-0050", create_subject=True)
    assert await count_sessions(sessions) == 1
    async with sessions() as session:
        assert await SubjectsRepository(session).find_subject_by_code("P-2026-0050") is None


async def test_open_refused_when_the_backup_fails(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], data_dir: DataDir
) -> None:
    data_dir.backups.rmdir()
    data_dir.backups.write_text("not a folder")  # the backup cannot be written
    with pytest.raises(SessionRefused, match="the automatic backup before the session failed"):
        await open_standard(service, backup=True)
    assert await count_sessions(sessions) == 0
    assert list(data_dir.sessions.iterdir()) == []


async def test_files_left_by_an_earlier_database_never_block_nor_mix_with_a_new_session(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], data_dir: DataDir
) -> None:
    # Session ids start at 1; files for id 1 left behind by a database restored to an earlier state.
    stale = data_dir.session_folder(SUBJECT, 1)
    stale.mkdir(parents=True)
    (stale / "telemetry.jsonl").write_text("{}\n")
    opened = await open_standard(service)
    assert opened.session_id == 1
    assert opened.folder != stale and opened.folder.parent == stale.parent
    assert list(opened.folder.iterdir()) == []
    assert (stale / "telemetry.jsonl").read_text() == "{}\n"
    row = await session_row(sessions, opened.session_id)
    assert (row.session_uid, row.session_folder_path) == (opened.session_uid, str(opened.folder))


async def test_a_broken_subject_folder_never_blocks_the_next_session(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], data_dir: DataDir
) -> None:
    # A file where the subject's folder should be (a damaged disk, a mistaken copy).
    data_dir.sessions.mkdir(parents=True, exist_ok=True)
    (data_dir.sessions / SUBJECT).write_text("not a folder")
    opened = await open_standard(service)
    assert opened.folder == data_dir.sessions / f"{SUBJECT}-{opened.session_uid}"
    assert opened.folder.is_dir()
    assert (data_dir.sessions / SUBJECT).read_text() == "not a folder"


async def test_a_session_does_not_open_below_the_free_space_floor(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], data_dir: DataDir
) -> None:
    free_mb = shutil.disk_usage(data_dir.root).free / 1e6
    async with sessions() as db, db.begin():
        await ConfigRepository(db).set("min_free_disk_mb", int(free_mb) + 1_000_000, modified_by=None)
    with pytest.raises(
        SessionRefused,
        match=r"only \d+ MB free in the data directory .* a session needs at "
        r"least \d+ MB \(setting min_free_disk_mb\): free some space first",
    ):
        await open_standard(service, backup=True)
    assert await count_sessions(sessions) == 0
    assert list(data_dir.backups.glob("tosca_*.db")) == []  # refused before the backup
    async with sessions() as db, db.begin():
        await ConfigRepository(db).set("min_free_disk_mb", 0, modified_by=None)
    assert (await open_standard(service)).session_id == 1


async def test_failed_open_removes_the_folder_it_created(
    service: SessionService,
    sessions: async_sessionmaker[AsyncSession],
    data_dir: DataDir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse_use(
        self: ProtocolsRepository, protocol_id: int, *, when: datetime | None = None
    ) -> None:
        raise ValueError(f"no protocol with id {protocol_id}")

    monkeypatch.setattr(ProtocolsRepository, "record_use", refuse_use)
    with pytest.raises(ValueError, match="no protocol with id"):
        await open_standard(service, subject_code="P-2026-0077", create_subject=True)
    assert await count_sessions(sessions) == 0
    assert list(data_dir.sessions.iterdir()) == []  # the subject's folder and the session's are gone
    async with sessions() as session:
        assert await SubjectsRepository(session).find_subject_by_code("P-2026-0077") is None


# ---- pause and resume


async def test_pause_and_resume(service: SessionService, sessions: async_sessionmaker[AsyncSession]) -> None:
    opened = await open_standard(service)
    await service.set_status(opened.session_id, "paused")
    assert (await session_row(sessions, opened.session_id)).status == "paused"
    with pytest.raises(SessionRefused, match="cannot go from paused to paused"):
        await service.set_status(opened.session_id, "paused")
    await service.set_status(opened.session_id, "in_progress")
    assert (await session_row(sessions, opened.session_id)).status == "in_progress"
    with pytest.raises(SessionRefused, match="cannot go from in_progress to in_progress"):
        await service.set_status(opened.session_id, "in_progress")
    with pytest.raises(SessionRefused, match=r"is finished with finish\(\)"):
        await service.set_status(opened.session_id, "completed")
    assert (await session_row(sessions, opened.session_id)).status == "in_progress"


async def test_set_status_refuses_finished_and_unknown_sessions(service: SessionService) -> None:
    opened = await open_standard(service)
    await service.finish(
        opened.session_id,
        status="aborted",
        reason="subject asked to stop",
        summary=SessionSummary.empty(),
        telemetry=None,
        video_path=None,
    )
    with pytest.raises(SessionRefused, match="cannot go from aborted to in_progress"):
        await service.set_status(opened.session_id, "in_progress")
    with pytest.raises(SessionRefused, match="no session with id 999"):
        await service.set_status(999, "paused")
    with pytest.raises(SessionRefused, match="a session id is a positive whole number"):
        await service.set_status(0, "paused")


# ---- finishing


async def test_finish_round_trip_shows_in_subject_history(
    service: SessionService,
    sessions: async_sessionmaker[AsyncSession],
    clock: FakeClock,
    records: dict[str, int],
) -> None:
    opened = await open_standard(service)
    clock.advance(timedelta(seconds=125.7))
    summary = completed_summary()
    await service.finish(
        opened.session_id,
        status="completed",
        reason=None,
        summary=summary,
        telemetry=None,
        video_path=str(opened.folder / "video.mp4"),
    )
    row = await session_row(sessions, opened.session_id)
    assert row.status == "completed"
    assert row.end_time == clock.now
    assert row.duration_seconds == 125
    assert row.abort_reason is None
    assert row.video_path == str(opened.folder / "video.mp4")
    assert row.total_laser_on_time_seconds == pytest.approx(10.01)
    assert row.total_energy_joules == pytest.approx(15.015)
    assert row.avg_power_watts == pytest.approx(1.5)
    assert row.max_power_watts == pytest.approx(1.5)

    async with sessions() as session:
        history = await SessionsRepository(session).subject_session_history(records[SUBJECT])
    assert len(history) == 1
    seen = history[0]
    assert (seen.session_id, seen.subject_code, seen.status) == (opened.session_id, SUBJECT, "completed")
    assert (seen.start_time, seen.end_time) == (opened.started_at, clock.now)
    assert seen.protocol_name == PROTOCOL
    assert seen.technician == "Alice Example"
    assert seen.total_laser_on_time_seconds == pytest.approx(summary.laser_on_time_s)
    assert seen.avg_power_watts == pytest.approx(summary.avg_power_w)
    assert seen.total_energy_joules == pytest.approx(summary.energy_j)

    shown = await service.summary_of(opened.session_id)
    assert shown["status"] == "completed"
    assert shown["subject_code"] == SUBJECT
    assert shown["technician"] == "Alice Example"
    assert shown["duration_seconds"] == 125
    assert shown["energy_j"] == pytest.approx(15.015)
    assert shown["event_count"] == 0
    assert shown["safety_event_count"] == 0
    assert shown["post_treatment_notes"] is None
    assert (shown["folder"], shown["session_uid"]) == (str(opened.folder), opened.session_uid)

    # A new session may open once the previous one is finished, in a folder of its own.
    second = await open_standard(service)
    assert second.session_id != opened.session_id
    assert second.session_uid != opened.session_uid and second.folder != opened.folder


async def test_finish_records_the_telemetry_file(
    service: SessionService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from storage.telemetry import TelemetrySummary

    opened = await open_standard(service)
    content = b'{"t_s": 0.0}\n{"t_s": 0.01}\n'
    path = opened.folder / "telemetry.jsonl"
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    telemetry = TelemetrySummary(path=path, line_count=2, sha256=digest, size_bytes=len(content))
    await service.finish(
        opened.session_id,
        status="completed",
        reason=None,
        summary=SessionSummary.empty(),
        telemetry=telemetry,
        video_path=None,
    )
    row = await session_row(sessions, opened.session_id)
    assert (row.telemetry_path, row.telemetry_line_count, row.telemetry_sha256) == (str(path), 2, digest)
    shown = await service.summary_of(opened.session_id)
    assert shown["telemetry_sha256"] == digest
    assert shown["telemetry_line_count"] == 2


async def test_finish_refusals_change_nothing(
    service: SessionService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from storage.telemetry import TelemetrySummary

    opened = await open_standard(service)
    before = await session_row(sessions, opened.session_id)
    base: dict[str, Any] = {
        "status": "completed",
        "reason": None,
        "summary": SessionSummary.empty(),
        "telemetry": None,
        "video_path": None,
    }
    bad_checksum = TelemetrySummary(path=opened.folder / "t.jsonl", line_count=1, sha256="abc", size_bytes=3)
    bad_count = TelemetrySummary(path=opened.folder / "t.jsonl", line_count=-1, sha256="0" * 64, size_bytes=0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"status": "aborted", "reason": None}, "the abort reason must not be empty"),
        ({"status": "aborted", "reason": "   "}, "the abort reason must not be empty"),
        ({"status": "completed", "reason": "stopped"}, "a completed session takes no abort reason"),
        ({"status": "paused"}, "finished as completed or aborted, not 'paused'"),
        ({"summary": {"energy_j": 1.0}}, "the summary must be a SessionSummary"),
        ({"telemetry": bad_checksum}, "the telemetry checksum must be 64 lower-case hex digits"),
        ({"telemetry": bad_count}, "the telemetry line count must be a whole number >= 0"),
        ({"telemetry": "t.jsonl"}, "the telemetry must be a TelemetrySummary"),
        ({"video_path": 5}, "the video path must be text"),
    ]
    for overrides, message in cases:
        with pytest.raises(SessionRefused, match=message):
            await service.finish(opened.session_id, **{**base, **overrides})
    with pytest.raises(SessionRefused, match="no session with id 77"):
        await service.finish(77, **base)
    after = await session_row(sessions, opened.session_id)
    assert (after.status, after.end_time, after.abort_reason) == (before.status, None, None)


async def test_finish_refuses_an_already_finished_session(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    opened = await open_standard(service)
    await service.set_status(opened.session_id, "paused")  # a paused session can be finished
    clock.advance(timedelta(seconds=30))
    await service.finish(
        opened.session_id,
        status="aborted",
        reason="E-stop pressed",
        summary=SessionSummary(laser_on_time_s=3.0, avg_power_w=1.0, max_power_w=1.2, energy_j=3.0),
        telemetry=None,
        video_path=None,
    )
    first = await session_row(sessions, opened.session_id)
    assert (first.status, first.abort_reason, first.duration_seconds) == ("aborted", "E-stop pressed", 30)
    clock.advance(timedelta(seconds=30))
    for status, reason in (("completed", None), ("aborted", "again")):
        with pytest.raises(SessionRefused, match=f"session {opened.session_id} is already aborted"):
            await service.finish(
                opened.session_id,
                status=status,  # type: ignore[arg-type]
                reason=reason,
                summary=completed_summary(),
                telemetry=None,
                video_path=None,
            )
    again = await session_row(sessions, opened.session_id)
    assert (again.status, again.abort_reason, again.end_time) == ("aborted", "E-stop pressed", first.end_time)
    assert again.total_energy_joules == pytest.approx(3.0)


# ---- notes


async def test_notes_once_on_a_finished_session(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], records: dict[str, int]
) -> None:
    opened = await open_standard(service)
    with pytest.raises(SessionRefused, match=f"session {opened.session_id} is still in_progress"):
        await service.add_notes(opened.session_id, "too early", username="alice")
    await service.finish(
        opened.session_id,
        status="completed",
        reason=None,
        summary=completed_summary(),
        telemetry=None,
        video_path=None,
    )
    with pytest.raises(SessionRefused, match="the notes must not be empty"):
        await service.add_notes(opened.session_id, "  \n", username="alice")
    with pytest.raises(SessionRefused, match="no user named 'mallory'"):
        await service.add_notes(opened.session_id, "x", username="mallory")
    with pytest.raises(SessionRefused, match="user 'bob' is inactive"):
        await service.add_notes(opened.session_id, "x", username="bob")
    with pytest.raises(SessionRefused, match="at most 10000 characters"):
        await service.add_notes(opened.session_id, "x" * 10_001, username="alice")
    assert (await session_row(sessions, opened.session_id)).post_treatment_notes is None

    await service.add_notes(opened.session_id, "Well tolerated.\nNo redness.", username="alice")
    with pytest.raises(SessionRefused, match="already has notes; they cannot be changed"):
        await service.add_notes(opened.session_id, "rewritten", username="alice")
    assert (await session_row(sessions, opened.session_id)).post_treatment_notes == (
        "Well tolerated.\nNo redness."
    )
    notes_audit = [a for a in await audit_actions(sessions) if a.action == "session_notes"]
    assert [(a.tech_id, a.entity_type, a.entity_id, a.terminal) for a in notes_audit] == [
        (records["alice"], "session", opened.session_id, TERMINAL)
    ]
    shown = await service.summary_of(opened.session_id)
    assert shown["post_treatment_notes"] == "Well tolerated.\nNo redness."


# ---- start-up close


async def test_close_interrupted_aborts_open_sessions_and_logs_them(
    service: SessionService,
    sessions: async_sessionmaker[AsyncSession],
    clock: FakeClock,
    records: dict[str, int],
) -> None:
    started = clock.now - timedelta(minutes=10)
    async with sessions() as session, session.begin():
        repo = SessionsRepository(session)
        ids = {}
        for status in ("in_progress", "paused", "completed"):
            row = await repo.add(
                TreatmentSession(
                    subject_id=records[SUBJECT],
                    tech_id=records["alice"],
                    start_time=started,
                    status=status,
                    end_time=started + timedelta(minutes=1) if status == "completed" else None,
                )
            )
            ids[status] = row.session_id

    closed = await service.close_interrupted()
    assert sorted(closed) == sorted([ids["in_progress"], ids["paused"]])
    for status in ("in_progress", "paused"):
        row = await session_row(sessions, ids[status])
        assert row.status == "aborted"
        assert row.abort_reason == DEFAULT_INTERRUPTED_REASON
        assert row.end_time == clock.now
        assert row.duration_seconds == 600
        async with sessions() as session:
            logged = await SafetyLogRepository(session).for_session(ids[status])
        assert len(logged) == 1
        entry = logged[0]
        assert (entry.event_type, entry.severity, entry.action_taken) == (
            EVENT_ABORTED_AT_STARTUP,
            "warning",
            "closed as aborted",
        )
        assert entry.timestamp == clock.now
        assert entry.tech_id == records["alice"]
        assert DEFAULT_INTERRUPTED_REASON in entry.description
        assert entry.details is not None and entry.details["previous_status"] == status
    untouched = await session_row(sessions, ids["completed"])
    assert untouched.status == "completed"
    async with sessions() as session:
        assert await SafetyLogRepository(session).for_session(ids["completed"]) == []

    assert await service.close_interrupted("power cut") == []  # nothing left open
    opened = await open_standard(service)  # and a new session may open
    assert opened.session_id not in closed


async def test_close_interrupted_uses_the_given_reason(
    service: SessionService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    opened = await open_standard(service)
    assert await service.close_interrupted("power cut during treatment") == [opened.session_id]
    row = await session_row(sessions, opened.session_id)
    assert (row.status, row.abort_reason) == ("aborted", "power cut during treatment")
    with pytest.raises(SessionRefused, match="the reason must not be empty"):
        await service.close_interrupted(" ")


# ---- the end-of-session view


async def test_summary_counts_events_and_safety_rows(
    service: SessionService, sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    opened = await open_standard(service)
    async with sessions() as session, session.begin():
        await TreatmentEventsRepository(session).add_many(
            [
                {
                    "session_id": opened.session_id,
                    "timestamp": clock.now + timedelta(milliseconds=i),
                    "time_offset_ms": i,
                    "event_type": "laser_on" if i == 0 else "power_change",
                    "laser_power_commanded_watts": 1.0,
                }
                for i in range(3)
            ]
        )
        await SafetyLogRepository(session).add(
            SafetyRecord(
                event_type="photodiode_warning",
                severity="warning",
                description="measured 18 % below commanded",
                session_id=opened.session_id,
            )
        )
    shown = await service.summary_of(opened.session_id)
    assert shown["event_count"] == 3
    assert shown["safety_event_count"] == 1
    assert shown["status"] == "in_progress"
    assert shown["end_time"] is None
    assert shown["folder"] == str(opened.folder)
    with pytest.raises(SessionRefused, match="no session with id 4242"):
        await service.summary_of(4242)
