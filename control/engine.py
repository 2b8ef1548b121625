"""The protocol engine: runs a compiled plan's steps through the safety supervisor.

docs/architecture.md, "Running a protocol". For each step the engine

1. ends emission for the step change (the supervisor's "step" term goes false, so the laser is off),
2. moves the actuator to the step's ring size while the laser is off,
3. sets the power for where the step clock stands and marks the step active: emission then follows the
   footpedal, as the supervisor allows it,
4. records the step's start (and its first setpoint) when the step really starts: the first time the laser
   is allowed to emit for it (TREATING), so a session that is never armed records no step,
5. refreshes the setpoint at ``loop_hz`` while the step clock runs. The step clock is the supervisor's
   emitting time, so it advances only while TREATING: a released footpedal, a pause or a fault stop it, and
   the step resumes where it stopped. A linear ramp's last setpoint is exactly ``power_end_watts``.

A power override belongs to the step it was typed for: it names that step, and is refused with the reason
when that step is no longer running (ended, or another one runs). It lasts until its step ends.

Every way out of :meth:`TreatmentEngine.run` (done, abort, fault, exception, cancellation) marks the step
inactive, which switches the laser off at once, and then waits for the off state to be verified.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control.protocols import PlanStep, RampType
from control.supervisor import Refused, SafetySupervisor, SystemState
from devices.laser import ArroyoError

_LOG = logging.getLogger(__name__)

#: Setpoint changes smaller than this (W) are not recorded as power_change events.
POWER_EVENT_STEP_W = 0.01
#: How early (s) the step-end timer may find the treating clock short of the step, from rounding alone.
STEP_END_TOLERANCE_S = 0.001
#: The laser driver's "interlock shutdown" error: it forced its output off because the interlock opened.
INTERLOCK_SHUTDOWN = 501


class Outcome(enum.StrEnum):
    """How a run ended."""

    COMPLETED = "completed"
    ABORTED = "aborted"


@dataclass
class StepProgress:
    """Where the run stands: step ``number`` of ``of``, its clock, and the setpoint, W."""

    number: int
    of: int
    elapsed_s: float
    duration_s: float
    power_start_w: float
    power_end_w: float
    ramp: RampType
    ring_size_mm: float
    setpoint_w: float
    override_w: float | None = None


EventSink = Callable[..., None]


class TreatmentEngine:
    """Runs ``steps`` in order. ``move_ring(mm)`` moves the actuator (laser off) and returns the reached ring
    size, mm. ``record(event_type, **columns)`` queues a treatment_events row. ``max_override_w`` bounds a
    power override (the protocol's own limit and the system's, whichever is lower)."""

    def __init__(
        self,
        supervisor: SafetySupervisor,
        steps: Sequence[PlanStep],
        *,
        move_ring: Callable[[float], Awaitable[float]],
        record: EventSink,
        loop_hz: float = 10.0,
        max_override_w: float,
    ) -> None:
        if not steps:
            raise ValueError("a plan needs at least one step")
        if not (math.isfinite(loop_hz) and 1.0 <= loop_hz <= 1000.0):
            raise ValueError(f"treatment loop frequency must be 1..1000 Hz, got {loop_hz}")
        self.sup = supervisor
        self.steps = list(steps)
        self.move_ring = move_ring
        self.record = record
        self.period_s = 1.0 / loop_hz
        self.max_override_w = max_override_w
        self.progress: StepProgress | None = None
        self.ring_mm: float | None = None
        self._override_w: float | None = None
        #: The number of the step that takes overrides now (``None`` between steps and after the last).
        self._override_step: int | None = None
        self._wake = asyncio.Event()
        #: The current step's time ran out while a setpoint was being written (set by its end timer).
        self._time_up = False
        supervisor.on_state_change(self._state_changed)

    def _state_changed(self, old: SystemState, new: SystemState, reason: str) -> None:
        self._wake.set()

    # ------------------------------------------------------------------------------------------ run
    async def run(self) -> Outcome:
        """Run every step; returns COMPLETED. Cancellation (abort) propagates after the laser is off."""
        try:
            for step in self.steps:
                await self._run_step(step)
            await self.sup.protocol_complete()
            return Outcome.COMPLETED
        finally:
            self.sup.set_step_active(False)
            try:
                await asyncio.shield(self.sup.verify_output_off())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.sup.trip("interlock_failure", f"laser output off not verified at the end: {exc}")

    async def _run_step(self, step: PlanStep) -> None:
        total = len(self.steps)
        self.sup.set_step_active(False)
        self._override_w = None
        self._override_step = step.number
        self.progress = StepProgress(
            step.number,
            total,
            0.0,
            step.duration_s,
            step.power_start_w,
            step.power_end_w,
            step.ramp,
            step.ring_size_mm,
            step.power_at_elapsed(0.0),
        )
        if self.ring_mm is None or abs(self.ring_mm - step.ring_size_mm) > 1e-6:
            await self._wait_state_for_move()
            reached = await self.move_ring(step.ring_size_mm)
            self.record(
                "ring_size_change",
                ring_mm=reached,
                details={"target_mm": step.ring_size_mm, "protocol_step": step.number},
            )
            self.ring_mm = step.ring_size_mm
        origin = self.sup.treating_seconds()
        started = False
        last_recorded: float | None = None
        await self._apply(step, 0.0)
        self.sup.set_step_active(True)
        loop = asyncio.get_running_loop()
        self._time_up = False
        while True:
            elapsed = self.sup.treating_seconds() - origin
            remaining = step.duration_s - elapsed
            if not started and (elapsed > 0 or self.sup.state is SystemState.TREATING):
                started = True
                self._record_start(step)
            if remaining <= 0 or self._time_up:
                break
            # The step ends on time even while a setpoint is still being written to the laser.
            end_timer = (
                loop.call_later(remaining, self._end_step_emission, origin, step.duration_s)
                if self.sup.state is SystemState.TREATING
                else None
            )
            try:
                setpoint = await self._apply(step, elapsed)
                if started and (last_recorded is None or abs(setpoint - last_recorded) >= POWER_EVENT_STEP_W):
                    self.record(
                        "power_change" if last_recorded is not None else "power_set",
                        commanded_w=setpoint,
                        details={"protocol_step": step.number, "elapsed_s": round(elapsed, 3)},
                    )
                    last_recorded = setpoint
                self._wake.clear()
                if self.sup.state is SystemState.TREATING:
                    # Measured again: writing the setpoint took time.
                    left = step.duration_s - (self.sup.treating_seconds() - origin)
                    delay = min(self.period_s, max(left, 0.0))
                else:
                    delay = self.period_s
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            finally:
                if end_timer is not None:
                    end_timer.cancel()
        self._override_step = None
        final = self._override_w if self._override_w is not None else step.power_at_elapsed(step.duration_s)
        if self.progress is not None:
            self.progress.elapsed_s = step.duration_s
            self.progress.setpoint_w = final
        self.sup.set_step_active(False)
        if step.ramp == "linear" and self._override_w is None:
            await self._set_power(final)
            self.record(
                "power_change",
                commanded_w=final,
                details={"protocol_step": step.number, "elapsed_s": step.duration_s, "ramp_end": True},
            )
        self.record(
            "protocol_step_end",
            commanded_w=final,
            ring_mm=self.ring_mm,
            details={"protocol_step": step.number},
        )

    def _end_step_emission(self, origin: float, duration_s: float) -> None:
        """The step's time is up while the loop still waits for a setpoint's write: emission stops now (the
        step becomes inactive, so the supervisor leaves TREATING); the loop then ends the step as usual.
        Judged again on the treating clock, since a pause since the timer was set moves the step's end."""
        if (
            self.sup.state is SystemState.TREATING
            and self.sup.treating_seconds() - origin >= duration_s - STEP_END_TOLERANCE_S
        ):
            self._time_up = True
            self.sup.set_step_active(False)
            self._wake.set()

    def _record_start(self, step: PlanStep) -> None:
        """Record that ``step`` really started: the laser was allowed to emit for it."""
        self.record(
            "protocol_step_start",
            commanded_w=self.sup.commanded_w,
            ring_mm=self.ring_mm,
            details={
                "protocol_step": step.number,
                "duration_s": step.duration_s,
                "ramp": step.ramp,
                "power_start_w": step.power_start_w,
                "power_end_w": step.power_end_w,
            },
        )

    async def _wait_state_for_move(self) -> None:
        """Move only while nothing emits (the step is inactive, so TREATING is already left)."""
        while self.sup.state is SystemState.TREATING:
            self._wake.clear()
            await self._wake.wait()

    async def _apply(self, step: PlanStep, elapsed: float) -> float:
        setpoint = self._override_w if self._override_w is not None else step.power_at_elapsed(elapsed)
        if self.progress is not None:
            self.progress.elapsed_s = max(0.0, min(elapsed, step.duration_s))
            self.progress.setpoint_w = setpoint
            self.progress.override_w = self._override_w
        if setpoint != self.sup.commanded_w:
            await self._set_power(setpoint)
        return setpoint

    async def _set_power(self, watts: float) -> None:
        """Write a setpoint. A setpoint written just as the footpedal was released (or emission otherwise
        stopped) may be answered by the driver's report that the interlock forced its output off: with
        nothing emitting that report is expected, and the setpoint is written once more. Any other error, or
        that one while still treating, is raised (the run then fails and the laser is switched off)."""
        try:
            await self.sup.set_power(watts)
        except ArroyoError as exc:
            if set(exc.codes) != {INTERLOCK_SHUTDOWN} or self.sup.state is SystemState.TREATING:
                raise
            _LOG.info("setpoint %.3f W met the interlock's opening (%s); writing it again", watts, exc)
            await self.sup.set_power(watts)

    # ------------------------------------------------------------------------------------- operator
    def override_power(self, watts: float, reason: str, *, actor: str, step: int) -> Mapping[str, Any]:
        """Replace step ``step``'s setpoint until that step ends; needs a reason, stays within limits, and is
        refused when step ``step`` is not the one running (it ended while the override was typed)."""
        if not reason or not reason.strip():
            raise Refused("a power override needs a reason")
        if not math.isfinite(watts) or watts < 0:
            raise Refused(f"override power must be a finite number of watts >= 0, got {watts}")
        if watts > self.max_override_w:
            raise Refused(f"override {watts:.2f} W exceeds the limit of {self.max_override_w:.2f} W")
        running = self._override_step
        if running != step or self.progress is None:
            if running is None:
                now = "no step is running"
            else:
                now = f"step {running} of {len(self.steps)} is running"
            when = "has not started" if running is not None and step > running else "has ended"
            raise Refused(f"the override was for step {step}, which {when}; {now}: not applied")
        old = self.progress.setpoint_w
        self._override_w = watts
        self._wake.set()
        details = {
            "action": "protocol_power_override",
            "old_value": old,
            "new_value": watts,
            "reason": reason.strip(),
            "by": actor,
            "protocol_step": self.progress.number,
        }
        self.record("user_action", commanded_w=watts, details=details)
        return details
