"""The backups an admin manages: list, make, verify and restore them, each recorded in ``audit_log``.

Used by the backups screen and by ``tosca db backups`` / ``tosca db backup``.

* :func:`backup_overview` lists every backup (local time, size, verified or not), retention and free space.
* :func:`make_backup` takes a verified online backup and prunes those older than the retention.
* :func:`verify_backup` checks one backup (``integrity_check``, a TOSCA database at a known revision),
  keeping the verdict in ``<backup>.verified`` beside it, so the list can say yes or no.
* :func:`restore_live` restores a backup while the console (and the controller) are running: refused while a
  treatment session is open; the current database is backed up first; the backup's content is then written
  into the live database with SQLite's online backup API, so every open connection sees the restored
  records at its next transaction and no file is swapped under anyone. An older backup is brought to the
  current schema on a staging copy first. ``tosca db restore`` (:func:`storage.maintenance.restore`) is the
  offline form, which replaces the file while nothing runs.

Every action, done or refused, is an ``audit_row`` with the admin's name (or the OS account from the
command line) and the terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from storage import crypto_db
from storage.audit_query import record_action
from storage.backup import BACKUP_NAME_RE, RETENTION_DAYS, backup_database, copy_database, list_backups
from storage.engine import DEFAULT_BUSY_TIMEOUT_MS
from storage.errors import BackupError, ConfigValueError, DatabaseCheckError, RestoreError, StorageError
from storage.maintenance import _migrate, check_database, head_revision
from storage.models import utc_now
from storage.paths import DataDir
from storage.repositories import parse_config_value

#: ``system_config`` key: days a backup is kept.
RETENTION_KEY: Final = "backup_retention_days"
#: Range accepted from the configuration, in days.
MIN_RETENTION_DAYS: Final = 1
MAX_RETENTION_DAYS: Final = 3650
_VERIFIED_SUFFIX: Final = ".verified"


def read_retention_days(db_path: Path) -> tuple[int, str | None]:
    """Days a backup is kept, from ``system_config`` (``backup_retention_days``), as ``(days, problem)``.

    ``problem`` is None normally, or one line saying why the stored value was unusable (not an integer, or
    outside 1 to 3650) and :data:`storage.backup.RETENTION_DAYS` was used. An absent key (or no database)
    gives the default silently. The configuration's typed settings model replaces this read once it
    states the key.
    """
    default = RETENTION_DAYS
    if not Path(db_path).is_file():
        return default, None
    try:
        connection = crypto_db.connect(db_path, read_only=True, timeout_s=DEFAULT_BUSY_TIMEOUT_MS / 1000)
        try:
            row = connection.execute(
                "SELECT config_value, config_type FROM system_config WHERE config_key = ?", (RETENTION_KEY,)
            ).fetchone()
        finally:
            connection.close()
    except (sqlite3.Error, crypto_db.DatabaseKeyError) as exc:
        return default, f"config {RETENTION_KEY}: cannot be read ({exc}); using {default} days"
    if row is None:
        return default, None
    try:
        value = parse_config_value(RETENTION_KEY, row[0], row[1])
    except ConfigValueError as exc:
        return default, f"{exc}; using {default} days"
    if isinstance(value, bool) or not isinstance(value, int):
        return (
            default,
            f"config {RETENTION_KEY}: {value!r} is not a whole number of days; using {default} days",
        )
    if not MIN_RETENTION_DAYS <= value <= MAX_RETENTION_DAYS:
        return default, (
            f"config {RETENTION_KEY}: {value} is outside {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} days; "
            f"using {default} days"
        )
    return value, None


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One backup as listed: local time from its name, size in bytes, verified (None: never checked)."""

    path: Path
    taken_at: datetime
    size: int
    verified: bool | None
    verified_note: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def verified_text(self) -> str:
        """``yes``, ``no`` or ``not checked``."""
        return {True: "yes", False: "no", None: "not checked"}[self.verified]


@dataclass(frozen=True, slots=True)
class BackupOverview:
    """The backups (newest first), the retention and the free space of the data directory's file system."""

    entries: list[BackupEntry]
    retention_days: int
    retention_problem: str | None
    free_bytes: int
    total_bytes: int


def _verdict_path(backup: Path) -> Path:
    return backup.with_name(backup.name + _VERIFIED_SUFFIX)


def _read_verdict(backup: Path) -> tuple[bool | None, str]:
    marker = _verdict_path(backup)
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        stat = backup.stat()
    except (OSError, ValueError):
        return None, ""
    if (
        not isinstance(data, dict)
        or data.get("size") != stat.st_size
        or data.get("mtime_ns") != stat.st_mtime_ns
    ):
        # The file changed since it was checked: the old verdict says nothing about it.
        return None, ""
    ok = data.get("ok")
    return (ok if isinstance(ok, bool) else None), str(data.get("note", ""))


def write_verdict(backup: Path, ok: bool, note: str) -> None:
    """Keep the verdict ``ok`` (with its ``note``) of a check of ``backup`` beside it, for the list."""
    stat = backup.stat()
    record = {
        "ok": ok,
        "note": note,
        "checked_utc": utc_now().isoformat(timespec="seconds"),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    partial = _verdict_path(backup).with_suffix(".partial")
    partial.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
    os.replace(partial, _verdict_path(backup))


def disk_space(folder: Path) -> tuple[int, int]:
    """Free and total bytes of the file system holding ``folder`` (its nearest existing parent)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    return usage.free, usage.total


def backup_overview(
    data_dir: DataDir, *, space: Callable[[Path], tuple[int, int]] = disk_space
) -> BackupOverview:
    """List ``data_dir``'s backups, newest first, with the retention and the free space (``space`` measures
    the file system: free and total bytes)."""
    entries: list[BackupEntry] = []
    for info in reversed(list_backups(data_dir)):
        try:
            size = info.path.stat().st_size
        except OSError:
            continue  # pruned meanwhile
        verified, note = _read_verdict(info.path)
        entries.append(BackupEntry(info.path, info.taken_at, size, verified, note))
    days, problem = read_retention_days(data_dir.db_path)
    free, total = space(data_dir.root)
    return BackupOverview(
        entries=entries,
        retention_days=days,
        retention_problem=problem,
        free_bytes=free,
        total_bytes=total,
    )


def human_size(count: int) -> str:
    """A byte count for people: ``812 B``, ``4.1 MB``, ``12.3 GB`` (powers of 1000)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover


def find_backup(data_dir: DataDir, name: str) -> Path:
    """The backup called ``name`` in ``data_dir/backups`` (a bare file name, as listed), or RestoreError."""
    if not BACKUP_NAME_RE.match(name) or Path(name).name != name:
        raise RestoreError(f"{name!r} is not a backup name (tosca_YYYYMMDD_HHMMSS.db)")
    path = data_dir.backups / name
    if not path.is_file():
        raise RestoreError(f"no backup {name} in {data_dir.backups}")
    return path


def _audit(
    data_dir: DataDir,
    action: str,
    outcome: str,
    *,
    user: str | None,
    terminal: str | None,
    details: dict[str, object],
) -> None:
    record_action(data_dir.db_path, action, outcome, user=user, terminal=terminal, details=details)


def make_backup(
    data_dir: DataDir,
    *,
    user: str | None = None,
    terminal: str | None = None,
    origin: Mapping[str, object] | None = None,
) -> BackupEntry:
    """Take a verified backup now (retention from the configuration), record it, return its entry.
    ``origin`` is added to the audit row's details (where a remote console's request came from)."""
    days, _problem = read_retention_days(data_dir.db_path)
    extra = dict(origin or {})
    try:
        path = backup_database(data_dir, retention_days=days)
    except BackupError as exc:
        _audit(
            data_dir,
            "db_backup",
            "failure",
            user=user,
            terminal=terminal,
            details={**extra, "reason": str(exc)},
        )
        raise
    data_dir.restrict_modes()
    # backup_database ran integrity_check on the copy before naming it.
    write_verdict(path, True, "integrity ok")
    _audit(
        data_dir,
        "db_backup",
        "success",
        user=user,
        terminal=terminal,
        details={**extra, "backup": path.name, "retention_days": days},
    )
    verified, note = _read_verdict(path)
    info = next(info for info in list_backups(data_dir) if info.path == path)
    return BackupEntry(path, info.taken_at, path.stat().st_size, verified, note)


def verify_backup(
    data_dir: DataDir,
    name: str,
    *,
    user: str | None = None,
    terminal: str | None = None,
    origin: Mapping[str, object] | None = None,
) -> tuple[bool, str]:
    """Check the backup ``name``: ``(True, summary)`` or ``(False, reason)``; the verdict is kept and
    recorded in the audit log either way (``origin`` added to the row's details)."""
    extra = dict(origin or {})
    try:
        path = find_backup(data_dir, name)
    except RestoreError as exc:
        _audit(
            data_dir,
            "db_backup_verify",
            "failure",
            user=user,
            terminal=terminal,
            details={**extra, "backup": name, "result": str(exc)},
        )
        raise
    try:
        report = check_database(path, require_head=False)
    except DatabaseCheckError as exc:
        ok, note = False, " ".join(str(exc).split())
    else:
        ok, note = True, report.summary()
    write_verdict(path, ok, note)
    _audit(
        data_dir,
        "db_backup_verify",
        "success" if ok else "failure",
        user=user,
        terminal=terminal,
        details={**extra, "backup": name, "result": note},
    )
    return ok, note


def open_session_count(db_path: Path) -> int:
    """Treatment sessions not yet ended (``in_progress`` or ``paused``) in the database at ``db_path``."""
    connection = crypto_db.connect(db_path, read_only=True, timeout_s=DEFAULT_BUSY_TIMEOUT_MS / 1000)
    try:
        row = connection.execute(
            "SELECT count(*) FROM sessions WHERE status IN ('in_progress', 'paused')"
        ).fetchone()
    except sqlite3.Error as exc:
        raise RestoreError(f"cannot tell whether a session is open: {exc}") from exc
    finally:
        connection.close()
    return int(row[0])


@dataclass(frozen=True, slots=True)
class LiveRestoreResult:
    """What :func:`restore_live` did: the backup restored, the backup of the replaced records, the schema."""

    source: Path
    replaced_backup: Path
    revision: str


def restore_live(
    data_dir: DataDir,
    name: str,
    *,
    user: str | None = None,
    terminal: str | None = None,
    session_open: Callable[[], str | None] | None = None,
) -> LiveRestoreResult:
    """Restore the backup ``name`` into the running database; raise :class:`RestoreError` when refused.

    Refused (and the refusal audited) when the backup does not verify, or a session is open: the database
    says so (a session ``in_progress`` or ``paused``), or ``session_open`` (the controller's view, e.g. its
    state over the console's link) returns a reason. The current database is backed up first.
    """

    def refuse(reason: str) -> RestoreError:
        _audit(
            data_dir,
            "db_restore",
            "failure",
            user=user,
            terminal=terminal,
            details={"backup": name, "reason": reason},
        )
        return RestoreError(reason)

    try:
        source = find_backup(data_dir, name)
    except RestoreError as exc:
        raise refuse(str(exc)) from None
    try:
        report = check_database(source, require_head=False)
    except DatabaseCheckError as exc:
        raise refuse(f"{name} does not verify: {' '.join(str(exc).split())}") from exc

    def refuse_if_session_open() -> None:
        reason = session_open() if session_open is not None else None
        if reason is None and open_session_count(data_dir.db_path):
            reason = "a treatment session is open in the records"
        if reason is not None:
            raise refuse(f"restore refused while a session is open ({reason}); end the session first")

    refuse_if_session_open()
    live_key = crypto_db.key_for(data_dir.db_path)
    if live_key is None and crypto_db.is_encrypted_file(source):
        raise refuse(
            f"{name} is encrypted and the running database is not; restore it with tosca db restore "
            "while the console is stopped"
        )
    staging = data_dir.root / f".tosca.db.restore.{os.getpid()}"
    _remove_staging(staging)
    try:
        # Copied first: the backup of the current database prunes old backups, and this may be one of them.
        # The copy takes the running database's key (a plain backup is encrypted on its way in).
        copy_database(source, staging, key=live_key)
        if report.revision != head_revision():
            _migrate(staging, head_revision(), None)
    except (BackupError, StorageError, sqlite3.Error) as exc:
        _remove_staging(staging)
        raise refuse(f"{name} could not be prepared, records unchanged: {_one_line(exc)}") from exc
    try:
        days, _problem = read_retention_days(data_dir.db_path)
        try:
            replaced = backup_database(data_dir, retention_days=days)
        except BackupError as exc:
            raise refuse(f"the current database could not be backed up first: {exc}") from exc
        write_verdict(replaced, True, "integrity ok")
        # Asked again right before the copy: the backup above took a while, and a session may have opened.
        refuse_if_session_open()
        try:
            _copy_into_live(staging, data_dir.db_path)
        except sqlite3.Error as exc:
            raise refuse(f"restore of {name} failed, records unchanged: {_one_line(exc)}") from exc
    finally:
        _remove_staging(staging)
    final = check_database(data_dir.db_path, quick=True, in_use=True)
    _audit(
        data_dir,
        "db_restore",
        "success",
        user=user,
        terminal=terminal,
        details={"backup": name, "source_revision": report.revision, "replaced_backup": replaced.name},
    )
    return LiveRestoreResult(source=source, replaced_backup=replaced, revision=final.revision)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _remove_staging(staging: Path) -> None:
    for extra in ("", "-journal", "-wal", "-shm"):
        Path(f"{staging}{extra}").unlink(missing_ok=True)


def _copy_into_live(staging: Path, db_path: Path) -> None:
    """Write the database ``staging`` over the live database with the online backup API (one transaction
    on the destination: readers see the old records or the new ones, never a mix)."""
    key = crypto_db.key_for(db_path)
    source = crypto_db.connect(staging, read_only=True, key=key)
    try:
        target = crypto_db.connect(db_path, timeout_s=DEFAULT_BUSY_TIMEOUT_MS / 1000, key=key)
        try:
            source.backup(target)
            target.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            target.close()
    finally:
        source.close()
