"""Upgrade, check and restore the records database (used at console start and by ``tosca db``).

* :func:`upgrade` backs up an existing database, then runs Alembic to the head revision.
* :func:`check_database` runs ``integrity_check`` (or ``quick_check``) and confirms the file is a TOSCA
  database at the head revision with its tables, three views and six append-only triggers. Anything else (a
  corrupt, truncated, garbage or foreign file) raises :class:`DatabaseCheckError` with a one-line reason.
* :func:`restore` verifies a file, takes the console lock, backs up the database it replaces, puts the file in
  place and brings it to the head revision.

Alembic is configured in code (:func:`alembic_config`); no ``alembic.ini`` is read. These functions are
synchronous; from an event loop call them through ``asyncio.to_thread`` (the migration environment runs its
own loop).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from storage.backup import BackupInfo, backup_database, copy_database, last_backup
from storage.chain import append_sqlite, check_keys, seal_file
from storage.crypto_db import connect as open_database
from storage.crypto_db import key_for, needs_key
from storage.engine import DEFAULT_BUSY_TIMEOUT_MS, connect_sqlite
from storage.errors import BackupError, DatabaseCheckError, RestoreError, StorageError
from storage.locks import hold_database_exclusively
from storage.models import APPEND_ONLY_TABLES, VIEW_NAMES, Base, utc_now
from storage.paths import DataDir

#: The six triggers that keep the append-only tables append-only.
TRIGGER_NAMES: Final = tuple(f"trg_{t}_no_{op}" for t in APPEND_ONLY_TABLES for op in ("update", "delete"))
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_VERSION_TABLE: Final = "alembic_version"


def migrations_folder() -> Path:
    """Return the folder of the installed :mod:`migrations` package (the one holding ``env.py``).

    Found through the package's search path rather than its ``__init__``, so it works however the package
    was installed (wheel, editable, or a plain source tree on ``sys.path``).
    """
    for entry in getattr(migrations, "__path__", ()):
        folder = Path(entry)
        if (folder / "env.py").is_file() and (folder / "versions").is_dir():
            return folder.resolve()
    raise StorageError("the migrations package is incomplete: no folder with env.py and versions/")


def alembic_config(db_path: Path | None = None) -> Config:
    """Return an Alembic configuration for ``db_path`` built in code (no ``alembic.ini``).

    ``script_location`` is the installed :mod:`migrations` package; new version files are named
    ``<revision>_<slug>.py`` with revisions ``YYYYMMDD_NNN``.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_folder()))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("path_separator", "os")
    if db_path is not None:
        config.attributes["db_path"] = Path(db_path)
        config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{db_path}")
    return config


def script_directory() -> ScriptDirectory:
    """Return the Alembic script directory of the installed migrations."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """Return the revision id the code expects (the single head of the migrations)."""
    head = script_directory().get_current_head()
    if head is None:
        raise DatabaseCheckError("the migrations have no head revision")
    return head


def known_revisions() -> frozenset[str]:
    """Return every revision id the installed migrations know."""
    return frozenset(rev.revision for rev in script_directory().walk_revisions())


def _open(db_path: Path) -> sqlite3.Connection:
    connection = open_database(db_path, timeout_s=DEFAULT_BUSY_TIMEOUT_MS / 1000)
    connection.execute("PRAGMA query_only = ON")
    return connection


def _read_revision(connection: sqlite3.Connection) -> str | None:
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if _VERSION_TABLE not in tables:
        return None
    row = connection.execute(f"SELECT version_num FROM {_VERSION_TABLE}").fetchone()
    return None if row is None else str(row[0])


def schema_revision(db_path: Path) -> str | None:
    """Return the Alembic revision of the database at ``db_path``, or None (no file, empty, not versioned)."""
    path = Path(db_path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    connection = _open(path)
    try:
        return _read_revision(connection)
    finally:
        connection.close()


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What :func:`check_database` found: the revision, the integrity verdict and what exists."""

    path: Path
    revision: str
    integrity: str
    views: int
    triggers: int

    def summary(self) -> str:
        """One line, e.g. ``schema 20261123_001, integrity ok, 3 views, 6 triggers``."""
        return (
            f"schema {self.revision}, integrity {self.integrity}, "
            f"{self.views} views, {self.triggers} triggers"
        )


def _check_header(path: Path) -> None:
    if needs_key(path):
        return  # an SQLCipher file's header is encrypted: opening it with its key checks it
    size = path.stat().st_size
    if size == 0:
        raise DatabaseCheckError(f"{path.name} is empty, not a TOSCA database")
    with path.open("rb") as handle:
        header = handle.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        raise DatabaseCheckError(f"{path.name} is not an SQLite database (bad file header)")
    if len(header) < 100:
        raise DatabaseCheckError(f"{path.name} is truncated ({size} bytes, shorter than the file header)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    page_count = int.from_bytes(header[28:32], "big")
    change_counter = int.from_bytes(header[24:28], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    if page_size < 512 or page_size & (page_size - 1):
        raise DatabaseCheckError(f"{path.name} has an invalid page size {page_size} (damaged header)")
    if page_count and valid_for == change_counter and size < page_count * page_size:
        raise DatabaseCheckError(
            f"{path.name} is truncated ({size} bytes, the header says {page_count * page_size})"
        )


def check_database(
    db_path: Path, *, quick: bool = False, require_head: bool = True, in_use: bool = False
) -> CheckReport:
    """Check the database file at ``db_path`` and return a report, or raise :class:`DatabaseCheckError`.

    ``quick`` runs ``quick_check`` instead of the full ``integrity_check``. With ``require_head`` the schema
    must be at :func:`head_revision`; otherwise any revision the migrations know is accepted. Nothing in the
    file is changed.

    ``in_use``: the calling process has the database open (the controller's engine). The file header is then
    not read directly: SQLite's locks are POSIX locks, held per process, and closing *any* descriptor of the
    file drops them all. Another process would then believe it is the last user, checkpoint and delete the
    write-ahead log under the open connections, and their next write fails with "disk I/O error".
    """
    path = Path(db_path)
    if not path.is_file():
        raise DatabaseCheckError(f"no database at {path}")
    if not in_use:
        _check_header(path)
    try:
        connection = _open(path)
    except sqlite3.Error as exc:
        raise DatabaseCheckError(f"cannot open {path.name}: {exc}") from exc
    try:
        pragma = "quick_check" if quick else "integrity_check"
        rows = connection.execute(f"PRAGMA {pragma}").fetchall()
        if rows != [("ok",)]:
            problems = len(rows)
            raise DatabaseCheckError(f"{path.name} failed {pragma} ({problems} problem(s)): {rows[0][0]}")
        schema = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
        revision = _read_revision(connection)
    except sqlite3.Error as exc:
        raise DatabaseCheckError(f"{path.name} is damaged or not a database: {exc}") from exc
    finally:
        connection.close()
    names = {kind: {name for k, name in schema if k == kind} for kind in ("table", "view", "trigger")}
    user_tables = {name for name in names["table"] if not name.startswith("sqlite_")}
    if revision is None:
        if _VERSION_TABLE in user_tables and user_tables <= {_VERSION_TABLE}:
            raise DatabaseCheckError(f"{path.name} has no schema yet (base revision; run: tosca db upgrade)")
        if not user_tables:
            raise DatabaseCheckError(f"{path.name} is an empty SQLite database, not a TOSCA database")
        shown = ", ".join(sorted(user_tables)[:5])
        raise DatabaseCheckError(f"{path.name} is not a TOSCA database (no schema revision; tables: {shown})")
    if revision not in known_revisions():
        raise DatabaseCheckError(f"{path.name} has schema revision {revision}, unknown to this console")
    head = head_revision()
    if revision != head:
        if require_head:
            raise DatabaseCheckError(
                f"{path.name} is at schema {revision}, head is {head} (run: tosca db upgrade)"
            )
    else:
        missing = sorted(set(Base.metadata.tables) - names["table"])
        missing += sorted(set(VIEW_NAMES) - names["view"])
        missing += sorted(set(TRIGGER_NAMES) - names["trigger"])
        if missing:
            raise DatabaseCheckError(f"{path.name} is missing {', '.join(missing)}")
    return CheckReport(
        path=path,
        revision=revision,
        integrity="ok",
        views=len(set(VIEW_NAMES) & names["view"]),
        triggers=len(set(TRIGGER_NAMES) & names["trigger"]),
    )


def quick_check(db_path: Path) -> CheckReport:
    """The start-up check: ``quick_check`` plus schema at head, views and triggers present."""
    return check_database(db_path, quick=True)


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """The revision before and after an upgrade, and the backup taken first (None if nothing to do or new)."""

    previous: str | None
    current: str
    backup: Path | None


def _schema_state(path: Path) -> str:
    """``absent`` (no file, zero length or no tables), ``base`` (ours, no schema yet) or ``present``."""
    if not path.is_file() or path.stat().st_size == 0:
        return "absent"
    _check_header(path)
    connection = _open(path)
    try:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(row[0]).startswith("sqlite_")
        }
        revision = _read_revision(connection)
    except sqlite3.Error as exc:
        raise DatabaseCheckError(f"{path.name} is damaged or not a database: {exc}") from exc
    finally:
        connection.close()
    if not tables:
        return "absent"
    if tables == {_VERSION_TABLE} and revision is None:
        return "base"
    return "present"


def _migrate(db_path: Path, head: str, backup: Path | None) -> None:
    """Run Alembic to ``head``; a failure (rolled back by the migration environment) becomes StorageError."""
    try:
        command.upgrade(alembic_config(db_path), "head")
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        saved = f"; the backup taken first is {backup}" if backup is not None else ""
        raise StorageError(f"migration to schema {head} failed and was rolled back: {reason}{saved}") from exc


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def upgrade(data_dir: DataDir) -> UpgradeResult:
    """Bring ``data_dir``'s database to the head revision, creating it if absent.

    Every folder and file of the data directory is first restricted to its owner and group
    (:meth:`DataDir.restrict_modes`: a directory made under a looser umask is tightened here). An existing
    database is checked first (``quick_check``, ours, at a known revision) and backed up before
    any migration runs; a database already at head is left alone (no backup). Either way it ends with the
    start-up ``quick_check``. The caller should hold the console lock (the console does; ``tosca db upgrade``
    takes it and the rig lock). A failed migration is rolled back and raises :class:`StorageError`.
    Blocking: from a running event loop use :func:`upgrade_async`.
    """
    if _in_running_loop():
        raise StorageError(
            "upgrade() blocks and runs its own event loop; from async code await upgrade_async()"
        )
    data_dir.ensure()
    db_path = data_dir.db_path
    head = head_revision()
    previous: str | None = None
    backup: Path | None = None
    state = _schema_state(db_path)
    data_dir.restrict_modes()
    if state == "present":
        previous = check_database(db_path, quick=True, require_head=False).revision
        if previous == head:
            check_keys(db_path)  # a bad key file refuses the start here, in one line, not at the first write
            return UpgradeResult(previous=previous, current=head, backup=None)
    if state != "absent":
        backup = backup_database(data_dir)
    _migrate(db_path, head, backup)
    seal_file(db_path)  # creates the chain's keys when missing and seals the rows written before the chain
    data_dir.restrict_modes()
    report = check_database(db_path, quick=True)
    return UpgradeResult(previous=previous, current=report.revision, backup=backup)


async def upgrade_async(data_dir: DataDir) -> UpgradeResult:
    """:func:`upgrade` for async callers (the console at start): runs it in a worker thread."""
    return await asyncio.to_thread(upgrade, data_dir)


def record_audit(
    db_path: Path,
    action: str,
    outcome: str,
    *,
    terminal: str | None = None,
    details: dict[str, object] | None = None,
) -> None:
    """Append an ``audit_log`` row for a maintenance action done outside a login (user = the OS account)."""
    try:
        _insert_audit(db_path, action, outcome, terminal, details)
    except sqlite3.Error as exc:
        raise StorageError(f"could not record {action} in the audit log: {exc}") from exc


def _insert_audit(
    db_path: Path, action: str, outcome: str, terminal: str | None, details: dict[str, object] | None
) -> None:
    connection = connect_sqlite(db_path)
    try:
        with connection:
            append_sqlite(
                connection,
                "audit_log",
                {
                    "timestamp": utc_now(),
                    "username": _os_user(),
                    "action": action,
                    "terminal": terminal,
                    "outcome": outcome,
                    "details": json.dumps(details or {}, sort_keys=True),
                },
            )
    finally:
        connection.close()


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What :func:`restore` did: the file, the backup of the replaced database, the final revision."""

    source: Path
    replaced_backup: Path | None
    revision: str


def _preserve_unreadable(data_dir: DataDir) -> Path:
    """Keep a raw copy of a database that cannot be backed up online (it is damaged); return its path."""
    data_dir.backups.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    target = data_dir.backups / f"damaged_tosca_{stamp}_{os.getpid()}.db"
    shutil.copy2(data_dir.db_path, target)
    for extra in ("-wal", "-shm"):
        sidecar = Path(f"{data_dir.db_path}{extra}")
        if sidecar.exists():
            shutil.copy2(sidecar, Path(f"{target}{extra}"))
    return target


def restore(data_dir: DataDir, source: Path, *, terminal: str | None = None) -> RestoreResult:
    """Replace ``data_dir``'s database with the backup file ``source``.

    The file must pass ``integrity_check`` and be a TOSCA database at a known revision, or nothing happens
    (:class:`RestoreError`). Refused with :class:`DatabaseInUseError` while a console or a controller holds
    the database (see :func:`storage.locks.hold_database_exclusively`). The
    database being replaced is backed up first (or, if it is too damaged for that, copied raw to
    ``backups/damaged_tosca_*.db``). The restored database is then upgraded to head if it is older, and the
    restore is recorded in ``audit_log``.
    """
    source = Path(source)
    if not source.is_file():
        raise RestoreError(f"no such file: {source}")
    db_path = data_dir.db_path
    if db_path.exists() and source.resolve() == db_path.resolve():
        raise RestoreError("cannot restore the database onto itself")
    try:
        report = check_database(source, require_head=False)
    except DatabaseCheckError as exc:
        raise RestoreError(f"refused {source.name}: {exc}") from exc
    data_dir.ensure()
    with hold_database_exclusively(data_dir):
        # Copy first: the backup below prunes old backups, and the file being restored may be one of them.
        staging = data_dir.root / f".tosca.db.restore.{os.getpid()}"
        for extra in ("", "-journal"):
            Path(f"{staging}{extra}").unlink(missing_ok=True)
        try:
            # Encrypted when the database it replaces is, or the file is: never less protected than either.
            copy_database(source, staging, key=key_for(db_path) or key_for(source))
        except BackupError as exc:
            raise RestoreError(f"could not copy {source.name}: {exc}") from exc
        replaced: Path | None = None
        try:
            if db_path.is_file() and db_path.stat().st_size > 0:
                try:
                    replaced = backup_database(data_dir)
                except BackupError:
                    replaced = _preserve_unreadable(data_dir)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        for extra in ("-wal", "-shm"):
            Path(f"{db_path}{extra}").unlink(missing_ok=True)
        os.replace(staging, db_path)
        if report.revision != head_revision():
            _migrate(db_path, head_revision(), replaced)
        final = check_database(db_path, quick=True)
        data_dir.restrict_modes()
        record_audit(
            db_path,
            "db_restore",
            "success",
            terminal=terminal,
            details={
                "source": str(source.resolve()),
                "source_revision": report.revision,
                "replaced_backup": str(replaced) if replaced else None,
            },
        )
    return RestoreResult(source=source, replaced_backup=replaced, revision=final.revision)


def backup(data_dir: DataDir, *, terminal: str | None = None) -> Path:
    """Back up the database (see :func:`storage.backup.backup_database`) and record it in ``audit_log``."""
    path = backup_database(data_dir)
    data_dir.restrict_modes()
    if schema_revision(data_dir.db_path) == head_revision():
        record_audit(
            data_dir.db_path, "db_backup", "success", terminal=terminal, details={"backup": str(path)}
        )
    return path


__all__ = [
    "TRIGGER_NAMES",
    "BackupInfo",
    "CheckReport",
    "RestoreResult",
    "UpgradeResult",
    "alembic_config",
    "backup",
    "check_database",
    "head_revision",
    "known_revisions",
    "last_backup",
    "migrations_folder",
    "quick_check",
    "record_audit",
    "restore",
    "schema_revision",
    "script_directory",
    "upgrade",
    "upgrade_async",
]
