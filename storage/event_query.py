"""Reading the safety log and the treatment events together: filtered, newest first, one page at a time.

Used by the engineer's safety log and event browser (``tui/screens/safety_events.py``). One page merges the
rows of two append-only tables, ``safety_log`` and ``treatment_events``, in time order. Pages are found by
keyset pagination on ``(timestamp, source, id)``: each table is read on its own timestamp index from just
after the last row shown (at most one page plus one row of each), the two are merged and cut to the page.
The cost of a page therefore does not grow with how far back it is (no ``OFFSET``). A type or severity
filter that matches few rows (fewer than :data:`SPARSE_ROWS`) is read on that column's own index instead, all
its rows sorted, so a rare type never makes a page walk the whole table.

Filters:

* ``session``: one session's rows (its id; refused, naming it, when no such session exists);
* ``since`` (inclusive) and ``until`` (exclusive): ISO dates or date-times, UTC unless an offset is given;
* ``severity``: ``info``, ``warning``, ``critical`` or ``emergency`` for that severity exactly, or with a
  ``+`` (``warning+``) for that one and every more serious one. A treatment event's severity is the one the
  session review gives it: ``safety_trigger`` is critical, ``safety_warning`` a warning, the rest info;
* ``event_type``: the event type exactly as recorded (``photodiode_warning``, ``laser_on``, ...);
* ``source``: ``safety`` (the safety log only) or ``treatment`` (the treatment events only).

Bad filter input raises :class:`EventFilterError` with a one-line reason; nothing is read. The functions
are synchronous (plain :mod:`sqlite3` on a read-only connection, one short read each); from an event loop
call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from storage.audit_query import AuditFilterError, parse_time
from storage.errors import StorageError
from storage.paging import MAX_PAGE_SIZE, PAGE_SIZE, page_size_problem, parse_stored, stamp, time_range
from storage.safety_records import SEVERITIES

#: Longest event type accepted as a filter.
MAX_TYPE_LENGTH: Final = 64
#: Where a row comes from, in the order rows with the same time sort (newest first: treatment rows first).
SOURCES: Final = ("safety", "treatment")
#: Below this many rows matching a type or severity filter, a page is read on that filter's own index.
SPARSE_ROWS: Final = 2_000
#: The severity of the treatment event types that are not plain information.
TREATMENT_SEVERITY: Final = {"safety_trigger": "critical", "safety_warning": "warning"}

Source = Literal["safety", "treatment"]


class EventFilterError(StorageError):
    """A filter value is unusable (bad date, range the wrong way round, unknown severity, unknown session)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What to show; ``None`` means no restriction on that field. Made through :meth:`build`.

    ``severities`` is the set of severities shown (None: all).
    """

    session_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    severities: tuple[str, ...] | None = None
    event_type: str | None = None
    source: Source | None = None
    #: The severity filter as typed (for :meth:`describe`).
    severity_text: str | None = None

    @classmethod
    def build(
        cls,
        *,
        session: str | int | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        severity: str | None = None,
        event_type: str | None = None,
        source: str | None = None,
    ) -> EventFilter:
        """Check and normalise filter values typed by a person; raises :class:`EventFilterError`."""
        session_id = _session_id(session)
        try:
            since_value = since if isinstance(since, datetime) else _time(since, "from")
            until_value = until if isinstance(until, datetime) else _time(until, "to")
        except AuditFilterError as exc:
            raise EventFilterError(str(exc)) from None
        if since_value is not None and until_value is not None and since_value >= until_value:
            raise EventFilterError("the start of the time range must be before its end")
        severities, severity_text = _severities(severity)
        kind = (event_type or "").strip() or None
        if kind is not None:
            if len(kind) > MAX_TYPE_LENGTH:
                raise EventFilterError(f"event type: longer than {MAX_TYPE_LENGTH} characters")
            if any(ord(ch) < 32 for ch in kind):
                raise EventFilterError("event type: control characters are not allowed")
        source_text = (source or "").strip().lower()
        source_value: Source | None = None
        if source_text == "safety":
            source_value = "safety"
        elif source_text == "treatment":
            source_value = "treatment"
        elif source_text:
            raise EventFilterError(f"source: must be {' or '.join(SOURCES)} (or empty for both)")
        return cls(
            session_id=session_id,
            since=since_value,
            until=until_value,
            severities=severities,
            event_type=kind,
            source=source_value,
            severity_text=severity_text,
        )

    def describe(self) -> str:
        """One line naming the active filters (``all rows`` for none)."""
        parts: list[str] = []
        if self.session_id is not None:
            parts.append(f"session {self.session_id}")
        if self.since is not None:
            parts.append(f"from {self.since:%Y-%m-%d %H:%M}")
        if self.until is not None:
            parts.append(f"to {self.until:%Y-%m-%d %H:%M}")
        if self.severity_text is not None:
            parts.append(f"severity {self.severity_text}")
        if self.event_type is not None:
            parts.append(f"type {self.event_type}")
        if self.source is not None:
            parts.append(f"{self.source} rows only")
        return ", ".join(parts) or "all rows"


def _session_id(value: str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip()
        if not text:
            return None
        if not text.isdigit() or len(text) > 12:
            shown = text if len(text) <= 20 else text[:20] + "..."
            raise EventFilterError(f"session: {shown!r} is not a session id (a whole number)")
        number = int(text)
    if number < 1:
        raise EventFilterError("session: ids start at 1")
    return number


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    return parse_time(value, name=name)


def _severities(value: str | None) -> tuple[tuple[str, ...] | None, str | None]:
    text = (value or "").strip().lower()
    if not text:
        return None, None
    at_least = text.endswith("+")
    name = text.rstrip("+").strip()
    if name not in SEVERITIES:
        raise EventFilterError(
            f"severity: must be one of {', '.join(SEVERITIES)} (add + for it and more serious ones)"
        )
    if at_least:
        return SEVERITIES[SEVERITIES.index(name) :], f"{name}+"
    return (name,), name


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of the browser: a ``safety_log`` row or a ``treatment_events`` row.

    ``row_id`` is the row's id in its own table; ``timestamp`` naive UTC. For a safety row ``description``,
    ``system_state``, ``laser_state`` and ``action_taken`` are the stored ones; for a treatment event they
    are empty and the powers (W), the ring size (mm) and the offset (ms) are set. ``details`` is the stored
    JSON text (or None).
    """

    source: Source
    row_id: int
    timestamp: datetime
    session_id: int | None
    event_type: str
    severity: str
    description: str = ""
    system_state: str | None = None
    laser_state: str | None = None
    action_taken: str | None = None
    commanded_w: float | None = None
    measured_w: float | None = None
    ring_mm: float | None = None
    time_offset_ms: int | None = None
    details: str | None = None

    @property
    def key(self) -> str:
        """A key unique across both tables (``safety:12``, ``treatment:40``)."""
        return f"{self.source}:{self.row_id}"


@dataclass(frozen=True, slots=True)
class EventCursor:
    """Where a page ended: the last row's time, source and id."""

    timestamp: datetime
    source: Source
    row_id: int


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page, newest first; ``next_cursor`` is None on the last page."""

    rows: list[EventRow]
    next_cursor: EventCursor | None
    filters: EventFilter = field(default_factory=EventFilter)


def _keyset(source: Source, cursor: EventCursor | None) -> tuple[str | None, list[object]]:
    """The condition "strictly after ``cursor`` in newest-first order" for the rows of ``source``.

    Rows sort by ``(timestamp, source rank, id)`` descending; a table's rank is a constant, so the condition
    is on the timestamp (and the id where the ranks are equal), which the timestamp index answers."""
    if cursor is None:
        return None, []
    mine, theirs = SOURCES.index(source), SOURCES.index(cursor.source)
    when = stamp(cursor.timestamp)
    if mine < theirs:
        return "timestamp <= ?", [when]
    if mine > theirs:
        return "timestamp < ?", [when]
    id_column = "log_id" if source == "safety" else "event_id"
    return f"(timestamp, {id_column}) < (?, ?)", [when, cursor.row_id]


def _treatment_types(severities: tuple[str, ...]) -> tuple[str, list[object]] | None:
    """The condition on ``event_type`` that gives treatment events of ``severities``; None when none can."""
    special = [kind for kind, level in TREATMENT_SEVERITY.items() if level in severities]
    clauses: list[str] = []
    params: list[object] = []
    if special:
        clauses.append(f"event_type IN ({', '.join('?' * len(special))})")
        params.extend(special)
    if "info" in severities:
        others = list(TREATMENT_SEVERITY)
        clauses.append(f"event_type NOT IN ({', '.join('?' * len(others))})")
        params.extend(others)
    if not clauses:
        return None
    return "(" + " OR ".join(clauses) + ")", params


def _where(
    source: Source, filters: EventFilter, cursor: EventCursor | None
) -> tuple[str, list[object]] | None:
    """The WHERE clause for one table, or None when the filters leave that table out."""
    if filters.source is not None and filters.source != source:
        return None
    clauses: list[str] = []
    params: list[object] = []
    if filters.session_id is not None:
        clauses.append("session_id = ?")
        params.append(filters.session_id)
    when, when_params = time_range(filters.since, filters.until)
    clauses.extend(when)
    params.extend(when_params)
    if filters.event_type is not None:
        clauses.append("event_type = ?")
        params.append(filters.event_type)
    if filters.severities is not None:
        if source == "safety":
            clauses.append(f"severity IN ({', '.join('?' * len(filters.severities))})")
            params.extend(filters.severities)
        else:
            types = _treatment_types(filters.severities)
            if types is None:
                return None
            clauses.append(types[0])
            params.extend(types[1])
    keyset, keyset_params = _keyset(source, cursor)
    if keyset is not None:
        clauses.append(keyset)
        params.extend(keyset_params)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_SAFETY_SELECT: Final = (
    "SELECT log_id, timestamp, session_id, event_type, severity, description, system_state, laser_state, "
    "action_taken, details FROM safety_log"
)
_SAFETY_ORDER: Final = " ORDER BY timestamp DESC, log_id DESC LIMIT ?"
_TREATMENT_SELECT: Final = (
    "SELECT event_id, timestamp, session_id, event_type, laser_power_commanded_watts, "
    "laser_power_actual_watts, ring_size_mm, time_offset_ms, event_details FROM treatment_events"
)
_TREATMENT_ORDER: Final = " ORDER BY timestamp DESC, event_id DESC LIMIT ?"


def _optional_float(value: object) -> float | None:
    return None if value is None else float(str(value))


def _safety_row(values: tuple[object, ...]) -> EventRow:
    row_id, stamp, session_id, kind, severity, description, system_state, laser_state, action, details = (
        values
    )
    return EventRow(
        source="safety",
        row_id=int(str(row_id)),
        timestamp=parse_stored(stamp),
        session_id=None if session_id is None else int(str(session_id)),
        event_type=str(kind),
        severity=str(severity),
        description=str(description),
        system_state=None if system_state is None else str(system_state),
        laser_state=None if laser_state is None else str(laser_state),
        action_taken=None if action is None else str(action),
        details=None if details is None else str(details),
    )


def _treatment_row(values: tuple[object, ...]) -> EventRow:
    row_id, stamp, session_id, kind, commanded, measured, ring, offset, details = values
    kind_text = str(kind)
    return EventRow(
        source="treatment",
        row_id=int(str(row_id)),
        timestamp=parse_stored(stamp),
        session_id=None if session_id is None else int(str(session_id)),
        event_type=kind_text,
        severity=TREATMENT_SEVERITY.get(kind_text, "info"),
        commanded_w=_optional_float(commanded),
        measured_w=_optional_float(measured),
        ring_mm=_optional_float(ring),
        time_offset_ms=None if offset is None else int(str(offset)),
        details=None if details is None else str(details),
    )


def _sort_key(row: EventRow) -> tuple[datetime, int, int]:
    return (row.timestamp, SOURCES.index(row.source), row.row_id)


def _sparse_index(
    connection: sqlite3.Connection, source: Source, filters: EventFilter
) -> tuple[str, str, list[object]] | None:
    """The index of a type or severity filter, its condition and parameters, when that filter matches few
    rows of ``source`` (fewer than :data:`SPARSE_ROWS`, counted on the index itself, at most that many).

    A page is otherwise read on the timestamp index, newest first, filtered as it goes: quick when the filter
    matches often, but a rare type or severity would make it walk most of the table to fill a page. With few
    matches their own index is quicker: all of them are read and sorted. With a session filter the session's
    index is left to the planner."""
    if filters.session_id is not None:
        return None
    found: tuple[str, str, list[object]] | None = None
    if filters.event_type is not None:
        index = "idx_safety_type" if source == "safety" else "idx_event_type"
        found = (index, "event_type = ?", [filters.event_type])
    elif filters.severities is not None and source == "safety":
        marks = ", ".join("?" * len(filters.severities))
        found = ("idx_safety_severity", f"severity IN ({marks})", list(filters.severities))
    elif filters.severities is not None and "info" not in filters.severities:
        kinds = [kind for kind, level in TREATMENT_SEVERITY.items() if level in filters.severities]
        if kinds:
            found = ("idx_event_type", f"event_type IN ({', '.join('?' * len(kinds))})", list(kinds))
    if found is None:
        return None
    index, condition, params = found
    table = "safety_log" if source == "safety" else "treatment_events"
    (count,) = connection.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {table} INDEXED BY {index} WHERE {condition} LIMIT ?)",
        [*params, SPARSE_ROWS],
    ).fetchone()
    return found if int(count) < SPARSE_ROWS else None


def _read_table(
    connection: sqlite3.Connection,
    source: Source,
    filters: EventFilter,
    after: EventCursor | None,
    limit: int,
) -> list[EventRow]:
    """At most ``limit + 1`` rows of one table matching ``filters``, after ``after``, newest first."""
    where = _where(source, filters, after)
    if where is None:
        return []
    sparse = _sparse_index(connection, source, filters)
    hint = f" INDEXED BY {sparse[0]}" if sparse is not None else ""
    if source == "safety":
        found = connection.execute(_SAFETY_SELECT + hint + where[0] + _SAFETY_ORDER, [*where[1], limit + 1])
        return [_safety_row(tuple(values)) for values in found.fetchall()]
    found = connection.execute(_TREATMENT_SELECT + hint + where[0] + _TREATMENT_ORDER, [*where[1], limit + 1])
    return [_treatment_row(tuple(values)) for values in found.fetchall()]


def session_exists(connection: sqlite3.Connection, session_id: int) -> bool:
    """Whether a session with this id is recorded."""
    try:
        found = connection.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"could not read the sessions: {exc}") from exc
    return found is not None


def fetch_page(
    connection: sqlite3.Connection,
    filters: EventFilter | None = None,
    *,
    after: EventCursor | None = None,
    limit: int = PAGE_SIZE,
) -> EventPage:
    """The page of rows matching ``filters`` that comes right after ``after`` (None: the newest).

    Raises:
        EventFilterError: the page size is out of range, or the session filter names no session.
        StorageError: the database could not be read.
    """
    filters = filters or EventFilter()
    problem = page_size_problem(limit)
    if problem is not None:
        raise EventFilterError(problem)
    rows: list[EventRow] = []
    try:
        # One read transaction: both tables as of the same moment.
        connection.execute("BEGIN")
        try:
            if filters.session_id is not None and not session_exists(connection, filters.session_id):
                raise EventFilterError(f"session: no session with id {filters.session_id}")
            for source in SOURCES:
                rows.extend(_read_table(connection, source, filters, after, limit))
        finally:
            connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"could not read the safety log and events: {exc}") from exc
    rows.sort(key=_sort_key, reverse=True)
    page = rows[:limit]
    if len(rows) > limit and page:
        last = page[-1]
        return EventPage(page, EventCursor(last.timestamp, last.source, last.row_id), filters)
    return EventPage(page, None, filters)


__all__ = [
    "MAX_PAGE_SIZE",
    "PAGE_SIZE",
    "SOURCES",
    "TREATMENT_SEVERITY",
    "EventCursor",
    "EventFilter",
    "EventFilterError",
    "EventPage",
    "EventRow",
    "fetch_page",
    "session_exists",
]
