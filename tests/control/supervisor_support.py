"""Pieces for the tests that pin the supervisor's numbers: the one place those tests hand readings to the
supervisor, and a fake rig whose clock starts where the test says.

Times near zero are used on purpose: ``0.05 + 0.5 - 0.05`` is exactly ``0.5`` in binary floating point, and
``0.1 - 0.0`` exactly ``0.1``, whereas the same differences taken near 1000 s are off in the last bits. A
test of "exactly 100 ms old" needs the exact value, or it tests nothing.
"""

from __future__ import annotations

from supervisor_fakes import DEVICES, SafetyLog, World

from control.supervisor import SafetyEntry, SafetySupervisor, SystemState
from devices.safety import EventKind, SafetyEvent


class FailingLog(SafetyLog):
    """The safety-log sink, which fails every write once ``failing`` is set (a full disk)."""

    failing = False

    async def __call__(self, entry: SafetyEntry) -> None:
        if self.failing:
            raise OSError("disk full")
        await super().__call__(entry)


def give_readings(sup: SafetySupervisor, **readings: object) -> None:
    """Hand device readings (names of the supervisor's reading fields) to the supervisor all at once, then
    let it judge them once, as after one of the monitors' typed updates. Every reading these tests give goes
    through here; giving them together means no intermediate judgement sees half of them."""
    current = sup.readings
    for name, value in readings.items():
        if not hasattr(current, name):
            raise AttributeError(f"no reading named {name!r}")
        setattr(current, name, value)
    sup.set_motor_pwm(current.motor_pwm)  # unchanged value; the supervisor judges every term now


def readings_stamped(sup: SafetySupervisor, at: float) -> None:
    """Every device reading and the heartbeat acknowledged, stamped ``at`` (s); values unchanged."""
    give_readings(sup, tec_at=at, laser_at=at, actuator_at=at, board_at=at, heartbeat_ok_at=at)


def world_from(start: float) -> World:
    """A fake rig whose monotonic clock reads ``start`` (s) when its supervisor is made."""
    world = World()
    world.clock.now = start
    world.log = FailingLog(world.clock, world.journal)
    world.sup = SafetySupervisor(world.laser, world.board, world.log, clock=world.clock, devices=DEVICES)
    world.board.deliver = world.sup.on_board
    return world


def light(world: World, watts: float) -> None:
    """From now on the photodiode sees exactly ``watts`` W, whatever the laser emits."""
    world.photodiode_factor = 0.0
    world.stray_w = watts


def at(world: World, t: float) -> None:
    """Move the clock to ``t`` (s) and feed fresh readings and one board sample stamped then."""
    world.clock.now = t
    world.refresh()


def repeat_pedal_pressed(world: World) -> None:
    """The board reports the footpedal pressed again (its state did not change)."""
    world.sup.on_board(SafetyEvent(EventKind.FOOTPEDAL, True, world.clock()))


async def treating_from_zero(watts: float, start: float = 0.0) -> World:
    """A rig TREATING at ``watts`` W with the clock still at ``start``: the output was switched on at
    ``start``, and every reading was stamped then."""
    world = world_from(start)
    world.sup.start()
    world.feed_healthy()
    await world.sup.open_session()
    await world.sup.set_power(watts)
    world.set_step(True)
    await world.sup.arm()
    world.press_pedal()
    await world.settle()
    assert world.sup.state is SystemState.TREATING and world.laser.output_on
    assert world.clock() == start
    return world


async def armed_from(start: float) -> World:
    """A rig ARMED at 2.0 W (the output never switched on) with the clock still at ``start``."""
    world = world_from(start)
    world.sup.start()
    world.feed_healthy()
    await world.sup.open_session()
    await world.sup.set_power(2.0)
    world.set_step(True)
    await world.sup.arm()
    await world.settle()
    assert world.sup.state is SystemState.ARMED
    return world
