"""The session recorder: treatment events, safety records and telemetry, with a storage health signal.

One :class:`Recorder` serves the controller. It writes:

* ``treatment_events`` rows: :meth:`Recorder.event` never blocks; it checks the values, stamps the row (offset
  in milliseconds from the session start, UTC time from the clock) and accepts it;
* ``safety_log`` rows: :meth:`Recorder.safety` checks and stamps the row, accepts it and returns once it is
  durable (see below);
* the session's telemetry file (optional, :meth:`Recorder.begin_session` ``telemetry_path``): high-rate
  samples as JSON lines of :mod:`storage.telemetry_line` through :meth:`Recorder.telemetry`;
  :meth:`Recorder.end_session` closes the file and returns its :class:`~storage.telemetry.TelemetrySummary`
  (path, line count, SHA-256), which the session's lifecycle
  (:meth:`control.sessions.SessionService.finish`) writes into the session's row.

Nothing accepted is lost. Every accepted row gets the next number of this recorder's stream and goes through
one ordered queue (events and safety rows together). A writer task puts the queue into the database in
batches, one transaction per batch, at least every ``batch_interval_s`` (0.1 s). A row is *durable* once its
transaction has committed, or once it is in the journal (:mod:`storage.journal`, ``DIR/tosca.journal``,
fsynced): a row not in the database ``spill_after_s`` (0.2 s) after it was accepted, because the database is
locked by another process, slow or failing, is appended to the journal, and from then on every new row goes to
the journal until the journal has been written into the database, in order, by the retry that runs every
``retry_interval_s`` (1 s). Each batch records its stream's highest number in the same transaction, so a row
already in the database is never written twice from the journal. A clean :meth:`Recorder.close` writes or
journals every row it holds; :meth:`Recorder.start` first writes a journal left by an earlier process (a
crash, or a close while the database was locked) into the database and removes it. Memory is bounded:
past ``max_held_rows`` rows that are not durable yet, new events are refused, counted in
:attr:`Recorder.dropped_events` and logged.

With ``db_path`` (the controller gives it), the batches are written on a thread of the recorder's own
(:class:`DatabaseThread`, named ``recorder-db``), with its own event loop and engine on the same database
file: building the statements, the ORM's work and the record chain's then never run on the caller's loop,
which only awaits the outcome. The safety supervisor's loop is held up by a write at most while that thread
holds the interpreter lock (the interpreter's switch interval), instead of for the whole batch. Reads, the
journal's replay and the writability probe stay on the caller's loop; one lock orders them with the writes.

Health ("every accepted row is durable"). The recorder is *healthy* while every accepted row became durable
within ``durable_within_s`` (1 s) of being accepted. A database that is only locked or slow does not make it
unhealthy while the journal takes the rows. It turns unhealthy, and every callback registered with
:meth:`Recorder.on_health_change` is called at once, when

* a row is neither in the database nor in the journal ``durable_within_s`` after it was accepted (a full
  disk, a journal that cannot be written while the database is locked);
* the database refuses a write for any reason other than a lock (full disk, I/O error, read-only file),
  until a write succeeds again;
* the session's telemetry file cannot be written;
* the free space under ``data_root`` drops below ``min_free_bytes`` (checked at :meth:`Recorder.begin_session`
  and about every ``space_check_interval_s``).

Storage health is retried on its own, every ``retry_interval_s``: free space, the journal written into the
database, the held rows written. The recorder is healthy again as soon as all of it succeeds; the safety
supervisor treats "storage able to record" as one of the terms of permission to emit, so the fault it latched
can then be reset (never automatically). :meth:`Recorder.recheck` runs the same check at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import (
    ConfigRepository,
    SessionsRepository,
    TelemetryError,
    TelemetrySummary,
    TelemetryWriter,
    create_engine,
    session_factory,
    utc_now,
)
from storage.journal import (
    JOURNAL_FILE,
    Journal,
    JournalEntry,
    JournalError,
    Table,
    clear_marks,
    read_marks,
    unwritten,
    write_entries,
)
from storage.safety_records import SafetyRecord
from storage.telemetry import WriteFunction
from storage.telemetry_line import TelemetrySample

_LOG = logging.getLogger(__name__)

#: The ``treatment_events.event_type`` values of the seed schema.
EVENT_TYPES: Final = frozenset(
    {
        "laser_on",
        "laser_off",
        "power_set",
        "power_change",
        "ring_size_set",
        "ring_size_change",
        "protocol_step_start",
        "protocol_step_end",
        "pause",
        "resume",
        "image_captured",
        "safety_warning",
        "safety_trigger",
        "user_action",
    }
)
_MIB: Final = 1024 * 1024
#: Default least free space, in bytes, under the data directory for the recorder to stay healthy (50 MiB).
DEFAULT_MIN_FREE_BYTES: Final = 50 * _MIB
#: Default longest time, in seconds, a queued event waits before the background task writes it.
DEFAULT_BATCH_INTERVAL_S: Final = 0.1
#: Default time, in seconds, between two free-space checks of the background task.
DEFAULT_SPACE_CHECK_INTERVAL_S: Final = 1.0
#: Default most rows held in memory while they are not durable.
DEFAULT_MAX_HELD_ROWS: Final = 100_000
#: A row not in the database this long (s) after it was accepted goes to the journal.
DEFAULT_SPILL_AFTER_S: Final = 0.2
#: A row neither in the database nor in the journal this long (s) after it was accepted makes the recorder
#: unhealthy (and the supervisor stops emission). The bound is checked every ``GUARD_PERIOD_S``.
DEFAULT_DURABLE_WITHIN_S: Final = 1.0
#: Default time (s) between two retries of the database while the journal holds rows or storage is unhealthy.
DEFAULT_RETRY_INTERVAL_S: Final = 1.0
#: How often (s) the journal task looks at the oldest row that is not durable yet.
GUARD_PERIOD_S: Final = 0.02
_IDLE_GUARD_PERIOD_S: Final = 0.25
#: Most rows written in one transaction.
MAX_BATCH_ROWS: Final = 1000


_T = TypeVar("_T")


class DatabaseThread:
    """A thread with an event loop and an engine of its own on the database file ``db_path``, for work that
    must not run on the caller's loop: :meth:`run` hands it a coroutine function of a session maker and
    awaits the result (or the exception) on the caller's loop.

    The thread is an ordinary one (a real-time caller's thread starts it, and the kiosk's reset-on-fork makes
    it SCHED_OTHER); it keeps the caller's CPUs, so that a real-time caller preempts it outright and waits for
    it only while it holds the interpreter lock.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Start the thread and its engine (returns once they are up; raises what stopped them)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="recorder-db", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self._thread.join()
            self._thread = None
            raise RecorderError(f"the recorder's database thread did not start: {_describe(self._failure)}")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            engine = create_engine(self.db_path)
        except BaseException as exc:
            self._failure = exc
            loop.close()
            self._started.set()
            return
        self._loop, self._sessions = loop, session_factory(engine)
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(engine.dispose())
            loop.close()

    async def run(self, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[_T]]) -> _T:
        """``await work(sessions)`` on the thread's loop, with its session maker; its result or exception."""
        loop, sessions = self._loop, self._sessions
        if loop is None or sessions is None or self._thread is None:
            raise RecorderError("the recorder's database thread is not running")

        async def call() -> _T:
            return await work(sessions)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))

    async def close(self) -> None:
        """Stop the loop (the engine disposed) and wait for the thread to end. Idempotent."""
        thread, loop = self._thread, self._loop
        self._thread = self._loop = self._sessions = None
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)


async def _commit_entries(
    sessions: async_sessionmaker[AsyncSession], entries: Sequence[JournalEntry]
) -> None:
    async with sessions() as session:
        await write_entries(session, entries)
        await session.commit()


class RecorderError(Exception):
    """A record could not be written, or the recorder was used out of order; the message says which."""


class DiskUsage(Protocol):
    """What :func:`shutil.disk_usage` returns; only ``free`` (bytes) is used."""

    @property
    def free(self) -> int: ...


#: ``callback(healthy, problem)``: called when the recorder's health changes.
HealthCallback = Callable[[bool, str | None], None]


@dataclass(slots=True)
class _OpenSession:
    session_id: int
    tech_id: int
    started_mono: float
    started_at: datetime
    telemetry: TelemetryWriter | None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def _failure(exc: BaseException) -> tuple[str, bool]:
    """(what failed, in words; whether it is only a lock that will pass) for a storage exception."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DBAPIError) and cause.orig is not None:
            cause = cause.orig
            continue
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(cause, sqlite3.Error) and isinstance(code, int):
            primary = code & 0xFF
            if primary == sqlite3.SQLITE_FULL:
                return f"the disk holding the records is full: {_describe(cause)}", False
            if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return f"the records database is locked by another process: {_describe(cause)}", True
            if primary == sqlite3.SQLITE_READONLY:
                return f"the records database cannot be written: {_describe(cause)}", False
            return f"records database write failed: {_describe(cause)}", False
        if isinstance(cause, OSError):
            if cause.errno in _FULL_ERRNOS:
                return f"the disk holding the records is full: {_describe(cause)}", False
            return f"records write failed: {_describe(cause)}", False
        cause = cause.__cause__
    return f"records database write failed: {_describe(exc)}", False


def storage_failure(exc: BaseException) -> str | None:
    """Words for a storage exception (a full disk, a locked or read-only database, an I/O error) to show a
    person instead of the exception's name; None when ``exc`` is not a storage failure."""
    if isinstance(exc, OSError):  # only a full disk: other OSErrors (a serial line, a socket) are not storage
        return _failure(exc)[0] if exc.errno in _FULL_ERRNOS else None
    if not isinstance(exc, (SQLAlchemyError, sqlite3.Error, JournalError)):
        return None
    return _failure(exc)[0]


def _finite(name: str, value: float | None, *, non_negative: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or (non_negative and value < 0):
        need = "a finite number >= 0" if non_negative else "a finite number"
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return float(value)


def _flag(name: str, value: bool | None) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None, got {value!r}")
    return value


def _positive_id(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _json(name: str, value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} cannot be stored as JSON: {exc}") from exc


@dataclass(slots=True)
class _Row:
    """An accepted row that is not durable yet; ``done`` is resolved once it is (safety rows wait on it)."""

    entry: JournalEntry
    accepted: float
    done: asyncio.Future[None] | None = None


class Recorder:
    """Writes a session's events, safety records and telemetry, and says whether storage can record.

    ``sessions`` is the records database's session maker; ``data_root`` the data directory (free space is
    checked there, relative telemetry paths are under it, the journal is ``data_root/tosca.journal`` unless
    ``journal_path`` says otherwise); ``min_free_bytes`` the least free space, in bytes; ``clock`` returns
    naive UTC now; ``mono`` is the monotonic clock (seconds) that ``started_mono`` and ``at_mono`` are read
    from; ``disk_usage`` (:func:`shutil.disk_usage`), ``telemetry_write`` and ``journal_write``
    (:func:`os.write`) may be replaced for fault injection. Times are in seconds (see the module
    documentation for ``spill_after_s``, ``durable_within_s`` and ``retry_interval_s``).
    Call :meth:`close` when done.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        data_root: Path,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        clock: Callable[[], datetime] = utc_now,
        mono: Callable[[], float] = time.monotonic,
        disk_usage: Callable[[Path], DiskUsage] = shutil.disk_usage,
        telemetry_write: WriteFunction = os.write,
        journal_write: WriteFunction = os.write,
        journal_path: Path | None = None,
        batch_interval_s: float = DEFAULT_BATCH_INTERVAL_S,
        space_check_interval_s: float = DEFAULT_SPACE_CHECK_INTERVAL_S,
        max_held_rows: int = DEFAULT_MAX_HELD_ROWS,
        spill_after_s: float = DEFAULT_SPILL_AFTER_S,
        durable_within_s: float = DEFAULT_DURABLE_WITHIN_S,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
        db_path: Path | None = None,
    ) -> None:
        self.min_free_bytes = min_free_bytes
        #: With ``db_path``: the batches are written on this thread (see the module documentation).
        self._db_thread = DatabaseThread(db_path) if db_path is not None else None
        if not (isinstance(batch_interval_s, (int, float)) and 0 < batch_interval_s <= 0.1):
            raise ValueError(f"batch_interval_s must be > 0 and <= 0.1 seconds, got {batch_interval_s!r}")
        if not (isinstance(space_check_interval_s, (int, float)) and 0 < space_check_interval_s <= 60):
            raise ValueError(
                f"space_check_interval_s must be > 0 and <= 60 seconds, got {space_check_interval_s!r}"
            )
        if isinstance(max_held_rows, bool) or not isinstance(max_held_rows, int) or max_held_rows < 1:
            raise ValueError(f"max_held_rows must be an int >= 1, got {max_held_rows!r}")
        if not (isinstance(durable_within_s, (int, float)) and 0 < durable_within_s <= 5):
            raise ValueError(f"durable_within_s must be > 0 and <= 5 seconds, got {durable_within_s!r}")
        if not (isinstance(spill_after_s, (int, float)) and 0 < spill_after_s < durable_within_s):
            raise ValueError(
                f"spill_after_s must be > 0 and below durable_within_s ({durable_within_s} s), "
                f"got {spill_after_s!r}"
            )
        if not (isinstance(retry_interval_s, (int, float)) and 0 < retry_interval_s <= 60):
            raise ValueError(f"retry_interval_s must be > 0 and <= 60 seconds, got {retry_interval_s!r}")
        self._sessions = sessions
        self._data_root = Path(data_root)
        self._clock = clock
        self._mono = mono
        self._disk_usage = disk_usage
        self._telemetry_write = telemetry_write
        self._journal = Journal(
            self._data_root / JOURNAL_FILE if journal_path is None else Path(journal_path),
            write=journal_write,
        )
        self._batch_interval_s = float(batch_interval_s)
        self._space_check_interval_s = float(space_check_interval_s)
        self._max_held_rows = max_held_rows
        self._spill_after_s = float(spill_after_s)
        self._durable_within_s = float(durable_within_s)
        self._retry_interval_s = float(retry_interval_s)
        self._stream = uuid.uuid4().hex
        self._seq = 0
        #: Accepted rows not durable yet, in order.
        self._pending: deque[_Row] = deque()
        #: True while new rows go to the journal (it holds rows the database does not have yet).
        self._journaling = False
        self._journal_rows = 0  # rows appended to (or found in) the journal file since it was last removed
        self._replayed_rows = 0  # of those, rows read back and written to (or found in) the database
        self._replayed_offset = 0
        self._db_problem: str | None = None
        self._db_transient = False
        self._journal_problem: str | None = None
        self._space_problem: str | None = None
        self._late_problem: str | None = None
        self._session: _OpenSession | None = None
        self._healthy = True
        self._problem: str | None = None
        self._callbacks: list[HealthCallback] = []
        self._dropped = 0
        self._db_lock = asyncio.Lock()
        self._journal_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._journal_wake = asyncio.Event()
        self._retry_now = False
        self._stopping = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._journal_task: asyncio.Task[None] | None = None

    # ---- state

    @property
    def healthy(self) -> bool:
        """True while storage can record (see the module documentation)."""
        return self._healthy

    @property
    def problem(self) -> str | None:
        """Why the recorder is unhealthy (one line, the latest reasons found), or None."""
        return self._problem

    @property
    def session_id(self) -> int | None:
        """The session being recorded, or None."""
        return None if self._session is None else self._session.session_id

    @property
    def held_rows(self) -> int:
        """Accepted rows not in the database yet (in memory or in the journal)."""
        return len(self._pending) + self.journaled_rows

    @property
    def telemetry_open(self) -> bool:
        """True while the session has a telemetry file that takes lines (held ones included while the disk
        refuses them); False without one or once it lost lines for good."""
        current = self._session
        return current is not None and current.telemetry is not None and not current.telemetry.broken

    @property
    def journaled_rows(self) -> int:
        """Rows in the journal that have not been written into the database yet."""
        return max(0, self._journal_rows - self._replayed_rows)

    @property
    def journal_path(self) -> Path:
        """The journal file (it exists only while it holds rows)."""
        return self._journal.path

    @property
    def dropped_events(self) -> int:
        """Events refused because ``max_held_rows`` rows were already waiting to be durable (each logged)."""
        return self._dropped

    @property
    def min_free_bytes(self) -> int:
        """The least free space (bytes) under the data directory for the recorder to stay healthy."""
        return self._min_free_bytes

    @min_free_bytes.setter
    def min_free_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"min_free_bytes must be an int >= 0 (bytes), got {value!r}")
        self._min_free_bytes = value

    def on_health_change(self, callback: HealthCallback) -> None:
        """Call ``callback(healthy, problem)`` at once whenever the health changes."""
        self._callbacks.append(callback)

    def _set_health(self, healthy: bool, problem: str | None) -> None:
        if healthy == self._healthy:
            if not healthy and problem is not None and problem != self._problem:
                # Still unhealthy: keep the latest reason for whoever reads it; the health did not change.
                _LOG.error("storage still unhealthy: %s", problem)
                self._problem = problem
            return
        self._healthy = healthy
        self._problem = problem
        if healthy:
            _LOG.warning("storage healthy again (%d row(s) still in the journal)", self.journaled_rows)
        else:
            _LOG.error("storage unhealthy: %s (%d row(s) not in the database)", problem, self.held_rows)
        for callback in list(self._callbacks):
            try:
                callback(healthy, problem)
            except Exception:
                _LOG.exception("storage health callback raised")

    def _evaluate(self) -> None:
        """Work the health out from what is known now (see the module documentation)."""
        problems: list[str] = []
        if self._space_problem is not None:
            problems.append(self._space_problem)
        current = self._session
        if current is not None and current.telemetry is not None and not current.telemetry.healthy:
            problems.append(current.telemetry.error or "telemetry file failed")
        if self._db_problem is not None and not self._db_transient:
            problems.append(self._db_problem)
        if self._late_problem is not None:
            problems.append(self._late_problem)
        unique = list(dict.fromkeys(problems))
        self._set_health(not unique, "; ".join(unique) or None)

    def _check_late(self) -> None:
        """Unhealthy while the oldest row that is not durable has waited longer than ``durable_within_s``."""
        if self._pending:
            waited = time.monotonic() - self._pending[0].accepted
            if waited > self._durable_within_s:
                why = [p for p in (self._db_problem, self._journal_problem) if p is not None]
                self._late_problem = (
                    f"accepted rows neither in the database nor in the journal within "
                    f"{self._durable_within_s:g} s: " + ("; ".join(why) or "the database has not answered")
                )
                self._evaluate()
                return
        if self._late_problem is not None:
            self._late_problem = None
            self._evaluate()

    # ---- lifecycle

    async def start(self) -> None:
        """Write a journal left by an earlier process into the database (then remove it), and start the
        background tasks (batch writes, the journal, free-space checks, retries); :meth:`begin_session`
        calls it. A journal that cannot be written into the database yet stays, and is retried."""
        if self._closed:
            raise RecorderError("the recorder is closed")
        if self._task is not None:
            return
        if self._db_thread is not None:
            await asyncio.to_thread(self._db_thread.start)
        try:
            found = await asyncio.to_thread(self._journal.exists)
        except JournalError as exc:
            found = True
            _LOG.error("%s", exc)
        if found:
            self._journaling = True
            _LOG.warning("found a journal of rows not yet in the records database: %s", self._journal.path)
            if await self._replay():
                _LOG.warning("the journal's rows are in the records database; journal removed")
            else:
                _LOG.error(
                    "the journal stays until the records database takes its rows: %s", self._db_problem
                )
        else:
            with contextlib.suppress(SQLAlchemyError, OSError):
                async with self._db_lock, self._sessions() as session:
                    await clear_marks(session)
                    await session.commit()
        self._task = asyncio.create_task(self._run(), name="session recorder")
        self._journal_task = asyncio.create_task(self._guard(), name="session recorder journal")
        self._evaluate()

    async def begin_session(
        self,
        session_id: int,
        tech_id: int,
        started_mono: float,
        started_at: datetime,
        *,
        telemetry_path: Path | None = None,
    ) -> None:
        """Start recording session ``session_id`` (its row must exist), begun at ``started_mono``.

        ``started_mono`` is a reading of ``mono`` (seconds); ``started_at`` naive UTC. With ``telemetry_path``
        (relative to ``data_root`` or absolute) a telemetry file is created there; it must not exist yet. The
        free space is checked; the caller reads :attr:`healthy` to decide whether to go on.
        """
        if self._closed:
            raise RecorderError("the recorder is closed")
        if self._session is not None:
            raise RecorderError(f"session {self._session.session_id} is still being recorded; end it first")
        _positive_id("session_id", session_id)
        _positive_id("tech_id", tech_id)
        _finite("started_mono", started_mono)
        if not isinstance(started_at, datetime):
            raise ValueError(f"started_at must be a datetime, got {started_at!r}")
        await self._require_session_row(session_id)
        writer: TelemetryWriter | None = None
        if telemetry_path is not None:
            target = Path(telemetry_path)
            if not target.is_absolute():
                target = self._data_root / target
            try:
                writer = TelemetryWriter(
                    target,
                    on_failure=lambda _problem: self._evaluate(),
                    on_recover=self._evaluate,
                    write=self._telemetry_write,
                )
            except TelemetryError as exc:
                raise RecorderError(str(exc)) from exc
        self._session = _OpenSession(session_id, tech_id, float(started_mono), started_at, writer)
        await self.start()
        if writer is not None:
            await writer.start()
        await self._check_space()

    async def _require_session_row(self, session_id: int) -> None:
        try:
            async with self._sessions() as session:
                row = await SessionsRepository(session).get_by_id(session_id)
        except (SQLAlchemyError, OSError) as exc:
            problem = f"records database read failed: {_describe(exc)}"
            raise RecorderError(problem) from exc
        if row is None:
            raise RecorderError(f"session {session_id} does not exist in the records database")

    async def end_session(self) -> TelemetrySummary | None:
        """Stop recording the current session: close its telemetry file and write its queued rows.

        Returns the telemetry file's summary (None without one) for the session's row. Rows the database
        cannot take now stay held (in the journal) and are written by the retry; nothing is lost.
        """
        current = self._session
        if current is None:
            raise RecorderError("no session is being recorded")
        summary: TelemetrySummary | None = None
        if current.telemetry is not None:
            summary = await current.telemetry.close()
        self._session = None
        if not self._journaling and self._db_problem is None:
            await self._write_pending()
        self._evaluate()
        return summary

    async def close(self) -> int:
        """End the open session if any, write or journal every row held, stop the background tasks.

        Returns how many rows could be neither written nor journaled (a full disk); they are logged as lost.
        """
        if self._closed:
            return 0
        if self._session is not None:
            await self.end_session()
        self._stopping = True
        self._wake.set()
        if self._task is not None:  # the journal task keeps spilling while a write is still under way
            await self._task
            self._task = None
        self._journal_wake.set()
        if self._journal_task is not None:
            await self._journal_task
            self._journal_task = None
        if self._pending and not self._journaling and self._db_problem is None:
            await self._write_pending()
        if self._pending:
            self._journaling = True
            await self._spill()
        if self._journaling and self._db_problem is None:
            await self._replay()
        self._closed = True
        self._journal.close()
        if self._db_thread is not None:
            await self._db_thread.close()
        lost = len(self._pending)
        if lost:
            _LOG.error(
                "recorder closed with %d row(s) neither written nor journaled: %s",
                lost,
                "; ".join(p for p in (self._db_problem, self._journal_problem) if p) or self._problem,
            )
        elif self.journaled_rows:
            _LOG.warning(
                "recorder closed with %d row(s) in the journal %s; the next start writes them",
                self.journaled_rows,
                self._journal.path,
            )
        for row in self._pending:
            if row.done is not None and not row.done.done():
                row.done.set_exception(RecorderError("the recorder closed before the row was durable"))
                row.done.exception()  # retrieved: nobody may be waiting any more
        return lost

    # ---- accepting rows

    def _accept(self, table: Table, values: dict[str, Any], *, wait: bool) -> _Row:
        self._seq += 1
        row = _Row(JournalEntry(self._stream, self._seq, table, values), time.monotonic())
        if wait:
            row.done = asyncio.get_running_loop().create_future()
        first = not self._pending
        self._pending.append(row)
        if self._journaling or first:
            self._journal_wake.set()  # the guard watches the oldest row from now on
        elif wait or len(self._pending) >= MAX_BATCH_ROWS:
            self._wake.set()
        return row

    def event(
        self,
        event_type: str,
        *,
        commanded_w: float | None = None,
        actual_w: float | None = None,
        ring_mm: float | None = None,
        position_um: float | None = None,
        photodiode_v: float | None = None,
        footpedal: bool | None = None,
        smoothing: bool | None = None,
        interlocks: Mapping[str, bool] | None = None,
        details: Mapping[str, Any] | None = None,
        image_path: str | None = None,
        video_timestamp_ms: int | None = None,
        at_mono: float | None = None,
    ) -> None:
        """Accept one ``treatment_events`` row of the current session; never blocks.

        Powers in watts (>= 0), ring size in mm, actuator position in µm, photodiode in volts; ``interlocks``
        maps each interlock's name to whether it is satisfied; ``details`` is stored as JSON; ``at_mono`` is
        when it happened (a ``mono`` reading; default now). Raises ``ValueError`` for an unknown event type or
        a bad value (nothing is queued) and :class:`RecorderError` when no session is being recorded.
        """
        current = self._session
        if current is None:
            raise RecorderError(f"no session is being recorded; {event_type!r} event refused")
        if event_type not in EVENT_TYPES:
            known = ", ".join(sorted(EVENT_TYPES))
            raise ValueError(f"unknown event type {event_type!r}; expected one of {known}")
        now_mono = self._mono()
        at = now_mono if at_mono is None else _finite("at_mono", at_mono) or 0.0
        offset_ms = round((at - current.started_mono) * 1000)
        if offset_ms < 0:
            raise ValueError(f"event at {at} s is before the session start at {current.started_mono} s")
        row: dict[str, Any] = {
            "session_id": current.session_id,
            "timestamp": self._clock() - timedelta(seconds=max(0.0, now_mono - at)),
            "time_offset_ms": offset_ms,
            "event_type": event_type,
            "laser_power_commanded_watts": _finite("commanded_w", commanded_w, non_negative=True),
            "laser_power_actual_watts": _finite("actual_w", actual_w, non_negative=True),
            "ring_size_mm": _finite("ring_mm", ring_mm),
            "actuator_position_um": _finite("position_um", position_um),
            "photodiode_voltage_v": _finite("photodiode_v", photodiode_v),
            "footpedal_state": _flag("footpedal", footpedal),
            "smoothing_device_state": _flag("smoothing", smoothing),
            "interlock_status": None,
            "image_path": image_path,
            "video_timestamp_ms": None,
            "event_details": None,
        }
        if interlocks is not None:
            for name, value in interlocks.items():
                if not isinstance(name, str) or not isinstance(value, bool):
                    raise ValueError(f"interlocks must map names to True/False, got {name!r}: {value!r}")
            row["interlock_status"] = _json("interlocks", interlocks)
        if details is not None:
            row["event_details"] = _json("details", details)
        if video_timestamp_ms is not None:
            if isinstance(video_timestamp_ms, bool) or not isinstance(video_timestamp_ms, int):
                raise ValueError(f"video_timestamp_ms must be an int (ms), got {video_timestamp_ms!r}")
            row["video_timestamp_ms"] = video_timestamp_ms
        if image_path is not None and not isinstance(image_path, str):
            raise ValueError(f"image_path must be text, got {image_path!r}")
        if len(self._pending) >= self._max_held_rows:
            self._dropped += 1
            _LOG.error(
                "event %s at %d ms of session %d not recorded: %d rows already held (%d dropped so far): %s",
                event_type,
                offset_ms,
                current.session_id,
                len(self._pending),
                self._dropped,
                self._problem,
            )
            return
        self._accept("treatment_events", row, wait=False)

    def telemetry(self, sample: TelemetrySample) -> None:
        """Append one sample to the session's telemetry file (one line of the schema of
        :mod:`storage.telemetry_line`); never blocks on the disk.

        Raises ``ValueError`` for a sample that cannot be written (a NaN or infinite number),
        :class:`RecorderError` when the session has no telemetry file or the file has failed.
        """
        current = self._session
        if current is None or current.telemetry is None:
            raise RecorderError("no telemetry file is open")
        try:
            current.telemetry.append(sample.encode())
        except TelemetryError as exc:
            raise RecorderError(str(exc)) from exc

    async def safety(self, record: SafetyRecord) -> None:
        """Accept one ``safety_log`` row, stamped with its own ``timestamp`` (when it was made) or else now,
        and return once it is durable.

        The row belongs to the current session, if any; a record without ``tech_id`` gets the session's
        technician. Raises ``ValueError`` for a bad value (nothing accepted) and :class:`RecorderError` when
        the row is not durable within ``durable_within_s`` (the recorder is then unhealthy; the row stays held
        and is written when storage recovers) or the recorder is closed.
        """
        event_type = record.event_type
        if self._closed:
            raise RecorderError(f"the recorder is closed; safety record {event_type!r} refused")
        current = self._session
        stamped = record.stamped(
            # The time the record was made, when it says so (a supervisor's entry written after others).
            timestamp=record.timestamp if record.timestamp is not None else self._clock(),
            session_id=None if current is None else current.session_id,
            tech_id=None if current is None else current.tech_id,
        ).check()
        if self._task is None:
            await self.start()
        if len(self._pending) >= self._max_held_rows:
            raise RecorderError(
                f"safety record {event_type!r} not accepted: {len(self._pending)} rows already held: "
                f"{self._problem}"
            )
        late = self._late_problem
        row = self._accept("safety_log", stamped.values(), wait=True)
        assert row.done is not None
        if late is not None:  # rows are already late: this one is held behind them, no need to wait
            row.done.cancel()
            raise RecorderError(
                f"safety record {event_type!r} not durable yet (held for the database): {late}"
            )
        try:
            await asyncio.wait_for(asyncio.shield(row.done), self._durable_within_s)
        except TimeoutError:
            self._check_late()
            if self._late_problem is None:  # the row is late by the clock even if the guard has not looked
                self._late_problem = (
                    f"safety record {event_type!r} not durable after {self._durable_within_s} s"
                )
                self._evaluate()
            raise RecorderError(
                f"safety record {event_type!r} not durable yet (held for the database): {self._problem}"
            ) from None

    # ---- writing

    async def flush(self) -> None:
        """Write every held row (the journal's first) into the database now; raise :class:`RecorderError`
        if any stays out of it."""
        for _ in range(100):  # the journal first, then the rows in memory; a spill meanwhile goes round again
            if self._journaling:
                progress = await self._replay()
            else:
                progress = await self._write_pending()
            if not self.held_rows or not progress:
                break
        if self.held_rows:
            raise RecorderError(
                f"{self.held_rows} row(s) not in the records database yet "
                f"({self._db_problem or self._problem or 'storage unavailable'})"
            )

    async def recheck(self) -> bool:
        """Check free space and the telemetry file, write the journal and the held rows into the database (or
        prove it writable with a no-change write), and report healthy again if all of it succeeds. Returns
        :attr:`healthy`. The background task runs the same retry every ``retry_interval_s``.
        """
        await self._check_space()
        if self._journaling:
            await self._replay()
        if not self._journaling:
            if self._pending:
                await self._write_pending()
            else:
                await self._probe()
        self._check_late()
        self._evaluate()
        return self._healthy

    async def _probe(self) -> bool:
        try:
            async with self._db_lock, self._sessions() as session:
                await ConfigRepository(session).probe_writable()
                await session.commit()
        except (SQLAlchemyError, OSError) as exc:
            self._db_failed(exc)
            return False
        self._db_ok()
        return True

    def _db_failed(self, exc: BaseException) -> None:
        problem, transient = _failure(exc)
        if problem != self._db_problem:
            _LOG.error("%s (%s)", problem, "rows go to the journal" if transient else "storage unhealthy")
        self._db_problem, self._db_transient = problem, transient
        self._evaluate()

    def _db_ok(self) -> None:
        if self._db_problem is not None:
            _LOG.warning("the records database takes writes again (was: %s)", self._db_problem)
            self._db_problem, self._db_transient = None, False
            self._evaluate()

    async def _write_db(self, entries: Sequence[JournalEntry]) -> bool:
        """Write ``entries`` (in order) and their stream's mark in one transaction; False on failure."""
        try:
            if self._db_thread is not None:
                await self._db_thread.run(lambda sessions: _commit_entries(sessions, entries))
            else:
                await _commit_entries(self._sessions, entries)
        except (SQLAlchemyError, OSError) as exc:
            self._db_failed(exc)
            return False
        except ValueError as exc:  # a row the database layer refuses: it stays held, and says why
            _LOG.critical("row refused by the records database layer: %s", exc)
            self._db_failed(RecorderError(f"a held row is refused by the database layer: {exc}"))
            return False
        self._db_ok()
        return True

    async def _write_pending(self) -> bool:
        """Write the rows in memory straight into the database, batch by batch (only while not journaling)."""
        async with self._db_lock:
            while self._pending and not self._journaling:
                batch = [row for _, row in zip(range(MAX_BATCH_ROWS), self._pending, strict=False)]
                if not await self._write_db([row.entry for row in batch]):
                    self._journaling = True  # everything held goes to the journal now, in order
                    self._journal_wake.set()
                    return False
                if self._journaling:
                    # Spilled while the write was under way: the journal has these rows too, and the mark
                    # written with them keeps the journal from writing them twice.
                    return True
                self._settle(batch)
            self._check_late()
        return True

    def _settle(self, rows: list[_Row]) -> None:
        """``rows``, the oldest held, are durable: drop them from memory and release whoever waits on them."""
        for row in rows:
            popped = self._pending.popleft()
            assert popped is row
            if row.done is not None and not row.done.done():
                row.done.set_result(None)

    async def _spill(self) -> bool:
        """Append every row in memory to the journal (fsynced); True when all of them are durable there."""
        async with self._journal_lock:
            rows = list(self._pending)
            if not rows:
                return True
            if not self._journaling:
                # The journal was written into the database while this waited for the lock: the rows go
                # straight to the database now, after it.
                return False
            try:
                await asyncio.to_thread(self._journal.append, [row.entry for row in rows])
            except (JournalError, ValueError, OSError) as exc:
                problem = _failure(exc)[0] if not isinstance(exc, ValueError) else str(exc)
                if problem != self._journal_problem:
                    _LOG.error("journal not written: %s", problem)
                self._journal_problem = problem
                self._check_late()
                return False
            if self._journal_problem is not None:
                _LOG.warning("the journal takes rows again (was: %s)", self._journal_problem)
                self._journal_problem = None
            self._journal_rows += len(rows)
            self._settle(rows)
            self._check_late()
            return True

    async def _replay(self) -> bool:
        """Write the journal's rows into the database, in order, skipping any already there; remove the
        journal and go back to writing directly once it is all in. True when the journal is gone."""
        async with self._db_lock:
            while True:
                # Appends (write and fsync) hold this lock: a read sees durable lines only, and nothing can
                # slip in between the last read and the removal.
                async with self._journal_lock:
                    try:
                        entries, end = await asyncio.to_thread(self._journal.read, self._replayed_offset)
                    except JournalError as exc:
                        if isinstance(exc.__cause__, OSError):  # the file, not its rows: retried
                            if str(exc) != self._journal_problem:
                                _LOG.error("%s", exc)
                            self._journal_problem = str(exc)
                        else:
                            self._journal_unreadable(exc)
                        return False
                    if not entries:
                        try:
                            await asyncio.to_thread(self._journal.remove)
                        except JournalError as exc:
                            _LOG.error("%s", exc)
                            return False
                        self._journaling = False
                        self._replayed_offset = 0
                        self._journal_rows = self._replayed_rows = 0
                if not entries:
                    self._wake.set()  # rows accepted meanwhile go straight to the database
                    with contextlib.suppress(SQLAlchemyError, OSError):
                        async with self._sessions() as session:  # no journal: no mark is needed
                            await clear_marks(session)
                            await session.commit()
                    return True
                if self._journal_rows < self._replayed_rows + len(entries):
                    self._journal_rows = self._replayed_rows + len(entries)  # rows found in an old journal
                try:
                    async with self._sessions() as session:
                        marks = await read_marks(session)
                except (SQLAlchemyError, OSError) as exc:
                    self._db_failed(exc)
                    return False
                except JournalError as exc:
                    self._journal_unreadable(exc)
                    return False
                todo = unwritten(entries, marks)
                for index in range(0, len(todo), MAX_BATCH_ROWS):
                    if not await self._write_db(todo[index : index + MAX_BATCH_ROWS]):
                        # The batches before this one are in, with their marks: a later retry skips them.
                        return False
                self._replayed_offset = end
                self._replayed_rows += len(entries)

    def _journal_unreadable(self, exc: JournalError) -> None:
        """A journal whose rows cannot be read back is never skipped: storage stays unhealthy and says why
        (its rows, and every row behind them, cannot reach the database)."""
        problem = f"the journal cannot be written into the database: {exc}"
        if problem != self._db_problem:
            _LOG.critical("%s", problem)
        self._db_problem, self._db_transient = problem, False
        self._evaluate()

    async def _read_space_problem(self) -> str | None:
        try:
            usage = await asyncio.to_thread(self._disk_usage, self._data_root)
        except OSError as exc:
            return f"cannot read the free space under {self._data_root}: {_describe(exc)}"
        if usage.free < self._min_free_bytes:
            return (
                f"free space under {self._data_root} is {usage.free / _MIB:.1f} MiB, "
                f"below the {self._min_free_bytes / _MIB:.1f} MiB minimum"
            )
        return None

    async def _check_space(self) -> None:
        problem = await self._read_space_problem()
        if problem != self._space_problem:
            self._space_problem = problem
            self._evaluate()

    async def _run(self) -> None:
        """The writer: batches into the database while it takes them; the journal's replay and the health
        retry every ``retry_interval_s`` otherwise."""
        last_retry = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._batch_interval_s)
            self._wake.clear()
            if self._stopping:
                break
            try:
                if not self._journaling and self._pending and self._db_problem is None:
                    await self._write_pending()
                now = time.monotonic()
                needs_retry = self._journaling or not self._healthy or self._db_problem is not None
                if needs_retry and (self._retry_now or now - last_retry >= self._retry_interval_s):
                    self._retry_now = False
                    last_retry = now
                    await self.recheck()
            except Exception as exc:  # the task must outlive any one failure, and say what it was
                _LOG.exception("session recorder background task")
                self._db_failed(RecorderError(f"recorder failed: {_describe(exc)}"))

    async def _guard(self) -> None:
        """The journal task: rows not in the database after ``spill_after_s`` (or any row while journaling)
        go to the journal; the durability bound and the free space are checked here."""
        last_space_check = time.monotonic()
        while True:
            # Every GUARD_PERIOD_S while a row waits; otherwise until a row comes (or the next space check).
            period = GUARD_PERIOD_S if self._pending or self._late_problem else _IDLE_GUARD_PERIOD_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._journal_wake.wait(), period)
            self._journal_wake.clear()
            try:
                if self._pending:
                    waited = time.monotonic() - self._pending[0].accepted
                    if not self._journaling and waited >= self._spill_after_s:
                        _LOG.warning(
                            "%d row(s) not in the records database after %.2f s: journaling them (%s)",
                            len(self._pending),
                            waited,
                            self._db_problem or "the database is slow to answer",
                        )
                        self._journaling = True
                    if self._journaling:
                        await self._spill()
                self._check_late()
                if self._stopping:
                    return
                if time.monotonic() - last_space_check >= self._space_check_interval_s:
                    last_space_check = time.monotonic()
                    await self._check_space()
            except Exception as exc:  # the task must outlive any one failure, and say what it was
                _LOG.exception("session recorder journal task")
                self._journal_problem = f"journal task failed: {_describe(exc)}"
                if self._stopping:
                    return


__all__ = [
    "DEFAULT_BATCH_INTERVAL_S",
    "DEFAULT_DURABLE_WITHIN_S",
    "DEFAULT_MAX_HELD_ROWS",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_RETRY_INTERVAL_S",
    "DEFAULT_SPACE_CHECK_INTERVAL_S",
    "DEFAULT_SPILL_AFTER_S",
    "EVENT_TYPES",
    "GUARD_PERIOD_S",
    "MAX_BATCH_ROWS",
    "DatabaseThread",
    "DiskUsage",
    "HealthCallback",
    "Recorder",
    "RecorderError",
    "storage_failure",
]
