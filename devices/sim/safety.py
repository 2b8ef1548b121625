"""Simulated safety board: Arduino Uno, TOSCA safety firmware protocol 3 (docs/devices.md, "Safety board").

Construction and control, as the simulated rig uses it::

    sim = SafetyBoardSim(model, *, clock=time.monotonic)  # model: devices.sim.model.PhysicalModel
    device = PtyDevice("safety", sim, eol=b"\\n")          # sim is the LineHandler of the pty
    sim.attach(device)                                    # push (EVT:) and sample (S:) lines go out here
    await sim.start()                                     # background: watchdog timer and the S: stream
    ...
    await sim.stop()                                      # cancels and awaits both background tasks

Public methods for the rig (call them on the simulator's own event loop thread):

* ``set_pedal(pressed)``: the footpedal; sends ``EVT:FOOTPEDAL:<0|1>`` at once on a change.
* ``set_estop(pressed)``: the E-stop; sends ``EVT:ESTOP:<0|1>`` at once on a change. Pressing it also disarms
  the board, so releasing it never brings LASER_ENABLE back without a new ``ARM``.
* Smoothing failure and photodiode gain/offset are fields of the shared model, set there directly.

Behaviour in detail:

* Bytes outside printable ASCII are ignored (as the firmware does), then the line is stripped of surrounding
  white space and compared exactly. A line over :data:`LINE_MAX_BYTES` is discarded whole and answered
  ``ERROR:LINE_TOO_LONG`` (the pty counts the bytes and calls :meth:`SafetyBoardSim.handle_overlong`).
* A value outside its range (``WDT_TIMEOUT:50``, ``STREAM:5``) or not a whole number is not a command the
  firmware knows: ``ERROR:UNKNOWN_COMMAND:<line>``, and nothing changes.
* The watchdog starts with the first ``WDT_RESET`` after power-up (a board nobody has talked to yet has not
  expired). Once running, a gap longer than the timeout expires it: LASER_ENABLE drops (``EVT:ENABLE:0`` if
  it was high), the smoothing motor stops (``model.motor_pwm = 0``), the board disarms, ``EVT:WDT:1`` is sent,
  and it stays expired until ``WDT_CLEAR`` (which restarts the timer); ``ARM`` meanwhile answers
  ``ERROR:NOT_READY:WDT``.
* ``ARM`` checks the E-stop first (``ERROR:NOT_READY:ESTOP``), then the watchdog. It does not need the pedal.
* ``LASER_ENABLE`` (``model.laser_enable``) = armed and pedal pressed and E-stop released and watchdog fed
  (running, not expired, last ``WDT_RESET`` within the timeout). Every change sends ``EVT:ENABLE:<0|1>``.
* ``S:<ms>,<photodiode_v>,<pedal>,<estop>,<vibration_g>,<enable>``: ``<ms>`` is milliseconds since power-up
  (the Arduino ``millis()``), volts and g with three decimals.
* ``STATUS?`` (firmware 3.1) reads the arming and the watchdog without changing either:
  ``STATUS:ARMED=<0|1>,WDT=<IDLE|FED|EXPIRED>`` (IDLE: no ``WDT_RESET`` since power-up). A controller that
  starts after another one died finds the watchdog the dead one left expired, which nothing else reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

WDT_DEFAULT_MS = 1000
WDT_MIN_MS = 100
WDT_MAX_MS = 2000
PWM_MAX = 153
STREAM_MIN_HZ = 10
STREAM_MAX_HZ = 200
VERSION = "3.1"
#: Longest command line the firmware accepts; longer lines are answered ``ERROR:LINE_TOO_LONG``.
LINE_MAX_BYTES = 64


class _Emitter(Protocol):
    def emit(self, line: str) -> None: ...


class SafetyBoardSim:
    """The safety board's firmware as a line handler over the shared physical model."""

    def __init__(self, model: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self._clock = clock
        self._boot = clock()
        self._device: _Emitter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._stream_wake: asyncio.Event | None = None
        self.pedal = False
        self.estop = False
        self.armed = False
        self.aiming_beam = False
        self.wdt_timeout_ms = WDT_DEFAULT_MS
        self.wdt_expired = False
        self._wdt_fed_at: float | None = None
        self.stream_hz = 0
        self._enable = False
        #: The most recent push and sample lines, newest last (also when no pty is attached).
        self.sent: deque[str] = deque(maxlen=2000)
        self.model.laser_enable = False

    # ---------------------------------------------------------------- lifecycle
    def attach(self, device: _Emitter) -> None:
        """Send push (``EVT:``) and sample (``S:``) lines through ``device.emit`` (a PtyDevice)."""
        self._device = device

    async def start(self) -> None:
        """Start the watchdog timer and the sample stream tasks on the running loop."""
        if self._tasks:
            return
        self._wake = asyncio.Event()
        self._stream_wake = asyncio.Event()
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._watchdog_loop(), name="safety-sim-watchdog"),
            asyncio.create_task(self._stream_loop(), name="safety-sim-stream"),
        ]

    async def stop(self) -> None:
        """Cancel the background tasks and wait for them to end."""
        tasks, self._tasks = self._tasks, []
        # The flag ends the loops even if a cancellation is lost inside wait_for.
        self._stopping = True
        for event in (self._wake, self._stream_wake):
            if event is not None:
                event.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _watchdog_loop(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._check_watchdog(self._clock())
            deadline = self._wdt_deadline()
            if self._stopping:
                return
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
                continue
            remaining = deadline - self._clock()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)

    async def _stream_loop(self) -> None:
        assert self._stream_wake is not None
        next_at = self._clock()
        while not self._stopping:
            hz = self.stream_hz
            if hz == 0:
                self._stream_wake.clear()
                await self._stream_wake.wait()
                next_at = self._clock()
                continue
            now = self._clock()
            if now >= next_at:
                self._check_watchdog(now)
                self._push(self.sample_line())
                next_at = max(next_at + 1.0 / hz, now)
            await asyncio.sleep(max(0.0, next_at - self._clock()))

    # ---------------------------------------------------------------- rig inputs
    def set_pedal(self, pressed: bool) -> None:
        """Press (True) or release (False) the footpedal; pushes ``EVT:FOOTPEDAL`` on a change."""
        self._check_watchdog(self._clock())
        if pressed == self.pedal:
            return
        self.pedal = pressed
        self._push(f"EVT:FOOTPEDAL:{int(pressed)}")
        self._update_enable()

    def set_estop(self, pressed: bool) -> None:
        """Press (True) or release (False) the E-stop; pushes ``EVT:ESTOP`` on a change. Pressing disarms."""
        self._check_watchdog(self._clock())
        if pressed == self.estop:
            return
        self.estop = pressed
        if pressed:
            self.armed = False
        self._push(f"EVT:ESTOP:{int(pressed)}")
        self._update_enable()

    # ---------------------------------------------------------------- state
    @property
    def laser_enable(self) -> bool:
        """The LASER_ENABLE line as last driven."""
        return self._enable

    def millis(self) -> int:
        """Milliseconds since power-up."""
        return int((self._clock() - self._boot) * 1000 + 1e-6)

    def sample_line(self) -> str:
        """One ``S:`` sample line from the current state."""
        return (
            f"S:{self.millis()},{self.model.photodiode_v():.3f},{int(self.pedal)},{int(self.estop)},"
            f"{self.model.vibration_g():.3f},{int(self._enable)}"
        )

    def _wdt_deadline(self) -> float | None:
        if self.wdt_expired or self._wdt_fed_at is None:
            return None
        return self._wdt_fed_at + self.wdt_timeout_ms / 1000.0

    def _wdt_fed(self, now: float) -> bool:
        deadline = self._wdt_deadline()
        return deadline is not None and now < deadline

    def _check_watchdog(self, now: float) -> None:
        deadline = self._wdt_deadline()
        if deadline is None or now < deadline:
            return
        self.wdt_expired = True
        self.armed = False
        self._update_enable()
        self.model.motor_pwm = 0
        self._push("EVT:WDT:1")

    def _update_enable(self) -> None:
        now = self._clock()
        enable = self.armed and self.pedal and not self.estop and self._wdt_fed(now)
        if enable == self._enable:
            return
        self._enable = enable
        self.model.laser_enable = enable
        self._push(f"EVT:ENABLE:{int(enable)}")

    def _push(self, line: str) -> None:
        self.sent.append(line)
        if self._device is not None:
            self._device.emit(line)

    # ---------------------------------------------------------------- commands
    def handle_line(self, line: str) -> list[str]:
        """Handle one received line (without LF); return the reply lines."""
        self._check_watchdog(self._clock())
        cmd = "".join(c for c in line if " " <= c <= "~").strip()
        replies = self._dispatch(cmd)
        if replies is None:
            return [f"ERROR:UNKNOWN_COMMAND:{cmd}"]
        return replies

    def handle_overlong(self) -> None:
        """A line over :data:`LINE_MAX_BYTES` was discarded: answer it."""
        if self._device is not None:
            self._device.emit("ERROR:LINE_TOO_LONG")

    def _dispatch(self, cmd: str) -> list[str] | None:
        simple: dict[str, Callable[[], list[str]]] = {
            "WDT_RESET": self._cmd_wdt_reset,
            "GET_PHOTODIODE": lambda: [f"PHOTODIODE:{self.model.photodiode_v():.3f}"],
            "GET_FOOTPEDAL": lambda: [f"FOOTPEDAL:{int(self.pedal)}"],
            "GET_VIBRATION_LEVEL": lambda: [f"VIBRATION:{self.model.vibration_g():.3f}"],
            "GET_ESTOP": lambda: [f"ESTOP:{int(self.estop)}"],
            "MOTOR_OFF": self._cmd_motor_off,
            "LASER_ON": lambda: self._cmd_aiming(True),
            "LASER_OFF": lambda: self._cmd_aiming(False),
            "VERSION?": lambda: [f"VERSION:{VERSION}"],
            "ARM": self._cmd_arm,
            "DISARM": self._cmd_disarm,
            "WDT_CLEAR": self._cmd_wdt_clear,
            "STATUS?": self._cmd_status,
        }
        if cmd in simple:
            return simple[cmd]()
        name, sep, arg = cmd.partition(":")
        if not sep or not arg.isdigit() or not arg.isascii():
            return None
        value = int(arg)
        if name == "MOTOR_SPEED":
            return self._cmd_motor_speed(value)
        if name == "WDT_TIMEOUT" and WDT_MIN_MS <= value <= WDT_MAX_MS:
            self.wdt_timeout_ms = value
            self._update_enable()
            self._notify()
            return [f"OK:WDT_TIMEOUT:{value}"]
        if name == "STREAM" and (value == 0 or STREAM_MIN_HZ <= value <= STREAM_MAX_HZ):
            self.stream_hz = value
            if self._stream_wake is not None:
                self._stream_wake.set()
            return [f"OK:STREAM:{value}"]
        return None

    def _cmd_wdt_reset(self) -> list[str]:
        if not self.wdt_expired:
            self._wdt_fed_at = self._clock()
            self._update_enable()
            self._notify()
        return ["OK:WDT_RESET"]

    def _cmd_wdt_clear(self) -> list[str]:
        if self.wdt_expired:
            self.wdt_expired = False
            self._wdt_fed_at = self._clock()
            self._notify()
        return ["OK:WDT_CLEAR"]

    def watchdog_state(self) -> str:
        """``IDLE`` (never fed since power-up), ``FED`` (running) or ``EXPIRED``."""
        self._check_watchdog(self._clock())
        if self.wdt_expired:
            return "EXPIRED"
        return "IDLE" if self._wdt_fed_at is None else "FED"

    def _cmd_status(self) -> list[str]:
        return [f"STATUS:ARMED={int(self.armed)},WDT={self.watchdog_state()}"]

    def _cmd_arm(self) -> list[str]:
        if self.estop:
            return ["ERROR:NOT_READY:ESTOP"]
        if self.wdt_expired:
            return ["ERROR:NOT_READY:WDT"]
        self.armed = True
        self._update_enable()
        return ["OK:ARM"]

    def _cmd_disarm(self) -> list[str]:
        self.armed = False
        self._update_enable()
        return ["OK:DISARM"]

    def _cmd_motor_speed(self, value: int) -> list[str]:
        if value > PWM_MAX:
            self.model.motor_pwm = PWM_MAX
            return ["WARNING:PWM_CLAMPED_TO_MAX", f"OK:MOTOR_SPEED:{PWM_MAX}"]
        self.model.motor_pwm = value
        return [f"OK:MOTOR_SPEED:{value}"]

    def _cmd_motor_off(self) -> list[str]:
        self.model.motor_pwm = 0
        return ["OK:MOTOR_OFF"]

    def _cmd_aiming(self, on: bool) -> list[str]:
        self.aiming_beam = on
        return ["OK:LASER_ON" if on else "OK:LASER_OFF"]
