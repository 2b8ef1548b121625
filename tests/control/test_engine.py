"""The protocol engine on its own, against the supervisor on a fake rig, in virtual time: the event loop's
clock is the rig's hand-driven clock and jumps to the next timer whenever every task waits, so a two-second
step takes two seconds of that clock and no real time, and every time below is exact whatever the machine's
load.

What is checked is what the operator and the records see: how long a step emits, that the step clock stops
with the footpedal and with a fault, the setpoints of a ramp and its exact end, the ring moved only while
nothing emits, the events recorded, the override's rules, and the laser off (verified) however the run ends.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from supervisor_fakes import TEC_SETPOINT_C, World

import control
from control.engine import Outcome, TreatmentEngine
from control.protocols import PlanStep, ValidationLimits, check_protocol
from control.sessions import SummaryAccumulator
from control.supervisor import Refused, SystemState
from devices.laser import ArroyoError, decode_error
from tests.support import run_in_virtual_time, wait_until

S = SystemState
T = TypeVar("T")

CONSTANT_2S = PlanStep(1, 0.0, 2.0, 5.0, 5.0, 3.0, "constant")
TWO_STEPS = [
    PlanStep(1, 0.0, 1.0, 5.0, 5.0, 3.0, "constant"),
    PlanStep(2, 1.0, 2.0, 5.0, 8.0, 3.0, "linear"),
]


class Rig:
    """An engine over a fake rig's supervisor, with the rig's monitors feeding fresh readings every 10 ms
    (as the controller's do), an actuator that takes 200 ms per move, and every recorded event kept with the
    clock's time."""

    def __init__(self, steps: list[PlanStep], *, loop_hz: float = 10.0, max_override_w: float = 10.0) -> None:
        self.world = World()
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        #: (time, target mm, laser emitting, supervisor state) at each actuator move.
        self.moves: list[tuple[float, float, bool, SystemState]] = []
        self.engine = TreatmentEngine(
            self.world.sup,
            steps,
            move_ring=self._move,
            record=self._record,
            loop_hz=loop_hz,
            max_override_w=max_override_w,
        )
        self.task: asyncio.Task[Outcome] | None = None

    def now(self) -> float:
        return self.world.clock()

    async def _move(self, mm: float) -> float:
        self.moves.append((self.now(), mm, self.world.laser.output_on, self.world.sup.state))
        await asyncio.sleep(0.2)
        return mm

    def _record(self, kind: str, **columns: Any) -> None:
        self.events.append((self.now(), kind, columns))

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.events]

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, columns) for t, k, columns in self.events if k == kind]

    def setpoints(self) -> list[tuple[float, float]]:
        """Every setpoint written to the laser: (time, W)."""
        return [(c.at, c.detail) for c in self.world.journal.calls if c.name == "set_power"]

    async def monitors(self) -> None:
        while True:
            self.world.refresh()
            await asyncio.sleep(0.01)

    async def until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        await wait_until(predicate, timeout_s, what, describe=lambda: f"state {self.world.sup.state.value}")

    async def step_active(self) -> None:
        await self.until(lambda: self.world.sup.readings.step_active, "a step active")

    async def emit(self) -> float:
        """Arm (when not armed) and press the footpedal; returns the time the output switched on."""
        if self.world.sup.state is not S.ARMED:
            await self.world.sup.arm()
        self.world.press_pedal()
        await self.until(lambda: self.world.laser.output_on, "the laser emitting")
        assert self.world.laser.on_since is not None
        return self.world.laser.on_since

    async def finished(self) -> Outcome:
        assert self.task is not None
        return await asyncio.wait_for(asyncio.shield(self.task), 600)


def run(rig: Rig, script: Callable[[Rig], Awaitable[T]]) -> T:
    """Open a session on a healthy rig, start the monitors and the engine, run ``script`` in virtual time,
    then end everything (the laser must be off by then)."""

    async def main() -> T:
        world = rig.world
        world.sup.start()
        world.feed_healthy()
        await world.sup.open_session()
        monitors = asyncio.create_task(rig.monitors())
        rig.task = asyncio.create_task(rig.engine.run())
        try:
            return await script(rig)
        finally:
            rig.task.cancel()
            monitors.cancel()
            await asyncio.gather(rig.task, monitors, return_exceptions=True)
            await world.sup.close()

    return run_in_virtual_time(main, rig.world.clock, rig.world.clock.advance)


# ------------------------------------------------------------------------------------------- the step clock
def test_a_step_emits_for_exactly_its_duration_then_the_protocol_completes() -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        on = await rig.emit()
        assert await rig.finished() is Outcome.COMPLETED
        [(end, columns)] = rig.of("protocol_step_end")
        assert end - on == pytest.approx(2.0, abs=1e-6)
        assert columns == {"commanded_w": 5.0, "ring_mm": 3.0, "details": {"protocol_step": 1}}
        assert rig.world.sup.treating_seconds() == pytest.approx(2.0, abs=1e-6)
        progress = rig.engine.progress
        assert progress is not None
        assert (progress.number, progress.of, progress.elapsed_s, progress.setpoint_w) == (1, 1, 2.0, 5.0)
        assert "power_change" not in rig.kinds(), "a constant step has no ramp to end"
        assert rig.world.sup.state is S.READY
        assert not rig.world.laser.output_on and not rig.world.board.armed
        assert "laser.off_verified" in rig.world.journal.names()[-4:]

    run(Rig([CONSTANT_2S]), script)


def test_the_step_clock_stops_while_the_footpedal_is_up() -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        on = await rig.emit()
        await asyncio.sleep(0.5)
        rig.world.release_pedal()
        await asyncio.sleep(5.0)
        assert rig.of("protocol_step_end") == []
        assert rig.engine.progress is not None
        assert rig.engine.progress.elapsed_s == pytest.approx(0.5, abs=0.1)
        again = await rig.emit()
        await rig.finished()
        [(end, _)] = rig.of("protocol_step_end")
        assert again - on == pytest.approx(5.5, abs=0.02)
        assert end - again == pytest.approx(1.5, abs=0.02)

    run(Rig([CONSTANT_2S]), script)


def test_a_step_that_never_emits_is_not_recorded_and_never_ends() -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        await asyncio.sleep(30.0)  # thirty seconds of the clock: READY, never armed
        assert rig.kinds() == ["ring_size_change"]
        assert rig.engine.progress is not None and rig.engine.progress.elapsed_s == 0.0
        assert rig.task is not None and not rig.task.done()

    run(Rig([CONSTANT_2S]), script)


def test_a_fault_stops_the_step_clock_and_the_step_resumes_after_the_reset() -> None:
    async def script(rig: Rig) -> None:
        world = rig.world
        await rig.step_active()
        await rig.emit()
        await asyncio.sleep(0.8)
        world.tec_c = TEC_SETPOINT_C + 3.0
        await rig.until(lambda: world.sup.state is S.FAULT, "the TEC fault")
        stopped = world.sup.treating_seconds()
        await asyncio.sleep(10.0)
        assert world.sup.treating_seconds() == stopped
        assert rig.of("protocol_step_end") == []
        assert not world.laser.output_on
        world.tec_c = TEC_SETPOINT_C
        await asyncio.sleep(0.05)
        await world.sup.reset(1, "alice")
        world.release_pedal()
        on = await rig.emit()
        await rig.finished()
        [(end, _)] = rig.of("protocol_step_end")
        assert end - on == pytest.approx(2.0 - stopped, abs=0.02)
        assert world.sup.treating_seconds() == pytest.approx(2.0, abs=1e-6)
        starts = rig.of("protocol_step_start")
        assert len(starts) == 1, "a resumed step is the same step"

    run(Rig([CONSTANT_2S]), script)


# ------------------------------------------------------------------------------------------------ ramps
def test_a_ramp_is_refreshed_at_the_loop_rate_and_ends_exactly_at_its_end_power() -> None:
    ramp = PlanStep(1, 0.0, 1.0, 2.0, 6.0, 3.0, "linear")

    async def script(rig: Rig) -> None:
        await rig.step_active()
        on = await rig.emit()
        await rig.finished()
        during = [(t - on, w) for t, w in rig.setpoints() if t >= on]
        # 10 Hz over one second: a new setpoint every 100 ms, each the ramp's power at that moment.
        assert 9 <= len(during) <= 11
        for elapsed, watts in during:
            assert watts == pytest.approx(ramp.power_at_elapsed(elapsed), abs=1e-6)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(during)]
        assert all(g == pytest.approx(0.1, abs=0.011) for g in gaps[:-1]), gaps
        assert during[-1][1] == 6.0
        [(_, end)] = [(t, c) for t, c in rig.of("power_change") if c["details"].get("ramp_end")]
        assert end["commanded_w"] == 6.0
        assert rig.of("protocol_step_end")[0][1]["commanded_w"] == 6.0

    run(Rig([ramp]), script)


def _slow_setpoints(rig: Rig, seconds: float) -> list[tuple[float, bool]]:
    """The laser takes ``seconds`` to take each setpoint (a serial write and its reply); returns, for each
    setpoint, the watts and whether the output was on when it was sent."""
    laser = rig.world.laser
    written = laser.set_power
    sent: list[tuple[float, bool]] = []

    async def slow_set_power(watts: float) -> None:
        sent.append((watts, laser.output_on))
        await asyncio.sleep(seconds)
        await written(watts)

    laser.set_power = slow_set_power  # type: ignore[method-assign]
    return sent


def test_a_ramps_exact_end_power_is_written_with_the_output_off() -> None:
    ramp = PlanStep(1, 0.0, 1.0, 2.0, 6.0, 3.0, "linear")

    async def script(rig: Rig) -> None:
        sent = _slow_setpoints(rig, 0.02)
        await rig.step_active()
        await rig.emit()
        await rig.finished()
        assert sent[-1] == (6.0, False), "the output was still on for the last setpoint"
        assert any(on for _, on in sent), "the ramp's setpoints were written while emitting"

    run(Rig([ramp]), script)


def test_a_ramp_emits_no_longer_than_its_step_with_a_slow_setpoint() -> None:
    ramp = PlanStep(1, 0.0, 1.0, 2.0, 6.0, 3.0, "linear")

    async def script(rig: Rig) -> None:
        _slow_setpoints(rig, 0.02)
        await rig.step_active()
        await rig.emit()
        await rig.finished()
        assert rig.world.sup.treating_seconds() == pytest.approx(1.0, abs=1e-6)

    run(Rig([ramp]), script)


def test_a_ramp_at_a_faster_loop_rate_is_refreshed_more_often() -> None:
    ramp = PlanStep(1, 0.0, 1.0, 2.0, 6.0, 3.0, "linear")

    async def script(rig: Rig) -> None:
        await rig.step_active()
        on = await rig.emit()
        await rig.finished()
        during = [w for t, w in rig.setpoints() if t >= on]
        assert 45 <= len(during) <= 52

    run(Rig([ramp], loop_hz=50.0), script)


def test_setpoint_changes_under_10_mw_are_not_recorded_one_by_one() -> None:
    """A slow ramp (5.00 to 5.05 W in one second) changes the setpoint by 5 mW per loop turn: a power
    event is recorded once the change since the last one reaches 10 mW, not at every turn."""
    slow = PlanStep(1, 0.0, 1.0, 5.0, 5.05, 3.0, "linear")

    async def script(rig: Rig) -> None:
        await rig.step_active()
        await rig.emit()
        await rig.finished()
        recorded = [c["commanded_w"] for _, c in rig.of("power_set") + rig.of("power_change")]
        written = [w for _, w in rig.setpoints()]
        assert len(recorded) < len(written)
        steps = [b - a for a, b in itertools.pairwise(recorded[:-1])]
        assert steps and all(s == pytest.approx(0.01, abs=1e-9) for s in steps), steps
        assert recorded[-1] == 5.05

    run(Rig([slow]), script)


# ----------------------------------------------------------------------------------------------- the ring
def test_the_ring_moves_only_while_nothing_emits_even_with_the_footpedal_held() -> None:
    steps = [
        PlanStep(1, 0.0, 1.0, 4.0, 4.0, 3.0, "constant"),
        PlanStep(2, 1.0, 1.0, 4.0, 4.0, 4.5, "constant"),
        PlanStep(3, 2.0, 1.0, 4.0, 4.0, 4.5, "constant"),
    ]

    async def script(rig: Rig) -> None:
        await rig.step_active()
        await rig.emit()  # the footpedal stays down to the end
        assert await rig.finished() is Outcome.COMPLETED
        assert [(mm, emitting, state) for _, mm, emitting, state in rig.moves] == [
            (3.0, False, S.READY),
            (4.5, False, S.ARMED),
        ]
        changes = rig.of("ring_size_change")
        assert [c["ring_mm"] for _, c in changes] == [3.0, 4.5]
        assert changes[1][1]["details"] == {"target_mm": 4.5, "protocol_step": 2}
        ends = [t for t, _ in rig.of("protocol_step_end")]
        assert ends[1] - ends[0] == pytest.approx(0.2 + 1.0, abs=0.02), (
            "the move, then one second of emission"
        )
        assert ends[2] - ends[1] == pytest.approx(1.0, abs=0.02), "no move for the same ring"

    run(Rig(steps), script)


def test_at_a_step_change_the_laser_comes_on_at_the_new_steps_power() -> None:
    """The footpedal stays down from 5 W into a 2 W step: the new setpoint is written before the step is
    marked active, so the output never comes on at the old step's power, even with a laser that takes a
    few milliseconds to take a setpoint."""
    steps = [
        PlanStep(1, 0.0, 1.0, 5.0, 5.0, 3.0, "constant"),
        PlanStep(2, 1.0, 1.0, 2.0, 2.0, 3.0, "constant"),
    ]

    async def script(rig: Rig) -> None:
        laser = rig.world.laser
        _slow_setpoints(rig, 0.005)
        laser.observe = lambda: laser.power_w
        await rig.step_active()
        await rig.emit()
        await rig.finished()
        assert laser.switch_ons == [5.0, 2.0]

    run(Rig(steps), script)


# ------------------------------------------------------------------------------------------- recording
def test_each_step_is_recorded_as_started_only_once_it_emits() -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        await asyncio.sleep(1.0)  # ten turns of the engine's loop in READY
        assert "protocol_step_start" not in rig.kinds()
        assert "power_set" not in rig.kinds()
        on = await rig.emit()
        await rig.finished()
        # Recorded the moment the output came on: the engine wakes on the state change, not a period later.
        assert rig.of("protocol_step_start")[0][0] == pytest.approx(on, abs=1e-9)
        starts = [c for _, c in rig.of("protocol_step_start")]
        assert [s["details"]["protocol_step"] for s in starts] == [1, 2]
        assert [s["commanded_w"] for s in starts] == [5.0, 5.0]
        assert starts[1]["details"] == {
            "protocol_step": 2,
            "duration_s": 2.0,
            "ramp": "linear",
            "power_start_w": 5.0,
            "power_end_w": 8.0,
        }
        kinds = rig.kinds()
        assert kinds.index("protocol_step_start") < kinds.index("power_set")

    run(Rig(TWO_STEPS), script)


# -------------------------------------------------------------------------------------------- overrides
def test_an_override_lasts_until_its_step_ends() -> None:
    async def script(rig: Rig) -> None:
        world, engine = rig.world, rig.engine
        await rig.step_active()
        await rig.emit()
        details = engine.override_power(4.5, " redness ", actor="tech", step=1)
        assert details == {
            "action": "protocol_power_override",
            "old_value": 5.0,
            "new_value": 4.5,
            "reason": "redness",
            "by": "tech",
            "protocol_step": 1,
        }
        await rig.until(lambda: world.sup.commanded_w == 4.5, "the override applied")
        await asyncio.sleep(0.5)
        assert world.sup.commanded_w == 4.5
        await rig.until(lambda: engine.progress is not None and engine.progress.number == 2, "step 2")
        await asyncio.sleep(0.5)
        assert world.sup.commanded_w > 5.0, "step 2 ramps from 5 W as planned"
        assert engine.progress is not None and engine.progress.override_w is None
        step1_end = rig.of("protocol_step_end")[0][1]
        assert step1_end["commanded_w"] == 4.5

    run(Rig(TWO_STEPS), script)


def test_an_override_typed_for_an_ended_step_is_refused_and_changes_nothing() -> None:
    async def script(rig: Rig) -> None:
        engine = rig.engine
        await rig.step_active()
        await rig.emit()
        await rig.until(lambda: engine.progress is not None and engine.progress.number == 2, "step 2")
        recorded = len(rig.events)
        with pytest.raises(
            Refused, match=r"the override was for step 1, which has ended; step 2 of 2 is running"
        ):
            engine.override_power(4.5, "redness", actor="tech", step=1)
        with pytest.raises(Refused, match=r"the override was for step 3, which has not started"):
            engine.override_power(6.0, "later", actor="tech", step=3)
        assert "user_action" not in [k for _, k, _ in rig.events[recorded:]]
        await rig.finished()
        with pytest.raises(
            Refused, match=r"the override was for step 2, which has ended; no step is running"
        ):
            engine.override_power(6.0, "late", actor="tech", step=2)

    run(Rig(TWO_STEPS), script)


@pytest.mark.parametrize(
    ("watts", "reason", "message"),
    [
        (4.0, "", "a power override needs a reason"),
        (4.0, "   ", "a power override needs a reason"),
        (math.nan, "x", "override power must be a finite number of watts >= 0, got nan"),
        (-0.1, "x", "override power must be a finite number of watts >= 0, got -0.1"),
        (6.01, "x", "override 6.01 W exceeds the limit of 6.00 W"),
    ],
)
def test_an_override_is_refused_with_the_reason(watts: float, reason: str, message: str) -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        with pytest.raises(Refused, match=message):
            rig.engine.override_power(watts, reason, actor="tech", step=1)
        assert "user_action" not in rig.kinds()
        rig.engine.override_power(6.0, "at the limit", actor="tech", step=1)
        rig.engine.override_power(0.0, "nothing", actor="tech", step=1)
        assert rig.kinds().count("user_action") == 2

    run(Rig(TWO_STEPS, max_override_w=6.0), script)


# ------------------------------------------------------------------------------------------ the way out
def test_an_abort_leaves_the_laser_off_and_verified() -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        await rig.emit()
        await asyncio.sleep(0.3)
        mark = len(rig.world.journal.calls)
        assert rig.task is not None
        rig.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rig.task
        names = rig.world.journal.names()[mark:]
        assert names[0] == "laser.off_now" and "laser.off_verified" in names
        assert not rig.world.laser.output_on
        assert rig.world.sup.state is S.ARMED and not rig.world.sup.readings.step_active
        assert "protocol_step_end" not in rig.kinds()

    run(Rig([CONSTANT_2S]), script)


def test_an_end_whose_laser_off_cannot_be_verified_is_a_fault() -> None:
    async def script(rig: Rig) -> None:
        await rig.step_active()
        await rig.emit()
        rig.world.laser.off_unconfirmed = True
        assert rig.task is not None
        rig.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rig.task
        sup = rig.world.sup
        assert sup.state is S.FAULT and sup.fault is not None
        assert sup.fault.event_type == "interlock_failure"
        assert sup.fault.what.startswith("laser output off not verified at the end: ")
        rig.world.laser.off_unconfirmed = False

    run(Rig([CONSTANT_2S]), script)


def _fail_next_setpoint(world: World, code: int) -> list[float]:
    """The laser answers the next setpoint with driver error ``code`` (once); returns what is written
    after that."""
    written: list[float] = []
    original = world.laser.set_power
    failed = False

    async def set_power(watts: float) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise ArroyoError("laser", "set current", (decode_error(code),))
        written.append(watts)
        await original(watts)

    world.laser.set_power = set_power  # type: ignore[method-assign]
    return written


def test_a_setpoint_meeting_the_interlocks_opening_is_written_again() -> None:
    async def script(rig: Rig) -> None:
        world = rig.world
        await rig.step_active()
        await rig.emit()
        world.release_pedal()
        await rig.until(lambda: world.sup.state is S.ARMED, "armed, the footpedal up")
        written = _fail_next_setpoint(world, 501)
        rig.engine.override_power(4.0, "redness", actor="tech", step=1)
        await rig.until(lambda: world.sup.commanded_w == 4.0, "the setpoint written again")
        assert written == [4.0]
        assert rig.task is not None and not rig.task.done()

    run(Rig(TWO_STEPS), script)


@pytest.mark.parametrize(("code", "pedal"), [(501, "down"), (502, "up")])
def test_any_other_setpoint_error_ends_the_run_with_the_laser_off(code: int, pedal: str) -> None:
    async def script(rig: Rig) -> None:
        world = rig.world
        await rig.step_active()
        await rig.emit()
        if pedal == "up":
            world.release_pedal()
            await rig.until(lambda: world.sup.state is S.ARMED, "armed, the footpedal up")
        _fail_next_setpoint(world, code)
        rig.engine.override_power(4.0, "redness", actor="tech", step=1)
        assert rig.task is not None
        with pytest.raises(ArroyoError):
            await rig.finished()
        assert not world.laser.output_on
        assert not world.sup.readings.step_active

    run(Rig(TWO_STEPS), script)


# ---------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize("loop_hz", [0.99, 1000.01, math.nan, math.inf])
def test_a_loop_rate_outside_1_to_1000_hz_is_refused(loop_hz: float) -> None:
    world = World()
    with pytest.raises(ValueError, match=r"treatment loop frequency must be 1\.\.1000 Hz"):
        TreatmentEngine(
            world.sup, [CONSTANT_2S], move_ring=_never, record=_ignore, loop_hz=loop_hz, max_override_w=1
        )


@pytest.mark.parametrize("loop_hz", [1.0, 1000.0])
def test_the_loop_rate_may_be_1_or_1000_hz(loop_hz: float) -> None:
    world = World()
    engine = TreatmentEngine(
        world.sup, [CONSTANT_2S], move_ring=_never, record=_ignore, loop_hz=loop_hz, max_override_w=1
    )
    assert engine.period_s == 1.0 / loop_hz


def test_the_loop_rate_is_10_hz_unless_given() -> None:
    world = World()
    engine = TreatmentEngine(world.sup, [CONSTANT_2S], move_ring=_never, record=_ignore, max_override_w=1)
    assert engine.period_s == 0.1


def test_a_plan_needs_a_step() -> None:
    with pytest.raises(ValueError, match="a plan needs at least one step"):
        TreatmentEngine(World().sup, [], move_ring=_never, record=_ignore, max_override_w=1)


async def _never(mm: float) -> float:
    raise AssertionError("no move expected")


def _ignore(kind: str, **columns: Any) -> None:
    pass


# ------------------------------------------------------------------------------------------ the seed protocol
def test_the_seed_protocol_delivers_495_joules_and_a_pedal_release_only_prolongs_it() -> None:
    """The seed's example protocol as the library ships it (60 s at 5 W, then a 30 s ramp from 5 to 8 W),
    checked as a session checks it, with the footpedal up for 5 s from 20 s into step 1: step 1 lasts 65 s,
    step 2 its 30 s, the laser is on for 90 s, and the energy summed as the session sums it (every 10 ms
    sample of the power the laser gives) is the protocol's 495 J."""
    text = (Path(control.__file__).parent / "protocol_library" / "seed_example.json").read_text("utf-8")
    plan = check_protocol(text, ValidationLimits(10.0, 2.0, 5.0, "test"))
    assert plan.expected_energy_j == pytest.approx(495.0)
    summary = SummaryAccumulator()

    async def script(rig: Rig) -> None:
        world = rig.world

        async def sample() -> None:
            while True:
                on = world.laser.output_on
                summary.add(rig.now(), world.laser.power_w if on else 0.0, on)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            await rig.step_active()
            on = await rig.emit()
            await asyncio.sleep(20.0)
            world.release_pedal()
            await rig.until(lambda: not world.laser.output_on, "the output off with the pedal up")
            await asyncio.sleep(5.0)
            await rig.emit()
            assert await rig.finished() is Outcome.COMPLETED
            await asyncio.sleep(0.05)
        finally:
            sampler.cancel()
        starts = [t for t, _ in rig.of("protocol_step_start")]
        ends = [t for t, _ in rig.of("protocol_step_end")]
        assert len(starts) == len(ends) == 2
        assert starts[0] == pytest.approx(on, abs=0.02)
        assert ends[0] - starts[0] == pytest.approx(65.0, abs=0.05)
        assert ends[1] - starts[1] == pytest.approx(30.0, abs=0.05)
        assert world.sup.treating_seconds() == pytest.approx(90.0, abs=0.05)

    run(Rig(list(plan.steps)), script)
    result = summary.summary()
    assert result.laser_on_time_s == pytest.approx(90.0, abs=0.05)
    assert result.energy_j == pytest.approx(495.0, rel=0.005)
    assert result.max_power_w == pytest.approx(8.0, abs=0.05)
