"""``tosca db``: upgrade, check, back up and restore the records database.

```
tosca db upgrade          back up the database, then migrate it to the current schema (creates it if absent)
tosca db check [FILE]     integrity_check, schema at head, views and triggers present (default: the database)
tosca db backup           online backup to backups/tosca_YYYYMMDD_HHMMSS.db, verified; kept for the configured
                          retention (``tosca config get backup_retention_days``)
tosca db backups          every backup (local time, size, verified yes/no), the retention and the free space
tosca db verify NAME      check the backup NAME (as listed) and remember the verdict
tosca db restore FILE     verify FILE, back up the current database, put FILE in its place (a plain or an
                          encrypted backup; the result is encrypted when either was)
tosca db encrypt --key-file FILE
                          back up, then encrypt the database, its backups and the session files with the
                          32-byte key in FILE (created, mode 0600, when absent); FILE's path is recorded
                          beside the database, and $TOSCA_DB_KEY_FILE, when set, names the key file instead
```

Success prints one or two lines on stdout and exits 0; a refusal or failure prints ``tosca: <reason>`` on
stderr and exits 1. ``upgrade`` and ``restore`` refuse while a console or a controller holds the database.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from storage.errors import one_line
from storage.paths import DataDir
from tui.commands import add_data_dir_option, fail

ACTIONS = ("upgrade", "check", "backup", "backups", "verify", "restore", "encrypt")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``db`` sub-command (and its actions) to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "db",
        help="records database: upgrade | check | backup | backups | verify NAME | restore FILE | encrypt",
        description="Maintain the records database of a data directory.",
    )
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    upgrade_parser = actions.add_parser("upgrade", help="back up, then migrate to the current schema")
    check_parser = actions.add_parser("check", help="integrity, schema revision, views and triggers")
    check_parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        default=None,
        metavar="FILE",
        help="file to check (default: the database)",
    )
    backup_parser = actions.add_parser("backup", help="verified online backup into backups/")
    backups_parser = actions.add_parser("backups", help="list the backups, the retention and the free space")
    verify_parser = actions.add_parser("verify", help="check one backup and remember the verdict")
    verify_parser.add_argument("name", metavar="NAME", help="backup file name, as tosca db backups lists it")
    restore_parser = actions.add_parser("restore", help="replace the database with a verified backup file")
    restore_parser.add_argument("file", type=Path, metavar="FILE", help="backup file to restore")
    encrypt_parser = actions.add_parser(
        "encrypt", help="encrypt the database, its backups and the session files (after a backup)"
    )
    encrypt_parser.add_argument(
        "--key-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the 32-byte key file, kept outside the data directory (created when absent)",
    )
    subs = (upgrade_parser, check_parser, backup_parser, backups_parser, verify_parser, restore_parser)
    for sub in (*subs, encrypt_parser):
        add_data_dir_option(sub)
    return parser


def _upgrade(data_dir: DataDir) -> None:
    from storage.locks import hold_database_exclusively
    from storage.maintenance import upgrade

    with hold_database_exclusively(data_dir):
        result = upgrade(data_dir)
    if result.previous == result.current:
        print(f"ok: schema {result.current} (already current)")
        return
    before = result.previous or "new database"
    print(f"ok: schema {before} -> {result.current}")
    if result.backup is not None:
        print(f"backup: {result.backup}")


def _check(data_dir: DataDir, file: Path | None) -> None:
    from storage.backup import last_backup
    from storage.maintenance import check_database

    report = check_database(file if file is not None else data_dir.db_path)
    print(f"ok: {report.summary()}")
    if file is None:
        newest = last_backup(data_dir)
        if newest is None:
            print("last backup: none")
        else:
            print(f"last backup: {newest.path.name} ({newest.taken_at:%Y-%m-%d %H:%M:%S} local time)")


def _backup(data_dir: DataDir) -> None:
    from control.terminal import detect_terminal
    from storage.backups import make_backup, read_retention_days
    from storage.maintenance import backup, head_revision, schema_revision

    if schema_revision(data_dir.db_path) != head_revision():
        # An older or unversioned database: a plain backup, without the audit trail it may not have yet.
        path = backup(data_dir, terminal=detect_terminal())
        print(f"ok: backup {path} (integrity ok)")
        return
    _days, problem = read_retention_days(data_dir.db_path)
    if problem is not None:
        print(f"warning: {problem}", file=sys.stderr)
    entry = make_backup(data_dir, terminal=detect_terminal())
    print(f"ok: backup {entry.path} (integrity ok)")


def _backups(data_dir: DataDir) -> None:
    from storage.backups import backup_overview, human_size

    overview = backup_overview(data_dir)
    if overview.retention_problem is not None:
        print(f"warning: {overview.retention_problem}", file=sys.stderr)
    if overview.entries:
        print(f"{'taken (local time)':19}  {'size':>9}  {'verified':11}  name")
        for entry in overview.entries:
            print(
                f"{entry.taken_at:%Y-%m-%d %H:%M:%S}  {human_size(entry.size):>9}  "
                f"{entry.verified_text:11}  {entry.name}"
            )
    print(
        f"{len(overview.entries)} backup(s) in {data_dir.backups}; kept {overview.retention_days} days; "
        f"{human_size(overview.free_bytes)} free of {human_size(overview.total_bytes)}"
    )


def _verify(data_dir: DataDir, name: str) -> int:
    from control.terminal import detect_terminal
    from storage.backups import verify_backup

    ok, note = verify_backup(data_dir, name, terminal=detect_terminal())
    if not ok:
        return fail(f"{name} does not verify: {note}")
    print(f"ok: {name}: {note}")
    return 0


def _restore(data_dir: DataDir, file: Path) -> None:
    from control.terminal import detect_terminal
    from storage.maintenance import restore

    result = restore(data_dir, file, terminal=detect_terminal())
    print(f"ok: restored {result.source} (schema {result.revision})")
    if result.replaced_backup is not None:
        print(f"previous database saved as {result.replaced_backup}")


def _encrypt(data_dir: DataDir, key_file: Path) -> None:
    from control.terminal import detect_terminal
    from storage.crypto_setup import encrypt_database

    result = encrypt_database(data_dir, key_file, terminal=detect_terminal())
    if result.key_created:
        print(f"new key written to {result.key_file} (keep a copy elsewhere: without it nothing can be read)")
    print(
        f"ok: {data_dir.db_path} encrypted with the key file {result.key_file}; "
        f"{result.backups_encrypted} backup(s) and {result.session_files_encrypted} session file(s) encrypted"
    )
    print(f"backup taken first (now encrypted too): {result.backup}")


def run(args: argparse.Namespace) -> int:
    """Run the ``db`` action named in ``args`` on ``args.data_dir``; return the exit code."""
    # The storage layer (SQLAlchemy, Alembic) is imported only when a db action runs, so that building the
    # ``tosca`` parser stays quick.
    from storage.crypto_db import use_data_dir
    from storage.errors import StorageError

    data_dir = DataDir(Path(args.data_dir))
    use_data_dir(data_dir.root)  # the key of an encrypted file brought from elsewhere (restore, check)
    action = args.db_action
    try:
        if action == "upgrade":
            _upgrade(data_dir)
        elif action == "check":
            _check(data_dir, args.file)
        elif action == "backup":
            _backup(data_dir)
        elif action == "backups":
            _backups(data_dir)
        elif action == "verify":
            code = _verify(data_dir, args.name)
            if code:
                return code
        elif action == "restore":
            _restore(data_dir, args.file)
        elif action == "encrypt":
            _encrypt(data_dir, args.key_file)
        else:
            return fail(f"unknown db action {action!r} (expected one of {', '.join(ACTIONS)})")
    except StorageError as exc:
        return fail(one_line(exc))
    except (OSError, sqlite3.Error) as exc:
        return fail(f"db {action} failed: {one_line(exc)}")
    sys.stdout.flush()
    return 0
