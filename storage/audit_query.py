"""Reading the audit trail: filtered, newest first, one page at a time, and CSV export.

Used by the audit screen, ``tosca audit list`` and the audit benchmark (``tests/bench/bench_audit.py``).

Pages are found by keyset pagination on ``(timestamp, audit_id)``: the next page starts strictly after the
last row shown, so the cost of a page does not grow with how far back it is (no ``OFFSET``, which would
read and throw away every earlier row). ``audit_id`` breaks ties between rows with the same timestamp.

Filters: user (the name as recorded, exact), action (exact), outcome, a time range (``since`` inclusive,
``until`` exclusive, naive UTC) and free text (a case-insensitive substring of the user, action, terminal,
entity type or details; it cannot use an index, so a free-text page reads at most :data:`TEXT_SCAN_WINDOW`
rows and, when that leaves it short, says how far back it searched and goes on from there on the next
page). Bad filter input raises :class:`AuditFilterError` with a one-line reason; nothing
is read.

The functions here are synchronous (plain :mod:`sqlite3`, read-only); from an event loop call them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from storage.chain import append_sqlite
from storage.crypto_db import connect as open_database
from storage.engine import DEFAULT_BUSY_TIMEOUT_MS, connect_sqlite
from storage.errors import StorageError
from storage.maintenance import record_audit
from storage.models import AUDIT_OUTCOMES, utc_now
from storage.paging import MAX_PAGE_SIZE, PAGE_SIZE, page_size_problem, parse_stored, stamp, time_range

#: Rows (matching the other filters) a free-text page reads at most before it returns what it found; the
#: next page goes on from there. A substring cannot use an index, so without a bound a rare text would read
#: the whole log for one page.
TEXT_SCAN_WINDOW: Final = 5_000
#: Longest free-text or name filter accepted.
MAX_FILTER_LENGTH: Final = 200
#: Columns of an exported CSV file, in order.
CSV_COLUMNS: Final = (
    "audit_id",
    "timestamp_utc",
    "username",
    "action",
    "outcome",
    "entity_type",
    "entity_id",
    "terminal",
    "details",
)
#: Cells starting with one of these could be read as a formula by a spreadsheet.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


class AuditFilterError(StorageError):
    """A filter value is unusable (bad date, range the wrong way round, unknown outcome, too long)."""


def parse_time(text: str, *, name: str) -> datetime:
    """Parse an ISO 8601 date or date-time typed by a person into naive UTC.

    ``2026-12-01``, ``2026-12-01 14:30``, ``2026-12-01T14:30:05`` (taken as UTC) and forms with an offset
    (``+01:00``, ``Z``: converted to UTC) are accepted. ``name`` names the field in the error.
    """
    cleaned = text.strip()
    if not cleaned:
        raise AuditFilterError(f"{name}: empty date")
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise AuditFilterError(
            f"{name}: {shown!r} is not a date (use YYYY-MM-DD or YYYY-MM-DD HH:MM, UTC)"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _clean_text(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    if not stripped:
        return None
    if len(stripped) > MAX_FILTER_LENGTH:
        raise AuditFilterError(f"{name}: longer than {MAX_FILTER_LENGTH} characters")
    if any(ord(ch) < 32 for ch in stripped):
        raise AuditFilterError(f"{name}: control characters are not allowed")
    return stripped


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to show; ``None`` (or an empty text) means no restriction on that field.

    Made through :meth:`build`, which checks every value and raises :class:`AuditFilterError`.
    """

    user: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    @classmethod
    def build(
        cls,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        text: str | None = None,
    ) -> AuditFilter:
        """Check and normalise filter values typed by a person (dates as ISO text or datetimes)."""
        outcome_value = _clean_text(outcome, "outcome")
        if outcome_value is not None:
            outcome_value = outcome_value.lower()
            if outcome_value not in AUDIT_OUTCOMES:
                raise AuditFilterError(f"outcome: must be one of {', '.join(AUDIT_OUTCOMES)}")
        since_value = parse_time(since, name="since") if isinstance(since, str) and since.strip() else None
        until_value = parse_time(until, name="until") if isinstance(until, str) and until.strip() else None
        if isinstance(since, datetime):
            since_value = since
        if isinstance(until, datetime):
            until_value = until
        if since_value is not None and until_value is not None and since_value >= until_value:
            raise AuditFilterError("since must be before until")
        return cls(
            user=_clean_text(user, "user"),
            action=_clean_text(action, "action"),
            outcome=outcome_value,
            since=since_value,
            until=until_value,
            text=_clean_text(text, "text"),
        )

    def describe(self) -> str:
        """One line naming the active filters, e.g. ``user=ana, since 2026-12-01 00:00`` (or ``all rows``)."""
        parts = [
            f"{name}={value}"
            for name, value in (("user", self.user), ("action", self.action), ("outcome", self.outcome))
            if value is not None
        ]
        if self.since is not None:
            parts.append(f"since {self.since:%Y-%m-%d %H:%M}")
        if self.until is not None:
            parts.append(f"until {self.until:%Y-%m-%d %H:%M}")
        if self.text is not None:
            parts.append(f"text {self.text!r}")
        return ", ".join(parts) or "all rows"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One ``audit_log`` row as read (timestamp naive UTC)."""

    audit_id: int
    timestamp: datetime
    username: str | None
    action: str
    outcome: str
    entity_type: str | None
    entity_id: int | None
    terminal: str | None
    details: str | None

    def details_summary(self, limit: int = 200) -> str:
        """The details as one line ``key=value, ...`` (JSON objects), or the raw text, cut to ``limit``."""
        raw = self.details or ""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if isinstance(data, dict):
            text = ", ".join(f"{key}={_plain(value)}" for key, value in data.items())
        else:
            text = " ".join(raw.split())
        return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _plain(value: object) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last row's ``(timestamp, audit_id)``."""

    timestamp: datetime
    audit_id: int


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page, newest first; ``next_cursor`` is None on the last page.

    ``searched_to`` is set when a free-text page stopped at its reading bound
    (:data:`TEXT_SCAN_WINDOW`) before filling up: the oldest time it looked at; the next page searches on
    from there.
    """

    rows: list[AuditRow]
    next_cursor: Cursor | None
    filters: AuditFilter = field(default_factory=AuditFilter)
    searched_to: datetime | None = None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(filters: AuditFilter, cursor: Cursor | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if filters.user is not None:
        clauses.append("username = ?")
        params.append(filters.user)
    if filters.action is not None:
        clauses.append("action = ?")
        params.append(filters.action)
    if filters.outcome is not None:
        clauses.append("outcome = ?")
        params.append(filters.outcome)
    when, when_params = time_range(filters.since, filters.until)
    clauses.extend(when)
    params.extend(when_params)
    if filters.text is not None:
        pattern = f"%{_like_escape(filters.text)}%"
        clauses.append(
            "(username LIKE ? ESCAPE '\\' OR action LIKE ? ESCAPE '\\' OR terminal LIKE ? ESCAPE '\\' "
            "OR entity_type LIKE ? ESCAPE '\\' OR details LIKE ? ESCAPE '\\')"
        )
        params.extend([pattern] * 5)
    if cursor is not None:
        # Row-value comparison: SQLite walks the (timestamp, rowid) index from the cursor downwards.
        clauses.append("(timestamp, audit_id) < (?, ?)")
        params.extend([stamp(cursor.timestamp), cursor.audit_id])
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


_SELECT: Final = (
    "SELECT audit_id, timestamp, username, action, outcome, entity_type, entity_id, terminal, details "
    "FROM audit_log"
)
_ORDER: Final = " ORDER BY timestamp DESC, audit_id DESC"


def open_read_only(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to the database at ``db_path`` (raises :class:`StorageError` if absent)."""
    path = Path(db_path)
    if not path.is_file():
        raise StorageError(f"no database at {path}")
    try:
        connection = open_database(
            path, read_only=True, timeout_s=DEFAULT_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path.name}: {exc}") from exc
    return connection


def _row(values: tuple[object, ...]) -> AuditRow:
    audit_id, stamp, username, action, outcome, entity_type, entity_id, terminal, details = values
    return AuditRow(
        audit_id=int(str(audit_id)),
        timestamp=parse_stored(stamp),
        username=None if username is None else str(username),
        action=str(action),
        outcome=str(outcome),
        entity_type=None if entity_type is None else str(entity_type),
        entity_id=None if entity_id is None else int(str(entity_id)),
        terminal=None if terminal is None else str(terminal),
        details=None if details is None else str(details),
    )


def fetch_page(
    connection: sqlite3.Connection,
    filters: AuditFilter | None = None,
    *,
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> AuditPage:
    """Return the page of rows matching ``filters`` that comes right after ``after`` (None: the newest)."""
    filters = filters or AuditFilter()
    problem = page_size_problem(limit)
    if problem is not None:
        raise AuditFilterError(problem)
    boundary = _text_boundary(connection, filters, after)
    where, params = _where(filters, after)
    if boundary is not None:
        where += " AND (timestamp, audit_id) >= (?, ?)"
        params.extend([stamp(boundary.timestamp), boundary.audit_id])
    try:
        found = connection.execute(f"{_SELECT}{where}{_ORDER} LIMIT ?", [*params, limit + 1]).fetchall()
    except sqlite3.Error as exc:
        raise StorageError(f"could not read the audit log: {exc}") from exc
    rows = [_row(tuple(values)) for values in found[:limit]]
    if len(found) > limit and rows:
        return AuditPage(
            rows=rows, next_cursor=Cursor(rows[-1].timestamp, rows[-1].audit_id), filters=filters
        )
    if boundary is not None:
        # The window was read to its end without filling the page: go on after it next time.
        return AuditPage(rows=rows, next_cursor=boundary, filters=filters, searched_to=boundary.timestamp)
    return AuditPage(rows=rows, next_cursor=None, filters=filters)


def _text_boundary(
    connection: sqlite3.Connection, filters: AuditFilter, after: Cursor | None
) -> Cursor | None:
    """For a free-text filter: the last row of the window of :data:`TEXT_SCAN_WINDOW` rows (matching the
    other filters) that this page reads, or None when fewer rows than that remain. Found on an index (a
    bounded walk from the cursor), never by reading the rows themselves."""
    if filters.text is None:
        return None
    where, params = _where(replace(filters, text=None), after)
    try:
        row = connection.execute(
            f"SELECT timestamp, audit_id FROM audit_log{where}{_ORDER} LIMIT 1 OFFSET ?",
            [*params, TEXT_SCAN_WINDOW - 1],
        ).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"could not read the audit log: {exc}") from exc
    return None if row is None else Cursor(parse_stored(row[0]), int(row[1]))


def iter_rows(connection: sqlite3.Connection, filters: AuditFilter | None = None) -> Iterator[AuditRow]:
    """Every row matching ``filters``, newest first, read page by page (memory stays bounded)."""
    cursor: Cursor | None = None
    while True:
        page = fetch_page(connection, filters, after=cursor, limit=MAX_PAGE_SIZE)
        yield from page.rows
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: a value starting with ``= + - @`` (or a tab or carriage
    return) gets a leading apostrophe so it is never run as a formula."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def csv_record(row: AuditRow) -> list[str]:
    """The cells of one exported row, guarded against formula injection."""
    return [
        safe_cell(value)
        for value in (
            row.audit_id,
            row.timestamp.isoformat(sep=" ", timespec="microseconds"),
            row.username,
            row.action,
            row.outcome,
            row.entity_type,
            row.entity_id,
            row.terminal,
            row.details,
        )
    ]


def write_csv(rows: Iterator[AuditRow] | list[AuditRow], handle: object) -> int:
    """Write a header and ``rows`` as CSV to the text stream ``handle``; return the number of rows."""
    writer = csv.writer(handle)  # type: ignore[arg-type]
    writer.writerow(CSV_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(csv_record(row))
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where an export went and how many rows it holds."""

    path: Path
    rows: int


def export_csv(
    db_path: Path, exports_dir: Path, filters: AuditFilter | None = None, *, now: datetime | None = None
) -> ExportResult:
    """Export every row matching ``filters`` to ``exports_dir/audit_YYYYMMDD_HHMMSS.csv`` (UTC in the name).

    The file is written under a temporary name and renamed when complete; an existing file is never
    overwritten (a suffix ``_1``, ``_2``, ... is added).
    """
    exports_dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or utc_now()).strftime("%Y%m%d_%H%M%S")
    partial = exports_dir / f".audit_{stamp}.partial"
    connection = open_read_only(db_path)
    try:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            count = write_csv(iter_rows(connection, filters), handle)
    except (OSError, sqlite3.Error) as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(f"could not export the audit log: {exc}") from exc
    finally:
        connection.close()
    for suffix in range(1000):
        target = exports_dir / (f"audit_{stamp}.csv" if suffix == 0 else f"audit_{stamp}_{suffix}.csv")
        try:
            target.hardlink_to(partial)
        except FileExistsError:
            continue
        partial.unlink(missing_ok=True)
        return ExportResult(path=target, rows=count)
    partial.unlink(missing_ok=True)
    raise StorageError(f"too many exports named audit_{stamp}*.csv")


def row_as_json(row: AuditRow) -> dict[str, object]:
    """One row as a JSON-ready mapping (details parsed when they are JSON)."""
    details: object = row.details
    if row.details:
        try:
            details = json.loads(row.details)
        except ValueError:
            details = row.details
    return {
        "audit_id": row.audit_id,
        "timestamp_utc": row.timestamp.isoformat(timespec="microseconds"),
        "username": row.username,
        "action": row.action,
        "outcome": row.outcome,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "terminal": row.terminal,
        "details": details,
    }


def record_action(
    db_path: Path,
    action: str,
    outcome: str,
    *,
    user: str | None,
    terminal: str | None,
    details: dict[str, object],
) -> None:
    """Append an ``audit_log`` row for an admin's action; ``user`` is the logged-in person (their account's
    id is filled in when the name is an account), or None for the OS account (the command line)."""
    if user is None:
        record_audit(db_path, action, outcome, terminal=terminal, details=details)
        return
    connection = connect_sqlite(db_path)
    try:
        with connection:
            account = connection.execute("SELECT tech_id FROM tech_users WHERE username = ?", (user,))
            found = account.fetchone()
            append_sqlite(
                connection,
                "audit_log",
                {
                    "timestamp": utc_now(),
                    "tech_id": found[0] if found else None,
                    "username": user,
                    "action": action,
                    "terminal": terminal,
                    "outcome": outcome,
                    "details": json.dumps(details, sort_keys=True),
                },
            )
    except sqlite3.Error as exc:
        raise StorageError(f"could not record {action} in the audit log: {exc}") from exc
    finally:
        connection.close()
