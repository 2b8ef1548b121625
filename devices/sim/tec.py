"""Simulator of the TEC (Arroyo TECSource 5305 style), a :class:`~devices.sim.pty.LineHandler`.

Follows docs/devices.md, "TEC", with the Arroyo syntax of :class:`~devices.sim.laser.ArroyoSim`
(case-insensitive, short and long forms, ``;`` chains keeping the path, 102/123/201/202, no reply to set
commands, ``ERR?``).

Temperatures in degC, current in A. The setpoint, the output state and the measured temperature live in the
shared :class:`~devices.sim.model.PhysicalModel` (first-order response with a 5 s time constant, plus
injected drift), so the laser simulator sees the TEC's output state (error 508) and the diode temperature
(thermal trip).

Limits: 15.00..35.00 degC (``TEC:LIM:TLO?`` / ``TEC:LIM:THI?``); a setpoint outside them is refused with 201
and the setpoint is unchanged.
"""

from __future__ import annotations

from devices.sim.laser import E_RANGE, ArroyoSim, SimError, parse_number, parse_switch
from devices.sim.model import PhysicalModel

LIMIT_LOW_C = 15.0
LIMIT_HIGH_C = 35.0


class TecSim(ArroyoSim):
    """The TEC's firmware model, wired to the shared :class:`PhysicalModel`."""

    def __init__(
        self,
        model: PhysicalModel,
        *,
        serial: str = "SIM-5305-0001",
        version: str = "1.4",
        build: str = "sim",
    ) -> None:
        super().__init__(f"Arroyo 5305 {serial} {version} {build}")
        self.model = model
        self.limit_low_c = LIMIT_LOW_C
        self.limit_high_c = LIMIT_HIGH_C
        self._queries.update(
            {
                "TEC:SET:T": lambda: f"{self.model.tec_setpoint_c:.2f}",
                "TEC:T": lambda: f"{self.model.tec_temperature_c():.2f}",
                "TEC:ITE": lambda: f"{self.model.tec_current_a():.3f}",
                "TEC:OUT": lambda: "1" if self.model.tec_output_on else "0",
                "TEC:LIM:THI": lambda: f"{self.limit_high_c:.2f}",
                "TEC:LIM:TLO": lambda: f"{self.limit_low_c:.2f}",
            }
        )
        self._setters.update({"TEC:T": self._set_t, "TEC:OUT": self._set_out})

    def _set_t(self, arg: str | None) -> None:
        value = parse_number(arg)
        if not self.limit_low_c <= value <= self.limit_high_c:
            raise SimError(E_RANGE)
        self.model.tec_setpoint_c = value

    def _set_out(self, arg: str | None) -> None:
        self.model.tec_output_on = parse_switch(arg)
