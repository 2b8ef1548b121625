"""Driver of the laser diode driver (Arroyo Instruments LaserSource 6300 series style).

See docs/devices.md, "Laser driver". 38400 baud 8N1, CR LF lines. Set commands get no reply, so every
safety-relevant set is read back, and ``ERR?`` is read after every set.

Units: currents in milliamps (the wire's unit), voltages in volts.

This module also holds what the Arroyo laser driver and TEC share (identity, error codes, strict number
parsing, the verified output switch) in :class:`ArroyoDevice`; :mod:`devices.tec` builds on it.

Decisions:

- Switching the output **on** first reads ``ERR?`` (so errors left from earlier cannot be mistaken for a
  refusal), sends ``LAS:OUT 1``, reads ``ERR?`` and then ``LAS:OUT?``. Any error, or a read-back other than
  ``1``, switches the output off again (verified) and raises: the output is never left on after a failed
  switch-on.
- Switching the output **off** sends ``LAS:OUT 0``, requires ``LAS:OUT?`` to answer ``0`` (else
  :class:`VerifyError`), then reads ``ERR?`` and *returns* the errors rather than raising: the safe direction
  succeeds whenever the output is verified off, and the caller logs the errors.
- A setpoint above the current limit the driver knows (read when connecting, updated by
  :meth:`LaserDriver.set_current_limit_ma`) is refused with :class:`OutOfRange` before a byte is sent.
- The identity must name the maker ``Arroyo`` and a model of the expected series (6xxx for the laser driver,
  5xxx for the TEC), so two swapped ports are detected at connection.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from devices.transport import LineTransport

#: Arroyo error codes used by the rig (docs/devices.md).
ERROR_CODES: dict[int, str] = {
    102: "message too long",
    123: "unknown command",
    201: "value out of range",
    202: "invalid data type",
    501: "interlock shutdown (output forced off because the interlock input opened)",
    508: "output refused because the TEC is off",
}

#: Highest current limit, mA, the driver accepts (the LaserSource's full scale).
LASER_MAX_LIMIT_MA = 10000.0
#: Read-back tolerance for a current setpoint or limit, mA (the wire carries one decimal).
CURRENT_READBACK_TOLERANCE_MA = 0.051

_LOG = logging.getLogger(__name__)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_INTEGER = re.compile(r"\d+")


class OutOfRange(ValueError):
    """A value was refused by the driver before anything was sent."""


class VerifyError(Exception):
    """A read-back disagreed with what was just set."""


@dataclass(frozen=True)
class DeviceErrorCode:
    """One Arroyo error code with its meaning."""

    code: int
    meaning: str

    def __str__(self) -> str:
        return f"E-{self.code} {self.meaning}"


def decode_error(code: int) -> DeviceErrorCode:
    """The :class:`DeviceErrorCode` for a numeric code (unknown codes are kept, marked as such)."""
    return DeviceErrorCode(code, ERROR_CODES.get(code, "unknown error code"))


def _describe(errors: tuple[DeviceErrorCode, ...]) -> str:
    return ", ".join(str(e) for e in errors)


class Withdrawn(Exception):
    """An output-on request whose guard said no just before the command would have been sent."""


class ArroyoError(Exception):
    """The device reported errors (from ``ERR?``) after a command."""

    def __init__(self, device: str, action: str, errors: tuple[DeviceErrorCode, ...]) -> None:
        self.device = device
        self.action = action
        self.errors = errors
        super().__init__(f"{device}: {action} failed: {_describe(errors)}")

    @property
    def codes(self) -> tuple[int, ...]:
        """The numeric codes."""
        return tuple(e.code for e in self.errors)


@dataclass(frozen=True)
class Identity:
    """Parsed ``*IDN?`` reply: ``<maker> <model> <serial> <version> <build>``."""

    maker: str
    model: str
    serial: str
    version: str
    build: str

    def __str__(self) -> str:
        return f"{self.maker} {self.model} serial {self.serial} version {self.version} build {self.build}"


class ArroyoDevice:
    """What the Arroyo laser driver and TEC have in common: identity, ``ERR?``, strict parsing, verified
    output.

    ``prefix`` is the command path of the instrument (``LAS`` or ``TEC``); ``series`` the first digit its
    model number must have.
    """

    prefix = ""
    series = ""
    label = "arroyo"

    def __init__(self, transport: LineTransport) -> None:
        self.transport = transport
        self.identity: Identity | None = None

    # ------------------------------------------------------------------------------------ parsing
    def _float(self, reply: str, what: str) -> float:
        if not _NUMBER.fullmatch(reply):
            raise self.transport.bad_reply(reply, f"{what}: not a number")
        value = float(reply)
        if not math.isfinite(value):
            raise self.transport.bad_reply(reply, f"{what}: not finite")
        return value

    def _int(self, reply: str, what: str, *, maximum: int) -> int:
        if not _INTEGER.fullmatch(reply):
            raise self.transport.bad_reply(reply, f"{what}: not a non-negative integer")
        value = int(reply)
        if value > maximum:
            raise self.transport.bad_reply(reply, f"{what}: above {maximum}")
        return value

    def _bool(self, reply: str, what: str) -> bool:
        if reply not in ("0", "1"):
            raise self.transport.bad_reply(reply, f"{what}: expected 0 or 1")
        return reply == "1"

    async def _query(self, command: str) -> str:
        return await self.transport.query(command)

    # ------------------------------------------------------------------------------------ commands
    async def identify(self) -> Identity:
        """Ask ``*IDN?`` and parse it; the maker must be Arroyo and the model of this instrument's series."""
        reply = await self._query("*IDN?")
        words = reply.split(" ")
        if len(words) != 5 or any(not w for w in words):
            raise self.transport.bad_reply(
                reply, "identity: expected '<maker> <model> <serial> <version> <build>'"
            )
        maker, model, serial, version, build = words
        if maker != "Arroyo":
            raise self.transport.bad_reply(reply, "identity: maker is not Arroyo")
        if not (model.isdigit() and model.startswith(self.series)):
            raise self.transport.bad_reply(reply, f"identity: model is not a {self.series}xxx {self.label}")
        self.identity = Identity(maker, model, serial, version, build)
        return self.identity

    async def errors(self) -> tuple[DeviceErrorCode, ...]:
        """Read and clear the error queue (``ERR?``); empty when the device answers ``0``."""
        reply = await self._query("ERR?")
        if reply == "0":
            return ()
        parts = reply.split(",")
        codes: list[DeviceErrorCode] = []
        for part in parts:
            if not _INTEGER.fullmatch(part) or part == "0":
                raise self.transport.bad_reply(reply, "error list: expected '0' or comma-separated codes")
            codes.append(decode_error(int(part)))
        return tuple(codes)

    async def _check_errors(self, action: str) -> None:
        found = await self.errors()
        if found:
            raise ArroyoError(self.transport.name, action, found)

    async def _set_and_check(self, command: str, action: str) -> None:
        await self.transport.write(command)
        await self._check_errors(action)

    async def output_is_on(self) -> bool:
        """Read the output state (``<prefix>:OUT?``)."""
        return self._bool(await self._query(f"{self.prefix}:OUT?"), "output state")

    def output_off_now(self) -> None:
        """Put "output off" (``<prefix>:OUT 0``) on the wire at once, ahead of any exchange in flight and
        without reading anything back (:meth:`output_off` verifies). Raises :class:`LinkDown` if the link is
        down."""
        self.transport.write_now(f"{self.prefix}:OUT 0")

    async def output_off(self) -> tuple[DeviceErrorCode, ...]:
        """Switch the output off and verify it; returns the errors ``ERR?`` then reported (not raised).

        Raises :class:`VerifyError` if the read-back is not ``0``.
        """
        await self.transport.write(f"{self.prefix}:OUT 0")
        if await self.output_is_on():
            raise VerifyError(f"{self.transport.name}: output still on after {self.prefix}:OUT 0")
        return await self.errors()

    async def output_on(self, *, guard: Callable[[], bool] | None = None) -> None:
        """Switch the output on and verify it; on any error or a wrong read-back, switch it off again and
        raise.

        ``guard`` is asked immediately before ``OUT 1`` is written (after any reply in flight): when it says
        no, nothing is sent and :class:`Withdrawn` is raised, so a caller that stopped wanting emission while
        the link was busy never switches the output on late.

        Raises :class:`ArroyoError` with the decoded codes (for example E-501 with the interlock open, E-508
        with the TEC off), :class:`VerifyError` or :class:`Withdrawn`.
        """
        stale = await self.errors()
        if stale:
            _LOG.warning("%s: errors pending before output on: %s", self.transport.name, _describe(stale))
        if not await self.transport.write(f"{self.prefix}:OUT 1", guard=guard):
            raise Withdrawn(f"{self.transport.name}: output on withdrawn before it was sent")
        try:
            found = await self.errors()
            on = await self.output_is_on()
        except BaseException:
            # Also on cancellation: the output must not stay on because the caller went away mid-check.
            try:
                await self.output_off()
            except Exception:
                _LOG.exception("%s: output off after a failed switch-on also failed", self.transport.name)
            raise
        if found or not on:
            await self.output_off()
            if found:
                raise ArroyoError(self.transport.name, "output on", found)
            raise VerifyError(
                f"{self.transport.name}: output did not turn on ({self.prefix}:OUT? answered 0)"
            )


@dataclass(frozen=True)
class LaserCondition:
    """The laser driver's condition register (``LAS:COND?``) decoded."""

    raw: int
    current_limit: bool
    interlock_open: bool
    out_of_tolerance: bool
    output_on: bool
    thermal_trip: bool

    @classmethod
    def from_register(cls, raw: int) -> LaserCondition:
        """Decode the register: bit 0 current limit, 4 interlock open, 9 out of tolerance, 10 output on,
        15 thermal trip."""
        return cls(
            raw=raw,
            current_limit=bool(raw & (1 << 0)),
            interlock_open=bool(raw & (1 << 4)),
            out_of_tolerance=bool(raw & (1 << 9)),
            output_on=bool(raw & (1 << 10)),
            thermal_trip=bool(raw & (1 << 15)),
        )


class LaserDriver(ArroyoDevice):
    """The laser diode driver. Currents in mA, voltages in V.

    Call :meth:`connect` first (identity and current limit); setpoints are checked against that limit.
    """

    prefix = "LAS"
    series = "6"
    label = "laser driver"

    def __init__(self, transport: LineTransport) -> None:
        super().__init__(transport)
        #: The current limit, mA, as last read from or set on the device (None before :meth:`connect`).
        self.current_limit_ma: float | None = None

    async def connect(self) -> Identity:
        """Identify the device and read its current limit."""
        identity = await self.identify()
        await self.get_current_limit_ma()
        return identity

    async def get_current_limit_ma(self) -> float:
        """Read the current limit, mA (``LAS:LIM:LDI?``), and remember it."""
        value = self._float(await self._query("LAS:LIM:LDI?"), "current limit")
        if not 0.0 <= value <= LASER_MAX_LIMIT_MA:
            raise self.transport.bad_reply(
                str(value), f"current limit outside 0..{LASER_MAX_LIMIT_MA:.0f} mA"
            )
        self.current_limit_ma = value
        return value

    async def set_current_limit_ma(self, limit_ma: float) -> None:
        """Set the current limit, mA (0..10000), check ``ERR?`` and verify the read-back."""
        if not math.isfinite(limit_ma) or not 0.0 <= limit_ma <= LASER_MAX_LIMIT_MA:
            raise OutOfRange(f"current limit {limit_ma} mA is outside 0..{LASER_MAX_LIMIT_MA:.0f} mA")
        await self._set_and_check(f"LAS:LIM:LDI {limit_ma:.1f}", "set current limit")
        readback = await self.get_current_limit_ma()
        if abs(readback - limit_ma) > CURRENT_READBACK_TOLERANCE_MA:
            raise VerifyError(
                f"{self.transport.name}: current limit reads {readback} mA, set {limit_ma:.1f} mA"
            )

    async def get_current_setpoint_ma(self) -> float:
        """Read the drive current setpoint, mA (``LAS:SET:LDI?``)."""
        return self._float(await self._query("LAS:SET:LDI?"), "current setpoint")

    async def set_current_setpoint_ma(self, current_ma: float) -> None:
        """Set the drive current, mA, check ``ERR?`` and verify the read-back.

        Refused with :class:`OutOfRange` before anything is sent when negative, not finite, or above the
        current limit the driver knows; refused with :class:`RuntimeError` before :meth:`connect` read that
        limit.
        """
        limit = self.current_limit_ma
        if limit is None:
            raise RuntimeError(f"{self.transport.name}: current limit unknown; connect first")
        if not math.isfinite(current_ma) or current_ma < 0.0:
            raise OutOfRange(f"current setpoint {current_ma} mA must be a finite value >= 0")
        if round(current_ma, 1) > limit:
            raise OutOfRange(
                f"current setpoint {current_ma:.1f} mA is above the current limit {limit:.1f} mA"
            )
        await self._set_and_check(f"LAS:LDI {current_ma:.1f}", "set current")
        readback = await self.get_current_setpoint_ma()
        if abs(readback - current_ma) > CURRENT_READBACK_TOLERANCE_MA:
            raise VerifyError(f"{self.transport.name}: setpoint reads {readback} mA, set {current_ma:.1f} mA")

    async def measured_current_ma(self) -> float:
        """Measured diode current, mA (``LAS:LDI?``)."""
        return self._float(await self._query("LAS:LDI?"), "measured current")

    async def measured_voltage_v(self) -> float:
        """Measured diode voltage, V (``LAS:LDV?``)."""
        return self._float(await self._query("LAS:LDV?"), "diode voltage")

    async def condition(self) -> LaserCondition:
        """Read and decode the condition register (``LAS:COND?``)."""
        raw = self._int(await self._query("LAS:COND?"), "condition register", maximum=0xFFFF)
        return LaserCondition.from_register(raw)
