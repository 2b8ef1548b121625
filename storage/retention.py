"""Retention: prune what the clinic's policy no longer requires to be kept, and seal the pruning into the
record chain (docs/records-chain.md, "Retention").

A :class:`RetentionPolicy` gives days per kind: raw video, telemetry files, sessions (their row, events,
session records and folder), ``safety_log`` rows and ``audit_log`` rows. :func:`run_retention` decides in one
write transaction, from the database as it is:

1. **The clock.** ``now`` earlier than the newest time the records hold (audit, safety, checkpoints, session
   starts and ends, session records), by more than :data:`CLOCK_TOLERANCE`, means the clock was set
   backwards: nothing is pruned (:class:`RetentionRefused`).
2. **The records verify.** The whole chain is verified first; a failure refuses the run, so pruning never
   hides an altered row.
3. **What may go.** A session may go when it finished before ``now - sessions days``. A chain is pruned only
   from its start (positions 1 to k): its longest prefix of rows that may go. An ``audit_log`` row may go
   when older than the audit days; a ``safety_log`` row when older than the safety days and its session (if
   any) may go; a ``treatment_events`` or ``session_records`` row when its session may go. A session whose
   rows are not all inside those prefixes stays, and so do its rows (repeated until nothing changes): no
   row of a session still within its retention, and no session whose rows stay, is ever removed.
4. **Files.** The folder of each session removed; the video of a session finished before ``now - video
   days``; its telemetry file before ``now - telemetry days``. Only files inside the data directory's
   ``sessions`` folder are ever removed (a path recorded elsewhere is reported, not followed).
5. **The seal.** For each chain pruned, a signed checkpoint (reason ``prune``) at the last position removed
   (its hash), then the rows are deleted (the delete triggers allow it only while a ``retention_permit`` row
   exists, inside this transaction), then one ``audit_log`` row ``records_prune`` states the policy, the
   cutoffs and what went. Verification starts each chain at its prune checkpoint and lists the prunings.

With ``dry_run`` the same decisions are made and reported and nothing is written or removed. Files are
removed after the commit, so a rolled-back run never loses one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from storage.chain import (
    CHAINS,
    ROW_PREFIX,
    ZERO_HASH,
    Head,
    Mac,
    SqliteExecutor,
    _keys_for,
    _write_checkpoint,
    append_mappings,
    chain_table,
    has_chain_schema,
    lock_for_append,
    read_key,
    signing_key,
    stored_timestamp,
)
from storage.chain_verify import verify_connection
from storage.errors import StorageError

#: ``audit_log.action`` of a retention run (one row per run that was not a dry run, even when nothing went).
ACTION_RECORDS_PRUNE: Final = "records_prune"
#: How far the newest record may be ahead of the clock before the clock counts as set backwards (two
#: processes' clocks read a moment apart; a record written "in the future" by more is the clock's fault).
CLOCK_TOLERANCE: Final = timedelta(minutes=5)
#: The shortest audit retention a run accepts: six years of 365.25 days, rounded up (the settings model,
#: ``control.system_config``, refuses less too; a test holds the two equal).
MIN_AUDIT_DAYS: Final = 2192
#: The kinds a policy gives days for, in order.
KINDS: Final = ("video", "telemetry", "sessions", "safety", "audit")


class RetentionRefused(StorageError):
    """The run was refused and nothing was pruned: the clock, the records, the policy; one line."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days each kind is kept (``control.system_config``'s ``retention_*_days``)."""

    video_days: int
    telemetry_days: int
    sessions_days: int
    safety_days: int
    audit_days: int

    def as_json(self) -> dict[str, int]:
        return {f"{kind}_days": getattr(self, f"{kind}_days") for kind in KINDS}

    def describe(self) -> str:
        """One line, e.g. ``video 365 d, telemetry 3653 d, ...``."""
        return ", ".join(f"{kind} {getattr(self, f'{kind}_days')} d" for kind in KINDS)


@dataclass(slots=True)
class RetentionReport:
    """What a run pruned (or, dry, would prune)."""

    now: datetime
    policy: RetentionPolicy
    dry_run: bool
    #: Rows removed per chain, and the last position removed.
    rows: dict[str, int] = field(default_factory=dict)
    through: dict[str, int] = field(default_factory=dict)
    sessions: list[int] = field(default_factory=list)
    #: Files and folders removed (or to remove), with their size in bytes.
    files: list[tuple[str, int]] = field(default_factory=list)
    #: Files that could not be removed, with why.
    problems: list[str] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(size for _path, size in self.files)

    @property
    def nothing(self) -> bool:
        return not self.rows and not self.sessions and not self.files

    def lines(self) -> list[str]:
        """What a person reads: one line per chain, the sessions, the files."""
        verb = "would prune" if self.dry_run else "pruned"
        out = [
            f"retention {'dry run' if self.dry_run else 'run'} at {self.now:%Y-%m-%d %H:%M} UTC: "
            f"{self.policy.describe()}"
        ]
        if self.nothing:
            out.append("nothing to prune")
            return out
        for chain in CHAINS:
            if self.rows.get(chain):
                out.append(f"{verb} {chain}: {self.rows[chain]} rows (positions up to {self.through[chain]})")
        if self.sessions:
            shown = ", ".join(str(s) for s in self.sessions[:20])
            more = f" and {len(self.sessions) - 20} more" if len(self.sessions) > 20 else ""
            out.append(f"{verb} {len(self.sessions)} sessions: {shown}{more}")
        if self.files:
            out.append(f"{verb} {len(self.files)} files and folders, {self.bytes_freed / 1e6:.1f} MB")
        out.extend(f"not removed: {problem}" for problem in self.problems)
        return out


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def newest_record_time(connection: sqlite3.Connection) -> datetime | None:
    """The newest time any record holds (naive UTC), or None for an empty database."""
    newest: datetime | None = None
    for sql in (
        "SELECT max(timestamp) FROM audit_log",
        "SELECT max(timestamp) FROM safety_log",
        "SELECT max(created_at) FROM chain_checkpoints",
        "SELECT max(start_time) FROM sessions",
        "SELECT max(end_time) FROM sessions",
        "SELECT max(recorded_at) FROM session_records",
    ):
        found = _as_datetime(connection.execute(sql).fetchone()[0])
        if found is not None and (newest is None or found > newest):
            newest = found
    return newest


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, ValueError):
        return False
    return True


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(base) / name).stat().st_size
            except OSError:
                continue
    return total


def _file_of(recorded: str | None, data_root: Path) -> Path | None:
    if not recorded:
        return None
    path = Path(recorded)
    return path if path.is_absolute() else data_root / path


def _prefix_end(connection: sqlite3.Connection, table: str, id_column: str, keep: str) -> int:
    """The id of the last row of the longest prefix (in id order) with no row matching ``keep``."""
    first_kept = connection.execute(f"SELECT min({id_column}) FROM {table} WHERE {keep}").fetchone()[0]
    if first_kept is not None:
        return int(first_kept) - 1
    last = connection.execute(f"SELECT max({id_column}) FROM {table}").fetchone()[0]
    return int(last or 0)


def _decide(
    connection: sqlite3.Connection, policy: RetentionPolicy, now: datetime
) -> tuple[dict[str, int], list[int]]:
    """The last id to prune in each chain and the sessions to remove (see the module's rules)."""
    session_cut = stored_timestamp(now - timedelta(days=policy.sessions_days))
    audit_cut = stored_timestamp(now - timedelta(days=policy.audit_days))
    safety_cut = stored_timestamp(now - timedelta(days=policy.safety_days))
    connection.execute("CREATE TEMP TABLE IF NOT EXISTS retention_go (session_id INTEGER PRIMARY KEY)")
    connection.execute("DELETE FROM temp.retention_go")
    connection.execute(
        "INSERT INTO temp.retention_go SELECT session_id FROM sessions "
        "WHERE status IN ('completed', 'aborted') AND coalesce(end_time, start_time) < ?",
        (session_cut,),
    )
    going = "session_id IN (SELECT session_id FROM temp.retention_go)"
    keep = {
        "audit_log": ("audit_id", f"NOT coalesce(timestamp < '{audit_cut}', 0)"),
        "safety_log": (
            "log_id",
            f"NOT coalesce(timestamp < '{safety_cut}' AND (session_id IS NULL OR {going}), 0)",
        ),
        "treatment_events": ("event_id", f"NOT coalesce({going}, 0)"),
        "session_records": ("record_id", f"NOT coalesce({going}, 0)"),
    }
    while True:
        ends = {
            chain: _prefix_end(connection, chain, id_column, rule)
            for chain, (id_column, rule) in keep.items()
        }
        removed = 0
        for chain in ("safety_log", "treatment_events", "session_records"):
            id_column = keep[chain][0]
            removed += connection.execute(
                f"DELETE FROM temp.retention_go WHERE session_id IN (SELECT session_id FROM {chain} "
                f"WHERE {id_column} > ? AND session_id IS NOT NULL)",
                (ends[chain],),
            ).rowcount
        if not removed:
            break
    sessions = [
        int(row[0]) for row in connection.execute("SELECT session_id FROM temp.retention_go ORDER BY 1")
    ]
    return ends, sessions


def _position_at(connection: sqlite3.Connection, chain: str, row_id: int, mac: Mac) -> Head:
    """The chain's position and hash at the row ``row_id``: read from a chained row, or recomputed over the
    rows sealed before the chain (from the last prune's checkpoint, or the start)."""
    table = chain_table(chain)
    found = connection.execute(
        f"SELECT chain_seq, chain_mac FROM {chain} WHERE {table.id_column} = ?", (row_id,)
    ).fetchone()
    if found is not None and found[0] is not None:
        return Head(length=int(found[0]), hash=bytes(found[1]), row_id=row_id)
    prune = connection.execute(
        "SELECT length, head_hash, head_row_id FROM chain_checkpoints WHERE chain = ? AND reason = 'prune' "
        "ORDER BY length DESC LIMIT 1",
        (chain,),
    ).fetchone()
    position, head, after = (int(prune[0]), bytes(prune[1]), int(prune[2])) if prune else (0, ZERO_HASH, 0)
    prefix = ROW_PREFIX + chain.encode("ascii") + b"\n"
    from storage.chain import encode_values

    cursor = connection.execute(
        f"SELECT {', '.join(table.columns)} FROM {chain} WHERE {table.id_column} > ? AND "
        f"{table.id_column} <= ? ORDER BY {table.id_column}",
        (after, row_id),
    )
    for values in cursor:
        position += 1
        head = mac.digest(prefix + position.to_bytes(8, "big") + head + encode_values(values).encode("ascii"))
    return Head(length=position, hash=head, row_id=row_id)


def _files(
    connection: sqlite3.Connection,
    data_root: Path,
    policy: RetentionPolicy,
    now: datetime,
    sessions: Iterable[int],
    report: RetentionReport,
) -> list[Path]:
    """The files and folders to remove: the folders of the sessions removed, old videos and telemetry."""
    root = data_root / "sessions"
    going = set(sessions)
    targets: list[Path] = []

    def take(path: Path | None, why: str) -> None:
        if path is None or not (path.exists() or path.is_symlink()):
            return
        if not _inside(path, root) or path.resolve() == root.resolve():
            report.problems.append(f"{path} ({why}) is outside {root}: left in place")
            return
        if any(_inside(path, done) for done in targets):
            return
        targets.append(path)
        report.files.append((str(path), _size(path)))

    video_cut = now - timedelta(days=policy.video_days)
    telemetry_cut = now - timedelta(days=policy.telemetry_days)
    rows = connection.execute(
        "SELECT session_id, coalesce(end_time, start_time), session_folder_path, video_path, telemetry_path "
        "FROM sessions WHERE status IN ('completed', 'aborted') ORDER BY session_id"
    ).fetchall()
    for session_id, ended, folder, video, telemetry in rows:
        when = _as_datetime(ended)
        if session_id in going:
            take(_file_of(folder, data_root), f"folder of session {session_id}")
            continue
        if when is None:
            continue
        if when < video_cut:
            take(_file_of(video, data_root), f"video of session {session_id}")
            for (path,) in connection.execute(
                "SELECT file_path FROM session_recordings WHERE session_id = ? AND recording_type = 'video'",
                (session_id,),
            ):
                take(_file_of(path, data_root), f"video of session {session_id}")
        if when < telemetry_cut:
            take(_file_of(telemetry, data_root), f"telemetry of session {session_id}")
    return targets


def _remove(paths: list[Path], report: RetentionReport) -> None:
    for path in paths:
        folder = path.is_dir() and not path.is_symlink()
        try:
            if folder:
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.problems.append(f"{path}: {exc.strerror or exc}")
            continue
        if folder and path.parent.name != "sessions":
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the subject's folder, once its last session folder is gone


def run_retention(
    db_path: Path,
    data_root: Path,
    policy: RetentionPolicy,
    now: datetime,
    *,
    dry_run: bool = False,
    terminal: str | None = None,
) -> RetentionReport:
    """Prune what ``policy`` allows at ``now`` (naive UTC) from the database ``db_path`` and the session
    files under ``data_root`` (see the module's rules); with ``dry_run`` only report it.

    Raises:
        RetentionRefused: the clock reads earlier than the newest record, or the records do not verify;
            nothing was pruned.
        StorageError: the database cannot be read or written (nothing was pruned).
    """
    from storage.engine import connect_sqlite

    if policy.audit_days < MIN_AUDIT_DAYS:
        raise RetentionRefused(
            f"an audit retention of {policy.audit_days} days is refused: "
            f"at least {MIN_AUDIT_DAYS} (six years)"
        )
    if min(getattr(policy, f"{kind}_days") for kind in KINDS) < 1:
        raise RetentionRefused("every retention is at least one day")
    report = RetentionReport(now=now, policy=policy, dry_run=dry_run)
    connection = connect_sqlite(db_path)
    targets: list[Path] = []
    try:
        executor = SqliteExecutor(connection)
        if not has_chain_schema(executor):
            raise RetentionRefused("the database predates the record chain: upgrade it first")
        # Verified first, outside the write lock (a reader never blocks the writers in WAL mode): the rows
        # pruned are old ones, verified here; rows appended meanwhile are new and never pruned by this run.
        key_path, signing_path = _keys_for(executor)
        key = read_key(key_path)
        verified = verify_connection(connection, key=key, public=signing_key(signing_path).public_key())
        if verified.failure is not None:
            raise RetentionRefused(f"the records do not verify ({verified.failure.message}); nothing pruned")
        connection.execute("BEGIN IMMEDIATE")
        try:
            newest = newest_record_time(connection)
            if newest is not None and now < newest - CLOCK_TOLERANCE:
                raise RetentionRefused(
                    f"the clock reads {now:%Y-%m-%d %H:%M} UTC, earlier than the newest record "
                    f"({newest:%Y-%m-%d %H:%M} UTC): it was set backwards; nothing pruned"
                )
            open_session = connection.execute(
                "SELECT session_id, status FROM sessions WHERE status IN ('in_progress', 'paused') LIMIT 1"
            ).fetchone()
            if open_session is not None:
                raise RetentionRefused(
                    f"session {open_session[0]} is {open_session[1]}: retention runs once no session is open"
                )
            ends, sessions = _decide(connection, policy, now)
            report.sessions = sessions
            targets = _files(connection, data_root, policy, now, sessions, report)
            mac = Mac.of(key)
            heads: dict[str, Head] = {}
            for chain in CHAINS:
                table = chain_table(chain)
                count, last = connection.execute(
                    f"SELECT count(*), max({table.id_column}) FROM {chain} WHERE {table.id_column} <= ?",
                    (ends[chain],),
                ).fetchone()
                if count:
                    ends[chain] = int(last)  # the last row removed (ids may have gaps)
                    heads[chain] = _position_at(connection, chain, ends[chain], mac)
                    report.rows[chain] = int(count)
                    report.through[chain] = heads[chain].length
            if dry_run:
                connection.execute("ROLLBACK")
                return report
            lock_for_append(executor)
            signer = signing_key(signing_path)
            for name, head in heads.items():
                written = _write_checkpoint(executor, name, head, "prune", signer)
                report.checkpoints.append(written.checkpoint_id)
            connection.execute(
                "INSERT INTO retention_permit (granted_at) VALUES (?)", (stored_timestamp(now),)
            )
            for chain in ("session_records", "treatment_events", "safety_log", "audit_log"):
                if chain in heads:
                    table = chain_table(chain)
                    connection.execute(f"DELETE FROM {chain} WHERE {table.id_column} <= ?", (ends[chain],))
            going = "session_id IN (SELECT session_id FROM temp.retention_go)"
            connection.execute(f"DELETE FROM session_recordings WHERE {going}")
            connection.execute(f"DELETE FROM sessions WHERE {going}")
            connection.execute("DELETE FROM retention_permit")
            details = {
                "policy": policy.as_json(),
                "cutoffs": {
                    kind: stored_timestamp(now - timedelta(days=getattr(policy, f"{kind}_days")))
                    for kind in KINDS
                },
                "rows": report.rows,
                "through": report.through,
                "sessions": report.sessions,
                "files": len(report.files),
                "bytes": report.bytes_freed,
                "checkpoints": report.checkpoints,
            }
            append_mappings(
                executor,
                "audit_log",
                [
                    {
                        "timestamp": stored_timestamp(now),
                        "action": ACTION_RECORDS_PRUNE,
                        "entity_type": "records",
                        "terminal": terminal,
                        "outcome": "success",
                        "details": json.dumps(details, sort_keys=True),
                    }
                ],
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StorageError(f"retention: the database cannot be pruned: {exc}") from None
    finally:
        connection.close()
    if not dry_run:
        _remove(targets, report)
    return report


def reclaimable_bytes(db_path: Path, data_root: Path, policy: RetentionPolicy, now: datetime) -> int:
    """The bytes of session files a retention run at ``now`` would remove (the same decisions as
    :func:`run_retention`, without verifying, writing or removing anything): what the free-space floor
    ``min_free_disk_mb`` reports as recoverable. 0 when the database cannot be read."""
    from storage.engine import connect_sqlite

    report = RetentionReport(now=now, policy=policy, dry_run=True)
    try:
        connection = connect_sqlite(db_path)
    except (sqlite3.Error, OSError):
        return 0
    try:
        connection.execute("BEGIN")
        _ends, sessions = _decide(connection, policy, now)
        _files(connection, data_root, policy, now, sessions, report)
        connection.execute("ROLLBACK")
    except (sqlite3.Error, OSError):
        return 0
    finally:
        connection.close()
    return report.bytes_freed


def last_run(db_path: Path) -> datetime | None:
    """When retention last ran (its newest ``records_prune`` row), or None."""
    from storage.chain_verify import open_read_only

    try:
        connection = open_read_only(db_path)
    except StorageError:
        return None
    try:
        row = connection.execute(
            "SELECT max(timestamp) FROM audit_log WHERE action = ?", (ACTION_RECORDS_PRUNE,)
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return _as_datetime(row[0]) if row else None


__all__ = [
    "ACTION_RECORDS_PRUNE",
    "CLOCK_TOLERANCE",
    "KINDS",
    "MIN_AUDIT_DAYS",
    "RetentionPolicy",
    "RetentionRefused",
    "RetentionReport",
    "last_run",
    "newest_record_time",
    "reclaimable_bytes",
    "run_retention",
]
