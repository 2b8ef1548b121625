"""The safety supervisor: the one place that decides whether the laser may emit.

docs/safety.md. The supervisor owns the system state (:class:`SystemState`), the transition table
:data:`TRANSITIONS` (anything not in it is refused), and the laser output switch. Everything else feeds it:

- the safety board's push events and stream samples, through :meth:`SafetySupervisor.on_board`, called
  synchronously by the driver's dispatch (no task switch between a pedal edge and "output off");
- the device monitors' readings, one typed reading per device (:class:`LaserReading`, :class:`TecReading`,
  :class:`ActuatorReading`) through :meth:`SafetySupervisor.update_laser` and its siblings, and the link
  states through :meth:`SafetySupervisor.set_link`;
- the protocol engine (step active or not, the commanded power) and the recorder (storage health);
- the operator's commands (arm, pause, resume, stop, abort, reset), each a coroutine that raises
  :class:`Refused` with the reason.

Permission to emit is the conjunction of the :class:`Term` values in ARMED or TREATING, decided in one place,
:meth:`SafetySupervisor.may_emit`; :meth:`SafetySupervisor.terms` gives each term with its live value. The
supervisor also publishes what a console shows of its judgement: the photodiode deviation it judges
(:meth:`SafetySupervisor.photodiode_deviation_percent`), the operator actions the state permits
(:func:`permitted_actions`) and the highest power a session may command
(:meth:`SafetySupervisor.session_power_ceiling`).

When any term other than the footpedal goes false while ARMED or TREATING, the laser
is switched off at once (``LAS:OUT 0`` written without waiting), then the off state is verified, the safety
board disarmed, and only then is the fault logged. FAULT latches: :meth:`SafetySupervisor.reset` needs the
cause gone and an operator's acknowledgement, and leads to READY while a session is open (the operator arms
again) or to IDLE when none is (a session may be opened). A session may be closed while the fault stays
latched (:meth:`SafetySupervisor.end_session`). Releasing the footpedal is normal operation: TREATING goes
back to ARMED and the step clock stops. :meth:`SafetySupervisor.arm_blockers` names every reason an arm would
be refused now, so that the pre-treatment checks can show each one.

The supervisor never switches the output on by itself after a fault, a reconnection or a reset: emission
needs ARMED (key control by the operator) and a footpedal press.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from control.system_config import DEFAULTS as _SETTINGS
from control.vocabulary import OperatorAction, Severity, SystemState
from devices.safety import EventKind, SafetyEvent, SafetySample
from storage.models import utc_now
from storage.safety_records import SafetyRecord

__all__ = ["OperatorAction", "SystemState"]

_LOG = logging.getLogger(__name__)

#: A device reading older than this (s) makes the "devices" term false.
MAX_READING_AGE_S: Final = 0.100
#: Deviation must persist this long (s) before a photodiode warning or fault. Like every persistence window
#: here, it is counted from the last sample judged without the condition (the condition began at some moment
#: after it, and the earliest is assumed), never from before judging began: a window is not lengthened by
#: the time until the next sample shows the condition (up to one sample period, 10 ms at 100 Hz).
PHOTODIODE_PERSISTENCE_S: Final = 0.500
#: After the output switches on or the setpoint changes, the photodiode is not judged for this long (s).
PHOTODIODE_SETTLE_S: Final = 0.050
#: Light above this (W) while the output is commanded off is a fault ...
STRAY_LIGHT_W: Final = 0.25
#: ... once it has been seen for this long (s), counted from this long (s) after the output was switched off.
STRAY_LIGHT_PERSISTENCE_S: Final = 0.020
STRAY_LIGHT_GRACE_S: Final = 0.050
#: How late (s) the controller's own loop may run before it counts as held up, and the window (s) over
#: which that lateness is added up. Time the loop was held up (a busy machine) is not counted against the
#: age of a reading, because no reply could be read meanwhile; a device that stops answering while the loop
#: runs on time is stale after 100 ms.
LOOP_LATE_S: Final = 0.0005
LOOP_LATENESS_WINDOW_S: Final = 0.200
#: While a fault is latched and the board's DISARM has not been confirmed, it is sent again this often (s).
DISARM_RETRY_S: Final = 1.0
#: The deviation is taken relative to the commanded power, but never to less than this (W).
PHOTODIODE_FLOOR_W: Final = 0.5
#: A laser output read-back is judged against the commanded output only when the question was asked this
#: long (s) after the output was last switched: a read-back from before that may still show the old state.
OUTPUT_READBACK_SETTLE_S: Final = 0.050
#: A persistence window is judged this long (s) after it closes, so that the clock has passed its end.
JUDGE_AGAIN_MARGIN_S: Final = 0.00002


S = SystemState
#: Allowed transitions. Anything else is refused.
TRANSITIONS: Final[Mapping[SystemState, frozenset[SystemState]]] = {
    S.IDLE: frozenset({S.READY, S.FAULT}),
    S.READY: frozenset({S.ARMED, S.IDLE, S.FAULT}),
    S.ARMED: frozenset({S.TREATING, S.READY, S.PAUSED, S.IDLE, S.FAULT}),
    S.TREATING: frozenset({S.ARMED, S.READY, S.PAUSED, S.IDLE, S.FAULT}),
    S.PAUSED: frozenset({S.ARMED, S.READY, S.IDLE, S.FAULT}),
    S.FAULT: frozenset({S.READY, S.IDLE}),
}
#: States in which the safety board is armed.
ARMED_STATES: Final = frozenset({S.ARMED, S.TREATING})
#: States with an open treatment session.
SESSION_STATES: Final = frozenset({S.READY, S.ARMED, S.TREATING, S.PAUSED})

A = OperatorAction
#: The states in which each operator action on a session is permitted (a command may still be refused for
#: another reason, which it then says).
ACTION_STATES: Final[Mapping[OperatorAction, frozenset[SystemState]]] = {
    A.PAUSE: ARMED_STATES,
    A.RESUME: frozenset({S.PAUSED}),
    A.ARM: frozenset({S.READY, S.PAUSED}),
    A.OVERRIDE_POWER: SESSION_STATES,
    A.ABORT: SESSION_STATES | {S.FAULT},
    A.RESET_FAULT: frozenset({S.FAULT}),
}


def deviation_percent(measured_w: float, commanded_w: float) -> float:
    """The photodiode rule's deviation: measured minus commanded power, in percent of the commanded power
    but of never less than :data:`PHOTODIODE_FLOOR_W` (so that a small absolute error at low power is not a
    large percentage)."""
    return (measured_w - commanded_w) / max(commanded_w, PHOTODIODE_FLOOR_W) * 100.0


def permitted_actions(state: SystemState) -> list[OperatorAction]:
    """The operator actions permitted in ``state``, in :class:`OperatorAction` order."""
    return [action for action in OperatorAction if state in ACTION_STATES[action]]


class Term(enum.StrEnum):
    """The terms of the permission to emit (docs/safety.md, "Permission to emit")."""

    FOOTPEDAL = "footpedal"
    ESTOP = "estop"
    WATCHDOG = "watchdog"
    SMOOTHING = "smoothing"
    TEC = "tec"
    PHOTODIODE = "photodiode"
    DEVICES = "devices"
    CALIBRATIONS = "calibrations"
    STEP = "step"
    STORAGE = "storage"


#: Terms that may be false in ARMED without a fault (waiting for the pedal; the actuator moving).
WAITING_TERMS: Final = frozenset({Term.FOOTPEDAL, Term.STEP})


class Refused(Exception):
    """An operator command or a transition the supervisor refuses; the message says why."""


class TransitionRefused(Refused):
    """A transition that is not in :data:`TRANSITIONS`."""


@dataclass(frozen=True)
class TermStatus:
    """One permission term now: whether it holds, its live value, and why not."""

    term: Term
    ok: bool
    value: str
    detail: str = ""


@dataclass(frozen=True)
class FaultInfo:
    """A latched fault: what happened, what the console did, what clears it."""

    term: Term | None
    event_type: str
    what: str
    action: str
    how_to_reset: str
    at: float


#: One safety_log row the supervisor asks to be written (after it has acted): the one row type.
SafetyEntry = SafetyRecord


class LaserPort(Protocol):
    """The laser output as the supervisor drives it."""

    def off_now(self) -> None:
        """Put "output off" on the wire at once, without waiting for anything."""

    async def off_verified(self) -> None:
        """Output off and read back; raises when it cannot be confirmed."""

    async def on_verified(self, still_wanted: Callable[[], bool] | None = None) -> None:
        """Output on and read back; raises (after switching off again) when it does not turn on.

        ``still_wanted`` is asked immediately before "output on" is sent; when it says no, nothing is sent
        and the call raises."""

    async def set_power(self, watts: float) -> None:
        """Set the drive current for ``watts`` through the active calibration."""


class BoardPort(Protocol):
    """The safety board's arming as the supervisor drives it."""

    async def arm(self) -> None:
        """Arm the board (LASER_ENABLE may then follow the footpedal)."""

    async def disarm(self) -> None:
        """Disarm the board."""

    async def clear_watchdog(self) -> None:
        """Clear an expired watchdog."""


@dataclass(frozen=True)
class LaserReading:
    """One poll of the laser driver: its output state read back, the diode current (mA, ``None`` when not
    read this time), when the read-back was asked (``asked_at``) and when it was answered (``at``),
    monotonic s."""

    output_on: bool
    current_ma: float | None
    asked_at: float
    at: float


@dataclass(frozen=True)
class TecReading:
    """One poll of the TEC: output state, temperature and setpoint (degC), answered at ``at``."""

    output_on: bool
    temperature_c: float
    setpoint_c: float | None
    at: float


@dataclass(frozen=True)
class ActuatorReading:
    """One poll of the actuator: position (um), the fault that stopped it (``None``: none), answered at
    ``at``."""

    position_um: float | None
    fault: str | None
    at: float


@dataclass(frozen=True)
class BoardLink:
    """The safety board's heartbeat as its driver last saw it: when a heartbeat was last acknowledged and
    whether the board reported its watchdog expired."""

    heartbeat_ok_at: float | None
    watchdog_expired: bool


SafetyLogSink = Callable[[SafetyEntry], Awaitable[None]]
StateListener = Callable[[SystemState, SystemState, str], None]


@dataclass
class Readings:
    """The latest value of everything the permission depends on; ``*_at`` are monotonic times, s."""

    pedal: bool | None = None
    estop: bool | None = None
    laser_enable: bool | None = None
    watchdog_expired: bool = False
    heartbeat_ok_at: float | None = None
    watchdog_timeout_s: float = 1.0
    vibration_g: float | None = None
    photodiode_v: float | None = None
    board_at: float | None = None
    motor_pwm: int = 0
    tec_output_on: bool | None = None
    tec_temperature_c: float | None = None
    tec_setpoint_c: float | None = None
    tec_at: float | None = None
    laser_output_on: bool | None = None
    laser_current_ma: float | None = None
    laser_at: float | None = None
    actuator_position_um: float | None = None
    actuator_fault: str | None = None
    actuator_at: float | None = None
    links: dict[str, str] = field(default_factory=dict)
    calibrations_ok: bool = False
    calibrations_detail: str = "no active calibrations loaded"
    storage_ok: bool = True
    storage_problem: str | None = None
    step_active: bool = False


@dataclass(frozen=True)
class Limits:
    """Configured thresholds (defaults: :mod:`control.system_config` and docs/devices.md)."""

    photodiode_warning_percent: float = _SETTINGS.photodiode_warning_threshold_percent
    photodiode_fault_percent: float = _SETTINGS.photodiode_fault_threshold_percent
    tec_window_c: float = 1.0
    vibration_min_g: float = 0.8
    max_power_w: float = _SETTINGS.max_laser_power_watts


class SafetySupervisor:
    """The state machine and the permission to emit. All methods run on the controller's loop.

    ``clock`` is the monotonic clock (s) the readings' times use. ``photodiode_to_watts`` converts the
    photodiode voltage through the active calibration (None: no calibration, the photodiode term is false).
    """

    def __init__(
        self,
        laser: LaserPort,
        board: BoardPort,
        log: SafetyLogSink,
        *,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        devices: tuple[str, ...] = ("laser", "tec", "actuator", "safety"),
    ) -> None:
        self.laser = laser
        self.board = board
        self._log_sink = log
        self.limits = limits or Limits()
        self.clock = clock
        self.devices = devices
        self.readings = Readings()
        self.state = SystemState.IDLE
        self.fault: FaultInfo | None = None
        self.photodiode_to_watts: Callable[[float], float] | None = None
        #: The power the engine commands (W) and whether the output is commanded on.
        self.commanded_w = 0.0
        self.output_commanded_on = False
        self.output_changed_at = clock()
        self._setpoint_changed_at = clock()
        self._deviation_since: float | None = None
        self._fault_deviation_since: float | None = None
        self._warning_logged = False
        self._stray_since: float | None = None
        #: When a judged sample last showed no warning deviation, no fault deviation, no stray light.
        self._warning_clear_at: float | None = None
        self._fault_clear_at: float | None = None
        self._stray_clear_at: float | None = None
        self._judge_timer: asyncio.TimerHandle | None = None
        self._treating_total_s = 0.0
        self._treating_since: float | None = None
        self._lock = asyncio.Lock()
        self._last_tick: float | None = None
        self.tick_period_s = 0.01
        #: True while a DISARM the supervisor sent has not been confirmed (the board may still be armed).
        self.disarm_pending = False
        self._disarm_tried_at = -math.inf
        self._disarm_retrying = False
        self._lateness: deque[tuple[float, float]] = deque()
        #: Ticks that came late (count) and the longest lateness seen (s).
        self.late_ticks = 0
        self.longest_lateness_s = 0.0
        self._log_queue: asyncio.Queue[SafetyEntry] = asyncio.Queue()
        self._log_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[StateListener] = []
        self.tech_id: int | None = None
        self.warnings: list[str] = []
        #: True from :meth:`open_session` until :meth:`end_session` (also while a fault is latched).
        self.session_open = False

    # ---------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the ordered safety-log writer."""
        if self._log_task is None:
            self._log_task = asyncio.create_task(self._write_log(), name="supervisor-log")

    async def close(self) -> None:
        """Laser off (best effort), write what is queued, stop the writer."""
        self.output_off_now()
        if self._judge_timer is not None:
            self._judge_timer.cancel()
            self._judge_timer = None
        for task in list(self._side_tasks):
            task.cancel()
        for task in list(self._side_tasks):
            try:
                await task
            except BaseException:
                _LOG.debug("side task ended during close", exc_info=True)
        await self.drain_log()
        writer, self._log_task = self._log_task, None
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                pass

    async def drain_log(self) -> None:
        """Wait until every queued safety-log entry has been handed to the sink."""
        if self._log_task is not None and not self._log_task.done():
            await self._log_queue.join()

    def on_state_change(self, listener: StateListener) -> None:
        """Call ``listener(old, new, reason)`` after every transition."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------------------------------- terms
    def _age_ok(self, at: float | None, now: float) -> bool:
        allowance = sum(late for at, late in self._lateness if now - at <= LOOP_LATENESS_WINDOW_S)
        return at is not None and now - at <= MAX_READING_AGE_S + allowance

    def terms(self, now: float | None = None, *, ages: bool = True) -> dict[Term, TermStatus]:
        """Every permission term with its live value, at ``now`` (default: the clock).

        ``ages=False`` leaves reading ages out of the "devices" term (they are judged by :meth:`tick`).
        """
        now = self.clock() if now is None else now
        r = self.readings
        out: dict[Term, TermStatus] = {}

        def put(term: Term, ok: bool, value: str, detail: str = "") -> None:
            out[term] = TermStatus(term, ok, value, "" if ok else detail)

        put(
            Term.FOOTPEDAL,
            r.pedal is True,
            {True: "pressed", False: "released", None: "unknown"}[r.pedal],
            "footpedal released",
        )
        put(
            Term.ESTOP,
            r.estop is False,
            {True: "PRESSED", False: "released", None: "unknown"}[r.estop],
            "E-stop pressed" if r.estop else "E-stop state unknown",
        )
        heartbeat_ok = r.heartbeat_ok_at is not None and now - r.heartbeat_ok_at <= r.watchdog_timeout_s / 2
        if r.watchdog_expired:
            put(Term.WATCHDOG, False, "expired", "safety board watchdog expired")
        else:
            age = "never" if r.heartbeat_ok_at is None else f"{(now - r.heartbeat_ok_at) * 1000:.0f} ms ago"
            put(Term.WATCHDOG, heartbeat_ok, f"fed {age}", "heartbeat not acknowledged in time")
        vib = "unknown" if r.vibration_g is None else f"{r.vibration_g:.2f} g"
        smoothing_ok = self._smoothing_ok() is True
        put(
            Term.SMOOTHING,
            smoothing_ok,
            f"motor {'on' if r.motor_pwm > 0 else 'off'}, {vib}",
            "smoothing motor off"
            if r.motor_pwm <= 0
            else f"vibration below {self.limits.vibration_min_g:.2f} g",
        )
        if r.tec_output_on is None or r.tec_temperature_c is None or r.tec_setpoint_c is None:
            put(Term.TEC, False, "unknown", "no TEC reading")
        else:
            off_by = abs(r.tec_temperature_c - r.tec_setpoint_c)
            value = f"{r.tec_temperature_c:.2f} degC (set {r.tec_setpoint_c:.2f})"
            if not r.tec_output_on:
                put(Term.TEC, False, value + ", output off", "TEC output off")
            else:
                put(
                    Term.TEC,
                    off_by <= self.limits.tec_window_c,
                    value,
                    f"TEC {off_by:.2f} degC from its setpoint (window {self.limits.tec_window_c:.2f})",
                )
        measured = self.measured_power_w()
        if self.photodiode_to_watts is None:
            put(Term.PHOTODIODE, False, "no calibration", "no active photodiode calibration")
        elif measured is None:
            put(Term.PHOTODIODE, False, "unknown", "no photodiode reading")
        else:
            deviating = self._fault_deviation_since is not None and (
                now - self._fault_deviation_since >= PHOTODIODE_PERSISTENCE_S
            )
            stray = self._stray_since is not None and now - self._stray_since >= STRAY_LIGHT_PERSISTENCE_S
            detail = (
                f"light measured ({measured:.2f} W) while the output is off"
                if stray
                else f"measured {measured:.2f} W against {self.commanded_w:.2f} W commanded "
                f"for over {PHOTODIODE_PERSISTENCE_S * 1000:.0f} ms"
            )
            put(Term.PHOTODIODE, not (deviating or stray), f"{measured:.2f} W", detail)
        stale = []
        judge_ages = ages
        times = {
            "safety": r.board_at,
            "tec": r.tec_at,
            "laser": r.laser_at,
            "actuator": r.actuator_at,
        }
        for name in self.devices:
            link = r.links.get(name, "closed")
            if link != "open":
                stale.append(f"{name} link {link}")
            elif judge_ages and not self._age_ok(times.get(name), now):
                at = times.get(name)
                stale.append(
                    f"{name} reading " + ("missing" if at is None else f"{(now - at) * 1000:.0f} ms old")
                )
        if r.actuator_fault:
            stale.append(f"actuator stopped: {r.actuator_fault}")
        put(Term.DEVICES, not stale, "all fresh" if not stale else "; ".join(stale), "; ".join(stale))
        put(Term.CALIBRATIONS, r.calibrations_ok, r.calibrations_detail, r.calibrations_detail)
        put(
            Term.STEP,
            r.step_active and self.state in SESSION_STATES,
            "active" if r.step_active else "none",
            "no protocol step active",
        )
        put(
            Term.STORAGE,
            r.storage_ok,
            "writing" if r.storage_ok else "FAILED",
            f"storage cannot record: {r.storage_problem or 'unknown'}",
        )
        return out

    def _smoothing_ok(self) -> bool | None:
        """The smoothing device works: motor on and vibration at or above the limit (``None``: no vibration
        reading yet)."""
        r = self.readings
        if r.vibration_g is None:
            return None
        return r.motor_pwm > 0 and r.vibration_g >= self.limits.vibration_min_g

    def failing(self, now: float | None = None) -> list[TermStatus]:
        """The terms that are false now."""
        return [t for t in self.terms(now).values() if not t.ok]

    def may_emit(self, now: float | None = None, *, terms: Mapping[Term, TermStatus] | None = None) -> bool:
        """The permission to emit, decided here and nowhere else: the state is ARMED or TREATING and every
        term holds (``terms``: as already evaluated for ``now``)."""
        if self.state not in ARMED_STATES:
            return False
        judged = self.terms(now) if terms is None else terms
        return all(t.ok for t in judged.values())

    def permitted_actions(self) -> list[OperatorAction]:
        """The operator actions the present state permits (see :data:`ACTION_STATES`)."""
        return permitted_actions(self.state)

    def session_power_ceiling(self, protocol_max_w: float, calibration_max_w: float) -> float:
        """The highest power a session may command, W, overrides included: the protocol's own limit, the
        system's and the laser calibration's, whichever is lowest."""
        return min(protocol_max_w, self.limits.max_power_w, calibration_max_w)

    def photodiode_deviation_percent(self, measured: float | None = None) -> float | None:
        """How far the measured power is from the commanded one, in percent of the commanded power but of
        never less than :data:`PHOTODIODE_FLOOR_W` (signed: negative when less light is measured). The
        warning and the fault judge its size. ``None`` while the output is commanded off or nothing is
        measured."""
        if measured is None:
            measured = self.measured_power_w()
        if measured is None or not self.output_commanded_on:
            return None
        return deviation_percent(measured, self.commanded_w)

    def measured_power_w(self) -> float | None:
        """Measured optical power from the photodiode through the calibration, W (None if unknown)."""
        volts = self.readings.photodiode_v
        if volts is None or self.photodiode_to_watts is None:
            return None
        return max(0.0, self.photodiode_to_watts(volts))

    # --------------------------------------------------------------------------------- treating clock
    def treating_seconds(self, now: float | None = None) -> float:
        """Total time (s) spent emitting in TREATING: the step clock of the engine."""
        now = self.clock() if now is None else now
        running = 0.0 if self._treating_since is None else now - self._treating_since
        return self._treating_total_s + running

    # ------------------------------------------------------------------------------------- transitions
    def _transition(self, new: SystemState, reason: str, *, event_type: str = "state_change") -> None:
        old = self.state
        if new == old:
            return
        if new not in TRANSITIONS[old]:
            raise TransitionRefused(f"cannot go from {old.value} to {new.value}")
        now = self.clock()
        if old is S.TREATING and self._treating_since is not None:
            self._treating_total_s += now - self._treating_since
            self._treating_since = None
        self.state = new
        if new is not S.TREATING:
            self.output_off_now()
        for listener in list(self._listeners):
            try:
                listener(old, new, reason)
            except Exception:
                _LOG.exception("state listener failed")
        self.log(
            event_type,
            Severity.INFO,
            f"{old.value} -> {new.value}: {reason}",
            action="laser off" if old is S.TREATING else None,
            details={"from": old.value, "to": new.value},
        )

    def output_off_now(self) -> None:
        """Put "output off" on the wire at once and mark the output commanded off (no await)."""
        if self.output_commanded_on:
            self.output_changed_at = self.clock()
        self.output_commanded_on = False
        try:
            self.laser.off_now()
        except Exception as exc:
            _LOG.error("laser output off could not be sent: %s", exc)

    # ------------------------------------------------------------------------------------------ faults
    def trip(
        self,
        event_type: str,
        what: str,
        *,
        term: Term | None = None,
        severity: Severity = Severity.CRITICAL,
        how_to_reset: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Latch a fault now: laser off first (synchronously), FAULT, then verify, disarm and log.

        A second fault while latched is logged but keeps the first one's description.
        """
        self.output_off_now()
        if self.state is S.FAULT:
            self.log(event_type, severity, what, action="already in fault: laser off", details=details)
            return
        self.fault = FaultInfo(
            term=term,
            event_type=event_type,
            what=what,
            action="laser output switched off and verified; safety board disarmed",
            how_to_reset=how_to_reset or self._how_to_reset(term),
            at=self.clock(),
        )
        self._transition(S.FAULT, what)
        _LOG.error("fault latched (%s): %s", event_type, what)
        self._spawn(self._secure(event_type, severity, what, details))

    @staticmethod
    def _how_to_reset(term: Term | None) -> str:
        advice = {
            Term.ESTOP: "release the E-stop",
            Term.WATCHDOG: "check the safety board link; the reset clears its watchdog",
            Term.SMOOTHING: "check the smoothing device until its vibration is back above threshold",
            Term.TEC: "wait until the TEC is on and within its window",
            Term.PHOTODIODE: "check the fibre, the photodiode and the laser calibration",
            Term.DEVICES: "reconnect the device and wait until its readings are fresh",
            Term.CALIBRATIONS: "activate the missing calibrations",
            Term.STORAGE: "free disk space or release the database (storage is retried every second)",
        }
        first = advice.get(term, "remove the cause") if term is not None else "remove the cause"
        return f"{first}, then acknowledge the fault with your password to reset"

    async def _secure(
        self, event_type: str, severity: Severity, what: str, details: Mapping[str, Any] | None
    ) -> None:
        """After a trip: verify output off, disarm, then log (in that order)."""
        actions = []
        try:
            await self.laser.off_verified()
            actions.append("laser output off (verified)")
        except Exception as exc:
            actions.append(f"laser output off NOT verified: {exc}")
            _LOG.critical("laser output off not verified after a fault: %s", exc)
        try:
            await self._disarm_board()
            actions.append("safety board disarmed")
        except Exception as exc:
            actions.append(f"disarm failed: {exc}")
            _LOG.error("disarm after a fault failed: %s", exc)
        self.log(event_type, severity, what, action="; ".join(actions), details=details)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _check(self, now: float, *, ages: bool = False) -> None:
        """Evaluate the terms after a change and act: fault, back to ARMED, or start emission."""
        state = self.state
        if state is S.FAULT:
            return
        terms = self.terms(now, ages=ages)
        photodiode = terms[Term.PHOTODIODE]
        if (
            not photodiode.ok
            and self.photodiode_to_watts is not None
            and self.readings.photodiode_v is not None
        ):
            stray = self._stray_since is not None
            self.trip(
                "photodiode_fault" if not stray else "photodiode_out_of_range",
                photodiode.detail,
                term=Term.PHOTODIODE,
                severity=Severity.EMERGENCY if stray else Severity.CRITICAL,
                details={
                    "expected_power": self.commanded_w,
                    "measured_power": self.measured_power_w(),
                    "trigger_source": "photodiode_out_of_range",
                    "action_taken": "laser_shutdown",
                },
            )
            return
        if state in SESSION_STATES and not terms[Term.ESTOP].ok and self.readings.estop is True:
            self.trip("e_stop_pressed", "E-stop pressed", term=Term.ESTOP, severity=Severity.EMERGENCY)
            return
        if not terms[Term.WATCHDOG].ok and self.readings.watchdog_expired:
            # Also in IDLE: an expired board refuses ARM until the reset clears its watchdog.
            self.trip(
                "system_watchdog_timeout",
                "safety board watchdog expired",
                term=Term.WATCHDOG,
                severity=Severity.EMERGENCY if state is not S.IDLE else Severity.CRITICAL,
            )
            return
        if state not in ARMED_STATES:
            return
        blocking = [t for t in terms.values() if not t.ok and t.term not in WAITING_TERMS]
        if blocking:
            first = blocking[0]
            self.trip(
                _event_type_for(first.term),
                first.detail,
                term=first.term,
                details={"failing": {t.term.value: t.detail for t in blocking}},
            )
            return
        # Only the waiting terms (footpedal, step) can fail from here: they decide between emitting or not.
        permitted = self.may_emit(now, terms=terms)
        if state is S.TREATING and not permitted:
            released = not terms[Term.FOOTPEDAL].ok
            reason = "footpedal released" if released else "step ended"
            self._transition(S.ARMED, reason, event_type="footpedal_released" if released else "state_change")
            return
        if state is S.ARMED and permitted:
            self._begin_emission("footpedal pressed")

    def _begin_emission(self, reason: str) -> None:
        self._transition(S.TREATING, reason)
        self.output_commanded_on = True
        now = self.clock()
        self.output_changed_at = now
        self._treating_since = now
        self._deviation_since = self._fault_deviation_since = None
        self._warning_logged = False
        self._spawn(self._switch_on())

    def _wants_emission(self) -> bool:
        return self.state is S.TREATING and self.output_commanded_on

    async def _switch_on(self) -> None:
        try:
            await self.laser.on_verified(self._wants_emission)
        except Exception as exc:
            if self.state is S.TREATING and self.output_commanded_on:
                self.trip("interlock_failure", f"laser output did not switch on: {exc}", term=Term.DEVICES)
            return
        if self.state is not S.TREATING or not self.output_commanded_on:
            # The pedal was released (or a fault came) while the output was being switched on.
            self.output_off_now()
            try:
                await self.laser.off_verified()
            except Exception as exc:
                self.trip("interlock_failure", f"laser output off not verified: {exc}", term=Term.DEVICES)

    # ---------------------------------------------------------------------------------------- inputs
    def on_board(self, item: SafetyEvent | SafetySample) -> None:
        """A push event or a stream sample from the safety board (called synchronously on arrival)."""
        r = self.readings
        if isinstance(item, SafetySample):
            r.pedal, r.estop, r.laser_enable = item.pedal, item.estop, item.laser_enable
            r.vibration_g, r.photodiode_v = item.vibration_g, item.photodiode_v
            r.board_at = item.received
            self._judge_photodiode(item.received)
            self._check(item.received)
            return
        if item.kind is EventKind.FOOTPEDAL:
            r.pedal = item.value
            if not item.value and self.state is S.TREATING:
                # The fast path: off before anything else is evaluated.
                self.output_off_now()
        elif item.kind is EventKind.ESTOP:
            r.estop = item.value
            if item.value:
                self.output_off_now()
                if self.state is S.IDLE:
                    self.log("e_stop_pressed", Severity.WARNING, "E-stop pressed", action="none (idle)")
            else:
                self.log("e_stop_released", Severity.INFO, "E-stop released", action="none")
        elif item.kind is EventKind.ENABLE:
            r.laser_enable = item.value
            if not item.value and self.state is S.TREATING:
                self.output_off_now()
                if r.pedal and not r.estop:
                    self.trip(
                        "interlock_failure",
                        "LASER_ENABLE dropped by the safety board while treating",
                        term=Term.WATCHDOG,
                    )
                    return
        elif item.kind is EventKind.WDT:
            # In every state: the board stays disarmed until its watchdog is cleared, which the reset does.
            r.watchdog_expired = True
            self.output_off_now()
            self.trip(
                "system_watchdog_timeout",
                "safety board watchdog expired",
                term=Term.WATCHDOG,
                severity=Severity.EMERGENCY if self.state is not S.IDLE else Severity.CRITICAL,
            )
            return
        self._check(item.received)

    @staticmethod
    def _window_opens(clear_at: float | None, judged_from: float) -> float:
        """Where a persistence window opens when a sample first shows its condition: at the last sample
        judged without it, or when judging began (``judged_from``) if that is later or there was none."""
        return judged_from if clear_at is None else max(clear_at, judged_from)

    def _judge_photodiode(self, now: float) -> None:
        measured = self.measured_power_w()
        if measured is None:
            return
        if not self.output_commanded_on:
            self._deviation_since = self._fault_deviation_since = None
            judged_from = self.output_changed_at + STRAY_LIGHT_GRACE_S
            if now < judged_from:
                self._stray_since = None
            elif measured > STRAY_LIGHT_W:
                if self._stray_since is None:
                    self._stray_since = self._window_opens(self._stray_clear_at, judged_from)
                    self._judge_again_at(self._stray_since + STRAY_LIGHT_PERSISTENCE_S)
            else:
                self._stray_since = None
                self._stray_clear_at = now
            return
        self._stray_since = None
        judged_from = max(self.output_changed_at, self._setpoint_changed_at) + PHOTODIODE_SETTLE_S
        if now < judged_from:
            return
        percent = abs(deviation_percent(measured, self.commanded_w))
        if percent > self.limits.photodiode_warning_percent:
            if self._deviation_since is None:
                self._deviation_since = self._window_opens(self._warning_clear_at, judged_from)
            if not self._warning_logged and now - self._deviation_since >= PHOTODIODE_PERSISTENCE_S:
                self._warning_logged = True
                text = (
                    f"photodiode: measured {measured:.2f} W against {self.commanded_w:.2f} W commanded "
                    f"({percent:.0f} % off) for {PHOTODIODE_PERSISTENCE_S * 1000:.0f} ms"
                )
                self.warnings.append(text)
                self.log(
                    "photodiode_out_of_range",
                    Severity.WARNING,
                    text,
                    action="warning shown",
                    details={"expected_power": self.commanded_w, "measured_power": measured},
                )
        else:
            self._deviation_since = None
            self._warning_logged = False
            self._warning_clear_at = now
        if percent > self.limits.photodiode_fault_percent:
            if self._fault_deviation_since is None:
                self._fault_deviation_since = self._window_opens(self._fault_clear_at, judged_from)
                self._judge_again_at(self._fault_deviation_since + PHOTODIODE_PERSISTENCE_S)
        else:
            self._fault_deviation_since = None
            self._fault_clear_at = now

    def _judge_again_at(self, when: float) -> None:
        """Evaluate the terms again at ``when`` (the supervisor's clock, s): the moment a persistence window
        that just opened closes, so a deviation that lasts is judged then, not at the next sample or tick
        after it (up to 10 ms later). Without a running loop (a caller outside one) the tick does it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._judge_timer is not None:
            self._judge_timer.cancel()
        delay = max(0.0, when - self.clock()) + JUDGE_AGAIN_MARGIN_S
        self._judge_timer = loop.call_later(delay, self._judge_now)

    def _judge_now(self) -> None:
        self._judge_timer = None
        self._check(self.clock())

    def tick(self) -> None:
        """Periodic evaluation (every 10-20 ms): reading ages and persistence windows.

        A tick later than its period by more than :data:`LOOP_LATE_S` means the controller's own loop was held
        up; the lateness added up over the last :data:`LOOP_LATENESS_WINDOW_S` is allowed on top of the 100 ms
        age limit, since no reply could be read meanwhile. The hardware watchdog still drops LASER_ENABLE if
        the loop stops for good.
        """
        now = self.clock()
        if self._last_tick is not None:
            late = now - self._last_tick - self.tick_period_s
            if late > LOOP_LATE_S:
                self._lateness.append((now, late))
                self.late_ticks += 1
                self.longest_lateness_s = max(self.longest_lateness_s, late)
        while self._lateness and now - self._lateness[0][0] > LOOP_LATENESS_WINDOW_S:
            self._lateness.popleft()
        self._last_tick = now
        self._check(now, ages=True)
        if (
            self.disarm_pending
            and self.state is S.FAULT
            and not self._disarm_retrying
            and now - self._disarm_tried_at >= DISARM_RETRY_S
        ):
            self._disarm_retrying = True
            self._spawn(self._retry_disarm())

    async def _retry_disarm(self) -> None:
        try:
            await self._disarm_board()
        except Exception as exc:
            _LOG.error("safety board DISARM retry failed: %s", exc)
        else:
            self.log(
                "board_disarmed", Severity.INFO, "safety board disarmed on retry", action="DISARM confirmed"
            )
        finally:
            self._disarm_retrying = False

    async def _disarm_board(self) -> None:
        """DISARM, remembering whether it was confirmed (an unconfirmed one is retried while FAULT)."""
        self._disarm_tried_at = self.clock()
        self.disarm_pending = True
        await self.board.disarm()
        self.disarm_pending = False

    def update_laser(self, reading: LaserReading) -> None:
        """A laser poll: its output read back, judged against the commanded output. A read-back asked at
        least :data:`OUTPUT_READBACK_SETTLE_S` after the output was last switched must agree with it: light
        commanded off but reading ON is an emergency, and an output that dropped while TREATING is an
        interlock failure."""
        r = self.readings
        r.laser_output_on, r.laser_current_ma, r.laser_at = reading.output_on, reading.current_ma, reading.at
        self._check(self.clock())
        if reading.asked_at - self.output_changed_at <= OUTPUT_READBACK_SETTLE_S:
            return
        if reading.output_on and not self.output_commanded_on:
            self.trip(
                "interlock_failure",
                "laser output reads ON while commanded off",
                term=Term.DEVICES,
                severity=Severity.EMERGENCY,
            )
        elif not reading.output_on and self.output_commanded_on and self.state is S.TREATING:
            self.trip(
                "interlock_failure", "laser output dropped while treating (interlock?)", term=Term.DEVICES
            )

    def update_tec(self, reading: TecReading) -> None:
        """A TEC poll."""
        r = self.readings
        r.tec_output_on, r.tec_temperature_c = reading.output_on, reading.temperature_c
        r.tec_setpoint_c, r.tec_at = reading.setpoint_c, reading.at
        self._check(self.clock())

    def update_actuator(self, reading: ActuatorReading) -> None:
        """An actuator poll."""
        r = self.readings
        r.actuator_position_um, r.actuator_fault, r.actuator_at = (
            reading.position_um,
            reading.fault,
            reading.at,
        )
        self._check(self.clock())

    def update_board_link(self, link: BoardLink) -> None:
        """The safety board driver's heartbeat record (an expired watchdog stays expired until the reset)."""
        r = self.readings
        expired = r.watchdog_expired or link.watchdog_expired
        if link.heartbeat_ok_at == r.heartbeat_ok_at and expired == r.watchdog_expired:
            return
        r.heartbeat_ok_at, r.watchdog_expired = link.heartbeat_ok_at, expired
        self._check(self.clock())

    def update_switches(self, *, pedal: bool, estop: bool) -> None:
        """The footpedal and E-stop as read by asking the board (before its stream runs)."""
        self.readings.pedal, self.readings.estop = pedal, estop
        self._check(self.clock())

    def set_motor_pwm(self, pwm: int) -> None:
        """The smoothing motor's PWM as last commanded (0: off)."""
        self.readings.motor_pwm = pwm
        self._check(self.clock())

    def set_calibrations(self, ok: bool, detail: str) -> None:
        """The active calibrations are usable (``ok``) or not, with ``detail`` as the term's value (the
        photodiode conversion is :attr:`photodiode_to_watts`)."""
        self.readings.calibrations_ok, self.readings.calibrations_detail = ok, detail
        self._check(self.clock())

    def set_storage(self, ok: bool, problem: str | None) -> None:
        """Storage records (``ok``) or not, and why not."""
        self.readings.storage_ok, self.readings.storage_problem = ok, problem
        self._check(self.clock())

    async def verify_output_off(self) -> None:
        """Output off and read back (the engine's last word on a run); raises when the off state cannot be
        confirmed."""
        await self.laser.off_verified()

    def set_link(self, device: str, state: str) -> None:
        """A device link changed state (``open``, ``faulty``, ``reconnecting``, ``closed``)."""
        self.readings.links[device] = state
        if state != "open" and device == "laser" and self.state is S.TREATING:
            self.output_off_now()
        self._check(self.clock())

    # ---------------------------------------------------------------------------------------- engine
    async def set_power(self, watts: float) -> None:
        """The engine's setpoint, W: refused above the system limit; written to the laser driver."""
        if not math.isfinite(watts) or watts < 0 or watts > self.limits.max_power_w + 1e-9:
            raise Refused(f"power {watts} W is outside 0..{self.limits.max_power_w} W")
        if watts != self.commanded_w:
            self._setpoint_changed_at = self.clock()
        await self.laser.set_power(watts)
        self.commanded_w = watts

    async def set_drive(self, expected_w: float, write: Callable[[], Awaitable[None]]) -> None:
        """A calibration run's drive current, written by ``write`` as it is (the laser calibration under
        measurement converts nothing), with ``expected_w``, the power the active calibration gives at that
        current: refused above the system limit, and the photodiode judges the light against it exactly
        as against a treatment's setpoint. The permission to emit is unchanged."""
        if not math.isfinite(expected_w) or expected_w < 0 or expected_w > self.limits.max_power_w + 1e-9:
            raise Refused(f"expected power {expected_w:g} W is outside 0..{self.limits.max_power_w:g} W")
        if expected_w != self.commanded_w:
            self._setpoint_changed_at = self.clock()
        await write()
        self.commanded_w = expected_w

    def set_step_active(self, active: bool) -> None:
        """A protocol step is active (True) or not (between steps, while the actuator moves)."""
        self.readings.step_active = active
        if not active and self.state is S.TREATING:
            self._transition(S.ARMED, "step ended")
        self._check(self.clock())

    # --------------------------------------------------------------------------------- operator commands
    async def open_session(self, reason: str = "session opened, pre-checks passed") -> None:
        """IDLE -> READY; refused in any other state (a fault leaves only by an acknowledged reset)."""
        async with self._lock:
            if self.state is not S.IDLE:
                raise Refused(f"cannot open a session in {self.state.value}")
            self._transition(S.READY, reason)
            self.session_open = True

    async def arm(self) -> None:
        """READY -> ARMED after key control: refused unless every term but the footpedal and step holds,
        and while the footpedal is pressed (release it first)."""
        async with self._lock:
            await self._arm_from(S.READY, "armed (key control)")

    def arm_blockers(self, expected: SystemState = S.READY, now: float | None = None) -> list[str]:
        """Every reason :meth:`arm` (or :meth:`resume` with ``expected`` PAUSED) would be refused now, in the
        order it checks them; empty when arming would go ahead (the safety board may still refuse it)."""
        reasons = []
        if self.state is not expected:
            reasons.append(f"cannot arm in {self.state.value}")
        if self.readings.pedal:
            reasons.append("release the footpedal before arming")
        blocking = [t for t in self.failing(now) if t.term not in WAITING_TERMS]
        if blocking:
            reasons.append("cannot arm: " + "; ".join(t.detail for t in blocking))
        return reasons

    async def _arm_from(self, expected: SystemState, reason: str) -> None:
        blockers = self.arm_blockers(expected)
        if blockers:
            raise Refused(blockers[0])
        await self.board.arm()
        if self.state is not expected:
            await self.board.disarm()
            raise Refused(f"state changed to {self.state.value} while arming")
        self._transition(S.ARMED, reason)
        self._check(self.clock())

    async def disarm(self, reason: str = "disarmed by the operator") -> None:
        """ARMED or TREATING -> READY (laser off first, then the board disarmed)."""
        async with self._lock:
            if self.state not in ARMED_STATES:
                raise Refused(f"not armed ({self.state.value})")
            self._transition(S.READY, reason)
            await self._off_and_disarm()

    async def pause(self, reason: str = "paused by the operator") -> None:
        """ARMED or TREATING -> PAUSED."""
        async with self._lock:
            if self.state not in ARMED_STATES:
                raise Refused(f"nothing to pause in {self.state.value}")
            self._transition(S.PAUSED, reason)
            await self._off_and_disarm()

    async def resume(self) -> None:
        """PAUSED -> ARMED (the board armed again; the footpedal must be released first)."""
        async with self._lock:
            await self._arm_from(S.PAUSED, "resumed by the operator")

    async def stop(self) -> None:
        """Stop emission at once from any state: laser off now; ARMED/TREATING become PAUSED."""
        self.output_off_now()
        async with self._lock:
            if self.state in ARMED_STATES:
                self._transition(S.PAUSED, "stop key")
            await self._off_and_disarm()

    async def end_session(self, reason: str) -> None:
        """The session closes: any session state -> IDLE, laser off, disarmed. In FAULT the fault stays
        latched (its reset then leads to IDLE); with no session open it is refused."""
        async with self._lock:
            if self.state is S.FAULT:
                if not self.session_open:
                    raise Refused("no session is open")
                self.session_open = False
                self.readings.step_active = False
                self.log(
                    "session_closed_in_fault",
                    Severity.WARNING,
                    f"session closed while the fault stays latched: {reason}",
                    action="laser off; the fault must still be reset",
                )
                await self._off_and_disarm()
                return
            self._transition(S.IDLE, reason)
            self.session_open = False
            self.readings.step_active = False
            await self._off_and_disarm()

    async def protocol_complete(self) -> None:
        """The last step ended: -> READY, laser off, disarmed."""
        async with self._lock:
            if self.state in ARMED_STATES or self.state is S.PAUSED:
                self._transition(S.READY, "protocol complete")
            self.readings.step_active = False
            await self._off_and_disarm()

    async def reset(self, tech_id: int | None, username: str, *, session_open: bool | None = None) -> None:
        """Acknowledge a latched fault: refused while its cause (or any safety input) is still there.

        Leads to READY when a session is open (``session_open``, default: whether :meth:`open_session` was
        not followed by :meth:`end_session`), from where the operator arms again; to IDLE otherwise.
        """
        if session_open is None:
            session_open = self.session_open
        async with self._lock:
            if self.state is not S.FAULT or self.fault is None:
                raise Refused("no fault to reset")
            fault = self.fault
            if self.readings.watchdog_expired:
                await self.board.clear_watchdog()
                self.readings.watchdog_expired = False
            still = [
                t
                for t in self.failing()
                if t.term not in WAITING_TERMS
                and (t.term in (Term.ESTOP, Term.WATCHDOG) or t.term == fault.term)
            ]
            if still:
                raise Refused("the cause is still there: " + "; ".join(t.detail for t in still))
            if not await self._off_and_disarm():
                raise Refused("the laser output off or the disarm could not be confirmed; the fault stays")
            self.fault = None
            self.session_open = session_open
            self._transition(S.READY if session_open else S.IDLE, f"fault reset acknowledged by {username}")
            _LOG.info("fault reset by %s: %s (%s)", username, fault.what, fault.event_type)
            self.log(
                "fault_reset",
                Severity.INFO,
                f"fault '{fault.what}' acknowledged and reset by {username}",
                action="no emission until armed again",
                tech_id=tech_id,
                details={"fault": fault.event_type},
            )

    async def _off_and_disarm(self) -> bool:
        """Output off (verified), then the board disarmed; a failure of either latches a fault. Returns
        whether both were confirmed."""
        self.output_off_now()
        try:
            await self.laser.off_verified()
        except Exception as exc:
            self.trip("interlock_failure", f"laser output off not verified: {exc}", term=Term.DEVICES)
            return False
        try:
            await self._disarm_board()
        except Exception as exc:
            self.trip("interlock_failure", f"safety board did not disarm: {exc}", term=Term.DEVICES)
            return False
        return True

    # --------------------------------------------------------------------------------------- logging
    def log(
        self,
        event_type: str,
        severity: Severity,
        description: str,
        *,
        action: str | None,
        details: Mapping[str, Any] | None = None,
        tech_id: int | None = None,
    ) -> None:
        """Queue one safety_log row, with the state and readings of now and the time of now (not of when the
        row reaches the database), for the ordered log writer."""
        r = self.readings
        entry = SafetyEntry(
            timestamp=utc_now(),
            event_type=event_type,
            severity=severity,
            description=description,
            system_state=self.state.value,
            laser_state="on" if self.output_commanded_on else "off",
            footpedal_state=r.pedal,
            smoothing_device_state=self._smoothing_ok(),
            photodiode_voltage_v=r.photodiode_v,
            action_taken=action,
            details=details,
            tech_id=tech_id if tech_id is not None else self.tech_id,
        )
        self._log_queue.put_nowait(entry)

    async def _write_log(self) -> None:
        """Hand the queued entries to the sink in order. Every entry queued meanwhile goes in the same turn:
        the sink returns once an entry is durable (one database write, some tens of ms), so waiting for
        each in turn would let a burst of events (a fault storm) queue up behind one another for seconds,
        and the end of a session waits for the queue."""
        while True:
            batch = [await self._log_queue.get()]
            while not self._log_queue.empty():
                batch.append(self._log_queue.get_nowait())
            try:
                # The sink takes each entry in the order its call starts (before its first wait).
                results = await asyncio.gather(
                    *(self._log_sink(entry) for entry in batch), return_exceptions=True
                )
                for entry, result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        self._log_not_written(entry, result)
                    elif isinstance(result, BaseException):
                        raise result
            finally:
                for _ in batch:
                    self._log_queue.task_done()

    def _log_not_written(self, entry: SafetyEntry, exc: Exception) -> None:
        _LOG.error("safety log entry not written (%s): %s", exc, entry)
        if self.readings.storage_ok:
            self.readings.storage_ok = False
            self.readings.storage_problem = f"safety log write failed: {exc}"
            self._check(self.clock())


def _event_type_for(term: Term) -> str:
    return {
        Term.ESTOP: "e_stop_pressed",
        Term.WATCHDOG: "system_watchdog_timeout",
        Term.SMOOTHING: "smoothing_device_fault",
        Term.TEC: "interlock_failure",
        Term.PHOTODIODE: "photodiode_fault",
        Term.DEVICES: "interlock_failure",
        Term.CALIBRATIONS: "interlock_failure",
        Term.STORAGE: "interlock_failure",
    }.get(term, "interlock_failure")
