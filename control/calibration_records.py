"""Calibrations as an engineer handles them: checked against the quality rules, stored as the active one of
their type (older ones kept, inactive), listed, exported and imported as files, and judged for their age.

The file format (``tosca calibration import`` / ``export``; docs/calibration.md) is one JSON object::

    {"device_type": "laser", "calibration_type": "laser_current_to_power",
     "device_serial_number": "LDC-0042", "notes": "factory sheet",
     "calibration_points": [{"current_ma": 1000, "power_watts": 0.5}, ...],
     "interpolation_method": "linear_fit"}

``device_serial_number`` and ``notes`` may be absent or null. The calibration data keys are those of the
stored ``calibration_data`` (:mod:`control.calibration`): ``calibration_points``,
``interpolation_method``, and the fit keys ``fit_equation``, ``slope``, ``intercept`` and ``r_squared``,
which are accepted but never trusted (the fit is recomputed from the points). Any other key is refused, so
a misspelt one is not lost.

A calibration is accepted (:func:`check_points`) only with at least :data:`MIN_POINTS` points, every value a
finite number, none negative (a ring size above 0), no x value twice, the y values strictly monotonic in x
(increasing for the laser and the photodiode, more current or more volts meaning more light), and the least
squares line's r squared at or above :data:`R_SQUARED_FLOOR`. A refusal names the reason and stores nothing.
Every import, refused or stored, is an audit row (``calibration_import``); a calibration saved by a wizard is
one too (``calibration_saved``).

The camera scale calibration (``camera`` / ``camera_pixels_to_mm``) obeys the same rules, is stored, listed,
exported and imported the same way; it is optional, so it is not among the ages judged before treating. A
ring size calibration saved by the wizard says in its notes which points were typed and which were taken
from the camera (:func:`ring_wizard_notes`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select

from control.calibration import (
    CalibrationCurve,
    CalibrationDataError,
    CalibrationKind,
    CalibrationSet,
    calibration_payload,
    kind_for,
)
from storage import Calibration, utc_now
from storage.repositories import AuditRepository, CalibrationsRepository, UsersRepository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

#: Fewest points a calibration may have.
MIN_POINTS: Final = 3
#: Lowest r squared of the least-squares line through the points that is accepted.
R_SQUARED_FLOOR: Final = 0.99
#: The role that makes and imports calibrations.
CALIBRATING_ROLE: Final = "engineer"
#: Largest calibration file read, bytes.
MAX_FILE_BYTES: Final = 200_000
#: Longest serial number and notes accepted, characters.
MAX_SERIAL_CHARS: Final = 100
MAX_NOTES_CHARS: Final = 2000
#: Audit actions.
ACTION_IMPORT: Final = "calibration_import"
ACTION_SAVED: Final = "calibration_saved"
ENTITY_CALIBRATION: Final = "calibration"

_FILE_KEYS: Final = frozenset({"device_type", "calibration_type", "device_serial_number", "notes"})
_DATA_KEYS: Final = frozenset(
    {"calibration_points", "interpolation_method", "fit_equation", "slope", "intercept", "r_squared"}
)


class CalibrationRefused(ValueError):
    """A calibration, a file or an action refused; the message is the reason. Nothing was stored."""


# ------------------------------------------------------------------------------------------------ quality


@dataclass(frozen=True, slots=True)
class CheckedCalibration:
    """A calibration that passed every rule: its curve (points sorted by x, fit, r squared) and what is
    stored for it."""

    kind: CalibrationKind
    curve: CalibrationCurve
    calibration_data: dict[str, Any]
    validation_data: dict[str, Any]

    @property
    def r_squared(self) -> float:
        """The r squared of the least-squares line through the points."""
        return self.curve.fit.r_squared


def _number(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationRefused(f"{where} must be a number; got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise CalibrationRefused(f"{where} is not finite ({number!r})")
    return number


def check_points(
    kind: CalibrationKind, points: Sequence[tuple[float, float]], interpolation_method: str | None = None
) -> CheckedCalibration:
    """Check ``points`` (``(x, y)`` in the units of ``kind``) against every rule of the module documentation;
    CalibrationRefused names the first rule broken."""
    what = kind.calibration_type
    if len(points) < MIN_POINTS:
        raise CalibrationRefused(f"{what}: {len(points)} points; a calibration needs at least {MIN_POINTS}")
    pairs: list[tuple[float, float]] = []
    for i, (x, y) in enumerate(points, start=1):
        fx = _number(f"{what}: point {i} {kind.x_key}", x)
        fy = _number(f"{what}: point {i} {kind.y_key}", y)
        if fx < 0:
            raise CalibrationRefused(f"{what}: point {i} {kind.x_key} is negative ({fx:g} {kind.x_unit})")
        if fy < 0 or (fy == 0 and not kind.y_min_inclusive):
            relation = "negative" if fy < 0 else "zero"
            raise CalibrationRefused(f"{what}: point {i} {kind.y_key} is {relation} ({fy:g} {kind.y_unit})")
        pairs.append((fx, fy))
    ordered = sorted(pairs)
    for (x0, _), (x1, _) in itertools.pairwise(ordered):
        if x0 == x1:
            raise CalibrationRefused(f"{what}: {kind.x_key} {x0:g} {kind.x_unit} appears twice")
    rising = ordered[-1][1] > ordered[0][1]
    if kind.increasing and not rising:
        raise CalibrationRefused(f"{what}: not monotonic: {kind.y_key} must increase with {kind.x_key}")
    for (x0, y0), (x1, y1) in itertools.pairwise(ordered):
        if y1 == y0 or (y1 > y0) != rising:
            raise CalibrationRefused(
                f"{what}: not monotonic: {kind.y_key} {y0:g} {kind.y_unit} at {x0:g} {kind.x_unit} "
                f"is followed by {y1:g} {kind.y_unit} at {x1:g} {kind.x_unit}"
            )
    method = interpolation_method or ("linear" if kind.device_type == "actuator" else "linear_fit")
    try:
        curve, data, validation = calibration_payload(kind, ordered, method)
    except CalibrationDataError as exc:
        raise CalibrationRefused(str(exc)) from None
    r2 = curve.fit.r_squared
    if r2 < R_SQUARED_FLOOR:
        raise CalibrationRefused(
            f"{what}: the fit's r squared {r2:.4f} is below the quality floor {R_SQUARED_FLOOR:.2f}; "
            "measure the points again"
        )
    return CheckedCalibration(kind, curve, data, validation)


# ------------------------------------------------------------------------------------------- file format


@dataclass(frozen=True, slots=True)
class CalibrationFile:
    """A checked calibration file: the calibration and the serial number and notes it came with."""

    checked: CheckedCalibration
    device_serial_number: str | None
    notes: str | None


def _optional_text(obj: Mapping[str, Any], key: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CalibrationRefused(f"{key} must be text; got {value!r}")
    text = value.strip()
    if len(text) > limit:
        raise CalibrationRefused(f"{key} has {len(text)} characters; at most {limit}")
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in text):
        raise CalibrationRefused(f"{key} must not hold control characters")
    return text or None


def parse_calibration_file(text: str) -> CalibrationFile:
    """The calibration in a file's JSON ``text``; CalibrationRefused with the reason."""

    def refuse_constant(token: str) -> float:
        raise CalibrationRefused(f"{token} is not a number (non-finite values are refused)")

    try:
        obj = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise CalibrationRefused(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(obj, dict):
        raise CalibrationRefused("a calibration file holds one JSON object")
    unknown = sorted(set(obj) - _FILE_KEYS - _DATA_KEYS)
    if unknown:
        raise CalibrationRefused(f"unknown keys: {', '.join(map(str, unknown))}")
    for key in ("device_type", "calibration_type"):
        if not isinstance(obj.get(key), str):
            raise CalibrationRefused(f"{key} is missing (or not text)")
    try:
        kind = kind_for(obj["device_type"], obj["calibration_type"])
    except CalibrationDataError as exc:
        raise CalibrationRefused(str(exc)) from None
    raw_points = obj.get("calibration_points")
    if not isinstance(raw_points, list):
        raise CalibrationRefused(f"{kind.calibration_type}: calibration_points must be a list of points")
    points: list[tuple[float, float]] = []
    for i, point in enumerate(raw_points, start=1):
        if not isinstance(point, dict) or kind.x_key not in point or kind.y_key not in point:
            raise CalibrationRefused(
                f"{kind.calibration_type}: point {i} must be an object with {kind.x_key} and {kind.y_key}"
            )
        points.append((point[kind.x_key], point[kind.y_key]))
    method = obj.get("interpolation_method")
    if method is not None and not isinstance(method, str):
        raise CalibrationRefused(f"interpolation_method must be text; got {method!r}")
    checked = check_points(kind, points, method)
    return CalibrationFile(
        checked=checked,
        device_serial_number=_optional_text(obj, "device_serial_number", MAX_SERIAL_CHARS),
        notes=_optional_text(obj, "notes", MAX_NOTES_CHARS),
    )


def export_text(row: Calibration) -> str:
    """The stored calibration ``row`` in the file format (what ``tosca calibration import`` reads)."""
    data = json.loads(row.calibration_data)
    if not isinstance(data, dict):
        raise CalibrationRefused(f"calibration #{row.calibration_id}: its data is not a JSON object")
    document: dict[str, Any] = {
        "device_type": row.device_type,
        "calibration_type": row.calibration_type,
        "device_serial_number": row.device_serial_number,
        "notes": row.notes,
    }
    document.update({key: value for key, value in data.items() if key in _DATA_KEYS})
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def read_calibration_file(path: Path) -> str:
    """The text of the calibration file at ``path``; CalibrationRefused when it is
    missing, a folder, too large or not UTF-8."""
    try:
        if path.is_dir():
            raise CalibrationRefused(f"{path}: is a folder, not a calibration file")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise CalibrationRefused(f"{path}: no such file") from None
    except OSError as exc:
        raise CalibrationRefused(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CalibrationRefused(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationRefused(f"{path}: not UTF-8 text (byte {exc.start})") from None


# ----------------------------------------------------------------------------------------------- storing


@dataclass(frozen=True, slots=True)
class CalibrationInfo:
    """One stored calibration as listed: id, date (naive UTC), who made it, whether it is active."""

    calibration_id: int
    calibration_date: datetime
    device_type: str
    calibration_type: str
    device_serial_number: str | None
    made_by: str
    active: bool
    points: int
    r_squared: float | None
    notes: str | None


async def _engineer(session: AsyncSession, username: str) -> Any:
    user = await UsersRepository(session).get_by_username(username)
    if user is None:
        raise CalibrationRefused(f"no user named {username!r}")
    if user.is_active is False:
        raise CalibrationRefused(f"{username!r} is deactivated")
    if user.role != CALIBRATING_ROLE:
        raise CalibrationRefused(f"only an engineer makes calibrations ({username!r} is {user.role})")
    return user


async def store_calibration(
    sessions: async_sessionmaker[AsyncSession],
    checked: CheckedCalibration,
    *,
    engineer: str,
    action: str,
    device_serial_number: str | None = None,
    notes: str | None = None,
    source: str | None = None,
    terminal: str | None = None,
    when: datetime | None = None,
) -> int:
    """Store ``checked`` as the active calibration of its type (the one before is kept, inactive), made by
    ``engineer`` (an active engineer), with an audit row ``action``; returns its id."""
    moment = when or utc_now()
    async with sessions() as session, session.begin():
        user = await _engineer(session, engineer)
        repo = CalibrationsRepository(session)
        previous = [
            row.calibration_id
            for row in await repo.history(checked.kind.device_type)
            if row.is_active and row.calibration_type == checked.kind.calibration_type
        ]
        row = Calibration(
            calibration_date=moment,
            tech_id=user.tech_id,
            device_type=checked.kind.device_type,
            device_serial_number=device_serial_number,
            calibration_type=checked.kind.calibration_type,
            calibration_data=json.dumps(checked.calibration_data, allow_nan=False),
            validation_data=json.dumps(checked.validation_data, allow_nan=False),
            is_active=True,
            notes=notes,
        )
        await repo.add(row)
        await AuditRepository(session).add(
            action,
            "success",
            tech_id=user.tech_id,
            username=user.username,
            entity_type=ENTITY_CALIBRATION,
            entity_id=row.calibration_id,
            terminal=terminal,
            details={
                "calibration_type": checked.kind.calibration_type,
                "points": checked.curve.fit.n,
                "r_squared": checked.r_squared,
                "replaces": previous,
                "source": source,
            },
            timestamp=moment,
        )
        return row.calibration_id


async def audit_refusal(
    sessions: async_sessionmaker[AsyncSession],
    action: str,
    username: str,
    reason: str,
    *,
    source: str | None = None,
    terminal: str | None = None,
) -> None:
    """One failure audit row for a refused calibration (nothing else is written)."""
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).get_by_username(username)
        await AuditRepository(session).add(
            action,
            "failure",
            tech_id=user.tech_id if user is not None else None,
            username=username,
            entity_type=ENTITY_CALIBRATION,
            terminal=terminal,
            details={"refused": reason, "source": source},
        )


async def import_calibration(
    sessions: async_sessionmaker[AsyncSession],
    text: str,
    *,
    engineer: str,
    source: str,
    terminal: str | None = None,
) -> tuple[int, CalibrationFile]:
    """Check the calibration file ``text`` and store it as active for ``engineer``; a refusal is audited and
    raised (CalibrationRefused), storing nothing."""
    try:
        parsed = parse_calibration_file(text)
        calibration_id = await store_calibration(
            sessions,
            parsed.checked,
            engineer=engineer,
            action=ACTION_IMPORT,
            device_serial_number=parsed.device_serial_number,
            notes=parsed.notes,
            source=source,
            terminal=terminal,
        )
    except CalibrationRefused as exc:
        await audit_refusal(sessions, ACTION_IMPORT, engineer, str(exc), source=source, terminal=terminal)
        raise
    return calibration_id, parsed


async def get_calibration(sessions: async_sessionmaker[AsyncSession], calibration_id: int) -> Calibration:
    """The stored calibration ``calibration_id``; CalibrationRefused when there is none."""
    async with sessions() as session:
        row = await session.get(Calibration, calibration_id)
    if row is None:
        raise CalibrationRefused(f"no calibration #{calibration_id}")
    return row


async def list_calibrations(sessions: async_sessionmaker[AsyncSession]) -> list[CalibrationInfo]:
    """Every stored calibration, by type then newest first."""
    async with sessions() as session:
        query = select(Calibration).order_by(
            Calibration.device_type,
            Calibration.calibration_type,
            Calibration.calibration_date.desc(),
            Calibration.calibration_id.desc(),
        )
        rows = list((await session.execute(query)).scalars())
        names: dict[int, str] = {}
        for row in rows:
            if row.tech_id not in names:
                user = await UsersRepository(session).get_by_id(row.tech_id)
                names[row.tech_id] = user.username if user is not None else f"user #{row.tech_id}"
    found: list[CalibrationInfo] = []
    for row in rows:
        points, r2 = 0, None
        try:
            data = json.loads(row.calibration_data)
            points = len(data.get("calibration_points") or [])
            raw = data.get("r_squared")
            r2 = float(raw) if isinstance(raw, (int, float)) else None
        except (ValueError, AttributeError):
            pass
        found.append(
            CalibrationInfo(
                calibration_id=row.calibration_id,
                calibration_date=row.calibration_date,
                device_type=row.device_type,
                calibration_type=row.calibration_type,
                device_serial_number=row.device_serial_number,
                made_by=names[row.tech_id],
                active=bool(row.is_active),
                points=points,
                r_squared=r2,
                notes=row.notes,
            )
        )
    return found


# ---------------------------------------------------------------------------------- ring wizard's record

#: Where a ring size wizard point's value came from: typed by the engineer, or the camera's measurement.
POINT_TYPED: Final = "typed"
POINT_CAMERA: Final = "camera"
POINT_SOURCES: Final = (POINT_TYPED, POINT_CAMERA)
RING_WIZARD_NOTES: Final = "ring size wizard"


def _point_list(numbers: Sequence[int]) -> str:
    return ("point " if len(numbers) == 1 else "points ") + ", ".join(str(n) for n in numbers)


def ring_wizard_notes(sources: Sequence[str], camera_scale_id: int | None) -> str:
    """The notes of a ring size calibration saved by the wizard: which points (numbered from 1, in the order
    measured) were typed and which were taken from the camera, through which camera scale calibration.
    CalibrationRefused for an unknown source, or camera points with no camera scale calibration named."""
    unknown = sorted({s for s in sources if s not in POINT_SOURCES})
    if unknown:
        raise CalibrationRefused(f"unknown point source {unknown[0]!r} (known: {', '.join(POINT_SOURCES)})")
    camera = [i for i, s in enumerate(sources, start=1) if s == POINT_CAMERA]
    typed = [i for i, s in enumerate(sources, start=1) if s == POINT_TYPED]
    if camera and camera_scale_id is None:
        raise CalibrationRefused("points taken from the camera must name the camera scale calibration used")
    parts = []
    if camera:
        parts.append(f"{_point_list(camera)} from the camera (camera scale calibration #{camera_scale_id})")
    if typed:
        parts.append(f"{_point_list(typed)} typed")
    return RING_WIZARD_NOTES + ("; " + "; ".join(parts) if parts else "")


# -------------------------------------------------------------------------------------------------- age


@dataclass(frozen=True, slots=True)
class CalibrationAge:
    """How old an active calibration is against the configured validity."""

    label: str
    calibration_id: int
    calibration_date: datetime
    age_days: float
    validity_days: int

    @property
    def expired(self) -> bool:
        """Older than the validity."""
        return self.age_days > self.validity_days

    def value(self) -> str:
        """``#3 of 2026-12-07 (12 days old)``."""
        return f"#{self.calibration_id} of {self.calibration_date:%Y-%m-%d} ({self.age_days:.0f} days old)"

    def problem(self) -> str:
        """Why it fails (empty while valid)."""
        if not self.expired:
            return ""
        return (
            f"the {self.label} calibration is {self.age_days:.0f} days old; valid for {self.validity_days} "
            "days: calibrate again before treating"
        )


def calibration_ages(
    dates: Sequence[tuple[str, int, datetime]], validity_days: int, now: datetime | None = None
) -> list[CalibrationAge]:
    """The age of each ``(label, id, date)`` (naive UTC) at ``now``, against ``validity_days``."""
    moment = now or utc_now()
    return [
        CalibrationAge(label, cid, date, (moment - date) / timedelta(days=1), validity_days)
        for label, cid, date in dates
    ]


def active_ages(
    calibrations: CalibrationSet, validity_days: int, now: datetime | None = None
) -> list[CalibrationAge]:
    """The age of each active calibration of ``calibrations`` (laser, photodiode, actuator)."""
    return calibration_ages(
        [
            (label, active.calibration_id, active.calibration_date)
            for label, active in (
                ("laser", calibrations.laser),
                ("photodiode", calibrations.photodiode),
                ("actuator", calibrations.actuator),
            )
        ],
        validity_days,
        now,
    )


__all__ = [
    "ACTION_IMPORT",
    "ACTION_SAVED",
    "CALIBRATING_ROLE",
    "MIN_POINTS",
    "POINT_CAMERA",
    "POINT_SOURCES",
    "POINT_TYPED",
    "RING_WIZARD_NOTES",
    "R_SQUARED_FLOOR",
    "CalibrationAge",
    "CalibrationFile",
    "CalibrationInfo",
    "CalibrationRefused",
    "CheckedCalibration",
    "active_ages",
    "audit_refusal",
    "calibration_ages",
    "check_points",
    "export_text",
    "get_calibration",
    "import_calibration",
    "list_calibrations",
    "parse_calibration_file",
    "read_calibration_file",
    "ring_wizard_notes",
    "store_calibration",
]
