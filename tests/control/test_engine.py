"""The protocol engine against the supervisor on a fake rig (a hand-driven clock): when a step is recorded as
started, and which step a power override belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from supervisor_fakes import World

from control.engine import TreatmentEngine
from control.protocols import PlanStep
from control.supervisor import Refused, SystemState
from devices.laser import ArroyoError, decode_error

STEPS = [
    PlanStep(1, 0.0, 1.0, 5.0, 5.0, 3.0, "constant"),
    PlanStep(2, 1.0, 2.0, 5.0, 8.0, 3.0, "linear"),
]


class Run:
    """An engine over the world's supervisor, its recorded events, and its task."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.engine = TreatmentEngine(
            world.sup,
            STEPS,
            move_ring=self._move,
            record=lambda kind, **columns: self.events.append((kind, columns)),
            loop_hz=100.0,
            max_override_w=10.0,
        )
        self.task: asyncio.Task[Any] | None = None

    async def _move(self, mm: float) -> float:
        return mm

    def kinds(self) -> list[str]:
        """The recorded event types, in order."""
        return [kind for kind, _ in self.events]


@pytest.fixture
async def run() -> AsyncIterator[Run]:
    world = World()
    world.sup.start()
    world.feed_healthy()
    await world.sup.open_session()
    started = Run(world)
    started.task = asyncio.create_task(started.engine.run())
    try:
        yield started
    finally:
        started.task.cancel()
        await asyncio.gather(started.task, return_exceptions=True)
        await world.sup.close()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Let the engine run (real time) until ``condition`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def treat(run: Run) -> None:
    """Arm and press the footpedal: the running step emits."""
    await run.world.sup.arm()
    run.world.press_pedal()
    await until(lambda: run.world.laser.output_on, "the laser emitting")
    assert run.world.sup.state is SystemState.TREATING


async def test_a_step_is_recorded_as_started_only_once_it_emits(run: Run) -> None:
    world = run.world
    await until(lambda: world.sup.readings.step_active, "step 1 active")
    await asyncio.sleep(0.1)  # ten turns of the engine's loop in READY
    assert "protocol_step_start" not in run.kinds()
    assert "power_set" not in run.kinds()
    await treat(run)
    await until(lambda: "power_set" in run.kinds(), "the first setpoint recorded")
    starts = [columns for kind, columns in run.events if kind == "protocol_step_start"]
    assert [s["details"]["protocol_step"] for s in starts] == [1]
    assert starts[0]["commanded_w"] == 5.0
    assert run.kinds().index("protocol_step_start") < run.kinds().index("power_set")


async def test_an_override_typed_for_an_ended_step_is_refused_and_changes_nothing(run: Run) -> None:
    world, engine = run.world, run.engine
    await until(lambda: world.sup.readings.step_active, "step 1 active")
    await treat(run)
    # Step 1 runs: an override for it applies.
    details = engine.override_power(4.5, "redness", actor="tech", step=1)
    assert details["protocol_step"] == 1
    await until(lambda: world.sup.commanded_w == 4.5, "override applied to step 1")
    # Step 1 ends (its clock is the emitting time) while an override for it is being typed.
    world.run_for(1.05)
    await until(lambda: engine.progress is not None and engine.progress.number == 2, "step 2 running")
    assert engine.progress is not None and engine.progress.override_w is None
    recorded = len(run.events)
    ended = r"the override was for step 1, which has ended; step 2 of 2 is running"
    with pytest.raises(Refused, match=ended):
        engine.override_power(4.5, "redness", actor="tech", step=1)
    assert not any(kind == "user_action" for kind, _ in run.events[recorded:])
    # Step 2 ramps from 5 W as planned, not held at the refused 4.5 W.
    await until(lambda: world.sup.state is SystemState.TREATING, "step 2 emitting")
    world.run_for(1.0)
    await until(lambda: world.sup.commanded_w > 6.0, "the ramp goes on")
    assert engine.progress is not None and engine.progress.override_w is None
    # An override for a step that has not started yet is refused too.
    with pytest.raises(Refused, match="which has not started"):
        engine.override_power(6.0, "later", actor="tech", step=3)
    # The running step's own override applies.
    engine.override_power(6.0, "tolerance", actor="tech", step=2)
    await until(lambda: world.sup.commanded_w == 6.0, "override applied to step 2")


def fail_next_setpoint(world: World, code: int) -> list[float]:
    """Make the laser answer the next setpoint with driver error ``code`` (once); returns the setpoints
    written after that."""
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


async def test_a_setpoint_meeting_the_interlocks_opening_is_written_again(run: Run) -> None:
    world, engine = run.world, run.engine
    await until(lambda: world.sup.readings.step_active, "step 1 active")
    await treat(run)
    world.release_pedal()
    await until(lambda: world.sup.state is SystemState.ARMED, "armed, the footpedal up")
    written = fail_next_setpoint(world, 501)
    engine.override_power(4.0, "redness", actor="tech", step=1)
    await until(lambda: world.sup.commanded_w == 4.0, "the setpoint written again")
    assert written == [4.0]
    assert run.task is not None and not run.task.done()


async def test_any_other_setpoint_error_ends_the_run_with_the_laser_off(run: Run) -> None:
    world, engine = run.world, run.engine
    await until(lambda: world.sup.readings.step_active, "step 1 active")
    await treat(run)
    fail_next_setpoint(world, 501)  # while still treating: not expected, the run fails
    engine.override_power(4.0, "redness", actor="tech", step=1)
    assert run.task is not None
    await until(run.task.done, "the run to end")
    with pytest.raises(ArroyoError):
        run.task.result()
    assert not world.laser.output_on
