"""Simulated ring-size actuator: a Xeryon XLA_1250 style linear piezo stage (docs/devices.md, "Actuator").

Construction and control, as the simulated rig uses it::

    sim = ActuatorSim(model, *, clock=time.monotonic)   # model: devices.sim.model.PhysicalModel
    device = PtyDevice("actuator", sim, eol=b"\\n")       # sim is the LineHandler of the pty
    sim.attach(device)                                   # INFO status lines go out through device.emit()
    await sim.start()                                    # background: motion, index search, INFO stream
    ...
    await sim.stop()                                     # cancels and awaits the background task

Public fault methods (the ``actuator fault ...`` simulator commands):

* ``thermal_fault(sensor=1)``: thermal protection 1 (STAT bit 2) or 2 (bit 3) trips: motion stops, the
  amplifiers are disabled and stay disabled until ``ENBL=1`` arrives after the cause has cleared.
* ``jam()``: the stage is mechanically blocked; the next move runs into the error limit (bit 16) and disables.
* ``encoder_fault()``: the encoder reports an error (bit 12) and loses validity; an index search then never
  sees the index mark and ends in a safety timeout (bit 18), disabled.
* ``clear_fault()``: removes every injected cause (temperature back to normal, jam freed, encoder healthy). It
  never re-enables the stage and never clears a latched STAT bit: only ``ENBL=1`` does that.

Wire behaviour:

* One command per LF-terminated line, ``TAG=value``, at most 16 characters, TAG four upper-case characters
  (letters; the last may be a digit, as in ``PTO2``) and value a signed 32-bit integer, or ``TAG=?`` for a
  query answered ``TAG=<value>``. Set commands send no reply.
  A line that is too long, malformed, has an unknown TAG, an out-of-range value, or queries a TAG that has
  no value (``RSET``, ``INDX``, ``STOP``) is ignored: nothing is sent and nothing changes. Each such line is
  counted in :attr:`ActuatorSim.ignored_lines`.
* Positions are encoder counts of 1250 nm. The index mark is at physical position 0 µm; until an index search
  has found it the encoder counts from where the stage stood at power-up or ``RSET=0`` and is not valid.
* ``DPOS`` is accepted only with the amplifiers enabled and the encoder valid, otherwise STAT bit 21 (position
  fail) is set and nothing moves. A target outside ``LLIM``..``HLIM`` is clamped to the nearer soft limit.
  Motion runs at ``SSPD`` µm/s; the physical travel ends at -1000 µm and +4000 µm (end stop, STAT bit 1).
* ``INDX=0`` needs enabled amplifiers (else bit 21); it takes at least :attr:`ActuatorSim.min_index_s` and
  moves the stage to the index mark at ``SSPD``.
* ``STOP=0`` halts at once and holds the current position (the target becomes the current position).
* ``RSET=0`` disables the amplifiers, forgets the index, clears latched bits (a cause still present sets its
  bit again) and restores the power-up settings (SSPD 200, LLIM 0, HLIM 2400, PTO2 4, INFO 0, POLI 97).
* ``INFO=3`` sends ``EPOS=``, ``DPOS=`` and ``STAT=`` lines every ``POLI`` ms (5..1000); ``INFO=0`` stops
  them. Other INFO values are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

NM_PER_COUNT = 1250
UM_PER_COUNT = NM_PER_COUNT / 1000.0
MAX_LINE_CHARS = 16
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: Physical travel of the simulated stage, µm (hard end stops).
PHYSICAL_MIN_UM = -1000.0
PHYSICAL_MAX_UM = 4000.0
#: The encoder index mark, physical µm.
INDEX_UM = 0.0

# STAT bits (docs/devices.md).
BIT_ENABLED = 1 << 0
BIT_END_STOP = 1 << 1
BIT_THERMAL_1 = 1 << 2
BIT_THERMAL_2 = 1 << 3
BIT_MOTOR_ON = 1 << 5
BIT_CLOSED_LOOP = 1 << 6
BIT_AT_INDEX = 1 << 7
BIT_ENCODER_VALID = 1 << 8
BIT_SEARCHING_INDEX = 1 << 9
BIT_POSITION_REACHED = 1 << 10
BIT_ENCODER_ERROR = 1 << 12
BIT_ERROR_LIMIT = 1 << 16
BIT_SAFETY_TIMEOUT = 1 << 18
BIT_POSITION_FAIL = 1 << 21

#: Bits that stop the stage and keep it disabled until ``ENBL=1``.
LATCHED_STOP_BITS = BIT_THERMAL_1 | BIT_THERMAL_2 | BIT_ERROR_LIMIT | BIT_SAFETY_TIMEOUT

DEFAULTS: dict[str, int] = {"SSPD": 200, "LLIM": 0, "HLIM": 2400, "PTO2": 4, "INFO": 0, "POLI": 97}
#: Accepted value range of each setting.
RANGES: dict[str, tuple[int, int]] = {
    "SSPD": (1, 100_000),
    "LLIM": (INT32_MIN, INT32_MAX),
    "HLIM": (INT32_MIN, INT32_MAX),
    "PTO2": (0, 10_000),
    "POLI": (5, 1000),
}

_LINE = re.compile(r"([A-Z]{3}[A-Z0-9])=(\?|[+-]?[0-9]+)")

#: Following error (µm) at which a blocked stage trips the error limit.
ERROR_LIMIT_UM = 50.0
#: Background tick, s.
TICK_S = 0.005


class _Emitter(Protocol):
    def emit(self, line: str) -> None: ...


class _Model(Protocol):
    actuator_position_um: float


class ActuatorSim:
    """The stage's controller, operating on ``model.actuator_position_um`` (physical position, µm).

    ``min_index_s`` is the shortest index search (s); ``index_timeout_s`` is how long a search may last before
    the safety timeout trips (s).
    """

    def __init__(
        self,
        model: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_index_s: float = 0.3,
        index_timeout_s: float = 3.0,
    ) -> None:
        self.model: _Model = model
        self._clock = clock
        self.min_index_s = min_index_s
        self.index_timeout_s = index_timeout_s
        self.ignored_lines = 0
        self._device: _Emitter | None = None
        self._task: asyncio.Task[None] | None = None
        self._settings: dict[str, int] = dict(DEFAULTS)
        self._enabled = False
        self._encoder_valid = False
        self._ref_um = float(model.actuator_position_um)  # physical position of encoder count 0
        self._target_um = float(model.actuator_position_um)
        self._dpos = 0
        self._moving = False
        self._searching = False
        self._search_started = 0.0
        self._latched = 0
        self._position_fail = False
        self._end_stop = False
        self._thermal_cause = 0
        self._jammed = False
        self._encoder_broken = False
        self._blocked_progress_um = 0.0
        self._last = clock()
        self._next_info = self._last

    # ---------------------------------------------------------------- lifecycle
    def attach(self, device: _Emitter) -> None:
        """Send INFO status lines through ``device.emit`` (a PtyDevice)."""
        self._device = device

    async def start(self) -> None:
        """Start the background task that moves the stage, runs the index search and sends INFO lines."""
        if self._task is None or self._task.done():
            self._last = self._clock()
            self._task = asyncio.create_task(self._run(), name="actuator-sim")

    async def stop(self) -> None:
        """Cancel the background task and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            now = self._clock()
            self._advance(now)
            if self._settings["INFO"] and self._device is not None and now >= self._next_info:
                for line in self.info_lines():
                    self._device.emit(line)
                self._next_info = max(self._next_info + self._settings["POLI"] / 1000.0, now)
            await asyncio.sleep(TICK_S)

    # ---------------------------------------------------------------- faults
    def thermal_fault(self, sensor: int = 1) -> None:
        """Trip thermal protection ``sensor`` (1 or 2): stop and disable; latched until ``ENBL=1``."""
        if sensor not in (1, 2):
            raise ValueError(f"thermal sensor must be 1 or 2, not {sensor!r}")
        self._advance(self._clock())
        bit = BIT_THERMAL_1 if sensor == 1 else BIT_THERMAL_2
        self._thermal_cause |= bit
        self._trip(bit)

    def jam(self) -> None:
        """Block the stage mechanically: a move then trips the error limit (bit 16)."""
        self._advance(self._clock())
        self._jammed = True

    def encoder_fault(self) -> None:
        """Break the encoder: bit 12 set, encoder no longer valid, index searches time out (bit 18)."""
        self._advance(self._clock())
        self._encoder_broken = True
        self._encoder_valid = False
        if self._moving:
            self._halt()

    def clear_fault(self) -> None:
        """Remove every injected cause. Latched bits and the disabled state remain until ``ENBL=1``."""
        self._advance(self._clock())
        self._thermal_cause = 0
        self._jammed = False
        self._encoder_broken = False

    # ---------------------------------------------------------------- state
    @property
    def position_um(self) -> float:
        """Physical position, µm."""
        return float(self.model.actuator_position_um)

    def epos(self) -> int:
        """Encoder position, counts."""
        return round((self.position_um - self._ref_um) / UM_PER_COUNT)

    def stat(self) -> int:
        """The STAT word from the current state."""
        word = self._latched
        if self._enabled:
            word |= BIT_ENABLED
        if self._end_stop:
            word |= BIT_END_STOP
        if self._moving or self._searching:
            word |= BIT_MOTOR_ON
        if self._enabled and self._encoder_valid:
            word |= BIT_CLOSED_LOOP
        if self._encoder_valid and abs(self.position_um - INDEX_UM) < UM_PER_COUNT / 2:
            word |= BIT_AT_INDEX
        if self._encoder_valid:
            word |= BIT_ENCODER_VALID
        if self._searching:
            word |= BIT_SEARCHING_INDEX
        if (
            self._enabled
            and self._encoder_valid
            and not self._moving
            and abs(self.epos() - self._dpos) <= self._settings["PTO2"]
        ):
            word |= BIT_POSITION_REACHED
        if self._encoder_broken:
            word |= BIT_ENCODER_ERROR
        if self._position_fail:
            word |= BIT_POSITION_FAIL
        return word

    def info_lines(self) -> list[str]:
        """The three INFO lines: ``EPOS=``, ``DPOS=``, ``STAT=``, brought up to the clock's present time."""
        self._advance(self._clock())
        return [f"EPOS={self.epos()}", f"DPOS={self._dpos}", f"STAT={self.stat()}"]

    # ---------------------------------------------------------------- commands
    def handle_line(self, line: str) -> list[str]:
        """Handle one received line (without LF); return the reply lines (one for a query, none for a set)."""
        self._advance(self._clock())
        text = line.rstrip("\r")
        match = _LINE.fullmatch(text) if len(text) <= MAX_LINE_CHARS else None
        if match is None:
            self.ignored_lines += 1
            return []
        tag, raw = match.group(1), match.group(2)
        if raw == "?":
            value = self._query(tag)
            if value is None:
                self.ignored_lines += 1
                return []
            return [f"{tag}={value}"]
        value = int(raw)
        if not (INT32_MIN <= value <= INT32_MAX) or not self._set(tag, value):
            self.ignored_lines += 1
        return []

    def _query(self, tag: str) -> int | None:
        if tag == "EPOS":
            return self.epos()
        if tag == "DPOS":
            return self._dpos
        if tag == "STAT":
            return self.stat()
        if tag == "ENBL":
            return int(self._enabled)
        return self._settings.get(tag)

    def _set(self, tag: str, value: int) -> bool:
        if tag in RANGES:
            low, high = RANGES[tag]
            if not low <= value <= high:
                return False
            self._settings[tag] = value
            return True
        if tag == "INFO":
            if value not in (0, 3):
                return False
            if value and not self._settings["INFO"]:
                self._next_info = self._clock()
            self._settings["INFO"] = value
            return True
        if tag == "ENBL":
            return self._cmd_enable(value)
        if tag == "DPOS":
            self._cmd_move(value)
            return True
        if tag == "INDX" and value == 0:
            self._cmd_index()
            return True
        if tag == "STOP" and value == 0:
            if self._moving or self._searching:
                self._halt()
            self._dpos = self.epos()
            self._target_um = self.position_um
            return True
        if tag == "RSET" and value == 0:
            self._cmd_reset()
            return True
        return False

    def _cmd_enable(self, value: int) -> bool:
        if value == 0:
            if self._moving or self._searching:
                self._halt()
            self._enabled = False
            return True
        if value != 1:
            return False
        if self._thermal_cause:
            self._latched |= self._thermal_cause  # still too hot: stays disabled
            return True
        self._latched &= ~LATCHED_STOP_BITS
        self._enabled = True
        self._dpos = self.epos()
        self._target_um = self.position_um
        return True

    def _cmd_move(self, counts: int) -> None:
        if not (self._enabled and self._encoder_valid) or self._searching:
            self._position_fail = True
            return
        low, high = self._settings["LLIM"], self._settings["HLIM"]
        counts = min(max(counts, low), high)
        self._position_fail = False
        self._end_stop = False
        self._dpos = counts
        self._target_um = self._ref_um + counts * UM_PER_COUNT
        self._blocked_progress_um = 0.0
        self._moving = abs(self._target_um - self.position_um) > 1e-9

    def _cmd_index(self) -> None:
        if not self._enabled:
            self._position_fail = True
            return
        self._position_fail = False
        self._moving = False
        self._searching = True
        self._search_started = self._clock()
        self._encoder_valid = False

    def _cmd_reset(self) -> None:
        self._halt()
        self._enabled = False
        self._encoder_valid = False
        self._settings = dict(DEFAULTS)
        self._latched = self._thermal_cause
        self._position_fail = False
        self._end_stop = False
        self._ref_um = self.position_um
        self._target_um = self.position_um
        self._dpos = 0

    # ---------------------------------------------------------------- dynamics
    def _halt(self) -> None:
        self._moving = False
        self._searching = False

    def _trip(self, bit: int) -> None:
        self._latched |= bit
        self._halt()
        self._enabled = False

    def _set_position(self, um: float) -> None:
        self.model.actuator_position_um = um

    def _advance(self, now: float) -> None:
        """Integrate motion and index search from the last call up to ``now`` (clock seconds)."""
        dt = max(0.0, now - self._last)
        self._last = now
        if self._searching:
            self._advance_search(now, dt)
        elif self._moving:
            self._advance_move(dt)

    def _step_towards(self, target_um: float, dt: float) -> bool:
        """Move at SSPD towards ``target_um`` for ``dt`` s; True once there. Stops at the physical ends."""
        pos = self.position_um
        step = self._settings["SSPD"] * dt
        if abs(target_um - pos) <= step:
            new = target_um
        else:
            new = pos + step if target_um > pos else pos - step
        clamped = min(max(new, PHYSICAL_MIN_UM), PHYSICAL_MAX_UM)
        self._set_position(clamped)
        if clamped != new:
            self._end_stop = True
            return True
        return new == target_um

    def _advance_search(self, now: float, dt: float) -> None:
        if self._encoder_broken:
            if now - self._search_started >= self.index_timeout_s:
                self._trip(BIT_SAFETY_TIMEOUT)
            return
        arrived = self._step_towards(INDEX_UM, dt)
        if arrived and now - self._search_started >= self.min_index_s:
            self._searching = False
            self._encoder_valid = True
            self._ref_um = INDEX_UM
            self._dpos = self.epos()
            self._target_um = self.position_um

    def _advance_move(self, dt: float) -> None:
        if self._jammed:
            self._blocked_progress_um += self._settings["SSPD"] * dt
            if self._blocked_progress_um >= ERROR_LIMIT_UM:
                self._trip(BIT_ERROR_LIMIT)
            return
        if self._step_towards(self._target_um, dt):
            self._moving = False
