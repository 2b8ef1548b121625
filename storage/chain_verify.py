"""Verification of the record chain (:mod:`storage.chain`): every row, every position, every checkpoint.

:func:`verify_database` streams each chained table once in id order (plain :mod:`sqlite3` tuples, no ORM
object per row), recomputes each row's HMAC and the hash of the rows sealed before the chain, and checks
every checkpoint's Ed25519 signature and head. It stops at the first failure and names it: the row or
checkpoint, and why (``altered``, ``missing``, ``reordered``, ``inserted``, ``truncated``, ``signature``,
``unsealed``). What each check proves is in ``docs/records-chain.md``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from storage.chain import (
    CHAINS,
    ROW_PREFIX,
    ZERO_HASH,
    ChainError,
    ChainTable,
    Checkpoint,
    Mac,
    SqliteExecutor,
    backup_checkpoint_path,
    chain_table,
    has_chain_schema,
    json_chunks,
    key_paths,
    read_checkpoints,
    read_key,
    verifying_key,
)
from storage.crypto_db import connect as open_database
from storage.errors import StorageError
from storage.signatures import check_records
from storage.telemetry import scan_telemetry

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FailureKind = Literal[
    "altered",
    "missing",
    "reordered",
    "inserted",
    "truncated",
    "signature",
    "unsealed",
    "mismatch",
    "record",
    "file",
]


@dataclass(frozen=True, slots=True)
class Failure:
    """The first thing that failed: its kind and one line naming the row or checkpoint and why."""

    kind: FailureKind
    message: str


@dataclass(frozen=True, slots=True)
class ChainCount:
    """One chain as verified: its positions, how many were sealed before the chain, its checkpoints."""

    chain: str
    rows: int
    sealed: int
    checkpoints: int
    #: Positions removed by retention (the first ``pruned`` positions of the chain).
    pruned: int = 0

    def describe(self) -> str:
        """One line, e.g. ``audit_log: 120 rows (3 sealed before the chain), 4 checkpoints``."""
        pruned = f", the first {self.pruned} pruned by retention" if self.pruned else ""
        return (
            f"{self.chain}: {self.rows} rows ({self.sealed} sealed before the chain{pruned}), "
            f"{self.checkpoints} checkpoints"
        )


@dataclass(frozen=True, slots=True)
class Pruning:
    """A retention run as the chain shows it: the chain, the positions removed (1 to ``through``), when,
    and the signed checkpoint that keeps the hash at that position."""

    chain: str
    through: int
    at: str
    checkpoint_id: int

    def describe(self) -> str:
        """One line, e.g. ``audit_log: positions 1 to 120 pruned on 2032-01-01 03:00 (checkpoint 17)``."""
        return (
            f"{self.chain}: positions 1 to {self.through} pruned on {self.at[:16]} UTC "
            f"(checkpoint {self.checkpoint_id})"
        )


@dataclass(slots=True)
class VerifyResult:
    """What :func:`verify_database` found: the counts of the chains checked, the prunings by retention, the
    signatures checked against their records, and the first failure if any."""

    counts: list[ChainCount] = field(default_factory=list)
    failure: Failure | None = None
    prunings: list[Pruning] = field(default_factory=list)
    signatures: int = 0
    #: Finished sessions' telemetry files whose bytes were checked against their recorded SHA-256, and those
    #: absent because a retention run removed them (only counted when the files were checked at all).
    telemetry_files: int = 0
    telemetry_pruned: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None


class _Failed(Exception):
    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.failure = Failure(kind, message)


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open the database file ``path`` read-only; :class:`ChainError` when it cannot be read."""
    if not Path(path).is_file():
        raise ChainError(f"no database at {path}")
    try:
        connection = open_database(Path(path).resolve(), read_only=True)
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise ChainError(f"cannot read {path}: {exc}") from None
    return connection


def _check_signature(cp: Checkpoint, public: Ed25519PublicKey, where: str = "") -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(bytes(cp.signature), cp.message())
    except (InvalidSignature, TypeError, ValueError):
        raise _Failed(
            "signature",
            f"checkpoint {cp.checkpoint_id}{where} ({cp.chain}, {cp.length} rows, {cp.created_at}): "
            "signature invalid (altered, or signed by another key)",
        ) from None


def _check_checkpoints(checkpoints: Sequence[Checkpoint], public: Ed25519PublicKey) -> None:
    expected = 1
    for cp in checkpoints:
        if cp.checkpoint_id != expected:
            raise _Failed(
                "missing",
                f"checkpoint {expected} is missing: checkpoint ids go from {expected - 1} "
                f"to {cp.checkpoint_id}",
            )
        expected += 1
        _check_signature(cp, public)


def _find_seq(connection: sqlite3.Connection, table: ChainTable, seq: int) -> int | None:
    row = connection.execute(
        f"SELECT {table.id_column} FROM {table.name} WHERE chain_seq = ? ORDER BY {table.id_column} LIMIT 1",
        (seq,),
    ).fetchone()
    return None if row is None else int(row[0])


def _walk(
    connection: sqlite3.Connection,
    table: ChainTable,
    checkpoints: Sequence[Checkpoint],
    mac: Mac,
) -> ChainCount:
    """Verify one chain; raise :class:`_Failed` at the first failure."""
    name = table.name
    seal = checkpoints[0] if checkpoints else None
    if seal is None or seal.reason != "seal":
        rows = connection.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        if seal is None and rows == 0:
            return ChainCount(name, 0, 0, 0)
        if seal is None:
            raise _Failed(
                "unsealed",
                f"{name}: {rows} rows but no initial checkpoint seals them (the chain never began here)",
            )
        raise _Failed(
            "unsealed",
            f"checkpoint {seal.checkpoint_id} ({name}): the chain's first checkpoint is not its seal",
        )
    # Retention removes the first positions of a chain and signs a checkpoint at the last one it removed:
    # the walk starts there, with that checkpoint's hash. Checkpoints of shorter lengths keep their
    # signatures but have no rows left to compare with.
    prune = max(
        (cp for cp in checkpoints if cp.reason == "prune"),
        key=lambda cp: (cp.length, cp.checkpoint_id),
        default=None,
    )
    start = int(prune.length) if prune is not None else 0
    start_hash = bytes(prune.head_hash) if prune is not None else ZERO_HASH
    start_id = int(prune.head_row_id) if prune is not None else 0
    if prune is not None:
        left = connection.execute(
            f"SELECT {table.id_column} FROM {name} WHERE {table.id_column} <= ? LIMIT 1", (start_id,)
        ).fetchone()
        if left is not None:
            raise _Failed(
                "inserted",
                f"{name} row {left[0]}: inserted (at a position pruned by checkpoint {prune.checkpoint_id})",
            )
    required: dict[int, list[Checkpoint]] = {}
    for cp in checkpoints:
        if cp.length >= start:
            required.setdefault(cp.length, []).append(cp)
    longest = max(checkpoints, key=lambda cp: (cp.length, cp.checkpoint_id))

    def check_head(position: int, head: bytes) -> None:
        for cp in required.get(position, ()):
            if bytes(cp.head_hash) != head:
                raise _Failed(
                    "altered",
                    f"checkpoint {cp.checkpoint_id} ({name}, {cp.length} rows, {cp.created_at}): "
                    "the chain's hash at that length differs (rows up to it were rewritten)",
                )

    inner_copy = mac.inner.copy
    outer_copy = mac.outer.copy
    prefix = ROW_PREFIX + name.encode("ascii") + b"\n"
    chunks = json_chunks
    join = "".join
    select = table.select_sql
    if prune is not None:
        select = select.replace(" ORDER BY ", f" WHERE {table.id_column} > {start_id} ORDER BY ")
    cursor = connection.execute(select)
    cursor.arraysize = 512
    rows_iter: Iterator[tuple[Any, ...]] = iter(cursor)

    # Rows written before the chain: each hashed as if chained, in id order, compared with the seal.
    sealed_to = int(seal.head_row_id)
    position = start
    head = start_hash
    check_head(start, head)
    pending: tuple[Any, ...] | None = None
    for row in rows_iter:
        if row[0] > sealed_to:
            pending = row
            break
        if row[1] is not None:
            raise _Failed(
                "inserted",
                f"{name} row {row[0]}: inserted (a chained row among the rows sealed before the chain)",
            )
        position += 1
        inner = inner_copy()
        inner.update(prefix + position.to_bytes(8, "big") + head + join(chunks(row[4:], 0)).encode("ascii"))
        outer = outer_copy()
        outer.update(inner.digest())
        head = outer.digest()
        if position in required and position != seal.length:
            check_head(position, head)
    if seal.length <= start:
        pass  # every sealed row was pruned: the prune's checkpoint stands for them
    elif position != seal.length:
        kind: FailureKind = "missing" if position < seal.length else "inserted"
        raise _Failed(
            kind,
            f"{name}: {kind}: {position} rows up to id {sealed_to} where the seal (checkpoint "
            f"{seal.checkpoint_id}) counted {seal.length}",
        )
    if seal.length > start and head != bytes(seal.head_hash):
        raise _Failed(
            "altered",
            f"{name}: altered: a row up to id {sealed_to} (sealed before the chain by checkpoint "
            f"{seal.checkpoint_id}) differs from what was sealed",
        )
    sealed = max(0, min(position, int(seal.length)) - start)
    check_head(position, head)  # every checkpoint taken before the first chained row

    def chained() -> Iterator[tuple[Any, ...]]:
        if pending is not None:
            yield pending
        yield from rows_iter

    def judge(row: tuple[Any, ...], position: int, head: bytes, valid: bool) -> NoReturn:
        """Name what is wrong with a chained row (the hot loop only notices that something is)."""
        row_id, seq, prev, stored = row[0], row[1], row[2], row[3]
        if seq is None or prev is None or stored is None:
            raise _Failed("inserted", f"{name} row {row_id}: inserted (it carries no chain link)")
        if not valid:
            if isinstance(seq, int) and seq < position:
                raise _Failed(
                    "inserted",
                    f"{name} row {row_id}: inserted (it repeats seq {seq} with a link that does not match)",
                )
            raise _Failed(
                "altered", f"{name} row {row_id} (seq {seq}): altered (its MAC does not match its contents)"
            )
        if seq != position:
            _misplaced(connection, table, row_id, seq, position)
        raise _Failed(
            "reordered",
            f"{name} row {row_id} (seq {seq}): reordered (its link does not match the row before it)",
        )

    # The hot loop: one MAC per row and three comparisons; any doubt goes to judge().
    next_check = min((length for length in required if length > position), default=-1)
    for row in chained():
        position += 1
        try:
            inner = inner_copy()
            inner.update(
                prefix + row[1].to_bytes(8, "big") + row[2] + join(chunks(row[4:], 0)).encode("ascii")
            )
        except (AttributeError, TypeError):
            judge(row, position, head, valid=False)
        outer = outer_copy()
        outer.update(inner.digest())
        stored = row[3]
        if outer.digest() != stored or row[1] != position or row[2] != head:
            judge(row, position, head, valid=outer.digest() == stored)
        head = stored
        if position == next_check:
            check_head(position, head)
            next_check = min((length for length in required if length > position), default=-1)
    if longest.length > position:
        raise _Failed(
            "truncated",
            f"{name}: truncated: {position} rows, fewer than the {longest.length} of checkpoint "
            f"{longest.checkpoint_id} ({longest.created_at})",
        )
    return ChainCount(name, position, sealed, len(checkpoints), pruned=start)


def _misplaced(
    connection: sqlite3.Connection, table: ChainTable, row_id: int, seq: int, expected: int
) -> NoReturn:
    """Name what a row whose own MAC holds but whose sequence number is not the next one means."""
    name = table.name
    if seq < expected:
        raise _Failed(
            "inserted", f"{name} row {row_id}: inserted (a copy of seq {seq}, where seq {expected} was due)"
        )
    elsewhere = _find_seq(connection, table, expected)
    if elsewhere is not None:
        raise _Failed(
            "reordered",
            f"{name} row {row_id} (seq {seq}): reordered (seq {expected} was due; it is at row {elsewhere})",
        )
    raise _Failed(
        "missing",
        f"{name} seq {expected}: missing (row {row_id} carries seq {seq} right after seq {expected - 1}; "
        "a row was deleted)",
    )


def verify_connection(
    connection: sqlite3.Connection,
    *,
    key: bytes,
    public: Ed25519PublicKey,
    outside: Sequence[Checkpoint] = (),
    outside_label: str = "",
) -> VerifyResult:
    """Verify every chain and checkpoint of an open database. ``outside`` are checkpoints kept outside it
    (beside a backup): each must be signed, stored identically in the database, and match its chain."""
    result = VerifyResult()
    executor = SqliteExecutor(connection)
    if not has_chain_schema(executor):
        raise ChainError("the database predates the record chain (its schema is older than 20261207_002)")
    mac = Mac.of(key)
    try:
        stored = read_checkpoints(executor)
        _check_checkpoints(stored, public)
        by_id = {cp.checkpoint_id: cp for cp in stored}
        for cp in outside:
            _check_signature(cp, public, f" in {outside_label}")
            if by_id.get(cp.checkpoint_id) != cp:
                raise _Failed(
                    "mismatch",
                    f"checkpoint {cp.checkpoint_id} ({cp.chain}) differs from its copy in {outside_label} "
                    "(replaced or removed in the database)",
                )
        # A database (or backup) from before the session records revision has the first three chains only.
        records = bool(
            connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session_records'"
            ).fetchone()
        )
        for name in CHAINS:
            if name == "session_records" and not records:
                continue
            table = chain_table(name)
            mine = [cp for cp in stored if cp.chain == name]
            result.counts.append(_walk(connection, table, mine, mac))
            result.prunings.extend(
                Pruning(cp.chain, cp.length, str(cp.created_at), cp.checkpoint_id)
                for cp in mine
                if cp.reason == "prune"
            )
        if records:
            problem = check_records(executor)
            if problem is not None:
                raise _Failed("record", problem)
            (result.signatures,) = connection.execute(
                "SELECT count(*) FROM session_records WHERE kind IN ('signature', 'addendum')"
            ).fetchone()
    except _Failed as failed:
        result.failure = failed.failure
    return result


def read_outside_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints in the JSON file ``path`` (beside a backup); :class:`ChainError` when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        items = data["checkpoints"] if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            raise ValueError("no checkpoints list")
        return [Checkpoint.from_json(item) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ChainError(f"{path.name} is not a readable checkpoint file: {exc}") from None


def _telemetry_cutoff(connection: sqlite3.Connection) -> datetime | None:
    """The latest telemetry cutoff of any retention run recorded in the audit trail (None: none ran)."""
    latest: datetime | None = None
    for (details,) in connection.execute("SELECT details FROM audit_log WHERE action = 'records_prune'"):
        try:
            cut = datetime.fromisoformat(str(json.loads(details)["cutoffs"]["telemetry"]))
        except (ValueError, KeyError, TypeError):
            continue
        latest = cut if latest is None or cut > latest else latest
    return latest


def check_telemetry_files(connection: sqlite3.Connection, data_root: Path, result: VerifyResult) -> None:
    """Hash every finished session's telemetry file as it is now and compare it with the SHA-256 its session
    recorded when it ended. The first file that differs, cannot be read, or is gone without a retention run
    having removed it (its session ended before the run's telemetry cutoff) is ``result.failure``."""
    cutoff = _telemetry_cutoff(connection)
    rows = connection.execute(
        "SELECT session_id, coalesce(end_time, start_time), telemetry_path, telemetry_sha256 FROM sessions "
        "WHERE telemetry_sha256 IS NOT NULL AND telemetry_path IS NOT NULL ORDER BY session_id"
    ).fetchall()
    for session_id, ended, recorded, digest in rows:
        path = Path(str(recorded))
        path = path if path.is_absolute() else data_root / path
        where = f"session {session_id}: its telemetry file {recorded}"
        if not path.exists():
            try:
                removed = cutoff is not None and datetime.fromisoformat(str(ended)) < cutoff
            except ValueError:
                removed = False
            if removed:
                result.telemetry_pruned += 1
                continue
            result.failure = Failure("file", f"{where} is missing (no retention run removed it)")
            return
        try:
            found = scan_telemetry(path, parse=False).sha256
        except StorageError as exc:
            result.failure = Failure("file", f"{where} cannot be read: {exc}")
            return
        if found != digest:
            result.failure = Failure(
                "file", f"{where} no longer matches the SHA-256 recorded when the session ended (altered)"
            )
            return
        result.telemetry_files += 1


def verify_database(
    path: Path, *, keys_of: Path | None = None, backup: bool = False, files_of: Path | None = None
) -> VerifyResult:
    """Verify the database file ``path`` with the keys of the database ``keys_of`` (default ``path``).

    With ``backup`` the checkpoint file kept beside ``path`` (when there is one) is checked against it too.
    With ``files_of`` (the data directory's root) the finished sessions' telemetry files under it are checked
    against their recorded SHA-256 once the records verify (:func:`check_telemetry_files`).
    Raises :class:`storage.chain.ChainKeyError` for a missing or malformed key and :class:`ChainError` when
    the file cannot be read or predates the chain; a failed verification is a result, not an error.
    """
    connection = open_read_only(path)
    try:
        key_path, signing_path = key_paths(keys_of or path)
        key = read_key(key_path)
        public = verifying_key(signing_path)
        outside: list[Checkpoint] = []
        label = ""
        if backup:
            beside = backup_checkpoint_path(path)
            if beside.exists():
                outside = read_outside_checkpoints(beside)
                label = beside.name
        result = verify_connection(connection, key=key, public=public, outside=outside, outside_label=label)
        if files_of is not None and result.failure is None:
            check_telemetry_files(connection, files_of, result)
        return result
    except sqlite3.DatabaseError as exc:
        raise ChainError(f"cannot read {path.name}: {exc}") from None
    finally:
        connection.close()


__all__ = [
    "ChainCount",
    "Failure",
    "Pruning",
    "VerifyResult",
    "check_telemetry_files",
    "open_read_only",
    "read_outside_checkpoints",
    "verify_connection",
    "verify_database",
]
