"""The backups an admin manages: listing with size and verdict, retention from the configuration, verifying,
and restoring into a database that stays open (refused while a session is open), each audited."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from storage import DataDir
from storage.backup import backup_database
from storage.backups import (
    backup_overview,
    find_backup,
    make_backup,
    read_retention_days,
    restore_live,
    verify_backup,
)
from storage.errors import RestoreError


def _execute(db_path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    connection = sqlite3.connect(str(db_path))
    with connection:
        connection.execute(sql, params)
    connection.close()


def _codes(db_path: Path) -> list[str]:
    connection = sqlite3.connect(str(db_path))
    codes = [str(r[0]) for r in connection.execute("SELECT subject_code FROM subjects ORDER BY subject_code")]
    connection.close()
    return codes


def _audit(db_path: Path) -> list[tuple[str, str, str | None, dict[str, object]]]:
    connection = sqlite3.connect(str(db_path))
    rows = connection.execute("SELECT action, outcome, username, details FROM audit_log ORDER BY audit_id")
    found = [(str(a), str(o), u, json.loads(d)) for a, o, u, d in rows]
    connection.close()
    return found


def _set_retention(db_path: Path, value: str, kind: str = "integer") -> None:
    _execute(
        db_path,
        "INSERT OR REPLACE INTO system_config (config_key, config_value, config_type) "
        "VALUES ('backup_retention_days', ?, ?)",
        (value, kind),
    )


def test_retention_comes_from_the_configuration(data_dir: DataDir) -> None:
    assert read_retention_days(data_dir.db_path) == (30, None)
    _set_retention(data_dir.db_path, "7")
    assert read_retention_days(data_dir.db_path) == (7, None)
    _set_retention(data_dir.db_path, "0")
    days, problem = read_retention_days(data_dir.db_path)
    assert days == 30 and problem is not None and "0 is outside 1 to 3650 days" in problem
    _set_retention(data_dir.db_path, "week", "string")
    days, problem = read_retention_days(data_dir.db_path)
    assert days == 30 and problem is not None and "not a whole number" in problem


def test_a_backup_made_now_is_listed_verified_and_old_ones_pruned_by_the_retention(data_dir: DataDir) -> None:
    _set_retention(data_dir.db_path, "7")
    old = backup_database(data_dir, now=datetime(2020, 1, 1, 12, 0, 0))
    entry = make_backup(data_dir, user="ada", terminal="tty1")
    assert not old.exists()  # older than 7 days
    overview = backup_overview(data_dir)
    assert [e.name for e in overview.entries] == [entry.name]
    assert overview.entries[0].verified_text == "yes"
    assert overview.entries[0].size == entry.path.stat().st_size > 0
    assert overview.retention_days == 7
    assert overview.free_bytes > 0 and overview.total_bytes >= overview.free_bytes
    assert _audit(data_dir.db_path)[-1] == (
        "db_backup",
        "success",
        "ada",
        {"backup": entry.name, "retention_days": 7},
    )


def test_verify_says_no_for_a_damaged_backup_and_forgets_a_verdict_when_the_file_changes(
    data_dir: DataDir,
) -> None:
    good = backup_database(data_dir, now=datetime(2026, 3, 1, 9, 0, 0))
    bad = backup_database(data_dir, now=datetime(2026, 3, 1, 10, 0, 0))
    assert [e.verified_text for e in backup_overview(data_dir).entries] == ["not checked", "not checked"]
    with bad.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 4096)
    assert verify_backup(data_dir, good.name, user="ada")[0] is True
    ok, note = verify_backup(data_dir, bad.name, user="ada")
    assert not ok and bad.name in note
    assert [e.verified_text for e in backup_overview(data_dir).entries] == ["no", "yes"]
    assert [(a, o) for a, o, _u, _d in _audit(data_dir.db_path)] == [
        ("db_backup_verify", "success"),
        ("db_backup_verify", "failure"),
    ]
    with good.open("ab") as handle:
        handle.write(b"\x00" * 512)
    assert backup_overview(data_dir).entries[1].verified_text == "not checked"


@pytest.mark.parametrize("name", ["../tosca.db", "tosca.db", "tosca_20260301_090000.db"])
def test_only_a_listed_backup_can_be_named(data_dir: DataDir, name: str) -> None:
    with pytest.raises(RestoreError):
        find_backup(data_dir, name)
    with pytest.raises(RestoreError):
        verify_backup(data_dir, name, user="ada")
    with pytest.raises(RestoreError):
        restore_live(data_dir, name, user="ada")
    assert [(a, o, u) for a, o, u, _d in _audit(data_dir.db_path)] == [
        ("db_backup_verify", "failure", "ada"),
        ("db_restore", "failure", "ada"),
    ]


def test_restore_into_the_open_database_backs_up_first(data_dir: DataDir) -> None:
    _execute(data_dir.db_path, "INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
    saved = backup_database(data_dir, now=datetime(2026, 3, 1, 9, 0, 0))
    _execute(data_dir.db_path, "INSERT INTO subjects (subject_code) VALUES ('P-2026-0002')")
    # A connection held open across the restore, as the console's and the controller's engines are.
    reader = sqlite3.connect(str(data_dir.db_path))
    reader.execute("PRAGMA journal_mode = WAL")
    assert [r[0] for r in reader.execute("SELECT subject_code FROM subjects")] == [
        "P-2026-0001",
        "P-2026-0002",
    ]

    result = restore_live(data_dir, saved.name, user="ada", terminal="tty1")

    assert [r[0] for r in reader.execute("SELECT subject_code FROM subjects")] == ["P-2026-0001"]
    reader.close()
    assert _codes(result.replaced_backup) == ["P-2026-0001", "P-2026-0002"]
    assert result.revision == "20261207_005"
    action, outcome, user, details = _audit(data_dir.db_path)[-1]
    assert (action, outcome, user) == ("db_restore", "success", "ada")
    assert details["backup"] == saved.name and details["replaced_backup"] == result.replaced_backup.name
    connection = sqlite3.connect(str(data_dir.db_path))
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_restore_is_refused_while_a_session_is_open(data_dir: DataDir) -> None:
    saved = backup_database(data_dir, now=datetime(2026, 3, 1, 9, 0, 0))
    _execute(
        data_dir.db_path, "INSERT INTO tech_users (username, full_name, role) VALUES ('t', 'T', 'technician')"
    )
    _execute(data_dir.db_path, "INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
    _execute(
        data_dir.db_path,
        "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
        "VALUES (1, 1, '2026-03-01', 'in_progress')",
    )
    with pytest.raises(RestoreError, match="restore refused while a session is open"):
        restore_live(data_dir, saved.name, user="ada")
    assert _codes(data_dir.db_path) == ["P-2026-0001"]
    assert [e.name for e in backup_overview(data_dir).entries] == [saved.name]  # nothing backed up either
    _execute(data_dir.db_path, "UPDATE sessions SET status = 'completed'")
    with pytest.raises(RestoreError, match=r"\(session 7 is running on the rig\)"):
        restore_live(data_dir, saved.name, user="ada", session_open=lambda: "session 7 is running on the rig")
    assert [(a, o) for a, o, _u, _d in _audit(data_dir.db_path)] == [("db_restore", "failure")] * 2
    assert _codes(data_dir.db_path) == ["P-2026-0001"]


def test_a_damaged_backup_is_never_restored(data_dir: DataDir) -> None:
    bad = backup_database(data_dir, now=datetime(2026, 3, 1, 9, 0, 0))
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)
    _execute(data_dir.db_path, "INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
    with pytest.raises(RestoreError, match="does not verify"):
        restore_live(data_dir, bad.name, user="ada")
    assert _codes(data_dir.db_path) == ["P-2026-0001"]


def test_a_session_opened_while_the_current_database_is_backed_up_stops_the_restore(
    data_dir: DataDir,
) -> None:
    saved = backup_database(data_dir, now=datetime.now().replace(microsecond=0) - timedelta(days=1))
    _execute(data_dir.db_path, "INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
    answers = iter([None, "session 3 opened meanwhile"])
    with pytest.raises(RestoreError, match=r"\(session 3 opened meanwhile\)"):
        restore_live(data_dir, saved.name, user="ada", session_open=lambda: next(answers))
    assert _codes(data_dir.db_path) == ["P-2026-0001"]
    assert len(backup_overview(data_dir).entries) == 2  # the backup taken first stays
