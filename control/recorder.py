"""The session recorder: treatment events, safety records and telemetry, with a storage health signal.

One :class:`Recorder` serves the controller. It writes:

* ``treatment_events`` rows: :meth:`Recorder.event` never blocks; it checks the values, stamps the row (offset
  in milliseconds from the session start, UTC time from the clock) and queues it. A background task writes the
  queue in batches, one transaction per batch, at least every ``batch_interval_s`` (0.1 s);
* ``safety_log`` rows: :meth:`Recorder.safety` writes at once, in its own transaction, and raises
  :class:`RecorderError` if the row could not be written;
* the session's telemetry file (optional, :meth:`Recorder.begin_session` ``telemetry_path``): high-rate
  samples as JSON lines through :meth:`Recorder.telemetry`; :meth:`Recorder.end_session` closes the file and
  returns its :class:`~storage.telemetry.TelemetrySummary` (path, line count, SHA-256), which the session's
  lifecycle (:meth:`control.sessions.SessionService.finish`) writes into the session's row.

Health. The recorder is *healthy* while everything it was given has been written or is on its way. It
turns unhealthy, and every callback registered with :meth:`Recorder.on_health_change` is called at once, when
a write fails (the database locked past its busy timeout, a disk I/O error, a read-only database, a full disk,
a failed telemetry write) or when the free space under ``data_root`` drops below ``min_free_bytes``
(checked at :meth:`Recorder.begin_session` and about every ``space_check_interval_s`` by the background task).
The safety supervisor treats "storage able to record" as one of the terms of permission to emit.

Nothing re-enables itself: once unhealthy, the recorder stops writing events (they stay queued in memory, in
order) until the controller calls :meth:`Recorder.recheck`, which checks the free space, writes the held rows
and, only if all of that succeeds, reports healthy again. Rows are never dropped silently: past
``max_held_rows`` new events are refused from the queue, counted in :attr:`Recorder.dropped_events` and
logged; rows still held when the recorder is closed are counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import (
    ConfigRepository,
    SafetyLogRepository,
    SessionsRepository,
    TelemetryError,
    TelemetrySummary,
    TelemetryWriter,
    TreatmentEventsRepository,
    utc_now,
)
from storage.telemetry import WriteFunction

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
#: Default most event rows held in memory while storage is unhealthy.
DEFAULT_MAX_HELD_ROWS: Final = 100_000
#: Most rows written in one transaction.
MAX_BATCH_ROWS: Final = 1000


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


class Recorder:
    """Writes a session's events, safety records and telemetry, and says whether storage can record.

    ``sessions`` is the records database's session maker; ``data_root`` the data directory (free space is
    checked there, relative telemetry paths are under it); ``min_free_bytes`` the least free space, in bytes;
    ``clock`` returns naive UTC now; ``mono`` is the monotonic clock (seconds) that ``started_mono`` and
    ``at_mono`` are read from; ``disk_usage`` (:func:`shutil.disk_usage`) and ``telemetry_write``
    (:func:`os.write`) may be replaced for fault injection.
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
        batch_interval_s: float = DEFAULT_BATCH_INTERVAL_S,
        space_check_interval_s: float = DEFAULT_SPACE_CHECK_INTERVAL_S,
        max_held_rows: int = DEFAULT_MAX_HELD_ROWS,
    ) -> None:
        if isinstance(min_free_bytes, bool) or not isinstance(min_free_bytes, int) or min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be an int >= 0 (bytes), got {min_free_bytes!r}")
        if not (isinstance(batch_interval_s, (int, float)) and 0 < batch_interval_s <= 0.1):
            raise ValueError(f"batch_interval_s must be > 0 and <= 0.1 seconds, got {batch_interval_s!r}")
        if not (isinstance(space_check_interval_s, (int, float)) and 0 < space_check_interval_s <= 60):
            raise ValueError(
                f"space_check_interval_s must be > 0 and <= 60 seconds, got {space_check_interval_s!r}"
            )
        if isinstance(max_held_rows, bool) or not isinstance(max_held_rows, int) or max_held_rows < 1:
            raise ValueError(f"max_held_rows must be an int >= 1, got {max_held_rows!r}")
        self._sessions = sessions
        self._data_root = Path(data_root)
        self._min_free_bytes = min_free_bytes
        self._clock = clock
        self._mono = mono
        self._disk_usage = disk_usage
        self._telemetry_write = telemetry_write
        self._batch_interval_s = float(batch_interval_s)
        self._space_check_interval_s = float(space_check_interval_s)
        self._max_held_rows = max_held_rows
        self._queue: deque[dict[str, Any]] = deque()
        self._session: _OpenSession | None = None
        self._healthy = True
        self._problem: str | None = None
        self._callbacks: list[HealthCallback] = []
        self._dropped = 0
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    # ---- state

    @property
    def healthy(self) -> bool:
        """True while storage can record (see the module documentation)."""
        return self._healthy

    @property
    def problem(self) -> str | None:
        """Why the recorder is unhealthy (one line, the latest reason found), or None."""
        return self._problem

    @property
    def session_id(self) -> int | None:
        """The session being recorded, or None."""
        return None if self._session is None else self._session.session_id

    @property
    def held_rows(self) -> int:
        """Event rows queued in memory and not yet written."""
        return len(self._queue)

    @property
    def dropped_events(self) -> int:
        """Events refused because ``max_held_rows`` rows were already held (each one logged)."""
        return self._dropped

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
            _LOG.warning("storage healthy again")
        else:
            _LOG.error("storage unhealthy: %s (%d event row(s) held)", problem, len(self._queue))
        for callback in list(self._callbacks):
            try:
                callback(healthy, problem)
            except Exception:
                _LOG.exception("storage health callback raised")

    def _mark_unhealthy(self, problem: str) -> None:
        self._set_health(False, problem)

    # ---- lifecycle

    async def start(self) -> None:
        """Start the background task (batch writes, free-space checks); :meth:`begin_session` calls it."""
        if self._closed:
            raise RecorderError("the recorder is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="session recorder")

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
                writer = TelemetryWriter(target, on_failure=self._mark_unhealthy, write=self._telemetry_write)
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
            self._mark_unhealthy(problem)
            raise RecorderError(problem) from exc
        if row is None:
            raise RecorderError(f"session {session_id} does not exist in the records database")

    async def end_session(self) -> TelemetrySummary | None:
        """Stop recording the current session: write its queued events and close its telemetry file.

        Returns the telemetry file's summary (None without one) for the session's row. When storage is
        unhealthy the events stay held and are written by :meth:`recheck`; nothing is lost.
        """
        current = self._session
        if current is None:
            raise RecorderError("no session is being recorded")
        self._session = None
        summary: TelemetrySummary | None = None
        if current.telemetry is not None:
            summary = await current.telemetry.close()
        if self._healthy:
            await self._write_held()
        return summary

    async def close(self) -> int:
        """End the open session if any, write what can be written, stop the background task.

        Returns how many event rows could not be written (held because storage is unhealthy); they are
        logged as lost.
        """
        if self._closed:
            return 0
        if self._session is not None:
            await self.end_session()
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._healthy:
            await self._write_held()
        self._closed = True
        lost = len(self._queue)
        if lost:
            _LOG.error("recorder closed with %d event row(s) not written: %s", lost, self._problem)
        return lost

    # ---- events

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
        """Queue one ``treatment_events`` row of the current session; never blocks.

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
        if len(self._queue) >= self._max_held_rows:
            self._dropped += 1
            _LOG.error(
                "event %s at %d ms of session %d not recorded: %d rows already held (%d dropped so far): %s",
                event_type,
                offset_ms,
                current.session_id,
                len(self._queue),
                self._dropped,
                self._problem,
            )
            return
        self._queue.append(row)
        if self._healthy and len(self._queue) >= MAX_BATCH_ROWS:
            self._wake.set()

    def telemetry(self, record: Mapping[str, Any]) -> None:
        """Append one record to the session's telemetry file (one JSON line); never blocks on the disk.

        Raises ``ValueError``/``TypeError`` for a record that cannot be written, :class:`RecorderError` when
        the session has no telemetry file or the file has failed.
        """
        current = self._session
        if current is None or current.telemetry is None:
            raise RecorderError("no telemetry file is open")
        try:
            current.telemetry.append(record)
        except TelemetryError as exc:
            raise RecorderError(str(exc)) from exc

    # ---- safety records

    async def safety(
        self,
        event_type: str,
        severity: str,
        description: str,
        *,
        system_state: str | None = None,
        laser_state: str | None = None,
        footpedal_state: bool | None = None,
        smoothing_device_state: bool | None = None,
        photodiode_voltage_v: float | None = None,
        action_taken: str | None = None,
        details: Mapping[str, Any] | None = None,
        tech_id: int | None = None,
    ) -> None:
        """Write one ``safety_log`` row now, in its own transaction (photodiode in volts).

        The row belongs to the current session, if any; ``tech_id`` defaults to the session's technician.
        Raises ``ValueError`` for a bad value (nothing written) and :class:`RecorderError` when the row could
        not be written (the recorder is then unhealthy).
        """
        current = self._session
        _finite("photodiode_voltage_v", photodiode_voltage_v)
        if details is not None:
            _json("details", details)
        try:
            async with self._sessions() as session:
                await SafetyLogRepository(session).append(
                    event_type,
                    severity,
                    description,
                    session_id=None if current is None else current.session_id,
                    tech_id=tech_id if tech_id is not None or current is None else current.tech_id,
                    system_state=system_state,
                    laser_state=laser_state,
                    footpedal_state=_flag("footpedal_state", footpedal_state),
                    smoothing_device_state=_flag("smoothing_device_state", smoothing_device_state),
                    photodiode_voltage_v=photodiode_voltage_v,
                    action_taken=action_taken,
                    details=details,
                    timestamp=self._clock(),
                )
                await session.commit()
        except (SQLAlchemyError, OSError) as exc:
            problem = f"safety record {event_type!r} not written: {_describe(exc)}"
            self._mark_unhealthy(problem)
            raise RecorderError(problem) from exc

    # ---- writing

    async def flush(self) -> None:
        """Write every queued row now; raise :class:`RecorderError` if any stays unwritten."""
        if self._healthy:
            await self._write_held()
        if self._queue:
            raise RecorderError(
                f"storage unhealthy ({self._problem}); {len(self._queue)} event row(s) held for recheck()"
            )

    async def recheck(self) -> bool:
        """Check free space, prove the database writable by writing the held rows (or a no-change write),
        and become healthy again if all of it succeeds. Returns :attr:`healthy`.

        Never called by the recorder itself: the controller decides when to retry.
        """
        space_problem = await self._space_problem()
        if space_problem is not None:
            self._set_health(False, space_problem)
            return False
        current = self._session
        if current is not None and current.telemetry is not None and not current.telemetry.healthy:
            self._set_health(False, current.telemetry.error)
            return False
        if not await self._write_held(probe=True):
            return False
        self._set_health(True, None)
        return True

    async def _write_held(self, *, probe: bool = False) -> bool:
        async with self._write_lock:
            try:
                if probe and not self._queue:
                    async with self._sessions() as session:
                        await ConfigRepository(session).probe_writable()
                        await session.commit()
                while self._queue:
                    batch = list(islice(self._queue, MAX_BATCH_ROWS))
                    async with self._sessions() as session:
                        await TreatmentEventsRepository(session).add_many(batch)
                        await session.commit()
                    for _ in batch:
                        self._queue.popleft()
            except (SQLAlchemyError, OSError) as exc:
                self._mark_unhealthy(f"records database write failed: {_describe(exc)}")
                return False
        return True

    async def _space_problem(self) -> str | None:
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
        problem = await self._space_problem()
        if problem is not None:
            self._mark_unhealthy(problem)

    async def _run(self) -> None:
        last_space_check = time.monotonic()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._batch_interval_s)
            self._wake.clear()
            if self._stopping:
                break
            try:
                if self._healthy and self._queue:
                    await self._write_held()
                if time.monotonic() - last_space_check >= self._space_check_interval_s:
                    last_space_check = time.monotonic()
                    await self._check_space()
            except Exception as exc:  # the task must outlive any one failure, and say what it was
                _LOG.exception("session recorder background task")
                self._mark_unhealthy(f"recorder failed: {_describe(exc)}")


__all__ = [
    "DEFAULT_BATCH_INTERVAL_S",
    "DEFAULT_MAX_HELD_ROWS",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_SPACE_CHECK_INTERVAL_S",
    "EVENT_TYPES",
    "MAX_BATCH_ROWS",
    "DiskUsage",
    "HealthCallback",
    "Recorder",
    "RecorderError",
]
