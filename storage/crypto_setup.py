"""``tosca db encrypt``: switch a data directory's records to encryption at rest, once.

:func:`encrypt_database`, with no console and no controller running (it holds the data directory's locks):

1. reads the key file (32 bytes), or creates it (32 random bytes, mode 0600) when it does not exist yet; a key
   file inside the data directory is refused, since a copy of the directory would carry its own key;
2. checks the database and backs it up (a plain, verified backup: the way back if anything below fails);
3. writes an encrypted copy with SQLCipher's export, verifies it with the key, and flushes it to disk;
4. records the key file's path beside the database (``tosca.db.key-location``; the key itself is never
   written there) and puts the encrypted copy in the database's place;
5. encrypts every plain backup in ``backups/`` (the one just taken included) and every session file
   (:mod:`storage.crypto_files`), so no plain copy of the records is left in the data directory;
6. records the conversion in ``audit_log``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from storage.backup import backup_database, copy_database, list_backups, verify_database_file
from storage.backups import write_verdict
from storage.crypto_db import (
    DatabaseKey,
    DatabaseKeyError,
    create_key_file,
    export_to,
    is_encrypted_file,
    open_for_export,
    read_key_file,
    record_key_file,
    recorded_key_file,
)
from storage.crypto_files import encrypt_session_tree, session_key
from storage.errors import StorageError
from storage.locks import hold_database_exclusively
from storage.maintenance import check_database, record_audit
from storage.paths import DataDir


@dataclass(frozen=True, slots=True)
class EncryptResult:
    """What :func:`encrypt_database` did."""

    key_file: Path
    key_created: bool
    backup: Path
    backups_encrypted: int
    session_files_encrypted: int


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _key(data_dir: DataDir, key_file: Path) -> tuple[DatabaseKey, bool]:
    if _inside(key_file, data_dir.root):
        raise DatabaseKeyError(
            f"the key file {key_file} is inside the data directory: keep it elsewhere (a copy of the "
            "directory would carry its key)"
        )
    if key_file.exists():
        return read_key_file(key_file), False
    return create_key_file(key_file), True


def _encrypt_backups(data_dir: DataDir, key: DatabaseKey) -> int:
    count = 0
    for info in list_backups(data_dir):
        if is_encrypted_file(info.path):
            continue
        partial = info.path.with_name(f".{info.path.name}.encrypting")
        partial.unlink(missing_ok=True)
        copy_database(info.path, partial, key=key)  # checked with integrity_check before it returns
        os.replace(partial, info.path)
        write_verdict(info.path, True, "integrity ok")
        count += 1
    if count:
        _fsync_folder(data_dir.backups)
    return count


def encrypt_database(data_dir: DataDir, key_file: Path, *, terminal: str | None = None) -> EncryptResult:
    """Encrypt ``data_dir``'s database, backups and session files with the key in ``key_file`` (created
    when absent); see the module. Raises :class:`StorageError` (one line) when refused or when it fails;
    the database is then unchanged (or, after step 4, encrypted and complete)."""
    db_path = data_dir.db_path
    key_file = Path(key_file).absolute()
    if not db_path.is_file() or db_path.stat().st_size == 0:
        raise StorageError(f"no database at {db_path} (run: tosca db upgrade)")
    if is_encrypted_file(db_path):
        recorded = recorded_key_file(data_dir.root)
        where = f" with the key file {recorded}" if recorded else ""
        raise StorageError(f"{db_path.name} is already encrypted{where}")
    with hold_database_exclusively(data_dir):
        check_database(db_path, quick=True, require_head=False)
        key, created = _key(data_dir, key_file)
        backup = backup_database(data_dir)
        staging = data_dir.root / f".tosca.db.encrypt.{os.getpid()}"
        for extra in ("", "-journal", "-wal", "-shm"):
            Path(f"{staging}{extra}").unlink(missing_ok=True)
        try:
            source = open_for_export(db_path, None)
            try:
                source.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                export_to(source, staging, key)
            finally:
                source.close()
            verify_database_file(staging, key=key)
            fd = os.open(staging, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except Exception as exc:
            staging.unlink(missing_ok=True)
            raise StorageError(f"encryption failed, the database is unchanged: {exc}") from exc
        record_key_file(data_dir.root, key.path)
        for extra in ("-wal", "-shm"):
            Path(f"{db_path}{extra}").unlink(missing_ok=True)
        os.replace(staging, db_path)
        _fsync_folder(data_dir.root)
        check_database(db_path, quick=True, require_head=False)
        backups = _encrypt_backups(data_dir, key)
        files = encrypt_session_tree(data_dir.sessions, session_key(key))
        data_dir.restrict_modes()
        record_audit(
            db_path,
            "db_encrypt",
            "success",
            terminal=terminal,
            details={"key_file": str(key.path), "backups": backups, "session_files": files},
        )
    return EncryptResult(
        key_file=key.path,
        key_created=created,
        backup=backup,
        backups_encrypted=backups,
        session_files_encrypted=files,
    )


__all__ = ["EncryptResult", "encrypt_database"]
