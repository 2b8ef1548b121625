"""Treatment protocols: the seed's JSON file format, its validation, and the plan a protocol compiles to.

A protocol file (seed 000, "Protocol Data JSON Format")::

    {"version": "1.0",
     "steps": [{"step_number": 1, "duration_seconds": 60, "power_start_watts": 5.0, "power_end_watts": 5.0,
                "ring_size_mm": 3.0, "ramp_type": "constant"}, ...],
     "safety_limits": {"max_power_watts": 10.0, "max_duration_seconds": 300}}

Rules: no unknown keys; no NaN or Infinity (also refused as the JSON tokens ``NaN``/``Infinity`` that
Python's ``json`` accepts); ``step_number`` 1..N in order; ``duration_seconds`` > 0; powers >= 0 W and not
above the protocol's own ``safety_limits.max_power_watts``; ``ring_size_mm`` > 0; ``ramp_type`` ``constant``
(start power equals end power) or ``linear``; the total duration not above
``safety_limits.max_duration_seconds``; no number written with more than :data:`MAX_NUMBER_CHARACTERS`
characters (Python refuses a long integer with a traceback, and no protocol value needs more). Against the
system (:class:`ValidationLimits`): no power above the system's ``max_laser_power_watts`` nor above what the
active laser calibration covers, every ring size within the actuator's calibrated range, and no step shorter
than one period of the control loop (``1 / treatment_loop_frequency_hz``: the engine could not set its power
even once).

Every error names its field path in JSON-path form with 0-based list indexes, e.g.
``steps[1].power_end_watts: 12 W exceeds safety_limits.max_power_watts (10 W)`` for the second step.

A valid protocol compiles to a :class:`Plan` of timed steps, which gives the power at any time, the total
duration, the expected energy and setpoints for a preview, with no hardware involved.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from control.calibration import (
    ACTUATOR,
    LASER,
    CalibrationDataError,
    load_active_calibration,
)
from control.system_config import DEFAULTS as SETTINGS_DEFAULTS
from control.system_config import SettingError, read_setting
from storage.errors import StorageError
from storage.repositories import ProtocolsRepository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

RampType = Literal["constant", "linear"]
ProtocolType = Literal["constant", "linear_ramp", "multi_step"]

#: The only protocol file version understood.
PROTOCOL_VERSION: Final = "1.0"
#: The system's power limit, W, where no database is at hand (the default of ``max_laser_power_watts``).
DEFAULT_MAX_SYSTEM_POWER_W: Final = SETTINGS_DEFAULTS.max_laser_power_watts
#: Default actuator travel, um, and the ring it gives (2.0 + um/1000 mm) where no calibration is active.
DEFAULT_TRAVEL_UM: Final = (0.0, 3000.0)
DEFAULT_RING_AT_ZERO_MM: Final = 2.0
DEFAULT_RING_MM_PER_UM: Final = 0.001
#: Most setpoints :meth:`Plan.setpoints` returns (bounds the memory one preview can take).
MAX_SETPOINTS: Final = 1_000_000
#: The control loop's rate, Hz, where no database is at hand (the default of ``treatment_loop_frequency_hz``).
DEFAULT_LOOP_HZ: Final = float(SETTINGS_DEFAULTS.treatment_loop_frequency_hz)
#: Longest number accepted in a protocol file, in characters (sign, digits, point and exponent).
MAX_NUMBER_CHARACTERS: Final = 40

_VALIDATE_FIELDS_ONLY: Final = "fields_only"


class ProtocolError(ValueError):
    """A protocol refused; ``errors`` lists every problem, one line each, naming its field path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        count = len(self.errors)
        summary = f"{count} problem{'s' if count != 1 else ''}"
        super().__init__(f"protocol refused ({summary}): " + "; ".join(self.errors))


class LimitsError(ValueError):
    """The system's limits cannot be read (a missing or invalid setting or calibration)."""


# ------------------------------------------------------------------------------------------------ models

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class ProtocolStep(BaseModel):
    """One step: duration in seconds, powers in watts, ring diameter in mm."""

    model_config = _STRICT

    step_number: int
    duration_seconds: float = Field(gt=0)
    power_start_watts: float = Field(ge=0)
    power_end_watts: float = Field(ge=0)
    ring_size_mm: float = Field(gt=0)
    ramp_type: RampType


class SafetyLimits(BaseModel):
    """The protocol's own limits: maximum power in watts, maximum total duration in seconds."""

    model_config = _STRICT

    max_power_watts: float = Field(gt=0)
    max_duration_seconds: float = Field(gt=0)


class ProtocolDefinition(BaseModel):
    """A whole protocol file. Constructing one checks every rule that depends only on the file itself."""

    model_config = _STRICT

    version: Literal["1.0"]
    steps: list[ProtocolStep] = Field(min_length=1)
    safety_limits: SafetyLimits

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ProtocolDefinition:
        if isinstance(info.context, Mapping) and info.context.get(_VALIDATE_FIELDS_ONLY):
            return self
        problems = _own_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def total_duration_s(self) -> float:
        """Sum of the steps' durations, seconds."""
        return math.fsum(step.duration_seconds for step in self.steps)


# --------------------------------------------------------------------------------------------- checking


def format_number(value: float) -> str:
    """A number as shown in messages: the shortest text that reads back as the same float (``10.0``)."""
    return repr(float(value))


_n = format_number


def _number(value: Any) -> float | None:
    """``value`` as a finite float when it is a JSON number, else None (its error is reported elsewhere)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _steps_of(raw: Any) -> list[tuple[int, Mapping[str, Any]]]:
    if not isinstance(raw, Mapping):
        return []
    steps = raw.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, step) for i, step in enumerate(steps) if isinstance(step, Mapping)]


def _limit_of(raw: Any, key: str) -> float | None:
    if not isinstance(raw, Mapping):
        return None
    limits = raw.get("safety_limits")
    if not isinstance(limits, Mapping):
        return None
    value = _number(limits.get(key))
    return value if value is not None and value > 0 else None


_POWER_KEYS: Final = ("power_start_watts", "power_end_watts")


def _own_problems(raw: Any) -> list[str]:
    """Cross-field rules of the file itself, on possibly invalid data (only valid values are compared)."""
    problems: list[str] = []
    own_max = _limit_of(raw, "max_power_watts")
    for i, step in _steps_of(raw):
        number = step.get("step_number")
        if isinstance(number, int) and not isinstance(number, bool) and number != i + 1:
            problems.append(
                f"steps[{i}].step_number: expected {i + 1}, got {number} (steps are numbered 1..N in order)"
            )
        start, end = _number(step.get("power_start_watts")), _number(step.get("power_end_watts"))
        if step.get("ramp_type") == "constant" and start is not None and end is not None and start != end:
            problems.append(
                f"steps[{i}].power_end_watts: a constant step must end at its start power "
                f"({_n(start)} W), got {_n(end)} W"
            )
        if own_max is not None:
            for key in _POWER_KEYS:
                power = _number(step.get(key))
                if power is not None and power > own_max:
                    problems.append(
                        f"steps[{i}].{key}: {_n(power)} W exceeds safety_limits.max_power_watts "
                        f"({_n(own_max)} W)"
                    )
    max_duration = _limit_of(raw, "max_duration_seconds")
    steps = raw.get("steps") if isinstance(raw, Mapping) else None
    if max_duration is not None and isinstance(steps, list) and steps:
        durations = [_number(s.get("duration_seconds")) if isinstance(s, Mapping) else None for s in steps]
        if all(d is not None and d > 0 for d in durations):
            total = math.fsum(d for d in durations if d is not None)
            if total > max_duration:
                problems.append(
                    f"steps: total duration {_n(total)} s exceeds safety_limits.max_duration_seconds "
                    f"({_n(max_duration)} s)"
                )
    return problems


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """The system's limits a protocol is checked against: maximum laser power in watts and the ring range in
    mm; ``source`` says where the ring range came from (an active calibration or the default travel).

    ``laser_max_power_w``, when known, is the highest power the active laser calibration covers (the console
    cannot convert a higher power to a driver current); ``laser_source`` names that calibration.
    """

    max_system_power_w: float
    ring_min_mm: float
    ring_max_mm: float
    source: str
    laser_max_power_w: float | None = None
    laser_source: str = ""
    loop_hz: float = DEFAULT_LOOP_HZ

    def __post_init__(self) -> None:
        for name in ("max_system_power_w", "ring_min_mm", "ring_max_mm", "loop_hz"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        laser = self.laser_max_power_w
        if laser is not None and (
            isinstance(laser, bool)
            or not isinstance(laser, (int, float))
            or not math.isfinite(laser)
            or laser <= 0
        ):
            raise ValueError(f"laser_max_power_w must be a finite number > 0 W; got {laser!r}")
        if self.max_system_power_w <= 0:
            raise ValueError(f"max_system_power_w must be > 0 W; got {self.max_system_power_w!r}")
        if self.loop_hz <= 0:
            raise ValueError(f"loop_hz must be > 0 Hz; got {self.loop_hz!r}")
        if not 0 < self.ring_min_mm <= self.ring_max_mm:
            raise ValueError(
                "the ring range must satisfy 0 < min <= max; "
                f"got {self.ring_min_mm!r}..{self.ring_max_mm!r} mm"
            )

    @property
    def min_step_s(self) -> float:
        """Shortest step accepted, seconds: one period of the control loop."""
        return 1.0 / self.loop_hz

    def describe(self) -> str:
        """One line: the system power limit, the laser calibration's maximum (when known), the ring range
        with its source and the shortest step."""
        laser = ""
        if self.laser_max_power_w is not None:
            laser = f"; laser calibrated up to {_n(self.laser_max_power_w)} W ({self.laser_source})"
        return (
            f"system maximum power {_n(self.max_system_power_w)} W{laser}; ring size {_n(self.ring_min_mm)}.."
            f"{_n(self.ring_max_mm)} mm ({self.source}); steps of at least {_n(self.min_step_s)} s "
            f"(control loop {_n(self.loop_hz)} Hz)"
        )


def default_limits() -> ValidationLimits:
    """The limits used where no database is at hand: 10.0 W, and the default actuator travel."""
    lo_um, hi_um = DEFAULT_TRAVEL_UM
    return ValidationLimits(
        max_system_power_w=DEFAULT_MAX_SYSTEM_POWER_W,
        ring_min_mm=DEFAULT_RING_AT_ZERO_MM + lo_um * DEFAULT_RING_MM_PER_UM,
        ring_max_mm=DEFAULT_RING_AT_ZERO_MM + hi_um * DEFAULT_RING_MM_PER_UM,
        source=(
            f"default actuator travel {lo_um:g}..{hi_um:g} um, ring {DEFAULT_RING_AT_ZERO_MM:g} + "
            f"um/{1 / DEFAULT_RING_MM_PER_UM:g} mm"
        ),
    )


def _system_problems(raw: Any, limits: ValidationLimits) -> list[str]:
    problems: list[str] = []
    for i, step in _steps_of(raw):
        duration = _number(step.get("duration_seconds"))
        if duration is not None and 0 < duration < limits.min_step_s:
            problems.append(
                f"steps[{i}].duration_seconds: {_n(duration)} s is shorter than one period of the control "
                f"loop ({_n(limits.min_step_s)} s at treatment_loop_frequency_hz {_n(limits.loop_hz)})"
            )
        for key in _POWER_KEYS:
            power = _number(step.get(key))
            if power is not None and power > limits.max_system_power_w:
                problems.append(
                    f"steps[{i}].{key}: {_n(power)} W exceeds the system limit max_laser_power_watts "
                    f"({_n(limits.max_system_power_w)} W)"
                )
            laser_max = limits.laser_max_power_w
            if power is not None and laser_max is not None and power > laser_max:
                problems.append(
                    f"steps[{i}].{key}: {_n(power)} W is above the laser calibration's maximum "
                    f"{_n(laser_max)} W ({limits.laser_source})"
                )
        ring = _number(step.get("ring_size_mm"))
        if ring is not None and ring > 0 and not limits.ring_min_mm <= ring <= limits.ring_max_mm:
            problems.append(
                f"steps[{i}].ring_size_mm: {_n(ring)} mm is outside the actuator's range "
                f"{_n(limits.ring_min_mm)}..{_n(limits.ring_max_mm)} mm ({limits.source})"
            )
    return problems


def validate_protocol(defn: ProtocolDefinition, limits: ValidationLimits) -> list[str]:
    """Every limit ``defn`` breaks: its own maximum power and duration, the system's maximum power, and the
    actuator's ring range. An empty list means the protocol may run."""
    raw = defn.model_dump()
    return _sorted(_own_problems(raw) + _system_problems(raw, limits))


_STEP_PATH = re.compile(r"steps\[(\d+)\]")


def _sorted(problems: list[str]) -> list[str]:
    """Problems grouped by step (file-level ones first), otherwise in the order found."""

    def key(problem: str) -> int:
        match = _STEP_PATH.match(problem)
        return int(match.group(1)) + 1 if match else 0

    return sorted(problems, key=key)


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "protocol"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{_n(value)}"
    return json.dumps(value) if isinstance(value, (str, bool, type(None))) else repr(value)


def _pydantic_message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    path = _path(error["loc"])
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "finite_number":
        return f"{path}: must be a finite number, got {_shown(value)}"
    if kind in ("greater_than", "greater_than_equal"):
        relation, bound = (">", ctx.get("gt")) if kind == "greater_than" else (">=", ctx.get("ge"))
        return f"{path}: must be {relation} {_shown(bound)}, got {_shown(value)}"
    if kind == "literal_error":
        return f"{path}: must be {ctx.get('expected', 'one of the allowed values')}, got {_shown(value)}"
    if kind in ("float_type", "int_type"):
        what = "a number" if kind == "float_type" else "a whole number"
        return f"{path}: must be {what}, got {_shown(value)}"
    if kind == "too_short":
        return f"{path}: must not be empty"
    if kind in ("model_type", "dict_type"):
        return f"{path}: must be a JSON object"
    if kind == "list_type":
        return f"{path}: must be a JSON list"
    return f"{path}: {error['msg']}"


class _NumberTooLong(ValueError):
    """A number in the JSON text longer than :data:`MAX_NUMBER_CHARACTERS`."""

    def __init__(self, literal: str) -> None:
        self.length = len(literal)
        super().__init__(
            f"invalid JSON: a number written with {self.length} characters; numbers in a protocol have at "
            f"most {MAX_NUMBER_CHARACTERS}"
        )


def _int_literal(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARACTERS:
        raise _NumberTooLong(literal)
    return int(literal)


def _float_literal(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARACTERS:
        raise _NumberTooLong(literal)
    return float(literal)


def _load_json(text: str) -> tuple[Any, list[str]]:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                duplicates.append(f"duplicate key {json.dumps(key)} in a JSON object (keys must be unique)")
            obj[key] = value
        return obj

    raw = json.loads(text, object_pairs_hook=pairs, parse_int=_int_literal, parse_float=_float_literal)
    return raw, duplicates


def _parse(text: str, limits: ValidationLimits | None) -> tuple[ProtocolDefinition | None, list[str]]:
    if not isinstance(text, str):
        return None, [f"protocol: must be JSON text, got {type(text).__name__}"]
    try:
        raw, errors = _load_json(text)
    except json.JSONDecodeError as exc:
        return None, [f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
    except _NumberTooLong as exc:
        return None, [str(exc)]
    except RecursionError:
        return None, ["invalid JSON: nested too deeply"]
    if not isinstance(raw, Mapping):
        return None, [*errors, "protocol: must be a JSON object"]
    try:
        ProtocolDefinition.model_validate(raw, context={_VALIDATE_FIELDS_ONLY: True})
    except ValidationError as exc:
        errors.extend(_pydantic_message(e) for e in exc.errors())
    problems = _own_problems(raw)
    if limits is not None:
        problems += _system_problems(raw, limits)
    errors = _sorted(errors + problems)
    if errors:
        return None, errors
    return ProtocolDefinition.model_validate(raw), []


def parse_protocol(text: str) -> ProtocolDefinition:
    """Parse a protocol file's text; ProtocolError lists every problem (invalid JSON: line and column; a
    value of the wrong type, anywhere, is one of the problems listed, never an exception of its own)."""
    defn, errors = _parse(text, None)
    if defn is None:
        raise ProtocolError(errors)
    return defn


# ------------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One timed step: ``start_s`` and ``duration_s`` in seconds from the start of treatment, powers in W,
    ring diameter in mm."""

    number: int
    start_s: float
    duration_s: float
    power_start_w: float
    power_end_w: float
    ring_size_mm: float
    ramp: RampType

    @property
    def end_s(self) -> float:
        """Time the step ends, seconds from the start of treatment."""
        return self.start_s + self.duration_s

    @property
    def energy_j(self) -> float:
        """Energy the step delivers, J (the exact area under its power line)."""
        return (self.power_start_w + self.power_end_w) / 2.0 * self.duration_s

    def power_at_elapsed(self, elapsed_s: float) -> float:
        """Setpoint, W, ``elapsed_s`` seconds into the step (clamped to the step): a linear ramp gives exactly
        ``power_end_w`` at and after the end."""
        if not math.isfinite(elapsed_s):
            raise ValueError(f"elapsed time must be finite; got {elapsed_s!r}")
        if self.ramp == "constant" or elapsed_s <= 0.0:
            return self.power_start_w
        if elapsed_s >= self.duration_s:
            return self.power_end_w
        fraction = elapsed_s / self.duration_s
        return self.power_start_w * (1.0 - fraction) + self.power_end_w * fraction


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled protocol: the steps laid end to end on a time line starting at 0 s."""

    steps: tuple[PlanStep, ...]
    definition: ProtocolDefinition

    @property
    def total_duration_s(self) -> float:
        """Length of the whole treatment, seconds."""
        return self.steps[-1].end_s

    @property
    def max_power_w(self) -> float:
        """Highest setpoint, W."""
        return max(max(s.power_start_w, s.power_end_w) for s in self.steps)

    @property
    def expected_energy_j(self) -> float:
        """Energy the plan delivers if followed exactly, J (sum of each step's trapezoid)."""
        return math.fsum(s.energy_j for s in self.steps)

    def _check_time(self, t_s: float) -> float:
        if isinstance(t_s, bool) or not isinstance(t_s, (int, float)) or not math.isfinite(t_s):
            raise ValueError(f"time must be a finite number of seconds; got {t_s!r}")
        if not 0.0 <= t_s <= self.total_duration_s:
            raise ValueError(f"time {_n(t_s)} s is outside the plan (0..{_n(self.total_duration_s)} s)")
        return float(t_s)

    def step_at(self, t_s: float) -> PlanStep:
        """The step running at ``t_s`` seconds (a step owns its start, not its end; the last owns the end)."""
        t = self._check_time(t_s)
        for step in self.steps:
            if t < step.end_s:
                return step
        return self.steps[-1]

    def power_at(self, t_s: float) -> float:
        """Setpoint, W, at ``t_s`` seconds; ValueError outside 0..:attr:`total_duration_s`."""
        step = self.step_at(t_s)
        # At the step's end use its exact duration: t - start can round to just under it.
        elapsed = step.duration_s if t_s >= step.end_s else float(t_s) - step.start_s
        return step.power_at_elapsed(elapsed)

    def setpoints(self, rate_hz: float) -> list[tuple[float, float]]:
        """``(t_s, watts)`` at ``rate_hz`` samples per second from 0 s, ending at the end of the plan."""
        if isinstance(rate_hz, bool) or not isinstance(rate_hz, (int, float)) or not math.isfinite(rate_hz):
            raise ValueError(f"rate must be a finite number of hertz; got {rate_hz!r}")
        if rate_hz <= 0:
            raise ValueError(f"rate must be > 0 Hz; got {_n(rate_hz)}")
        total = self.total_duration_s
        count = math.floor(total * rate_hz) + 1
        if count > MAX_SETPOINTS:
            raise ValueError(
                f"{_n(rate_hz)} Hz over {_n(total)} s gives {count} setpoints; "
                f"at most {MAX_SETPOINTS} are allowed"
            )
        points = [(k / rate_hz, self.power_at(min(k / rate_hz, total))) for k in range(count)]
        if points[-1][0] < total:
            points.append((total, self.power_at(total)))
        return points


def compile_plan(defn: ProtocolDefinition) -> Plan:
    """Lay the protocol's steps end to end from 0 s."""
    steps: list[PlanStep] = []
    start = 0.0
    for step in defn.steps:
        steps.append(
            PlanStep(
                number=step.step_number,
                start_s=start,
                duration_s=step.duration_seconds,
                power_start_w=step.power_start_watts,
                power_end_w=step.power_end_watts,
                ring_size_mm=step.ring_size_mm,
                ramp=step.ramp_type,
            )
        )
        start += step.duration_seconds
    return Plan(steps=tuple(steps), definition=defn)


def check_protocol(text: str, limits: ValidationLimits) -> Plan:
    """Parse ``text`` and check it against ``limits``; return the plan, or raise ProtocolError listing every
    parse and limit problem."""
    defn, errors = _parse(text, limits)
    if defn is None:
        raise ProtocolError(errors)
    return compile_plan(defn)


def protocol_type(defn: ProtocolDefinition) -> ProtocolType:
    """The seed's ``protocols.protocol_type``: one constant step, one linear ramp, or several steps."""
    if len(defn.steps) > 1:
        return "multi_step"
    return "constant" if defn.steps[0].ramp_type == "constant" else "linear_ramp"


# ------------------------------------------------------------------------------------------- limits


async def load_limits(sessions: async_sessionmaker[AsyncSession]) -> ValidationLimits:
    """The system's limits from the database: ``max_laser_power_watts`` and ``treatment_loop_frequency_hz``
    from ``system_config`` through :mod:`control.system_config` (LimitsError naming a refused value; the
    default where a key is absent); the ring range from the active
    actuator calibration or, where none is active, the default travel; the highest power the active laser
    calibration covers, where one is active."""
    async with sessions() as session:
        try:
            max_power = float(await read_setting(session, "max_laser_power_watts"))
            loop_hz = float(await read_setting(session, "treatment_loop_frequency_hz"))
        except (StorageError, SettingError) as exc:
            raise LimitsError(str(exc)) from exc
        try:
            actuator = await load_active_calibration(session, ACTUATOR)
        except CalibrationDataError as exc:
            raise LimitsError(f"active actuator {exc}") from exc
        try:
            laser = await load_active_calibration(session, LASER)
        except CalibrationDataError as exc:
            raise LimitsError(f"active laser {exc}") from exc
    if actuator is None:
        defaults = default_limits()
        ring_min, ring_max, source = defaults.ring_min_mm, defaults.ring_max_mm, defaults.source
    else:
        (ring_min, ring_max), source = actuator.curve.range, f"active {actuator.describe()}"
    return ValidationLimits(
        max_system_power_w=max_power,
        ring_min_mm=ring_min,
        ring_max_mm=ring_max,
        source=source,
        laser_max_power_w=None if laser is None else laser.curve.range[1],
        laser_source="" if laser is None else f"active {laser.describe()}",
        loop_hz=loop_hz,
    )


# ------------------------------------------------------------------------------------------- library

LIBRARY_PACKAGE: Final = "control"
LIBRARY_FOLDER: Final = "protocol_library"
LIBRARY_INDEX: Final = "index.json"


@dataclass(frozen=True, slots=True)
class LibraryProtocol:
    """A protocol shipped with the console: its name, description, file name, text and parsed definition."""

    name: str
    description: str
    file: str
    text: str
    definition: ProtocolDefinition


def _library_text(name: str) -> str:
    return (
        importlib.resources.files(LIBRARY_PACKAGE)
        .joinpath(LIBRARY_FOLDER)
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def load_library() -> list[LibraryProtocol]:
    """Every protocol of the library, in the index's order; ProtocolError if a shipped file is invalid."""
    index = json.loads(_library_text(LIBRARY_INDEX))
    if not isinstance(index, list):
        raise ProtocolError([f"{LIBRARY_INDEX}: must be a JSON list"])
    found: list[LibraryProtocol] = []
    for i, entry in enumerate(index):
        if not isinstance(entry, Mapping) or set(entry) != {"name", "description", "file"}:
            raise ProtocolError([f"{LIBRARY_INDEX}[{i}]: must have exactly name, description and file"])
        file = str(entry["file"])
        text = _library_text(file)
        try:
            defn = parse_protocol(text)
        except ProtocolError as exc:
            raise ProtocolError([f"{file}: {e}" for e in exc.errors]) from exc
        found.append(LibraryProtocol(str(entry["name"]), str(entry["description"]), file, text, defn))
    return found


async def install_library_protocols(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    """Add, in one transaction, the library protocols whose names are not in the database yet, each version 1
    approved by the system; return their names. Existing protocols (and their versions) are left as they
    are."""
    from control.protocol_approval import approve_as_system  # it imports this module

    library = load_library()
    added: list[str] = []
    async with sessions() as session, session.begin():
        repo = ProtocolsRepository(session)
        for item in library:
            if await repo.get_by_name(item.name) is not None:
                continue
            protocol = await repo.add(
                item.name,
                protocol_type(item.definition),
                item.text,
                description=item.description,
                created_by_tech_id=None,
            )
            await approve_as_system(session, protocol.protocol_id)
            added.append(item.name)
    return added


__all__ = [
    "DEFAULT_LOOP_HZ",
    "DEFAULT_MAX_SYSTEM_POWER_W",
    "DEFAULT_TRAVEL_UM",
    "MAX_NUMBER_CHARACTERS",
    "MAX_SETPOINTS",
    "PROTOCOL_VERSION",
    "LibraryProtocol",
    "LimitsError",
    "Plan",
    "PlanStep",
    "ProtocolDefinition",
    "ProtocolError",
    "ProtocolStep",
    "ProtocolType",
    "RampType",
    "SafetyLimits",
    "ValidationLimits",
    "check_protocol",
    "compile_plan",
    "default_limits",
    "format_number",
    "install_library_protocols",
    "load_library",
    "load_limits",
    "parse_protocol",
    "protocol_type",
    "validate_protocol",
]
