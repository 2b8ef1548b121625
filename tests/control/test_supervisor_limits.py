"""The supervisor's numbers, pinned with the values the safety design gives (docs: the permission to emit):
a reading may be 100 ms old and no older; the photodiode is judged from 50 ms after the output or the
setpoint changes; a deviation above 15 % for 500 ms is a warning and above 30 % for 500 ms a fault, taken
against the commanded power but never against less than 0.5 W; light above 0.25 W while the output is off
is a fault once seen for 20 ms, counted from 50 ms after the switch-off. Each window opens at the last
sample judged without its condition (or when judging began, if later), not at the first sample showing it.

Each limit is tested on both sides, at the exact value where the rule says so, with literal numbers: a test
that computed its times from the module's own constants would follow a wrong constant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from supervisor_fakes import World
from supervisor_support import (
    FailingLog,
    armed_from,
    at,
    give_readings,
    light,
    readings_stamped,
    repeat_pedal_pressed,
    treating_from_zero,
    world_from,
)

from control.supervisor import Refused, SystemState, Term
from devices.safety import EventKind, SafetyEvent
from tests.support import wait_until

S = SystemState


@pytest.fixture
async def worlds() -> AsyncIterator[list[World]]:
    """Rigs a test makes; each is closed at the end."""
    made: list[World] = []
    yield made
    for world in made:
        await world.sup.close()


def assert_off_and_disarmed(world: World) -> None:
    assert not world.laser.output_on
    assert not world.sup.output_commanded_on
    assert not world.board.armed


# ------------------------------------------------------------------------------------ reading age 100 ms
async def test_a_reading_exactly_100_ms_old_is_fresh_and_one_older_is_stale(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.clock.now = 0.1  # every reading was stamped at 0.0: exactly 100 ms old
    world.sup.tick()
    assert world.sup.state is S.TREATING and world.laser.output_on
    world.clock.now = 0.101
    world.sup.tick()
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.DEVICES
    assert world.sup.fault.what.startswith("laser reading 101 ms old")
    await world.settle()
    assert_off_and_disarmed(world)


async def test_one_stale_device_is_enough(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.clock.now = 0.095
    world.sup.tick()
    give_readings(world.sup, laser_at=0.095, actuator_at=0.095, board_at=0.095, heartbeat_ok_at=0.095)
    world.clock.now = 0.101  # only the TEC's reading (0.0) is over 100 ms old
    world.sup.tick()
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.what == "tec reading 101 ms old"


async def test_arming_is_refused_with_a_reading_older_than_100_ms(worlds: list[World]) -> None:
    world = await armed_from(0.0)
    worlds.append(world)
    await world.sup.disarm()
    assert world.sup.arm_blockers(now=0.1) == []
    assert world.sup.arm_blockers(now=0.101) == [
        "cannot arm: laser reading 101 ms old; tec reading 101 ms old; actuator reading 101 ms old; "
        "safety reading 101 ms old"
    ]


# ------------------------------------------------------------------- photodiode: settle and persistence
async def test_a_fault_deviation_persisting_exactly_500_ms_after_the_settle_window_faults(
    worlds: list[World],
) -> None:
    """2.5 W commanded, 1.25 W measured (50 % low) from the moment the output switched on (0.0 s). The
    first 50 ms are not judged, so the 500 ms count from 0.05 s: still treating at 0.5 s, a fault at
    exactly 0.55 s."""
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 1.25)
    for t in (0.0, 0.02, 0.049):
        at(world, t)  # the light is still settling: not judged
    at(world, 0.05)
    at(world, 0.3)
    at(world, 0.5)
    assert world.sup.state is S.TREATING and world.laser.output_on
    at(world, 0.54)
    assert world.sup.state is S.TREATING
    at(world, 0.05 + 0.5)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None
    assert (world.sup.fault.event_type, world.sup.fault.term) == ("photodiode_fault", Term.PHOTODIODE)
    assert world.sup.fault.what == "measured 1.25 W against 2.50 W commanded for over 500 ms"
    await world.settle()
    assert_off_and_disarmed(world)


async def test_a_deviation_ending_before_500_ms_starts_the_count_again(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 1.25)
    at(world, 0.05)
    at(world, 0.5)
    light(world, 2.5)
    at(world, 0.52)
    light(world, 1.25)
    at(world, 0.53)
    at(world, 0.56)
    at(world, 1.0)
    assert world.sup.state is S.TREATING
    at(world, 1.03)
    assert world.sup.state is S.FAULT


async def test_a_setpoint_change_opens_a_new_settle_window(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 2.5)
    at(world, 1.0)
    await world.sup.set_power(5.0)  # at 1.0 s; the light still shows 2.5 W (50 % low) while it rises
    for t in (1.0, 1.03, 1.049, 1.05, 1.3, 1.5):
        at(world, t)
    assert world.sup.state is S.TREATING, "the deviation counts from the end of the settle window"
    at(world, 1.56)
    assert world.sup.state is S.FAULT


async def test_the_same_setpoint_again_opens_no_settle_window(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 1.25)
    at(world, 0.5)
    await world.sup.set_power(2.5)  # unchanged: the deviation seen since 0.5 s keeps counting
    at(world, 0.52)
    at(world, 1.0)
    assert world.sup.state is S.FAULT


async def test_the_fault_persistence_is_also_judged_by_the_tick(worlds: list[World]) -> None:
    """No board sample after the deviation started: the periodic tick alone latches the fault at 500 ms."""
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 1.25)
    at(world, 0.05)
    for t in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
        world.clock.now = t
        readings_stamped(world.sup, t)
        world.sup.tick()
    assert world.sup.state is S.TREATING
    world.clock.now = 0.05 + 0.5
    readings_stamped(world.sup, world.clock())
    world.sup.tick()
    assert world.sup.state is S.FAULT


async def test_the_fault_persistence_is_judged_when_it_ends_without_waiting_for_a_sample(
    worlds: list[World],
) -> None:
    """The deviation is seen once, at 0.05 s; then no sample and no tick. The supervisor judges the window
    when it closes (its own timer, 500 ms of real time after it opened), not at the next sample up to 10 ms
    later."""
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 1.25)
    at(world, 0.05)
    world.clock.now = 0.05 + 0.5
    assert world.sup.state is S.TREATING, "nothing judged it yet"
    await wait_until(lambda: world.sup.state is S.FAULT, 3.0, "the fault when the 500 ms window closes")
    assert world.sup.fault is not None and world.sup.fault.term is Term.PHOTODIODE
    await world.settle()
    assert_off_and_disarmed(world)


async def test_a_fault_window_opens_at_the_last_sample_that_showed_no_deviation(worlds: list[World]) -> None:
    """Samples every 10 ms: the last one within the limits at 1.0 s, the deviation first seen at 1.01 s. It
    began at some moment after 1.0 s, and the earliest is assumed: the fault comes 500 ms after 1.0 s, not
    after 1.01 s."""
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 2.5)
    at(world, 1.0)
    light(world, 1.25)
    for t in (1.01, 1.2, 1.499):
        at(world, t)
    assert world.sup.state is S.TREATING
    at(world, 1.5)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.PHOTODIODE
    await world.settle()
    assert_off_and_disarmed(world)


async def test_a_warning_window_opens_at_the_last_sample_within_15_percent(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 2.2)  # 12 %: within
    at(world, 1.0)
    light(world, 2.1)  # 16 %
    for t in (1.01, 1.499):
        at(world, t)
    assert world.sup.warnings == []
    at(world, 1.5)
    assert len(world.sup.warnings) == 1
    await world.settle()


# ------------------------------------------------------------------------ photodiode: 15 % and 30 %
async def _deviate(measured_w: float) -> World:
    """Treating at 2.5 W with ``measured_w`` W measured from 0.05 s to 1.0 s."""
    world = await treating_from_zero(2.5)
    light(world, measured_w)
    t = 0.05
    while t < 1.0:
        at(world, t)
        t = round(t + 0.05, 3)
    return world


@pytest.mark.parametrize(("measured_w", "percent"), [(1.75, 30), (3.25, 30)])
async def test_a_deviation_of_exactly_30_percent_is_a_warning_not_a_fault(
    worlds: list[World], measured_w: float, percent: int
) -> None:
    world = await _deviate(measured_w)
    worlds.append(world)
    assert world.sup.state is S.TREATING and world.laser.output_on
    assert world.sup.warnings == [
        f"photodiode: measured {measured_w:.2f} W against 2.50 W commanded ({percent} % off) for 500 ms"
    ]


@pytest.mark.parametrize("measured_w", [1.7, 3.3])
async def test_a_deviation_just_over_30_percent_is_a_fault(worlds: list[World], measured_w: float) -> None:
    world = await _deviate(measured_w)
    worlds.append(world)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.event_type == "photodiode_fault"


@pytest.mark.parametrize("measured_w", [2.125, 2.875])
async def test_a_deviation_of_exactly_15_percent_is_not_even_a_warning(
    worlds: list[World], measured_w: float
) -> None:
    world = await _deviate(measured_w)
    worlds.append(world)
    await world.settle()
    assert world.sup.state is S.TREATING
    assert world.sup.warnings == []
    assert world.log.of_type("photodiode_out_of_range") == []


async def test_a_deviation_just_over_15_percent_warns_once_after_exactly_500_ms(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 2.1)  # 16 % low
    at(world, 0.05)
    at(world, 0.5)
    assert world.sup.warnings == []
    at(world, 0.05 + 0.5)
    at(world, 0.8)
    assert world.sup.warnings == [
        "photodiode: measured 2.10 W against 2.50 W commanded (16 % off) for 500 ms"
    ]
    await world.settle()
    [entry] = world.log.of_type("photodiode_out_of_range")
    assert entry.severity == "warning"
    assert entry.details == {"expected_power": 2.5, "measured_power": 2.1}
    assert world.sup.state is S.TREATING


async def test_a_warning_that_ended_is_given_again_when_the_deviation_returns(worlds: list[World]) -> None:
    world = await _deviate(2.0)  # 20 %: one warning
    worlds.append(world)
    light(world, 2.5)
    at(world, 1.0)
    light(world, 2.0)
    for t in (1.1, 1.4, 1.61):
        at(world, t)
    assert len(world.sup.warnings) == 2
    assert world.sup.state is S.TREATING


# ------------------------------------------------------------------------------------- the 0.5 W floor
@pytest.mark.parametrize(
    ("measured_w", "faults"),
    [
        (0.41, True),  # 0.16 W off: 32 % of the 0.5 W floor
        (0.39, False),  # 0.14 W off: 28 % of the floor (56 % of the 0.25 W commanded)
        (0.09, True),  # 0.16 W low
        (0.11, False),
    ],
)
async def test_below_half_a_watt_the_deviation_is_taken_against_0_5_w(
    worlds: list[World], measured_w: float, faults: bool
) -> None:
    world = await treating_from_zero(0.25)
    worlds.append(world)
    light(world, measured_w)
    for t in (0.05, 0.3, 0.6):
        at(world, t)
    assert (world.sup.state is S.FAULT) is faults


# -------------------------------------------------------------------------- stray light 0.25 W, 20 ms
async def test_exactly_0_25_w_while_off_is_no_fault(worlds: list[World]) -> None:
    world = await armed_from(0.0)
    worlds.append(world)
    light(world, 0.25)
    for t in (0.05, 0.1, 0.5, 1.0):
        at(world, t)
    assert world.sup.state is S.ARMED
    assert world.sup.fault is None


async def test_light_over_0_25_w_while_off_faults_once_seen_for_20_ms(worlds: list[World]) -> None:
    """The output has been off since -0.05 s: light seen from 0.0 s (the end of the 50 ms grace) is stray;
    a fault at exactly 20 ms of it, not before."""
    world = await armed_from(-0.05)
    worlds.append(world)
    light(world, 0.26)
    at(world, 0.0)
    at(world, 0.01)
    at(world, 0.019)
    assert world.sup.state is S.ARMED
    at(world, 0.02)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.PHOTODIODE
    assert world.sup.fault.what == "light measured (0.26 W) while the output is off"
    await world.settle()
    [entry] = world.log.of_type("photodiode_out_of_range")
    assert entry.severity == "emergency"
    assert_off_and_disarmed(world)


async def test_stray_light_counts_from_the_last_dark_sample(worlds: list[World]) -> None:
    """Off since -0.05 s: dark at 0.0 s, light first seen at 0.01 s; the fault at 0.02 s, 20 ms after the
    last dark sample."""
    world = await armed_from(-0.05)
    worlds.append(world)
    light(world, 0.0)
    at(world, 0.0)
    light(world, 0.26)
    at(world, 0.01)
    at(world, 0.019)
    assert world.sup.state is S.ARMED
    at(world, 0.02)
    assert world.sup.state is S.FAULT
    await world.settle()
    assert_off_and_disarmed(world)


async def test_stray_light_is_judged_when_its_20_ms_end_without_waiting_for_a_sample(
    worlds: list[World],
) -> None:
    world = await armed_from(-0.05)
    worlds.append(world)
    light(world, 0.0)
    at(world, 0.0)
    light(world, 0.26)
    at(world, 0.01)
    world.clock.now = 0.02
    assert world.sup.state is S.ARMED, "nothing judged it yet"
    await wait_until(lambda: world.sup.state is S.FAULT, 3.0, "the fault when the 20 ms window closes")
    await world.settle()
    assert_off_and_disarmed(world)


async def test_stray_light_that_stops_before_20_ms_starts_the_count_again(worlds: list[World]) -> None:
    world = await armed_from(-0.05)
    worlds.append(world)
    light(world, 0.26)
    at(world, 0.0)
    at(world, 0.015)
    light(world, 0.0)
    at(world, 0.016)
    light(world, 0.26)
    at(world, 0.017)
    at(world, 0.03)
    assert world.sup.state is S.ARMED
    at(world, 0.04)
    assert world.sup.state is S.FAULT


async def test_light_within_50_ms_of_the_switch_off_is_not_counted(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5, start=1.0)
    worlds.append(world)
    world.release_pedal()  # output off at 1.0 s
    await world.settle()
    light(world, 1.0)  # the light decays slowly
    for t in (1.0, 1.02, 1.04, 1.049):
        at(world, t)
    assert world.sup.state is S.ARMED
    at(world, 1.06)
    at(world, 1.081)
    assert world.sup.state is S.FAULT


# ----------------------------------------------------------------------------------- switching on
async def test_the_output_failing_to_switch_on_while_treating_is_an_interlock_failure(
    worlds: list[World],
) -> None:
    """The board reports the footpedal pressed but its LASER_ENABLE line stays low: the laser refuses to
    switch on (E-501). The console must not go on showing TREATING with no light."""
    world = await armed_from(0.0)
    worlds.append(world)
    world.sup.on_board(SafetyEvent(EventKind.FOOTPEDAL, True, world.clock()))
    assert world.sup.state is S.TREATING
    await world.settle()
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None
    assert (world.sup.fault.event_type, world.sup.fault.term) == ("interlock_failure", Term.DEVICES)
    assert world.sup.fault.what.startswith("laser output did not switch on: ")
    assert_off_and_disarmed(world)
    assert world.log.of_type("interlock_failure")[-1].severity == "critical"


async def test_a_switch_on_abandoned_because_the_pedal_came_up_is_no_fault(worlds: list[World]) -> None:
    world = await armed_from(0.0)
    worlds.append(world)
    world.press_pedal()
    world.release_pedal()  # before the switch-on could send "output on"
    await world.settle()
    assert world.sup.state is S.ARMED
    assert world.sup.fault is None
    assert world.laser.switch_ons == []
    assert world.journal.names("laser")[-1] == "laser.on_not_sent", "nothing more was sent to the laser"


async def test_a_repeated_pedal_pressed_event_leaves_the_output_on(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    mark = len(world.journal.calls)
    repeat_pedal_pressed(world)
    await world.settle()
    assert world.sup.state is S.TREATING
    assert world.sup.output_commanded_on and world.laser.output_on
    assert "laser.off_now" not in world.journal.names()[mark:]


async def test_a_pedal_released_event_switches_off_at_once(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    mark = len(world.journal.calls)
    world.sup.on_board(SafetyEvent(EventKind.FOOTPEDAL, False, world.clock()))
    assert world.journal.names()[mark:][0] == "laser.off_now"
    assert set(world.journal.names()[mark:]) == {"laser.off_now"}
    assert world.sup.state is S.ARMED and not world.laser.output_on


# ------------------------------------------------------------------------- heartbeat, smoothing, TEC
async def test_a_heartbeat_acknowledged_500_ms_ago_is_in_time_and_one_older_is_not(
    worlds: list[World],
) -> None:
    """The board's watchdog times out after 1 s; the heartbeat must have been acknowledged within half of
    that."""
    world = await armed_from(0.0)
    worlds.append(world)
    await world.sup.disarm()
    give_readings(world.sup, tec_at=0.45, laser_at=0.45, actuator_at=0.45, board_at=0.45)
    for now in (0.4, 0.5):
        assert world.sup.terms(now)[Term.WATCHDOG].ok, now
        assert world.sup.arm_blockers(now=now) == []
    assert world.sup.arm_blockers(now=0.501) == ["cannot arm: heartbeat not acknowledged in time"]
    assert world.sup.terms(0.501)[Term.WATCHDOG].value == "fed 501 ms ago"


async def test_smoothing_holds_at_exactly_0_8_g_and_not_below(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.vibration_g = 0.8
    at(world, 0.01)
    assert world.sup.state is S.TREATING
    world.vibration_g = 0.79
    at(world, 0.02)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.what == "vibration below 0.80 g"


async def test_a_slowly_turning_motor_is_on_and_judged_by_its_vibration(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.motor_pwm = 1
    world.vibration_g = 0.5
    at(world, 0.01)
    assert world.sup.fault is not None and world.sup.fault.what == "vibration below 0.80 g"
    assert world.sup.terms()[Term.SMOOTHING].value == "motor on, 0.50 g"


async def test_the_tec_holds_at_exactly_1_degree_from_its_setpoint(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.tec_c = 26.0  # the setpoint is 25.0 degC
    at(world, 0.01)
    world.tec_c = 24.0
    at(world, 0.02)
    assert world.sup.state is S.TREATING
    world.tec_c = 26.01
    at(world, 0.03)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None
    assert world.sup.fault.what == "TEC 1.01 degC from its setpoint (window 1.00)"


async def test_before_any_reading_every_input_shows_unknown_and_the_motor_off(worlds: list[World]) -> None:
    world = world_from(0.0)
    worlds.append(world)
    values = {term: status.value for term, status in world.sup.terms().items()}
    assert values[Term.FOOTPEDAL] == "unknown"
    assert values[Term.ESTOP] == "unknown"
    assert values[Term.SMOOTHING] == "motor off, unknown"
    assert values[Term.TEC] == "unknown"
    assert values[Term.WATCHDOG] == "fed never"
    assert world.sup.arm_blockers()[0] == "cannot arm in idle"


async def test_the_terms_show_their_live_values_while_treating_and_after_failures(
    worlds: list[World],
) -> None:
    """What the dashboard lists for each term of the permission to emit."""
    world = await treating_from_zero(2.5)
    worlds.append(world)
    light(world, 2.5)
    at(world, 0.06)
    shown = {term.value: (status.ok, status.value) for term, status in world.sup.terms().items()}
    assert shown == {
        "footpedal": (True, "pressed"),
        "estop": (True, "released"),
        "watchdog": (True, "fed 0 ms ago"),
        "smoothing": (True, "motor on, 1.20 g"),
        "tec": (True, "25.00 degC (set 25.00)"),
        "photodiode": (True, "2.50 W"),
        "devices": (True, "all fresh"),
        "calibrations": (True, "active"),
        "step": (True, "active"),
        "storage": (True, "writing"),
    }
    world.set_step(False)
    world.set_storage(False)
    world.set_link("tec", "faulty")
    terms = world.sup.terms()
    assert (terms[Term.STEP].ok, terms[Term.STEP].value) == (False, "none")
    assert (terms[Term.STORAGE].ok, terms[Term.STORAGE].value) == (False, "FAILED")
    assert terms[Term.STORAGE].detail == "storage cannot record: disk full"
    assert terms[Term.DEVICES].value == "tec link faulty"
    assert world.sup.state is S.FAULT


async def test_may_emit_holds_only_while_treating_with_every_term_true(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    assert world.sup.may_emit()
    world.release_pedal()
    assert not world.sup.may_emit(), "ARMED with the footpedal up"
    await world.sup.disarm()
    world.press_pedal()
    assert world.sup.state is S.READY and world.sup.terms()[Term.FOOTPEDAL].ok
    assert not world.sup.may_emit(), "READY: every term may hold, the state does not allow emission"


async def test_a_fault_whose_laser_off_is_not_confirmed_says_so_in_the_log(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.laser.off_unconfirmed = True
    world.set_storage(False)
    await world.settle()
    entry = world.log.of_type("interlock_failure")[-1]
    assert entry.action_taken == (
        "laser output off NOT verified: no reply to the output query; safety board disarmed"
    )
    world.laser.off_unconfirmed = False


async def test_zero_watts_is_a_setpoint_and_below_zero_is_refused(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    await world.sup.set_power(0.0)
    assert world.sup.commanded_w == 0.0 and world.laser.power_w == 0.0
    with pytest.raises(Refused, match=r"power -0\.01 W is outside 0\.\.10\.0 W"):
        await world.sup.set_power(-0.01)
    assert world.sup.commanded_w == 0.0


async def test_a_safety_log_that_cannot_be_written_is_a_storage_fault_at_once(worlds: list[World]) -> None:
    world = await treating_from_zero(2.5)
    worlds.append(world)
    assert isinstance(world.log, FailingLog)
    world.log.failing = True
    world.release_pedal()  # its safety-log row cannot be written
    await world.settle()
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.STORAGE
    assert world.sup.fault.what == "storage cannot record: safety log write failed: disk full"
    assert_off_and_disarmed(world)


async def test_emission_before_any_setpoint_is_judged_against_0_w(worlds: list[World]) -> None:
    """No setpoint was ever written: the commanded power is 0 W, and no light is what is expected."""
    world = world_from(0.0)
    worlds.append(world)
    world.sup.start()
    world.feed_healthy()
    await world.sup.open_session()
    world.set_step(True)
    await world.sup.arm()
    world.press_pedal()
    await world.settle()
    assert world.sup.state is S.TREATING and world.sup.commanded_w == 0.0
    for t in (0.05, 0.3, 0.6, 1.0):
        at(world, t)
    assert world.sup.state is S.TREATING
    assert world.sup.terms()[Term.PHOTODIODE].value == "0.00 W"


@pytest.mark.parametrize(("state", "severity"), [(S.IDLE, "critical"), (S.READY, "emergency")])
async def test_an_expired_watchdog_reported_by_a_reading_faults_in_any_state(
    worlds: list[World], state: SystemState, severity: str
) -> None:
    """The board's status shows its watchdog expired (no push event): a fault even in IDLE, where the board
    refuses to arm until the reset clears it; critical there, an emergency once a session is open."""
    world = world_from(0.0)
    worlds.append(world)
    world.sup.start()
    world.feed_healthy()
    if state is S.READY:
        await world.sup.open_session()
    give_readings(world.sup, watchdog_expired=True)
    await world.settle()
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.WATCHDOG
    assert world.sup.fault.how_to_reset == (
        "check the safety board link; the reset clears its watchdog, then acknowledge the fault with your "
        "password to reset"
    )
    [entry] = world.log.of_type("system_watchdog_timeout")
    assert entry.severity == severity


async def test_one_sample_with_the_pedal_up_and_a_fault_latches_the_fault(worlds: list[World]) -> None:
    """A board sample shows the footpedal up and the smoothing failed at once (the pedal's own event was
    lost): the fault latches, and nothing tries to go back to ARMED from it."""
    world = await treating_from_zero(2.5)
    worlds.append(world)
    world.board.pedal = False  # no FOOTPEDAL event: only the stream sample shows it
    world.vibration_g = 0.5
    at(world, 0.01)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.SMOOTHING
    await world.settle()
    assert_off_and_disarmed(world)


async def test_an_unanswered_disarm_is_sent_again_after_exactly_1_s(worlds: list[World]) -> None:
    world = await armed_from(0.0)
    worlds.append(world)
    world.board.disarm_unanswered = True
    world.set_storage(False)  # a fault at 0.0 s: its DISARM gets no reply
    await world.settle()
    assert world.sup.state is S.FAULT and world.sup.disarm_pending
    assert world.board.disarm_failures == 1
    world.clock.now = 0.999
    world.sup.tick()
    await world.settle()
    assert world.board.disarm_failures == 1
    world.board.disarm_unanswered = False
    world.clock.now = 1.0
    world.sup.tick()
    await world.settle()
    assert not world.sup.disarm_pending and not world.board.armed
    assert world.log.of_type("board_disarmed")[-1].description == "safety board disarmed on retry"
