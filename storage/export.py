"""Research exports of treatment sessions: one session, or every session that started in a time range.

An export is a new folder (by default under the data directory's ``exports/``) holding, for each session:

=====================  ==================================================================================
file                   what it holds
=====================  ==================================================================================
``summary.json/.csv``  the session's record: status, times, protocol, laser-on time, average and maximum
                       measured power, energy, counts of events, safety rows and snapshots, the telemetry
                       file's recorded line count and SHA-256 and whether the copy matches them
``events.json/.csv``   the session's ``treatment_events`` rows in time order (details as JSON)
``safety_log.json/.csv`` the session's ``safety_log`` rows in time order
``telemetry.jsonl``    the session's telemetry file, byte for byte (:mod:`storage.telemetry_line` schema)
``telemetry.csv``      the same samples as CSV (with the CSV format)
``protocol.json``      the protocol version the session ran (its stored snapshot), as stored
``power_trace.png``    commanded (blue) and measured (red) laser power over the session, drawn with OpenCV
``snapshots/``         the session's snapshot pictures (``session_recordings`` of type ``snapshot``)
=====================  ==================================================================================

A range export puts each session in ``session_<id>/`` and adds ``sessions.json/.csv``, one summary per
session; sessions still open are left out and named in the manifest. Every export has ``manifest.json``:
when and how it was made, whether it is identified, and each file with its size and SHA-256.

**De-identified by default.** Subjects are named by their code only. Left out unless ``identified`` is
asked: the subject's date of birth, gender and notes, the technician's full name, and the session's free-text
treatment and post-treatment notes (text typed about a person can name them). An identified export adds them,
and says so in its manifest. Every export, identified or not, is an ``audit_log`` row (``research_export``)
naming who made it, the sessions, the folder and whether it is identified; when that row cannot be written
the export is removed again and refused.

**Written atomically, never over anything.** The files are written into a hidden folder beside the target
(``.<name>.partial-<pid>``), flushed to disk, and the folder is renamed to its name only when complete: a
reader never sees half an export, and a failure (a full disk, an unreadable file) leaves nothing behind. A
target that exists already is refused; the default names (``session_<id>_<UTC time>``,
``sessions_<from>_<to>_<UTC time>``) get ``_1``, ``_2``, ... when taken.

The database is read in one short read transaction per session (nothing is held while files are written).
The functions are synchronous and blocking (database, files, drawing); call them through
``asyncio.to_thread`` from an event loop.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import shutil
import sqlite3
import stat
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from storage.audit_query import open_read_only, record_action, safe_cell
from storage.crypto_files import open_session_file
from storage.errors import StorageError, one_line
from storage.models import utc_now
from storage.paths import DataDir
from storage.telemetry import TelemetryError
from storage.telemetry_line import KEYS as TELEMETRY_KEYS
from storage.telemetry_line import decode_sample

Format = Literal["csv", "json"]
#: Formats written unless asked otherwise.
FORMATS: Final[tuple[Format, ...]] = ("csv", "json")
#: The audit action of an export.
AUDIT_ACTION: Final = "research_export"
#: Session statuses still being recorded (not exported).
OPEN_STATUSES: Final = ("in_progress", "paused")
#: Size of the power trace picture, pixels.
TRACE_WIDTH: Final = 1200
TRACE_HEIGHT: Final = 500
#: The plot area inside it: left, top, right, bottom (pixels).
PLOT_BOX: Final = (80, 50, 1170, 440)
#: Colours of the two series (blue and red; OpenCV's BGR order) and of the axes and grid.
COMMANDED_BGR: Final = (200, 110, 0)
MEASURED_BGR: Final = (0, 0, 220)
_AXIS_BGR: Final = (0, 0, 0)
_GRID_BGR: Final = (225, 225, 225)
#: Fields of a summary that an identified export adds (and a de-identified one leaves out).
IDENTIFYING_FIELDS: Final = (
    "subject_date_of_birth",
    "subject_gender",
    "subject_notes",
    "technician_full_name",
    "treatment_notes",
    "post_treatment_notes",
)
#: Columns of the summary, in order (identifying ones last, present only in an identified export).
SUMMARY_FIELDS: Final = (
    "session_id",
    "session_uid",
    "subject_code",
    "status",
    "start_time_utc",
    "end_time_utc",
    "duration_seconds",
    "abort_reason",
    "treatment_site",
    "protocol_id",
    "protocol_name",
    "technician",
    "laser_on_time_s",
    "avg_power_w",
    "max_power_w",
    "energy_j",
    "event_count",
    "safety_event_count",
    "snapshot_count",
    "telemetry_line_count",
    "telemetry_sha256",
    "telemetry_copied",
    "telemetry_matches_record",
    "protocol_snapshot",
    *IDENTIFYING_FIELDS,
)
EVENT_FIELDS: Final = (
    "event_id",
    "session_id",
    "timestamp_utc",
    "time_offset_ms",
    "event_type",
    "laser_power_commanded_watts",
    "laser_power_actual_watts",
    "ring_size_mm",
    "actuator_position_um",
    "photodiode_voltage_v",
    "footpedal_state",
    "smoothing_device_state",
    "interlock_status",
    "image_file",
    "video_timestamp_ms",
    "event_details",
)
SAFETY_FIELDS: Final = (
    "log_id",
    "session_id",
    "timestamp_utc",
    "tech_id",
    "event_type",
    "severity",
    "description",
    "system_state",
    "laser_state",
    "footpedal_state",
    "smoothing_device_state",
    "photodiode_voltage_v",
    "action_taken",
    "details",
)
_COPY_CHUNK: Final = 1 << 20


class ExportError(StorageError):
    """An export was refused or failed; nothing was left behind. The message is one line."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: its folder, the sessions in it, the sessions left out (still open), the number
    of files, whether it is identified."""

    folder: Path
    sessions: tuple[int, ...]
    skipped: tuple[int, ...]
    files: int
    identified: bool

    def describe(self) -> str:
        """One line: what was exported where."""
        count = len(self.sessions)
        what = f"session {self.sessions[0]}" if count == 1 else f"{count} sessions"
        kind = "identified" if self.identified else "de-identified"
        left = f"; {len(self.skipped)} still open left out" if self.skipped else ""
        return f"exported {what} ({kind}, {self.files} files) to {self.folder}{left}"


# ------------------------------------------------------------------------------------------ reading


@dataclass(slots=True)
class _Snapshot:
    path: Path
    timestamp: str
    resolution: str | None


@dataclass(slots=True)
class _SessionRecord:
    """One session as read from the database (in one read transaction)."""

    session: dict[str, Any]
    subject: dict[str, Any]
    technician: dict[str, Any]
    events: list[dict[str, Any]]
    safety: list[dict[str, Any]]
    snapshots: list[_Snapshot] = field(default_factory=list)


def _rows(connection: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def _resolve(data_dir: DataDir, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else data_dir.root / path


def _read_session(connection: sqlite3.Connection, data_dir: DataDir, session_id: int) -> _SessionRecord:
    connection.execute("BEGIN")
    try:
        found = _rows(connection, "SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        if not found:
            raise ExportError(f"no session with id {session_id}")
        session = found[0]
        subject = _rows(
            connection,
            "SELECT subject_code, date_of_birth, gender, notes FROM subjects WHERE subject_id = ?",
            (session["subject_id"],),
        )
        technician = _rows(
            connection, "SELECT username, full_name FROM tech_users WHERE tech_id = ?", (session["tech_id"],)
        )
        events = _rows(
            connection,
            "SELECT * FROM treatment_events WHERE session_id = ? ORDER BY time_offset_ms, event_id",
            (session_id,),
        )
        safety = _rows(
            connection,
            "SELECT * FROM safety_log WHERE session_id = ? ORDER BY timestamp, log_id",
            (session_id,),
        )
        recordings = _rows(
            connection,
            "SELECT file_path, timestamp, resolution FROM session_recordings "
            "WHERE session_id = ? AND recording_type = 'snapshot' ORDER BY recording_id",
            (session_id,),
        )
    finally:
        connection.execute("COMMIT")
    return _SessionRecord(
        session=session,
        subject=subject[0] if subject else {},
        technician=technician[0] if technician else {},
        events=events,
        safety=safety,
        snapshots=[
            _Snapshot(_resolve(data_dir, str(r["file_path"])), str(r["timestamp"]), r["resolution"])
            for r in recordings
        ],
    )


def _sessions_in_range(
    connection: sqlite3.Connection, since: datetime, until: datetime
) -> list[tuple[int, str]]:
    stamp = "%Y-%m-%d %H:%M:%S.%f"
    found = connection.execute(
        "SELECT session_id, status FROM sessions WHERE start_time >= ? AND start_time < ? "
        "ORDER BY start_time, session_id",
        (since.strftime(stamp), until.strftime(stamp)),
    ).fetchall()
    return [(int(row[0]), str(row[1])) for row in found]


# ------------------------------------------------------------------------------------------ cells


def _details(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        return None if value in (None, "") else value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (dict, list)) else value


def _cell(value: object) -> str:
    """A CSV cell: numbers as written by Python, booleans ``true``/``false``, text guarded against being run
    as a spreadsheet formula, JSON values (details) as compact JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (dict, list)):
        return safe_cell(json.dumps(value, sort_keys=True, separators=(",", ":")))
    return safe_cell(value)


def _flag(value: object) -> bool | None:
    return None if value is None else bool(value)


def _event(row: Mapping[str, Any]) -> dict[str, Any]:
    image = row.get("image_path")
    return {
        "event_id": row["event_id"],
        "session_id": row["session_id"],
        "timestamp_utc": str(row["timestamp"]),
        "time_offset_ms": row["time_offset_ms"],
        "event_type": row["event_type"],
        "laser_power_commanded_watts": row["laser_power_commanded_watts"],
        "laser_power_actual_watts": row["laser_power_actual_watts"],
        "ring_size_mm": row["ring_size_mm"],
        "actuator_position_um": row["actuator_position_um"],
        "photodiode_voltage_v": row["photodiode_voltage_v"],
        "footpedal_state": _flag(row["footpedal_state"]),
        "smoothing_device_state": _flag(row["smoothing_device_state"]),
        "interlock_status": _details(row["interlock_status"]),
        # The file's name only: the stored path names the data directory's folders.
        "image_file": None if not image else Path(str(image)).name,
        "video_timestamp_ms": row["video_timestamp_ms"],
        "event_details": _details(row["event_details"]),
    }


def _safety(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "log_id": row["log_id"],
        "session_id": row["session_id"],
        "timestamp_utc": str(row["timestamp"]),
        "tech_id": row["tech_id"],
        "event_type": row["event_type"],
        "severity": row["severity"],
        "description": row["description"],
        "system_state": row["system_state"],
        "laser_state": row["laser_state"],
        "footpedal_state": _flag(row["footpedal_state"]),
        "smoothing_device_state": _flag(row["smoothing_device_state"]),
        "photodiode_voltage_v": row["photodiode_voltage_v"],
        "action_taken": row["action_taken"],
        "details": _details(row["details"]),
    }


# ------------------------------------------------------------------------------------------ writing


class _Folder:
    """The partial export folder: files written into it are flushed and remembered with their size and
    SHA-256 for the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict[str, Any]] = {}

    def _remember(self, path: Path, digest: str) -> None:
        self.files[path.relative_to(self.root).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest}

    def write_bytes(self, relative: str, content: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        self._remember(path, hashlib.sha256(content).hexdigest())
        return path

    def write_json(self, relative: str, value: object) -> Path:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"
        return self.write_bytes(relative, text.encode("utf-8"))

    def write_csv(self, relative: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(value) for value in row])
        return self.write_bytes(relative, buffer.getvalue().encode("utf-8"))

    def csv_stream(self, relative: str, header: Sequence[str]) -> _CsvStream:
        """A CSV file written row by row (for files too long to hold in memory); close it to finish it."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return _CsvStream(self, path, header)

    def copy_file(self, relative: str, source: Path, on_line: Callable[[bytes], None] | None = None) -> str:
        """Copy ``source`` here; return the SHA-256 of the copy. ``on_line`` sees each complete line."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open_session_file(source) as reader, path.open("xb") as writer:
            if on_line is None:
                while chunk := reader.read(_COPY_CHUNK):
                    digest.update(chunk)
                    writer.write(chunk)
            else:
                for line in reader:
                    digest.update(line)
                    writer.write(line)
                    if line.endswith(b"\n"):
                        on_line(line)
            writer.flush()
            os.fsync(writer.fileno())
        self._remember(path, digest.hexdigest())
        return digest.hexdigest()


class _CsvStream:
    """One CSV file of a :class:`_Folder`, written row by row, hashed as it goes."""

    def __init__(self, folder: _Folder, path: Path, header: Sequence[str]) -> None:
        self._folder = folder
        self._path = path
        self._handle = path.open("x", newline="", encoding="utf-8")
        self._digest = hashlib.sha256()
        self._buffer = io.StringIO(newline="")
        self._writer = csv.writer(self._buffer)
        self.row(header)

    def row(self, values: Sequence[object]) -> None:
        self._writer.writerow([_cell(value) for value in values])
        if self._buffer.tell() >= _COPY_CHUNK:
            self._flush()

    def _flush(self) -> None:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        self._handle.write(text)
        self._digest.update(text.encode("utf-8"))

    def close(self) -> None:
        """Write what is left, flush it to disk, and list the file in the manifest."""
        self._flush()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._folder._remember(self._path, self._digest.hexdigest())

    def abandon(self) -> None:
        """Close without finishing (the export failed; its folder is removed)."""
        with contextlib.suppress(OSError):
            self._handle.close()


@dataclass(slots=True)
class _Trace:
    """The samples of a telemetry file: time (s), commanded and measured power (W), as packed doubles (an
    hour at 100 Hz is 11 MB, not a Python object per number)."""

    t: array[float] = field(default_factory=lambda: array("d"))
    commanded: array[float] = field(default_factory=lambda: array("d"))
    measured_t: array[float] = field(default_factory=lambda: array("d"))
    measured: array[float] = field(default_factory=lambda: array("d"))


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value`` (a readable axis end)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10.0 * power


def trace_axes(trace_max_w: float | None, duration_s: float | None) -> tuple[float, float]:
    """The power axis' top (W) and the time axis' end (s) of a power trace picture."""
    top = _nice_ceiling(trace_max_w if trace_max_w is not None and trace_max_w > 0 else 1.0)
    end = duration_s if duration_s is not None and duration_s > 0 else 1.0
    return top, end


def pixel_of(t_s: float, watts: float, top_w: float, end_s: float) -> tuple[int, int]:
    """Where a sample at ``t_s`` seconds and ``watts`` is drawn in the power trace picture (x, y)."""
    left, upper, right, lower = PLOT_BOX
    x = left + round(min(max(t_s / end_s, 0.0), 1.0) * (right - left))
    y = lower - round(min(max(watts / top_w, 0.0), 1.0) * (lower - upper))
    return x, y


def _series_points(times: Sequence[float], values: Sequence[float], top: float, end: float) -> Any:
    """The polyline of one series: per pixel column its lowest and highest sample, so a short dip or spike
    stays visible however long the session."""
    import numpy as np

    left, upper, right, lower = PLOT_BOX
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    xs = left + np.rint(np.clip(t / end, 0.0, 1.0) * (right - left)).astype(np.int64)
    ys = lower - np.rint(np.clip(v / top, 0.0, 1.0) * (lower - upper)).astype(np.int64)
    columns = right - left + 1
    lowest = np.full(columns, np.iinfo(np.int64).max, dtype=np.int64)
    highest = np.full(columns, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lowest, xs - left, ys)
    np.maximum.at(highest, xs - left, ys)
    used = np.nonzero(highest >= lowest)[0]
    points = np.empty((used.size * 2, 2), dtype=np.int32)
    points[0::2, 0] = used + left
    points[0::2, 1] = highest[used]
    points[1::2, 0] = used + left
    points[1::2, 1] = lowest[used]
    return points.reshape(-1, 1, 2)


def draw_power_trace(trace: _Trace, title: str) -> tuple[bytes, dict[str, Any]]:
    """The power trace picture as PNG bytes, and its axes (for the summary): commanded power in blue, measured
    power in red, 0 to the axis' top in watts against seconds since the session opened."""
    import cv2
    import numpy as np

    powers = trace.commanded + trace.measured
    end_time = max(trace.t + trace.measured_t, default=0.0)
    top, end = trace_axes(max(powers, default=0.0), end_time)
    image = np.full((TRACE_HEIGHT, TRACE_WIDTH, 3), 255, dtype=np.uint8)
    left, upper, right, lower = PLOT_BOX
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(6):
        watts = top * k / 5
        _, y = pixel_of(0.0, watts, top, end)
        cv2.line(image, (left, y), (right, y), _GRID_BGR, 1)
        cv2.putText(image, f"{watts:g}", (8, y + 5), font, 0.45, _AXIS_BGR, 1, cv2.LINE_AA)
    step = _nice_ceiling(end / 5)
    for k in range(int(end / step + 1e-9) + 1):
        seconds = k * step
        x, _ = pixel_of(seconds, 0.0, top, end)
        cv2.line(image, (x, upper), (x, lower), _GRID_BGR, 1)
        cv2.putText(image, f"{seconds:g}", (x - 12, lower + 20), font, 0.45, _AXIS_BGR, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, upper), (right, lower), _AXIS_BGR, 1)
    cv2.putText(image, title, (left, 30), font, 0.6, _AXIS_BGR, 1, cv2.LINE_AA)
    cv2.putText(image, "W", (8, upper - 12), font, 0.45, _AXIS_BGR, 1, cv2.LINE_AA)
    cv2.putText(image, "time since the session opened, s", (left, lower + 45), font, 0.45, _AXIS_BGR, 1)
    cv2.putText(image, "commanded", (right - 230, 30), font, 0.5, COMMANDED_BGR, 1, cv2.LINE_AA)
    cv2.putText(image, "measured", (right - 100, 30), font, 0.5, MEASURED_BGR, 1, cv2.LINE_AA)
    if trace.t:
        line = _series_points(trace.t, trace.commanded, top, end)
        cv2.polylines(image, [line], False, COMMANDED_BGR, 1)
    if trace.measured_t:
        line = _series_points(trace.measured_t, trace.measured, top, end)
        cv2.polylines(image, [line], False, MEASURED_BGR, 1)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ExportError("the power trace picture could not be encoded")
    axes = {
        "file": "power_trace.png",
        "width_px": TRACE_WIDTH,
        "height_px": TRACE_HEIGHT,
        "plot_box_px": list(PLOT_BOX),
        "power_axis_top_w": top,
        "time_axis_end_s": end,
        "commanded_rgb": list(reversed(COMMANDED_BGR)),
        "measured_rgb": list(reversed(MEASURED_BGR)),
        "samples": len(trace.t),
    }
    return encoded.tobytes(), axes


def _summary(record: _SessionRecord, identified: bool) -> dict[str, Any]:
    s = record.session
    summary: dict[str, Any] = {
        "session_id": s["session_id"],
        "session_uid": s["session_uid"],
        "subject_code": record.subject.get("subject_code"),
        "status": s["status"],
        "start_time_utc": None if s["start_time"] is None else str(s["start_time"]),
        "end_time_utc": None if s["end_time"] is None else str(s["end_time"]),
        "duration_seconds": s["duration_seconds"],
        "abort_reason": s["abort_reason"],
        "treatment_site": s["treatment_site"],
        "protocol_id": s["protocol_id"],
        "protocol_name": s["protocol_name"],
        "technician": record.technician.get("username"),
        "laser_on_time_s": s["total_laser_on_time_seconds"],
        "avg_power_w": s["avg_power_watts"],
        "max_power_w": s["max_power_watts"],
        "energy_j": s["total_energy_joules"],
        "event_count": len(record.events),
        "safety_event_count": len(record.safety),
        "snapshot_count": len(record.snapshots),
        "telemetry_line_count": s["telemetry_line_count"],
        "telemetry_sha256": s["telemetry_sha256"],
        "telemetry_copied": False,
        "telemetry_matches_record": None,
        "protocol_snapshot": bool(s["protocol_data_snapshot"]),
    }
    if identified:
        summary.update(
            {
                "subject_date_of_birth": None
                if record.subject.get("date_of_birth") is None
                else str(record.subject["date_of_birth"]),
                "subject_gender": record.subject.get("gender"),
                "subject_notes": record.subject.get("notes"),
                "technician_full_name": record.technician.get("full_name"),
                "treatment_notes": s["treatment_notes"],
                "post_treatment_notes": s["post_treatment_notes"],
            }
        )
    return summary


def _summary_fields(identified: bool) -> tuple[str, ...]:
    return SUMMARY_FIELDS if identified else SUMMARY_FIELDS[: -len(IDENTIFYING_FIELDS)]


def _write_session(
    folder: _Folder,
    prefix: str,
    data_dir: DataDir,
    record: _SessionRecord,
    formats: Sequence[Format],
    identified: bool,
) -> dict[str, Any]:
    """Write one session's files under ``prefix`` in ``folder``; return its summary (as written)."""
    summary = _summary(record, identified)
    session = record.session
    events = [_event(row) for row in record.events]
    safety = [_safety(row) for row in record.safety]
    trace = _Trace()
    problems: list[str] = []

    stored = session["telemetry_path"]
    source = _resolve(data_dir, str(stored)) if stored else None
    if source is not None and source.is_file():
        number = 0
        stream = folder.csv_stream(f"{prefix}telemetry.csv", TELEMETRY_KEYS) if "csv" in formats else None

        def sample(line: bytes) -> None:
            nonlocal number
            number += 1
            try:
                decoded = decode_sample(line, f"telemetry line {number}")
            except TelemetryError as exc:
                if len(problems) < 5:
                    problems.append(one_line(exc))
                return
            trace.t.append(decoded.t)
            trace.commanded.append(decoded.cmd_w)
            if decoded.p_w is not None:
                trace.measured_t.append(decoded.t)
                trace.measured.append(decoded.p_w)
            if stream is not None:
                encoded = decoded.encode()
                stream.row([encoded[key] for key in TELEMETRY_KEYS])

        try:
            digest = folder.copy_file(f"{prefix}telemetry.jsonl", source, sample)
            if stream is not None:
                stream.close()
        except BaseException:
            if stream is not None:
                stream.abandon()
            raise
        summary["telemetry_copied"] = True
        matches = session["telemetry_sha256"] == digest and session["telemetry_line_count"] in (None, number)
        summary["telemetry_matches_record"] = matches if session["telemetry_sha256"] is not None else None
    elif stored:
        problems.append("the telemetry file recorded for this session is missing")
    if problems:
        summary["telemetry_problems"] = problems
    png, axes = draw_power_trace(trace, f"Session {session['session_id']}: laser power")
    folder.write_bytes(f"{prefix}power_trace.png", png)
    summary["power_trace"] = axes
    if session["protocol_data_snapshot"]:
        folder.write_bytes(f"{prefix}protocol.json", str(session["protocol_data_snapshot"]).encode("utf-8"))
    copied: list[dict[str, Any]] = []
    for snapshot in record.snapshots:
        entry: dict[str, Any] = {
            "file": None,
            "taken_utc": snapshot.timestamp,
            "resolution": snapshot.resolution,
        }
        if snapshot.path.is_file():
            name = snapshot.path.name
            folder.copy_file(f"{prefix}snapshots/{name}", snapshot.path)
            entry["file"] = f"snapshots/{name}"
        else:
            entry["missing"] = snapshot.path.name
        copied.append(entry)
    summary["snapshots"] = copied
    if "json" in formats:
        folder.write_json(f"{prefix}summary.json", summary)
        folder.write_json(f"{prefix}events.json", events)
        folder.write_json(f"{prefix}safety_log.json", safety)
    if "csv" in formats:
        fields = _summary_fields(identified)
        folder.write_csv(f"{prefix}summary.csv", fields, [[summary.get(name) for name in fields]])
        folder.write_csv(f"{prefix}events.csv", EVENT_FIELDS, [[e[n] for n in EVENT_FIELDS] for e in events])
        folder.write_csv(
            f"{prefix}safety_log.csv", SAFETY_FIELDS, [[r[n] for n in SAFETY_FIELDS] for r in safety]
        )
    return summary


# ------------------------------------------------------------------------------------------ the folder


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _failure(exc: OSError, what: str) -> ExportError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "the disk is full" if full else (exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename and not full else ""
    return ExportError(f"{what}: {reason}{where}; nothing was exported")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def default_target(data_dir: DataDir, name: str) -> Path:
    """A new folder ``name`` under ``exports/`` (``name_1``, ``name_2``, ... when taken)."""
    exports = data_dir.root / "exports"
    for suffix in range(1000):
        target = exports / (name if suffix == 0 else f"{name}_{suffix}")
        if not _exists(target):
            return target
    raise ExportError(f"too many exports named {name}*")


def check_target(target: Path) -> None:
    """Refuse a target that exists already (an export never overwrites) or whose name is hidden."""
    if not target.name or target.name.startswith("."):
        raise ExportError(f"the export folder's name {target.name!r} must be a visible name")
    if _exists(target):
        raise ExportError(f"{target} already exists: an export never overwrites; choose another folder")


def _publish(partial: Path, target: Path) -> None:
    """Move the finished partial folder to ``target``: the name is taken with ``mkdir`` (which fails when
    anything is there), and the complete folder is renamed over that empty one in one step."""
    try:
        target.mkdir()
    except FileExistsError:
        raise ExportError(
            f"{target} already exists: an export never overwrites; choose another folder"
        ) from None
    try:
        partial.rename(target)
    except OSError:
        with contextlib.suppress(OSError):
            target.rmdir()
        raise
    _fsync_dir(target.parent)


def _run_export(
    data_dir: DataDir,
    target: Path,
    build: Callable[[_Folder], tuple[list[int], list[int], dict[str, Any]]],
    *,
    identified: bool,
    formats: Sequence[Format],
    user: str | None,
    terminal: str | None,
    now: datetime,
    origin: Mapping[str, object] | None = None,
) -> ExportResult:
    check_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _failure(exc, f"cannot create {target.parent}") from exc
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        partial.mkdir()
    except FileExistsError:
        raise ExportError(f"an export to {target} is being written already") from None
    except OSError as exc:
        raise _failure(exc, f"cannot write in {target.parent}") from exc
    try:
        folder = _Folder(partial)
        sessions, skipped, extra = build(folder)
        manifest = {
            "export": "TOSCA research export",
            "created_utc": now.isoformat(sep=" ", timespec="seconds"),
            "identified": identified,
            "de_identification": (
                "identified: subject demographics, technicians' full names and free-text notes included"
                if identified
                else "subject codes only: no subject demographics or notes, technicians by user name, "
                "no free-text treatment notes"
            ),
            "formats": list(formats),
            "sessions": sessions,
            "sessions_left_out_still_open": skipped,
            **extra,
            "files": dict(sorted(folder.files.items())),
        }
        folder.write_json("manifest.json", manifest)
        _fsync_dir(partial)
        _publish(partial, target)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _failure(exc, f"could not write the export to {target}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        record_action(
            data_dir.db_path,
            AUDIT_ACTION,
            "success",
            user=user,
            terminal=terminal,
            details={
                **(origin or {}),
                "folder": str(target.absolute()),
                "sessions": sessions,
                "identified": identified,
                "formats": list(formats),
            },
        )
    except StorageError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ExportError(
            f"the export could not be recorded in the audit trail, so it was removed: {exc}"
        ) from exc
    return ExportResult(
        folder=target,
        sessions=tuple(sessions),
        skipped=tuple(skipped),
        files=len(folder.files),
        identified=identified,
    )


def _formats(formats: Sequence[str] | None) -> tuple[Format, ...]:
    if not formats:
        return FORMATS
    chosen: list[Format] = []
    for name in formats:
        if name not in FORMATS:
            raise ExportError(f"unknown format {name!r}: csv or json")
        wanted: Format = "csv" if name == "csv" else "json"
        if wanted not in chosen:
            chosen.append(wanted)
    return tuple(chosen)


def _connect(data_dir: DataDir) -> sqlite3.Connection:
    connection = open_read_only(data_dir.db_path)
    connection.isolation_level = None  # transactions are begun and ended explicitly
    return connection


def export_session(
    data_dir: DataDir,
    session_id: int,
    *,
    target: Path | None = None,
    formats: Sequence[str] | None = None,
    identified: bool = False,
    user: str | None = None,
    terminal: str | None = None,
    now: datetime | None = None,
    origin: Mapping[str, object] | None = None,
) -> ExportResult:
    """Export one ended session to ``target`` (default: a new folder under ``exports/``).

    ``user`` is the logged-in person the audit row names (None: the operating system's account, for the
    command line); ``origin`` is added to its details (a remote console's). Raises :class:`ExportError`
    (unknown or open session, target exists, a disk error)."""
    moment = now or utc_now()
    chosen = _formats(formats)
    if isinstance(session_id, bool) or session_id < 1:
        raise ExportError(f"no session with id {session_id}")
    try:
        connection = _connect(data_dir)
        try:
            record = _read_session(connection, data_dir, session_id)
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ExportError(f"could not read session {session_id}: {exc}") from exc
    if record.session["status"] in OPEN_STATUSES:
        raise ExportError(f"session {session_id} is still open; export it once it has ended")
    chosen_target = target or default_target(data_dir, f"session_{session_id}_{moment:%Y%m%d_%H%M%S}")

    def build(folder: _Folder) -> tuple[list[int], list[int], dict[str, Any]]:
        _write_session(folder, "", data_dir, record, chosen, identified)
        return [session_id], [], {}

    return _run_export(
        data_dir,
        chosen_target,
        build,
        identified=identified,
        formats=chosen,
        user=user,
        terminal=terminal,
        now=moment,
        origin=origin,
    )


def export_range(
    data_dir: DataDir,
    since: datetime,
    until: datetime,
    *,
    target: Path | None = None,
    formats: Sequence[str] | None = None,
    identified: bool = False,
    user: str | None = None,
    terminal: str | None = None,
    now: datetime | None = None,
    origin: Mapping[str, object] | None = None,
) -> ExportResult:
    """Export every ended session that started at or after ``since`` and before ``until`` (naive UTC), each
    in ``session_<id>/``, with ``sessions.json``/``.csv`` listing their summaries. Refused (ExportError) for
    a range the wrong way round or with no ended session in it."""
    moment = now or utc_now()
    chosen = _formats(formats)
    if since >= until:
        raise ExportError("the start of the time range must be before its end")
    try:
        connection = _connect(data_dir)
        try:
            connection.execute("BEGIN")
            try:
                found = _sessions_in_range(connection, since, until)
            finally:
                connection.execute("COMMIT")
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ExportError(f"could not read the sessions: {exc}") from exc
    ended = [sid for sid, status in found if status not in OPEN_STATUSES]
    skipped = [sid for sid, status in found if status in OPEN_STATUSES]
    span = f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M}"
    if not ended:
        still = f" ({len(skipped)} still open)" if skipped else ""
        raise ExportError(f"no ended session started from {span}{still}; nothing to export")
    chosen_target = target or default_target(
        data_dir, f"sessions_{since:%Y%m%d}_{until:%Y%m%d}_{moment:%Y%m%d_%H%M%S}"
    )

    def build(folder: _Folder) -> tuple[list[int], list[int], dict[str, Any]]:
        summaries: list[dict[str, Any]] = []
        for session_id in ended:
            # One short read per session: nothing is held while its files are written.
            try:
                connection = _connect(data_dir)
                try:
                    record = _read_session(connection, data_dir, session_id)
                finally:
                    connection.close()
            except sqlite3.Error as exc:
                raise ExportError(f"could not read session {session_id}: {exc}") from exc
            summaries.append(
                _write_session(folder, f"session_{session_id}/", data_dir, record, chosen, identified)
            )
        fields = _summary_fields(identified)
        if "json" in chosen:
            folder.write_json("sessions.json", summaries)
        if "csv" in chosen:
            folder.write_csv("sessions.csv", fields, [[s.get(name) for name in fields] for s in summaries])
        extra = {"range_utc": {"since": str(since), "until": str(until)}}
        return ended, skipped, extra

    return _run_export(
        data_dir,
        chosen_target,
        build,
        identified=identified,
        formats=chosen,
        user=user,
        terminal=terminal,
        now=moment,
        origin=origin,
    )


def share_with_records_group(folder: Path, db_path: Path) -> None:
    """Make ``folder`` (an export, or an export's single file), and the ``exports/`` folder holding it,
    readable by the group that may read the records database ``db_path`` and by nobody else: folders 0750,
    files 0640, each given the database's group. Symbolic links and special files are left alone (an export
    holds neither)."""
    gid = db_path.stat().st_gid
    targets: list[tuple[Path, int]] = [(folder.parent, 0o750), (folder, 0o750 if folder.is_dir() else 0o640)]
    for base, dirs, files in os.walk(folder):
        here = Path(base)
        targets.extend((here / name, 0o750) for name in dirs)
        targets.extend((here / name, 0o640) for name in files)
    try:
        for path, mode in targets:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode) or not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                continue
            if info.st_gid != gid:
                os.chown(path, -1, gid, follow_symlinks=False)
            if stat.S_IMODE(info.st_mode) != mode:
                path.chmod(mode)
    except OSError as exc:
        raise ExportError(
            f"{folder} was written, but cannot be made readable by the records group: {exc.strerror or exc}"
        ) from exc


__all__ = [
    "AUDIT_ACTION",
    "COMMANDED_BGR",
    "FORMATS",
    "IDENTIFYING_FIELDS",
    "MEASURED_BGR",
    "PLOT_BOX",
    "ExportError",
    "ExportResult",
    "check_target",
    "default_target",
    "draw_power_trace",
    "export_range",
    "export_session",
    "pixel_of",
    "share_with_records_group",
    "trace_axes",
]
