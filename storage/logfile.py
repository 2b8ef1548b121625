"""The controller's log file: how its lines are written, read back and followed.

Every line the controller logs reads ``<time> <LEVEL> <source>: <message>``, the time in ISO 8601, UTC, to
the millisecond (``2026-12-07T09:14:02.518+00:00 WARNING control.supervisor: fault latched: ...``), written
by :class:`IsoFormatter`. The file is ``logs/controller.log`` in the data directory (:func:`log_path`):

* a controller a console started has its standard output and error in that file already;
* otherwise (the kiosk's service, whose standard error goes to the system journal) the controller also
  writes it itself (:func:`attach_log_file`), moved aside to ``controller.log.1`` (up to
  :data:`BACKUP_COUNT` older files) when it reaches :data:`MAX_BYTES`.

:func:`parse_line` reads a line back into its time, level, source and message; lines that are not log
records (a traceback's lines, the "controller ready" line, the console's "started by" line) keep their text
with no time or level. :class:`LogFollower` reads the last lines of the file without reading the rest
(backwards from its end, block by block), then, each time it is asked, only what was appended since; it
notices the file being moved aside or cut short and goes on with the new one.

The reading functions are blocking file I/O: from an event loop call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

#: Levels, mildest first.
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Size at which the controller's own log file is moved aside, bytes.
MAX_BYTES: Final = 10 * 1024 * 1024
#: Older log files kept (``controller.log.1`` ... ``.5``).
BACKUP_COUNT: Final = 5
#: The record format.
FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Name of the handler :func:`attach_log_file` adds (added once per process).
FILE_HANDLER: Final = "tosca-controller-file"
#: Most bytes one read of new lines takes (the rest comes at the next).
READ_LIMIT: Final = 1 << 20
_BLOCK: Final = 64 * 1024
_LINE: Final = re.compile(
    r"^(?P<at>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?) "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<source>[^\s:]+): (?P<message>.*)$"
)


class IsoFormatter(logging.Formatter):
    """``<ISO time UTC, ms> <LEVEL> <logger>: <message>`` (see the module documentation)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def log_path(data_dir: Path) -> Path:
    """The controller's log file of the data directory ``data_dir``."""
    return Path(data_dir) / "logs" / "controller.log"


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, theirs = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def attach_log_file(data_dir: Path, logger: logging.Logger | None = None) -> Path | None:
    """Have ``logger`` (default: the root logger) write :func:`log_path` of ``data_dir`` too, unless this
    process's standard error is that file already (a controller a console started) or it does so already.
    Returns the file when a handler was added (None also when the file cannot be opened: standard error
    still has every line)."""
    target = logger or logging.getLogger()
    path = log_path(data_dir)
    if any(getattr(h, "name", None) == FILE_HANDLER for h in target.handlers):
        return None
    with contextlib.suppress(ValueError, OSError):
        if _same_file(sys.stderr.fileno(), path):
            return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
    except OSError:
        return None  # standard error still has every line
    handler.set_name(FILE_HANDLER)
    handler.setFormatter(IsoFormatter())
    target.addHandler(handler)
    return path


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the log: its time (aware, UTC) and level when it is a log record, its source (the
    logger's name) and its message; ``text`` is the whole line as written (without its line ending)."""

    text: str
    at: datetime | None = None
    level: str | None = None
    source: str | None = None
    message: str = ""

    def at_least(self, level: str) -> bool:
        """Whether this line is of ``level`` or more serious (a line with no level counts as INFO)."""
        mine = LEVELS.index(self.level) if self.level in LEVELS else LEVELS.index("INFO")
        return mine >= LEVELS.index(level)


def parse_line(text: str) -> LogLine:
    """Read one line (see the module documentation)."""
    line = text.rstrip("\r\n")
    found = _LINE.match(line)
    if found is None:
        return LogLine(text=line, message=line)
    stamp = found["at"].replace(",", ".")
    if stamp.endswith("Z"):
        stamp = stamp[:-1] + "+00:00"
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return LogLine(text=line, message=line)
    if at.tzinfo is None:
        at = at.astimezone(UTC)  # the older format: local time
    return LogLine(text=line, at=at, level=found["level"], source=found["source"], message=found["message"])


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


class LogFollower:
    """The last lines of a log file, then what is appended to it (see the module documentation).

    A file that does not exist (yet) reads as empty; once it appears it is followed from its start.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""

    def close(self) -> None:
        """Close the file (a later read opens it again)."""
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._identity = None

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> bool:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        info = os.fstat(handle.fileno())
        self._handle = handle
        self._identity = (info.st_dev, info.st_ino)
        self._offset = 0
        self._partial = b""
        return True

    def last_lines(self, count: int) -> list[str]:
        """The last ``count`` complete lines of the file (reading backwards from its end, only as far as it
        takes); later :meth:`new_lines` starts after them."""
        self.close()
        if not self._open():
            return []
        assert self._handle is not None
        end = os.fstat(self._handle.fileno()).st_size
        position = end
        chunks: list[bytes] = []
        newlines = 0
        while position > 0 and newlines <= count:
            start = max(0, position - _BLOCK)
            self._handle.seek(start)
            chunk = self._handle.read(position - start)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            position = start
        data = b"".join(reversed(chunks))
        complete, newline, tail = data.rpartition(b"\n")
        self._offset = end - len(tail)
        self._partial = b""
        lines: list[bytes] = []
        if newline:
            lines = complete.split(b"\n")
            if position > 0:
                lines = lines[1:]  # the first is cut: it starts before what was read
        return [_decode(line) for line in lines[-count:]] if count > 0 else []

    def new_lines(self) -> list[str]:
        """The complete lines appended since the last read (at most :data:`READ_LIMIT` bytes' worth; the
        rest at the next call). A file moved aside (a new file at the path) is read to its end first, then
        the new one from its start; a file cut shorter than what was read is read again from its start."""
        if self._handle is None and not self._open():
            return []
        assert self._handle is not None
        lines = self._read_more()
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return lines
        if (info.st_dev, info.st_ino) != self._identity:
            if self._partial:
                lines.append(_decode(self._partial))
            self.close()
            if self._open():
                lines.extend(self._read_more())
        elif info.st_size < self._offset:
            self._offset = 0
            self._partial = b""
            lines.extend(self._read_more())
        return lines

    def _read_more(self) -> list[str]:
        assert self._handle is not None
        self._handle.seek(self._offset)
        data = self._handle.read(READ_LIMIT)
        if not data:
            return []
        self._offset += len(data)
        data = self._partial + data
        complete, newline, rest = data.rpartition(b"\n")
        if not newline:
            self._partial = data
            return []
        self._partial = rest
        return [_decode(line) for line in complete.split(b"\n")]


__all__ = [
    "BACKUP_COUNT",
    "LEVELS",
    "MAX_BYTES",
    "IsoFormatter",
    "LogFollower",
    "LogLine",
    "attach_log_file",
    "log_path",
    "parse_line",
]
