"""Session telemetry files: high-rate samples as JSON lines, one compact JSON object per line.

The database keeps the events of a session; samples taken at 100 Hz and more (photodiode volts, footpedal,
actuator position) go to a JSON-lines file in the session's folder, and the database records the file's path,
number of lines and SHA-256 at the end of the session.

:class:`TelemetryWriter` writes one such file:

* the file is created exclusively (an existing file is never overwritten) with its parent folders;
* :meth:`~TelemetryWriter.append` encodes one record (NaN and infinities refused) into an in-memory buffer;
  the buffer goes to the operating system with one ``write()`` call once it holds ``flush_lines`` lines, and
  otherwise every ``flush_interval_s`` seconds from the flusher task (:meth:`~TelemetryWriter.start`);
* the flusher calls ``fsync`` about every ``fsync_interval_s`` seconds in a worker thread
  (:func:`asyncio.to_thread`), so the event loop is never held up by the disk for more than one ``write()``;
* the SHA-256 is computed incrementally over exactly the bytes handed to the operating system;
* a failed write (disk full, I/O error) marks the writer unhealthy and reports once through ``on_failure``;
  the bytes that did not reach the file are held, new lines are added behind them, and every flush tries
  again: once the disk takes them the file has every line, in order, the writer is healthy again and
  ``on_recover`` is called. Held bytes are bounded (``max_held_bytes``): past that, new lines are refused,
  counted as lost, and the file is unhealthy for good (as after a failed ``fsync``, which may have lost data
  the kernel had accepted); :meth:`~TelemetryWriter.append` then raises :class:`TelemetryError`.

:func:`scan_telemetry` reads a file back (for instance one left by a crash, whose last line may be cut short)
and summarises its complete lines without changing the file.

When the records are encrypted (:mod:`storage.crypto_db`) the file is written in the encrypted session-file
format (:mod:`storage.crypto_files`): each flush seals its lines as one chunk, and
:meth:`TelemetryWriter.close` seals the last, empty chunk. The line count, size and SHA-256 are those of the
plaintext lines, and :func:`scan_telemetry` decrypts as it reads (a file left by a crash yields its complete
chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from storage.crypto_files import ChunkSealer, open_session_file, session_key_for
from storage.errors import StorageError

_LOG = logging.getLogger(__name__)

#: Default longest time, in seconds, a line waits in memory before it is written to the operating system.
DEFAULT_FLUSH_INTERVAL_S: Final = 0.1
#: Default number of buffered lines that triggers a write at once.
DEFAULT_FLUSH_LINES: Final = 50
#: Default time, in seconds, between two ``fsync`` calls while lines are being written.
DEFAULT_FSYNC_INTERVAL_S: Final = 1.0
#: Default most bytes held in memory while the file cannot be written (about ten minutes at 100 Hz).
DEFAULT_MAX_HELD_BYTES: Final = 16 * 1024 * 1024
_FILE_MODE: Final = 0o640
_SCAN_CHUNK_BYTES: Final = 1 << 20
#: Most plaintext bytes sealed in one chunk of an encrypted telemetry file.
MAX_CHUNK_LINES_BYTES: Final = 1 << 20

#: ``os.write``-like function: (file descriptor, bytes) -> number of bytes written.
WriteFunction = Callable[[int, memoryview], int]


def _full(exc: OSError) -> str:
    """The words that open a failure caused by a full disk (empty for any other failure)."""
    return "the disk holding the records is full: " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""


class TelemetryError(StorageError):
    """A telemetry file cannot be created, written or read back."""


@dataclass(frozen=True, slots=True)
class TelemetrySummary:
    """What a telemetry file holds.

    ``line_count`` counts complete lines; ``sha256`` (64 lower-case hex digits) and ``size_bytes`` cover
    exactly those complete lines; ``partial_tail_bytes`` is the length of an unterminated last line (left by a
    crash part-way through a write), which is not counted in the others.
    """

    path: Path
    line_count: int
    sha256: str
    size_bytes: int
    partial_tail_bytes: int = 0


def _find_non_finite(value: Any, where: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _find_non_finite(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_non_finite(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Return ``record`` as one compact JSON line (UTF-8, ending in a newline).

    Raises ``ValueError`` naming the key of a NaN or infinite number, and ``TypeError`` for a record that is
    not a mapping with string keys or holds a value JSON cannot represent.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"a telemetry record must be a mapping, got {type(record).__name__}")
    for key in record:
        if not isinstance(key, str):
            raise TypeError(f"telemetry record keys must be strings, got {key!r}")
    try:
        text = json.dumps(record, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError as exc:
        where = _find_non_finite(record, "")
        if where is None:
            raise ValueError(f"telemetry record cannot be written as JSON: {exc}") from exc
        raise ValueError(f"telemetry record field {where!r} is not a finite number (NaN/Infinity)") from exc
    except TypeError as exc:
        raise TypeError(f"telemetry record cannot be written as JSON: {exc}") from exc
    return text.encode("utf-8") + b"\n"


class TelemetryWriter:
    """Writes one session's telemetry file (JSON lines); see the module documentation.

    ``flush_interval_s`` (seconds) and ``flush_lines`` bound how long and how many lines stay in memory;
    ``fsync_interval_s`` (seconds) is the time between two ``fsync`` calls; ``on_failure`` is called once,
    with the reason, when a write or ``fsync`` fails, and ``on_recover`` when held lines could be written
    after all; ``max_held_bytes`` bounds what is held meanwhile. ``write`` replaces :func:`os.write` (fault
    injection). ``key``: the session-file key that encrypts the file (:mod:`storage.crypto_files`); "auto"
    uses the key of the data directory the file is in when its records are encrypted, else writes it plain.

    Use::

        writer = TelemetryWriter(folder / "telemetry.jsonl")
        await writer.start()
        writer.append({"t_ms": 12, "photodiode_v": 1.02})
        summary = await writer.close()
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_lines: int = DEFAULT_FLUSH_LINES,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        on_failure: Callable[[str], None] | None = None,
        on_recover: Callable[[], None] | None = None,
        write: WriteFunction = os.write,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        key: bytes | Literal["auto"] | None = "auto",
    ) -> None:
        if not (isinstance(flush_interval_s, (int, float)) and 0 < flush_interval_s <= 0.1):
            raise ValueError(f"flush_interval_s must be > 0 and <= 0.1 seconds, got {flush_interval_s!r}")
        if isinstance(flush_lines, bool) or not isinstance(flush_lines, int) or not 1 <= flush_lines <= 50:
            raise ValueError(f"flush_lines must be an int from 1 to 50, got {flush_lines!r}")
        if not (isinstance(fsync_interval_s, (int, float)) and 0 < fsync_interval_s <= 60):
            raise ValueError(f"fsync_interval_s must be > 0 and <= 60 seconds, got {fsync_interval_s!r}")
        if isinstance(max_held_bytes, bool) or not isinstance(max_held_bytes, int) or max_held_bytes < 1:
            raise ValueError(f"max_held_bytes must be an int >= 1 (bytes), got {max_held_bytes!r}")
        self._path = Path(path)
        self._flush_interval_s = float(flush_interval_s)
        self._flush_lines = flush_lines
        self._fsync_interval_s = float(fsync_interval_s)
        self._on_failure = on_failure
        self._on_recover = on_recover
        self._write = write
        self._max_held_bytes = max_held_bytes
        #: Bytes of lines flushed but not written yet (a write failed), written first by the next flush.
        self._held = b""
        #: The written start of a line whose end is still held (hashed once the line is complete).
        self._tail = b""
        self._lost_lines = 0
        self._broken = False  # lines lost or an fsync failed: unhealthy for good
        self._buffer: list[bytes] = []
        self._hash = hashlib.sha256()
        self._line_count = 0
        self._size_bytes = 0
        self._partial_tail = 0
        self._unsynced = False
        self._error: str | None = None
        self._closed = False
        self._summary: TelemetrySummary | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        try:
            chosen = session_key_for(self._path) if key == "auto" else key
        except StorageError as exc:
            raise TelemetryError(f"cannot encrypt telemetry file {self._path}: {exc}") from exc
        self._sealer = ChunkSealer(chosen) if chosen is not None else None
        #: [sealed bytes still to write, plaintext] of each chunk held (encrypted files only).
        self._chunks: list[list[Any]] = []
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, _FILE_MODE)
        except FileExistsError as exc:
            raise TelemetryError(
                f"telemetry file {self._path} already exists; a telemetry file is never overwritten"
            ) from exc
        except OSError as exc:
            raise TelemetryError(f"cannot create telemetry file {self._path}: {exc.strerror or exc}") from exc
        if self._sealer is not None:
            try:
                os.write(self._fd, self._sealer.header)
            except OSError as exc:
                os.close(self._fd)
                raise TelemetryError(
                    f"cannot write telemetry file {self._path}: {exc.strerror or exc}"
                ) from exc

    # ---- state

    @property
    def path(self) -> Path:
        """The telemetry file."""
        return self._path

    @property
    def healthy(self) -> bool:
        """False while lines cannot be written, and for good once lines were lost or an ``fsync`` failed."""
        return self._error is None

    @property
    def broken(self) -> bool:
        """True once lines were lost or an ``fsync`` failed: the file stays incomplete."""
        return self._broken

    @property
    def lost_lines(self) -> int:
        """Lines refused because ``max_held_bytes`` were already held."""
        return self._lost_lines

    @property
    def error(self) -> str | None:
        """Why the writer is unhealthy, or None."""
        return self._error

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def line_count(self) -> int:
        """Complete lines handed to the operating system so far."""
        return self._line_count

    @property
    def pending_lines(self) -> int:
        """Lines appended but not yet handed to the operating system (held ones included)."""
        return len(self._buffer) + self._held_lines()

    def _held_lines(self) -> int:
        if self._sealer is None:
            return self._held.count(b"\n")
        return sum(plain.count(b"\n") for _left, plain in self._chunks)

    # ---- writing

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one record (one JSON line); never blocks for more than one ``write()`` call.

        Raises ``ValueError``/``TypeError`` for a record that cannot be written (nothing is written), and
        :class:`TelemetryError` when the writer is closed, failed for good, or holds ``max_held_bytes``
        already (the line is counted as lost and the file fails for good).
        """
        if self._closed:
            raise TelemetryError(f"telemetry file {self._path} is closed")
        if self._broken:
            raise TelemetryError(self._error or f"telemetry file {self._path} failed")
        line = encode_record(record)
        if self._error is not None and len(self._held) + sum(map(len, self._buffer)) >= self._max_held_bytes:
            self._lost_lines += 1
            self._broken = True
            reason = f"{self._error}; telemetry lines lost after {self._max_held_bytes} bytes were held"
            self._error = reason
            _LOG.error("%s", reason)
            raise TelemetryError(reason)
        self._buffer.append(line)
        if len(self._buffer) >= self._flush_lines:
            self.flush()

    def flush(self) -> None:
        """Hand the held and buffered lines to the operating system now, with one ``write()`` call (no
        ``fsync``); after a failure this is the retry."""
        if self._closed or not (self._buffer or self._held):
            return
        new = b"".join(self._buffer)
        self._buffer.clear()
        if self._sealer is None:
            data = self._held + new
        else:
            data = self._held
            for start in range(0, len(new), MAX_CHUNK_LINES_BYTES):
                plain = new[start : start + MAX_CHUNK_LINES_BYTES]
                sealed = self._sealer.seal(plain)
                self._chunks.append([len(sealed), plain])
                data += sealed
        self._held = b""
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                count = self._write(self._fd, view[written:])
                if count <= 0:
                    raise OSError(errno.EIO, "write accepted no bytes")
                written += count
        except OSError as exc:
            self._account_written(data[:written])
            self._held = data[written:]
            held = self._held_lines()
            self._fail(f"{_full(exc)}telemetry write to {self._path} failed: {exc.strerror or exc}", held)
        else:
            self._account_written(data)
            if self._error is not None and not self._broken:
                _LOG.warning("telemetry file %s written again (was: %s)", self._path, self._error)
                self._error = None
                if self._on_recover is not None:
                    try:
                        self._on_recover()
                    except Exception:
                        _LOG.exception("telemetry recovery callback raised")

    def _account_written(self, written: bytes) -> None:
        """Count what reached the file: the bytes themselves, or for an encrypted file the plaintext of each
        chunk whose sealed bytes are all written."""
        if self._sealer is None:
            self._account(written)
            return
        left = len(written)
        while left and self._chunks:
            chunk = self._chunks[0]
            step = min(left, chunk[0])
            chunk[0] -= step
            left -= step
            if chunk[0] == 0:
                self._chunks.pop(0)
                self._account(chunk[1])

    def _account(self, written: bytes) -> None:
        # Only a failed write can leave a cut line; the retry writes the rest of it first. The hash covers
        # complete lines only, like scan_telemetry's.
        if not written:
            return
        self._unsynced = True
        data = self._tail + written
        end = data.rfind(b"\n") + 1
        self._hash.update(data[:end])
        self._size_bytes += end
        self._line_count += data.count(b"\n", 0, end)
        self._tail = data[end:]
        self._partial_tail = len(self._tail)

    def _fail(self, reason: str, lost_lines: int = 0) -> None:
        if self._error is not None:
            return
        self._error = reason
        _LOG.error("%s (%d line(s) held until it can be written)", reason, lost_lines)
        if self._on_failure is not None:
            try:
                self._on_failure(reason)
            except Exception:
                _LOG.exception("telemetry failure callback raised")

    async def _fsync(self) -> None:
        async with self._sync_lock:
            if not self._unsynced or self._error is not None:
                return
            self._unsynced = False
            try:
                await asyncio.to_thread(os.fsync, self._fd)
            except OSError as exc:
                self._broken = True  # the kernel may have dropped what it had accepted
                self._fail(f"{_full(exc)}telemetry fsync of {self._path} failed: {exc.strerror or exc}")

    # ---- flusher

    async def start(self) -> None:
        """Start the flusher task (writes at least every ``flush_interval_s``, fsyncs about every second)."""
        if self._closed:
            raise TelemetryError(f"telemetry file {self._path} is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"telemetry flusher {self._path.name}")

    async def _run(self) -> None:
        last_sync = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._flush_interval_s)
            self.flush()
            if time.monotonic() - last_sync >= self._fsync_interval_s:
                last_sync = time.monotonic()
                await self._fsync()

    def _seal_last(self) -> None:
        """Write the last (empty) chunk of an encrypted file whose lines all reached it; a file that lost or
        holds lines keeps no last chunk, so a reader sees that it is incomplete."""
        if self._sealer is None or self._held or self._sealer.finished:
            return
        data = self._sealer.seal(b"", last=True)
        try:
            written = 0
            while written < len(data):
                count = self._write(self._fd, memoryview(data)[written:])
                if count <= 0:
                    raise OSError(errno.EIO, "write accepted no bytes")
                written += count
            self._unsynced = True
        except OSError as exc:
            self._fail(f"{_full(exc)}telemetry write to {self._path} failed: {exc.strerror or exc}")

    async def close(self) -> TelemetrySummary:
        """Write what is buffered, ``fsync``, close the file and return its summary (idempotent).

        After a failure the summary describes the bytes that did reach the file, and :attr:`healthy` stays
        False; the caller decides what to record.
        """
        if self._summary is not None:
            return self._summary
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.flush()
        self._seal_last()
        await self._fsync()
        self._closed = True
        try:
            os.close(self._fd)
        except OSError as exc:
            self._fail(f"telemetry close of {self._path} failed: {exc.strerror or exc}")
        self._summary = TelemetrySummary(
            path=self._path,
            line_count=self._line_count,
            sha256=self._hash.hexdigest(),
            size_bytes=self._size_bytes,
            partial_tail_bytes=self._partial_tail,
        )
        return self._summary


def scan_telemetry(path: Path, *, parse: bool = True) -> TelemetrySummary:
    """Summarise the complete lines of a telemetry file; never changes the file.

    A last line without its newline (a write cut short by a crash) is left out and its length reported as
    ``partial_tail_bytes``. With ``parse`` every complete line must be a JSON object, or
    :class:`TelemetryError` names the first line that is not. Blocking: call it through
    :func:`asyncio.to_thread` from async code.
    """
    target = Path(path)
    digest = hashlib.sha256()
    line_count = 0
    size = 0
    tail = b""
    try:
        with open_session_file(target, allow_unfinished=True) as handle:
            while chunk := handle.read(_SCAN_CHUNK_BYTES):
                data = tail + chunk
                end = data.rfind(b"\n") + 1
                if end == 0:
                    tail = data
                    continue
                complete, tail = data[:end], data[end:]
                digest.update(complete)
                size += len(complete)
                if parse:
                    for offset, line in enumerate(complete[:-1].split(b"\n")):
                        _check_line(target, line_count + offset + 1, line)
                line_count += complete.count(b"\n")
    except OSError as exc:
        raise TelemetryError(f"cannot read telemetry file {target}: {exc.strerror or exc}") from exc
    except StorageError as exc:
        raise TelemetryError(f"cannot read telemetry file {target}: {exc}") from exc
    return TelemetrySummary(
        path=target,
        line_count=line_count,
        sha256=digest.hexdigest(),
        size_bytes=size,
        partial_tail_bytes=len(tail),
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _check_line(path: Path, number: int, line: bytes) -> None:
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise TelemetryError(f"{path.name} line {number} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TelemetryError(f"{path.name} line {number} is not a JSON object")


__all__ = [
    "DEFAULT_FLUSH_INTERVAL_S",
    "DEFAULT_FLUSH_LINES",
    "DEFAULT_FSYNC_INTERVAL_S",
    "DEFAULT_MAX_HELD_BYTES",
    "TelemetryError",
    "TelemetrySummary",
    "TelemetryWriter",
    "WriteFunction",
    "encode_record",
    "scan_telemetry",
]
