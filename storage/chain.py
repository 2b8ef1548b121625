"""The tamper-evident record chain over ``audit_log``, ``safety_log`` and ``treatment_events``.

Every row appended to one of the three tables goes through :func:`append` (or its async and plain-sqlite3
forms): inside the caller's write transaction it takes the database's write lock, reads its table's chain
head, and writes each row with the next sequence number (``chain_seq``), the previous position's hash
(``chain_prev``) and its own HMAC-SHA-256 (``chain_mac``) over the canonical encoding of the row. Two
processes appending at once are serialised by SQLite's write lock, so the sequence stays gapless.

:func:`checkpoint` signs each chain's length and head hash with Ed25519 and stores it in
``chain_checkpoints``; the first checkpoint of a chain (``reason`` ``seal``) also seals the rows written
before the chain existed. :mod:`storage.chain_verify` checks all of it. The HMAC key and the signing key are
files outside the database (:func:`key_paths`). The encoding, the keys and what each check proves are in
``docs/records-chain.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar, cast

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from storage.crypto_db import DatabaseKeyError, is_keyed
from storage.errors import StorageError
from storage.models import AuditLog, SafetyLog, TreatmentEvent

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

#: The environment variable naming the HMAC key file.
KEY_FILE_ENV: Final = "TOSCA_CHAIN_KEY_FILE"
#: Bytes in the HMAC key and in the Ed25519 private key (its seed).
KEY_LENGTH: Final = 32
#: The signing key's file name, beside the HMAC key.
SIGNING_KEY_NAME: Final = "checkpoint_ed25519.key"
#: The hash that comes before the first position of every chain.
ZERO_HASH: Final = bytes(32)
#: Checkpoint reasons.
CheckpointReason = Literal["seal", "session_end", "backup", "manual", "daily", "prune"]
ROW_PREFIX: Final = b"tosca-chain-v1\n"
CHECKPOINT_PREFIX: Final = b"tosca-checkpoint-v1\n"

ChainName = Literal["audit_log", "safety_log", "treatment_events", "session_records"]
CHAINS: Final[tuple[ChainName, ...]] = ("audit_log", "safety_log", "treatment_events", "session_records")
CHAIN_COLUMNS: Final = ("chain_seq", "chain_prev", "chain_mac")

_T = TypeVar("_T")

# Column affinities as SQLite applies them to the declared types: INTEGER, REAL, TEXT, NUMERIC (DATETIME and
# BOOLEAN columns).
Affinity = Literal["i", "r", "t", "n"]


class ChainError(StorageError):
    """The chain cannot be written or read (a key is missing or malformed, the schema predates the chain)."""


class ChainKeyError(ChainError, OSError):
    """A key file is missing, unreadable or of the wrong length. It is also an :class:`OSError`: to a writer
    it is a fault of the environment, like a disk that cannot be written (the recorder journals its rows)."""


@dataclass(frozen=True, slots=True)
class ChainTable:
    """One chained table: its id column and its content columns, in the fixed order the encoding uses."""

    name: ChainName
    id_column: str
    columns: tuple[str, ...]
    affinities: tuple[Affinity, ...]

    @property
    def insert_sql(self) -> str:
        names = (*self.columns, *CHAIN_COLUMNS)
        return f"INSERT INTO {self.name} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"

    @property
    def select_sql(self) -> str:
        """Every row in id order: id, the three chain columns, then the content columns."""
        names = (self.id_column, *CHAIN_COLUMNS, *self.columns)
        return f"SELECT {', '.join(names)} FROM {self.name} ORDER BY {self.id_column}"


def _table(name: ChainName, id_column: str, spec: str) -> ChainTable:
    pairs = [item.split(":") for item in spec.split()]
    return ChainTable(
        name=name,
        id_column=id_column,
        columns=tuple(column for column, _ in pairs),
        affinities=tuple(affinity for _, affinity in pairs),  # type: ignore[misc]
    )


#: The content columns of each chain, frozen: this order is part of the encoding (never derive it from the
#: models, which may gain columns).
TABLES: Final[dict[str, ChainTable]] = {
    "audit_log": _table(
        "audit_log",
        "audit_id",
        "timestamp:n tech_id:i username:t action:t entity_type:t entity_id:i terminal:t outcome:t details:t",
    ),
    "safety_log": _table(
        "safety_log",
        "log_id",
        "timestamp:n session_id:i tech_id:i event_type:t severity:t description:t system_state:t "
        "laser_state:t footpedal_state:n smoothing_device_state:n photodiode_voltage_v:r action_taken:t "
        "details:t",
    ),
    "treatment_events": _table(
        "treatment_events",
        "event_id",
        "session_id:i timestamp:n time_offset_ms:i event_type:t laser_power_commanded_watts:r "
        "laser_power_actual_watts:r ring_size_mm:r actuator_position_um:r photodiode_voltage_v:r "
        "footpedal_state:n smoothing_device_state:n interlock_status:t image_path:t video_timestamp_ms:i "
        "event_details:t",
    ),
    "session_records": _table(
        "session_records",
        "record_id",
        "session_id:i kind:t recorded_at:n tech_id:i username:t printed_name:t meaning:t record_hash:t "
        "summary:t notes:t",
    ),
}


def chain_table(name: str) -> ChainTable:
    """The :class:`ChainTable` of ``name``; ``ValueError`` for a table that is not chained."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a chained table ({', '.join(CHAINS)})") from None


# ---- keys


def key_paths(db_path: Path) -> tuple[Path, Path]:
    """The HMAC key file and the signing key file of the database ``db_path``: ``$TOSCA_CHAIN_KEY_FILE`` when
    set, else ``<database folder>/keys/chain.key``; the signing key is beside it."""
    configured = os.environ.get(KEY_FILE_ENV, "").strip()
    key = Path(configured) if configured else Path(db_path).parent / "keys" / "chain.key"
    return key, key.with_name(SIGNING_KEY_NAME)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first
    try:
        os.write(fd, os.urandom(KEY_LENGTH))
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_keys(db_path: Path) -> tuple[Path, Path]:
    """Create the HMAC and signing key files (32 random bytes each, mode 0600, folder 0700) where they are
    missing; return their paths. An existing file is never replaced."""
    paths = key_paths(db_path)
    for path in paths:
        if not path.exists():
            _create_key_file(path)
    return paths


def check_keys(db_path: Path) -> None:
    """Create the key files when missing and read both: :class:`ChainKeyError` (one line) when either is
    unreadable or not 32 bytes."""
    key_path, signing_path = ensure_keys(db_path)
    read_key(key_path)
    read_key(signing_path, "checkpoint signing key")


_KEY_CACHE: dict[tuple[str, int, int], bytes] = {}


def read_key(path: Path, what: str = "chain key") -> bytes:
    """The 32 bytes of the key file ``path``; :class:`ChainKeyError` (one line) when it is missing,
    unreadable or not exactly 32 bytes."""
    try:
        info = path.stat()
        cache_key = (str(path), info.st_mtime_ns, info.st_size)
        cached = _KEY_CACHE.get(cache_key)
        if cached is not None:
            return cached
        data = path.read_bytes()
    except FileNotFoundError:
        raise ChainKeyError(f"no {what} file at {path}") from None
    except OSError as exc:
        raise ChainKeyError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if len(data) != KEY_LENGTH:
        raise ChainKeyError(f"the {what} file {path} holds {len(data)} bytes, not {KEY_LENGTH}")
    _KEY_CACHE[cache_key] = data
    return data


def signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key whose 32-byte seed is the file ``path``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(read_key(path, "checkpoint signing key"))


def verifying_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key of the signing key file ``path``."""
    return signing_key(path).public_key()


_MACS: dict[bytes, Mac] = {}


class Mac:
    """HMAC-SHA-256 with one key, its padded key blocks hashed once (RFC 2104), for speed."""

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")
        #: SHA-256 states after the inner and the outer padded key; copy them, never update them.
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    @classmethod
    def of(cls, key: bytes) -> Mac:
        """The (cached) :class:`Mac` of ``key``."""
        found = _MACS.get(key)
        if found is None:
            found = _MACS[key] = cls(key)
        return found

    def digest(self, message: bytes) -> bytes:
        """HMAC-SHA-256 of ``message``."""
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


# ---- the canonical encoding


def _json_fallback(value: Any) -> Any:
    raise TypeError(f"a chained value must be NULL, an integer, a real or text; got {value!r}")


def _make_chunker() -> Callable[[Sequence[Any], int], Iterable[str]]:
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:  # pragma: no cover - CPython has the C encoder
        encoder = json.JSONEncoder(
            ensure_ascii=True,
            allow_nan=True,
            separators=(",", ":"),
            check_circular=False,
            default=_json_fallback,
        )
        return lambda values, _level: encoder.iterencode(values)
    chunker: Callable[[Sequence[Any], int], Iterable[str]] = c_make(
        None, _json_fallback, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return chunker


#: The pieces of a row's JSON text, ``"".join(json_chunks(values, 0))``: the C encoder called directly, as
#: the hot loops of appending and verifying do.
json_chunks: Final = _make_chunker()


def encode_values(values: Sequence[Any]) -> str:
    """The JSON array text of a row's content values (docs/records-chain.md, "Encoding")."""
    return "".join(json_chunks(values, 0))


def row_message(chain: str, seq: int, prev: bytes, values: Sequence[Any]) -> bytes:
    """The bytes a row's MAC is computed over (see the docs): prefix, chain, sequence, previous hash,
    content."""
    return (
        ROW_PREFIX
        + chain.encode("ascii")
        + b"\n"
        + seq.to_bytes(8, "big")
        + prev
        + encode_values(values).encode("ascii")
    )


def checkpoint_message(
    checkpoint_id: int,
    chain: str,
    length: int,
    head_hash: bytes,
    head_row_id: int,
    created_at: str,
    reason: str,
) -> bytes:
    """The bytes a checkpoint's signature is over."""
    fields = [checkpoint_id, chain, length, head_hash.hex(), head_row_id, created_at, reason]
    return CHECKPOINT_PREFIX + encode_values(fields).encode("ascii")


# ---- values as SQLite stores them

_NUMERIC_TEXT: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_INT64: Final = 2**63


def stored_timestamp(value: datetime) -> str:
    """A datetime as the database stores it: naive UTC text with microseconds."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _bad(name: str, value: Any, kind: str) -> ValueError:
    return ValueError(f"{name} must be {kind}; got {value!r}")


def _real(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        if number != number:
            return None  # SQLite stores NaN as NULL
        return number if number else 0.0  # -0.0 reads back as 0.0
    raise _bad(name, value, "a number")


def _integer(name: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer() and -_INT64 <= value < _INT64:
            return int(value)
        return value
    raise _bad(name, value, "an integer")


def _numeric(name: str, value: Any) -> int | float | str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return stored_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if _NUMERIC_TEXT.fullmatch(value):
            raise _bad(name, value, "a date, a time or text that is not a number")
        return value
    return _integer(name, value)


def _text(name: str, value: Any) -> str | None:
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the text itself, whatever a subclass's str() says
    if isinstance(value, int):
        return str(int(value))
    raise _bad(name, value, "text")


def _normalise_column(name: str, affinity: Affinity, values: list[Any]) -> list[Any]:
    """The values of one column as SQLite will store and return them (fast paths for the common types)."""
    if affinity == "t":
        return [v if v is None or v.__class__ is str else _text(name, v) for v in values]
    if affinity == "i":
        return [v if v is None or v.__class__ is int else _integer(name, v) for v in values]
    if affinity == "r":
        return [v if v is None or (v.__class__ is float and v == v and v) else _real(name, v) for v in values]
    # A time as text holds a ":", which no number does; a boolean is 1 or 0.
    return [
        v
        if v is None or v.__class__ is int or (v.__class__ is str and (":" in v or not v[:1].isdigit()))
        else (1 if v is True else 0 if v is False else _numeric(name, v))
        for v in values
    ]


# ---- writing


class Executor(Protocol):
    """The three things the chain asks of a connection."""

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def stream(self, sql: str) -> Iterator[tuple[Any, ...]]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...


class SqliteExecutor:
    """:class:`Executor` over a plain :class:`sqlite3.Connection` (its legacy transaction control)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, params).fetchall()

    def stream(self, sql: str) -> Iterator[tuple[Any, ...]]:
        return iter(self.connection.execute(sql))

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(sql, params)

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.connection.executemany(sql, rows)


class _AlchemyExecutor:
    """:class:`Executor` over a SQLAlchemy (sync-facing) connection."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.connection.exec_driver_sql(sql, tuple(params))]

    def stream(self, sql: str) -> Iterator[tuple[Any, ...]]:
        return (tuple(row) for row in self.connection.exec_driver_sql(sql))

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.connection.exec_driver_sql(sql, tuple(params))

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.connection.exec_driver_sql(sql, rows)


def database_file(executor: Executor) -> Path:
    """The file of the connection's main database; :class:`ChainError` for an in-memory one."""
    for _seq, name, file in executor.fetch("PRAGMA database_list"):
        if name == "main":
            if not file:
                break
            return Path(file)
    raise ChainError("the record chain needs a database file (an in-memory database has no key folder)")


def lock_for_append(executor: Executor) -> None:
    """Take the database's write lock in the caller's transaction (waiting up to the busy timeout), so the
    head read next stays the head until the caller commits. A statement that could write and matches no row
    takes the lock exactly as ``BEGIN IMMEDIATE`` would, inside a transaction the driver may already have
    begun."""
    executor.run("UPDATE chain_checkpoints SET reason = reason WHERE 0")


@dataclass(frozen=True, slots=True)
class Head:
    """A chain's head: its length, the hash of its last position and the id of that row (0 if none)."""

    length: int
    hash: bytes
    row_id: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored checkpoint."""

    checkpoint_id: int
    chain: str
    length: int
    head_hash: bytes
    head_row_id: int
    created_at: str
    reason: str
    signature: bytes

    def message(self) -> bytes:
        """The bytes the signature is over."""
        return checkpoint_message(
            self.checkpoint_id,
            self.chain,
            self.length,
            self.head_hash,
            self.head_row_id,
            self.created_at,
            self.reason,
        )

    def as_json(self) -> dict[str, Any]:
        """The checkpoint as JSON values (hashes and signature in hex), as written beside a backup."""
        return {
            "checkpoint_id": self.checkpoint_id,
            "chain": self.chain,
            "length": self.length,
            "head_hash": self.head_hash.hex(),
            "head_row_id": self.head_row_id,
            "created_at": self.created_at,
            "reason": self.reason,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        """The checkpoint of :meth:`as_json`; ``ValueError`` when a field is missing or malformed."""
        try:
            return cls(
                checkpoint_id=int(data["checkpoint_id"]),
                chain=str(data["chain"]),
                length=int(data["length"]),
                head_hash=bytes.fromhex(str(data["head_hash"])),
                head_row_id=int(data["head_row_id"]),
                created_at=str(data["created_at"]),
                reason=str(data["reason"]),
                signature=bytes.fromhex(str(data["signature"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from None


CHECKPOINT_COLUMNS: Final = (
    "checkpoint_id, chain, length, head_hash, head_row_id, created_at, reason, signature"
)


def read_checkpoints(executor: Executor, chain: str | None = None) -> list[Checkpoint]:
    """Every stored checkpoint (of ``chain``, or of all chains) in id order."""
    where = "" if chain is None else " WHERE chain = ?"
    rows = executor.fetch(
        f"SELECT {CHECKPOINT_COLUMNS} FROM chain_checkpoints{where} ORDER BY checkpoint_id",
        () if chain is None else (chain,),
    )
    return [Checkpoint(*row) for row in rows]


def _seal(executor: Executor, table: ChainTable, mac: Mac, key: Ed25519PrivateKey) -> Head:
    """Seal the rows of ``table`` written before its chain: fold them into one hash (each as if chained, in id
    order) and sign it as the chain's first checkpoint. The caller holds the write lock."""
    prev = ZERO_HASH
    seq = 0
    row_id = 0
    name = table.name
    for row in executor.stream(table.select_sql):  # streamed: a large table is never held in memory
        seq += 1
        row_id = row[0]
        prev = mac.digest(row_message(name, seq, prev, row[4:]))
    head = Head(length=seq, hash=prev, row_id=row_id)
    _write_checkpoint(executor, name, head, "seal", key)
    return head


def _write_checkpoint(
    executor: Executor, chain: str, head: Head, reason: CheckpointReason, key: Ed25519PrivateKey
) -> Checkpoint:
    (next_id,) = executor.fetch("SELECT coalesce(max(checkpoint_id), 0) + 1 FROM chain_checkpoints")[0]
    created = stored_timestamp(datetime.now(UTC))
    unsigned = Checkpoint(next_id, chain, head.length, head.hash, head.row_id, created, reason, b"")
    signed = Checkpoint(
        next_id, chain, head.length, head.hash, head.row_id, created, reason, key.sign(unsigned.message())
    )
    executor.run(
        f"INSERT INTO chain_checkpoints ({CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            signed.checkpoint_id,
            signed.chain,
            signed.length,
            signed.head_hash,
            signed.head_row_id,
            signed.created_at,
            signed.reason,
            signed.signature,
        ),
    )
    return signed


def _keys_for(executor: Executor, keys_of: Path | None = None) -> tuple[Path, Path]:
    return ensure_keys(database_file(executor) if keys_of is None else keys_of)


def _head(executor: Executor, table: ChainTable, mac: Mac, signing_path: Path) -> Head:
    """The chain's head, sealing the rows written before the chain when the chain has not begun."""
    rows = executor.fetch(
        f"SELECT {table.id_column}, chain_seq, chain_mac FROM {table.name} "
        f"WHERE chain_seq IS NOT NULL ORDER BY {table.id_column} DESC LIMIT 1"
    )
    if rows:
        row_id, seq, last = rows[0]
        return Head(length=int(seq), hash=bytes(last), row_id=int(row_id))
    sealed = _seal_head(executor, table.name)
    if sealed is not None:
        # No chained row left: the chain has not grown past its seal, or retention pruned every row. The
        # longest checkpoint holds the head either way (a prune's checkpoint is at the last pruned position).
        longest = executor.fetch(
            "SELECT length, head_hash, head_row_id FROM chain_checkpoints WHERE chain = ? "
            "ORDER BY length DESC, checkpoint_id DESC LIMIT 1",
            (table.name,),
        )
        length, head_hash, row_id = longest[0]
        return Head(length=int(length), hash=bytes(head_hash), row_id=int(row_id))
    # The first open since the chain's revision: every chain not sealed yet is sealed now, at once.
    key = signing_key(signing_path)
    for name in present_chains(executor):
        if _seal_head(executor, name) is None:
            _seal(executor, chain_table(name), mac, key)
    head = _seal_head(executor, table.name)
    assert head is not None
    return head


def _seal_head(executor: Executor, chain: str) -> Head | None:
    found = executor.fetch(
        "SELECT length, head_hash, head_row_id FROM chain_checkpoints WHERE chain = ? AND reason = 'seal' "
        "ORDER BY checkpoint_id LIMIT 1",
        (chain,),
    )
    if not found:
        return None
    length, head_hash, row_id = found[0]
    return Head(length=int(length), hash=bytes(head_hash), row_id=int(row_id))


def append(executor: Executor, table_name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
    """Append ``rows`` (values in the order of ``columns``; other content columns are NULL) to the chained
    table ``table_name`` in the caller's transaction, and return the id of the last row written.

    Takes the write lock first, so the chain head read and the rows written are one step for every other
    process. Values are turned into what SQLite stores (datetimes into naive UTC text, booleans into 0/1);
    ``ValueError`` (nothing written) for a value the chain cannot encode or an unknown column.
    """
    table = chain_table(table_name)
    if not rows:
        raise ValueError("nothing to append")
    known = set(table.columns)
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ValueError(f"{table.name} has no chained column {', '.join(unknown)}")
    width = len(columns)
    if any(len(row) != width for row in rows):
        raise ValueError(f"every row must give {width} values")
    given = {name: index for index, name in enumerate(columns)}
    nulls: list[Any] = [None] * len(rows)
    content: list[list[Any]] = []
    for name, affinity in zip(table.columns, table.affinities, strict=True):
        index = given.get(name)
        if index is None:
            content.append(nulls)
            continue
        content.append(_normalise_column(name, affinity, [row[index] for row in rows]))
    key_path, signing_path = _keys_for(executor)
    mac = Mac.of(read_key(key_path))
    lock_for_append(executor)
    head = _head(executor, table, mac, signing_path)
    seq = head.length
    prev = head.hash
    inner_copy = mac.inner.copy
    outer_copy = mac.outer.copy
    chunks = json_chunks
    join = "".join
    prefix = ROW_PREFIX + table.name.encode("ascii") + b"\n"
    first = seq + 1
    links = [prev]
    add_link = links.append
    try:
        for values in zip(*content, strict=True):
            seq += 1
            inner = inner_copy()
            inner.update(prefix + seq.to_bytes(8, "big") + prev + join(chunks(values, 0)).encode("ascii"))
            outer = outer_copy()
            outer.update(inner.digest())
            prev = outer.digest()
            add_link(prev)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    # Each row: its values, its sequence number, the hash before it (links[i]) and its own (links[i + 1]).
    params = list(zip(*content, range(first, seq + 1), links[:-1], links[1:], strict=True))
    executor.run_many(table.insert_sql, params)
    (last,) = executor.fetch("SELECT last_insert_rowid()")[0]
    return int(last)


def append_mappings(executor: Executor, table_name: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """:func:`append` of rows given as column mappings; returns the id of the last row written."""
    columns = sorted(set().union(*(row.keys() for row in rows))) if rows else []
    return append(executor, table_name, columns, [[row.get(c) for c in columns] for row in rows])


def append_sqlite(connection: sqlite3.Connection, table_name: str, row: Mapping[str, Any]) -> int:
    """:func:`append` one row through a plain :mod:`sqlite3` connection (the caller commits)."""
    return append_mappings(SqliteExecutor(connection), table_name, [row])


async def _on_session(session: AsyncSession, work: Callable[[Executor], _T]) -> _T:
    """Run ``work`` on ``session``'s connection, in its transaction (pending ORM changes flushed first).

    aiosqlite runs each driver call on its own thread and the event loop waits for each: a chain step of three
    statements would cost three round trips. When the driver is aiosqlite, the whole step is one call on that
    thread, on the same :class:`sqlite3.Connection` and transaction the session uses; otherwise it runs
    statement by statement through SQLAlchemy.
    """
    if session.new or session.dirty:
        await session.flush()
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    submit = getattr(driver, "_execute", None)
    native = getattr(driver, "_connection", None)
    if callable(submit) and (isinstance(native, sqlite3.Connection) or is_keyed(native)):
        try:
            result: _T = await submit(work, SqliteExecutor(cast(sqlite3.Connection, native)))
        except sqlite3.Error as exc:
            # What SQLAlchemy would have raised for the same statement, so callers see the same errors.
            raise DBAPIError.instance("record chain step", None, exc, sqlite3.Error) from exc
        return result
    return await connection.run_sync(lambda sync: work(_AlchemyExecutor(sync)))


async def on_session(session: AsyncSession, work: Callable[[Executor], _T]) -> _T:
    """Run ``work`` with an :class:`Executor` on ``session``'s connection, in its transaction (pending ORM
    changes flushed first): how other storage modules write chained rows next to ORM changes."""
    return await _on_session(session, work)


async def append_async(
    session: AsyncSession, table_name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> int:
    """:func:`append` in ``session``'s transaction (pending ORM changes are flushed first)."""
    return await _on_session(session, lambda executor: append(executor, table_name, columns, rows))


async def append_one_async(session: AsyncSession, table_name: str, row: Mapping[str, Any]) -> int:
    """:func:`append_async` of one row given as a column mapping; returns its id."""
    columns = list(row)
    return await append_async(session, table_name, columns, [[row[c] for c in columns]])


# ---- checkpoints


def has_chain_schema(executor: Executor) -> bool:
    """True when the database has the chain's table (its schema is at or past the chain revision)."""
    return bool(
        executor.fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chain_checkpoints'")
    )


def present_chains(executor: Executor) -> tuple[ChainName, ...]:
    """The chains whose tables this database has (a schema between the first chains and the session records'
    chain has only the first three)."""
    tables = {row[0] for row in executor.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return tuple(name for name in CHAINS if chain_table(name).name in tables)


def checkpoint(
    executor: Executor,
    reason: CheckpointReason,
    chains: Iterable[str] | None = None,
    *,
    keys_of: Path | None = None,
) -> list[Checkpoint]:
    """Sign and store a checkpoint of each chain's current head in the caller's transaction (the rows written
    before a chain are sealed first when it has not begun); return them. The keys are those of the
    connection's database, or of the database file ``keys_of`` (for a copy being made)."""
    key_path, signing_path = _keys_for(executor, keys_of)
    mac = Mac.of(read_key(key_path))
    key = signing_key(signing_path)
    lock_for_append(executor)
    written: list[Checkpoint] = []
    for name in present_chains(executor) if chains is None else chains:
        table = chain_table(name)
        head = _head(executor, table, mac, signing_path)
        written.append(_write_checkpoint(executor, table.name, head, reason, key))
    return written


def seal(executor: Executor) -> None:
    """Seal every chain that has not begun (creating the keys when missing), in the caller's transaction."""
    key_path, signing_path = _keys_for(executor)
    mac = Mac.of(read_key(key_path))
    lock_for_append(executor)
    for name in present_chains(executor):
        _head(executor, chain_table(name), mac, signing_path)


def checkpoint_file(
    db_path: Path, reason: CheckpointReason, *, keys_of: Path | None = None, pragmas: bool = True
) -> list[Checkpoint]:
    """:func:`checkpoint` on the database file ``db_path`` in its own transaction; ``[]`` when its schema
    predates the chain. ``keys_of`` as for :func:`checkpoint`; ``pragmas`` False opens the file as it is
    (a backup copy keeps its rollback journal)."""
    from storage.crypto_db import connect as open_database
    from storage.engine import DEFAULT_BUSY_TIMEOUT_MS, connect_sqlite

    if pragmas:
        connection = connect_sqlite(db_path)
    else:
        connection = open_database(db_path, timeout_s=DEFAULT_BUSY_TIMEOUT_MS / 1000)
    try:
        with connection:
            executor = SqliteExecutor(connection)
            if not has_chain_schema(executor):
                return []
            return checkpoint(executor, reason, keys_of=keys_of)
    finally:
        connection.close()


def seal_file(db_path: Path) -> None:
    """:func:`seal` on the database file ``db_path`` in its own transaction (no-op before the chain
    revision)."""
    from storage.engine import connect_sqlite

    connection = connect_sqlite(db_path)
    try:
        with connection:
            executor = SqliteExecutor(connection)
            if has_chain_schema(executor):
                seal(executor)
    finally:
        connection.close()


async def checkpoint_async(session: AsyncSession, reason: CheckpointReason) -> list[Checkpoint]:
    """:func:`checkpoint` in ``session``'s transaction."""
    return await _on_session(session, lambda executor: checkpoint(executor, reason))


def last_checkpoint_time(db_path: Path) -> datetime | None:
    """When the newest checkpoint of the database file ``db_path`` was signed (naive UTC), or None (none
    yet, no such database, or a schema before the chain)."""
    from storage.crypto_db import connect as open_database

    if not Path(db_path).is_file():
        return None
    try:
        connection = open_database(Path(db_path).resolve(), read_only=True)
    except (sqlite3.Error, DatabaseKeyError):
        return None
    try:
        row = connection.execute("SELECT max(created_at) FROM chain_checkpoints").fetchone()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return None if row is None or row[0] is None else datetime.fromisoformat(str(row[0]))


def write_checkpoint_json(path: Path, checkpoints: Sequence[Checkpoint]) -> None:
    """Write ``checkpoints`` as a JSON file (the copy kept beside a backup)."""
    text = json.dumps({"checkpoints": [c.as_json() for c in checkpoints]}, indent=1, sort_keys=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text + "\n", encoding="ascii")
    os.replace(partial, path)


def backup_checkpoint_path(backup: Path) -> Path:
    """Where the checkpoint JSON of the backup file ``backup`` is kept."""
    return backup.with_name(f"{backup.name}.chain.json")


# ---- no row of a chained table is ever written around the chain


def _refuse_orm_insert(_mapper: Any, _connection: Any, target: Any) -> None:
    raise ChainError(
        f"{type(target).__tablename__} rows are appended through storage.chain, not added as ORM objects"
    )


for _model in (AuditLog, SafetyLog, TreatmentEvent):
    event.listen(_model, "before_insert", _refuse_orm_insert)


__all__ = [
    "CHAINS",
    "CHAIN_COLUMNS",
    "KEY_FILE_ENV",
    "KEY_LENGTH",
    "TABLES",
    "ZERO_HASH",
    "ChainError",
    "ChainKeyError",
    "ChainTable",
    "Checkpoint",
    "Executor",
    "Head",
    "Mac",
    "SqliteExecutor",
    "append",
    "append_async",
    "append_mappings",
    "append_one_async",
    "append_sqlite",
    "backup_checkpoint_path",
    "chain_table",
    "check_keys",
    "checkpoint",
    "checkpoint_async",
    "checkpoint_file",
    "checkpoint_message",
    "encode_values",
    "ensure_keys",
    "has_chain_schema",
    "key_paths",
    "last_checkpoint_time",
    "on_session",
    "read_checkpoints",
    "read_key",
    "row_message",
    "seal",
    "seal_file",
    "signing_key",
    "stored_timestamp",
    "verifying_key",
    "write_checkpoint_json",
]
