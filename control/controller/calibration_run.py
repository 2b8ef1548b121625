"""The controller's side of the calibration wizards (docs/calibration.md).

*Ring size*: :meth:`CalibrationService.calibration_move` moves the actuator for an engineer (their password
checked as a login on each move). It cannot emit, so it is accepted on ``observe.sock`` as well as on
``control.sock``; it is refused while a session is open, while the laser is armed or a calibration run
holds the rig, and while a fault is latched. :meth:`CalibrationService.calibration_save_ring` stores the
points the wizard measured as the active ring size calibration (the same checks and record as a save at the
kiosk), so that the remote console, whose records are read-only, can save it too; refused while a session
is open. The notes of that calibration say which points were typed and which were taken from the camera.

*Camera scale*: the active camera scale calibration (optional; :data:`control.calibration.CAMERA`) is read
with the others, and again before each ring size move, so one imported meanwhile is used from the next
position on. The camera previews measure the ring in millimetres through it (:mod:`control.preview`).

*Laser power*: a calibration run, on ``control.sock`` only, for the engineer authenticated on the connection
that began it. It uses the supervisor exactly as a treatment does: the run opens the supervisor (IDLE ->
READY, laser off and verified first), key control (the engineer's password) arms it, and each point's drive
current is set while the laser is off; a point counts as a protocol step, so the laser emits only while the
footpedal is pressed and every term of the permission to emit holds, and any failing term latches a fault
as in treatment. The photodiode judges the light against the power the active laser calibration expects at
that current (:meth:`control.supervisor.SafetySupervisor.set_drive`), so a run needs the active
calibrations (a factory sheet imported when there are none) and faults when the rig has drifted beyond the
photodiode fault threshold. Measuring a point averages the photodiode over :data:`MEASURE_SAMPLES` readings
while it emits, then ends the point (laser off). The run ends on ``calibration_end``, when its connection
closes, or when the controller stops; a fault stays latched until it is reset with a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

from control import messages as msg
from control.authority import Person
from control.calibration import ACTUATOR, ActiveCalibration, CalibrationError, load_camera_scale
from control.calibration_records import (
    ACTION_SAVED,
    CALIBRATING_ROLE,
    POINT_TYPED,
    RING_WIZARD_NOTES,
    CalibrationRefused,
    check_points,
    ring_wizard_notes,
    store_calibration,
)
from control.controller.remote import terminal_of
from control.controller.treatment import SMOOTHING_PWM, TEC_SETPOINT_C, TreatmentLifecycle
from control.ipc.server import Peer
from control.supervisor import Refused, SystemState
from control.vocabulary import Severity
from devices.actuator import ActuatorError

#: How long the output must have been on before a point is measured, s (the light and the photodiode settle).
SETTLE_S = 0.3
#: Photodiode readings averaged for one point, and the time between two, s (the board streams at 100 Hz).
MEASURE_SAMPLES = 20
MEASURE_INTERVAL_S = 0.02
#: How long beginning a run waits for the smoothing device and the TEC before arming, s.
ARM_WAIT_S = 5.0
#: Hardware current limit above the highest calibrated current, mA; never above the driver's range.
CURRENT_MARGIN_MA = 100.0
DRIVER_MAX_MA = 10_000.0


@dataclass
class CalibrationRun:
    """The laser power calibration run in progress: who, from which connection, and the point's drive."""

    connection: int
    person: Person
    current_ma: float | None = None


class CalibrationService(TreatmentLifecycle):
    """The calibration commands, on the treatment lifecycle (the same supervisor, rig and checks)."""

    calibration_run: CalibrationRun | None = None
    #: The active camera scale calibration (None: none, or the stored one unusable, said in the detail).
    camera_scale: ActiveCalibration | None = None
    camera_scale_detail: str = "not read yet"

    # ------------------------------------------------------------------------------------- camera scale
    async def _reload_calibrations(self) -> None:
        await super()._reload_calibrations()
        await self._reload_camera_scale()

    async def _reload_camera_scale(self) -> None:
        """Read the active camera scale calibration again (a stored one that cannot be used counts as none,
        and is logged)."""
        try:
            scale = await load_camera_scale(self.db)
        except CalibrationError as exc:
            if self.camera_scale_detail != str(exc):
                self._event(Severity.WARNING, f"camera scale calibration not used: {exc}")
            self.camera_scale, self.camera_scale_detail = None, str(exc)
            return
        self.camera_scale = scale
        self.camera_scale_detail = "none active" if scale is None else scale.describe()

    # ---------------------------------------------------------------------------------------- ring size
    async def calibration_move(self, command: msg.CalibrationMove, peer: Peer) -> msg.CalibrationMoved:
        """Move the actuator for the ring size calibration (see the module documentation)."""
        person = await self._calibrating_engineer(command.username, command.password, "calibration_move")
        if self.session is not None:
            raise Refused("the actuator is not moved for a calibration while a session is open")
        if self.calibration_run is not None or self.supervisor.state is not SystemState.IDLE:
            fault = self.supervisor.fault
            if fault is not None:
                raise Refused(f"a fault is latched ({fault.what}): reset it first")
            raise Refused(f"the actuator is not moved for a calibration in {self.supervisor.state.value}")
        actuator = self.rig.actuator
        if actuator is None:
            raise Refused("no actuator on this rig")
        status = await actuator.status()
        if status.stopped_by_fault:
            raise Refused(f"actuator stopped ({status.describe()}): clear it first")
        if not status.amplifiers_enabled:
            await actuator.enable_amplifiers()
        if not status.encoder_valid:
            await actuator.find_index()
        await self._reload_camera_scale()  # one imported since is used from this position on
        try:
            reached = await actuator.move_to_um(command.position_um)
        except ActuatorError as exc:
            raise Refused(f"move to {command.position_um:g} um refused: {exc}") from None
        self.readouts.position_um = reached
        ring: float | None = None
        if self.calibrations is not None:
            with contextlib.suppress(CalibrationError):
                ring = self.calibrations.position_to_ring_mm(reached)
        self.supervisor.log(
            "calibration_move",
            Severity.INFO,
            f"actuator moved to {reached:.1f} um for the ring size calibration by {person.username}",
            action="actuator moved (no emission)",
            details={"position_um": reached, **self._peer_details(peer)},
            tech_id=person.tech_id,
        )
        return msg.CalibrationMoved(position_um=reached, ring_mm=ring)

    async def calibration_save_ring(
        self, command: msg.CalibrationSaveRing, peer: Peer
    ) -> msg.CalibrationSaved:
        """Store the ring size calibration the wizard measured, as the active one (the remote console's
        records are read-only, so it is stored here; see the module documentation)."""
        person = await self._calibrating_engineer(command.username, command.password, "calibration_save")
        if self.session is not None:
            raise Refused("a calibration is not changed while a session is open")
        try:
            sources = command.point_sources or [POINT_TYPED] * len(command.points)
            if len(sources) != len(command.points):
                raise CalibrationRefused(f"{len(sources)} point sources for {len(command.points)} points")
            notes = ring_wizard_notes(sources, command.camera_scale_id)
            checked = check_points(ACTUATOR, [(x, y) for x, y in command.points])
            stored = await store_calibration(
                self.accounts.sessions,
                checked,
                engineer=person.username,
                action=ACTION_SAVED,
                notes=notes,
                source=RING_WIZARD_NOTES,
                terminal=terminal_of(peer, None) if peer.socket == "observe" else self.accounts.terminal,
            )
        except CalibrationRefused as exc:
            raise Refused(f"not saved: {exc}") from None
        await self._reload_calibrations()
        self._event(Severity.INFO, f"ring size calibration #{stored} saved by {person.username}")
        return msg.CalibrationSaved(calibration_id=stored)

    async def _calibrating_engineer(self, username: str, password: str, context: str) -> Person:
        result = await self.accounts.login(username, password, context=context)
        if not result.ok or result.user is None:
            raise Refused(result.message)
        user = result.user
        if user.role != CALIBRATING_ROLE:
            raise Refused(f"{user.username} is {user.role}: only an engineer calibrates")
        return Person(user.tech_id, user.username, user.full_name, user.role)

    # -------------------------------------------------------------------------------------- laser power
    def _run_for(self, peer: Peer) -> CalibrationRun:
        run = self.calibration_run
        if run is None:
            raise Refused("no calibration run: begin one first")
        if run.connection != peer.connection:
            raise Refused(f"the calibration run belongs to {run.person.username} on another connection")
        return run

    async def calibration_begin(self, password: str, peer: Peer, person: Person) -> msg.StateReply:
        """Begin the laser power run for ``person`` (an engineer), or resume it after a pause: the password
        (key control), then the supervisor armed exactly as for a treatment."""
        sup = self.supervisor
        if person.role != CALIBRATING_ROLE:
            raise Refused(f"{person.username} is {person.role}: only an engineer calibrates the laser")
        run = self.calibration_run
        if run is not None and run.connection != peer.connection:
            raise Refused(f"a calibration run by {run.person.username} is in progress")
        if run is not None and sup.state is SystemState.IDLE:
            self.calibration_run = run = None  # a fault reset closed it
        if self.session is not None:
            raise Refused("no calibration run while a session is open")
        if run is None and sup.state is not SystemState.IDLE:
            fault = sup.fault
            if fault is not None:
                raise Refused(f"cannot begin in fault: {fault.what}; {fault.how_to_reset}")
            raise Refused(f"cannot begin a calibration run in {sup.state.value}")
        if run is not None and sup.state is not SystemState.PAUSED:
            raise Refused(f"the calibration run is {sup.state.value}, not paused")
        await self._calibrating_engineer(person.username, password, "calibration_key")
        if run is not None:
            await self._arm_when_ready(SystemState.PAUSED)
            return msg.StateReply(state=sup.state)
        await self._reload_calibrations()
        cal = self.calibrations
        if cal is None:
            raise Refused(
                "the laser power calibration needs the active calibrations (import the factory sheet first): "
                f"the photodiode interlock judges the light against them ({sup.readings.calibrations_detail})"
            )
        rig = self.rig
        assert rig.laser and rig.tec and rig.safety
        self.calibration_run = CalibrationRun(peer.connection, person)
        sup.tech_id = person.tech_id
        try:
            sup.output_off_now()
            await sup.verify_output_off()
            top_ma = cal.laser.curve.domain[1]
            await rig.laser.set_current_limit_ma(min(DRIVER_MAX_MA, math.ceil(top_ma + CURRENT_MARGIN_MA)))
            await self._drive(0.0, 0.0)
            await rig.tec.set_setpoint_c(TEC_SETPOINT_C)
            self.readouts.tec_setpoint_c = TEC_SETPOINT_C
            await rig.tec.output_on()
            await rig.safety.set_motor_speed(SMOOTHING_PWM)
            sup.set_motor_pwm(SMOOTHING_PWM)
            await sup.open_session(f"laser power calibration run by {person.username}")
            await self._arm_when_ready(SystemState.READY)
        except BaseException:
            await self._finish_run("the calibration run could not start")
            raise
        self._event(Severity.INFO, f"laser power calibration run begun by {person.username}")
        return msg.StateReply(state=sup.state)

    async def _arm_when_ready(self, expected: SystemState) -> None:
        """Arm (or resume) once nothing but the pedal and the step blocks it, waiting up to
        :data:`ARM_WAIT_S` for the devices just switched on."""
        sup = self.supervisor
        deadline = time.monotonic() + ARM_WAIT_S
        while True:
            blockers = sup.arm_blockers(expected)
            if not blockers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if expected is SystemState.PAUSED:
            await sup.resume()
        else:
            await sup.arm()

    async def _drive(self, current_ma: float, expected_w: float) -> None:
        laser = self.rig.laser
        assert laser is not None
        await self.supervisor.set_drive(
            expected_w, lambda: laser.set_current_setpoint_ma(round(current_ma, 1))
        )
        self.readouts.current_ma = current_ma

    async def calibration_current(self, current_ma: float, peer: Peer) -> msg.CalibrationDrive:
        """The next point's drive current, set while the laser is off; the point may then emit."""
        run = self._run_for(peer)
        sup = self.supervisor
        if sup.state is SystemState.TREATING:
            raise Refused("release the footpedal before changing the current")
        if sup.state is not SystemState.ARMED:
            fault = sup.fault
            if fault is not None:
                raise Refused(f"fault: {fault.what}; {fault.how_to_reset}")
            raise Refused(f"the calibration run is {sup.state.value}: begin it again with the password")
        cal = self.calibrations
        assert cal is not None
        try:
            expected = cal.current_to_power_w(current_ma)
        except CalibrationError as exc:
            raise Refused(str(exc)) from None
        sup.set_step_active(False)
        await self._drive(current_ma, expected)
        run.current_ma = current_ma
        sup.set_step_active(True)
        return msg.CalibrationDrive(current_ma=current_ma, expected_w=expected)

    async def calibration_measure(self, peer: Peer) -> msg.CalibrationReading:
        """Average the photodiode while the point emits, then end the point (laser off)."""
        run = self._run_for(peer)
        sup = self.supervisor
        if run.current_ma is None or not sup.readings.step_active:
            raise Refused("set the point's current first")

        def emitting() -> bool:
            return sup.state is SystemState.TREATING and sup.output_commanded_on

        if not emitting():
            raise Refused("the laser is not emitting: press and hold the footpedal")
        settled_at = sup.output_changed_at + SETTLE_S
        if sup.clock() < settled_at:
            await asyncio.sleep(settled_at - sup.clock())
        volts: list[float] = []
        currents: list[float] = []
        for _ in range(MEASURE_SAMPLES):
            if not emitting():
                raise Refused("emission stopped during the measurement: measure the point again")
            reading = sup.readings.photodiode_v
            if reading is not None:
                volts.append(reading)
            if sup.readings.laser_current_ma is not None:
                currents.append(sup.readings.laser_current_ma)
            await asyncio.sleep(MEASURE_INTERVAL_S)
        if not emitting():
            raise Refused("emission stopped during the measurement: measure the point again")
        sup.set_step_active(False)
        if not volts:
            raise Refused("no photodiode reading during the measurement")
        return msg.CalibrationReading(
            current_ma=run.current_ma,
            measured_current_ma=sum(currents) / len(currents) if currents else None,
            photodiode_v=sum(volts) / len(volts),
            samples=len(volts),
        )

    async def calibration_end(self, peer: Peer) -> msg.StateReply:
        """End the run from the connection that began it."""
        self._run_for(peer)
        await self._finish_run("calibration run ended by the engineer")
        return msg.StateReply(state=self.supervisor.state)

    async def calibration_connection_closed(self, peer: Peer) -> None:
        """The connection that began the run closed: the run ends (laser off first)."""
        run = self.calibration_run
        if run is not None and run.connection == peer.connection:
            await self._finish_run("the engineer's connection closed during the calibration run")

    async def _finish_run(self, reason: str) -> None:
        """Laser off, point ended, supervisor back to IDLE (a latched fault stays), motor off, the
        calibrations read again (the run may have saved new ones)."""
        sup = self.supervisor
        sup.output_off_now()
        self.calibration_run = None
        sup.set_step_active(False)
        if sup.session_open:
            with contextlib.suppress(Refused):
                await sup.end_session(reason)
        with contextlib.suppress(Exception):
            await self._drive(0.0, 0.0)
        sup.tech_id = None
        if self.rig.safety is not None:
            with contextlib.suppress(Exception):
                await self.rig.safety.motor_off()
        sup.set_motor_pwm(0)
        await self._reload_calibrations()
        self._event(Severity.INFO, reason)
