"""The telemetry line: what one line of a session's telemetry file holds, written and read through one schema.

The controller writes one :class:`TelemetrySample` per safety-board sample while a session is open
(:meth:`TelemetrySample.encode` gives the JSON object :class:`~storage.telemetry.TelemetryWriter` writes
as one line); the session review reads each line back with :func:`decode_sample`, which refuses a line that
does not follow the schema with :class:`~storage.telemetry.TelemetryError` naming the line and the field.

Keys (every one present in every line; no others):

=========  ===============  ================================================================================
key        type             meaning
=========  ===============  ================================================================================
``t``      number           seconds since the session opened (4 decimals)
``pd_v``   number           photodiode voltage, V
``p_w``    number or null   measured laser power, W (4 decimals); null without an active calibration
``cmd_w``  number           commanded laser power, W (4 decimals)
``on``     boolean          the output is commanded on while treating (emitting)
``pedal``  boolean          footpedal pressed
``estop``  boolean          E-stop pressed
``vib_g``  number           smoothing device vibration, g
``enable`` boolean          the safety board's LASER_ENABLE line
``state``  text             the safety supervisor's state
``pos_um`` number or null   actuator position, um; null when not known
=========  ===============  ================================================================================

Numbers are finite (no NaN nor infinity).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, Final

from storage.telemetry import TelemetryError

#: Decimals kept for the time and the two powers.
DECIMALS: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySample:
    """One telemetry line (see the module documentation for the keys and units)."""

    t: float
    pd_v: float
    p_w: float | None
    cmd_w: float
    on: bool
    pedal: bool
    estop: bool
    vib_g: float
    enable: bool
    state: str
    pos_um: float | None

    def encode(self) -> dict[str, Any]:
        """The line's JSON object, in the schema's key order (time and powers rounded to 4 decimals)."""
        return {
            "t": round(self.t, DECIMALS),
            "pd_v": self.pd_v,
            "p_w": None if self.p_w is None else round(self.p_w, DECIMALS),
            "cmd_w": round(self.cmd_w, DECIMALS),
            "on": self.on,
            "pedal": self.pedal,
            "estop": self.estop,
            "vib_g": self.vib_g,
            "enable": self.enable,
            "state": self.state,
            "pos_um": self.pos_um,
        }


KEYS: Final = tuple(f.name for f in fields(TelemetrySample))
_NUMBERS: Final = ("t", "pd_v", "cmd_w", "vib_g")
_OPTIONAL_NUMBERS: Final = ("p_w", "pos_um")
_FLAGS: Final = ("on", "pedal", "estop", "enable")


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def decode_sample(line: bytes | str, where: str) -> TelemetrySample:
    """The sample of one telemetry line; :class:`TelemetryError` saying ``where`` (e.g. ``telemetry.jsonl
    line 12``) and what is wrong: not JSON, not an object, a missing or unknown key, a value of the wrong
    type."""
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise TelemetryError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TelemetryError(f"{where} is not a JSON object")
    missing = [key for key in KEYS if key not in value]
    if missing:
        raise TelemetryError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise TelemetryError(f"{where} has unknown {', '.join(repr(k) for k in unknown)}")
    for key in _NUMBERS:
        if not _is_number(value[key]):
            raise TelemetryError(f"{where}: {key!r} must be a finite number, not {value[key]!r}")
    for key in _OPTIONAL_NUMBERS:
        if value[key] is not None and not _is_number(value[key]):
            raise TelemetryError(f"{where}: {key!r} must be a finite number or null, not {value[key]!r}")
    for key in _FLAGS:
        if not isinstance(value[key], bool):
            raise TelemetryError(f"{where}: {key!r} must be true or false, not {value[key]!r}")
    if not isinstance(value["state"], str) or not value["state"]:
        raise TelemetryError(f"{where}: 'state' must be text, not {value['state']!r}")
    measured, position = value["p_w"], value["pos_um"]
    return TelemetrySample(
        t=float(value["t"]),
        pd_v=float(value["pd_v"]),
        p_w=None if measured is None else float(measured),
        cmd_w=float(value["cmd_w"]),
        vib_g=float(value["vib_g"]),
        pos_um=None if position is None else float(position),
        on=value["on"],
        pedal=value["pedal"],
        estop=value["estop"],
        enable=value["enable"],
        state=value["state"],
    )


__all__ = ["DECIMALS", "KEYS", "TelemetrySample", "decode_sample"]
