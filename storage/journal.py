"""The recorder's journal: accepted rows kept durably in an append-only file until the database takes them.

When the records database cannot take a row in time (locked by another process, slow, failing), the recorder
appends the row to ``DIR/tosca.journal``, beside the database, and writes it to the database later, in order.
This module owns the file and the database side of that:

* the file holds one compact JSON object per line (:func:`encode_entry`): the writer's *stream* (a random id
  chosen by each recorder), the row's *seq* (1, 2, 3, ... within the stream, in the order the rows were
  accepted), the table and the row's column values. :meth:`Journal.append` writes a group of lines with one
  ``write()`` and ``fsync`` s the file before it returns: a row counts as durable only then. The file is
  created with mode 0640 and is only ever appended to; a failed append is cut back to the last complete line;
* :meth:`Journal.read` reads the complete lines from an offset; a last line cut short by a crash was never
  acknowledged as durable and is left out;
* :func:`write_entries` writes rows to the database in one transaction together with the *mark*: the
  ``system_config`` entry ``recorder_journal_mark`` maps each stream to the highest seq written. Rows and mark
  commit together, so a row at or below its stream's mark is in the database and is never written twice
  (:func:`unwritten`), whether it reached the journal while its first write was still under way or a crash
  came between the write and the removal of the journal.

Blocking file operations: call them through :func:`asyncio.to_thread` from async code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.repositories import SafetyLogRepository, TreatmentEventsRepository
from storage.safety_records import SafetyRecord

#: The journal's file name in the data directory.
JOURNAL_FILE: Final = "tosca.journal"
#: The ``system_config`` key holding each stream's highest written seq (JSON object).
MARK_KEY: Final = "recorder_journal_mark"
_FILE_MODE: Final = 0o640
_READ_CHUNK: Final = 1 << 20

Table = Literal["treatment_events", "safety_log"]
TABLES: Final[frozenset[str]] = frozenset({"treatment_events", "safety_log"})

#: ``os.write``-like function: (file descriptor, bytes) -> number of bytes written.
WriteFunction = Callable[[int, memoryview], int]


class JournalError(StorageError):
    """The journal file cannot be written or read; the message says which and why."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One accepted row: its writer's ``stream``, its ``seq`` in that stream, its table and column values.

    ``values`` holds the columns as the repositories take them: a naive UTC datetime under ``timestamp``,
    everything else numbers, booleans, text or None; a safety row's values are
    :meth:`storage.safety_records.SafetyRecord.values`.
    """

    stream: str
    seq: int
    table: Table
    values: Mapping[str, Any]


def encode_entry(entry: JournalEntry) -> bytes:
    """One journal line for ``entry`` (UTF-8 JSON ending in a newline); ``ValueError`` if it cannot be one."""
    values = dict(entry.values)
    stamp = values.get("timestamp")
    if not isinstance(stamp, datetime):
        raise ValueError(f"journal row {entry.seq}: timestamp must be a datetime, got {stamp!r}")
    values["timestamp"] = stamp.isoformat()
    record = {"stream": entry.stream, "seq": entry.seq, "table": entry.table, "values": values}
    try:
        line = json.dumps(record, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal row {entry.seq} cannot be written as JSON: {exc}") from exc
    return line.encode("utf-8") + b"\n"


def decode_line(line: bytes, where: str) -> JournalEntry:
    """The entry of one complete journal line; :class:`JournalError` naming ``where`` if it is not one."""
    try:
        record = json.loads(line)
        stream, seq, table, values = record["stream"], record["seq"], record["table"], dict(record["values"])
        if not isinstance(stream, str) or not stream:
            raise ValueError("no stream")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"bad seq {seq!r}")
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        values["timestamp"] = datetime.fromisoformat(values["timestamp"])
    except (ValueError, TypeError, KeyError) as exc:
        raise JournalError(f"{where} is not a journal row: {exc}") from exc
    return JournalEntry(stream, seq, table, values)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class Journal:
    """The append-only journal file at ``path`` (see the module documentation). ``write`` and ``fsync``
    replace :func:`os.write` and :func:`os.fsync` (fault injection). Not thread-safe: one caller at a time."""

    def __init__(
        self,
        path: Path,
        *,
        write: WriteFunction = os.write,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self._path = Path(path)
        self._write = write
        self._fsync = fsync
        self._fd: int | None = None
        self._good_size = 0

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._path

    def size(self) -> int:
        """Bytes in the file (0 when there is none)."""
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise JournalError(f"cannot read the journal {self._path}: {_describe(exc)}") from exc

    def exists(self) -> bool:
        """True when the file exists and holds anything."""
        return self.size() > 0

    def _open(self) -> int:
        if self._fd is None:
            created = not self._path.exists()
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, _FILE_MODE)
            try:
                os.fchmod(fd, _FILE_MODE)  # whatever the umask was
                if created:
                    _fsync_dir(self._path.parent)
                self._good_size = _complete_size(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def append(self, entries: Sequence[JournalEntry]) -> None:
        """Append ``entries`` (one ``write()``) and ``fsync`` the file; they are durable when this returns.

        Raises :class:`JournalError` (nothing counts as written; a partial line is cut off again) and
        ``ValueError`` for an entry that cannot be encoded (nothing written).
        """
        if not entries:
            return
        data = b"".join(encode_entry(entry) for entry in entries)
        try:
            fd = self._open()
            if os.fstat(fd).st_size != self._good_size:
                os.ftruncate(fd, self._good_size)  # the tail of an earlier failed append
            view = memoryview(data)
            written = 0
            while written < len(data):
                count = self._write(fd, view[written:])
                if count <= 0:
                    raise OSError(errno.EIO, "write accepted no bytes")
                written += count
            self._fsync(fd)
        except OSError as exc:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._good_size)
            raise JournalError(f"journal {self._path} not written: {_describe(exc)}") from exc
        self._good_size += len(data)

    def read(self, offset: int = 0) -> tuple[list[JournalEntry], int]:
        """The entries of the complete lines from byte ``offset`` on, and the offset after the last of them.

        A last line without its newline (cut short by a crash, never acknowledged) is left out. Raises
        :class:`JournalError` for an unreadable file or a line that is not a journal row.
        """
        entries: list[JournalEntry] = []
        try:
            with self._path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        except OSError as exc:
            raise JournalError(f"cannot read the journal {self._path}: {_describe(exc)}") from exc
        end = data.rfind(b"\n") + 1
        position = offset
        for line in data[:end].split(b"\n")[:-1]:
            entries.append(decode_line(line, f"{self._path.name} at byte {position}"))
            position += len(line) + 1
        return entries, offset + end

    def remove(self) -> None:
        """Close and delete the file (its rows are all in the database); the next append starts a new one."""
        self.close()
        try:
            self._path.unlink(missing_ok=True)
            _fsync_dir(self._path.parent)
        except OSError as exc:
            raise JournalError(f"cannot remove the journal {self._path}: {_describe(exc)}") from exc
        self._good_size = 0

    def close(self) -> None:
        """Close the file descriptor (the file stays)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _complete_size(fd: int) -> int:
    """The file's size up to its last newline: a line cut short by a crash is dropped by the next append."""
    size = os.fstat(fd).st_size
    start = size
    while start > 0:
        step = min(start, 4096)
        chunk = os.pread(fd, step, start - step)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start - step + found + 1
        start -= step
    return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the database side


async def read_marks(session: AsyncSession) -> dict[str, int]:
    """Each stream's highest seq written to the database (empty when none is recorded)."""
    result = await session.execute(
        text("SELECT config_value FROM system_config WHERE config_key = :key"), {"key": MARK_KEY}
    )
    raw = result.scalar_one_or_none()
    if raw is None:
        return {}
    try:
        marks = json.loads(raw)
    except ValueError as exc:
        raise JournalError(f"system_config {MARK_KEY} is not JSON: {exc}") from exc
    if not isinstance(marks, dict):
        raise JournalError(f"system_config {MARK_KEY} is not a JSON object")
    return {str(stream): int(seq) for stream, seq in marks.items()}


async def write_mark(session: AsyncSession, stream: str, seq: int) -> None:
    """Record (in the caller's transaction) that ``stream``'s rows up to ``seq`` are in the database."""
    await session.execute(
        text(
            "INSERT INTO system_config (config_key, config_value, config_type, description) "
            "VALUES (:key, json_object(:stream, :seq), 'json', :description) "
            "ON CONFLICT (config_key) DO UPDATE SET "
            "config_value = json_set(CASE WHEN json_valid(config_value) THEN config_value ELSE '{}' END, "
            "'$.\"' || :stream || '\"', :seq), last_modified = CURRENT_TIMESTAMP"
        ),
        {
            "key": MARK_KEY,
            "stream": stream,
            "seq": seq,
            "description": "written by the recorder: the last journal row of each stream in the database",
        },
    )


async def clear_marks(session: AsyncSession) -> None:
    """Forget every stream's mark (in the caller's transaction); for when no journal is left."""
    await session.execute(text("DELETE FROM system_config WHERE config_key = :key"), {"key": MARK_KEY})


def unwritten(entries: Iterable[JournalEntry], marks: Mapping[str, int]) -> list[JournalEntry]:
    """The entries above their stream's mark (the ones not in the database yet), in their order."""
    return [entry for entry in entries if entry.seq > marks.get(entry.stream, 0)]


async def write_entries(session: AsyncSession, entries: Sequence[JournalEntry]) -> None:
    """Write ``entries`` in order, and each stream's mark, in the caller's transaction (the caller commits).

    Consecutive event rows go in with one ``executemany``; safety rows one by one. Raises ``ValueError`` for
    a row the repositories refuse and SQLAlchemy's errors when the database refuses the write.
    """
    highest: dict[str, int] = {}
    events: list[Mapping[str, Any]] = []
    repo = TreatmentEventsRepository(session)
    log = SafetyLogRepository(session)
    for entry in entries:
        highest[entry.stream] = max(highest.get(entry.stream, 0), entry.seq)
        if entry.table == "treatment_events":
            events.append(entry.values)
            continue
        if events:
            await repo.add_many(events)
            events = []
        await log.add(SafetyRecord.from_values(entry.values))
    if events:
        await repo.add_many(events)
    for stream, seq in highest.items():
        await write_mark(session, stream, seq)


__all__ = [
    "JOURNAL_FILE",
    "MARK_KEY",
    "TABLES",
    "Journal",
    "JournalEntry",
    "JournalError",
    "Table",
    "clear_marks",
    "decode_line",
    "encode_entry",
    "read_marks",
    "unwritten",
    "write_entries",
    "write_mark",
]
