"""Alembic owns the schema: it upgrades and downgrades cleanly, and the models never drift from it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, MetaData, Text

import migrations
from storage import DataDir, StorageError, create_sync_engine
from storage.maintenance import (
    TRIGGER_NAMES,
    alembic_config,
    check_database,
    head_revision,
    migrations_folder,
    schema_revision,
    upgrade,
    upgrade_async,
)
from storage.models import Base

ROOT = Path(__file__).resolve().parents[2]


def _diffs(db_path: Path, metadata: MetaData) -> list[object]:
    engine = create_sync_engine(db_path)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_models_and_migrated_schema_do_not_drift(db_path: Path) -> None:
    assert _diffs(db_path, Base.metadata) == []


def test_the_drift_check_notices_a_difference(db_path: Path) -> None:
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["subjects"].append_column(Column("nickname", Text()))
    diffs = _diffs(db_path, changed)
    assert len(diffs) == 1 and "nickname" in repr(diffs[0])


def _count(db_path: Path, table: str) -> int:
    connection = sqlite3.connect(str(db_path))
    try:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        connection.close()


def test_upgrade_downgrade_upgrade_on_a_database_holding_data(db_path: Path) -> None:
    connection = sqlite3.connect(str(db_path))
    with connection:
        connection.execute("INSERT INTO tech_users (username, full_name, role) VALUES ('a', 'A', 'admin')")
        connection.execute(
            "INSERT INTO subjects (subject_code, created_by_tech_id) VALUES ('P-2026-0001', 1)"
        )
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, '2026-01-01', 'completed')"
        )
        connection.execute(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type) "
            "VALUES (1, '2026-01-01', 0, 'laser_on')"
        )
        connection.execute(
            "INSERT INTO audit_log (timestamp, action, outcome) "
            "VALUES ('2026-01-01', 'login_success', 'success')"
        )
    connection.close()
    config = alembic_config(db_path)

    command.downgrade(config, "base")
    connection = sqlite3.connect(str(db_path))
    left = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    connection.close()
    assert left == {"alembic_version"}
    assert schema_revision(db_path) is None

    command.upgrade(config, "head")
    assert schema_revision(db_path) == head_revision() == "20261207_005"
    report = check_database(db_path)
    assert (report.views, report.triggers) == (3, len(TRIGGER_NAMES)) == (3, 6)
    assert _count(db_path, "system_config") == 16
    assert _count(db_path, "safety_log") == 1
    assert _count(db_path, "tech_users") == 0
    assert _diffs(db_path, Base.metadata) == []


def test_upgrade_creates_a_new_database_and_backs_up_an_old_one_first(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "fresh")
    created = upgrade(data_dir)
    assert (created.previous, created.current, created.backup) == (None, "20261207_005", None)
    again = upgrade(data_dir)
    assert (again.previous, again.backup) == ("20261207_005", None)

    command.downgrade(alembic_config(data_dir.db_path), "base")
    with pytest.raises(Exception, match="no schema yet"):
        check_database(data_dir.db_path)
    result = upgrade(data_dir)
    assert result.previous is None and result.current == "20261207_005"
    assert result.backup is not None and result.backup.parent == data_dir.backups
    # The backup holds the database as it was before the migration ran (no schema yet).
    assert schema_revision(result.backup) is None
    assert check_database(data_dir.db_path).revision == "20261207_005"


def test_upgrade_refuses_a_foreign_database_and_leaves_it_alone(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "foreign").ensure()
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    connection.close()
    before = data_dir.db_path.read_bytes()
    with pytest.raises(Exception, match="not a TOSCA database"):
        upgrade(data_dir)
    assert data_dir.db_path.read_bytes() == before
    assert list(data_dir.backups.iterdir()) == []


def test_alembic_runs_from_any_directory_without_an_ini_file(tmp_path: Path) -> None:
    assert (migrations.SCRIPT_LOCATION / "script.py.mako").is_file()
    assert migrations_folder() == migrations.SCRIPT_LOCATION
    assert not (ROOT / "alembic.ini").exists()
    code = (
        "import sys; from pathlib import Path\n"
        "from storage import DataDir\n"
        "from storage.maintenance import upgrade\n"
        "print(upgrade(DataDir(Path(sys.argv[1]))).current)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "elsewhere")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "20261207_005"


def test_the_migration_is_atomic(tmp_path: Path) -> None:
    """A database file that makes the migration fail part-way keeps none of its tables."""
    data_dir = DataDir(tmp_path / "atomic").ensure()
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        # A view named like a table the migration creates late makes CREATE TABLE audit_log fail.
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("CREATE VIEW audit_log AS SELECT 1 AS x")
    connection.close()
    with pytest.raises(Exception, match="audit_log"):
        command.upgrade(alembic_config(data_dir.db_path), "head")
    assert _names(data_dir.db_path) == {"alembic_version", "audit_log"}

    # Through upgrade(): backed up first, rolled back, and reported as one StorageError naming the backup.
    with pytest.raises(
        StorageError,
        match=r"migration to schema 20261207_005 failed and was rolled back: .*"
        r"audit_log.*the backup taken first is .*tosca_\d{8}_\d{6}\.db$",
    ):
        upgrade(data_dir)
    assert _names(data_dir.db_path) == {"alembic_version", "audit_log"}
    assert len(list(data_dir.backups.iterdir())) == 1


def _names(db_path: Path) -> set[str]:
    connection = sqlite3.connect(str(db_path))
    try:
        return {
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        }
    finally:
        connection.close()


async def test_the_console_upgrades_from_async_code_through_a_thread(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "console")
    with pytest.raises(StorageError, match="upgrade_async"):
        upgrade(data_dir)
    assert not data_dir.db_path.exists()
    result = await upgrade_async(data_dir)
    assert result.current == "20261207_005"
    assert check_database(data_dir.db_path, quick=True).views == 3


def _sessions_sql(db_path: Path) -> str:
    connection = sqlite3.connect(str(db_path))
    try:
        return str(connection.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions'").fetchone()[0])
    finally:
        connection.close()


def test_the_telemetry_revision_keeps_records_views_triggers_and_ids_both_ways(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "telemetry").ensure()
    config = alembic_config(data_dir.db_path)
    command.upgrade(config, "20261123_001")
    before = _sessions_sql(data_dir.db_path)
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("INSERT INTO tech_users (username, full_name, role) VALUES ('a', 'A', 'admin')")
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
        for status in ("completed", "in_progress", "completed"):
            connection.execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
                "VALUES (1, 1, '2026-01-01', ?)",
                (status,),
            )
        connection.execute(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type) "
            "VALUES (2, '2026-01-01', 0, 'laser_on')"
        )
        connection.execute(
            "INSERT INTO safety_log (timestamp, session_id, event_type, severity, description) "
            "VALUES ('2026-01-01', 2, 'e_stop_pressed', 'critical', 'E-stop')"
        )
    connection.close()

    command.upgrade(config, "20261123_002")
    connection = sqlite3.connect(str(data_dir.db_path))
    connection.execute("PRAGMA foreign_keys = ON")
    columns = [row[1] for row in connection.execute("PRAGMA table_info(sessions)")]
    assert columns[-3:] == ["telemetry_path", "telemetry_line_count", "telemetry_sha256"]
    assert connection.execute("SELECT count(*) FROM active_sessions").fetchone() == (1,)
    assert connection.execute("SELECT count(*) FROM subject_session_history").fetchone() == (3,)
    assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    with connection:
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, '2026-01-02', 'paused')"
        )
    assert connection.execute("SELECT max(session_id) FROM sessions").fetchone() == (4,)
    # The append-only triggers still refuse changes to the records.
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("DELETE FROM treatment_events")
    connection.close()
    report = check_database(data_dir.db_path, require_head=False)
    assert (report.revision, report.views, report.triggers) == ("20261123_002", 3, 6)

    command.downgrade(config, "20261123_001")
    assert _sessions_sql(data_dir.db_path) == before
    assert _count(data_dir.db_path, "sessions") == 4
    assert _count(data_dir.db_path, "treatment_events") == 1
    assert check_database(data_dir.db_path, require_head=False).triggers == 6


def test_the_session_uid_revision_keeps_folders_adds_settings_and_goes_back(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "uid").ensure()
    config = alembic_config(data_dir.db_path)
    command.upgrade(config, "20261123_002")
    before = _sessions_sql(data_dir.db_path)
    subjects_before = _subjects_sql(data_dir.db_path)
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("INSERT INTO tech_users (username, full_name, role) VALUES ('a', 'A', 'admin')")
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status, session_folder_path) "
            "VALUES (1, 1, '2026-01-01', 'completed', '/data/sessions/P-2026-0001/1')"
        )
        # A clinic that already set its own pattern by hand keeps it.
        connection.execute(
            "INSERT INTO system_config (config_key, config_value, config_type) "
            "VALUES ('subject_code_pattern', 'K-NNNNN', 'string')"
        )
    connection.close()

    command.upgrade(config, "20261206_001")
    connection = sqlite3.connect(str(data_dir.db_path))
    try:
        assert connection.execute("SELECT session_folder_path, session_uid FROM sessions").fetchall() == [
            ("/data/sessions/P-2026-0001/1", None)
        ]
        settings = dict(
            connection.execute(
                "SELECT config_key, config_value FROM system_config "
                "WHERE config_key IN ('min_free_disk_mb', 'subject_code_pattern')"
            ).fetchall()
        )
        assert settings == {"min_free_disk_mb": "1024", "subject_code_pattern": "K-NNNNN"}
        with connection:
            connection.execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, status, session_uid) "
                "VALUES (1, 1, '2026-01-02', 'completed', '20260102T000000Z-0a1b2c3d4e5f')"
            )
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"), connection:
            connection.execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, status, session_uid) "
                "VALUES (1, 1, '2026-01-03', 'completed', '20260102T000000Z-0a1b2c3d4e5f')"
            )
        with pytest.raises(sqlite3.IntegrityError, match="ck_sessions_session_uid"), connection:
            connection.execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, status, session_uid) "
                "VALUES (1, 1, '2026-01-03', 'completed', '../../etc')"
            )
    finally:
        connection.close()
    assert check_database(data_dir.db_path, require_head=False).revision == "20261206_001"
    # A clinic's own code fits the wider CHECK, and keeps the downgrade from breaking the narrower one.
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('LX_00001')")
    connection.close()
    with pytest.raises(RuntimeError, match="subject code 'LX_00001' is not of the form P-YYYY-NNNN"):
        command.downgrade(config, "20261123_002")
    assert check_database(data_dir.db_path, require_head=False).revision == "20261206_001"
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("DELETE FROM subjects WHERE subject_code = 'LX_00001'")
    connection.close()

    command.downgrade(config, "20261123_002")
    assert _sessions_sql(data_dir.db_path) == before
    assert _subjects_sql(data_dir.db_path) == subjects_before
    assert _count(data_dir.db_path, "sessions") == 2
    assert check_database(data_dir.db_path, require_head=False).revision == "20261123_002"


def _subjects_sql(db_path: Path) -> str:
    connection = sqlite3.connect(str(db_path))
    try:
        return str(connection.execute("SELECT sql FROM sqlite_master WHERE name = 'subjects'").fetchone()[0])
    finally:
        connection.close()
