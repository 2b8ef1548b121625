"""Time as the console records and shows it.

Everything stored is a naive UTC :class:`~datetime.datetime` (the database has no time zones). Anything that
depends on "now" takes a :data:`Clock` (a callable returning naive UTC now) so tests can drive time instead of
waiting for it. Times shown to people are converted to local time at the last moment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

#: A callable returning the current time as a naive UTC datetime.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time as a naive UTC datetime (the form stored in the database)."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_local(moment: datetime, zone: tzinfo | None = None) -> datetime:
    """Convert a naive UTC datetime to an aware datetime in ``zone`` (default: the machine's local zone).

    Raises:
        ValueError: if ``moment`` is aware (stored times are naive UTC; an aware one means a caller mixed them
        up).
    """
    if moment.tzinfo is not None:
        raise ValueError(f"expected a naive UTC datetime, got an aware one: {moment.isoformat()}")
    aware = moment.replace(tzinfo=UTC)
    return aware.astimezone(zone) if zone is not None else aware.astimezone()


def format_local_hm(moment: datetime, zone: tzinfo | None = None) -> str:
    """A naive UTC datetime shown as local ``HH:MM`` (24-hour clock)."""
    return to_local(moment, zone).strftime("%H:%M")


def format_local(moment: datetime | None, zone: tzinfo | None = None, *, empty: str = "never") -> str:
    """A naive UTC datetime shown as local ``YYYY-MM-DD HH:MM``; ``empty`` when there is no time."""
    if moment is None:
        return empty
    return to_local(moment, zone).strftime("%Y-%m-%d %H:%M")
