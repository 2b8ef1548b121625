"""What the paged readers of the records share: page sizes, and the timestamps of their keyset cursors.

The audit trail (:mod:`storage.audit_query`) and the safety log with the treatment events
(:mod:`storage.event_query`) are read newest first, one page at a time, by keyset pagination: a page starts
strictly after the last row shown, compared on the stored timestamp text, so no page costs more for being far
back. Both compare a cursor's time with the stored text in the stored format (:func:`stamp`) and read the
stored text back (:func:`parse_stored`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

#: Rows per page unless asked otherwise.
PAGE_SIZE: Final = 50
#: Largest page anyone may ask for.
MAX_PAGE_SIZE: Final = 1000
#: How the records store a timestamp (naive UTC): compared as text, it sorts as time.
STORED_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S.%f"


def stamp(moment: datetime) -> str:
    """``moment`` as the records store it, for comparison with a stored timestamp."""
    return moment.strftime(STORED_TIME_FORMAT)


def parse_stored(value: object) -> datetime:
    """A stored timestamp read back; ``datetime.min`` for one that is not a date-time, so a damaged row
    sorts last rather than hiding the page."""
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min


def time_range(since: datetime | None, until: datetime | None) -> tuple[list[str], list[object]]:
    """The conditions on ``timestamp`` of a time-range filter (``since`` inclusive, ``until`` exclusive; None:
    open on that side), with their parameters."""
    clauses: list[str] = []
    params: list[object] = []
    if since is not None:
        clauses.append("timestamp >= ?")
        params.append(stamp(since))
    if until is not None:
        clauses.append("timestamp < ?")
        params.append(stamp(until))
    return clauses, params


def page_size_problem(limit: int) -> str | None:
    """Why ``limit`` is not a page size (1 to :data:`MAX_PAGE_SIZE`, a true integer), or None."""
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
        return f"page size must be 1 to {MAX_PAGE_SIZE}"
    return None


__all__ = [
    "MAX_PAGE_SIZE",
    "PAGE_SIZE",
    "STORED_TIME_FORMAT",
    "page_size_problem",
    "parse_stored",
    "stamp",
    "time_range",
]
