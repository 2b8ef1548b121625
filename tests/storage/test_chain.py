"""The record chain: every append path chains its rows without gaps, two processes appending at once stay
gapless, rows written before the chain are sealed, values are encoded as SQLite stores them, and the keys
stay outside the database."""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from storage_support import Child

from storage import DataDir, connect_sqlite, create_engine, session_factory
from storage.audit_query import record_action
from storage.backup import backup_database
from storage.chain import (
    ChainError,
    ChainKeyError,
    Mac,
    SqliteExecutor,
    append,
    backup_checkpoint_path,
    checkpoint_async,
    encode_values,
    ensure_keys,
    key_paths,
    row_message,
)
from storage.chain_verify import verify_database
from storage.maintenance import alembic_config, head_revision, record_audit, upgrade
from storage.models import AuditLog, Subject, TechUser, TreatmentEvent, TreatmentSession
from storage.repositories import AuditRepository, SafetyLogRepository, TreatmentEventsRepository
from storage.safety_records import SafetyRecord

Factory = async_sessionmaker[AsyncSession]

SEED_SAFETY_INSERT = (
    "INSERT INTO safety_log (timestamp, event_type, severity, description, system_state, action_taken) "
    "VALUES (CURRENT_TIMESTAMP, 'database_initialized', 'info', 'Database schema created', 'idle', 'none')"
)


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataDir:
    """A data directory made by the install path: its keys created, its first rows sealed."""
    monkeypatch.delenv("TOSCA_CHAIN_KEY_FILE", raising=False)
    data_dir = DataDir(tmp_path / "data")
    upgrade(data_dir)
    return data_dir


async def _session_row(s: AsyncSession) -> TreatmentSession:
    tech = TechUser(username="ana", full_name="Ana", role="technician")
    subject = Subject(subject_code="P-2026-0001")
    s.add_all([tech, subject])
    await s.flush()
    row = TreatmentSession(
        subject_id=subject.subject_id,
        tech_id=tech.tech_id,
        start_time=datetime(2026, 3, 1),
        status="in_progress",
    )
    s.add(row)
    await s.flush()
    return row


def _chain_columns(db_path: Path, table: str, id_column: str) -> list[tuple[int, int | None]]:
    connection = sqlite3.connect(str(db_path))
    try:
        return connection.execute(
            f"SELECT {id_column}, chain_seq FROM {table} ORDER BY {id_column}"
        ).fetchall()
    finally:
        connection.close()


def _verified(db_path: Path) -> dict[str, tuple[int, int]]:
    result = verify_database(db_path)
    assert result.failure is None, result.failure
    return {count.chain: (count.rows, count.sealed) for count in result.counts}


async def test_every_append_path_chains_its_rows_gaplessly(installed: DataDir) -> None:
    db_path = installed.db_path
    engine = create_engine(db_path)
    try:
        factory = session_factory(engine)
        async with factory() as s:
            row = await _session_row(s)
            entry = await AuditRepository(s).add("login", "success", username="ana", details={"ok": True})
            assert entry.audit_id == 1 and entry.chain_seq == 1 and entry.action == "login"
            log_id = await SafetyLogRepository(s).add(
                SafetyRecord(event_type="interlock_open", severity="warning", description="door")
            )
            events = TreatmentEventsRepository(s)
            await events.add_many(
                [
                    {
                        "session_id": row.session_id,
                        "timestamp": datetime(2026, 3, 1, 9),
                        "time_offset_ms": i,
                        "event_type": "sample",
                        "laser_power_actual_watts": i,
                    }
                    for i in range(50)
                ]
            )
            single = await events.add(
                TreatmentEvent(
                    session_id=row.session_id,
                    timestamp=datetime(2026, 3, 1, 9, 1, tzinfo=UTC),
                    time_offset_ms=60000,
                    event_type="laser_off",
                )
            )
            await s.commit()
        assert single.event_id == 51 and single.chain_seq == 51
    finally:
        await engine.dispose()
    record_audit(db_path, "db_backup", "success", details={"backup": "x"})
    record_action(db_path, "user_create", "success", user="ana", terminal="tty2", details={"who": "ben"})
    # The install sealed the migration's own safety row; the door warning came next.
    assert _chain_columns(db_path, "safety_log", "log_id") == [(1, None), (log_id, 2)]
    assert _chain_columns(db_path, "audit_log", "audit_id") == [(1, 1), (2, 2), (3, 3)]
    assert [seq for _id, seq in _chain_columns(db_path, "treatment_events", "event_id")] == list(range(1, 52))
    assert _verified(db_path) == {
        "audit_log": (3, 0),
        "safety_log": (2, 1),
        "treatment_events": (51, 0),
        "session_records": (0, 0),
    }
    connection = sqlite3.connect(str(db_path))
    tech_id = connection.execute("SELECT tech_id FROM audit_log WHERE audit_id = 3").fetchone()[0]
    connection.close()
    assert tech_id == 1  # record_action still fills in the account of a known user


async def test_an_audit_row_added_as_an_orm_object_is_refused(factory: Factory) -> None:
    async with factory() as s:
        s.add(AuditLog(timestamp=datetime(2026, 1, 1), action="sneaky", outcome="success"))
        with pytest.raises(ChainError, match=r"appended through storage\.chain"):
            await s.flush()


async def test_a_rolled_back_append_leaves_no_gap(installed: DataDir) -> None:
    engine = create_engine(installed.db_path)
    try:
        factory = session_factory(engine)
        async with factory() as s:
            await AuditRepository(s).add("first", "success")
            await s.commit()
        async with factory() as s:
            await AuditRepository(s).add("undone", "success")
            await s.rollback()
        async with factory() as s:
            await AuditRepository(s).add("second", "success")
            await checkpoint_async(s, "session_end")
            await s.commit()
    finally:
        await engine.dispose()
    assert _chain_columns(installed.db_path, "audit_log", "audit_id") == [(1, 1), (2, 2)]
    assert _verified(installed.db_path)["audit_log"] == (2, 0)


APPENDER = """
import sys
from pathlib import Path
from storage.maintenance import record_audit
for n in range(int(sys.argv[2])):
    record_audit(Path(sys.argv[1]), "proc_" + sys.argv[3], "success", details={"n": n})
print("done", flush=True)
"""


def test_two_processes_appending_at_once_keep_the_chain_gapless(
    installed: DataDir, child: type[Child]
) -> None:
    rows = 150
    writers = [child(APPENDER, str(installed.db_path), str(rows), name) for name in ("console", "controller")]
    for writer in writers:
        assert writer.read_line() == "done"
    seqs = [seq for _id, seq in _chain_columns(installed.db_path, "audit_log", "audit_id")]
    assert seqs == list(range(1, 2 * rows + 1))
    connection = sqlite3.connect(str(installed.db_path))
    actions = {a for (a,) in connection.execute("SELECT DISTINCT action FROM audit_log")}
    connection.close()
    assert actions == {"proc_console", "proc_controller"}
    assert _verified(installed.db_path)["audit_log"] == (2 * rows, 0)


ASYNC_APPENDER = """
import asyncio, sys
from pathlib import Path
from storage import create_engine, session_factory
from storage.repositories import AuditRepository

async def main() -> None:
    engine = create_engine(Path(sys.argv[1]))
    factory = session_factory(engine)
    for n in range(int(sys.argv[2])):
        async with factory() as s:
            await AuditRepository(s).add("async_" + sys.argv[3], "success", details={"n": n})
            await s.commit()
    await engine.dispose()

asyncio.run(main())
print("done", flush=True)
"""


def test_two_processes_appending_through_the_async_engine_keep_the_chain_gapless(
    installed: DataDir, child: type[Child]
) -> None:
    rows = 120
    writers = [
        child(ASYNC_APPENDER, str(installed.db_path), str(rows), name) for name in ("console", "controller")
    ]
    writers.append(child(APPENDER, str(installed.db_path), str(rows), "cli"))
    for writer in writers:
        assert writer.read_line() == "done"
    seqs = [seq for _id, seq in _chain_columns(installed.db_path, "audit_log", "audit_id")]
    assert seqs == list(range(1, 3 * rows + 1))
    assert _verified(installed.db_path)["audit_log"] == (3 * rows, 0)


def _database_before_the_chain(tmp_path: Path) -> DataDir:
    data_dir = DataDir(tmp_path / "old").ensure()
    command.upgrade(alembic_config(data_dir.db_path), "20261207_001")
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('admin', 'Admin', 'admin')"
        )
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2025-0001')")
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, '2025-05-01', 'completed')"
        )
        connection.executemany(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
            "laser_power_actual_watts, footpedal_state) VALUES (1, ?, ?, 'sample', ?, ?)",
            [(f"2025-05-01 10:00:{i:02d}", i * 1000, i * 0.5, i % 2) for i in range(40)],
        )
        connection.executemany(
            "INSERT INTO audit_log (timestamp, username, action, outcome, details) "
            "VALUES (?, 'admin', ?, 'success', ?)",
            [(f"2025-05-0{d} 08:00:00", f"old_{d}", json.dumps({"d": d})) for d in range(1, 8)],
        )
    connection.close()
    return data_dir


def test_a_database_with_rows_from_before_the_chain_is_migrated_sealed_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOSCA_CHAIN_KEY_FILE", raising=False)
    data_dir = _database_before_the_chain(tmp_path)
    result = upgrade(data_dir)
    assert (result.previous, result.current) == ("20261207_001", head_revision())
    assert _verified(data_dir.db_path) == {
        "audit_log": (7, 7),
        "safety_log": (1, 1),
        "treatment_events": (40, 40),
        "session_records": (0, 0),
    }
    record_audit(data_dir.db_path, "after", "success")
    assert _chain_columns(data_dir.db_path, "audit_log", "audit_id")[-2:] == [(7, None), (8, 8)]
    assert _verified(data_dir.db_path)["audit_log"] == (8, 7)
    # A sealed row deleted later is noticed, though the rows sealed before the chain carry no link.
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("DROP TRIGGER trg_treatment_events_no_delete")
        connection.execute("DELETE FROM treatment_events WHERE event_id = 20")
    connection.close()
    failure = verify_database(data_dir.db_path).failure
    assert failure is not None and failure.kind == "missing"
    assert failure.message == (
        "treatment_events: missing: 39 rows up to id 40 where the seal (checkpoint 3) counted 40"
    )


def test_without_the_install_path_the_first_append_seals_the_older_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOSCA_CHAIN_KEY_FILE", raising=False)
    data_dir = _database_before_the_chain(tmp_path)
    command.upgrade(alembic_config(data_dir.db_path), "head")  # migrated, never opened: nothing sealed
    ensure_keys(data_dir.db_path)
    unsealed = verify_database(data_dir.db_path)
    assert unsealed.failure is not None and unsealed.failure.kind == "unsealed"
    record_audit(data_dir.db_path, "first_open", "success")
    connection = sqlite3.connect(str(data_dir.db_path))
    reasons = connection.execute("SELECT chain, length, reason FROM chain_checkpoints").fetchall()
    connection.close()
    # Every chain is sealed at the first open, not only the one appended to.
    assert reasons == [
        ("audit_log", 7, "seal"),
        ("safety_log", 1, "seal"),
        ("treatment_events", 40, "seal"),
        ("session_records", 0, "seal"),
    ]
    record_audit(data_dir.db_path, "second", "success")
    assert _chain_columns(data_dir.db_path, "audit_log", "audit_id")[-3:] == [(7, None), (8, 8), (9, 9)]
    assert _verified(data_dir.db_path) == {
        "audit_log": (9, 7),
        "safety_log": (1, 1),
        "treatment_events": (40, 40),
        "session_records": (0, 0),
    }


def test_a_row_inserted_by_hand_after_the_chain_began_is_flagged(installed: DataDir) -> None:
    record_audit(installed.db_path, "real", "success")
    connection = connect_sqlite(installed.db_path)
    with connection:
        # The seed's own sample INSERT still runs (the chain columns are nullable) ...
        connection.execute(SEED_SAFETY_INSERT)
    connection.close()
    # ... but a row written around the chain after it began is an insertion.
    failure = verify_database(installed.db_path).failure
    assert failure is not None and failure.kind == "inserted"
    assert failure.message == "safety_log row 2: inserted (it carries no chain link)"


def test_values_are_encoded_as_sqlite_stores_them(installed: DataDir) -> None:
    connection = connect_sqlite(installed.db_path)
    with connection:
        connection.execute("INSERT INTO tech_users (username, full_name, role) VALUES ('a', 'A', 'admin')")
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('S1')")
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, '2026-01-01', 'paused')"
        )
    with connection:
        columns = (
            "session_id",
            "timestamp",
            "time_offset_ms",
            "event_type",
            "laser_power_commanded_watts",
            "laser_power_actual_watts",
            "ring_size_mm",
            "photodiode_voltage_v",
            "footpedal_state",
            "smoothing_device_state",
            "image_path",
            "video_timestamp_ms",
            "event_details",
        )
        local = timezone(timedelta(hours=2))
        append(
            SqliteExecutor(connection),
            "treatment_events",
            columns,
            [
                # an int power, a bool, NaN, -0.0, an aware time, an integral float offset, non-ASCII text
                (
                    1,
                    datetime(2026, 1, 1, 12, tzinfo=local),
                    5.0,
                    "e",
                    5,
                    True,
                    math.nan,
                    -0.0,
                    True,
                    False,
                    "snap/é.png",
                    7,
                    '{"x": "\\u00e9"}',
                ),
                (1, datetime(2026, 1, 1, 10), 6, "e", 0, 0.5, None, 2.25, None, 1, None, None, None),
            ],
        )
        append(
            SqliteExecutor(connection),
            "audit_log",
            ("timestamp", "action", "outcome", "tech_id"),
            [(datetime(2026, 1, 2), "x", "success", True)],
        )
    stored = connection.execute(
        "SELECT timestamp, time_offset_ms, laser_power_commanded_watts, laser_power_actual_watts, "
        "ring_size_mm, photodiode_voltage_v, footpedal_state FROM treatment_events ORDER BY event_id"
    ).fetchall()
    connection.close()
    assert stored == [
        ("2026-01-01 10:00:00.000000", 5, 5.0, 1.0, None, 0.0, 1),
        ("2026-01-01 10:00:00.000000", 6, 0.0, 0.5, None, 2.25, None),
    ]
    assert _verified(installed.db_path)["treatment_events"] == (2, 0)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("time_offset_ms", "12", "time_offset_ms must be an integer"),
        ("timestamp", "2026", "timestamp must be a date, a time or text that is not a number"),
        ("event_type", 1.5, "event_type must be text"),
        ("ring_size_mm", "3", "ring_size_mm must be a number"),
    ],
)
def test_a_value_sqlite_would_store_differently_is_refused_and_nothing_is_written(
    installed: DataDir, column: str, value: object, message: str
) -> None:
    row = {"session_id": 1, "timestamp": datetime(2026, 1, 1), "time_offset_ms": 0, "event_type": "e"}
    row[column] = value
    connection = connect_sqlite(installed.db_path)
    with pytest.raises(ValueError, match=message):
        append(SqliteExecutor(connection), "treatment_events", tuple(row), [tuple(row.values())])
    assert connection.execute("SELECT count(*) FROM treatment_events").fetchone() == (0,)
    connection.close()


def test_the_encoding_is_hmac_sha256_over_the_documented_bytes() -> None:
    key = bytes(range(32))
    values = ["2026-01-01 10:00:00.000000", 3, None, "é\n", 2.5, 1.0]
    message = row_message("audit_log", 5, b"\x01" * 32, values)
    assert message == (
        b"tosca-chain-v1\naudit_log\n"
        + (5).to_bytes(8, "big")
        + b"\x01" * 32
        + b'["2026-01-01 10:00:00.000000",3,null,"\\u00e9\\n",2.5,1.0]'
    )
    assert encode_values(values) == json.dumps(values, separators=(",", ":"), ensure_ascii=True)
    assert Mac(key).digest(message) == hmac.new(key, message, hashlib.sha256).digest()


def test_the_keys_live_where_configured_and_a_short_key_stops_appends(
    installed: DataDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_key, default_signing = key_paths(installed.db_path)
    assert (
        default_key == installed.root / "keys" / "chain.key" and default_signing.parent == default_key.parent
    )
    assert len(default_key.read_bytes()) == 32 and default_key.stat().st_mode & 0o777 == 0o600
    elsewhere = tmp_path / "vault" / "tosca.key"
    monkeypatch.setenv("TOSCA_CHAIN_KEY_FILE", str(elsewhere))
    assert key_paths(installed.db_path) == (elsewhere, elsewhere.with_name("checkpoint_ed25519.key"))
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"\0" * 31)
    with pytest.raises(
        ChainKeyError, match=re.escape(f"the chain key file {elsewhere} holds 31 bytes, not 32")
    ):
        record_audit(installed.db_path, "x", "success")
    monkeypatch.delenv("TOSCA_CHAIN_KEY_FILE")
    record_audit(installed.db_path, "x", "success")
    assert _verified(installed.db_path)["audit_log"] == (1, 0)


async def test_a_locked_database_raises_what_sqlalchemy_raises_and_writes_nothing(installed: DataDir) -> None:
    holder = sqlite3.connect(str(installed.db_path))
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(installed.db_path, busy_timeout_ms=50)
    try:
        async with session_factory(engine)() as s:
            with pytest.raises(OperationalError, match="database is locked"):
                await AuditRepository(s).add("blocked", "success")
            await s.rollback()
        holder.rollback()
        async with session_factory(engine)() as s:
            await AuditRepository(s).add("after", "success")
            await s.commit()
    finally:
        holder.close()
        await engine.dispose()
    assert _chain_columns(installed.db_path, "audit_log", "audit_id") == [(1, 1)]


def test_enumerations_are_stored_and_encoded_as_their_values(installed: DataDir) -> None:
    class Outcome(str, enum.Enum):  # noqa: UP042 - the mixin whose str() is not its value
        SUCCESS = "success"

    class Level(enum.IntEnum):
        FIVE = 5

    connection = connect_sqlite(installed.db_path)
    with connection:
        append(
            SqliteExecutor(connection),
            "audit_log",
            ("timestamp", "action", "outcome", "entity_id"),
            [(datetime(2026, 1, 1), "x", Outcome.SUCCESS, Level.FIVE)],
        )
    assert connection.execute("SELECT outcome, entity_id FROM audit_log").fetchall() == [("success", 5)]
    connection.close()
    assert _verified(installed.db_path)["audit_log"] == (1, 0)


def test_a_backup_carries_its_checkpoints_inside_and_beside_and_pruning_takes_both(
    installed: DataDir,
) -> None:
    record_audit(installed.db_path, "before_backup", "success")
    old = backup_database(installed, now=datetime(2026, 1, 1, 8, 0))
    beside = backup_checkpoint_path(old)
    kept = [c["reason"] for c in json.loads(beside.read_text())["checkpoints"]]
    assert kept == ["backup", "backup", "backup", "backup"]
    inside = sqlite3.connect(str(old))
    assert inside.execute("SELECT count(*) FROM chain_checkpoints WHERE reason = 'backup'").fetchone() == (4,)
    inside.close()
    # The live database keeps writing its own checkpoints; the backup's are in the backup only.
    live = sqlite3.connect(str(installed.db_path))
    assert live.execute("SELECT count(*) FROM chain_checkpoints WHERE reason = 'backup'").fetchone() == (0,)
    live.close()
    assert verify_database(old, keys_of=installed.db_path, backup=True).failure is None
    newer = backup_database(installed, now=datetime(2026, 3, 1, 8, 0))
    assert not old.exists() and not beside.exists()
    assert backup_checkpoint_path(newer).is_file()


def test_the_chain_revision_goes_down_keeping_every_record_and_up_again_sealing_them(
    installed: DataDir,
) -> None:
    for n in range(3):
        record_audit(installed.db_path, f"a{n}", "success")
    config = alembic_config(installed.db_path)
    command.downgrade(config, "20261207_001")
    connection = sqlite3.connect(str(installed.db_path))
    columns = [row[1] for row in connection.execute("PRAGMA table_info(audit_log)")]
    triggers = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    actions = [r[0] for r in connection.execute("SELECT action FROM audit_log ORDER BY audit_id")]
    connection.close()
    assert "chain_seq" not in columns and actions == ["a0", "a1", "a2"]
    assert len(triggers) == 6 and not any("chain" in name for name in triggers)
    upgrade(installed)  # the install path again: the three rows are now sealed before the chain
    record_audit(installed.db_path, "a3", "success")
    assert _verified(installed.db_path)["audit_log"] == (4, 3)


def test_a_start_on_a_bad_key_file_is_refused_in_one_line(installed: DataDir) -> None:
    key, signing = key_paths(installed.db_path)
    signing.write_bytes(b"x" * 64)
    with pytest.raises(ChainKeyError) as refused:
        upgrade(installed)  # what the console and the command line run first
    assert str(refused.value) == f"the checkpoint signing key file {signing} holds 64 bytes, not 32"
    signing.unlink()
    key.unlink()
    upgrade(installed)  # missing keys are made again (the records written before then will not verify)
    assert len(key.read_bytes()) == 32 and len(signing.read_bytes()) == 32
