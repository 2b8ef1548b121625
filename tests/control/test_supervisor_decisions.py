"""Decisions the supervisor makes for the rest of the controller and for the console: the laser's read-back
judged against the commanded output (50 ms after a switch), the photodiode deviation it publishes, the
operator actions each state permits, the session's power ceiling and the permission to emit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from supervisor_fakes import DEVICES, World
from supervisor_support import world_from

from control.supervisor import (
    ACTION_STATES,
    OUTPUT_READBACK_SETTLE_S,
    LaserReading,
    Limits,
    SafetyEntry,
    SafetySupervisor,
    SystemState,
    Term,
    permitted_actions,
)
from control.vocabulary import OperatorAction, Severity
from storage.models import utc_now

S = SystemState
A = OperatorAction


@pytest.fixture
async def world() -> AsyncIterator[World]:
    rig = World()
    try:
        yield rig
    finally:
        await rig.sup.close()


def _laser(world: World, on: bool, asked_after_switch_s: float) -> LaserReading:
    asked = world.sup.output_changed_at + asked_after_switch_s
    return LaserReading(output_on=on, current_ma=None, asked_at=asked, at=world.clock())


# ------------------------------------------------------------------------------------ laser read-back
def test_the_read_back_settles_for_50_ms() -> None:
    assert OUTPUT_READBACK_SETTLE_S == 0.050


async def test_output_reading_on_while_commanded_off_is_an_emergency_fault(world: World) -> None:
    await world.to_ready()
    world.clock.advance(0.2)
    world.sup.update_laser(_laser(world, on=True, asked_after_switch_s=0.051))
    await world.settle()
    assert world.sup.state is S.FAULT
    fault = world.sup.fault
    assert fault is not None and fault.what == "laser output reads ON while commanded off"
    assert fault.term is Term.DEVICES
    entries = world.log.of_type("interlock_failure")
    assert entries and entries[-1].severity == "emergency"
    assert not world.sup.output_commanded_on


async def test_a_read_back_asked_within_50_ms_of_the_switch_is_not_judged(world: World) -> None:
    await world.to_ready()
    world.clock.advance(0.2)
    world.sup.update_laser(_laser(world, on=True, asked_after_switch_s=0.050))
    world.sup.update_laser(_laser(world, on=True, asked_after_switch_s=0.010))
    await world.settle()
    assert world.sup.state is S.READY
    assert world.sup.readings.laser_output_on is True  # the reading itself is kept


async def test_output_dropping_while_treating_is_an_interlock_failure(world: World) -> None:
    await world.to_treating()
    world.sup.update_laser(_laser(world, on=False, asked_after_switch_s=0.060))
    await world.settle()
    assert world.sup.state is S.FAULT
    fault = world.sup.fault
    assert fault is not None and fault.what == "laser output dropped while treating (interlock?)"
    assert not world.laser.output_on


async def test_output_on_while_treating_agrees_and_keeps_treating(world: World) -> None:
    await world.to_treating()
    world.sup.update_laser(_laser(world, on=True, asked_after_switch_s=0.200))
    await world.settle()
    assert world.sup.state is S.TREATING


# ------------------------------------------------------------------------------- published figures
async def test_the_published_deviation_is_the_one_judged_with_the_half_watt_floor(world: World) -> None:
    await world.to_ready()
    assert world.sup.photodiode_deviation_percent(0.1) is None  # nothing is judged while commanded off
    await world.sup.set_power(0.2)
    world.set_step(True)
    await world.sup.arm()
    world.press_pedal()
    await world.settle()
    assert world.sup.state is S.TREATING
    # 0.1 W measured against 0.2 W commanded: 20 % of the 0.5 W floor, not 50 % of the setpoint.
    assert world.sup.photodiode_deviation_percent(0.1) == pytest.approx(-20.0)
    await world.sup.set_power(4.0)
    assert world.sup.photodiode_deviation_percent(4.6) == pytest.approx(15.0)


def test_each_state_permits_the_operator_actions_of_the_console() -> None:
    assert permitted_actions(S.IDLE) == []
    assert permitted_actions(S.READY) == [A.ARM, A.OVERRIDE_POWER, A.ABORT]
    assert permitted_actions(S.ARMED) == [A.PAUSE, A.OVERRIDE_POWER, A.ABORT]
    assert permitted_actions(S.TREATING) == [A.PAUSE, A.OVERRIDE_POWER, A.ABORT]
    assert permitted_actions(S.PAUSED) == [A.ARM, A.RESUME, A.OVERRIDE_POWER, A.ABORT]
    assert permitted_actions(S.FAULT) == [A.ABORT, A.RESET_FAULT]
    assert set(ACTION_STATES) == set(OperatorAction)


async def test_the_session_power_ceiling_is_the_lowest_of_three_limits(world: World) -> None:
    world.sup.limits = Limits(max_power_w=10.0)
    assert world.sup.session_power_ceiling(8.0, 12.0) == 8.0
    assert world.sup.session_power_ceiling(12.0, 9.5) == 9.5
    world.sup.limits = Limits(max_power_w=6.0)
    assert world.sup.session_power_ceiling(8.0, 12.0) == 6.0


async def test_may_emit_is_true_exactly_while_treating_with_every_term_holding(world: World) -> None:
    await world.to_armed()
    assert not world.sup.may_emit()  # the footpedal is up
    world.press_pedal()
    await world.settle()
    assert world.sup.state is S.TREATING and world.sup.may_emit()
    world.release_pedal()
    await world.settle()
    assert world.sup.state is S.ARMED and not world.sup.may_emit()
    world.set_storage(False)
    await world.settle()
    assert world.sup.state is S.FAULT and not world.sup.may_emit()


async def test_a_burst_of_log_entries_is_written_together_in_order_with_the_time_each_was_made() -> None:
    """A sink that takes 50 ms per entry (one database write each) is handed a burst of 40 entries at once:
    the queue drains in one or two turns, not 40 x 50 ms, the entries reach it in the order they were made,
    and each keeps the time it was made, not the time it was written."""
    world = world_from(0.0)
    written: list[SafetyEntry] = []
    calls_at_once = 0
    busy = 0

    async def slow_sink(entry: SafetyEntry) -> None:
        nonlocal calls_at_once, busy
        written.append(entry)
        busy += 1
        calls_at_once = max(calls_at_once, busy)
        await asyncio.sleep(0.05)
        busy -= 1

    sup = SafetySupervisor(world.laser, world.board, slow_sink, clock=world.clock, devices=DEVICES)
    sup.start()
    try:
        made = []
        for n in range(40):
            sup.log("state_change", Severity.INFO, f"entry {n}", action=None)
            made.append(utc_now())
        started = time.monotonic()
        await asyncio.wait_for(sup.drain_log(), timeout=5.0)
        took = time.monotonic() - started
    finally:
        await sup.close()
    assert [e.description for e in written] == [f"entry {n}" for n in range(40)]
    assert calls_at_once > 1, "each entry waited for the one before it"
    assert took < 1.0, f"40 entries took {took:.2f} s"
    for entry, after in zip(written, made, strict=True):
        assert entry.timestamp is not None and entry.timestamp <= after
    assert written[0].timestamp is not None and written[-1].timestamp is not None
    assert (written[-1].timestamp - written[0].timestamp).total_seconds() < 0.5
