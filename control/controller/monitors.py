"""The device monitors of the controller process: the polling loops that read the laser, the TEC and the
actuator, and the supervisor's periodic tick.

They only report: each poll hands the supervisor one typed reading (:class:`~control.supervisor.LaserReading`,
:class:`~control.supervisor.TecReading`, :class:`~control.supervisor.ActuatorReading`), and the supervisor
judges it. The figures a console shows besides (diode current, actuator position, TEC setpoint) are kept in
:class:`Readouts`. Every 50 ticks the camera's health and the serial links' bad replies are logged when they
change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from control.supervisor import ActuatorReading, BoardLink, LaserReading, SafetySupervisor, TecReading
from control.vocabulary import Severity
from devices.actuator import ActuatorError
from devices.rig import Rig
from devices.transport import LinkError, LinkState

_LOG = logging.getLogger(__name__)

#: Device readings are polled this often (s): well inside the supervisor's 100 ms freshness limit.
POLL_PERIOD_S = 0.03
#: The supervisor's periodic evaluation (s).
TICK_S = 0.01

EventSink = Callable[[Severity, str], None]


@dataclass
class Readouts:
    """The latest device figures the controller shows and records besides what the supervisor judges:
    laser diode current (mA), actuator position (um), TEC setpoint (degC); ``None`` while unknown."""

    current_ma: float | None = None
    position_um: float | None = None
    tec_setpoint_c: float | None = None


class DeviceMonitors:
    """The polling loops over ``rig``, reporting to ``supervisor``; ``event`` tells the consoles."""

    def __init__(self, rig: Rig, supervisor: SafetySupervisor, readouts: Readouts, event: EventSink) -> None:
        self.rig = rig
        self.supervisor = supervisor
        self.readouts = readouts
        self._event = event
        self._camera_state: str | None = None
        self._bad_replies: dict[str, int] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        """Start the loops: the three polls and the supervisor's tick."""
        return [
            asyncio.create_task(self.poll_laser(), name="poll-laser"),
            asyncio.create_task(self.poll_tec(), name="poll-tec"),
            asyncio.create_task(self.poll_actuator(), name="poll-actuator"),
            asyncio.create_task(self.tick(), name="supervisor-tick"),
        ]

    def link_callback(self, name: str) -> Callable[[LinkState], None]:
        def changed(state: LinkState) -> None:
            self.supervisor.set_link(name, state.value)
            self._event(
                Severity.WARNING if state is not LinkState.OPEN else Severity.INFO,
                f"{name} link {state.value}",
            )

        return changed

    async def poll_laser(self) -> None:
        """Output state every period (the reading the supervisor's age rule needs), current every 5th; the
        supervisor judges the read-back against the commanded output."""
        count = 0
        while True:
            laser = self.rig.laser
            if laser is not None:
                asked = time.monotonic()
                try:
                    on = await laser.output_is_on()
                    if count % 5 == 0:
                        self.readouts.current_ma = await laser.measured_current_ma()
                except (LinkError, ValueError) as exc:
                    _LOG.debug("laser poll failed: %s", exc)
                else:
                    count += 1
                    self.supervisor.update_laser(
                        LaserReading(on, self.readouts.current_ma, asked, time.monotonic())
                    )
            await asyncio.sleep(POLL_PERIOD_S)

    async def poll_tec(self) -> None:
        """Temperature every period, output state every 3rd, setpoint when unknown."""
        count = 0
        on: bool | None = None
        while True:
            tec = self.rig.tec
            if tec is not None:
                try:
                    if self.readouts.tec_setpoint_c is None:
                        self.readouts.tec_setpoint_c = await tec.get_setpoint_c()
                    if on is None or count % 3 == 0:
                        on = await tec.output_is_on()
                    temperature = await tec.temperature_c()
                except (LinkError, ValueError) as exc:
                    _LOG.debug("TEC poll failed: %s", exc)
                else:
                    count += 1
                    self.supervisor.update_tec(
                        TecReading(on, temperature, self.readouts.tec_setpoint_c, time.monotonic())
                    )
            await asyncio.sleep(POLL_PERIOD_S)

    async def poll_actuator(self) -> None:
        """Status word every period, position every 3rd."""
        count = 0
        while True:
            actuator = self.rig.actuator
            if actuator is not None:
                try:
                    status = await actuator.status()
                    if self.readouts.position_um is None or count % 3 == 0:
                        self.readouts.position_um = await actuator.position_um()
                except (LinkError, ValueError, ActuatorError) as exc:
                    _LOG.debug("actuator poll failed: %s", exc)
                else:
                    count += 1
                    fault = status.describe() if status.stopped_by_fault else None
                    self.supervisor.update_actuator(
                        ActuatorReading(self.readouts.position_um, fault, time.monotonic())
                    )
            await asyncio.sleep(POLL_PERIOD_S)

    async def tick(self) -> None:
        sup = self.supervisor
        sup.tick_period_s = TICK_S
        count = 0
        while True:
            board = self.rig.safety
            if board is not None:
                sup.update_board_link(BoardLink(board.last_heartbeat_ok, board.watchdog_expired))
            sup.tick()
            count += 1
            if count % 50 == 0:
                self._watch_camera()
                self._watch_lines()
            await asyncio.sleep(TICK_S)

    def _watch_camera(self) -> None:
        """The camera is not a term of the permission to emit; a change of its health is logged as a
        warning (the console shows "no camera")."""
        camera = self.rig.health().get("camera")
        state = camera.state if camera is not None else None
        if state == self._camera_state:
            return
        previous, self._camera_state = self._camera_state, state
        if previous is None and state == "ok":
            return
        ok = state == "ok"
        description = f"camera {state}" + (
            f": {camera.last_error}" if camera is not None and camera.last_error else ""
        )
        self.supervisor.log(
            "camera_recovery" if ok else "camera_fault",
            Severity.INFO if ok else Severity.WARNING,
            description,
            action="none: the camera does not gate emission; the preview shows its state",
        )
        self._event(Severity.INFO if ok else Severity.WARNING, description)

    def _watch_lines(self) -> None:
        """Bad replies (garbage, malformed or over-long lines, timeouts) on a serial link are logged as a
        warning with their count; three in a row make the link faulty, which the supervisor acts on."""
        for name, transport in self.rig.transports.items():
            count = transport.bad_reply_count
            seen = self._bad_replies.get(name, 0)
            self._bad_replies[name] = count
            if count <= seen:
                continue
            description = f"{name}: {count - seen} bad replies ({transport.last_error or 'unknown'})"
            self.supervisor.log(
                "serial_line_error",
                Severity.WARNING,
                description,
                action="counted; the link is marked faulty after 3 in a row",
                details={"device": name, "bad_replies_total": count},
            )
            self._event(Severity.WARNING, description)
