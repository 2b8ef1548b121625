"""The supervisor's ports over the rig's drivers: how :class:`~control.supervisor.SafetySupervisor`
switches the laser and arms the safety board in the controller process.

The wire commands belong to the drivers (:mod:`devices.laser`, :mod:`devices.safety`); these adapters only
find the driver of the rig that is open now and the laser calibration of the session that is open now.
"""

from __future__ import annotations

from collections.abc import Callable

from control.calibration import CalibrationSet
from control.controller.monitors import Readouts
from control.supervisor import Refused
from devices.laser import LaserDriver
from devices.rig import Rig
from devices.safety import SafetyBoardDriver
from devices.transport import LinkError

RigSource = Callable[[], Rig | None]


class SupervisorLaser:
    """The supervisor's laser port: the rig's laser driver, and the open session's laser calibration for
    power. ``rig`` gives the open rig (``None`` before it opens); ``calibrations`` the session's calibrations
    (``None`` without a session); the current set last is noted in ``readouts``."""

    def __init__(
        self, rig: RigSource, calibrations: Callable[[], CalibrationSet | None], readouts: Readouts
    ) -> None:
        self._rig = rig
        self._calibrations = calibrations
        self._readouts = readouts

    @property
    def driver(self) -> LaserDriver:
        rig = self._rig()
        laser = rig.laser if rig is not None else None
        if laser is None:
            raise LinkError("laser driver not open")
        return laser

    def off_now(self) -> None:
        self.driver.output_off_now()

    async def off_verified(self) -> None:
        await self.driver.output_off()

    async def on_verified(self, still_wanted: Callable[[], bool] | None = None) -> None:
        await self.driver.output_on(guard=still_wanted)

    async def set_power(self, watts: float) -> None:
        calibrations = self._calibrations()
        if calibrations is None:
            raise Refused("no session: no laser calibration in use")
        current = calibrations.power_to_current_ma(watts)
        await self.driver.set_current_setpoint_ma(round(current, 1))
        self._readouts.current_ma = current


class SupervisorBoard:
    """The supervisor's board port over the rig's safety board driver."""

    def __init__(self, rig: RigSource) -> None:
        self._rig = rig

    def _driver(self) -> SafetyBoardDriver:
        rig = self._rig()
        board = rig.safety if rig is not None else None
        if board is None:
            raise LinkError("safety board not open")
        return board

    async def arm(self) -> None:
        await self._driver().arm()

    async def disarm(self) -> None:
        await self._driver().disarm()

    async def clear_watchdog(self) -> None:
        await self._driver().clear_watchdog()
