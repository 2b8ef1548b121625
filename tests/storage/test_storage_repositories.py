"""Repository behaviour: what they write, what they find, and what they refuse (changing nothing)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import (
    AuditLog,
    Calibration,
    ConfigValueError,
    SessionRecording,
    TechUser,
    TreatmentEvent,
    TreatmentSession,
)
from storage.repositories import (
    AuditRepository,
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

Factory = async_sessionmaker[AsyncSession]


async def _count(s: AsyncSession, table: str) -> int:
    return int((await s.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def _user(
    s: AsyncSession, name: str = "admin", role: str = "admin", password: str | None = "h"
) -> TechUser:
    return await UsersRepository(s).add(
        TechUser(username=name, full_name=name.title(), role=role, password_hash=password)
    )


async def test_users_add_find_list_and_count_admins(factory: Factory) -> None:
    async with factory() as s:
        users = UsersRepository(s)
        admin = await _user(s)
        await _user(s, "nopass", "admin", None)
        gone = await _user(s, "gone", "admin")
        gone.is_active = False
        await users.save(gone)
        await _user(s, "tech", "technician")
        await s.commit()
    async with factory() as s:
        users = UsersRepository(s)
        found = await users.get_by_username("admin")
        assert found is not None and found.tech_id == admin.tech_id
        assert found.must_change_password is False and found.failed_login_count == 0
        assert found.is_active is True and found.created_date is not None
        assert (await users.get_by_id(admin.tech_id)) is not None
        assert await users.get_by_username("Admin") is None
        assert [u.username for u in await users.list_all()] == ["admin", "gone", "nopass", "tech"]
        assert [u.username for u in await users.list_all(include_inactive=False)] == [
            "admin",
            "nopass",
            "tech",
        ]
        assert await users.count_active_admins_with_password() == 1


@pytest.mark.parametrize(
    ("username", "full_name", "role", "message"),
    [
        ("x", "X", "root", "role must be one of technician, engineer, admin"),
        ("", "X", "admin", "username must not be empty"),
        ("x", " ", "admin", "full_name must not be empty"),
        ("admin", "X", "admin", "already taken"),
    ],
)
async def test_users_add_refuses_bad_input_and_writes_nothing(
    factory: Factory, username: str, full_name: str, role: str, message: str
) -> None:
    async with factory() as s:
        await _user(s)
        await s.commit()
    async with factory() as s:
        with pytest.raises(ValueError, match=message):
            await UsersRepository(s).add(TechUser(username=username, full_name=full_name, role=role))
        await s.commit()
        assert await _count(s, "tech_users") == 1


async def test_users_save_refuses_a_bad_role(factory: Factory) -> None:
    async with factory() as s:
        user = await _user(s, "t", "technician")
        await s.commit()
        user.role = "owner"
        with pytest.raises(ValueError, match="role"):
            await UsersRepository(s).save(user)
        await s.rollback()
    async with factory() as s:
        assert (await UsersRepository(s).get_by_username("t")).role == "technician"  # type: ignore[union-attr]


async def test_audit_add_stores_json_details_and_utc_times(factory: Factory) -> None:
    plus_two = timezone(timedelta(hours=2))
    async with factory() as s:
        user = await _user(s)
        audit = AuditRepository(s)
        await audit.add(
            "login_failure",
            "failure",
            username="admni",
            terminal="tty1",
            details={"reason": "unknown_user"},
            timestamp=datetime(2026, 5, 1, 12, 0, tzinfo=plus_two),
        )
        await audit.add(
            "login_success",
            "success",
            tech_id=user.tech_id,
            username="admin",
            entity_type="user",
            entity_id=user.tech_id,
            timestamp=datetime(2026, 5, 1, 11, 0, 1),
        )
        await s.commit()
    async with factory() as s:
        rows = await AuditRepository(s).recent()
        assert [r.action for r in rows] == ["login_success", "login_failure"]
        assert rows[1].timestamp == datetime(2026, 5, 1, 10, 0)  # 12:00+02:00 stored as 10:00 UTC
        assert json.loads(rows[1].details or "") == {"reason": "unknown_user"}
        raw = (await s.execute(text("SELECT timestamp FROM audit_log ORDER BY audit_id"))).scalars().all()
        assert raw[0] == "2026-05-01 10:00:00.000000"
        only = await AuditRepository(s).recent(action="login_success", tech_id=user.tech_id)
        assert len(only) == 1


@pytest.mark.parametrize(
    ("action", "outcome", "details", "message"),
    [
        ("login", "partial", None, "outcome must be one of success, failure"),
        ("", "success", None, "action must not be empty"),
        ("login", "success", {"x": math.nan}, "Out of range float"),
    ],
)
async def test_audit_add_refuses_bad_input(
    factory: Factory, action: str, outcome: str, details: dict[str, float] | None, message: str
) -> None:
    async with factory() as s:
        with pytest.raises(ValueError, match=message):
            await AuditRepository(s).add(action, outcome, details=details)
        await s.commit()
        assert await _count(s, "audit_log") == 0


async def test_subjects_are_added_once_and_found_by_code_prefix(factory: Factory) -> None:
    async with factory() as s:
        subjects = SubjectsRepository(s)
        await subjects.add("P-2026-0001")
        await subjects.add("P-2026-0007")
        await subjects.add("P-2025-0042")
        with pytest.raises(ValueError, match="already exists"):
            await subjects.add("P-2026-0001")
        with pytest.raises(ValueError, match="subject_code must not be empty"):
            await subjects.add("")
        assert [x.subject_code for x in await subjects.search("P-2026")] == ["P-2026-0001", "P-2026-0007"]
        assert await subjects.search("P-2026_") == []  # LIKE wildcards are literal
        await s.commit()
        assert await _count(s, "subjects") == 3


async def test_the_database_keeps_subject_codes_safe_as_folder_names(factory: Factory) -> None:
    for bad in ("P 2026/0001", "x" * 33, "P-2026-\u0661\u0662\u0663\u0664"):
        async with factory() as s:
            with pytest.raises(IntegrityError, match="ck_subjects_subject_code"):
                await SubjectsRepository(s).add(bad)


async def test_protocol_versions_are_kept_and_numbered(factory: Factory) -> None:
    async with factory() as s:
        protocols = ProtocolsRepository(s)
        protocol = await protocols.add("Std", "constant", '{"v": 1}')
        second = await protocols.add_version(protocol.protocol_id, '{"v": 2}', change_summary="longer")
        assert second.version == 2
        assert protocol.protocol_data == '{"v": 2}' and protocol.last_modified_date is not None
        with pytest.raises(ValueError, match="not valid JSON"):
            await protocols.add_version(protocol.protocol_id, "{oops")
        with pytest.raises(ValueError, match="no protocol with id 999"):
            await protocols.add_version(999, "{}")
        with pytest.raises(ValueError, match="already exists"):
            await protocols.add("Std", "constant", "{}")
        with pytest.raises(ValueError, match="no protocol with id 999"):
            await protocols.record_use(999)
        await protocols.record_use(protocol.protocol_id, when=datetime(2026, 2, 2))
        await s.commit()
    async with factory() as s:
        protocols = ProtocolsRepository(s)
        versions = await protocols.versions(protocol.protocol_id)
        assert [(v.version, v.protocol_data) for v in versions] == [(1, '{"v": 1}'), (2, '{"v": 2}')]
        fresh = await protocols.get_by_name("Std")
        assert fresh is not None and fresh.usage_count == 1 and fresh.last_used_date == datetime(2026, 2, 2)
        assert [p.protocol_name for p in await protocols.list_active()] == ["Std"]


async def _session(s: AsyncSession, status: str = "in_progress", **values: object) -> TreatmentSession:
    user = await UsersRepository(s).get_by_username("admin") or await _user(s)
    taken = await _count(s, "subjects")
    subject = await SubjectsRepository(s).add(f"P-2026-{taken + 1:04d}")
    row = TreatmentSession(
        subject_id=subject.subject_id,
        tech_id=user.tech_id,
        start_time=datetime(2026, 3, 1, 9, 0),
        status=status,
        **values,
    )
    return await SessionsRepository(s).add(row)


async def test_interrupted_sessions_are_aborted_with_the_reason(factory: Factory) -> None:
    async with factory() as s:
        running = await _session(s)
        paused = await _session(s, "paused")
        done = await _session(s, "completed", end_time=datetime(2026, 3, 1, 9, 5))
        await s.commit()
    async with factory() as s:
        closed = await SessionsRepository(s).abort_interrupted(
            "console restarted after a crash", when=datetime(2026, 3, 1, 9, 2)
        )
        await s.commit()
        assert sorted(closed) == sorted([running.session_id, paused.session_id])
    async with factory() as s:
        sessions = SessionsRepository(s)
        for session_id in closed:
            row = await sessions.get_by_id(session_id)
            assert row is not None and row.status == "aborted" and row.duration_seconds == 120
            assert row.abort_reason == "console restarted after a crash"
        kept = await sessions.get_by_id(done.session_id)
        assert kept is not None and kept.status == "completed"
        assert await sessions.active_sessions() == []


@pytest.mark.parametrize(
    ("status", "values", "message"),
    [
        ("done", {}, "status must be one of"),
        ("aborted", {}, "abort_reason"),
        ("completed", {"avg_power_watts": -1.0}, "avg_power_watts"),
        ("completed", {"total_energy_joules": math.inf}, "total_energy_joules"),
        ("completed", {"duration_seconds": -3}, "duration_seconds"),
    ],
)
async def test_sessions_refuse_bad_values(
    factory: Factory, status: str, values: dict[str, object], message: str
) -> None:
    async with factory() as s:
        with pytest.raises(ValueError, match=message):
            await _session(s, status, **values)
        await s.rollback()
        assert await _count(s, "sessions") == 0


async def test_recordings_are_typed(factory: Factory) -> None:
    async with factory() as s:
        row = await _session(s)
        sessions = SessionsRepository(s)
        ok = SessionRecording(
            session_id=row.session_id,
            recording_type="video",
            file_path="v.mp4",
            timestamp=datetime(2026, 3, 1),
        )
        assert (await sessions.add_recording(ok)).recording_id is not None
        bad = SessionRecording(
            session_id=row.session_id,
            recording_type="audio",
            file_path="a.wav",
            timestamp=datetime(2026, 3, 1),
        )
        with pytest.raises(ValueError, match="recording_type"):
            await sessions.add_recording(bad)


def _event(session_id: int, i: int, **extra: object) -> dict[str, object]:
    return {
        "session_id": session_id,
        "timestamp": datetime(2026, 3, 1, 9, 0) + timedelta(milliseconds=i),
        "time_offset_ms": i,
        "event_type": "power_change",
        **extra,
    }


async def test_add_many_inserts_a_batch(factory: Factory) -> None:
    async with factory() as s:
        row = await _session(s)
        events = TreatmentEventsRepository(s)
        assert await events.add_many([]) == 0
        batch = [_event(row.session_id, i, laser_power_commanded_watts=float(i)) for i in range(200)]
        assert await events.add_many(batch) == 200
        single = await events.add(
            TreatmentEvent(
                session_id=row.session_id,
                timestamp=datetime(2026, 3, 1, 9, 1, tzinfo=UTC),
                time_offset_ms=60000,
                event_type="laser_off",
            )
        )
        await s.commit()
        assert single.event_id is not None
        assert await events.count_for_session(row.session_id) == 201
        listed = await events.events_for_session(row.session_id)
        assert [e.laser_power_commanded_watts for e in listed[:3]] == [0.0, 1.0, 2.0]
        assert listed[-1].event_type == "laser_off" and listed[-1].timestamp == datetime(2026, 3, 1, 9, 1)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"time_offset_ms": None}, "time_offset_ms"),
        ({"colour": "red"}, "unknown columns colour"),
        ({"laser_power_actual_watts": -0.1}, "laser_power_actual_watts must be a finite number >= 0"),
        ({"laser_power_commanded_watts": math.nan}, "laser_power_commanded_watts must be a finite number"),
    ],
)
async def test_add_many_refuses_a_bad_row_and_writes_none_of_the_batch(
    factory: Factory, bad: dict[str, object], message: str
) -> None:
    async with factory() as s:
        row = await _session(s)
        await s.commit()
        broken = _event(row.session_id, 5)
        broken.update(bad)
        if bad.get("time_offset_ms", 0) is None:
            del broken["time_offset_ms"]
        batch = [_event(row.session_id, i) for i in range(5)] + [broken]
        with pytest.raises(ValueError, match=message):
            await TreatmentEventsRepository(s).add_many(batch)
        await s.commit()
        assert await _count(s, "treatment_events") == 0


async def test_safety_log_checks_each_column_and_writes_nothing_it_refuses(factory: Factory) -> None:
    async with factory() as s:
        log = SafetyLogRepository(s)
        log_id = await log.add(
            SafetyRecord(
                event_type="e_stop_pressed",
                severity="emergency",
                description="E-stop pressed",
                footpedal_state=False,
                action_taken="laser_off",
                details={"source": "button"},
            )
        )
        assert log_id > 0
        for record, message in (
            (SafetyRecord(event_type="x", severity="fatal", description="d"), "severity must be one of"),
            (SafetyRecord(event_type="x", severity="info", description=""), "description must not be empty"),
            (SafetyRecord(event_type=" ", severity="info", description="d"), "event_type must not be empty"),
            (
                SafetyRecord(event_type="x", severity="info", description="d", photodiode_voltage_v=math.inf),
                "photodiode_voltage_v must be a finite number",
            ),
            (
                SafetyRecord(event_type="x", severity="info", description="d", footpedal_state=1),  # type: ignore[arg-type]
                "footpedal_state must be True, False or None",
            ),
            (
                SafetyRecord(event_type="x", severity="info", description="d", details={"v": math.nan}),
                "details cannot be stored as JSON",
            ),
        ):
            with pytest.raises(ValueError, match=message):
                await log.add(record)
        await s.commit()
        assert await _count(s, "safety_log") == 2  # with the migration's database_initialized row
        row = (
            await s.execute(
                text("SELECT severity, footpedal_state, details FROM safety_log WHERE log_id = :id"),
                {"id": log_id},
            )
        ).one()
        assert tuple(row) == ("emergency", 0, '{"source": "button"}')


async def test_a_safety_record_reads_back_as_it_was_written(factory: Factory) -> None:
    written = SafetyRecord(
        event_type="photodiode_fault",
        severity="critical",
        description="measured 40 % below commanded",
        system_state="fault",
        laser_state="off",
        footpedal_state=True,
        smoothing_device_state=False,
        photodiode_voltage_v=1.25,
        action_taken="laser off",
        details={"deviation_percent": -40.0, "term": "photodiode"},
        timestamp=datetime(2026, 3, 1, 9, 30, 0, 250000),
    )
    async with factory() as s:
        session = await _session(s)
        stored = replace(written, session_id=session.session_id, tech_id=session.tech_id)
        await SafetyLogRepository(s).add(stored)
        await s.commit()
        assert await SafetyLogRepository(s).for_session(session.session_id) == [stored]


async def test_a_new_active_calibration_retires_the_previous_one(factory: Factory) -> None:
    async with factory() as s:
        user = await _user(s)
        calibrations = CalibrationsRepository(s)

        def make(day: int, kind: str = "photodiode_voltage_to_power") -> Calibration:
            return Calibration(
                calibration_date=datetime(2026, 1, day),
                tech_id=user.tech_id,
                device_type="photodiode",
                calibration_type=kind,
                calibration_data=json.dumps({"day": day}),
            )

        first = await calibrations.add(make(1))
        other_kind = await calibrations.add(make(2, "laser_power_verification"))
        second = await calibrations.add(make(3))
        await s.commit()
        await s.refresh(first)
        assert (first.is_active, other_kind.is_active, second.is_active) == (False, True, True)
        active = await calibrations.active_calibration("photodiode")
        assert active is not None and active.calibration_id == second.calibration_id
        assert [c.calibration_id for c in await calibrations.history("photodiode")] == [
            second.calibration_id,
            other_kind.calibration_id,
            first.calibration_id,
        ]
        with pytest.raises(ValueError, match="calibration_data is not valid JSON"):
            await calibrations.add(
                Calibration(
                    calibration_date=datetime(2026, 1, 4),
                    tech_id=user.tech_id,
                    device_type="laser",
                    calibration_type="t",
                    calibration_data="not json",
                )
            )


async def test_config_values_are_typed(factory: Factory) -> None:
    async with factory() as s:
        config = ConfigRepository(s)
        assert await config.get("max_laser_power_watts") == 10.0
        assert await config.get("treatment_loop_frequency_hz") == 10
        assert await config.get("video_resolution") == "1920x1080"
        assert await config.get("auto_lock_minutes") == 10
        assert await config.get("no_such_key", 3) == 3
        with pytest.raises(ConfigValueError, match="no such setting"):
            await config.get("no_such_key")
        user = await _user(s)
        entry = await config.set("max_laser_power_watts", 8.5, modified_by=user.tech_id)
        assert entry.modified_by_tech_id == user.tech_id and entry.last_modified is not None
        await config.set("video_fps", 25, modified_by=user.tech_id)
        await config.set("kiosk_mode", True, modified_by=None, config_type="boolean", description="kiosk")
        await config.set("limits", {"a": [1, 2]}, modified_by=None, config_type="json")
        await s.commit()
    async with factory() as s:
        config = ConfigRepository(s)
        assert await config.get("max_laser_power_watts") == 8.5
        assert await config.get("video_fps") == 25
        assert await config.get("kiosk_mode") is True
        assert await config.get("limits") == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("key", "value", "kwargs", "message"),
    [
        ("video_fps", "30", {}, "is not a valid integer"),
        ("video_fps", True, {}, "is not a valid integer"),
        ("max_laser_power_watts", math.inf, {}, "is not a valid float"),
        ("video_resolution", 1920, {}, "is not a valid string"),
        ("video_fps", 30, {"config_type": "float"}, "is a integer, not a float"),
        ("brand_new", 1, {}, "needs a config_type"),
        ("brand_new", 1, {"config_type": "date"}, "config_type must be one of"),
    ],
)
async def test_config_set_refuses_a_value_of_the_wrong_type(
    factory: Factory, key: str, value: object, kwargs: dict[str, str], message: str
) -> None:
    async with factory() as s:
        before = (await s.execute(text("SELECT * FROM system_config ORDER BY config_key"))).all()
        with pytest.raises((ConfigValueError, ValueError), match=message):
            await ConfigRepository(s).set(key, value, modified_by=None, **kwargs)
        await s.commit()
        after = (await s.execute(text("SELECT * FROM system_config ORDER BY config_key"))).all()
        assert after == before


async def test_a_stored_value_that_does_not_parse_is_reported(factory: Factory) -> None:
    async with factory() as s:
        await s.execute(text("UPDATE system_config SET config_value = 'ten' WHERE config_key = 'video_fps'"))
        with pytest.raises(ConfigValueError, match="video_fps: 'ten' is not a valid integer"):
            await ConfigRepository(s).get("video_fps")
        await s.rollback()


async def test_audit_rows_cannot_be_changed_through_the_orm(factory: Factory) -> None:
    async with factory() as s:
        entry = await AuditRepository(s).add("unlock", "success")
        await s.commit()
        entry.outcome = "failure"
        with pytest.raises(Exception, match="audit_log is append-only"):
            await s.commit()
        await s.rollback()
        assert (await s.execute(select(func.count()).select_from(AuditLog))).scalar_one() == 1
