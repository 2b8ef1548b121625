"""The system configuration: every ``system_config`` key, its type, unit, range, default and meaning.

:class:`SystemSettings` is the only statement of the settings. Each field is one key of the ``system_config``
table: its annotation is the type stored (``int`` as ``integer``, ``float`` as ``float``, ``str`` as
``string``, ``bool`` as ``boolean``), its constraints the range accepted, its default the value used where
the key is absent, its ``description`` the one-line meaning and ``json_schema_extra["unit"]`` the unit.
:data:`DEFAULTS` is the model with every default; :func:`spec` and :data:`SETTING_KEYS` describe the keys for
a reader or an editor.

Reading (:func:`read_system_settings`, :func:`read_setting`) goes through the model: a stored value is
converted by its ``config_type`` and then checked against the field; an unusable value raises
:class:`SettingError` naming the key and the reason, and is never used. A key absent from the table gives the
default. The photodiode warning threshold must stay below the fault threshold.

Not every key is seeded by a migration: ``backup_retention_days``, ``calibration_validity_days`` and
``max_session_duration_minutes`` are stored only once an admin changes them (:mod:`control.config_editor`)
and read as their defaults until then. ``storage.backups`` reads ``backup_retention_days`` on its own (the
storage layer does not import this package); its default and range are the same as here, and a test holds
them equal. The controller reads ``calibration_validity_days`` in its pre-treatment checks and when a session
opens (docs/calibration.md, "Age"); nothing reads ``max_session_duration_minutes`` yet: the controller does
not limit how long a session stays open.
``focus_stack_frames`` is not seeded: it reads as its default until an admin changes it.

``recorder_journal_mark`` (:func:`known_keys`) is also kept in ``system_config``, by the recorder, for
its own bookkeeping; it is not a setting and nobody edits it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from control.subject_codes import CodePattern, CodePatternError
from storage.errors import ConfigValueError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from storage.retention import RetentionPolicy

_RESOLUTION: Final = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}")


#: The shortest audit retention accepted: six years of 365.25 days, rounded up (HIPAA's six years).
MIN_AUDIT_RETENTION_DAYS: Final = 2192


def _unit(unit: str) -> dict[str, Any]:
    return {"unit": unit}


class SettingError(ValueError):
    """A stored or proposed setting was refused; the message names the key and says why, in one line."""


class SystemSettings(BaseModel):
    """Every ``system_config`` setting (see the module documentation); frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_laser_power_watts: float = Field(
        default=10.0,
        gt=0.0,
        le=10.0,
        strict=True,
        allow_inf_nan=False,
        description="Hard limit for laser power: nothing commands more (it may be lowered, not raised)",
        json_schema_extra=_unit("W"),
    )
    treatment_loop_frequency_hz: int = Field(
        default=10,
        ge=1,
        le=1000,
        strict=True,
        description="Control loop update rate: how often the setpoint is refreshed during a step",
        json_schema_extra=_unit("Hz"),
    )
    photodiode_warning_threshold_percent: float = Field(
        default=15.0,
        gt=0.0,
        le=100.0,
        strict=True,
        allow_inf_nan=False,
        description="Deviation of measured from commanded power before a warning",
        json_schema_extra=_unit("%"),
    )
    photodiode_fault_threshold_percent: float = Field(
        default=30.0,
        gt=0.0,
        le=100.0,
        strict=True,
        allow_inf_nan=False,
        description="Deviation of measured from commanded power before a fault (laser off)",
        json_schema_extra=_unit("%"),
    )
    video_resolution: str = Field(
        default="1920x1080",
        min_length=3,
        max_length=11,
        strict=True,
        description="Recording resolution, width x height",
        json_schema_extra=_unit("pixels"),
    )
    video_fps: int = Field(
        default=30,
        ge=1,
        le=240,
        strict=True,
        description="Recording frame rate",
        json_schema_extra=_unit("frames/s"),
    )
    session_data_path: str = Field(
        default="data/sessions",
        min_length=1,
        max_length=4096,
        strict=True,
        description="Base path for session data",
        json_schema_extra=_unit("path"),
    )
    auto_lock_minutes: int = Field(
        default=10,
        ge=1,
        le=12 * 60,
        strict=True,
        description="Minutes of inactivity before the console locks",
        json_schema_extra=_unit("min"),
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        le=10_000_000,
        strict=True,
        description="Free space the data directory must keep; no session opens below it (0: no floor)",
        json_schema_extra=_unit("MB"),
    )
    subject_code_pattern: str = Field(
        default="P-YYYY-NNNN",
        min_length=1,
        max_length=32,
        strict=True,
        description="Subject codes: literal letters, digits, - and _; YYYY the year; one run of N the number",
        json_schema_extra=_unit("pattern"),
    )
    aiming_beam_during_emission: bool = Field(
        default=True,
        strict=True,
        description="Whether the aiming beam stays on while the treatment laser emits (false: it goes off)",
        json_schema_extra=_unit("on/off"),
    )

    retention_video_days: int = Field(
        default=3653,
        ge=1,
        le=36525,
        strict=True,
        description="Days the raw video of a finished session is kept",
        json_schema_extra=_unit("days"),
    )
    retention_telemetry_days: int = Field(
        default=3653,
        ge=1,
        le=36525,
        strict=True,
        description="Days the telemetry file of a finished session is kept",
        json_schema_extra=_unit("days"),
    )
    retention_sessions_days: int = Field(
        default=3653,
        ge=1,
        le=36525,
        strict=True,
        description="Days a finished session is kept: its record, events, signatures and folder",
        json_schema_extra=_unit("days"),
    )
    retention_safety_days: int = Field(
        default=3653,
        ge=1,
        le=36525,
        strict=True,
        description="Days a safety_log row is kept",
        json_schema_extra=_unit("days"),
    )
    retention_audit_days: int = Field(
        default=3653,
        ge=MIN_AUDIT_RETENTION_DAYS,
        le=36525,
        strict=True,
        description="Days an audit_log row is kept (at least 2192: six years)",
        json_schema_extra=_unit("days"),
    )

    backup_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        strict=True,
        description="Days a backup is kept; older ones are pruned when the next backup is made",
        json_schema_extra=_unit("days"),
    )
    calibration_validity_days: int = Field(
        default=365,
        ge=1,
        le=3650,
        strict=True,
        description="Days a calibration stays valid after it was made",
        json_schema_extra=_unit("days"),
    )
    max_session_duration_minutes: int = Field(
        default=60,
        ge=1,
        le=12 * 60,
        strict=True,
        description="Longest a treatment session may stay open (not enforced yet)",
        json_schema_extra=_unit("min"),
    )
    focus_stack_frames: int = Field(
        default=15,
        ge=2,
        le=99,
        strict=True,
        description="Frames in a focus stack taken on the engineer's camera focus screen",
        json_schema_extra=_unit("frames"),
    )

    @field_validator("video_resolution")
    @classmethod
    def _resolution(cls, value: str) -> str:
        if not _RESOLUTION.fullmatch(value):
            raise ValueError(f"{value!r} is not WIDTHxHEIGHT in pixels (e.g. 1920x1080)")
        return value

    @field_validator("subject_code_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            CodePattern.parse(value)
        except CodePatternError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> SystemSettings:
        if self.photodiode_warning_threshold_percent >= self.photodiode_fault_threshold_percent:
            raise ValueError(
                f"photodiode_warning_threshold_percent ({self.photodiode_warning_threshold_percent:g} %) "
                "must be below photodiode_fault_threshold_percent "
                f"({self.photodiode_fault_threshold_percent:g} %)"
            )
        return self

    @property
    def code_pattern(self) -> CodePattern:
        """The subject code pattern, parsed."""
        return CodePattern.parse(self.subject_code_pattern)


#: Every setting at its default.
DEFAULTS: Final = SystemSettings()
#: The keys of the settings, in the model's order.
SETTING_KEYS: Final[tuple[str, ...]] = tuple(SystemSettings.model_fields)

_CONFIG_TYPES: Final[Mapping[type, str]] = {int: "integer", float: "float", str: "string", bool: "boolean"}


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting as an editor lists it: key, ``system_config`` type, unit, default, meaning and the bounds
    (None where the field has none)."""

    key: str
    config_type: str
    unit: str
    default: Any
    meaning: str
    low: float | int | None
    high: float | int | None


def known_keys() -> frozenset[str]:
    """Every key ``system_config`` may hold: the settings and the recorder's bookkeeping key."""
    from storage.journal import MARK_KEY  # SQLAlchemy: loaded once the database is open

    return frozenset(SETTING_KEYS) | {MARK_KEY}


def _bound(metadata: list[Any], *names: str) -> Any:
    for item in metadata:
        for name in names:
            value = getattr(item, name, None)
            if value is not None:
                return value
    return None


def spec(key: str) -> SettingSpec:
    """The description of ``key``; SettingError for an unknown key."""
    field = SystemSettings.model_fields.get(key)
    if field is None:
        raise SettingError(f"config {key}: no such setting")
    assert field.annotation is not None and isinstance(field.json_schema_extra, dict)
    return SettingSpec(
        key=key,
        config_type=_CONFIG_TYPES[cast(type, field.annotation)],
        unit=str(field.json_schema_extra["unit"]),
        default=field.default,
        meaning=field.description or "",
        low=_bound(field.metadata, "gt", "ge", "min_length"),
        high=_bound(field.metadata, "lt", "le", "max_length"),
    )


_ADAPTERS: Final[dict[str, TypeAdapter[Any]]] = {
    key: TypeAdapter(cast(Any, Annotated[field.annotation, *field.metadata]))
    for key, field in SystemSettings.model_fields.items()
}


_BOUND_ERRORS: Final = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _reason(error: ValidationError, key: str | None = None) -> str:
    """The first problem in words a person reads: "must be greater than 0 W" rather than pydantic's "Input
    should be greater than 0"."""
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    field = SystemSettings.model_fields.get(key) if key is not None else None
    if field is not None and first["type"] in _BOUND_ERRORS and isinstance(field.json_schema_extra, dict):
        unit = str(field.json_schema_extra.get("unit", ""))
        if unit and unit not in ("path", "pattern", "pixels"):
            message = f"{message} {unit}"
    return message


def check_setting(key: str, value: object) -> Any:
    """``value`` as the setting ``key`` holds it (an integer given for a float becomes a float); SettingError
    naming the key and the reason when it is unknown, of the wrong type, NaN or infinite, or out of range."""
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        raise SettingError(f"config {key}: no such setting")
    try:
        checked = adapter.validate_python(value)
        if key == "video_resolution":
            SystemSettings._resolution(checked)
        elif key == "subject_code_pattern":
            SystemSettings._pattern(checked)
    except ValidationError as exc:
        raise SettingError(f"config {key}: {value!r} refused: {_reason(exc, key)}") from None
    except ValueError as exc:
        raise SettingError(f"config {key}: {value!r} refused: {exc}") from None
    return checked


def settings_from(values: Mapping[str, object]) -> SystemSettings:
    """The settings with ``values`` over the defaults; SettingError for the first key refused (unknown, wrong
    type, out of range) or when the photodiode thresholds are in the wrong order."""
    checked = {key: check_setting(key, value) for key, value in values.items()}
    try:
        return SystemSettings.model_validate({**DEFAULTS.model_dump(), **checked})
    except ValidationError as exc:
        raise SettingError(f"config: {_reason(exc)}") from None


async def _stored(session: AsyncSession, keys: tuple[str, ...]) -> dict[str, object]:
    from sqlalchemy import select  # SQLAlchemy: loaded once the database is open

    from storage.models import SystemConfig
    from storage.repositories import parse_config_value

    rows = await session.execute(
        select(SystemConfig.config_key, SystemConfig.config_value, SystemConfig.config_type).where(
            SystemConfig.config_key.in_(keys)
        )
    )
    values: dict[str, object] = {}
    for key, raw, config_type in rows:
        try:
            values[key] = parse_config_value(key, raw, config_type)
        except ConfigValueError as exc:
            raise SettingError(str(exc)) from None
    return values


async def read_system_settings(session: AsyncSession) -> SystemSettings:
    """Every setting from ``system_config`` (defaults for absent keys); SettingError naming the first stored
    value refused."""
    return settings_from(await _stored(session, SETTING_KEYS))


def retention_policy(settings: SystemSettings) -> RetentionPolicy:
    """The retention policy the settings give (``retention_*_days``)."""
    from storage.retention import RetentionPolicy

    return RetentionPolicy(
        video_days=settings.retention_video_days,
        telemetry_days=settings.retention_telemetry_days,
        sessions_days=settings.retention_sessions_days,
        safety_days=settings.retention_safety_days,
        audit_days=settings.retention_audit_days,
    )


async def read_setting(session: AsyncSession, key: str) -> Any:
    """One setting from ``system_config`` (its default when absent); SettingError naming the key when the
    key is unknown or the stored value is refused."""
    if key not in _ADAPTERS:
        raise SettingError(f"config {key}: no such setting")
    stored = await _stored(session, (key,))
    if key not in stored:
        return getattr(DEFAULTS, key)
    return check_setting(key, stored[key])


__all__ = [
    "DEFAULTS",
    "MIN_AUDIT_RETENTION_DAYS",
    "SETTING_KEYS",
    "SettingError",
    "SettingSpec",
    "SystemSettings",
    "check_setting",
    "known_keys",
    "read_setting",
    "read_system_settings",
    "retention_policy",
    "settings_from",
    "spec",
]
