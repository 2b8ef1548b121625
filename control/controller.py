"""The controller: devices, safety supervisor, protocol engine and recorder on one loop, behind two sockets.

DESIGN.md section 3 ("Processes, loops and threads"). ``tosca controller`` runs one :class:`Controller`; the
console is a client of its sockets (``control.sock`` for the operator, ``observe.sock`` for engineers), and
tests may run it in-process behind the same client.

Start-up order (DESIGN.md section 4): the rig first (its lock, then "output off" to the laser driver,
verified, before anything else), then the database (upgraded to the head revision; sessions left open by a
crash closed as aborted), then the safety board's watchdog, heartbeat and sample stream, then the device
monitors and the sockets.

One treatment session at a time. ``open_session`` checks the protocol against the system limits and the
active calibrations, opens the session record (after an automatic backup), starts the telemetry file, turns
the TEC output and the smoothing motor on, enables and homes the actuator, and starts the protocol engine; the
supervisor is then READY. ``arm`` needs the technician's password (key control) and every pre-check passing.

Commands on ``control.sock`` act for the person authenticated on their connection, and the session belongs
to one connection (the one that opened or took it over, and so the one that armed): :mod:`control.authority`
holds those rules and :meth:`Controller._dispatch` applies them. Every command given for a person is audited
with that person and the connection's peer (its uid and pid from the socket's credentials).
When the protocol completes, or the operator aborts, the session gets its summary and telemetry checksum and
the supervisor goes back to IDLE (an abort while a fault is latched leaves FAULT latched).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control import messages as msg
from control.account_rules import LoginOutcome, UserInfo, locked_message
from control.accounts import AccountService, HashingParameters
from control.authority import HOLDER_COMMANDS, MAX_KEY_FAILURES, SESSION_ROLES, Authority, Person
from control.calibration import (
    CalibrationError,
    CalibrationSet,
    install_sim_calibrations_if_missing,
    load_active_calibrations,
)
from control.engine import Outcome, StepProgress, TreatmentEngine
from control.ipc import CommandRefused, ControllerServer, Peer
from control.preview import PreviewProducer
from control.protocols import Plan, ProtocolError, check_protocol, install_library_protocols, load_limits
from control.recorder import Recorder, storage_failure
from control.sessions import (
    FinishStatus,
    OpenedSession,
    SessionRefused,
    SessionService,
    SessionStatus,
    SummaryAccumulator,
)
from control.supervisor import (
    ARMED_STATES,
    ActuatorReading,
    BoardLink,
    LaserReading,
    Limits,
    Refused,
    SafetyEntry,
    SafetySupervisor,
    SystemState,
    TecReading,
    Term,
)
from control.vocabulary import SessionStatus as Status
from control.vocabulary import Severity
from devices.actuator import ActuatorError
from devices.laser import LaserDriver
from devices.rig import Rig, RigConfig
from devices.safety import BoardStatus, SafetyEvent, SafetySample, UnknownCommand, WatchdogState
from devices.transport import LinkError, LinkState
from storage import DataDir, create_engine, session_factory, utc_now
from storage.maintenance import check_database, upgrade_async
from storage.models import SessionRecording
from storage.repositories import ConfigRepository, SessionsRepository, UsersRepository
from storage.telemetry import TelemetrySummary

if TYPE_CHECKING:
    from devices.sim.rig import SimRig

_LOG = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
OBSERVE_SOCKET = "observe.sock"
#: Device readings are polled this often (s): well inside the supervisor's 100 ms freshness limit.
POLL_PERIOD_S = 0.03
#: The supervisor's periodic evaluation (s).
TICK_S = 0.01
#: Safety board sample rate (Hz): photodiode, pedal, E-stop, vibration, enable.
STREAM_HZ = 100
WATCHDOG_TIMEOUT_MS = 1000
HEARTBEAT_PERIOD_S = 0.2
#: Smoothing motor PWM during a session (0..153).
SMOOTHING_PWM = 120
#: Snapshots pushed to clients per second (the server coalesces to at most 30/s per client).
SNAPSHOT_HZ = 30
TEC_SETPOINT_C = 25.0
TELEMETRY_FILE = "telemetry.jsonl"


@dataclass
class ActiveSession:
    """The open session and everything that runs for it."""

    opened: OpenedSession
    plan: Plan
    calibrations: CalibrationSet
    engine: TreatmentEngine
    summary: SummaryAccumulator
    started_mono: float
    max_override_w: float
    task: asyncio.Task[None] | None = None
    video: Path | None = None


class _Laser:
    """The supervisor's laser port over the laser driver and the active laser calibration."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    @property
    def driver(self) -> LaserDriver:
        laser = self.c.rig.laser
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
        session = self.c.session
        if session is None:
            raise Refused("no session: no laser calibration in use")
        current = session.calibrations.power_to_current_ma(watts)
        await self.driver.set_current_setpoint_ma(round(current, 1))
        self.c.current_ma = current


class _Board:
    """The supervisor's board port over the safety board driver."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def _driver(self) -> Any:
        board = self.c.rig.safety
        if board is None:
            raise LinkError("safety board not open")
        return board

    async def arm(self) -> None:
        await self._driver().arm()

    async def disarm(self) -> None:
        await self._driver().disarm()

    async def clear_watchdog(self) -> None:
        await self._driver().clear_watchdog()


class Controller:
    """Everything the controller process runs. ``sim_rig`` (started by the caller, or by :meth:`start` when
    ``sim`` is true) provides the ports and the simulator command language; otherwise ``rig_config`` names
    the real ports."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        sim: bool = False,
        rig_config: RigConfig | None = None,
        hashing: HashingParameters | None = None,
        terminal: str = "controller",
        serve: bool = True,
    ) -> None:
        if not sim and rig_config is None:
            raise ValueError("a real rig needs its port configuration")
        self.data = DataDir(Path(data_dir).absolute())
        self.sim = sim
        self.rig_config = rig_config
        self.hashing = hashing or HashingParameters()
        self.terminal = terminal
        self.serve = serve
        self.sim_rig: SimRig | None = None
        self.rig: Rig = None  # type: ignore[assignment]
        self.session: ActiveSession | None = None
        self.last_session_id: int | None = None
        #: Who acts on which connection, and which connection holds the open session.
        self.authority = Authority()
        self._camera_state: str | None = None
        self._bad_replies: dict[str, int] = {}
        self.current_ma: float | None = None
        self.position_um: float | None = None
        self.tec_setpoint_c: float | None = None
        self.calibrations: CalibrationSet | None = None
        self.server: ControllerServer | None = None
        self.preview: PreviewProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0
        self._closing = False
        self.supervisor = SafetySupervisor(_Laser(self), _Board(self), self._write_safety)
        self.supervisor.on_state_change(self._on_state_change)
        self.supervisor.on_state_change(self._authority_state)

    # ------------------------------------------------------------------------------------ start / close
    async def start(self) -> None:
        """Open the rig (laser off, verified, first), the database, the board stream and the sockets."""
        data = self.data.ensure()
        if self.sim:
            from devices.sim.rig import SimRig

            self.sim_rig = SimRig()
            await self.sim_rig.start()
            config = RigConfig.from_ports(self.sim_rig.ports())
            self.rig = Rig(config, data.root, camera_source=self.sim_rig.camera)
        else:
            assert self.rig_config is not None
            self.rig = Rig(self.rig_config, data.root)
        try:
            await self.rig.open()
            await upgrade_async(data)
            self.engine_db = create_engine(data.db_path)
            self.db = session_factory(self.engine_db)
            self.accounts = AccountService(sessions=self.db, terminal=self.terminal, hashing=self.hashing)
            self.sessions = SessionService(self.db, data)
            # First the rows a previous process left in the recorder's journal (a crash, a locked database).
            self.recorder = Recorder(self.db, data_root=data.root)
            self.recorder.on_health_change(self._on_storage_health)
            await self.recorder.start()
            closed = await self.sessions.close_interrupted()
            if closed:
                _LOG.warning("sessions closed as aborted at start-up: %s", closed)
            await install_library_protocols(self.db)
            await self._load_limits()
            self.supervisor.start()
            await self._reload_calibrations()
            await self._start_board()
            for name, transport in self.rig.transports.items():
                self.supervisor.set_link(name, transport.state.value)
                transport.on_state_change(self._link_callback(name))
            self._tasks = [
                asyncio.create_task(self._poll_laser(), name="poll-laser"),
                asyncio.create_task(self._poll_tec(), name="poll-tec"),
                asyncio.create_task(self._poll_actuator(), name="poll-actuator"),
                asyncio.create_task(self._tick(), name="supervisor-tick"),
            ]
            if self.serve:
                self.server = ControllerServer(
                    data.root / CONTROL_SOCKET,
                    data.root / OBSERVE_SOCKET,
                    self,
                    on_operator_disconnect=self._operator_gone,
                )
                await self.server.start()
                self._tasks.append(asyncio.create_task(self._publish(), name="publish"))
                server = self.server
                self.preview = PreviewProducer(
                    self.rig.camera,
                    server.publish_preview,
                    lambda: bool(server.peers),
                    expected_ring_mm=lambda: self.session.engine.ring_mm if self.session else None,
                )
                self.preview.start()
        except BaseException:
            await self.close()
            raise
        # Everything made so far lives as long as the controller: out of the collector's full passes, which
        # otherwise walk it all with this loop stopped (measured 30 to 75 ms, the supervisor's tick included).
        gc.freeze()

    async def close(self) -> None:
        """Stop emission, close any session as aborted, stop every task, close devices and sockets."""
        if self._closing:
            return
        self._closing = True
        self.supervisor.output_off_now()
        if self.server is not None:
            await self.server.close()
        if self.preview is not None:
            await self.preview.aclose()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self._close_session("aborted", "the controller was shut down during the session")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.rig is not None and self.rig.safety is not None:
            with contextlib.suppress(ValueError):
                self.rig.safety.remove_listener(self._on_board)
            with contextlib.suppress(Exception):
                await self.rig.safety.disarm()
            with contextlib.suppress(Exception):
                await self.rig.safety.motor_off()
        await self.supervisor.close()
        if hasattr(self, "recorder"):
            with contextlib.suppress(Exception):
                await self.recorder.close()
        if self.rig is not None:
            await self.rig.close()
        if hasattr(self, "engine_db"):
            await self.engine_db.dispose()
        if self.sim_rig is not None:
            await self.sim_rig.stop()

    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _load_limits(self) -> None:
        async with self.db() as session:
            config = ConfigRepository(session)
            self.loop_hz = float(await config.get("treatment_loop_frequency_hz", 10))
            self.video_fps = float(await config.get("video_fps", 30))
            self.supervisor.limits = Limits(
                photodiode_warning_percent=float(
                    await config.get("photodiode_warning_threshold_percent", 15.0)
                ),
                photodiode_fault_percent=float(await config.get("photodiode_fault_threshold_percent", 30.0)),
                max_power_w=float(await config.get("max_laser_power_watts", 10.0)),
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

    async def _start_board(self) -> None:
        """The safety board as this process finds it: read its arming and watchdog, disarm it, clear a
        watchdog a previous controller left expired (a safety_log row: it stopped without closing, a crash),
        then the heartbeat and the sample stream. A watchdog that stays expired is a fault to reset."""
        board = self.rig.safety
        assert board is not None
        await board.set_watchdog_timeout(WATCHDOG_TIMEOUT_MS)
        try:
            found: BoardStatus | None = await board.read_status()
        except UnknownCommand:
            found = None  # firmware 3.0 cannot tell: a clear changes nothing on a watchdog that runs
        await board.disarm()
        if found is None or found.watchdog is WatchdogState.EXPIRED or board.watchdog_expired:
            await board.clear_watchdog()
        if found is None:
            _LOG.info("safety board firmware cannot report its watchdog: WDT_CLEAR sent at start-up")
        elif found.watchdog is WatchdogState.EXPIRED or found.armed:
            left = "watchdog expired" if found.watchdog is WatchdogState.EXPIRED else "board armed"
            self.supervisor.log(
                "system_watchdog_timeout" if found.watchdog is WatchdogState.EXPIRED else "board_disarmed",
                "warning",
                f"safety board found with its {left} at start-up: the previous controller stopped without "
                "disarming it (a crash or a kill)",
                action="DISARM and WDT_CLEAR sent; arming needs the password again",
                details={"armed": found.armed, "watchdog": found.watchdog.value},
            )
        if found is not None:
            after = await board.read_status()
            self.supervisor.readings.watchdog_expired = after.watchdog is WatchdogState.EXPIRED
        board.add_listener(self._on_board)
        board.start_heartbeat(HEARTBEAT_PERIOD_S)
        self.supervisor.readings.watchdog_timeout_s = WATCHDOG_TIMEOUT_MS / 1000
        pedal, estop = await board.footpedal(), await board.estop()
        self.supervisor.update_board_link(BoardLink(board.last_heartbeat_ok, watchdog_expired=False))
        self.supervisor.update_switches(pedal=pedal, estop=estop)
        await board.set_stream(STREAM_HZ)

    def _link_callback(self, name: str) -> Callable[[LinkState], None]:
        def changed(state: LinkState) -> None:
            self.supervisor.set_link(name, state.value)
            self._event(
                Severity.WARNING if state is not LinkState.OPEN else Severity.INFO,
                f"{name} link {state.value}",
            )

        return changed

    # ---------------------------------------------------------------------------------------- inputs
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
                    {
                        "t": round(t, 4),
                        "pd_v": item.photodiode_v,
                        "p_w": None if measured is None else round(measured, 4),
                        "cmd_w": round(sup.commanded_w, 4),
                        "on": emitting,
                        "pedal": item.pedal,
                        "estop": item.estop,
                        "vib_g": item.vibration_g,
                        "enable": item.laser_enable,
                        "state": sup.state.value,
                        "pos_um": self.position_um,
                    }
                )
            except Exception as exc:
                _LOG.error("telemetry line not written: %s", exc)

    def _on_storage_health(self, ok: bool, problem: str | None) -> None:
        self.supervisor.set_storage(ok, problem)
        if not ok:
            self._event(Severity.CRITICAL, f"storage cannot record: {problem}")
        else:
            self._event(Severity.INFO, "storage records again")

    def _on_state_change(self, old: SystemState, new: SystemState, reason: str) -> None:
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
            self._spawn_status("paused")
        elif new is SystemState.PAUSED:
            self._record("pause", details={"reason": reason}, **columns)
            self._spawn_status("paused")
        elif old is SystemState.PAUSED and new is SystemState.ARMED:
            self._record("resume", details={"reason": reason}, **columns)
            self._spawn_status("in_progress")
        elif old is SystemState.FAULT and new is SystemState.READY:
            self._spawn_status("in_progress")

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

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short record-keeping coroutine; finished ones are dropped from the task list."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    def _step_number(self) -> int | None:
        session = self.session
        if session is None or session.engine.progress is None:
            return None
        return session.engine.progress.number

    def _record(self, event_type: str, **columns: Any) -> None:
        if self.session is None:
            return
        if "ring_mm" not in columns and self.session.engine.ring_mm is not None:
            columns["ring_mm"] = self.session.engine.ring_mm
        columns.setdefault("position_um", self.position_um)
        try:
            self.recorder.event(event_type, **columns)
        except Exception as exc:
            _LOG.error("treatment event %s not queued: %s", event_type, exc)

    async def _write_safety(self, entry: SafetyEntry) -> None:
        await self.recorder.safety(
            entry.event_type,
            entry.severity,
            entry.description,
            system_state=entry.system_state,
            laser_state=entry.laser_state,
            footpedal_state=entry.footpedal_state,
            smoothing_device_state=entry.smoothing_device_state,
            photodiode_voltage_v=entry.photodiode_voltage_v,
            action_taken=entry.action_taken,
            details=dict(entry.details) if entry.details is not None else None,
            tech_id=entry.tech_id,
        )

    # -------------------------------------------------------------------------------------- monitors
    async def _poll_laser(self) -> None:
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
                        self.current_ma = await laser.measured_current_ma()
                except (LinkError, ValueError) as exc:
                    _LOG.debug("laser poll failed: %s", exc)
                else:
                    count += 1
                    self.supervisor.update_laser(LaserReading(on, self.current_ma, asked, time.monotonic()))
            await asyncio.sleep(POLL_PERIOD_S)

    async def _poll_tec(self) -> None:
        """Temperature every period, output state every 3rd, setpoint when unknown."""
        count = 0
        on: bool | None = None
        while True:
            tec = self.rig.tec
            if tec is not None:
                try:
                    if self.tec_setpoint_c is None:
                        self.tec_setpoint_c = await tec.get_setpoint_c()
                    if on is None or count % 3 == 0:
                        on = await tec.output_is_on()
                    temperature = await tec.temperature_c()
                except (LinkError, ValueError) as exc:
                    _LOG.debug("TEC poll failed: %s", exc)
                else:
                    count += 1
                    self.supervisor.update_tec(
                        TecReading(on, temperature, self.tec_setpoint_c, time.monotonic())
                    )
            await asyncio.sleep(POLL_PERIOD_S)

    async def _poll_actuator(self) -> None:
        """Status word every period, position every 3rd."""
        count = 0
        while True:
            actuator = self.rig.actuator
            if actuator is not None:
                try:
                    status = await actuator.status()
                    if self.position_um is None or count % 3 == 0:
                        self.position_um = await actuator.position_um()
                except (LinkError, ValueError, ActuatorError) as exc:
                    _LOG.debug("actuator poll failed: %s", exc)
                else:
                    count += 1
                    fault = status.describe() if status.stopped_by_fault else None
                    self.supervisor.update_actuator(
                        ActuatorReading(self.position_um, fault, time.monotonic())
                    )
            await asyncio.sleep(POLL_PERIOD_S)

    async def _tick(self) -> None:
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
            "info" if ok else "warning",
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
                "warning",
                description,
                action="counted; the link is marked faulty after 3 in a row",
                details={"device": name, "bad_replies_total": count},
            )
            self._event(Severity.WARNING, description)

    # --------------------------------------------------------------------------------------- sessions
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
    ) -> dict[str, Any]:
        """Open a session (see the module documentation); returns what the console shows. The connection
        ``by_connection`` (``None``: this process) then holds it for ``by_person``."""
        if self.session is not None or self.supervisor.state is not SystemState.IDLE:
            raise Refused(
                f"cannot open a session in {self.supervisor.state.value}"
                + (" (a session is open)" if self.session is not None else "")
            )
        if self.sim:
            async with self.db() as db:
                user = await UsersRepository(db).get_by_username(username)
            if user is not None:
                installed = await install_sim_calibrations_if_missing(self.db, user.tech_id)
                if installed:
                    _LOG.info("simulated rig factory calibrations installed: %s", ", ".join(installed))
            await self._reload_calibrations()
        if self.calibrations is None:
            raise Refused(
                f"no treatment without active calibrations: {self.supervisor.readings.calibrations_detail}"
            )
        protocol_text = await self._protocol_text(protocol_name)
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
        self._event(
            Severity.INFO,
            f"session {opened.session_id} opened: {opened.subject_code}, {opened.protocol_name}",
        )
        return {
            "session_id": opened.session_id,
            "subject_code": opened.subject_code,
            "protocol_name": opened.protocol_name,
            "folder": str(opened.folder),
            "backup": None if opened.backup_path is None else str(opened.backup_path),
            "total_duration_s": plan.total_duration_s,
            "expected_energy_j": plan.expected_energy_j,
        }

    async def _protocol_text(self, protocol_name: str) -> str:
        from storage.repositories import ProtocolsRepository

        async with self.db() as db:
            protocol = await ProtocolsRepository(db).get_by_name(protocol_name)
        if protocol is None or not protocol.is_active:
            raise Refused(f"no active protocol named {protocol_name!r}")
        return protocol.protocol_data

    async def _prepare_devices(self, max_power_w: float) -> None:
        rig, cal = self.rig, self.session.calibrations if self.session else None
        assert cal is not None and rig.laser and rig.tec and rig.actuator and rig.safety
        limit = min(10000.0, math.ceil(cal.power_to_current_ma(max_power_w) + 100.0))
        await rig.laser.set_current_limit_ma(limit)
        await self.supervisor.set_power(0.0)
        await rig.tec.set_setpoint_c(TEC_SETPOINT_C)
        self.tec_setpoint_c = TEC_SETPOINT_C
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
                "info",
                "actuator amplifiers enabled for the session",
                action="ENBL=1 sent at session start",
            )
        if not status.encoder_valid:
            await rig.actuator.find_index()

    async def _start_video(self, folder: Path) -> Path | None:
        """Record the camera into the session folder; a camera problem is a warning, never a refusal."""
        camera = self.rig.camera
        if camera is None:
            return None
        try:
            return await camera.start_recording(folder, fps=self.video_fps, stem="video")
        except Exception as exc:
            _LOG.warning("session video not recorded: %s", exc)
            self._event(Severity.WARNING, f"session video not recorded: {exc}")
            return None

    async def _stop_video(self, session: ActiveSession) -> str | None:
        """Stop the recording and add its session_recordings row; returns the video's path."""
        camera = self.rig.camera
        if camera is None or session.video is None:
            return None
        try:
            result = await camera.stop_recording()
        except Exception as exc:
            _LOG.error("session video not closed: %s", exc)
            return None
        if result is None:
            return None
        try:
            size = result.path.stat().st_size
        except OSError:
            size = None
        resolution = camera.frame_size
        async with self.db() as db, db.begin():
            await SessionsRepository(db).add_recording(
                SessionRecording(
                    session_id=session.opened.session_id,
                    recording_type="video",
                    file_path=str(result.path),
                    file_size_bytes=size,
                    duration_seconds=result.duration_s,
                    timestamp=utc_now(),
                    frame_count=result.frame_count,
                    resolution=None if resolution is None else f"{resolution[0]}x{resolution[1]}",
                    notes=result.error,
                )
            )
        return str(result.path)

    async def _move_ring(self, ring_mm: float) -> float:
        session, actuator = self.session, self.rig.actuator
        if session is None or actuator is None:
            raise Refused("no session or no actuator")
        target = session.calibrations.ring_mm_to_position_um(ring_mm)
        reached = await actuator.move_to_um(target)
        self.position_um = reached
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
        self._event(
            Severity.INFO, f"session {session.opened.session_id} {status}" + (f": {reason}" if reason else "")
        )
        if problem is not None:
            self._event(Severity.CRITICAL, problem)
            raise Refused(problem)

    # ------------------------------------------------------------------------------------ pre-checks
    async def prechecks(self) -> list[dict[str, Any]]:
        """Every pre-treatment check with its live value and pass/fail: every condition that refuses arming
        is one of them, so that when all pass only the password can still refuse it.

        First the supervisor's state (READY is the one state that arms; a latched fault fails this check
        with what happened and how to reset it), then the devices, the footpedal (released: arming is
        refused while it is pressed) and every other term of the permission to emit, the calibrations, the
        database and the session's backup.
        """
        checks: list[dict[str, Any]] = []
        sup = self.supervisor

        def add(name: str, ok: bool, value: str, detail: str = "") -> None:
            checks.append({"name": name, "ok": ok, "value": value, "detail": "" if ok else detail})

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
        cal = self.calibrations
        if cal is not None:
            for label, active in (
                ("laser", cal.laser),
                ("photodiode", cal.photodiode),
                ("actuator", cal.actuator),
            ):
                add(f"calibration {label}", True, active.describe())
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
        if blockers and all(c["ok"] for c in checks):
            # A refusal none of the checks above shows (they should): never "all pass" while arm would refuse.
            add("arming", False, "refused", "; ".join(blockers))
        return checks

    async def wait_prechecks(self, timeout_s: float) -> list[dict[str, Any]]:
        """The pre-checks once all pass (checked every 0.1 s); Refused, naming the failing ones, after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            checks = await self.prechecks()
            failing = [c for c in checks if not c["ok"]]
            if not failing:
                return checks
            if time.monotonic() > deadline:
                raise Refused(
                    "pre-checks still failing: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failing)
                )
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------------------------- commands
    async def handle(self, command: Any, peer: Peer) -> dict[str, Any] | None:
        """Answer one command from a client (the socket server's handler)."""
        try:
            return await self._dispatch(command, peer)
        except (Refused, SessionRefused) as exc:
            raise CommandRefused(str(exc)) from None
        except Exception as exc:
            words = storage_failure(exc)  # a full disk or a locked database, said in words
            if words is None:
                raise
            _LOG.error("%s refused: %s", command.type, exc)
            raise CommandRefused(words) from None

    async def _dispatch(self, command: Any, peer: Peer) -> dict[str, Any] | None:
        """One command from ``peer``: the open commands for anyone, the others for the person authenticated
        on that connection, and those acting on the session only from the connection holding it (see
        :mod:`control.authority`). Each command given for a person is audited with the peer."""
        kind = command.type
        sup = self.supervisor
        auth = self.authority
        if kind == "ping":
            return {"pong": True}
        if kind == "status":
            return self.snapshot().model_dump(mode="json")
        if kind == "health":
            return {
                name: {"state": h.state, "identity": h.identity, "error": h.last_error, "detail": h.detail}
                for name, h in self.rig.health().items()
            }
        if kind == "prechecks":
            return {"checks": await self.prechecks()}
        if kind == "stop":
            # Anyone, always: it only makes things safer (the stop key sends it on a connection of its own).
            armed = sup.state in ARMED_STATES
            await sup.stop()
            if armed and self.session is not None:
                auth.paused_by(peer.connection, auth.person(peer.connection))
            return {"state": sup.state.value}
        if kind == "authenticate":
            return await self._authenticate(command, peer)
        if kind == "logout":
            held = auth.holds(peer.connection)
            person = auth.sign_out(peer.connection)
            if held:
                await self._release_holder("the operator logging out")
            if person is not None:
                self._audit_command(kind, "success", person, peer)
            return {"username": person.username if person is not None else None}
        if auth.person(peer.connection) is None:
            claimed = getattr(command, "username", None)
            self._audit_command(kind, "failure", None, peer, reason="not authenticated", username=claimed)
        person = auth.require_person(peer.connection, kind)
        try:
            result = await self._act(command, peer, person)
        except (Refused, SessionRefused) as exc:
            self._audit_command(kind, "failure", person, peer, reason=str(exc))
            raise
        self._audit_command(kind, "success", person, peer)
        return result

    async def _act(self, command: Any, peer: Peer, person: Person) -> dict[str, Any] | None:
        """Carry out a command for ``person`` (authenticated on ``peer``'s connection)."""
        kind = command.type
        sup = self.supervisor
        auth = self.authority
        connection = peer.connection
        if kind in HOLDER_COMMANDS:
            self._require_session()
            auth.require_holder(connection, kind)
        if kind == "open_session":
            if person.role not in SESSION_ROLES:
                raise Refused(
                    f"{person.username} is {person.role}: only a technician or an admin opens a session"
                )
            if command.username is not None and command.username != person.username:
                raise Refused(
                    f"open_session for {command.username!r} refused: "
                    f"this connection acts for {person.username}"
                )
            await self._active_account(person, refuse_locked=True)
            return await self.open_session(
                subject_code=command.subject_code,
                username=person.username,
                protocol_name=command.protocol_name,
                treatment_site=command.treatment_site,
                treatment_notes=command.treatment_notes,
                create_subject=command.create_subject,
                by_connection=connection,
                by_person=person,
            )
        if kind == "takeover":
            return await self._take_over(command.password, peer, person)
        if kind == "arm":
            return await self.arm(command.password, peer=peer, username=command.username)
        if kind == "disarm":
            await sup.disarm(f"disarmed by {person.username}")
            return None
        if kind == "pause":
            await sup.pause(f"paused by {person.username}")
            auth.paused_by(connection, person)
            return None
        if kind == "resume":
            refusal = auth.resume_refusal(connection, person)
            if refusal is not None:
                raise Refused(refusal)
            await self._active_account(person, refuse_locked=False)
            await sup.resume()
            auth.pause = None
            return None
        if kind == "abort":
            return await self.abort(command.reason, by=person.username)
        if kind == "override_power":
            session = self._require_session()
            return dict(
                session.engine.override_power(
                    command.watts, command.reason, actor=person.username, step=command.step
                )
            )
        if kind == "reset_fault":
            result = await self.reset_fault(command.username, command.password)
            auth.paused_otherwise("a fault and its reset")
            return result
        if kind == "end_session":
            await self._active_account(person, refuse_locked=False)
            return await self.end_session(command.notes)
        if kind == "sim":
            if self.sim_rig is None:
                raise Refused("simulator commands exist only on the simulated rig")
            try:
                return {"reply": self.sim_rig.command(command.command)}
            except ValueError as exc:
                raise Refused(str(exc)) from None
        raise Refused(f"unknown command {kind!r}")

    @staticmethod
    def _peer_details(peer: Peer | None) -> dict[str, Any]:
        """The connection's peer as the audit trail records it."""
        if peer is None:
            return {"connection": None}
        return {"connection": peer.connection, "peer_pid": peer.pid, "peer_uid": peer.uid}

    def _audit_command(
        self,
        kind: str,
        outcome: str,
        person: Person | None,
        peer: Peer,
        *,
        reason: str | None = None,
        username: str | None = None,
    ) -> None:
        """Audit one command from a connection (in the background: a command never waits on the audit)."""
        details: dict[str, Any] = {"command": kind, **self._peer_details(peer)}
        if reason is not None:
            details["reason"] = reason
        if self.session is not None:
            details["session_id"] = self.session.opened.session_id
        user = None
        if person is not None:
            user = UserInfo(
                tech_id=person.tech_id,
                username=person.username,
                full_name=person.full_name,
                role=person.role,
                is_active=True,
                has_password=True,
                must_change_password=False,
                failed_login_count=0,
                locked_until=None,
                last_login=None,
                created_date=None,
            )

        async def write() -> None:
            try:
                await self.accounts.record_command(
                    "control_command", outcome, user=user, details=details, username=username
                )
            except Exception as exc:
                _LOG.error("audit of %s from %s not written: %s", kind, peer, exc)

        self._background(write())

    async def _authenticate(self, command: Any, peer: Peer) -> dict[str, Any]:
        """Prove who acts on this connection (a password checked like a login, or this console's token)."""
        auth = self.authority
        held = auth.holds(peer.connection)
        if command.token is not None:
            person, changed = auth.sign_in_with_token(peer.connection, command.token)
            try:
                await self._active_account(person, refuse_locked=False)
            except Refused:
                auth.sign_out(peer.connection)
                changed = True
                raise
            finally:
                if changed and held:
                    await self._release_holder("the connection authenticating as someone else")
            token = command.token
            self._audit_command("authenticate", "success", person, peer)
        else:
            result = await self.accounts.login(
                command.username,
                command.password,
                context="control_connection",
                details=self._peer_details(peer),
            )
            if not result.ok or result.user is None:
                raise Refused(result.message)
            user = result.user
            person = Person(user.tech_id, user.username, user.full_name, user.role)
            token, changed = auth.sign_in(peer.connection, person)
            if changed and held:
                await self._release_holder("the connection authenticating as someone else")
        return {
            "username": person.username,
            "full_name": person.full_name,
            "role": person.role,
            "token": token,
            "connection": peer.connection,
        }

    async def _active_account(self, person: Person, *, refuse_locked: bool) -> None:
        """Refused (and the person forgotten everywhere) when the account was deactivated meanwhile; with
        ``refuse_locked``, also while it is locked out (starting something new; a locked account still
        finishes its own open session)."""
        info = await self.accounts.get_user(person.username)
        if info is None or not info.is_active or info.tech_id != person.tech_id:
            self.authority.forget_person(person.tech_id)
            raise Refused(
                f"the account {person.username!r} is deactivated: it can no longer command the laser"
            )
        if refuse_locked and info.locked_at(self.accounts.clock()):
            assert info.locked_until is not None
            raise Refused(f"{person.username}: {locked_message(info.locked_until, self.accounts.zone)}")

    async def _take_over(self, password: str, peer: Peer, person: Person) -> dict[str, Any]:
        """This connection takes the open session over for ``person`` (its technician or an admin), with the
        password; emission stops first, and arming again needs the password."""
        session = self._require_session()
        auth = self.authority
        if person.role not in SESSION_ROLES or (
            person.username != session.opened.username and person.role != "admin"
        ):
            raise Refused(
                f"only the session's technician ({session.opened.username}) or an admin may take it over"
            )
        if auth.key_blocked and person.role != "admin":
            raise Refused(auth.blocked_message())
        await self._key_check(person.username, password, peer, "takeover")
        if auth.holds(peer.connection):
            return {"state": self.supervisor.state.value, "session_id": session.opened.session_id}
        auth.taken_over(peer.connection, person)
        self.supervisor.tech_id = person.tech_id
        sup = self.supervisor
        if sup.state in ARMED_STATES:
            sup.output_off_now()
            with contextlib.suppress(Refused):
                await sup.pause(f"session taken over by {person.username} (connection {peer.connection})")
        self._record(
            "user_action",
            details={"action": "takeover", "by": person.username, **self._peer_details(peer)},
        )
        self._event(Severity.INFO, f"session {session.opened.session_id} taken over by {person.username}")
        return {"state": sup.state.value, "session_id": session.opened.session_id}

    async def _key_check(self, username: str, password: str, peer: Peer | None, context: str) -> None:
        """Key control for ``username``: a wrong password is counted for this session (never a lockout)."""
        session = self.session
        details = {
            "context": context,
            "session_id": session.opened.session_id if session is not None else None,
            **self._peer_details(peer),
        }
        result = await self.accounts.check_key(username, password, details=details)
        if result.ok:
            return
        if result.outcome is LoginOutcome.INACTIVE:
            raise Refused(result.message)
        left = self.authority.key_failed()
        if left:
            raise Refused(
                f"wrong password (key control): {left} of {MAX_KEY_FAILURES} tries left in this session"
            )
        raise Refused("wrong password (key control); " + self.authority.blocked_message())

    def _require_session(self) -> ActiveSession:
        if self.session is None:
            raise Refused("no session is open")
        return self.session

    async def _check_password(self, username: str, password: str, context: str) -> Any:
        result = await self.accounts.login(username, password, context=context)
        if not result.ok or result.user is None:
            raise Refused(result.message)
        return result.user

    async def arm(
        self, password: str, *, peer: Peer | None = None, username: str | None = None
    ) -> dict[str, Any]:
        """Key control: the operator re-enters the password; every pre-check must pass. From READY this arms;
        from PAUSED it resumes. ``peer`` is the connection asking (``None``: this process), which must hold
        the session; its person is the operator. A wrong password counts towards the session's limit and
        never locks the account; once the limit is reached only an admin's ``username`` and password arm
        (and open key control again)."""
        session = self._require_session()
        auth = self.authority
        sup = self.supervisor
        operator = session.opened.username
        if peer is not None:
            auth.require_holder(peer.connection, "arm")
            person = auth.require_person(peer.connection, "arm")
            operator = person.username
        elif auth.operator is not None:
            operator = auth.operator.username
        if sup.state not in (SystemState.READY, SystemState.PAUSED):
            fault = sup.fault
            if sup.state is SystemState.FAULT and fault is not None:
                raise Refused(f"cannot arm in fault: {fault.what}; {fault.how_to_reset}")
            raise Refused(f"cannot arm in {sup.state.value}")
        by = operator
        if username is not None and username != operator:
            result = await self.accounts.login(
                username, password, context="key_unblock", details=self._peer_details(peer)
            )
            if not result.ok or result.user is None:
                raise Refused(result.message)
            if result.user.role != "admin":
                raise Refused(f"{username} is not an admin: arming is key control by {operator}")
            auth.key_unblocked()
            by = username
        else:
            if auth.key_blocked:
                raise Refused(auth.blocked_message())
            await self._key_check(operator, password, peer, "arm")
        failing = [c for c in await self.prechecks() if not c["ok"]]
        if failing:
            raise Refused("pre-checks failing: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failing))
        resuming = sup.state is SystemState.PAUSED
        if resuming:
            await sup.resume()
        else:
            await sup.arm()
        auth.pause = None
        self._record("user_action", details={"action": "resume" if resuming else "arm", "by": by})
        return {"state": sup.state.value}

    async def abort(self, reason: str, *, by: str | None = None) -> dict[str, Any]:
        """Abort the open session with the operator's reason (laser off first); ``by`` is who (default: the
        session's technician)."""
        if not reason or not reason.strip():
            raise Refused("an abort needs a reason")
        session = self._require_session()
        self.supervisor.output_off_now()
        self._record(
            "user_action",
            details={"action": "abort", "reason": reason.strip(), "by": by or session.opened.username},
        )
        await self._close_session("aborted", reason.strip())
        return {"session_id": session.opened.session_id, "state": self.supervisor.state.value}

    async def reset_fault(self, username: str, password: str) -> dict[str, Any]:
        """Acknowledge a latched fault (who, with the password); refused while its cause is present."""
        user = await self._check_password(username, password, "fault_reset")
        await self.supervisor.reset(user.tech_id, user.username, session_open=self.session is not None)
        return {"state": self.supervisor.state.value}

    async def end_session(self, notes: str | None) -> dict[str, Any]:
        """Post-treatment notes on the last finished session (the open one must complete or be aborted)."""
        if self.session is not None:
            raise Refused("the session is still open: let it complete or abort it first")
        if self.last_session_id is None:
            raise Refused("no session to add notes to")
        if notes and notes.strip():
            username = await self._session_username(self.last_session_id)
            await self.sessions.add_notes(self.last_session_id, notes.strip(), username=username)
        return await self.sessions.summary_of(self.last_session_id)

    async def _session_username(self, session_id: int) -> str:
        async with self.db() as db:
            row = await SessionsRepository(db).get_by_id(session_id)
            user = await UsersRepository(db).get_by_id(row.tech_id) if row is not None else None
        if user is None:
            raise Refused(f"session {session_id} has no technician")
        return user.username

    async def _operator_gone(self, peer: Peer) -> None:
        """A connection to ``control.sock`` ended. If it held the session (whoever it was), emission stops at
        once and an armed session pauses; nobody holds the session until a console takes it over."""
        if self.authority.connection_closed(peer.connection):
            await self._release_holder("the operator's connection closing")

    async def _release_holder(self, cause: str) -> None:
        """Nobody holds the session any more (``cause``): laser off now, an armed session paused."""
        self.authority.release(cause)
        sup = self.supervisor
        if sup.state in ARMED_STATES:
            sup.output_off_now()
            with contextlib.suppress(Refused):
                await sup.pause(cause)

    def _authority_state(self, old: SystemState, new: SystemState, reason: str) -> None:
        """A fault ends whatever pause came before it: after its reset, arming needs the password."""
        if new is SystemState.FAULT:
            self.authority.paused_otherwise("a fault and its reset")

    # ------------------------------------------------------------------------------------- snapshots
    def _event(self, severity: Severity, text: str) -> None:
        self._seq += 1
        event = msg.Event(
            seq=self._seq, time_s=time.monotonic(), kind="controller", severity=severity, message=text
        )
        if self.server is not None:
            self.server.publish_event(event)

    def snapshot(self) -> msg.Snapshot:
        """Everything a console shows, now."""
        sup = self.supervisor
        now = time.monotonic()
        session = self.session
        session_view = None
        measured = sup.measured_power_w()
        if session is not None:
            progress: StepProgress | None = session.engine.progress
            step_view = None
            if progress is not None:
                step_view = msg.StepView(
                    number=progress.number,
                    of=progress.of,
                    elapsed_s=progress.elapsed_s,
                    duration_s=progress.duration_s,
                    power_start_w=progress.power_start_w,
                    power_end_w=progress.power_end_w,
                    ramp=progress.ramp,
                    ring_size_mm=progress.ring_size_mm,
                )
            session_view = msg.SessionView(
                session_id=session.opened.session_id,
                subject_code=session.opened.subject_code,
                protocol_name=session.opened.protocol_name,
                technician=session.opened.technician,
                status=Status.PAUSED
                if sup.state in (SystemState.PAUSED, SystemState.FAULT)
                else Status.IN_PROGRESS,
                clock_s=now - session.started_mono,
                treating_s=sup.treating_seconds(now),
                delivered_energy_j=session.summary.energy_j,
                step=step_view,
                max_override_w=session.max_override_w,
                total_duration_s=session.plan.total_duration_s,
                expected_energy_j=session.plan.expected_energy_j,
                **self._holding_view(session),
            )
        cal = self.calibrations
        measured_ring = None
        if cal is not None and self.position_um is not None:
            with contextlib.suppress(ValueError):
                measured_ring = cal.position_to_ring_mm(self.position_um)
        fault = sup.fault
        fault_view = None
        if fault is not None:
            fault_view = msg.FaultView(
                what=fault.what,
                action=fault.action,
                how_to_reset=fault.how_to_reset,
                cause_cleared=fault.term is None or sup.terms(now)[fault.term].ok,
                at=datetime.fromtimestamp(time.time() - (now - fault.at)).isoformat(timespec="seconds"),
            )
        self._seq += 1
        return msg.Snapshot(
            seq=self._seq,
            time_s=now,
            state=sup.state,
            emitting=sup.output_commanded_on and sup.state is SystemState.TREATING,
            sim=self.sim,
            session=session_view,
            laser=msg.LaserView(
                commanded_w=sup.commanded_w,
                measured_w=measured,
                photodiode_v=sup.readings.photodiode_v,
                output_on=bool(sup.readings.laser_output_on),
                current_ma=self.current_ma,
                deviation_percent=sup.photodiode_deviation_percent(measured),
            ),
            ring=msg.RingView(
                commanded_mm=session.engine.ring_mm if session else None,
                measured_mm=measured_ring,
                position_um=self.position_um,
            ),
            interlocks=[
                msg.InterlockView(name=t.term.value, ok=t.ok, value=t.value, detail=t.detail)
                for t in sup.terms(now).values()
            ],
            devices=[
                msg.DeviceView(name=h.name, state=h.state, identity=h.identity, error=h.last_error)
                for h in self.rig.health().values()
            ],
            fault=fault_view,
            warnings=list(sup.warnings[-5:]),
            actions=sup.permitted_actions(),
            last_session_id=self.last_session_id,
        )

    def _holding_view(self, session: ActiveSession) -> dict[str, Any]:
        """Who holds the session and what leaving its pause needs, as a snapshot shows it."""
        auth = self.authority
        return {
            "operator": auth.operator.username if auth.operator is not None else session.opened.username,
            "held_by_connection": None if auth.in_process else auth.holder,
            "resume_needs_key": self.supervisor.state is SystemState.PAUSED and auth.resume_needs_key,
            "key_failures": auth.key_failures,
            "key_failures_allowed": MAX_KEY_FAILURES,
        }

    async def _publish(self) -> None:
        while True:
            if self.server is not None and self.server.peers:
                try:
                    self.server.publish(self.snapshot())
                except Exception:
                    _LOG.exception("snapshot not published")
            await asyncio.sleep(1.0 / SNAPSHOT_HZ)
