"""Driver of the TEC that holds the laser diode's temperature (Arroyo TECSource 5300 series style).

Wire protocol: docs/devices.md, "TEC". Same link and syntax as the laser driver (CR LF lines, set commands
without a reply, ``ERR?`` after every set, read-back of safety-relevant sets). Temperatures in degC,
currents in A.

The temperature window the laser needs (``tec_window_c``) is judged by the safety supervisor; this driver
reports the setpoint, the measured temperature and whether the output is on.
"""

from __future__ import annotations

import math

from devices.laser import ArroyoDevice, Identity, OutOfRange, VerifyError
from devices.transport import LineTransport

#: Read-back tolerance for a temperature setpoint, degC (the wire carries two decimals).
SETPOINT_READBACK_TOLERANCE_C = 0.0051


class TecDriver(ArroyoDevice):
    """The TEC. Call :meth:`connect` first (identity and temperature limits)."""

    prefix = "TEC"
    series = "5"
    label = "TEC"

    def __init__(self, transport: LineTransport) -> None:
        super().__init__(transport)
        #: Temperature limits, degC, as read at :meth:`connect` (None before).
        self.limit_low_c: float | None = None
        self.limit_high_c: float | None = None

    async def connect(self) -> Identity:
        """Identify the device and read its temperature limits."""
        identity = await self.identify()
        await self.limits()
        return identity

    async def limits(self) -> tuple[float, float]:
        """Read the temperature limits (low, high), degC (``TEC:LIM:TLO?``, ``TEC:LIM:THI?``), and remember
        them."""
        low = self._float(await self._query("TEC:LIM:TLO?"), "low temperature limit")
        high = self._float(await self._query("TEC:LIM:THI?"), "high temperature limit")
        if low >= high:
            raise self.transport.bad_reply(f"{low},{high}", "temperature limits: low not below high")
        self.limit_low_c, self.limit_high_c = low, high
        return low, high

    async def get_setpoint_c(self) -> float:
        """Read the temperature setpoint, degC (``TEC:SET:T?``)."""
        return self._float(await self._query("TEC:SET:T?"), "temperature setpoint")

    async def set_setpoint_c(self, temperature_c: float) -> None:
        """Set the temperature setpoint, degC, check ``ERR?`` and verify the read-back.

        Refused with :class:`OutOfRange` before anything is sent outside the limits read at :meth:`connect`;
        refused with :class:`RuntimeError` before the limits are known.
        """
        low, high = self.limit_low_c, self.limit_high_c
        if low is None or high is None:
            raise RuntimeError(f"{self.transport.name}: temperature limits unknown; connect first")
        if not math.isfinite(temperature_c) or not low <= round(temperature_c, 2) <= high:
            raise OutOfRange(
                f"temperature setpoint {temperature_c} degC is outside {low:.2f}..{high:.2f} degC"
            )
        await self._set_and_check(f"TEC:T {temperature_c:.2f}", "set temperature")
        readback = await self.get_setpoint_c()
        if abs(readback - temperature_c) > SETPOINT_READBACK_TOLERANCE_C:
            raise VerifyError(
                f"{self.transport.name}: setpoint reads {readback} degC, set {temperature_c:.2f}"
            )

    async def temperature_c(self) -> float:
        """Measured temperature, degC (``TEC:T?``)."""
        return self._float(await self._query("TEC:T?"), "measured temperature")

    async def current_a(self) -> float:
        """TEC current, A (``TEC:ITE?``)."""
        return self._float(await self._query("TEC:ITE?"), "TEC current")
