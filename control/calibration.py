"""Calibration maths and the active calibrations of the rig.

Three calibrations are needed before the laser may emit (``calibrations.device_type`` /
``calibration_type``):

=============  ==================================  ===========================================================
device_type    calibration_type                    ``calibration_points`` entries
=============  ==================================  ===========================================================
laser          laser_current_to_power              ``{"current_ma": mA, "power_watts": W}``
photodiode     photodiode_voltage_to_power         ``{"voltage_v": V, "power_watts": W}``
actuator       actuator_position_to_ring_size      ``{"actuator_position_um": um, "ring_size_mm": mm}``
=============  ==================================  ===========================================================

One more is optional (the laser may emit without it): the camera's scale, ``camera`` /
``camera_pixels_to_mm`` with points ``{"diameter_px": px, "diameter_mm": mm}`` (a target of known size seen
by the camera). Where one is active, the ring the camera detects is measured in millimetres through it
(:func:`camera_ring_mm`); without one the ring is reported in pixels only, marked uncalibrated.

``interpolation_method`` is ``"linear"`` (piecewise-linear interpolation between the points, the seed's
meaning) or ``"linear_fit"`` (the least-squares line through the points; the default when the key is absent,
as in the seed's photodiode example). Other keys (``fit_equation``, ``r_squared``, ...) are kept in the
database but never trusted: the fit is always recomputed from the points.

Ranges (what a conversion does outside the calibrated points):

* actuator: refused in both directions (:class:`OutOfCalibratedRange`), nothing is extrapolated;
* laser power to current: powers above the highest calibrated power are refused; below the lowest calibrated
  power the calibration line is followed down to 0 W, and the current never goes below 0 mA (so 0 W gives the
  current at which the calibration gives 0 W, the lasing threshold);
* laser current to power: currents above the calibrated span are refused; below it the line is followed and
  the power never goes below 0 W;
* photodiode volts to watts: a measurement always gives a value (the calibration line is followed beyond the
  points), never below 0 W;
* camera pixels to millimetres: refused outside the calibrated pixel span (a ring larger or smaller than any
  target measured is not given a size in millimetres).

All database work goes through :class:`storage.CalibrationsRepository`; this module contains no SQL.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from devices.sim import model as sim_model
from storage import Calibration, utc_now
from storage.repositories import CalibrationsRepository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

InterpolationMethod = Literal["linear_fit", "linear"]
INTERPOLATION_METHODS: Final[tuple[InterpolationMethod, ...]] = ("linear_fit", "linear")
#: The method used when ``interpolation_method`` is absent (the seed's photodiode example has none).
DEFAULT_INTERPOLATION_METHOD: Final[InterpolationMethod] = "linear_fit"


class CalibrationError(ValueError):
    """A calibration that cannot be used: bad points, bad data, or a value it cannot convert."""


class OutOfCalibratedRange(CalibrationError):
    """A value outside the span covered by a calibration's points (nothing is extrapolated)."""


class CalibrationDataError(CalibrationError):
    """Stored or supplied ``calibration_data`` that does not describe a usable calibration."""


class MissingCalibrations(CalibrationError):
    """One or more of the required calibrations has no active row; ``missing`` lists them."""

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing: tuple[tuple[str, str], ...] = tuple(missing)
        names = ", ".join(f"{device} ({kind})" for device, kind in self.missing)
        super().__init__(f"no active calibration for {names}")


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationError(f"{name} must be a number; got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise CalibrationError(f"{name} is not finite ({number!r})")
    return number


# ------------------------------------------------------------------------------------------- least squares


@dataclass(frozen=True, slots=True)
class LinearFit:
    """The least-squares line ``y = slope * x + intercept`` through ``n`` points.

    ``r_squared`` is ``1 - SSres / SStot`` (1.0 when every y is equal, as the fit is then exact). Units are
    those of the points: ``slope`` in y-units per x-unit, ``intercept`` in y-units.
    """

    slope: float
    intercept: float
    r_squared: float
    n: int

    @classmethod
    def from_points(cls, xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
        """Fit a line through the points ``(xs[i], ys[i])``.

        Refuses (``CalibrationError``, a ``ValueError``) fewer than 2 points, lists of different lengths,
        non-finite values and points whose x values are all equal.
        """
        if len(xs) != len(ys):
            raise CalibrationError(f"xs and ys differ in length ({len(xs)} vs {len(ys)})")
        if len(xs) < 2:
            raise CalibrationError(f"a linear fit needs at least 2 points; got {len(xs)}")
        fx = [_finite(f"point {i}: x", x) for i, x in enumerate(xs)]
        fy = [_finite(f"point {i}: y", y) for i, y in enumerate(ys)]
        if min(fx) == max(fx):
            raise CalibrationError(f"all x values are equal ({fx[0]!r}); the slope is undefined")
        n = len(fx)
        mean_x = math.fsum(fx) / n
        if min(fy) == max(fy):
            # Constant y: the line is exact and flat; SStot is 0.
            return cls(slope=0.0, intercept=fy[0], r_squared=1.0, n=n)
        mean_y = math.fsum(fy) / n
        dx = [x - mean_x for x in fx]
        dy = [y - mean_y for y in fy]
        sxx = math.fsum(d * d for d in dx)
        sxy = math.fsum(a * b for a, b in zip(dx, dy, strict=True))
        slope = sxy / sxx
        intercept = mean_y - slope * mean_x
        ss_res = math.fsum((y - (slope * x + intercept)) ** 2 for x, y in zip(fx, fy, strict=True))
        ss_tot = math.fsum(d * d for d in dy)
        return cls(slope=slope, intercept=intercept, r_squared=1.0 - ss_res / ss_tot, n=n)

    def __call__(self, x: float) -> float:
        """The line's y at ``x``."""
        return self.slope * _finite("x", x) + self.intercept

    def inverse(self, y: float) -> float:
        """The x at which the line gives ``y``; refused for a flat line (zero slope)."""
        value = _finite("y", y)
        if self.slope == 0.0:
            raise CalibrationError("cannot invert a linear fit with zero slope")
        return (value - self.intercept) / self.slope

    def equation(self, x_name: str = "x", y_name: str = "y") -> str:
        """The fit as text, e.g. ``power_watts = 0.001 * current_ma - 0.5``."""
        sign = "-" if self.intercept < 0 else "+"
        return f"{y_name} = {self.slope:.6g} * {x_name} {sign} {abs(self.intercept):.6g}"


# -------------------------------------------------------------------------------------- piecewise linear


class PiecewiseLinear:
    """Piecewise-linear interpolation through points sorted by x, with strictly monotonic y.

    x must be strictly increasing once sorted (no repeated x) and y strictly increasing or strictly
    decreasing, so the mapping can be inverted. Values outside the points' span are refused with
    :class:`OutOfCalibratedRange`; :meth:`extrapolate` follows the end segments for the callers that must
    always have a value.
    """

    __slots__ = ("_xs", "_ys")

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        if len(xs) != len(ys):
            raise CalibrationError(f"xs and ys differ in length ({len(xs)} vs {len(ys)})")
        if len(xs) < 2:
            raise CalibrationError(f"piecewise-linear interpolation needs at least 2 points; got {len(xs)}")
        points = sorted(
            (_finite(f"point {i}: x", x), _finite(f"point {i}: y", y))
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        )
        for (x0, _), (x1, _) in itertools.pairwise(points):
            if x1 == x0:
                raise CalibrationError(f"x must be strictly increasing; x = {x0!r} appears more than once")
        increasing = points[1][1] > points[0][1]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if (y1 > y0) != increasing or y1 == y0:
                raise CalibrationError(
                    f"y must be strictly monotonic; y = {y0!r} at x = {x0!r} is followed by y = {y1!r} "
                    f"at x = {x1!r}"
                )
        self._xs: tuple[float, ...] = tuple(p[0] for p in points)
        self._ys: tuple[float, ...] = tuple(p[1] for p in points)

    @property
    def xs(self) -> tuple[float, ...]:
        """The points' x values, increasing."""
        return self._xs

    @property
    def ys(self) -> tuple[float, ...]:
        """The points' y values, in the order of :attr:`xs`."""
        return self._ys

    @property
    def domain(self) -> tuple[float, float]:
        """(lowest x, highest x) of the points."""
        return (self._xs[0], self._xs[-1])

    @property
    def range(self) -> tuple[float, float]:
        """(lowest y, highest y) of the points."""
        return (min(self._ys[0], self._ys[-1]), max(self._ys[0], self._ys[-1]))

    @staticmethod
    def _interpolate(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
        # xs increasing; the segment containing x (end segments beyond the span).
        i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x == x0:
            return y0
        if x == x1:
            return y1
        t = (x - x0) / (x1 - x0)
        return y0 * (1.0 - t) + y1 * t

    def _inverse_tables(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._ys[0] < self._ys[-1]:
            return self._ys, self._xs
        return self._ys[::-1], self._xs[::-1]

    def __call__(self, x: float) -> float:
        """y at ``x``; OutOfCalibratedRange outside :attr:`domain`."""
        value = _finite("x", x)
        lo, hi = self.domain
        if not lo <= value <= hi:
            raise OutOfCalibratedRange(f"x = {value!r} is outside the calibrated span {lo!r}..{hi!r}")
        return self._interpolate(self._xs, self._ys, value)

    def inverse(self, y: float) -> float:
        """x at which the interpolation gives ``y``; OutOfCalibratedRange outside :attr:`range`."""
        value = _finite("y", y)
        lo, hi = self.range
        if not lo <= value <= hi:
            raise OutOfCalibratedRange(f"y = {value!r} is outside the calibrated span {lo!r}..{hi!r}")
        ys, xs = self._inverse_tables()
        return self._interpolate(ys, xs, value)

    def extrapolate(self, x: float) -> float:
        """y at ``x``, following the first or last segment beyond the points."""
        return self._interpolate(self._xs, self._ys, _finite("x", x))

    def extrapolate_inverse(self, y: float) -> float:
        """x at which the interpolation gives ``y``, following the end segments beyond the points."""
        ys, xs = self._inverse_tables()
        return self._interpolate(ys, xs, _finite("y", y))

    def __repr__(self) -> str:
        return f"PiecewiseLinear(xs={list(self._xs)!r}, ys={list(self._ys)!r})"


# -------------------------------------------------------------------------------------- calibration types


@dataclass(frozen=True, slots=True)
class CalibrationKind:
    """One calibration type: its device, the point keys with their units, and what the points must obey."""

    device_type: str
    calibration_type: str
    x_key: str
    y_key: str
    x_unit: str
    y_unit: str
    #: Smallest allowed x and y (inclusive when ``*_min_inclusive``).
    x_min: float
    y_min: float
    y_min_inclusive: bool
    #: True when y must grow with x (more current, more light).
    increasing: bool


LASER: Final = CalibrationKind(
    "laser", "laser_current_to_power", "current_ma", "power_watts", "mA", "W", 0.0, 0.0, True, True
)
PHOTODIODE: Final = CalibrationKind(
    "photodiode", "photodiode_voltage_to_power", "voltage_v", "power_watts", "V", "W", 0.0, 0.0, True, True
)
ACTUATOR: Final = CalibrationKind(
    "actuator",
    "actuator_position_to_ring_size",
    "actuator_position_um",
    "ring_size_mm",
    "um",
    "mm",
    0.0,
    0.0,
    False,
    False,
)
#: The camera's scale: the diameter of a target of known size in pixels against its size in millimetres.
CAMERA: Final = CalibrationKind(
    "camera", "camera_pixels_to_mm", "diameter_px", "diameter_mm", "px", "mm", 0.0, 0.0, False, True
)
#: The calibrations the console needs, in the order they are reported.
REQUIRED_KINDS: Final[tuple[CalibrationKind, ...]] = (LASER, PHOTODIODE, ACTUATOR)
#: Calibrations the console uses where one is active, never needed before the laser may emit.
OPTIONAL_KINDS: Final[tuple[CalibrationKind, ...]] = (CAMERA,)
#: Every calibration type the console knows.
ALL_KINDS: Final[tuple[CalibrationKind, ...]] = REQUIRED_KINDS + OPTIONAL_KINDS


def kind_for(device_type: str, calibration_type: str) -> CalibrationKind:
    """The :class:`CalibrationKind` of a (device_type, calibration_type) pair; CalibrationDataError if
    unknown."""
    for kind in ALL_KINDS:
        if kind.device_type == device_type and kind.calibration_type == calibration_type:
            return kind
    known = ", ".join(f"{k.device_type}/{k.calibration_type}" for k in ALL_KINDS)
    raise CalibrationDataError(f"unknown calibration {device_type!r}/{calibration_type!r} (known: {known})")


@dataclass(frozen=True, slots=True)
class CalibrationCurve:
    """A parsed calibration: its points (sorted by x), method, least-squares fit and, for ``"linear"``, the
    piecewise interpolation. Units are those of ``kind``."""

    kind: CalibrationKind
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    method: InterpolationMethod
    fit: LinearFit
    piecewise: PiecewiseLinear | None

    @property
    def domain(self) -> tuple[float, float]:
        """(lowest x, highest x) of the calibrated points."""
        return (self.xs[0], self.xs[-1])

    @property
    def range(self) -> tuple[float, float]:
        """(lowest y, highest y) the calibration gives over :attr:`domain`."""
        a, b = self.extrapolate(self.xs[0]), self.extrapolate(self.xs[-1])
        return (min(a, b), max(a, b))

    def extrapolate(self, x: float) -> float:
        """y at ``x``; beyond the points the fit (or the end segment) is followed."""
        if self.piecewise is not None:
            return self.piecewise.extrapolate(x)
        return self.fit(x)

    def extrapolate_inverse(self, y: float) -> float:
        """x at which the calibration gives ``y``; beyond the points the fit (or end segment) is followed."""
        if self.piecewise is not None:
            return self.piecewise.extrapolate_inverse(y)
        return self.fit.inverse(y)

    def value(self, x: float) -> float:
        """y at ``x``; OutOfCalibratedRange (naming units) outside :attr:`domain`."""
        v = _finite(self.kind.x_key, x)
        lo, hi = self.domain
        if not lo <= v <= hi:
            k = self.kind
            raise OutOfCalibratedRange(
                f"{k.x_key} {v:g} {k.x_unit} is outside the calibrated range {lo:g}..{hi:g} {k.x_unit}"
            )
        return self.extrapolate(v)

    def inverse(self, y: float) -> float:
        """x at which the calibration gives ``y``; OutOfCalibratedRange (naming units) outside
        :attr:`range`."""
        v = _finite(self.kind.y_key, y)
        lo, hi = self.range
        if not lo <= v <= hi:
            k = self.kind
            raise OutOfCalibratedRange(
                f"{k.y_key} {v:g} {k.y_unit} is outside the calibrated range {lo:g}..{hi:g} {k.y_unit}"
            )
        x = self.extrapolate_inverse(v)
        # Keep the exact ends of the span when the rounding of the fit's inverse steps just outside it.
        return min(max(x, self.xs[0]), self.xs[-1])


def _load_json_object(data: Mapping[str, Any] | str, what: str) -> Mapping[str, Any]:
    if isinstance(data, str):

        def refuse_constant(token: str) -> float:
            raise CalibrationDataError(f"{what}: {token} is not allowed in calibration_data")

        try:
            loaded = json.loads(data, parse_constant=refuse_constant)
        except json.JSONDecodeError as exc:
            raise CalibrationDataError(
                f"{what}: calibration_data is not valid JSON "
                f"(line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from exc
        data = loaded
    if not isinstance(data, Mapping):
        raise CalibrationDataError(f"{what}: calibration_data must be a JSON object")
    return data


def parse_calibration(kind: CalibrationKind, data: Mapping[str, Any] | str) -> CalibrationCurve:
    """Parse ``calibration_data`` (a mapping or its JSON text) of ``kind``.

    Every error names the calibration type and the bad point or key, e.g.
    ``laser_current_to_power: calibration_points[2].power_watts is missing``.
    """
    what = kind.calibration_type
    obj = _load_json_object(data, what)
    method_raw = obj.get("interpolation_method", DEFAULT_INTERPOLATION_METHOD)
    if method_raw not in INTERPOLATION_METHODS:
        raise CalibrationDataError(
            f"{what}: interpolation_method {method_raw!r} is not one of {', '.join(INTERPOLATION_METHODS)}"
        )
    method: InterpolationMethod = "linear" if method_raw == "linear" else "linear_fit"
    points = obj.get("calibration_points")
    if points is None:
        raise CalibrationDataError(f"{what}: calibration_points is missing")
    if not isinstance(points, list):
        raise CalibrationDataError(f"{what}: calibration_points must be a list")
    if len(points) < 2:
        raise CalibrationDataError(f"{what}: calibration_points needs at least 2 points; got {len(points)}")
    pairs: list[tuple[float, float]] = []
    for i, point in enumerate(points):
        where = f"{what}: calibration_points[{i}]"
        if not isinstance(point, Mapping):
            raise CalibrationDataError(f"{where} must be an object with {kind.x_key} and {kind.y_key}")
        values: list[float] = []
        for key, minimum, inclusive in (
            (kind.x_key, kind.x_min, True),
            (kind.y_key, kind.y_min, kind.y_min_inclusive),
        ):
            if key not in point:
                raise CalibrationDataError(f"{where}.{key} is missing")
            raw = point[key]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise CalibrationDataError(f"{where}.{key} must be a number; got {raw!r}")
            number = float(raw)
            if not math.isfinite(number):
                raise CalibrationDataError(f"{where}.{key} is not finite ({number!r})")
            if number < minimum or (number == minimum and not inclusive):
                relation = ">=" if inclusive else ">"
                raise CalibrationDataError(f"{where}.{key} must be {relation} {minimum:g}; got {number:g}")
            values.append(number)
        pairs.append((values[0], values[1]))
    pairs.sort()
    xs = tuple(p[0] for p in pairs)
    ys = tuple(p[1] for p in pairs)
    try:
        fit = LinearFit.from_points(xs, ys)
        piecewise = PiecewiseLinear(xs, ys) if method == "linear" else None
    except CalibrationError as exc:
        raise CalibrationDataError(f"{what}: {exc}") from exc
    if fit.slope == 0.0:
        raise CalibrationDataError(f"{what}: the points give a flat line ({kind.y_key} does not change)")
    if kind.increasing and (fit.slope < 0.0 or (piecewise is not None and ys[-1] < ys[0])):
        raise CalibrationDataError(f"{what}: {kind.y_key} must increase with {kind.x_key}")
    return CalibrationCurve(kind=kind, xs=xs, ys=ys, method=method, fit=fit, piecewise=piecewise)


def parse_laser_calibration(data: Mapping[str, Any] | str) -> CalibrationCurve:
    """Parse a ``laser_current_to_power`` calibration (points of ``current_ma`` mA and ``power_watts`` W)."""
    return parse_calibration(LASER, data)


def parse_photodiode_calibration(data: Mapping[str, Any] | str) -> CalibrationCurve:
    """Parse a ``photodiode_voltage_to_power`` calibration (points of ``voltage_v`` V, ``power_watts`` W)."""
    return parse_calibration(PHOTODIODE, data)


def parse_actuator_calibration(data: Mapping[str, Any] | str) -> CalibrationCurve:
    """Parse an ``actuator_position_to_ring_size`` calibration (``actuator_position_um`` um,
    ``ring_size_mm`` mm)."""
    return parse_calibration(ACTUATOR, data)


# ---------------------------------------------------------------------------------------- the active set


@dataclass(frozen=True, slots=True)
class ActiveCalibration:
    """One stored calibration in use: its row id, date (naive UTC), device serial number and curve."""

    calibration_id: int
    calibration_date: datetime
    device_serial_number: str | None
    curve: CalibrationCurve

    def describe(self) -> str:
        """``calibration #N of YYYY-MM-DD HH:MM UTC``."""
        return f"calibration #{self.calibration_id} of {self.calibration_date:%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True, slots=True)
class CalibrationSet:
    """The three active calibrations and the conversions the controller makes with them."""

    laser: ActiveCalibration
    photodiode: ActiveCalibration
    actuator: ActiveCalibration

    def power_to_current_ma(self, watts: float) -> float:
        """Driver current, mA, that gives ``watts`` W of light.

        0 W gives the current at which the calibration gives 0 W (never below 0 mA); powers above the highest
        calibrated power are refused with OutOfCalibratedRange.
        """
        curve = self.laser.curve
        value = _finite("power_watts", watts)
        if value < 0.0:
            raise CalibrationError(f"laser power must be >= 0 W; got {value:g} W")
        top = curve.range[1]
        if value > top:
            raise OutOfCalibratedRange(
                f"laser power {value:g} W is above the calibrated maximum {top:g} W ({self.laser.describe()})"
            )
        if value >= curve.range[0]:
            return max(0.0, curve.inverse(value))
        return max(0.0, curve.extrapolate_inverse(value))

    def current_to_power_w(self, ma: float) -> float:
        """Expected light, W, at a driver current of ``ma`` mA (never below 0 W); refused above the calibrated
        span."""
        curve = self.laser.curve
        value = _finite("current_ma", ma)
        if value < 0.0:
            raise CalibrationError(f"laser current must be >= 0 mA; got {value:g} mA")
        top = curve.domain[1]
        if value > top:
            raise OutOfCalibratedRange(
                f"laser current {value:g} mA is above the calibrated maximum {top:g} mA "
                f"({self.laser.describe()})"
            )
        return max(0.0, curve.extrapolate(value))

    def photodiode_to_watts(self, volts: float) -> float:
        """Measured light, W, for a photodiode reading of ``volts`` V; never negative."""
        return max(0.0, self.photodiode.curve.extrapolate(_finite("voltage_v", volts)))

    def position_to_ring_mm(self, um: float) -> float:
        """Ring diameter, mm, at actuator position ``um`` micrometres; refused outside the calibrated span."""
        return self.actuator.curve.value(um)

    def ring_mm_to_position_um(self, mm: float) -> float:
        """Actuator position, um, that gives a ring of ``mm`` mm; refused outside :attr:`ring_range_mm`."""
        return self.actuator.curve.inverse(mm)

    @property
    def ring_range_mm(self) -> tuple[float, float]:
        """(smallest, largest) ring diameter, mm, over the calibrated actuator span."""
        return self.actuator.curve.range

    @property
    def max_power_w(self) -> float:
        """Highest laser power, W, the laser calibration covers."""
        return self.laser.curve.range[1]


# ------------------------------------------------------------------------------------------ storage glue


def _active_of(rows: Sequence[Calibration], calibration_type: str) -> Calibration | None:
    for row in rows:  # newest first
        if row.is_active and row.calibration_type == calibration_type:
            return row
    return None


def _to_active(row: Calibration, kind: CalibrationKind) -> ActiveCalibration:
    try:
        curve = parse_calibration(kind, row.calibration_data)
    except CalibrationDataError as exc:
        raise CalibrationDataError(f"calibration #{row.calibration_id}: {exc}") from exc
    return ActiveCalibration(
        calibration_id=row.calibration_id,
        calibration_date=row.calibration_date,
        device_serial_number=row.device_serial_number,
        curve=curve,
    )


async def load_active_calibration(session: AsyncSession, kind: CalibrationKind) -> ActiveCalibration | None:
    """The active calibration of ``kind`` in an open session, or None when there is none."""
    rows = await CalibrationsRepository(session).history(kind.device_type)
    row = _active_of(rows, kind.calibration_type)
    return None if row is None else _to_active(row, kind)


async def load_active_calibrations(sessions: async_sessionmaker[AsyncSession]) -> CalibrationSet:
    """The three active calibrations; MissingCalibrations names every one that has no active row, and
    CalibrationDataError names a stored calibration that cannot be used."""
    found: dict[str, ActiveCalibration] = {}
    missing: list[tuple[str, str]] = []
    async with sessions() as session:
        for kind in REQUIRED_KINDS:
            active = await load_active_calibration(session, kind)
            if active is None:
                missing.append((kind.device_type, kind.calibration_type))
            else:
                found[kind.device_type] = active
    if missing:
        raise MissingCalibrations(missing)
    return CalibrationSet(laser=found["laser"], photodiode=found["photodiode"], actuator=found["actuator"])


async def load_camera_scale(sessions: async_sessionmaker[AsyncSession]) -> ActiveCalibration | None:
    """The active camera scale calibration (:data:`CAMERA`), or None when there is none; CalibrationDataError
    names a stored one that cannot be used."""
    async with sessions() as session:
        return await load_active_calibration(session, CAMERA)


#: Why a ring's size is given in pixels only, when no camera scale calibration is active.
UNCALIBRATED_NO_SCALE: Final = "uncalibrated: no active camera scale calibration"


def camera_ring_mm(scale: ActiveCalibration | None, diameter_px: float) -> tuple[float | None, str]:
    """The diameter, mm, of a ring the camera measured as ``diameter_px`` pixels, through the camera scale
    calibration ``scale``; ``(None, why)`` without one, or outside its calibrated pixel span (nothing is
    extrapolated)."""
    if scale is None:
        return None, UNCALIBRATED_NO_SCALE
    if scale.curve.kind is not CAMERA:
        kind = scale.curve.kind.calibration_type
        raise CalibrationError(f"{scale.describe()} is {kind}, not a camera scale")
    try:
        mm = scale.curve.value(diameter_px)
    except OutOfCalibratedRange as exc:
        return None, f"uncalibrated: {exc} of the camera scale ({scale.describe()})"
    except CalibrationError as exc:
        return None, f"uncalibrated: {exc}"
    if mm <= 0.0:
        where = f"{mm:g} mm at {diameter_px:g} px"
        return None, f"uncalibrated: the camera scale ({scale.describe()}) gives {where}"
    return mm, ""


def calibration_payload(
    kind: CalibrationKind,
    points: Sequence[tuple[float, float]],
    interpolation_method: str,
) -> tuple[CalibrationCurve, dict[str, Any], dict[str, Any]]:
    """Check ``points`` (``(x, y)`` in the units of ``kind``) and build the curve, the ``calibration_data``
    and the ``validation_data`` (the fit: slope, intercept, r_squared, largest residual)."""
    data: dict[str, Any] = {
        "calibration_points": [{kind.x_key: x, kind.y_key: y} for x, y in points],
        "interpolation_method": interpolation_method,
    }
    curve = parse_calibration(kind, data)
    fit = curve.fit
    residual = max(abs(y - fit(x)) for x, y in zip(curve.xs, curve.ys, strict=True))
    data["fit_equation"] = fit.equation(kind.x_key, kind.y_key)
    data["slope"] = fit.slope
    data["intercept"] = fit.intercept
    data["r_squared"] = fit.r_squared
    validation = {
        "slope": fit.slope,
        "intercept": fit.intercept,
        "r_squared": fit.r_squared,
        "n_points": fit.n,
        "max_residual": residual,
        "residual_unit": kind.y_unit,
    }
    return curve, data, validation


async def _add_calibration(
    session: AsyncSession,
    *,
    tech_id: int,
    kind: CalibrationKind,
    points: Sequence[tuple[float, float]],
    interpolation_method: str,
    notes: str | None,
    device_serial_number: str | None,
    when: datetime | None,
) -> ActiveCalibration:
    curve, data, validation = calibration_payload(kind, points, interpolation_method)
    row = Calibration(
        calibration_date=when or utc_now(),
        tech_id=tech_id,
        device_type=kind.device_type,
        device_serial_number=device_serial_number,
        calibration_type=kind.calibration_type,
        calibration_data=json.dumps(data, allow_nan=False),
        validation_data=json.dumps(validation, allow_nan=False),
        is_active=True,
        notes=notes,
    )
    await CalibrationsRepository(session).add(row)
    return ActiveCalibration(
        calibration_id=row.calibration_id,
        calibration_date=row.calibration_date,
        device_serial_number=device_serial_number,
        curve=curve,
    )


async def record_calibration(
    sessions: async_sessionmaker[AsyncSession],
    *,
    tech_id: int,
    device_type: str,
    calibration_type: str,
    points: Sequence[tuple[float, float]],
    interpolation_method: str = DEFAULT_INTERPOLATION_METHOD,
    notes: str | None = None,
    device_serial_number: str | None = None,
    when: datetime | None = None,
) -> ActiveCalibration:
    """Store a new active calibration measured by ``tech_id`` (``when``: naive UTC, default now).

    ``points`` are ``(x, y)`` pairs in the units of the type (mA/W, V/W or um/mm). The fit (slope,
    intercept, r_squared) is stored in ``calibration_data`` and ``validation_data``. The previous active
    calibration of the same device and type is retired in the same transaction. Bad points are refused before
    anything is written.
    """
    kind = kind_for(device_type, calibration_type)
    # Checked before a session is opened, so bad input writes nothing.
    calibration_payload(kind, points, interpolation_method)
    async with sessions() as session, session.begin():
        return await _add_calibration(
            session,
            tech_id=tech_id,
            kind=kind,
            points=points,
            interpolation_method=interpolation_method,
            notes=notes,
            device_serial_number=device_serial_number,
            when=when,
        )


# ------------------------------------------------------------------------------- simulated rig factory set


def _sim_laser_points() -> tuple[tuple[float, float], ...]:
    currents = (500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 9000.0, 10000.0)
    slope = sim_model.LASER_SLOPE_W_PER_A
    threshold_ma = sim_model.LASER_THRESHOLD_A * 1000.0
    return tuple((ma, round(slope * (ma - threshold_ma) / 1000.0, 6)) for ma in currents)


def _sim_photodiode_points() -> tuple[tuple[float, float], ...]:
    volts = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    return tuple((v, round(v * sim_model.PHOTODIODE_W_PER_V, 6)) for v in volts)


#: The simulated camera's image scale, px/mm (``devices.sim.camera.DEFAULT_PX_PER_MM``; not imported here, so
#: that reading the calibrations does not load OpenCV).
SIM_CAMERA_PX_PER_MM: Final = 100.0


def _sim_camera_points() -> tuple[tuple[float, float], ...]:
    sizes_mm = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    return tuple((round(mm * SIM_CAMERA_PX_PER_MM, 6), mm) for mm in sizes_mm)


def _sim_actuator_points() -> tuple[tuple[float, float], ...]:
    positions = (0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0)
    ring_at_zero, per_um = sim_model.RING_AT_ZERO_MM, sim_model.RING_MM_PER_UM
    return tuple((um, round(ring_at_zero + um * per_um, 6)) for um in positions)


@dataclass(frozen=True, slots=True)
class FactoryCalibration:
    """A factory calibration of the simulated rig: points ``(x, y)`` in the units of ``kind``."""

    kind: CalibrationKind
    points: tuple[tuple[float, float], ...]
    interpolation_method: InterpolationMethod
    device_serial_number: str


#: Factory calibrations of the simulated rig, matching its physical model: light = 1.0 W/A x (I - 0.5 A) over
#: 500..10000 mA, photodiode power = 2.0 x volts over 0..5 V, ring = 2.0 + um/1000 mm over 0..3000 um, and
#: the simulated camera's scale, 100 px/mm, over targets of 1..6 mm.
SIM_FACTORY_CALIBRATIONS: Final[tuple[FactoryCalibration, ...]] = (
    FactoryCalibration(LASER, _sim_laser_points(), "linear_fit", "SIMULATED-LASER-DRIVER"),
    FactoryCalibration(PHOTODIODE, _sim_photodiode_points(), "linear_fit", "SIMULATED-SAFETY-BOARD"),
    FactoryCalibration(ACTUATOR, _sim_actuator_points(), "linear", "SIMULATED-ACTUATOR"),
    FactoryCalibration(CAMERA, _sim_camera_points(), "linear_fit", "SIMULATED-CAMERA"),
)
SIM_CALIBRATION_NOTES: Final = "factory calibration of the simulated rig"


async def install_sim_calibrations_if_missing(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> list[str]:
    """Store the simulated rig's factory calibration of every type that has no active calibration, in one
    transaction, recorded as done by ``tech_id``; return the calibration types installed."""
    installed: list[str] = []
    async with sessions() as session, session.begin():
        for factory in SIM_FACTORY_CALIBRATIONS:
            if await load_active_calibration(session, factory.kind) is not None:
                continue
            await _add_calibration(
                session,
                tech_id=tech_id,
                kind=factory.kind,
                points=factory.points,
                interpolation_method=factory.interpolation_method,
                notes=SIM_CALIBRATION_NOTES,
                device_serial_number=factory.device_serial_number,
                when=None,
            )
            installed.append(factory.kind.calibration_type)
    return installed


__all__ = [
    "ACTUATOR",
    "ALL_KINDS",
    "CAMERA",
    "DEFAULT_INTERPOLATION_METHOD",
    "INTERPOLATION_METHODS",
    "LASER",
    "OPTIONAL_KINDS",
    "PHOTODIODE",
    "REQUIRED_KINDS",
    "SIM_CALIBRATION_NOTES",
    "SIM_FACTORY_CALIBRATIONS",
    "UNCALIBRATED_NO_SCALE",
    "ActiveCalibration",
    "CalibrationCurve",
    "CalibrationDataError",
    "CalibrationError",
    "CalibrationKind",
    "CalibrationSet",
    "FactoryCalibration",
    "InterpolationMethod",
    "LinearFit",
    "MissingCalibrations",
    "OutOfCalibratedRange",
    "PiecewiseLinear",
    "calibration_payload",
    "camera_ring_mm",
    "install_sim_calibrations_if_missing",
    "kind_for",
    "load_active_calibration",
    "load_active_calibrations",
    "load_camera_scale",
    "parse_actuator_calibration",
    "parse_calibration",
    "parse_laser_calibration",
    "parse_photodiode_calibration",
    "record_calibration",
]
