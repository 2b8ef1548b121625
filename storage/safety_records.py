"""One ``safety_log`` row as a frozen value, from the safety supervisor to the database and back.

:class:`SafetyRecord` is the only shape of a safety-log row: the supervisor makes one when it acts (no
time, no session: the recorder stamps those), the recorder stamps and checks it, the journal keeps it as
:meth:`SafetyRecord.values` while the database cannot take it, the repository inserts it, and a reader
(the session review) gets the same type back from :meth:`SafetyRecord.from_row`. The photodiode reading is in
volts; ``details`` is a JSON object, stored as text. This module loads nothing beyond the standard library,
so the safety loop can make records cheaply: nothing is checked when a record is made (the loop must never
fail on its own log entry); :meth:`SafetyRecord.check` is called by whoever stores it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

#: Allowed ``safety_log.severity`` values, mildest first.
SEVERITIES: Final = ("info", "warning", "critical", "emergency")

#: The columns of a record, in the table's order (``log_id`` is the database's).
COLUMNS: Final = (
    "timestamp",
    "session_id",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class SafetyRecord:
    """One ``safety_log`` row (see the module documentation). ``timestamp`` is naive UTC."""

    event_type: str
    severity: str
    description: str
    system_state: str | None = None
    laser_state: str | None = None
    footpedal_state: bool | None = None
    smoothing_device_state: bool | None = None
    photodiode_voltage_v: float | None = None
    action_taken: str | None = None
    details: Mapping[str, Any] | None = None
    tech_id: int | None = None
    session_id: int | None = None
    timestamp: datetime | None = None

    def stamped(self, *, timestamp: datetime, session_id: int | None, tech_id: int | None) -> SafetyRecord:
        """This record at ``timestamp`` in ``session_id``; its own ``tech_id`` wins over the one given."""
        return dataclasses.replace(
            self,
            timestamp=timestamp,
            session_id=session_id,
            tech_id=self.tech_id if self.tech_id is not None else tech_id,
        )

    def check(self) -> SafetyRecord:
        """Return the record when it can be stored; ``ValueError`` naming the first column that cannot."""
        for name in ("event_type", "description"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must not be empty")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}; got {self.severity!r}")
        for name in ("system_state", "laser_state", "action_taken"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be text or None, got {value!r}")
        for name in ("footpedal_state", "smoothing_device_state"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True, False or None, got {value!r}")
        volts = self.photodiode_voltage_v
        if volts is not None and (
            isinstance(volts, bool) or not isinstance(volts, (int, float)) or not math.isfinite(volts)
        ):
            raise ValueError(f"photodiode_voltage_v must be a finite number, got {volts!r}")
        for name in ("tech_id", "session_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.timestamp is not None and not isinstance(self.timestamp, datetime):
            raise ValueError(f"timestamp must be a datetime, got {self.timestamp!r}")
        if self.details is not None:
            if not isinstance(self.details, Mapping):
                raise ValueError(f"details must be a mapping, got {type(self.details).__name__}")
            self.details_json()
        return self

    def details_json(self) -> str | None:
        """``details`` as stored (compact JSON with sorted keys); ``ValueError`` when it cannot be JSON."""
        if self.details is None:
            return None
        try:
            return json.dumps(dict(self.details), allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"details cannot be stored as JSON: {exc}") from exc

    def values(self) -> dict[str, Any]:
        """Every column, ``details`` as a plain dict (the journal's form: JSON but for the timestamp)."""
        values = {name: getattr(self, name) for name in COLUMNS}
        values["details"] = None if self.details is None else dict(self.details)
        return values

    def columns(self) -> dict[str, Any]:
        """Every column as inserted: ``details`` as JSON text. Call :meth:`check` first."""
        values = {name: getattr(self, name) for name in COLUMNS}
        values["details"] = self.details_json()
        return values

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SafetyRecord:
        """The record of :meth:`values` (as the journal gives them back); ``ValueError`` for an unknown
        column or a missing required one."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"safety_log has no column {', '.join(sorted(unknown))}")
        missing = {"event_type", "severity", "description"} - set(values)
        if missing:
            raise ValueError(f"safety_log row lacks {', '.join(sorted(missing))}")
        return cls(**dict(values))

    @classmethod
    def from_row(cls, row: Any) -> SafetyRecord:
        """The record of a stored row (anything with the columns as attributes). Details that are not a JSON
        object (written by hand) are kept under ``stored``."""
        stored = row.details
        details: Mapping[str, Any] | None = None
        if stored is not None and stored.strip():
            try:
                parsed = json.loads(stored)
            except ValueError:
                parsed = None
            details = parsed if isinstance(parsed, dict) else {"stored": stored}
        values = {name: getattr(row, name) for name in COLUMNS if name != "details"}
        for name in ("footpedal_state", "smoothing_device_state"):
            if values[name] is not None:
                values[name] = bool(values[name])
        return cls(**values, details=details)


__all__ = ["COLUMNS", "SEVERITIES", "SafetyRecord"]
