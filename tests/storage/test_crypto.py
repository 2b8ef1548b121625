"""Encryption at rest: the database key, ``tosca db encrypt``, encrypted backups and restores, and the
encrypted session-file format, each as an operator would meet them (a file on disk, a one-line refusal)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from storage import DataDir
from storage.backup import backup_database, copy_database
from storage.backups import backup_overview, make_backup, restore_live
from storage.crypto_db import (
    KEY_FILE_ENV,
    DatabaseKeyError,
    connect,
    create_key_file,
    is_encrypted_file,
    key_location_file,
    read_key_file,
)
from storage.crypto_files import (
    MAX_CHUNK,
    EncryptingWriter,
    SessionFileError,
    encrypt_file,
    open_session_file,
    read_session_file,
    session_key,
)
from storage.crypto_setup import encrypt_database
from storage.errors import RestoreError, StorageError
from storage.maintenance import check_database, restore
from storage.probe import needs_first_admin
from storage.telemetry import TelemetryWriter, encode_record, scan_telemetry

TOSCA = [str(Path(sys.executable).with_name("tosca"))]
SECRET = "P-2026-0917 glare note"


def _tosca(data: DataDir, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOSCA, "--data-dir", str(data.root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _add_secret(db_path: Path) -> None:
    connection = connect(db_path)
    try:
        with connection:
            connection.execute(
                "INSERT INTO system_config (config_key, config_value, config_type) VALUES (?, ?, 'string')",
                ("crypto_test_note", SECRET),
            )
    finally:
        connection.close()


def _read_secret(db_path: Path) -> str:
    connection = connect(db_path, read_only=True)
    try:
        row = connection.execute(
            "SELECT config_value FROM system_config WHERE config_key = 'crypto_test_note'"
        ).fetchone()
    finally:
        connection.close()
    return str(row[0])


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture
def encrypted(data_dir: DataDir, tmp_path: Path) -> tuple[DataDir, Path]:
    """The data directory with a secret row and one plain backup, then encrypted; and its key file."""
    _add_secret(data_dir.db_path)
    backup_database(data_dir)
    key_file = tmp_path / "keys" / "db.key"
    encrypt_database(data_dir, key_file)
    return data_dir, key_file


def test_encrypt_leaves_no_plain_copy_and_the_records_read_back(encrypted: tuple[DataDir, Path]) -> None:
    data, key_file = encrypted
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_location_file(data.root).read_text(encoding="utf-8").strip() == str(key_file)
    assert key_file.read_bytes().hex() not in key_location_file(data.root).read_text(encoding="utf-8")
    files = [data.db_path, *sorted(data.backups.glob("tosca_*.db"))]
    assert len(files) == 3  # the database, the backup from before, the backup taken by the conversion
    for path in files:
        assert is_encrypted_file(path), path
        assert SECRET.encode() not in path.read_bytes(), path
    assert _read_secret(data.db_path) == SECRET
    for backup in files[1:]:
        assert _read_secret(backup) == SECRET
    assert [entry.verified_text for entry in backup_overview(data).entries] == ["yes", "yes"]
    assert check_database(data.db_path).revision


def test_a_second_encrypt_and_a_key_file_inside_the_data_directory_are_refused(
    encrypted: tuple[DataDir, Path], tmp_path: Path, migrated_template: Path
) -> None:
    data, key_file = encrypted
    with pytest.raises(StorageError, match=f"tosca.db is already encrypted with the key file {key_file}"):
        encrypt_database(data, key_file)
    plain = DataDir(tmp_path / "plain").ensure()
    shutil.copyfile(migrated_template, plain.db_path)
    with pytest.raises(StorageError, match="is inside the data directory: keep it elsewhere"):
        encrypt_database(plain, plain.root / "db.key")
    assert not (plain.root / "db.key").exists() and not is_encrypted_file(plain.db_path)
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(16))
    done = _tosca(plain, "db", "encrypt", "--key-file", str(short))
    assert (done.returncode, done.stderr) == (
        1,
        f"tosca: the database key file {short} holds 16 bytes, not 32\n",
    )
    assert not is_encrypted_file(plain.db_path) and not key_location_file(plain.root).exists()


def test_wrong_missing_and_wrong_length_keys_are_one_line_refusals(
    encrypted: tuple[DataDir, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    data, key_file = encrypted
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    done = _tosca(data, "db", "check", env={KEY_FILE_ENV: str(wrong)})
    # One line, naming the key file; SQLCipher's own log ("ERROR CORE ...") never reaches the screen.
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"tosca: the key in {wrong} does not open tosca.db (wrong key)\n"
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(31))
    gone = tmp_path / "gone.key"
    refused_key = "tosca.db is encrypted and its key cannot be read: "
    cases = {
        wrong: f"the key in {wrong} does not open tosca.db (wrong key)",
        short: f"{refused_key}${KEY_FILE_ENV} is set to {short}, which holds 31 bytes, not 32",
        gone: f"{refused_key}${KEY_FILE_ENV} is set to {gone}, which is missing",
    }
    capfd.readouterr()
    for key, expected in cases.items():
        monkeypatch.setenv(KEY_FILE_ENV, str(key))
        with pytest.raises(DatabaseKeyError) as refused:
            check_database(data.db_path)
        assert str(refused.value) == expected
    monkeypatch.delenv(KEY_FILE_ENV)
    assert capfd.readouterr() == ("", "")
    location = key_location_file(data.root)
    key_file.rename(tmp_path / "moved.key")  # the recorded key file is gone
    with pytest.raises(DatabaseKeyError) as refused:
        check_database(data.db_path)
    assert str(refused.value) == (
        f"{refused_key}${KEY_FILE_ENV} is unset and the location file {location} points to {key_file}, "
        "which is missing"
    )
    key_file.write_bytes(b"short")  # the recorded path holds something else
    with pytest.raises(DatabaseKeyError) as refused:
        check_database(data.db_path)
    assert str(refused.value) == (
        f"{refused_key}${KEY_FILE_ENV} is unset and the location file {location} points to {key_file}, "
        "which holds 5 bytes, not 32"
    )
    (tmp_path / "moved.key").replace(key_file)
    # The location file deleted: named, instead of SQLite's "file is not a database", by every way in.
    location.rename(tmp_path / "kept-location")
    missing = (
        "tosca.db is not an SQLite database as it stands (encrypted, or damaged) and no key was found: "
        f"${KEY_FILE_ENV} is unset and the location file {location} is missing"
    )
    with pytest.raises(DatabaseKeyError) as refused:
        connect(data.db_path)
    assert str(refused.value) == missing
    done = _tosca(data, "db", "check")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"tosca: {missing}\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    assert check_database(data.db_path).integrity == "ok"


def test_a_damaged_plain_database_keeps_the_damaged_database_message(
    data_dir: DataDir, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.db"
    page = data_dir.db_path.read_bytes()
    damaged.write_bytes(page[:100] + os.urandom(len(page) - 100))  # its SQLite header intact
    with pytest.raises(StorageError) as refused:
        check_database(damaged)
    assert not isinstance(refused.value, DatabaseKeyError)
    assert "damaged or not a database" in str(refused.value) or "integrity" in str(refused.value)


def test_backups_of_an_encrypted_database_are_encrypted_and_restore_both_kinds(
    encrypted: tuple[DataDir, Path], tmp_path: Path
) -> None:
    data, key_file = encrypted
    newest = make_backup(data).path
    assert is_encrypted_file(newest) and SECRET.encode() not in newest.read_bytes()
    # A plain backup from elsewhere (another console) restored here is encrypted on its way in.
    elsewhere = DataDir(tmp_path / "elsewhere").ensure()
    copy_database(newest, elsewhere.db_path, key=None)
    assert not is_encrypted_file(elsewhere.db_path)
    assert SECRET.encode() in elsewhere.db_path.read_bytes()
    restore(data, elsewhere.db_path)
    assert is_encrypted_file(data.db_path)
    assert SECRET.encode() not in data.db_path.read_bytes()
    assert _read_secret(data.db_path) == SECRET
    # An encrypted backup restores too, from the command line.
    done = _tosca(data, "db", "restore", str(newest))
    assert done.returncode == 0, done.stderr
    assert _read_secret(data.db_path) == SECRET
    # A truncated encrypted backup is refused in one line and nothing changes.
    truncated = data.backups / "truncated.db"
    truncated.write_bytes(newest.read_bytes()[: 5 * 4096 + 100])
    before = data.db_path.read_bytes()
    with pytest.raises(RestoreError) as refused:
        restore(data, truncated)
    malformed = "cannot open truncated.db: database disk image is malformed"
    assert str(refused.value) == f"refused truncated.db: {malformed}"
    assert data.db_path.read_bytes() == before
    assert read_key_file(key_file).path == key_file


def test_opening_an_encrypted_database_takes_under_10_ms(encrypted: tuple[DataDir, Path]) -> None:
    import time

    data, _key_file = encrypted
    connect(data.db_path, read_only=True).close()  # SQLCipher loaded once
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        connection = connect(data.db_path, read_only=True)
        connection.execute("SELECT count(*) FROM tech_users").fetchone()
        connection.close()
        best = min(best, time.perf_counter() - start)
    assert best < 0.010


# ---- session files


def test_a_session_file_round_trips_and_holds_no_plain_text(tmp_path: Path) -> None:
    key = session_key(create_key_file(tmp_path / "k"))
    path = tmp_path / "file.bin"
    payload = (SECRET.encode() * 1000) + os.urandom(MAX_CHUNK)
    with EncryptingWriter(path, key) as writer:
        writer.write(payload[:10])
        writer.flush()
        writer.write(payload[10:])
    assert SECRET.encode() not in path.read_bytes()
    assert read_session_file(path, key=key) == payload
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"\x89PNG" + SECRET.encode())
    assert read_session_file(plain) == b"\x89PNG" + SECRET.encode()  # a plain file reads as it is
    assert encrypt_file(plain, key) and not encrypt_file(plain, key)
    assert read_session_file(plain, key=key) == b"\x89PNG" + SECRET.encode()


def test_a_session_file_cut_altered_or_read_with_another_key_is_refused(tmp_path: Path) -> None:
    key = session_key(create_key_file(tmp_path / "k"))
    path = tmp_path / "file.bin"
    with EncryptingWriter(path, key) as writer:
        for _ in range(3):
            writer.write(b"line of telemetry\n" * 100)
            writer.flush()
    data = path.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:-20])  # the last chunk is gone
    with pytest.raises(SessionFileError, match="cut short"):
        read_session_file(cut, key=key)
    with open_session_file(cut, key=key, allow_unfinished=True) as handle:
        assert handle.read() == b"line of telemetry\n" * 300  # the complete chunks of a crashed writer
    altered = tmp_path / "altered.bin"
    altered.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(SessionFileError, match="chunk 0 does not decrypt"):
        read_session_file(altered, key=key)
    other = session_key(create_key_file(tmp_path / "other"))
    with pytest.raises(SessionFileError, match=r"chunk 0 does not decrypt \(wrong key"):
        read_session_file(path, key=other)


async def test_telemetry_of_an_encrypted_data_directory_is_encrypted_and_scans_back(
    encrypted: tuple[DataDir, Path],
) -> None:
    data, _key_file = encrypted
    path = data.session_folder("P-2026-0917", "uid1") / "telemetry.jsonl"
    writer = TelemetryWriter(path, flush_lines=3)
    await writer.start()
    for index in range(10):
        writer.append({"t": index, "note": SECRET})
    summary = await writer.close()
    assert SECRET.encode() not in path.read_bytes()
    found = scan_telemetry(path)
    assert (found.line_count, found.sha256, found.size_bytes) == (10, summary.sha256, summary.size_bytes)
    assert summary.line_count == 10
    assert read_session_file(path).count(SECRET.encode()) == 10


def test_a_plain_database_is_opened_as_before_and_garbage_is_not_taken_for_an_encrypted_one(
    data_dir: DataDir, tmp_path: Path
) -> None:
    assert not is_encrypted_file(data_dir.db_path)
    connection = connect(data_dir.db_path)
    connection.close()
    assert type(connection) is sqlite3.Connection  # the standard library's, as before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StorageError, match=r"not an SQLite database as it stands \(encrypted, or damaged\)"):
        check_database(garbage)
    text = tmp_path / "text.db"
    text.write_bytes(b"not a database at all " * 200)
    with pytest.raises(StorageError, match=r"not an SQLite database \(bad file header\)"):
        check_database(text)
    with pytest.raises(DatabaseKeyError, match="holds 3 bytes"):
        key = tmp_path / "three"
        key.write_bytes(b"abc")
        read_key_file(key)


async def test_an_encrypted_telemetry_file_survives_a_full_disk_with_every_line(tmp_path: Path) -> None:
    key = session_key(create_key_file(tmp_path / "k"))
    path = tmp_path / "t.jsonl"
    budget = {"bytes": 150}  # the header and part of the first chunk

    def small_disk(fd: int, data: memoryview) -> int:
        if budget["bytes"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = min(len(data), budget["bytes"])
        budget["bytes"] -= count
        return os.write(fd, data[:count])

    writer = TelemetryWriter(path, flush_lines=5, write=small_disk, key=key)
    budget["bytes"] -= len(path.read_bytes())  # the header went out with os.write at creation
    for seq in range(5):
        writer.append({"seq": seq, "note": SECRET})
    assert not writer.healthy and writer.pending_lines == 5 and writer.line_count == 0
    budget["bytes"] = 1 << 20
    writer.flush()
    assert writer.healthy and writer.pending_lines == 0 and writer.line_count == 5
    writer.append({"seq": 5, "note": SECRET})
    summary = await writer.close()
    expected = b"".join(encode_record({"seq": seq, "note": SECRET}) for seq in range(6))
    assert SECRET.encode() not in path.read_bytes()
    assert read_session_file(path, key=key) == expected
    assert summary.sha256 == hashlib.sha256(expected).hexdigest() and summary.line_count == 6


def test_the_admins_live_restore_and_the_start_up_probe_use_the_key(
    encrypted: tuple[DataDir, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _key_file = encrypted
    saved = make_backup(data).path
    connection = connect(data.db_path)
    with connection:
        connection.execute("DELETE FROM system_config WHERE config_key = 'crypto_test_note'")
    connection.close()
    result = restore_live(data, saved.name, user="ada")
    assert result.source == saved and is_encrypted_file(result.replaced_backup)
    assert _read_secret(data.db_path) == SECRET and is_encrypted_file(data.db_path)
    assert needs_first_admin(data.db_path) is True  # the migrated template has no administrator
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    monkeypatch.setenv(KEY_FILE_ENV, str(wrong))
    assert needs_first_admin(data.db_path) is None  # cannot tell: the start opens it and says why


async def test_a_key_in_the_environment_does_not_encrypt_the_files_of_a_plain_data_directory(
    data_dir: DataDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_FILE_ENV, str(create_key_file(tmp_path / "k").path))
    path = data_dir.session_folder("P-2026-0001", "uid") / "telemetry.jsonl"
    writer = TelemetryWriter(path)
    writer.append({"seq": 1})
    await writer.close()
    assert path.read_bytes() == b'{"seq":1}\n'
    assert not is_encrypted_file(data_dir.db_path)


def test_an_encrypted_database_at_an_older_schema_is_upgraded_and_stays_encrypted(tmp_path: Path) -> None:
    from alembic import command

    from storage.maintenance import alembic_config, head_revision, schema_revision, upgrade

    data = DataDir(tmp_path / "data").ensure()
    command.upgrade(alembic_config(data.db_path), "20261207_003")
    encrypt_database(data, tmp_path / "keys" / "db.key")
    assert schema_revision(data.db_path) == "20261207_003"
    result = upgrade(data)
    assert (result.previous, result.current) == ("20261207_003", head_revision())
    assert result.backup is not None and is_encrypted_file(result.backup)
    assert is_encrypted_file(data.db_path) and check_database(data.db_path).revision == head_revision()
