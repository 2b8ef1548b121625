"""Online backups of the records database.

A backup is taken with SQLite's online backup API (:meth:`sqlite3.Connection.backup`), never by copying
the file of a live database: the copy is one consistent snapshot even while the console keeps writing. Each
copy is switched to a self-contained rollback-journal file, checked with ``PRAGMA integrity_check``, flushed
to disk and only then given its final name ``backups/tosca_YYYYMMDD_HHMMSS.db`` (local time). If that name
exists a suffix ``_1``, ``_2``, ... is added; an existing backup is never overwritten. Backups older than 30
days (by the time in their name) are pruned after each successful backup. Each copy gets a signed checkpoint
of every record chain, stored in it and beside it as ``<backup>.chain.json`` (docs/records-chain.md).

The backup of an encrypted database (:mod:`storage.crypto_db`) is encrypted with the same key; a copy
between a plain and an encrypted file (restoring a plain backup into an encrypted set-up, or the conversion
of ``tosca db encrypt``) is written with SQLCipher's export instead of the backup API.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from storage.crypto_db import DatabaseKey, export_to, key_for, open_for_export
from storage.crypto_db import connect as open_database
from storage.engine import DEFAULT_BUSY_TIMEOUT_MS
from storage.errors import BackupError, StorageError
from storage.paths import DataDir

if TYPE_CHECKING:
    from storage.chain import Checkpoint

#: Days a backup is kept, counted from the time in its name.
RETENTION_DAYS: Final = 30
#: File names of backups this module writes (and the only files it prunes).
BACKUP_NAME_RE: Final = re.compile(r"^tosca_(\d{8})_(\d{6})(?:_(\d+))?\.db$")
_MAX_SUFFIX: Final = 1000


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """One backup file and the local time in its name."""

    path: Path
    taken_at: datetime


def _parse_name(path: Path) -> BackupInfo | None:
    match = BACKUP_NAME_RE.match(path.name)
    if match is None:
        return None
    try:
        taken_at = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return BackupInfo(path=path, taken_at=taken_at)


def _sort_key(info: BackupInfo) -> tuple[datetime, int]:
    match = BACKUP_NAME_RE.match(info.path.name)
    suffix = int(match.group(3)) if match and match.group(3) else 0
    return info.taken_at, suffix


def list_backups(data_dir: DataDir) -> list[BackupInfo]:
    """Return the backups in ``data_dir``, oldest first (other files in the folder are ignored)."""
    if not data_dir.backups.is_dir():
        return []
    found = [info for path in data_dir.backups.iterdir() if (info := _parse_name(path)) is not None]
    return sorted(found, key=_sort_key)


def last_backup(data_dir: DataDir) -> BackupInfo | None:
    """Return the newest backup, or None if there is none."""
    backups = list_backups(data_dir)
    return backups[-1] if backups else None


def prune_backups(
    data_dir: DataDir,
    *,
    now: datetime | None = None,
    retention_days: int = RETENTION_DAYS,
    keep: Path | None = None,
) -> list[Path]:
    """Delete backups named more than ``retention_days`` days before ``now`` (local time); return them.

    ``keep`` is never deleted, whatever its age.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be >= 1; got {retention_days}")
    cutoff = (now or datetime.now()) - timedelta(days=retention_days)
    removed: list[Path] = []
    for info in list_backups(data_dir):
        if info.taken_at < cutoff and (keep is None or info.path != keep):
            info.path.unlink(missing_ok=True)
            Path(f"{info.path}.chain.json").unlink(missing_ok=True)  # its checkpoints (storage.chain)
            removed.append(info.path)
    return removed


def verify_database_file(path: Path, key: DatabaseKey | Literal["auto"] | None = "auto") -> None:
    """Raise :class:`BackupError` unless ``path`` is an SQLite file (opened with ``key``; "auto": its own,
    :func:`storage.crypto_db.key_for`) passing ``integrity_check``."""
    try:
        connection = open_database(path, read_only=True, key=key)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path.name}: {exc}") from exc
    try:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        raise BackupError(f"{path.name} failed the integrity check: {exc}") from exc
    finally:
        connection.close()
    if rows != [("ok",)]:
        raise BackupError(f"{path.name} failed the integrity check: {rows[0][0]}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_with_sidecars(path: Path) -> None:
    for extra in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)


def copy_database(
    source: Path,
    target: Path,
    *,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    key: DatabaseKey | Literal["source"] | None = "source",
) -> None:
    """Copy the database ``source`` to the new file ``target`` with the online backup API.

    The copy uses a rollback journal (one self-contained file), passes ``integrity_check`` and is on disk when
    this returns. It is encrypted with ``key`` ("source": as the source is, with the same key; None: plain).
    On failure ``target`` is removed and :class:`BackupError` raised.
    """
    if target.exists():
        raise BackupError(f"{target} already exists")
    if not source.is_file():
        # sqlite3.connect would quietly create an empty database in its place.
        raise BackupError(f"no database at {source}")
    source_key = key_for(source)
    target_key = source_key if key == "source" else key
    same = (source_key is None) == (target_key is None) and (
        source_key is None or target_key is None or source_key.raw == target_key.raw
    )
    timeout_s = busy_timeout_ms / 1000
    try:
        src = open_database(source, timeout_s=timeout_s, key=source_key) if same else None
        if src is None:
            src = open_for_export(source, source_key, timeout_s=timeout_s)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from exc
    try:
        if same:
            src.execute("PRAGMA query_only = ON")
            dst = open_database(target, key=target_key)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = DELETE")
                dst.commit()
            finally:
                dst.close()
        else:
            export_to(src, target, target_key)
        verify_database_file(target, key=target_key)
        _fsync(target)
    except (sqlite3.Error, OSError, BackupError) as exc:
        _remove_with_sidecars(target)
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"backup of {source.name} failed: {exc}") from exc
    finally:
        src.close()


def _checkpoint_copy(copy: Path, source: Path) -> list[Checkpoint]:
    """Sign a checkpoint of each record chain of the copy and store it there (none for a schema older than
    the chain); the keys are those of ``source``. The copy is private, so no live writer waits for this."""
    from storage.chain import checkpoint_file

    try:
        return checkpoint_file(copy, "backup", keys_of=source, pragmas=False)
    except (StorageError, sqlite3.Error) as exc:
        _remove_with_sidecars(copy)
        raise BackupError(f"could not checkpoint the record chain of the backup: {exc}") from exc


def backup_database(
    data_dir: DataDir,
    *,
    now: datetime | None = None,
    retention_days: int = RETENTION_DAYS,
) -> Path:
    """Back up ``data_dir``'s database to ``backups/tosca_YYYYMMDD_HHMMSS.db`` and return the new file's path.

    ``now`` (local time, default the clock) names the file. The copy is verified before it gets its name;
    afterwards backups older than ``retention_days`` are pruned. Raises :class:`BackupError` if there is no
    database, or the copy fails or does not verify (no file is left behind then).
    """
    source = data_dir.db_path
    if not source.is_file() or source.stat().st_size == 0:
        raise BackupError(f"no database to back up at {source}")
    data_dir.backups.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    partial = data_dir.backups / f".tosca_{stamp}.{os.getpid()}.partial"
    _remove_with_sidecars(partial)
    copy_database(source, partial)
    checkpoints = _checkpoint_copy(partial, source)
    final: Path | None = None
    try:
        for suffix in range(_MAX_SUFFIX):
            candidate = data_dir.backups / (
                f"tosca_{stamp}.db" if suffix == 0 else f"tosca_{stamp}_{suffix}.db"
            )
            try:
                # link() fails if the name exists: a backup is never overwritten, even by a racing one.
                os.link(partial, candidate)
            except FileExistsError:
                continue
            final = candidate
            break
    finally:
        partial.unlink(missing_ok=True)
    if final is None:
        raise BackupError(f"too many backups named tosca_{stamp}*.db")
    if checkpoints:
        from storage.chain import backup_checkpoint_path, write_checkpoint_json

        write_checkpoint_json(backup_checkpoint_path(final), checkpoints)
    with contextlib.suppress(OSError):
        _fsync(data_dir.backups)
    prune_backups(data_dir, now=now, retention_days=retention_days, keep=final)
    return final
