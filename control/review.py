"""The review of one treatment session: its summary, its events in time order and its power trace.

:func:`load_review` gathers, for one session id, what the end-of-session screen (and any later review of the
record) shows:

* the **summary**: exactly what :meth:`control.sessions.SessionService.summary_of` returns (nothing is
  recomputed), as a :class:`ReviewSummary`, plus what the protocol snapshot stored with the session says was
  planned (the expected energy if the plan is followed exactly, and the number of steps) and how many steps
  the treatment events show as completed;
* the **events**: the session's ``treatment_events`` and ``safety_log`` rows merged in time order, with the
  session's opening and closing taken from its own row, each as a :class:`ReviewEvent` (when, what, how
  serious, a one-line description, who, and the row's stored details JSON as readable text: an operator's
  action says what it was, by whom and why, e.g. "power override 5.00 W -> 4.50 W in step 1 by tina: subject
  uncomfortable");
* the **power trace**: commanded and measured laser power over time, read from the session's telemetry file
  (JSON lines written by :class:`control.recorder.Recorder`, each decoded by
  :func:`storage.telemetry_line.decode_sample`, the writer's own schema: ``t``, seconds since the session
  opened, ``cmd_w``, the commanded power in watts, and ``p_w``, the measured power in watts or ``null`` when
  the photodiode had no calibrated reading, among others), reduced to at most ``max_points`` points per
  series by keeping the first and last sample and the lowest and highest sample of each time bucket, so a
  short dip or spike stays visible.

The telemetry file is checked against the session row before it is shown: its path must be recorded, the
file must exist and read back as JSON objects, and its number of complete lines and SHA-256 must equal the
ones recorded at the end of the session. A file that is missing or damaged gives an empty trace; a file that
reads back but disagrees with the record is shown as found. Either way :attr:`SessionReviewData.trace_problem`
says what is wrong, and the file is never changed. File reading runs in a worker thread.

Times are naive UTC; offsets and trace times are in seconds, powers in watts, energies in joules.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.protocols import ProtocolError, compile_plan, parse_protocol
from control.sessions import OPEN_STATUSES, SessionRefused, SessionService
from storage import (
    DataDir,
    SafetyLogRepository,
    SessionsRepository,
    TelemetryError,
    TreatmentEvent,
    UsersRepository,
    scan_telemetry,
)
from storage.crypto_files import open_session_file
from storage.telemetry_line import decode_sample

#: Default most points kept per power series.
DEFAULT_MAX_POINTS: Final = 600
#: Fewest points a series may be reduced to (its first and last sample, and one bucket's lowest and highest).
MIN_MAX_POINTS: Final = 4
#: Who a ``safety_log`` row without a technician is attributed to.
SYSTEM_ACTOR: Final = "controller"
#: Severity of each treatment event type that is not plain information.
_EVENT_SEVERITY: Final = {"safety_trigger": "critical", "safety_warning": "warning"}
#: Words for each ``treatment_events.event_type``.
_EVENT_WORDS: Final = {
    "laser_on": "laser on",
    "laser_off": "laser off",
    "power_set": "power set",
    "power_change": "power changed",
    "ring_size_set": "ring size set",
    "ring_size_change": "ring size changed",
    "protocol_step_start": "step started",
    "protocol_step_end": "step ended",
    "pause": "paused",
    "resume": "resumed",
    "image_captured": "image captured",
    "safety_warning": "safety warning",
    "safety_trigger": "safety trigger: laser shut down",
    "user_action": "operator action",
}

EventSource = Literal["session", "treatment", "safety"]


@dataclass(frozen=True, slots=True)
class ReviewSummary:
    """A session's end-of-session summary, exactly as :meth:`SessionService.summary_of` gives it.

    Times are naive UTC; ``duration_seconds`` whole seconds; ``laser_on_time_s`` seconds; ``avg_power_w`` and
    ``max_power_w`` watts (None if the laser never emitted or the session is still open); ``energy_j``
    joules; ``event_count`` counts treatment events and ``safety_event_count`` ``safety_log`` rows;
    ``session_uid`` names the session's folder (None for sessions recorded before it existed).
    """

    session_id: int
    status: str
    subject_code: str | None
    technician: str | None
    protocol_name: str | None
    start_time: datetime
    end_time: datetime | None
    duration_seconds: int | None
    abort_reason: str | None
    treatment_site: str | None
    laser_on_time_s: float | None
    avg_power_w: float | None
    max_power_w: float | None
    energy_j: float | None
    treatment_notes: str | None
    post_treatment_notes: str | None
    event_count: int
    safety_event_count: int
    folder: str | None
    session_uid: str | None
    telemetry_path: str | None
    telemetry_line_count: int | None
    telemetry_sha256: str | None
    video_path: str | None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ReviewSummary:
        """Build it from :meth:`SessionService.summary_of`'s mapping (every field must be there).

        Raises:
            ValueError: naming the fields the mapping lacks.
        """
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"the session summary lacks {', '.join(missing)}")
        return cls(**{name: values[name] for name in names})

    @property
    def is_open(self) -> bool:
        """True while the session is still in progress or paused."""
        return self.status in OPEN_STATUSES


@dataclass(frozen=True, slots=True)
class ReviewEvent:
    """One line of a session's history.

    ``at`` is naive UTC; ``offset_s`` is seconds since the session started (negative for a row written just
    before the session row's start time); ``source`` says which record it comes from (the session row, a
    treatment event or a safety log row); ``kind`` is the event type as stored; ``severity`` is
    info/warning/critical/emergency; ``who`` is a username: the session's technician for the session's own
    lines and its treatment events, the user a safety row names, or ``controller`` for a safety row that
    names none. ``details`` is the row's stored details JSON as readable text (``reason: footpedal
    released; protocol step: 1``), "" when it has none; for a row whose JSON does not parse, the stored text
    as it is.
    """

    at: datetime
    offset_s: float
    source: EventSource
    kind: str
    severity: str
    description: str
    who: str
    details: str = ""


@dataclass(frozen=True, slots=True)
class PowerTrace:
    """Commanded and measured laser power over time, each reduced to at most the requested points.

    Points are ``(t_s, watts)`` with ``t_s`` seconds since the session opened, in time order.
    ``sample_count`` is how many telemetry lines the trace was made from (0 for an empty trace).
    """

    commanded: tuple[tuple[float, float], ...] = ()
    measured: tuple[tuple[float, float], ...] = ()
    sample_count: int = 0

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to plot."""
        return not self.commanded and not self.measured

    @property
    def time_range_s(self) -> tuple[float, float] | None:
        """First and last time of either series, seconds; None for an empty trace."""
        times = [p[0] for series in (self.commanded, self.measured) for p in (series[:1] + series[-1:])]
        if not times:
            return None
        return min(times), max(times)

    @property
    def max_power_w(self) -> float | None:
        """Highest power of either series, watts; None for an empty trace."""
        powers = [p[1] for series in (self.commanded, self.measured) for p in series]
        return max(powers) if powers else None


@dataclass(frozen=True, slots=True)
class SessionReviewData:
    """Everything the review of one session shows.

    ``expected_energy_j`` (joules) and ``steps_planned`` come from the protocol snapshot stored with the
    session (None when it has none or it no longer parses); ``steps_completed`` counts the
    ``protocol_step_end`` treatment events. ``trace_problem`` is None when the telemetry file was found,
    read and matches the session row; otherwise it says, in one sentence, what is wrong.
    """

    summary: ReviewSummary
    expected_energy_j: float | None
    steps_planned: int | None
    steps_completed: int
    events: tuple[ReviewEvent, ...]
    trace: PowerTrace
    trace_problem: str | None


# ---- reducing a series


def downsample_min_max(
    points: Sequence[tuple[float, float]], max_points: int = DEFAULT_MAX_POINTS
) -> list[tuple[float, float]]:
    """Reduce ``(t, value)`` points in time order to at most ``max_points``, keeping extremes and ends.

    The first and the last point are always kept (so the time span stays the same); the time span is cut
    into ``(max_points - 2) // 2`` equal buckets and each bucket keeps its lowest and its highest point
    (one point when they are the same sample), in time order, so a dip or a spike shorter than a bucket
    still shows. Points already within the limit are returned as they are. Pure arithmetic.

    Raises:
        ValueError: for ``max_points`` below :data:`MIN_MAX_POINTS`.
    """
    _check_max_points(max_points)
    if len(points) <= max_points:
        return list(points)
    buckets = (max_points - 2) // 2
    first = points[0][0]
    span = points[-1][0] - first
    lowest: list[int | None] = [None] * buckets
    highest: list[int | None] = [None] * buckets
    for index, (t, value) in enumerate(points):
        slot = 0 if span <= 0 else min(buckets - 1, max(0, int((t - first) / span * buckets)))
        low = lowest[slot]
        if low is None or value < points[low][1]:
            lowest[slot] = index
        high = highest[slot]
        if high is None or value > points[high][1]:
            highest[slot] = index
    kept = {0, len(points) - 1}
    kept.update(i for i in lowest if i is not None)
    kept.update(i for i in highest if i is not None)
    return [points[i] for i in sorted(kept)]


def _check_max_points(max_points: int) -> None:
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < MIN_MAX_POINTS:
        raise ValueError(f"max_points must be a whole number >= {MIN_MAX_POINTS}; got {max_points!r}")


# ---- the telemetry file


@dataclass(frozen=True, slots=True)
class _TraceResult:
    trace: PowerTrace
    problem: str | None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _parse_samples(
    path: Path, line_count: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The commanded and measured series of the first ``line_count`` (complete) lines of ``path``.

    Raises:
        TelemetryError: naming the first line that does not follow the telemetry line's schema
            (:mod:`storage.telemetry_line`) and what is wrong with it.
        OSError: when the file cannot be read.
    """
    commanded: list[tuple[float, float]] = []
    measured: list[tuple[float, float]] = []
    with open_session_file(path, allow_unfinished=True) as handle:
        for number, raw in enumerate(handle, start=1):
            if number > line_count:
                break
            sample = decode_sample(raw, f"{path.name} line {number}")
            commanded.append((sample.t, sample.cmd_w))
            if sample.p_w is not None:
                measured.append((sample.t, sample.p_w))
    return commanded, measured


def _read_trace(
    path: Path, recorded_lines: int | None, recorded_sha256: str | None, max_points: int
) -> _TraceResult:
    """Check and read one telemetry file (blocking: run it in a worker thread)."""
    if not path.exists():
        return _TraceResult(PowerTrace(), f"the telemetry file {path} is missing")
    try:
        found = scan_telemetry(path, parse=False)
        commanded, measured = _parse_samples(path, found.line_count)
    except (TelemetryError, OSError) as exc:
        reason = str(exc) if isinstance(exc, TelemetryError) else (exc.strerror or str(exc))
        return _TraceResult(PowerTrace(), f"the telemetry file {path} is damaged: {reason}")
    disagreements: list[str] = []
    if recorded_lines is not None and found.line_count != recorded_lines:
        disagreements.append(f"it has {found.line_count} lines where the record says {recorded_lines}")
    if recorded_sha256 is not None and found.sha256 != recorded_sha256:
        disagreements.append("its SHA-256 differs from the one recorded")
    if found.partial_tail_bytes:
        disagreements.append(f"it ends with {found.partial_tail_bytes} bytes of an unfinished line")
    trace = PowerTrace(
        commanded=tuple(downsample_min_max(commanded, max_points)),
        measured=tuple(downsample_min_max(measured, max_points)),
        sample_count=found.line_count,
    )
    problem = None
    if disagreements:
        problem = (
            f"the telemetry file {path} does not match the session record ("
            + "; ".join(disagreements)
            + "); shown as found"
        )
    return _TraceResult(trace, problem)


def _telemetry_file(data_dir: DataDir, recorded: str) -> Path:
    """The recorded telemetry path; a relative one is taken as relative to the data directory."""
    path = Path(recorded)
    return path if path.is_absolute() else data_dir.root / path


# ---- events


def _watts(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} W"


@dataclass(frozen=True, slots=True)
class _TreatmentRow:
    """One ``treatment_events`` row as the review reads it (powers W, ring mm, details the stored JSON)."""

    timestamp: datetime
    event_type: str
    laser_power_commanded_watts: float | None
    laser_power_actual_watts: float | None
    ring_size_mm: float | None
    event_details: str | None


def _parse_details(stored: str | Mapping[str, Any] | None) -> dict[str, Any] | str | None:
    """The stored details JSON as a dict; the text itself when it is not a JSON object; None when empty. A
    mapping (a safety record's details) is taken as it is."""
    if isinstance(stored, Mapping):
        return dict(stored) or None
    if stored is None or not stored.strip():
        return None
    try:
        value = json.loads(stored)
    except ValueError:
        return stored
    return value if isinstance(value, dict) else stored


def _detail_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_detail_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_detail_value(v) for v in value) + "]"
    return "-" if value is None else str(value)


def details_text(stored: str | Mapping[str, Any] | None) -> str:
    """A row's stored details JSON as one readable line: ``key: value`` pairs joined by ``; `` (underscores
    read as spaces, numbers without trailing zeros, true/false as yes/no); text that is not a JSON object is
    returned as stored; "" for none. The ``interlocks`` map is left out (every event has it; the safety log
    says which term failed)."""
    parsed = _parse_details(stored)
    if parsed is None:
        return ""
    if isinstance(parsed, str):
        return parsed
    return "; ".join(
        f"{key.replace('_', ' ')}: {_detail_value(value)}"
        for key, value in parsed.items()
        if key != "interlocks"
    )


def _action_description(details: Mapping[str, Any]) -> str:
    """What an operator's action (``user_action``) was, by whom and why, from its details."""
    action = str(details.get("action", "action"))
    by = details.get("by")
    who = f" by {by}" if by else ""
    reason = details.get("reason")
    why = f": {reason}" if reason else ""
    if action == "protocol_power_override":
        old = _number(details.get("old_value"))
        new = _number(details.get("new_value"))
        step = details.get("protocol_step")
        where = f" in step {step}" if step is not None else ""
        return f"power override {_watts(old)} -> {_watts(new)}{where}{who}{why}"
    if action == "abort":
        return f"abort{who}{why}"
    if action == "arm":
        return f"armed (key control){who}{why}"
    return f"{action.replace('_', ' ')}{who}{why}"


def _treatment_description(row: _TreatmentRow, step: int | None) -> str:
    details = _parse_details(row.event_details)
    if row.event_type == "user_action" and isinstance(details, dict):
        words = _action_description(details)
    else:
        words = _EVENT_WORDS.get(row.event_type, row.event_type.replace("_", " "))
        reason = details.get("reason") if isinstance(details, dict) else None
        if reason and row.event_type in ("pause", "resume", "laser_on", "laser_off"):
            words += f" ({reason})"
    if step is not None:
        words = f"step {step} {words.removeprefix('step ')}"
    parts: list[str] = []
    if row.laser_power_commanded_watts is not None:
        parts.append(f"commanded {_watts(row.laser_power_commanded_watts)}")
    if row.laser_power_actual_watts is not None:
        parts.append(f"measured {_watts(row.laser_power_actual_watts)}")
    if row.ring_size_mm is not None and row.event_type.startswith(("ring_size", "protocol_step")):
        parts.append(f"ring {row.ring_size_mm:.2f} mm")
    return words + (": " + ", ".join(parts) if parts else "")


def _action_suffix(action_taken: str | None) -> str:
    """What the system did, in brackets after a safety event's description; nothing when it did nothing
    (the supervisor writes ``none`` or ``none (idle)`` then)."""
    if not action_taken or action_taken.split(" ", 1)[0] == "none":
        return ""
    return f" ({action_taken})"


def _treatment_events(rows: Iterable[_TreatmentRow], start: datetime, who: str) -> list[ReviewEvent]:
    """Review lines of a session's treatment events; steps are numbered in the order they started (the
    engine runs a protocol's steps once each, in order)."""
    events: list[ReviewEvent] = []
    started = 0
    running: int | None = None
    for row in rows:
        step: int | None = None
        if row.event_type == "protocol_step_start":
            started += 1
            running = step = started
        elif row.event_type == "protocol_step_end":
            step = running
        events.append(
            ReviewEvent(
                at=row.timestamp,
                offset_s=(row.timestamp - start).total_seconds(),
                source="treatment",
                kind=row.event_type,
                severity=_EVENT_SEVERITY.get(row.event_type, "info"),
                description=_treatment_description(row, step),
                who=who,
                details=details_text(row.event_details),
            )
        )
    return events


def _session_events(summary: ReviewSummary, who: str) -> list[ReviewEvent]:
    """The opening and (when finished) the closing of the session, from its own row."""
    opened = f"session opened: {summary.subject_code or 'unknown subject'}, {summary.protocol_name or '-'}"
    lines = [
        ReviewEvent(summary.start_time, 0.0, "session", "session_open", "info", opened, who),
    ]
    if summary.end_time is not None and not summary.is_open:
        text = f"session {summary.status}"
        if summary.abort_reason:
            text += f": {summary.abort_reason}"
        severity = "warning" if summary.status == "aborted" else "info"
        offset = (summary.end_time - summary.start_time).total_seconds()
        lines.append(
            ReviewEvent(summary.end_time, offset, "session", f"session_{summary.status}", severity, text, who)
        )
    return lines


_SOURCE_ORDER: Final = {"session": 0, "safety": 1, "treatment": 2}


def _merge(*groups: list[ReviewEvent]) -> tuple[ReviewEvent, ...]:
    """All events in time order; at equal times the session's opening first, then safety rows, then
    treatment events, each group keeping its stored order (closing lines of a session sort last)."""
    keyed: list[tuple[datetime, int, int, ReviewEvent]] = []
    for group in groups:
        for position, event in enumerate(group):
            rank = _SOURCE_ORDER[event.source]
            if event.source == "session" and event.kind != "session_open":
                rank = 3
            keyed.append((event.at, rank, position, event))
    keyed.sort(key=lambda item: item[:3])
    return tuple(item[3] for item in keyed)


# ---- loading


def _plan_facts(snapshot: str | None) -> tuple[float | None, int | None]:
    """Expected energy (J) and number of steps of the stored protocol snapshot, or (None, None)."""
    if not snapshot:
        return None, None
    try:
        plan = compile_plan(parse_protocol(snapshot))
    except (ProtocolError, ValueError):
        return None, None
    return plan.expected_energy_j, len(plan.steps)


async def load_review(
    sessions: async_sessionmaker[AsyncSession],
    data_dir: DataDir,
    session_id: int,
    max_points: int = DEFAULT_MAX_POINTS,
) -> SessionReviewData:
    """Load the review of session ``session_id`` (see the module documentation).

    Args:
        sessions: the session maker of the records database.
        data_dir: the data directory (relative telemetry paths are taken under it).
        session_id: the session to review.
        max_points: most points kept per power series (at least :data:`MIN_MAX_POINTS`).

    Raises:
        SessionRefused: for a session id that is not a positive whole number or names no session.
        ValueError: for ``max_points`` below :data:`MIN_MAX_POINTS`.
    """
    _check_max_points(max_points)
    summary = ReviewSummary.from_mapping(await SessionService(sessions, data_dir).summary_of(session_id))
    async with sessions() as db:
        row = await SessionsRepository(db).get_by_id(session_id)
        if row is None:  # removed between the two reads: the records are append-only, so only by hand
            raise SessionRefused(f"no session with id {session_id}")
        snapshot = row.protocol_data_snapshot
        technician = await UsersRepository(db).get_by_id(row.tech_id)
        treatment_rows = [
            _TreatmentRow(*r)
            for r in await db.execute(
                select(
                    TreatmentEvent.timestamp,
                    TreatmentEvent.event_type,
                    TreatmentEvent.laser_power_commanded_watts,
                    TreatmentEvent.laser_power_actual_watts,
                    TreatmentEvent.ring_size_mm,
                    TreatmentEvent.event_details,
                )
                .where(TreatmentEvent.session_id == session_id)
                .order_by(TreatmentEvent.time_offset_ms, TreatmentEvent.event_id)
            )
        ]
        safety_rows = await SafetyLogRepository(db).for_session(session_id)
        names: dict[int, str] = {}
        for tech_id in {r.tech_id for r in safety_rows if r.tech_id is not None}:
            user = await UsersRepository(db).get_by_id(tech_id)
            names[tech_id] = user.username if user is not None else f"user {tech_id}"
    who = technician.username if technician is not None else f"user {row.tech_id}"
    start = summary.start_time
    safety = [
        ReviewEvent(
            at=at,
            offset_s=(at - start).total_seconds(),
            source="safety",
            kind=r.event_type,
            severity=r.severity,
            description=r.description + _action_suffix(r.action_taken),
            who=names.get(r.tech_id, SYSTEM_ACTOR) if r.tech_id is not None else SYSTEM_ACTOR,
            details=details_text(r.details),
        )
        for r in safety_rows
        if (at := r.timestamp) is not None  # always: the column is NOT NULL
    ]
    treatment = _treatment_events(treatment_rows, start, who)
    events = _merge(_session_events(summary, who), safety, treatment)
    expected_energy_j, steps_planned = _plan_facts(snapshot)
    steps_completed = sum(1 for r in treatment_rows if r.event_type == "protocol_step_end")

    if summary.telemetry_path is None:
        still = " yet: the session is still open" if summary.is_open else ""
        result = _TraceResult(PowerTrace(), f"no telemetry file is recorded for this session{still}")
    else:
        result = await asyncio.to_thread(
            _read_trace,
            _telemetry_file(data_dir, summary.telemetry_path),
            summary.telemetry_line_count,
            summary.telemetry_sha256,
            max_points,
        )
    return SessionReviewData(
        summary=summary,
        expected_energy_j=expected_energy_j,
        steps_planned=steps_planned,
        steps_completed=steps_completed,
        events=events,
        trace=result.trace,
        trace_problem=result.problem,
    )


__all__ = [
    "DEFAULT_MAX_POINTS",
    "MIN_MAX_POINTS",
    "SYSTEM_ACTOR",
    "EventSource",
    "PowerTrace",
    "ReviewEvent",
    "ReviewSummary",
    "SessionReviewData",
    "details_text",
    "downsample_min_max",
    "load_review",
]
