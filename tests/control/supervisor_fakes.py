"""A fake rig for the safety supervisor's tests: a laser that models its interlock input, a safety board that
models LASER_ENABLE like the firmware, a hand-driven monotonic clock, and a world that feeds the supervisor.

The fakes model the hardware layer of docs/safety.md so the tests can check the software layer against
ground truth: :class:`FakeBoard` drives LASER_ENABLE (armed AND footpedal AND E-stop released AND watchdog
fed), and :class:`FakeLaser` emits only while that line is high, dropping its output by itself when it falls
(as the Arroyo driver does, error E-501). Every port call is written, with the clock time, to one shared
:class:`Journal`, so a test can assert the order of "output off", "disarm" and the safety-log entry.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control.supervisor import SafetyEntry, SafetySupervisor, SystemState, TecReading
from devices.safety import EventKind, NotReady, SafetyEvent, SafetySample

#: Calibration of the fake photodiode: watts = volts * this.
PHOTODIODE_W_PER_V = 2.0
#: Healthy world values.
HEALTHY_VIBRATION_G = 1.2
HEALTHY_MOTOR_PWM = 180
TEC_SETPOINT_C = 25.0
DEVICES = ("laser", "tec", "actuator", "safety")


class ManualClock:
    """A monotonic clock (s) the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (s, >= 0, finite); returns the new time."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a monotonic clock cannot move by {seconds} s")
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class Call:
    """One recorded call: ``at`` clock time (s), ``device`` (laser, board, log), ``name``, optional detail."""

    at: float
    device: str
    name: str
    detail: Any = None


@dataclass
class Journal:
    """Every port call of the fake rig, in the order they happened."""

    calls: list[Call] = field(default_factory=list)

    def add(self, at: float, device: str, name: str, detail: Any = None) -> None:
        """Append one call."""
        self.calls.append(Call(at, device, name, detail))

    def names(self, device: str | None = None) -> list[str]:
        """``device.name`` of every call (only ``device``'s if given), in order."""
        return [f"{c.device}.{c.name}" for c in self.calls if device is None or c.device == device]

    def index(self, qualified: str, start: int = 0) -> int:
        """Position of the first ``device.name`` call at or after ``start``; ValueError if absent."""
        for i, c in enumerate(self.calls[start:], start):
            if f"{c.device}.{c.name}" == qualified:
                return i
        raise ValueError(f"{qualified} not called (calls: {self.names()})")

    def log_index(self, event_type: str, start: int = 0) -> int:
        """Position of the first safety-log entry of ``event_type`` at or after ``start``."""
        for i, c in enumerate(self.calls[start:], start):
            if c.device == "log" and c.detail.event_type == event_type:
                return i
        raise ValueError(f"no {event_type} log entry (calls: {self.names()})")


class LaserOutputError(Exception):
    """The fake laser's output did not switch on (interlock input low: the Arroyo's E-501)."""


class FakeLaser:
    """A laser driver port whose output follows its interlock input.

    ``interlock`` reads the level of the board's LASER_ENABLE line. ``output_on`` becomes True only when
    :meth:`on_verified` writes "output on" while that line is high; it becomes False on :meth:`off_now`,
    :meth:`off_verified`, or when the line drops (:meth:`interlock_changed`). ``power_w`` is the setpoint, W.
    ``observe``, when set, is called each time the output actually switches on and its result is kept in
    ``switch_ons`` (the tests record the supervisor's state at that moment). With ``off_unconfirmed`` set,
    "output off" still reaches the driver but its read-back fails (a reply lost on the link); each such
    failure is counted in ``off_failures``.
    """

    def __init__(self, clock: Callable[[], float], journal: Journal, interlock: Callable[[], bool]) -> None:
        self.clock = clock
        self.journal = journal
        self.interlock = interlock
        self.output_on = False
        self.on_since: float | None = None
        self.power_w = 0.0
        self.power_changed_at: float | None = None
        self.observe: Callable[[], Any] | None = None
        self.switch_ons: list[Any] = []
        self.off_unconfirmed = False
        self.off_failures = 0

    def _off(self) -> None:
        self.output_on = False
        self.on_since = None

    def off_now(self) -> None:
        """Write "output off" at once."""
        self.journal.add(self.clock(), "laser", "off_now")
        self._off()

    async def off_verified(self) -> None:
        """Write "output off", then read it back (one round trip)."""
        self.journal.add(self.clock(), "laser", "off_verified")
        self._off()
        await asyncio.sleep(0)
        if self.off_unconfirmed:
            self.off_failures += 1
            raise LaserOutputError("no reply to the output query")
        if self.output_on:
            self.off_failures += 1
            raise LaserOutputError("output still on after output off")

    async def on_verified(self, still_wanted: Callable[[], bool] | None = None) -> None:
        """Query pending errors, then (if ``still_wanted`` says yes) write "output on" and read it back;
        raise after switching off if it is not on, or without writing anything if no longer wanted."""
        self.journal.add(self.clock(), "laser", "on_verified")
        await asyncio.sleep(0)
        if still_wanted is not None and not still_wanted():
            self.journal.add(self.clock(), "laser", "on_not_sent")
            raise LaserOutputError("emission no longer wanted: output on not sent")
        if self.interlock():
            self.output_on = True
            self.on_since = self.clock()
            self.journal.add(self.clock(), "laser", "output_switched_on")
            self.switch_ons.append(None if self.observe is None else self.observe())
        await asyncio.sleep(0)
        if not self.output_on:
            self._off()
            raise LaserOutputError("output did not switch on: interlock input open (E-501)")

    async def set_power(self, watts: float) -> None:
        """Set the optical power setpoint, W."""
        self.journal.add(self.clock(), "laser", "set_power", watts)
        if watts != self.power_w:
            self.power_changed_at = self.clock()
        self.power_w = watts

    def interlock_changed(self, high: bool) -> None:
        """The interlock input changed level; the driver drops its output by itself when it falls."""
        if not high and self.output_on:
            self.journal.add(self.clock(), "laser", "interlock_off")
            self._off()


class FakeBoard:
    """A safety board port modelled on the firmware.

    LASER_ENABLE is high while armed AND pedal pressed AND E-stop released AND watchdog not expired. ``ARM``
    is refused (:class:`devices.safety.NotReady`) while the E-stop is pressed or the watchdog has expired; a
    watchdog expiry disarms the board until ``WDT_CLEAR`` and ``ARM``. Events the firmware would push
    because of a port call (LASER_ENABLE changing on ARM/DISARM) go to ``deliver`` on the next loop turn,
    as the driver's dispatch would hand them over; the physical inputs return their events to the caller.
    With ``disarm_unanswered`` set, ``DISARM`` times out and the board stays as it was.
    """

    def __init__(self, clock: Callable[[], float], journal: Journal) -> None:
        self.clock = clock
        self.journal = journal
        self.armed = False
        self.pedal = False
        self.estop = False
        self.watchdog_expired = False
        self.enable_listeners: list[Callable[[bool], None]] = []
        self.deliver: Callable[[SafetyEvent], None] | None = None
        #: When set, ``DISARM`` gets no reply (the board stays as it was); failures are counted.
        self.disarm_unanswered = False
        self.disarm_failures = 0

    @property
    def laser_enable(self) -> bool:
        """The LASER_ENABLE line."""
        return self.armed and self.pedal and not self.estop and not self.watchdog_expired

    def _change(self, apply: Callable[[], None]) -> list[SafetyEvent]:
        before = self.laser_enable
        apply()
        after = self.laser_enable
        if before == after:
            return []
        for listener in self.enable_listeners:
            listener(after)
        return [SafetyEvent(EventKind.ENABLE, after, self.clock())]

    def _push(self, events: list[SafetyEvent]) -> None:
        deliver = self.deliver
        if deliver is None:
            return
        loop = asyncio.get_running_loop()
        for event in events:
            loop.call_soon(deliver, event)

    async def arm(self) -> None:
        """``ARM``: refused while the E-stop is pressed or the watchdog has expired."""
        self.journal.add(self.clock(), "board", "arm")
        await asyncio.sleep(0)
        if self.estop:
            raise NotReady("ESTOP")
        if self.watchdog_expired:
            raise NotReady("WDT")
        self._push(self._change(lambda: setattr(self, "armed", True)))

    async def disarm(self) -> None:
        """``DISARM``."""
        self.journal.add(self.clock(), "board", "disarm")
        if self.disarm_unanswered:
            self.disarm_failures += 1
            await asyncio.sleep(0)
            raise TimeoutError("no reply to DISARM")
        self._push(self._change(lambda: setattr(self, "armed", False)))
        await asyncio.sleep(0)

    async def clear_watchdog(self) -> None:
        """``WDT_CLEAR``: the board stays disarmed."""
        self.journal.add(self.clock(), "board", "clear_watchdog")
        self.watchdog_expired = False
        await asyncio.sleep(0)

    # Physical inputs: each returns the push events the firmware sends, in its order.
    def set_pedal(self, pressed: bool) -> list[SafetyEvent]:
        """The footpedal moves."""
        if pressed == self.pedal:
            return []
        enable = self._change(lambda: setattr(self, "pedal", pressed))
        return [SafetyEvent(EventKind.FOOTPEDAL, pressed, self.clock()), *enable]

    def set_estop(self, pressed: bool) -> list[SafetyEvent]:
        """The E-stop is pressed or released."""
        if pressed == self.estop:
            return []
        enable = self._change(lambda: setattr(self, "estop", pressed))
        return [SafetyEvent(EventKind.ESTOP, pressed, self.clock()), *enable]

    def expire_watchdog(self) -> list[SafetyEvent]:
        """The heartbeat stopped arriving: LASER_ENABLE drops, the board disarms, ``EVT:WDT:1``."""

        def expire() -> None:
            self.watchdog_expired = True
            self.armed = False

        enable = self._change(expire)
        return [*enable, SafetyEvent(EventKind.WDT, True, self.clock())]

    def lose_arming(self) -> list[SafetyEvent]:
        """The board drops its arming by itself (a brown-out reset): only an ENABLE event shows it."""
        return self._change(lambda: setattr(self, "armed", False))


class SafetyLog:
    """The safety-log sink: keeps every entry and journals it with the clock time."""

    def __init__(self, clock: Callable[[], float], journal: Journal) -> None:
        self.clock = clock
        self.journal = journal
        self.entries: list[SafetyEntry] = []

    async def __call__(self, entry: SafetyEntry) -> None:
        self.journal.add(self.clock(), "log", entry.event_type, entry)
        self.entries.append(entry)

    def of_type(self, event_type: str) -> list[SafetyEntry]:
        """Entries of one event type, in order."""
        return [e for e in self.entries if e.event_type == event_type]


class World:
    """The fake rig around one supervisor, holding the ground truth of every input.

    Changing a world value tells the supervisor the way the controller would (``update``, ``set_link``,
    ``on_board``). :meth:`refresh` feeds fresh readings stamped with the clock's time: device readings and
    the heartbeat through ``update``, then one board sample whose photodiode voltage models the light: the
    laser's actual output (``power_w`` while ``output_on``) times ``photodiode_factor``, plus ``stray_w``.
    """

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.journal = Journal()
        self.board = FakeBoard(self.clock, self.journal)
        self.laser = FakeLaser(self.clock, self.journal, lambda: self.board.laser_enable)
        self.board.enable_listeners.append(self.laser.interlock_changed)
        self.log = SafetyLog(self.clock, self.journal)
        self.sup = SafetySupervisor(self.laser, self.board, self.log, clock=self.clock, devices=DEVICES)
        self.board.deliver = self.sup.on_board
        self.laser.observe = lambda: (self.sup.state, self.sup.output_commanded_on)
        self.tec_on = True
        self.tec_c = TEC_SETPOINT_C
        self.motor_pwm = HEALTHY_MOTOR_PWM
        self.vibration_g = HEALTHY_VIBRATION_G
        self.photodiode_factor = 1.0
        self.stray_w = 0.0
        self.links = dict.fromkeys(DEVICES, "closed")
        self.storage_ok = True
        self.calibrations_ok = False
        self.step_active = False
        self.last_refresh: float | None = None
        #: Called with every board sample before the supervisor gets it.
        self.sample_hooks: list[Callable[[SafetySample], None]] = []

    # ------------------------------------------------------------------------------ light and readings
    def light_w(self) -> float:
        """Optical power reaching the photodiode, W."""
        emitted = self.laser.power_w if self.laser.output_on else 0.0
        return emitted * self.photodiode_factor + self.stray_w

    def sample(self) -> SafetySample:
        """The board's stream sample now."""
        return SafetySample(
            board_ms=int(self.clock() * 1000),
            photodiode_v=self.light_w() / PHOTODIODE_W_PER_V,
            pedal=self.board.pedal,
            estop=self.board.estop,
            vibration_g=self.vibration_g,
            laser_enable=self.board.laser_enable,
            received=self.clock(),
        )

    def feed_sample(self) -> None:
        """One board stream sample, stamped now."""
        sample = self.sample()
        for hook in self.sample_hooks:
            hook(sample)
        self.sup.on_board(sample)

    def feed_tec(self) -> None:
        """One TEC reading, stamped now."""
        self.sup.update_tec(TecReading(self.tec_on, self.tec_c, TEC_SETPOINT_C, self.clock()))

    def refresh(self) -> None:
        """Fresh device readings, heartbeat and one board sample, all stamped now."""
        now = self.clock()
        self.last_refresh = now
        r = self.sup.readings
        r.tec_output_on, r.tec_temperature_c, r.tec_setpoint_c, r.tec_at = (
            self.tec_on,
            self.tec_c,
            TEC_SETPOINT_C,
            now,
        )
        r.laser_at, r.laser_output_on, r.actuator_at, r.heartbeat_ok_at = now, self.laser.output_on, now, now
        self.sup.set_motor_pwm(self.motor_pwm)
        self.feed_sample()

    def run_for(self, seconds: float, period: float = 0.010) -> None:
        """Advance the clock by ``seconds`` in steps of ``period`` (s), refreshing after each step."""
        steps = round(seconds / period)
        for _ in range(steps):
            self.clock.advance(period)
            self.refresh()

    # ---------------------------------------------------------------------------------- ground truth
    def feed_healthy(self) -> None:
        """Make every input healthy and tell the supervisor: links open, calibrations active (photodiode
        V * 2.0 W), storage ok, smoothing running at 1.2 g, TEC on at its setpoint, fresh readings."""
        self.tec_on, self.tec_c = True, TEC_SETPOINT_C
        self.motor_pwm, self.vibration_g = HEALTHY_MOTOR_PWM, HEALTHY_VIBRATION_G
        self.photodiode_factor, self.stray_w = 1.0, 0.0
        self.sup.photodiode_to_watts = lambda volts: volts * PHOTODIODE_W_PER_V
        self.calibrations_ok = True
        self.sup.set_calibrations(True, "active")
        self.storage_ok = True
        self.sup.set_storage(True, None)
        for name in DEVICES:
            self.links[name] = "open"
            self.sup.set_link(name, "open")
        self.deliver(self.board.set_estop(False))
        self.refresh()

    def deliver(self, events: list[SafetyEvent]) -> None:
        """Hand board events to the supervisor synchronously, as the driver's dispatch does."""
        for event in events:
            self.sup.on_board(event)

    def press_pedal(self) -> None:
        """Footpedal down."""
        self.deliver(self.board.set_pedal(True))

    def release_pedal(self) -> None:
        """Footpedal up."""
        self.deliver(self.board.set_pedal(False))

    def set_estop(self, pressed: bool) -> None:
        """E-stop pressed or released."""
        self.deliver(self.board.set_estop(pressed))

    def expire_watchdog(self) -> None:
        """The board's watchdog expires."""
        self.deliver(self.board.expire_watchdog())

    def lose_arming(self) -> None:
        """The board drops its arming by itself."""
        self.deliver(self.board.lose_arming())

    def set_link(self, device: str, state: str) -> None:
        """A device link changes state."""
        self.links[device] = state
        self.sup.set_link(device, state)

    def set_storage(self, ok: bool) -> None:
        """Storage able to record or not."""
        self.storage_ok = ok
        self.sup.set_storage(ok, None if ok else "disk full")

    def set_calibrations(self, ok: bool) -> None:
        """Active calibrations present or gone (the photodiode conversion goes with them)."""
        self.calibrations_ok = ok
        if ok:
            self.sup.photodiode_to_watts = lambda volts: volts * PHOTODIODE_W_PER_V
            self.sup.set_calibrations(True, "active")
        else:
            self.sup.photodiode_to_watts = None
            self.sup.set_calibrations(False, "laser calibration deactivated")

    def set_step(self, active: bool) -> None:
        """A protocol step starts or ends."""
        self.step_active = active
        self.sup.set_step_active(active)

    # ------------------------------------------------------------------------------------- asyncio
    async def settle(self, turns: int = 50) -> None:
        """Let every task the supervisor spawned run to completion (bounded), then drain the safety log."""
        current = asyncio.current_task()
        for _ in range(turns):
            await asyncio.sleep(0)
            pending = [
                t
                for t in asyncio.all_tasks()
                if t is not current and not t.done() and t.get_name() != "supervisor-log"
            ]
            if not pending:
                break
        else:
            raise AssertionError(f"supervisor tasks still running after {turns} loop turns: {pending}")
        await asyncio.wait_for(self.sup.drain_log(), timeout=5.0)

    async def to_ready(self) -> None:
        """Start the supervisor, feed a healthy world, open a session, set 2.0 W (READY)."""
        self.sup.start()
        self.feed_healthy()
        await self.sup.open_session()
        await self.sup.set_power(2.0)
        await self.settle()
        assert self.sup.state is SystemState.READY

    async def to_armed(self) -> None:
        """READY, a step active, armed (ARMED)."""
        await self.to_ready()
        self.set_step(True)
        await self.sup.arm()
        await self.settle()
        assert self.sup.state is SystemState.ARMED

    async def to_treating(self) -> None:
        """ARMED, then the footpedal down and the output verified on (TREATING)."""
        await self.to_armed()
        self.press_pedal()
        await self.settle()
        assert self.sup.state is SystemState.TREATING
        assert self.laser.output_on
        self.run_for(0.1)
        assert self.sup.state is SystemState.TREATING
