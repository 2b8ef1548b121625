"""The treatment lifecycle in the controller process: opening a session, preparing the devices for it,
running its protocol engine, recording what happens, and closing it; and the pre-treatment checks.

``open_session`` checks the protocol against the system limits and the active calibrations, opens the
session record (after an automatic backup), starts the telemetry file, turns the TEC output and the smoothing
motor on, enables and homes the actuator, and starts the protocol engine; the supervisor is then READY.
When the protocol completes, or the operator aborts, the session gets its summary and telemetry checksum and
the supervisor goes back to IDLE (an abort while a fault is latched leaves FAULT latched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

from control import messages as msg
from control.authority import MAX_KEY_FAILURES, Person
from control.calibration import (
    CalibrationError,
    install_sim_calibrations_if_missing,
    load_active_calibrations,
)
from control.calibration_records import CalibrationAge, active_ages
from control.controller.imaging import Imaging
from control.controller.state import ActiveSession
from control.engine import Outcome, TreatmentEngine
from control.protocols import ProtocolError, check_protocol, load_limits
from control.sessions import FinishStatus, SessionRefused, SummaryAccumulator
from control.supervisor import Limits, Refused, SystemState, Term
from control.system_config import SettingError, read_system_settings
from control.vocabulary import SessionStatus, Severity
from devices.camera import STREAM_REFUSED, VIDEO_SUFFIX, Camera
from devices.safety import SafetyEvent, SafetySample
from storage import utc_now
from storage.crypto_files import seal_session_files, session_key_for
from storage.maintenance import check_database
from storage.models import SessionRecording
from storage.repositories import SessionsRepository, UsersRepository
from storage.telemetry import TelemetrySummary
from storage.telemetry_line import TelemetrySample
from storage.video_seal import VideoSeal

_LOG = logging.getLogger(__name__)

#: Smoothing motor PWM during a session (0..153).
SMOOTHING_PWM = 120
TEC_SETPOINT_C = 25.0
TELEMETRY_FILE = "telemetry.jsonl"
#: The session video's file name: ``video.mkv`` (``video.avi`` where the camera falls back to Motion-JPEG).
VIDEO_STEM = "video"
VIDEO_NAME = f"{VIDEO_STEM}{VIDEO_SUFFIX}"


class TreatmentLifecycle(Imaging):
    """The session's life from opening to closing, on the controller's state."""

    #: The encrypted recording of the running session's video, when the records are encrypted.
    _video_seal: VideoSeal | None = None

    async def _load_limits(self) -> None:
        """The configured limits as ``system_config`` holds them now: read at start and again each time a
        session opens (never during one), so a change an admin saves holds from the next session.

        Raises:
            SettingError: a stored value is refused (named with the reason); nothing is changed.
        """
        async with self.db() as session:
            settings = await read_system_settings(session)
        self.loop_hz = float(settings.treatment_loop_frequency_hz)
        self.video_fps = float(settings.video_fps)
        self.supervisor.limits = Limits(
            photodiode_warning_percent=settings.photodiode_warning_threshold_percent,
            photodiode_fault_percent=settings.photodiode_fault_threshold_percent,
            max_power_w=settings.max_laser_power_watts,
        )

    async def _reload_calibrations(self) -> None:
        try:
            self.calibrations = await load_active_calibrations(self.db)
        except CalibrationError as exc:
            self.calibrations = None
            self.supervisor.photodiode_to_watts = None
            self.supervisor.set_calibrations(False, str(exc))
            return
        self.supervisor.photodiode_to_watts = self.calibrations.photodiode_to_watts
        self.supervisor.set_calibrations(True, "active")

    async def _calibration_ages(self) -> list[CalibrationAge]:
        """The age of each active calibration against ``calibration_validity_days`` (none without active
        calibrations). Raises SettingError when the setting is refused."""
        if self.calibrations is None:
            return []
        async with self.db() as session:
            settings = await read_system_settings(session)
        return active_ages(self.calibrations, settings.calibration_validity_days)

    def _on_board(self, item: SafetyEvent | SafetySample) -> None:
        self.supervisor.on_board(item)
        if isinstance(item, SafetyEvent):
            self._event(
                Severity.INFO, f"safety board: {item.kind.value.lower()} {'on' if item.value else 'off'}"
            )
            return
        session = self.session
        if session is None:
            return
        sup = self.supervisor
        measured = sup.measured_power_w()
        t = item.received - session.started_mono
        emitting = sup.output_commanded_on and sup.state is SystemState.TREATING
        try:
            session.summary.add(t, measured or 0.0, emitting)
        except ValueError as exc:
            _LOG.debug("summary sample skipped: %s", exc)
        if self.recorder.telemetry_open and self.recorder.session_id == session.opened.session_id:
            try:
                self.recorder.telemetry(
                    TelemetrySample(
                        t=t,
                        pd_v=item.photodiode_v,
                        p_w=measured,
                        cmd_w=sup.commanded_w,
                        on=emitting,
                        pedal=item.pedal,
                        estop=item.estop,
                        vib_g=item.vibration_g,
                        enable=item.laser_enable,
                        state=sup.state.value,
                        pos_um=self.readouts.position_um,
                    )
                )
            except Exception as exc:
                _LOG.error("telemetry line not written: %s", exc)

    def _on_state_change(self, old: SystemState, new: SystemState, reason: str) -> None:
        self._aim_state(old, new, reason)
        self._event(
            Severity.CRITICAL if new is SystemState.FAULT else Severity.INFO,
            f"{old.value} -> {new.value}: {reason}",
        )
        session = self.session
        if session is None:
            return
        sup = self.supervisor
        measured = sup.measured_power_w()
        columns: dict[str, Any] = {
            "commanded_w": sup.commanded_w,
            "actual_w": measured,
            "photodiode_v": sup.readings.photodiode_v,
            "footpedal": sup.readings.pedal,
            "interlocks": {t.term.value: t.ok for t in sup.terms().values()},
        }
        if new is SystemState.TREATING:
            self._record(
                "laser_on",
                details={
                    "source": "footpedal_depression",
                    "reason": reason,
                    "protocol_step": self._step_number(),
                },
                **columns,
            )
        elif old is SystemState.TREATING:
            self._record(
                "laser_off", details={"reason": reason, "protocol_step": self._step_number()}, **columns
            )
        if new is SystemState.FAULT:
            fault = sup.fault
            self._record(
                "safety_trigger",
                details={
                    "trigger_source": fault.event_type if fault else "fault",
                    "description": fault.what if fault else reason,
                    "action_taken": "laser_shutdown",
                    "expected_power": sup.commanded_w,
                    "measured_power": measured,
                },
                **columns,
            )
            self._spawn_status(SessionStatus.PAUSED)
        elif new is SystemState.PAUSED:
            self._record("pause", details={"reason": reason}, **columns)
            self._spawn_status(SessionStatus.PAUSED)
        elif old is SystemState.PAUSED and new is SystemState.ARMED:
            self._record("resume", details={"reason": reason}, **columns)
            self._spawn_status(SessionStatus.IN_PROGRESS)
        elif old is SystemState.FAULT and new is SystemState.READY:
            self._spawn_status(SessionStatus.IN_PROGRESS)

    def _spawn_status(self, status: SessionStatus) -> None:
        session = self.session
        if session is None:
            return
        session_id = session.opened.session_id

        async def write() -> None:
            try:
                await self.sessions.set_status(session_id, status)
            except Exception as exc:
                _LOG.error("session %s status %s not written: %s", session_id, status, exc)

        self._background(write())

    async def open_session(
        self,
        *,
        subject_code: str,
        username: str,
        protocol_name: str,
        treatment_site: str | None = None,
        treatment_notes: str | None = None,
        create_subject: bool = False,
        by_connection: int | None = None,
        by_person: Person | None = None,
        draft: bool = False,
    ) -> msg.SessionOpened:
        """Open a session (see the module documentation); returns what the console shows. The connection
        ``by_connection`` (``None``: this process) then holds it for ``by_person``. ``draft`` tries the
        protocol's newest unapproved version, on the simulated rig only."""
        if draft and not self.sim:
            raise Refused("a draft protocol version may be tried on the simulated rig only")
        if self.session is not None or self.supervisor.state is not SystemState.IDLE:
            raise Refused(
                f"cannot open a session in {self.supervisor.state.value}"
                + (" (a session is open)" if self.session is not None else "")
            )
        try:
            await self._load_limits()
        except SettingError as exc:
            raise Refused(f"no session with an unusable configuration: {exc}") from None
        if self.sim:
            async with self.db() as db:
                user = await UsersRepository(db).get_by_username(username)
            if user is not None:
                installed = await install_sim_calibrations_if_missing(self.db, user.tech_id)
                if installed:
                    _LOG.info("simulated rig factory calibrations installed: %s", ", ".join(installed))
        # Read again at every opening: a calibration saved or imported since is the one used.
        await self._reload_calibrations()
        if self.calibrations is None:
            raise Refused(
                f"no treatment without active calibrations: {self.supervisor.readings.calibrations_detail}"
            )
        expired = [age.problem() for age in await self._calibration_ages() if age.expired]
        if expired:
            raise Refused("no treatment with an expired calibration: " + "; ".join(expired))
        protocol_text = await self._protocol_text(protocol_name, draft)
        limits = await load_limits(self.db)
        try:
            plan = check_protocol(protocol_text, limits)
        except ProtocolError as exc:
            raise Refused(f"protocol {protocol_name!r} is not valid here: " + "; ".join(exc.errors)) from None
        try:
            opened = await self.sessions.open(
                subject_code=subject_code,
                username=username,
                protocol_name=protocol_name,
                treatment_site=treatment_site,
                treatment_notes=treatment_notes,
                create_subject=create_subject,
                draft=draft,
            )
        except SessionRefused as exc:
            raise Refused(str(exc)) from None
        if opened.protocol_data != protocol_text:
            plan = check_protocol(opened.protocol_data, limits)
        cal = self.calibrations
        # The hardware current limit covers every power this session may command, overrides included.
        max_override = self.supervisor.session_power_ceiling(
            plan.definition.safety_limits.max_power_watts, cal.max_power_w
        )
        started_mono = time.monotonic()
        engine = TreatmentEngine(
            self.supervisor,
            plan.steps,
            move_ring=self._move_ring,
            record=self._record,
            loop_hz=self.loop_hz,
            max_override_w=max_override,
        )
        await self._read_aim_setting()
        session = ActiveSession(opened, plan, cal, engine, SummaryAccumulator(), started_mono, max_override)
        self.session = session
        self.authority.session_opened(by_connection, by_person)
        self.last_session_id = opened.session_id
        self.supervisor.tech_id = opened.tech_id
        try:
            await self.recorder.begin_session(
                opened.session_id,
                opened.tech_id,
                started_mono,
                opened.started_at,
                telemetry_path=opened.folder / TELEMETRY_FILE,
            )
            await self._prepare_devices(max(max_override, plan.max_power_w))
            session.video = await self._start_video(opened.folder)
            await self.supervisor.open_session(
                f"session {opened.session_id} opened for {opened.subject_code}"
            )
        except BaseException as exc:
            await self._close_session("aborted", f"session could not start: {exc}")
            raise Refused(f"session could not start: {exc}") from exc
        session.task = asyncio.create_task(self._run_engine(session), name="treatment-engine")
        _LOG.info("session %s opened for %s by %s", opened.session_id, opened.subject_code, username)
        self._event(
            Severity.INFO,
            f"session {opened.session_id} opened: {opened.subject_code}, {opened.protocol_name}",
        )
        return msg.SessionOpened(
            session_id=opened.session_id,
            subject_code=opened.subject_code,
            protocol_name=opened.protocol_name,
            folder=str(opened.folder),
            backup=None if opened.backup_path is None else str(opened.backup_path),
            total_duration_s=plan.total_duration_s,
            expected_energy_j=plan.expected_energy_j,
        )

    async def _protocol_text(self, protocol_name: str, draft: bool = False) -> str:
        """The data of the version a session would use (the newest approved one, or with ``draft`` the newest
        draft); the protocol's newest data where it has no such version (opening it is then refused)."""
        from control.protocol_approval import usable_version
        from storage.repositories import ProtocolsRepository

        async with self.db() as db:
            repo = ProtocolsRepository(db)
            protocol = await repo.get_by_name(protocol_name)
            if protocol is None or not protocol.is_active:
                raise Refused(f"no active protocol named {protocol_name!r}")
            chosen = usable_version(await repo.versions(protocol.protocol_id), draft=draft)
        return chosen.protocol_data if chosen is not None else protocol.protocol_data

    async def _prepare_devices(self, max_power_w: float) -> None:
        rig, cal = self.rig, self.session.calibrations if self.session else None
        assert cal is not None and rig.laser and rig.tec and rig.actuator and rig.safety
        limit = min(10000.0, math.ceil(cal.power_to_current_ma(max_power_w) + 100.0))
        await rig.laser.set_current_limit_ma(limit)
        await self.supervisor.set_power(0.0)
        await rig.tec.set_setpoint_c(TEC_SETPOINT_C)
        self.readouts.tec_setpoint_c = TEC_SETPOINT_C
        await rig.tec.output_on()
        await rig.safety.set_motor_speed(SMOOTHING_PWM)
        self.supervisor.set_motor_pwm(SMOOTHING_PWM)
        status = await rig.actuator.status()
        if status.stopped_by_fault:
            raise Refused(f"actuator stopped ({status.describe()}): an engineer must clear it")
        if not status.amplifiers_enabled:
            await rig.actuator.enable_amplifiers()
            self.supervisor.log(
                "actuator_enabled",
                Severity.INFO,
                "actuator amplifiers enabled for the session",
                action="ENBL=1 sent at session start",
            )
        if not status.encoder_valid:
            await rig.actuator.find_index()

    async def _start_video(self, folder: Path) -> Path | None:
        """Record the camera into the session folder; a camera problem is a warning, never a refusal.

        Where the records are encrypted the video is encrypted as it is recorded (:mod:`storage.video_seal`:
        the camera writes into a FIFO, a sealing process of its own writes the encrypted file), so it is never
        plain on disk; only when the camera cannot write its video into a FIFO is it recorded plain and
        encrypted when it closes."""
        camera = self.rig.camera
        if camera is None:
            return None
        try:
            key = await asyncio.to_thread(session_key_for, folder / VIDEO_NAME)
            if key is not None:
                sealed = await self._start_sealed_video(camera, folder, key)
                if sealed is not None:
                    return sealed
            return await camera.start_recording(folder, fps=self.video_fps, stem=VIDEO_STEM)
        except Exception as exc:
            _LOG.warning("session video not recorded: %s", exc)
            self._event(Severity.WARNING, f"session video not recorded: {exc}")
            return None

    async def _start_sealed_video(self, camera: Camera, folder: Path, key: bytes) -> Path | None:
        """Start the sealing process and the camera recording into its FIFO; the encrypted file's path, or
        None when the camera cannot write into a FIFO (the plain recording is then the way left)."""
        seal = await VideoSeal.start(folder / VIDEO_NAME, key)
        try:
            await camera.start_recording(seal.fifo.parent, fps=self.video_fps, stem=VIDEO_STEM)
        except BaseException as exc:
            await seal.abort()
            if isinstance(exc, Exception) and STREAM_REFUSED in str(exc):
                _LOG.warning("session video encrypted when it closes, not while recorded: %s", exc)
                return None
            raise
        self._video_seal = seal
        _LOG.info("session video encrypted as it is recorded (sealing process %d)", seal.pid)
        return seal.target

    async def _stop_video(self, session: ActiveSession) -> str | None:
        """Stop the recording and add its session_recordings row; returns the video's path."""
        camera = self.rig.camera
        seal, self._video_seal = self._video_seal, None
        if camera is None or session.video is None:
            if seal is not None:
                await seal.finish(complete=False)
            return None
        try:
            result = await camera.stop_recording()
        except Exception as exc:
            _LOG.error("session video not closed: %s", exc)
            result = None
        notes = None if result is None else result.error
        if seal is not None:
            # The camera has closed its end of the FIFO: the last chunk is sealed only for a video closed
            # normally; one cut short by an error (the camera process gone) stays readable as cut short.
            complete = result is not None and result.error is None
            if not await seal.finish(complete=complete):
                cut = "the encrypted video is cut short (readable up to its last sealed chunk)"
                _LOG.error("session video: %s", cut)
                notes = cut if notes is None else f"{notes}; {cut}"
            path = seal.target
        elif result is None:
            return None
        else:
            path = result.path
            try:
                await asyncio.to_thread(seal_session_files, (path,))
            except Exception as exc:
                _LOG.error("session video not encrypted: %s", exc)
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        resolution = camera.frame_size
        async with self.db() as db, db.begin():
            await SessionsRepository(db).add_recording(
                SessionRecording(
                    session_id=session.opened.session_id,
                    recording_type="video",
                    file_path=str(path),
                    file_size_bytes=size,
                    duration_seconds=None if result is None else result.duration_s,
                    timestamp=utc_now(),
                    frame_count=None if result is None else result.frame_count,
                    resolution=None if resolution is None else f"{resolution[0]}x{resolution[1]}",
                    notes=notes,
                )
            )
        return str(path)

    async def _move_ring(self, ring_mm: float) -> float:
        session, actuator = self.session, self.rig.actuator
        if session is None or actuator is None:
            raise Refused("no session or no actuator")
        target = session.calibrations.ring_mm_to_position_um(ring_mm)
        reached = await actuator.move_to_um(target)
        self.readouts.position_um = reached
        return session.calibrations.position_to_ring_mm(reached)

    async def _run_engine(self, session: ActiveSession) -> None:
        try:
            outcome = await session.engine.run()
        except asyncio.CancelledError:
            return
        except Exception as exc:
            _LOG.exception("treatment engine failed")
            if self.supervisor.state is not SystemState.FAULT:
                self.supervisor.trip("interlock_failure", f"treatment engine failed: {exc}")
            await self._finish_after_engine(session, "aborted", f"treatment engine failed: {exc}")
            return
        if outcome is Outcome.COMPLETED:
            await self._finish_after_engine(session, "completed", None)

    async def _finish_after_engine(
        self, session: ActiveSession, status: FinishStatus, reason: str | None
    ) -> None:
        if self.session is session:
            await self._close_session(status, reason)

    async def _close_session(self, status: FinishStatus, reason: str | None) -> None:
        session = self.session
        if session is None:
            return
        sup = self.supervisor
        sup.output_off_now()
        task = session.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Refused):
            # In FAULT the session closes and the fault stays latched (its reset then leads to IDLE).
            await sup.end_session(reason or "session completed")
        # The aiming beam off while the session is still recorded, so its last change is in the records.
        await self.aim_off(f"session {status}")
        await sup.drain_log()
        telemetry: TelemetrySummary | None = None
        try:
            telemetry = await self.recorder.end_session()
        except Exception as exc:
            _LOG.error("session recording not closed cleanly: %s", exc)
        problem: str | None = None
        try:
            video = await self._stop_video(session)
            await self.sessions.finish(
                session.opened.session_id,
                status=status,
                reason=reason,
                summary=session.summary.summary(),
                telemetry=telemetry,
                video_path=video,
            )
        except Exception as exc:
            # The laser is off; the row stays open and is closed as aborted at the next start.
            problem = f"session {session.opened.session_id} ended but its record could not be written: {exc}"
            _LOG.error("%s", problem)
        finally:
            self.session = None
            self.authority.session_closed()
            sup.tech_id = None
            if self.rig.safety is not None:
                with contextlib.suppress(Exception):
                    await self.rig.safety.motor_off()
            sup.set_motor_pwm(0)
        _LOG.info("session %s %s%s", session.opened.session_id, status, f": {reason}" if reason else "")
        self._event(
            Severity.INFO, f"session {session.opened.session_id} {status}" + (f": {reason}" if reason else "")
        )
        if problem is not None:
            self._event(Severity.CRITICAL, problem)
            raise Refused(problem)

    async def prechecks(self) -> list[msg.PrecheckView]:
        """Every pre-treatment check with its live value and pass/fail: every condition that refuses arming
        is one of them, so that when all pass only the password can still refuse it.

        First the supervisor's state (READY is the one state that arms; a latched fault fails this check
        with what happened and how to reset it), then the devices, the footpedal (released: arming is
        refused while it is pressed) and every other term of the permission to emit, the calibrations, the
        database and the session's backup.
        """
        checks: list[msg.PrecheckView] = []
        sup = self.supervisor

        def add(name: str, ok: bool, value: str, detail: str = "") -> None:
            checks.append(msg.PrecheckView(name=name, ok=ok, value=value, detail="" if ok else detail))

        fault = sup.fault
        if sup.state is SystemState.FAULT and fault is not None:
            cleared = fault.term is None or sup.terms()[fault.term].ok
            add(
                "state",
                False,
                f"FAULT: {fault.what}",
                f"{fault.how_to_reset} ({'cause cleared' if cleared else 'cause still present'})",
            )
        else:
            add(
                "state",
                sup.state in (SystemState.READY, SystemState.PAUSED),  # arming from PAUSED resumes
                sup.state.value,
                "no session is open"
                if sup.state is SystemState.IDLE
                else "arming starts from ready (or paused)",
            )
        for name, health in self.rig.health().items():
            add(
                f"device {name}",
                health.ok and (health.identity is not None or name == "actuator"),
                f"{health.state}: {health.identity or health.detail or '-'}",
                health.last_error or health.state,
            )
        for term in sup.terms().values():
            if term.term is Term.FOOTPEDAL:
                pedal = sup.readings.pedal
                add(term.term.value, pedal is False, term.value, "release the footpedal before arming")
                continue
            if term.term is Term.STEP:
                continue
            add(term.term.value, term.ok, term.value, term.detail)
        try:
            for age in await self._calibration_ages():
                add(f"calibration {age.label}", not age.expired, age.value(), age.problem())
        except SettingError as exc:
            add("calibration validity", False, "unknown", str(exc))
        try:
            report = await asyncio.to_thread(check_database, self.data.db_path, quick=True, in_use=True)
            add("database", report.integrity == "ok", report.summary(), report.summary())
        except Exception as exc:
            add("database", False, "check failed", str(exc))
        try:
            space = await self.sessions.free_space()
            add("disk space", space.ok, space.describe(), space.problem)
        except Exception as exc:
            add("disk space", False, "check failed", str(exc))
        if self.session is not None:
            auth = self.authority
            add(
                "key control",
                not auth.key_blocked,
                f"{auth.key_failures} of {MAX_KEY_FAILURES} wrong passwords",
                auth.blocked_message(),
            )
        backup = self.session.opened.backup_path if self.session else None
        add(
            "backup",
            backup is not None and backup.exists(),
            str(backup) if backup else "none",
            "no backup made for this session",
        )
        resumes = sup.state is SystemState.PAUSED
        blockers = sup.arm_blockers(SystemState.PAUSED if resumes else SystemState.READY)
        if blockers and all(c.ok for c in checks):
            # A refusal none of the checks above shows (they should): never "all pass" while arm would refuse.
            add("arming", False, "refused", "; ".join(blockers))
        return checks

    async def wait_prechecks(self, timeout_s: float) -> list[msg.PrecheckView]:
        """The pre-checks once all pass (checked every 0.1 s); Refused, naming the failing ones, after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            checks = await self.prechecks()
            failing = [c for c in checks if not c.ok]
            if not failing:
                return checks
            if time.monotonic() > deadline:
                raise Refused(
                    "pre-checks still failing: " + "; ".join(f"{c.name}: {c.detail}" for c in failing)
                )
            await asyncio.sleep(0.1)
