"""Backups, restores, checks and the console lock, including through ``tosca db``."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from storage_support import ROOT, Child

from storage import DataDir, connect_sqlite
from storage.backup import backup_database, last_backup, list_backups, prune_backups
from storage.errors import BackupError, DatabaseCheckError, DatabaseInUseError, RestoreError
from storage.locks import console_lock_holder, hold_console_lock, hold_database_exclusively, rig_lock_holder
from storage.maintenance import check_database, restore, schema_revision
from tui import cli


def _tosca(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """Run ``tosca ARGV`` through the real entry point (only with the sub-commands installed so far)."""
    present = tuple(n for n in cli.COMMANDS if importlib.util.find_spec(f"tui.commands.{n}") is not None)
    monkeypatch.setattr(cli, "COMMANDS", present)
    return cli.main(list(argv))


def _subject_codes(db_path: Path) -> list[str]:
    connection = sqlite3.connect(str(db_path))
    try:
        return [r[0] for r in connection.execute("SELECT subject_code FROM subjects ORDER BY subject_code")]
    finally:
        connection.close()


def _add_subject(db_path: Path, code: str) -> None:
    connection = connect_sqlite(db_path)
    with connection:
        connection.execute("INSERT INTO subjects (subject_code) VALUES (?)", (code,))
    connection.close()


WRITER = """
import sys
from pathlib import Path
from storage import connect_sqlite
connection = connect_sqlite(Path(sys.argv[1]))
n = 0
while True:
    with connection:
        connection.execute(
            "INSERT INTO safety_log (timestamp, event_type, severity, description) "
            "VALUES (CURRENT_TIMESTAMP, 'writer', 'info', ?)", (str(n),))
    n += 1
    print(n, flush=True)
"""

# Holds an exclusive flock on the file argv[1] with its PID in it, as a console (console.lock) or a
# controller (rig.lock) does, until a line arrives on stdin.
LOCK_HOLDER = """
import fcntl, os, sys
with open(sys.argv[1], "a+b") as handle:
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\\n".encode())
    handle.flush()
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def _read_count(writer: Child, at_least: int) -> int:
    while True:
        n = int(writer.read_line())
        if n >= at_least:
            return n


def test_backup_while_another_process_keeps_writing(data_dir: DataDir, child: type[Child]) -> None:
    writer = child(WRITER, str(data_dir.db_path))
    before = _read_count(writer, 20)
    path = backup_database(data_dir)
    after = _read_count(writer, before + 20)  # the writer was never blocked for long
    writer.close()
    assert path.parent == data_dir.backups and path.name.startswith("tosca_")
    report = check_database(path)
    assert report.integrity == "ok"
    connection = sqlite3.connect(str(path))
    copied = connection.execute("SELECT count(*) FROM safety_log WHERE event_type = 'writer'").fetchone()[0]
    mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    connection.close()
    assert before <= copied < after
    assert mode == "delete"  # one self-contained file
    assert not Path(f"{path}-wal").exists()


def test_backup_names_never_collide_and_old_ones_are_pruned(data_dir: DataDir) -> None:
    moment = datetime(2026, 11, 23, 8, 30, 0)
    first = backup_database(data_dir, now=moment)
    second = backup_database(data_dir, now=moment)
    assert first.name == "tosca_20261123_083000.db"
    assert second.name == "tosca_20261123_083000_1.db"
    old = data_dir.backups / "tosca_20261020_083000.db"  # 34 days before
    shutil.copyfile(first, old)
    unrelated = data_dir.backups / "notes.txt"
    unrelated.write_text("kept")
    recent = data_dir.backups / "tosca_20261025_083000.db"  # 29 days before
    shutil.copyfile(first, recent)
    newest = backup_database(data_dir, now=moment + timedelta(seconds=1))
    assert not old.exists()
    assert recent.exists() and unrelated.exists() and first.exists()
    info = last_backup(data_dir)
    assert info is not None and info.path == newest and info.taken_at == moment + timedelta(seconds=1)
    assert [b.path.name for b in list_backups(data_dir)][-2:] == [second.name, newest.name]
    assert prune_backups(data_dir, now=moment + timedelta(days=31)) == [recent, first, second, newest]
    assert list_backups(data_dir) == []
    assert list(data_dir.backups.glob(".*partial*")) == []


def test_backup_without_a_database_is_refused(tmp_path: Path) -> None:
    empty = DataDir(tmp_path / "none").ensure()
    with pytest.raises(BackupError, match="no database to back up"):
        backup_database(empty)
    assert last_backup(empty) is None
    assert list(empty.backups.iterdir()) == []


def test_restore_round_trip(data_dir: DataDir) -> None:
    _add_subject(data_dir.db_path, "P-2026-0001")
    saved = backup_database(data_dir, now=datetime(2026, 1, 1, 12, 0, 0))
    _add_subject(data_dir.db_path, "P-2026-0002")
    assert _subject_codes(data_dir.db_path) == ["P-2026-0001", "P-2026-0002"]

    # The backup being restored is older than the 30 days kept: restoring must not prune it away first.
    result = restore(data_dir, saved, terminal="tty1")
    assert _subject_codes(data_dir.db_path) == ["P-2026-0001"]
    assert result.revision == "20261207_005"
    assert result.replaced_backup is not None and result.replaced_backup != saved
    assert _subject_codes(result.replaced_backup) == ["P-2026-0001", "P-2026-0002"]
    assert check_database(data_dir.db_path).revision == "20261207_005"
    connection = sqlite3.connect(str(data_dir.db_path))
    audit = connection.execute("SELECT action, outcome, terminal FROM audit_log").fetchall()
    connection.close()
    assert audit == [("db_restore", "success", "tty1")]
    assert console_lock_holder(data_dir) is None


@pytest.mark.parametrize("kind", ["garbage", "foreign", "truncated"])
def test_restore_refuses_a_bad_file_and_changes_nothing(data_dir: DataDir, tmp_path: Path, kind: str) -> None:
    _add_subject(data_dir.db_path, "P-2026-0001")
    bad = tmp_path / f"{kind}.db"
    if kind == "garbage":
        bad.write_bytes(random.Random(1).randbytes(8192))
    elif kind == "foreign":
        connection = sqlite3.connect(str(bad))
        connection.execute("CREATE TABLE t (x)")
        connection.close()
    else:
        saved = backup_database(data_dir)
        bad.write_bytes(saved.read_bytes()[:12288])
        saved.unlink()
        Path(f"{saved}.chain.json").unlink()  # the backup's checkpoints
    before = data_dir.db_path.read_bytes()
    with pytest.raises(RestoreError, match=f"refused {kind}.db"):
        restore(data_dir, bad)
    assert data_dir.db_path.read_bytes() == before
    assert list(data_dir.backups.iterdir()) == []


LOCK_MESSAGE = "database in use by process {}"


@pytest.mark.parametrize("lock", ["console_lock", "rig_lock"])
def test_restore_and_upgrade_are_refused_while_a_console_or_controller_holds_the_database(
    data_dir: DataDir,
    child: type[Child],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    lock: str,
) -> None:
    saved = backup_database(data_dir)
    _add_subject(data_dir.db_path, "P-2026-0001")
    holder = child(LOCK_HOLDER, str(getattr(data_dir, lock)))
    assert holder.read_line() == "locked"
    pid = holder.process.pid
    holders = {"console_lock": console_lock_holder(data_dir), "rig_lock": rig_lock_holder(data_dir)}
    assert holders == {name: (pid if name == lock else None) for name in holders}

    with pytest.raises(DatabaseInUseError, match=LOCK_MESSAGE.format(pid)):
        restore(data_dir, saved)
    root = str(data_dir.root)
    assert _tosca(monkeypatch, "--data-dir", root, "db", "restore", str(saved)) == 1
    assert capsys.readouterr().err == f"tosca: {LOCK_MESSAGE.format(pid)}\n"
    assert _tosca(monkeypatch, "--data-dir", root, "db", "upgrade") == 1
    assert capsys.readouterr().err == f"tosca: {LOCK_MESSAGE.format(pid)}\n"
    assert _subject_codes(data_dir.db_path) == ["P-2026-0001"]
    with pytest.raises(DatabaseInUseError, match=LOCK_MESSAGE.format(pid)):
        with hold_database_exclusively(data_dir):
            raise AssertionError("a second holder got the database")
    # The failed attempts did not erase the holder's PID, nor leave the other lock held.
    assert {"console_lock": console_lock_holder(data_dir), "rig_lock": rig_lock_holder(data_dir)} == holders

    assert holder.process.stdin is not None
    holder.process.stdin.write("\n")
    holder.process.stdin.flush()
    assert holder.read_line() == "released"
    assert console_lock_holder(data_dir) is None and rig_lock_holder(data_dir) is None
    assert _tosca(monkeypatch, "--data-dir", root, "db", "restore", str(saved)) == 0
    assert _subject_codes(data_dir.db_path) == []


def test_the_console_lock_records_our_pid_and_is_exclusive_within_a_process(data_dir: DataDir) -> None:
    assert console_lock_holder(data_dir) is None
    with hold_console_lock(data_dir) as handle:
        handle.seek(0)
        assert handle.read().decode().strip() == str(os.getpid())
        assert console_lock_holder(data_dir) == os.getpid()
        with pytest.raises(DatabaseInUseError, match=LOCK_MESSAGE.format(os.getpid())):
            with hold_console_lock(data_dir):
                raise AssertionError("the console lock was taken twice")
    assert console_lock_holder(data_dir) is None


def _damage(db_path: Path, kind: str) -> None:
    if kind == "corrupt":
        # Change one subject code in one of its copies (table row or index entry): the two now disagree.
        connection = connect_sqlite(db_path)
        with connection:
            connection.executemany(
                "INSERT INTO subjects (subject_code) VALUES (?)",
                [(f"P-2026-{i:04d}",) for i in range(1, 100)],
            )
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        data = bytearray(db_path.read_bytes())
        at = data.find(b"P-2026-0042")
        data[at : at + 11] = b"P-2026-9942"
        db_path.write_bytes(bytes(data))
        return
    original = db_path.read_bytes()
    if kind == "truncated":
        db_path.write_bytes(original[: len(original) // 2])
    elif kind == "garbage":
        db_path.write_bytes(random.Random(7).randbytes(len(original)))
    elif kind == "garbage_after_header":
        db_path.write_bytes(original[:100] + random.Random(7).randbytes(len(original) - 100))
    elif kind == "empty":
        db_path.write_bytes(b"")
    elif kind == "foreign":
        db_path.unlink()
        connection = sqlite3.connect(str(db_path))
        connection.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY)")
        connection.close()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "is truncated"),
        ("garbage", "is not an SQLite database"),
        ("garbage_after_header", "tosca.db is damaged or not a database"),
        ("corrupt", "tosca.db failed integrity_check"),
        ("empty", "is empty"),
        ("foreign", "not a TOSCA database"),
    ],
)
def test_db_check_rejects_a_damaged_or_foreign_file_with_one_line(
    data_dir: DataDir,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    reason: str,
) -> None:
    _damage(data_dir.db_path, kind)
    before = data_dir.db_path.read_bytes()
    assert _tosca(monkeypatch, "--data-dir", str(data_dir.root), "db", "check") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tosca: ") and reason in lines[0], captured.err
    assert data_dir.db_path.read_bytes() == before  # checking changed nothing


def test_db_check_backup_and_upgrade_succeed_on_a_good_database(
    data_dir: DataDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(data_dir.root)
    assert _tosca(monkeypatch, "--data-dir", root, "db", "check") == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["ok: schema 20261207_005, integrity ok, 3 views, 6 triggers", "last backup: none"]
    assert _tosca(monkeypatch, "db", "backup", "--data-dir", root) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"ok: backup {data_dir.backups}/tosca_") and line.endswith(" (integrity ok)")
    info = last_backup(data_dir)
    assert info is not None
    assert _tosca(monkeypatch, "--data-dir", root, "db", "check") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"last backup: {info.path.name}")
    assert _tosca(monkeypatch, "--data-dir", root, "db", "upgrade") == 0
    assert capsys.readouterr().out.strip() == "ok: schema 20261207_005 (already current)"
    connection = sqlite3.connect(str(data_dir.db_path))
    actions = [r[0] for r in connection.execute("SELECT action FROM audit_log")]
    connection.close()
    assert actions == ["db_backup"]


def test_db_upgrade_creates_a_database_and_check_of_a_missing_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "new"
    assert _tosca(monkeypatch, "--data-dir", str(root), "db", "check") == 1
    assert capsys.readouterr().err.startswith("tosca: no database at ")
    assert _tosca(monkeypatch, "--data-dir", str(root), "db", "upgrade") == 0
    assert capsys.readouterr().out.strip() == "ok: schema new database -> 20261207_005"
    assert schema_revision(root / "tosca.db") == "20261207_005"


def test_check_of_an_outdated_schema_says_to_upgrade(data_dir: DataDir) -> None:
    connection = sqlite3.connect(str(data_dir.db_path))
    with connection:
        connection.execute("UPDATE alembic_version SET version_num = '20990101_001'")
    connection.close()
    with pytest.raises(DatabaseCheckError, match="unknown to this console"):
        check_database(data_dir.db_path)


def test_the_db_command_does_not_load_textual() -> None:
    code = (
        "import sys, tui.commands.db, storage, storage.maintenance\n"
        "print(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


_AUDIT_ROW = (
    "INSERT INTO audit_log (timestamp, username, action, outcome)"
    " VALUES (CURRENT_TIMESTAMP, 't', ?, 'success')"
)
_OPEN_AND_CLOSE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
connection.close()
"""


def _writes_after_another_process_came_and_went(db_path: Path, *, in_use: bool) -> bool:
    """A live connection (as the controller holds one) writes, this process checks the database, another
    process opens and closes it; True if the write-ahead log survived and the live connection still writes."""
    live = connect_sqlite(db_path)
    try:
        with live:
            live.execute(_AUDIT_ROW, ("one",))
        check_database(db_path, quick=True, in_use=in_use)
        subprocess.run([sys.executable, "-c", _OPEN_AND_CLOSE, str(db_path)], check=True, timeout=30)
        wal_kept = Path(f"{db_path}-wal").exists()
        with live:
            live.execute(_AUDIT_ROW, ("two",))
        return wal_kept
    except sqlite3.OperationalError:
        return False
    finally:
        live.close()


def test_checking_a_database_this_process_has_open_keeps_its_locks(data_dir: DataDir) -> None:
    # The controller checks the database before arming while its own connections are open. Reading the file
    # header through a separate descriptor would drop those connections' locks (POSIX locks are per process):
    # the next process to close the database then deletes the write-ahead log from under them.
    assert _writes_after_another_process_came_and_went(data_dir.db_path, in_use=True)
    reader = sqlite3.connect(data_dir.db_path)
    try:
        rows = reader.execute("SELECT action FROM audit_log WHERE username = 't' ORDER BY rowid").fetchall()
    finally:
        reader.close()
    assert [row[0] for row in rows] == ["one", "two"]


def test_the_file_header_is_why_in_use_exists(data_dir: DataDir) -> None:
    # What in_use avoids: without it, the live connection loses its locks and the log is deleted.
    assert not _writes_after_another_process_came_and_went(data_dir.db_path, in_use=False)
