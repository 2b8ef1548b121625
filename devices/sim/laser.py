"""Simulator of the laser diode driver (Arroyo LaserSource 6310 style), a
:class:`~devices.sim.pty.LineHandler`.

Follows docs/devices.md, "Laser driver", byte for byte. This module also holds :class:`ArroyoSim`, the Arroyo
command syntax shared with the TEC simulator:

- commands are case-insensitive; short (``LAS:OUT``) and long (``LASER:OUTPUT``) mnemonics are both accepted;
- ``;`` chains commands and keeps the path: ``LAS:LDI 1200;OUT 1`` is ``LAS:LDI 1200`` then ``LAS:OUT 1``; a
  chained command that does not exist under the kept path is looked up from the root (``LAS:OUT 0;ERR?``); a
  leading ``:`` means the root;
- input over 128 characters is refused with error 102 and nothing is executed;
- unknown command 123; a missing or malformed value (or a value given to a query) 202; a value out of range
  201;
- set commands send no reply; each query one line; ``ERR?`` answers the queued codes comma-separated (or
  ``0``) and clears them. The queue holds at most 16 codes; later ones are lost.

Laser behaviour (units: mA, V, degC, s of the model's clock):

- limit 6000.0 mA at power-up, settable 0..10000 mA; lowering it also lowers a higher setpoint; a setpoint
  above the limit is refused (201) and the setpoint is unchanged;
- ``LAS:OUT 1`` while the interlock input is open (``model.laser_enable`` false) leaves the output off and
  queues 501; while the TEC output is off (``model.tec_output_on`` false) leaves it off and queues 508;
  while the diode is over its thermal trip temperature (40 degC) leaves it off (condition bit 15 tells why);
- LASER_ENABLE going low while the output is on switches the output off at once and queues 501;
- the diode temperature reaching 40 degC with the output on switches it off (checked at every command
  received);
- measured current follows the setpoint over a 20 ms settling time after the output turns on or the setpoint
  changes; while it is more than 5 mA away, condition bit 9 (out of tolerance) is set;
- condition bits: 0 current limit (on at a setpoint equal to the limit), 4 interlock open, 9 out of tolerance,
  10 output on, 15 thermal trip;
- diode voltage ``1.5 V + 0.285 V/A x I`` while on, 0 while off.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from devices.sim.model import PhysicalModel

MAX_INPUT_CHARS = 128
ERROR_QUEUE_SIZE = 16
E_TOO_LONG = 102
E_UNKNOWN = 123
E_RANGE = 201
E_DATA = 202
E_INTERLOCK = 501
E_TEC_OFF = 508

LIMIT_AT_POWER_UP_MA = 6000.0
LIMIT_MAX_MA = 10000.0
SETTLE_S = 0.020
TOLERANCE_MA = 5.0
THERMAL_TRIP_C = 40.0
CURRENT_NOISE_MA = 0.2

BIT_CURRENT_LIMIT = 1 << 0
BIT_INTERLOCK_OPEN = 1 << 4
BIT_OUT_OF_TOLERANCE = 1 << 9
BIT_OUTPUT_ON = 1 << 10
BIT_THERMAL_TRIP = 1 << 15

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

#: Long mnemonic -> short one.
ALIASES = {"LASER": "LAS", "OUTPUT": "OUT", "LIMIT": "LIM", "CONDITION": "COND"}


class SimError(Exception):
    """A command failed with an Arroyo error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def parse_number(arg: str | None) -> float:
    """A numeric argument, or error 202."""
    if arg is None or not _NUMBER.fullmatch(arg):
        raise SimError(E_DATA)
    return float(arg)


def parse_switch(arg: str | None) -> bool:
    """``0``/``1``/``OFF``/``ON`` (any case), or error 202."""
    if arg is None:
        raise SimError(E_DATA)
    value = arg.upper()
    if value in ("1", "ON"):
        return True
    if value in ("0", "OFF"):
        return False
    raise SimError(E_DATA)


Query = Callable[[], str]
Setter = Callable[[str | None], None]


class ArroyoSim:
    """Arroyo command syntax: subclasses register queries and set commands by their short header."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.errors: list[int] = []
        self._queries: dict[str, Query] = {"*IDN": lambda: self.identity, "ERR": self._err}
        self._setters: dict[str, Setter] = {}

    # ---------------------------------------------------------------------------------- errors
    def queue_error(self, code: int) -> None:
        """Queue an error code for ``ERR?`` (dropped when the queue is full)."""
        if len(self.errors) < ERROR_QUEUE_SIZE:
            self.errors.append(code)

    def _err(self) -> str:
        reply = ",".join(str(c) for c in self.errors) if self.errors else "0"
        self.errors.clear()
        return reply

    # ---------------------------------------------------------------------------------- parsing
    def handle_overlong(self) -> None:
        """Input longer than the pty's own bound: refused like any over-long message."""
        self.queue_error(E_TOO_LONG)

    def before_command(self) -> None:
        """Called once per received line before it is executed (time-driven state updates)."""

    def handle_line(self, line: str) -> list[str]:
        """Execute one received line; return the query replies."""
        if len(line) > MAX_INPUT_CHARS:
            self.queue_error(E_TOO_LONG)
            return []
        self.before_command()
        replies: list[str] = []
        path: list[str] = []
        for part in line.split(";"):
            part = part.strip()
            if not part:
                continue
            pieces = part.split(None, 1)
            header = pieces[0].upper()
            arg = pieces[1].strip() if len(pieces) > 1 else None
            is_query = header.endswith("?")
            if is_query:
                header = header[:-1]
            absolute = header.startswith(":")
            nodes = [ALIASES.get(n, n) for n in header.lstrip(":").split(":")]
            if not header.lstrip(":") or any(not n for n in nodes):
                self.queue_error(E_UNKNOWN)
                continue
            table: dict[str, Query] | dict[str, Setter] = self._queries if is_query else self._setters
            candidates = [nodes] if absolute or not path else [path + nodes, nodes]
            chosen: list[str] | None = None
            for candidate in candidates:
                if ":".join(candidate) in table:
                    chosen = candidate
                    break
            if chosen is None:
                self.queue_error(E_UNKNOWN)
                continue
            path = chosen[:-1]
            key = ":".join(chosen)
            try:
                if is_query:
                    if arg is not None:
                        raise SimError(E_DATA)
                    replies.append(self._queries[key]())
                else:
                    self._setters[key](arg)
            except SimError as exc:
                self.queue_error(exc.code)
        return replies


class LaserSim(ArroyoSim):
    """The laser diode driver's firmware model, wired to the shared :class:`PhysicalModel`."""

    def __init__(
        self,
        model: PhysicalModel,
        *,
        serial: str = "SIM-6310-0001",
        version: str = "1.6",
        build: str = "sim",
        seed: int | None = None,
    ) -> None:
        super().__init__(f"Arroyo 6310 {serial} {version} {build}")
        self.model = model
        self.limit_ma = LIMIT_AT_POWER_UP_MA
        self.setpoint_ma = 0.0
        self._settle_from_ma = 0.0
        self._settle_start = model.clock()
        self._rng = random.Random(seed)
        model.laser_output_on = False
        model.laser_current_ma = 0.0
        model.on_laser_enable_change(self._on_enable_change)
        self._queries.update(
            {
                "LAS:SET:LDI": lambda: f"{self.setpoint_ma:.1f}",
                "LAS:LDI": lambda: f"{self.measured_current_ma():.1f}",
                "LAS:LIM:LDI": lambda: f"{self.limit_ma:.1f}",
                "LAS:OUT": lambda: "1" if self.model.laser_output_on else "0",
                "LAS:LDV": lambda: f"{self.measured_voltage_v():.3f}",
                "LAS:COND": lambda: str(self.condition()),
            }
        )
        self._setters.update(
            {"LAS:LDI": self._set_ldi, "LAS:LIM:LDI": self._set_limit, "LAS:OUT": self._set_out}
        )

    # ------------------------------------------------------------------------------------ state
    @property
    def output_on(self) -> bool:
        """Whether the output is on."""
        return self.model.laser_output_on

    def _start_settling(self) -> None:
        self._settle_from_ma = self._actual_current_ma()
        self._settle_start = self.model.clock()

    def _actual_current_ma(self) -> float:
        if not self.model.laser_output_on:
            return 0.0
        fraction = min(1.0, max(0.0, (self.model.clock() - self._settle_start) / SETTLE_S))
        return self._settle_from_ma + (self.setpoint_ma - self._settle_from_ma) * fraction

    def measured_current_ma(self) -> float:
        """Measured diode current, mA (settling plus a little noise while on; 0 while off)."""
        if not self.model.laser_output_on:
            return 0.0
        noisy = self._actual_current_ma() + self._rng.uniform(-CURRENT_NOISE_MA, CURRENT_NOISE_MA)
        return max(0.0, noisy)

    def measured_voltage_v(self) -> float:
        """Diode forward voltage, V."""
        if not self.model.laser_output_on:
            return 0.0
        return 1.5 + 0.285 * self._actual_current_ma() / 1000.0

    def _thermal_trip(self) -> bool:
        return self.model.tec_temperature_c() >= THERMAL_TRIP_C

    def condition(self) -> int:
        """The condition register."""
        value = 0
        on = self.model.laser_output_on
        if on and self.setpoint_ma >= self.limit_ma:
            value |= BIT_CURRENT_LIMIT
        if not self.model.laser_enable:
            value |= BIT_INTERLOCK_OPEN
        if on and abs(self._actual_current_ma() - self.setpoint_ma) > TOLERANCE_MA:
            value |= BIT_OUT_OF_TOLERANCE
        if on:
            value |= BIT_OUTPUT_ON
        if self._thermal_trip():
            value |= BIT_THERMAL_TRIP
        return value

    def before_command(self) -> None:
        if self.model.laser_output_on and self._thermal_trip():
            self.model.laser_output_on = False

    def _on_enable_change(self, enabled: bool) -> None:
        if not enabled and self.model.laser_output_on:
            self.model.laser_output_on = False
            self.queue_error(E_INTERLOCK)

    # ---------------------------------------------------------------------------------- setters
    def _set_ldi(self, arg: str | None) -> None:
        value = parse_number(arg)
        if not 0.0 <= value <= self.limit_ma:
            raise SimError(E_RANGE)
        self._start_settling()
        self.setpoint_ma = value
        self.model.laser_current_ma = value

    def _set_limit(self, arg: str | None) -> None:
        value = parse_number(arg)
        if not 0.0 <= value <= LIMIT_MAX_MA:
            raise SimError(E_RANGE)
        self.limit_ma = value
        if self.setpoint_ma > value:
            self._start_settling()
            self.setpoint_ma = value
            self.model.laser_current_ma = value

    def _set_out(self, arg: str | None) -> None:
        on = parse_switch(arg)
        if not on:
            self.model.laser_output_on = False
            return
        if self.model.laser_output_on:
            return
        if not self.model.laser_enable:
            raise SimError(E_INTERLOCK)
        if not self.model.tec_output_on:
            raise SimError(E_TEC_OFF)
        if self._thermal_trip():
            return
        self.model.laser_current_ma = self.setpoint_ma
        self.model.laser_output_on = True
        self._settle_from_ma = 0.0
        self._settle_start = self.model.clock()
