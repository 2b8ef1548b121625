"""Retention over a records database spanning eight years: exactly the rows and files the policy allows go,
the chain still verifies and shows the pruning, a dry run changes nothing, a clock set backwards prunes
nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from control.accounts import AccountService
from control.protocol_approval import approve_as_system
from control.sessions import SessionService, SessionSummary
from control.signing import sign_session
from storage import DataDir, create_engine, session_factory
from storage.chain_verify import verify_database
from storage.models import TechUser
from storage.repositories import (
    ProtocolsRepository,
    SafetyLogRepository,
    SubjectsRepository,
    TreatmentEventsRepository,
    UsersRepository,
)
from storage.retention import RetentionPolicy, RetentionRefused, reclaimable_bytes, run_retention
from storage.safety_records import SafetyRecord
from storage.telemetry import TelemetrySummary
from tests.control.signing_fixtures import PASSWORD, PROTOCOL, PROTOCOL_DATA, copy_template
from tests.support import CHEAP, FakeClock
from tui import cli

#: The day of the run: eight years of sessions (2040 to 2047) lie before it.
NOW = datetime(2048, 1, 1, 3, 0)
#: Video 1 year, telemetry 3 years, sessions 5 years (1826 days), safety rows 1 year, audit 6 years.
POLICY = RetentionPolicy(
    video_days=365, telemetry_days=1095, sessions_days=1826, safety_days=365, audit_days=2192
)


@dataclass
class Generated:
    data_dir: DataDir
    #: Session id -> (end time, folder, telemetry file, video file).
    sessions: dict[int, tuple[datetime, Path, Path, Path]]


@pytest.fixture
async def eight_years(tmp_path: Path, migrated_template: Path) -> AsyncIterator[Generated]:
    data_dir = copy_template(migrated_template, DataDir(tmp_path / "data"))
    engine = create_engine(data_dir.db_path)
    sessions = session_factory(engine)
    clock = FakeClock(datetime(2040, 1, 2, 8, 0))
    accounts = AccountService(sessions=sessions, terminal="/dev/tty1", clock=clock, hashing=CHEAP)
    service = SessionService(sessions, data_dir, clock=clock, terminal="/dev/tty1")
    made: dict[int, tuple[datetime, Path, Path, Path]] = {}
    try:
        hashed = await accounts.hash_password(PASSWORD)
        async with sessions() as s, s.begin():
            tech = await UsersRepository(s).add(
                TechUser(username="jdoe", full_name="Jane Doe", role="technician", password_hash=hashed)
            )
            await SubjectsRepository(s).add("P-2040-0001", created_by_tech_id=tech.tech_id)
            added = await ProtocolsRepository(s).add(
                PROTOCOL, "standard", PROTOCOL_DATA, created_by_tech_id=tech.tech_id
            )
            await approve_as_system(s, added.protocol_id)
        for year in range(2040, 2048):
            for month in (2, 8):
                clock.now = datetime(year, month, 1, 9, 0)
                opened = await service.open(
                    subject_code="P-2040-0001", username="jdoe", protocol_name=PROTOCOL, backup=False
                )
                async with sessions() as s, s.begin():
                    await TreatmentEventsRepository(s).add_many(
                        [
                            {
                                "session_id": opened.session_id,
                                "timestamp": clock.now + timedelta(seconds=i),
                                "time_offset_ms": i * 1000,
                                "event_type": "power_sample",
                                "laser_power_actual_watts": 1.0,
                            }
                            for i in range(3)
                        ]
                    )
                    await SafetyLogRepository(s).add(
                        SafetyRecord(
                            event_type="interlock_check",
                            severity="info",
                            description="door closed",
                            session_id=opened.session_id,
                            timestamp=clock.now,
                        )
                    )
                telemetry = opened.folder / "telemetry.jsonl"
                telemetry.write_text('{"t": 0}\n' * 50, encoding="utf-8")
                video = opened.folder / "video.mp4"
                video.write_bytes(b"\0" * 4000)
                clock.advance(timedelta(minutes=10))
                await service.finish(
                    opened.session_id,
                    status="completed",
                    reason=None,
                    summary=SessionSummary(
                        laser_on_time_s=60.0, avg_power_w=1.0, max_power_w=1.0, energy_j=60.0
                    ),
                    telemetry=TelemetrySummary(
                        path=telemetry,
                        line_count=50,
                        sha256=hashlib.sha256(b'{"t": 0}\n' * 50).hexdigest(),
                        size_bytes=450,
                    ),
                    video_path=str(video),
                )
                await sign_session(accounts, opened.session_id, "jdoe", PASSWORD, "performed by")
                made[opened.session_id] = (clock.now, opened.folder, telemetry, video)
    finally:
        await engine.dispose()
    yield Generated(data_dir, made)


def _count(db: Path, sql: str, *params: object) -> int:
    connection = sqlite3.connect(str(db))
    try:
        return int(connection.execute(sql, params).fetchone()[0])
    finally:
        connection.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_dry_run_reports_and_changes_nothing(eight_years: Generated) -> None:
    db = eight_years.data_dir.db_path
    before = _digest(db)
    report = run_retention(db, eight_years.data_dir.root, POLICY, NOW, dry_run=True)
    assert report.sessions == sorted(eight_years.sessions)[:6]
    assert report.rows["treatment_events"] == 18
    assert _digest(db) == before
    assert all(folder.exists() for _end, folder, _t, _v in eight_years.sessions.values())
    # The free-space floor reports the same accounting: the bytes of the files a run would remove.
    assert reclaimable_bytes(db, eight_years.data_dir.root, POLICY, NOW) == report.bytes_freed > 0
    assert _digest(db) == before


def test_eight_years_pruned_by_policy_exactly_and_the_chain_still_verifies(
    eight_years: Generated, capsys: pytest.CaptureFixture[str]
) -> None:
    db = eight_years.data_dir.db_path
    root = eight_years.data_dir.root
    ids = sorted(eight_years.sessions)
    audit_cut = "2041-12-31 03:00:00"  # NOW - 2192 days
    old_audit = _count(db, "SELECT count(*) FROM audit_log WHERE timestamp < ?", audit_cut)
    audit_total = _count(db, "SELECT count(*) FROM audit_log")
    safety_total = _count(db, "SELECT count(*) FROM safety_log")
    assert old_audit > 0

    report = run_retention(db, root, POLICY, NOW)

    # Sessions of 2040, 2041 and 2042 (ended before 2043-01-01, five years back) go with every row and file.
    gone, kept = ids[:6], ids[6:]
    assert report.sessions == gone
    assert _count(db, "SELECT count(*) FROM sessions") == len(kept)
    assert _count(db, "SELECT min(session_id) FROM sessions") == kept[0]
    assert _count(db, "SELECT count(*) FROM treatment_events") == 3 * len(kept)
    assert _count(db, "SELECT count(*) FROM session_records") == 2 * len(kept)
    # Safety rows: the database's first row and those of the sessions gone. The rows of 2043 to 2046 are
    # older than the one year of safety retention, but their sessions are within theirs: they stay.
    assert report.rows["safety_log"] == 1 + len(gone)
    assert _count(db, "SELECT count(*) FROM safety_log") == safety_total - 1 - len(gone)
    # Audit rows: exactly those older than six years, and the run's own row is added.
    assert report.rows["audit_log"] == old_audit
    assert _count(db, "SELECT count(*) FROM audit_log") == audit_total - old_audit + 1
    assert _count(db, "SELECT count(*) FROM audit_log WHERE timestamp < ?", audit_cut) == 0
    for session_id, (ended, folder, telemetry, video) in eight_years.sessions.items():
        if session_id in gone:
            assert not folder.exists()
            continue
        assert folder.exists()
        assert video.exists() == (ended >= datetime(2047, 1, 1, 3, 0)), session_id
        assert telemetry.exists() == (ended >= datetime(2045, 1, 2, 3, 0)), session_id
    removed_videos = sum(1 for i in kept if eight_years.sessions[i][0] < datetime(2047, 1, 1))
    removed_telemetry = sum(1 for i in kept if eight_years.sessions[i][0] < datetime(2045, 1, 1))
    assert (removed_videos, removed_telemetry) == (8, 4)
    assert len(report.files) == len(gone) + removed_videos + removed_telemetry

    result = verify_database(db)
    assert result.failure is None, result.failure
    assert {p.chain for p in result.prunings} == {
        "audit_log",
        "safety_log",
        "treatment_events",
        "session_records",
    }
    assert result.signatures == len(kept)
    assert cli.main(["audit", "verify", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "treatment_events: positions 1 to 18 pruned on" in out
    prune_row = _count(db, "SELECT count(*) FROM audit_log WHERE action = 'records_prune'")
    assert prune_row == 1

    # A second run the same day finds nothing more to prune.
    again = run_retention(db, root, POLICY, NOW + timedelta(hours=1))
    assert again.nothing


def test_a_clock_set_backwards_prunes_nothing(eight_years: Generated) -> None:
    db = eight_years.data_dir.db_path
    before = _digest(db)
    with pytest.raises(RetentionRefused, match="set backwards; nothing pruned"):
        run_retention(db, eight_years.data_dir.root, POLICY, datetime(2047, 6, 1))
    assert _digest(db) == before


def test_an_altered_record_refuses_the_run(eight_years: Generated) -> None:
    db = eight_years.data_dir.db_path
    connection = sqlite3.connect(str(db))
    with connection:
        connection.execute("DROP TRIGGER trg_audit_log_no_update")
        connection.execute("UPDATE audit_log SET outcome = 'failure' WHERE audit_id = 3")
    connection.close()
    with pytest.raises(RetentionRefused, match="the records do not verify"):
        run_retention(db, eight_years.data_dir.root, POLICY, NOW)
    assert _count(db, "SELECT count(*) FROM sessions") == 16
