"""The safety supervisor against a fake rig that models the hardware interlock (docs/safety.md).

Each test asserts what an operator would notice: the state on the banner, whether light comes out of the
fake laser, whether the board is armed, and the safety-log rows in the order they were written.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from supervisor_fakes import TEC_SETPOINT_C, LaserOutputError, World

from control.supervisor import (
    LOOP_LATENESS_WINDOW_S,
    MAX_READING_AGE_S,
    PHOTODIODE_PERSISTENCE_S,
    TRANSITIONS,
    ActuatorReading,
    BoardLink,
    Refused,
    SystemState,
    Term,
)
from devices.safety import EventKind, NotReady, SafetyEvent

S = SystemState


@pytest.fixture
async def world() -> AsyncIterator[World]:
    rig = World()
    try:
        yield rig
    finally:
        await rig.sup.close()


def assert_safe(world: World) -> None:
    """Output off (actually and as commanded) and the board disarmed."""
    assert not world.laser.output_on
    assert not world.sup.output_commanded_on
    assert not world.board.armed


# ------------------------------------------------------------------------------------------ transitions
async def _reach(world: World, state: SystemState) -> None:
    """Bring the rig to ``state`` through the supervisor's public commands and the rig's inputs only."""
    sup = world.sup
    if state is S.IDLE:
        sup.start()
        world.feed_healthy()
    elif state is S.READY:
        await world.to_ready()
    elif state is S.ARMED:
        await world.to_armed()
    elif state is S.TREATING:
        await world.to_treating()
    elif state is S.PAUSED:
        await world.to_armed()
        await sup.pause()
    else:
        await world.to_ready()
        world.set_estop(True)
        world.set_estop(False)  # released again: only the latched fault remains
    await world.settle()
    assert sup.state is state


Command = Callable[[World], Awaitable[object]]
COMMANDS: dict[str, Command] = {
    "open_session": lambda w: w.sup.open_session(),
    "arm": lambda w: w.sup.arm(),
    "disarm": lambda w: w.sup.disarm(),
    "pause": lambda w: w.sup.pause(),
    "resume": lambda w: w.sup.resume(),
    "stop": lambda w: w.sup.stop(),
    "end_session": lambda w: w.sup.end_session("done"),
    "protocol_complete": lambda w: w.sup.protocol_complete(),
    "reset": lambda w: w.sup.reset(1, "alice"),
}
R = None  # refused
#: What each operator command leads to from each state (None: refused with the reason, nothing changes).
OUTCOMES: dict[SystemState, dict[str, SystemState | None]] = {
    S.IDLE: {
        "open_session": S.READY, "arm": R, "disarm": R, "pause": R, "resume": R, "stop": S.IDLE,
        "end_session": S.IDLE, "protocol_complete": S.IDLE, "reset": R,
    },
    S.READY: {
        "open_session": R, "arm": S.ARMED, "disarm": R, "pause": R, "resume": R, "stop": S.READY,
        "end_session": S.IDLE, "protocol_complete": S.READY, "reset": R,
    },
    S.ARMED: {
        "open_session": R, "arm": R, "disarm": S.READY, "pause": S.PAUSED, "resume": R, "stop": S.PAUSED,
        "end_session": S.IDLE, "protocol_complete": S.READY, "reset": R,
    },
    S.TREATING: {
        "open_session": R, "arm": R, "disarm": S.READY, "pause": S.PAUSED, "resume": R, "stop": S.PAUSED,
        "end_session": S.IDLE, "protocol_complete": S.READY, "reset": R,
    },
    S.PAUSED: {
        "open_session": R, "arm": R, "disarm": R, "pause": R, "resume": S.ARMED, "stop": S.PAUSED,
        "end_session": S.IDLE, "protocol_complete": S.READY, "reset": R,
    },
    S.FAULT: {
        "open_session": R, "arm": R, "disarm": R, "pause": R, "resume": R, "stop": S.FAULT,
        "end_session": S.FAULT, "protocol_complete": S.FAULT, "reset": S.READY,
    },
}  # fmt: skip
CASES = [(state, name) for state in SystemState for name in COMMANDS]


@pytest.mark.parametrize(("state", "command"), CASES, ids=[f"{s.value}-{c}" for s, c in CASES])
async def test_each_command_in_each_state(world: World, state: SystemState, command: str) -> None:
    """Every operator command from every state, through the public methods only: it leads where the table
    says, every change it makes is a transition of :data:`TRANSITIONS`, and a refused one changes nothing."""
    sup = world.sup
    await _reach(world, state)
    seen: list[tuple[SystemState, SystemState]] = []
    sup.on_state_change(lambda a, b, _reason: seen.append((a, b)))
    armed, emitting = world.board.armed, world.laser.output_on
    expected = OUTCOMES[state][command]
    if expected is None:
        with pytest.raises(Refused):
            await COMMANDS[command](world)
        await world.settle()
        assert sup.state is state
        assert seen == []
        assert (world.board.armed, world.laser.output_on) == (armed, emitting)
    else:
        await COMMANDS[command](world)
        await world.settle()
        assert sup.state is expected
        assert all(new in TRANSITIONS[old] for old, new in seen), seen
        assert [new for _, new in seen][-1:] == ([] if expected is state else [expected])
        if expected is not S.ARMED:
            assert not world.laser.output_on
    assert not world.laser.output_on or sup.state is S.TREATING


async def test_emission_starts_only_from_armed(world: World) -> None:
    """TREATING is entered only from ARMED, and only by the footpedal with a step active."""
    seen: list[tuple[SystemState, SystemState]] = []
    world.sup.on_state_change(lambda a, b, _reason: seen.append((a, b)))
    await world.to_treating()
    world.release_pedal()
    await world.sup.pause()
    world.press_pedal()  # pressed while PAUSED: nothing
    await world.settle()
    assert world.sup.state is S.PAUSED and not world.laser.output_on
    assert [old for old, new in seen if new is S.TREATING] == [S.ARMED]


def test_fault_is_left_only_towards_ready_or_idle() -> None:
    assert TRANSITIONS[S.FAULT] == {S.READY, S.IDLE}
    assert all(S.FAULT in targets for state, targets in TRANSITIONS.items() if state is not S.FAULT)
    assert [state for state, targets in TRANSITIONS.items() if S.TREATING in targets] == [S.ARMED]


async def test_commands_in_the_wrong_state_are_refused_and_change_nothing(world: World) -> None:
    sup = world.sup
    await world.to_ready()
    with pytest.raises(Refused, match="nothing to pause in ready"):
        await sup.pause()
    with pytest.raises(Refused, match="cannot arm in ready"):
        await sup.resume()
    with pytest.raises(Refused, match="not armed"):
        await sup.disarm()
    with pytest.raises(Refused, match="no fault to reset"):
        await sup.reset(1, "alice", session_open=True)
    assert sup.state is S.READY
    await sup.end_session("done")
    with pytest.raises(Refused, match="cannot arm in idle"):
        await sup.arm()
    assert sup.state is S.IDLE
    assert_safe(world)


@pytest.mark.parametrize("state", [S.FAULT, S.ARMED, S.TREATING, S.PAUSED])
async def test_open_session_only_from_idle(world: World, state: SystemState) -> None:
    """Opening a session is IDLE -> READY; elsewhere it must be refused, above all in FAULT, where it
    would otherwise unlatch the fault without the acknowledged reset."""
    sup = world.sup
    await world.to_treating()
    if state is S.FAULT:
        world.tec_c = TEC_SETPOINT_C + 3.0
        world.refresh()
        await world.settle()
        world.tec_c = TEC_SETPOINT_C
        world.refresh()
    elif state is S.ARMED:
        world.release_pedal()
    elif state is S.PAUSED:
        await sup.pause()
    await world.settle()
    assert sup.state is state
    armed = world.board.armed
    with pytest.raises(Refused):
        await sup.open_session()
    await world.settle()
    assert sup.state is state
    assert world.board.armed == armed
    assert (sup.fault is not None) == (state is S.FAULT)


# ---------------------------------------------------------------------------------------------- arming
ArmBreaker = Callable[[World], None]


def _pedal(w: World) -> None:
    w.press_pedal()


def _motor_off(w: World) -> None:
    w.motor_pwm = 0
    w.refresh()


def _vibration_low(w: World) -> None:
    w.vibration_g = 0.5
    w.refresh()


def _tec_off(w: World) -> None:
    w.tec_on = False
    w.refresh()


def _tec_drift(w: World) -> None:
    w.tec_c = TEC_SETPOINT_C + 1.5
    w.refresh()


def _no_photodiode_cal(w: World) -> None:
    w.sup.photodiode_to_watts = None


def _stale(w: World) -> None:
    w.clock.advance(0.150)


def _link(w: World) -> None:
    w.set_link("actuator", "reconnecting")


def _actuator_fault(w: World) -> None:
    w.sup.update_actuator(ActuatorReading(None, "following error", w.clock()))


def _calibrations(w: World) -> None:
    w.set_calibrations(False)


def _storage(w: World) -> None:
    w.set_storage(False)


def _heartbeat(w: World) -> None:
    w.sup.update_board_link(BoardLink(w.clock() - 0.6, watchdog_expired=False))


ARM_CASES: list[tuple[str, ArmBreaker, str]] = [
    ("footpedal", _pedal, "release the footpedal before arming"),
    ("motor off", _motor_off, "cannot arm: smoothing motor off"),
    ("vibration", _vibration_low, r"cannot arm: vibration below 0\.80 g"),
    ("tec off", _tec_off, "cannot arm: TEC output off"),
    ("tec drift", _tec_drift, r"cannot arm: TEC 1\.50 degC from its setpoint \(window 1\.00\)"),
    ("photodiode", _no_photodiode_cal, "cannot arm: no active photodiode calibration"),
    ("stale", _stale, "safety reading 150 ms old"),
    ("link", _link, "cannot arm: actuator link reconnecting"),
    ("actuator", _actuator_fault, "cannot arm: actuator stopped: following error"),
    ("calibrations", _calibrations, "laser calibration deactivated"),
    ("storage", _storage, "cannot arm: storage cannot record: disk full"),
    ("heartbeat", _heartbeat, "cannot arm: heartbeat not acknowledged in time"),
]


@pytest.mark.parametrize(("breaker", "reason"), [c[1:] for c in ARM_CASES], ids=[c[0] for c in ARM_CASES])
async def test_arm_refused_with_the_reason(world: World, breaker: ArmBreaker, reason: str) -> None:
    await world.to_ready()
    world.set_step(True)
    breaker(world)
    with pytest.raises(Refused, match=reason):
        await world.sup.arm()
    await world.settle()
    assert world.sup.state is S.READY
    assert "board.arm" not in world.journal.names()
    assert_safe(world)


async def test_arm_needs_no_step_and_waits_for_the_pedal(world: World) -> None:
    await world.to_ready()
    await world.sup.arm()
    assert world.sup.state is S.ARMED
    assert world.board.armed
    world.press_pedal()
    await world.settle()
    assert world.sup.state is S.ARMED, "no step active: the pedal alone must not start emission"
    assert not world.laser.output_on


@pytest.mark.parametrize("cause", ["estop", "watchdog"])
async def test_estop_or_watchdog_in_ready_faults_and_arm_is_refused(world: World, cause: str) -> None:
    await world.to_ready()
    if cause == "estop":
        world.set_estop(True)
    else:
        world.expire_watchdog()
    await world.settle()
    assert world.sup.state is S.FAULT
    with pytest.raises(Refused, match="cannot arm in fault"):
        await world.sup.arm()
    assert "board.arm" not in world.journal.names()
    assert_safe(world)


# ---------------------------------------------------------------------------------------- the footpedal
async def test_pedal_down_with_a_step_active_emits(world: World) -> None:
    await world.to_armed()
    world.press_pedal()
    assert world.sup.state is S.TREATING
    await world.settle()
    assert world.laser.output_on
    assert world.laser.switch_ons == [(S.TREATING, True)]
    world.run_for(0.2)
    assert world.sup.state is S.TREATING
    assert world.sup.failing() == []


async def test_pedal_up_turns_the_output_off_before_any_await(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    world.run_for(0.5)
    assert sup.treating_seconds() == pytest.approx(0.6)
    # The software path alone: the event reaches the supervisor while the board still drives LASER_ENABLE.
    mark = len(world.journal.calls)
    sup.on_board(SafetyEvent(EventKind.FOOTPEDAL, False, world.clock()))
    assert world.journal.names()[mark:], "nothing was sent to the laser"
    assert set(world.journal.names()[mark:]) == {"laser.off_now"}
    assert not world.laser.output_on
    assert sup.state is S.ARMED
    world.release_pedal()
    await world.settle()
    assert world.board.armed, "pedal release is normal operation: still armed"
    stopped_at = sup.treating_seconds()
    assert stopped_at == pytest.approx(0.6)
    world.run_for(1.0)
    assert sup.treating_seconds() == pytest.approx(stopped_at), "the step clock must stop with the pedal"
    assert sup.state is S.ARMED
    assert not world.laser.output_on
    world.press_pedal()
    await world.settle()
    assert sup.state is S.TREATING and world.laser.output_on
    world.run_for(0.3)
    assert sup.treating_seconds() == pytest.approx(stopped_at + 0.3)
    await world.settle()
    changes = [
        (e.event_type, e.description)
        for e in world.log.entries
        if e.event_type in ("state_change", "footpedal_released")
    ]
    assert changes[-3:] == [
        ("state_change", "armed -> treating: footpedal pressed"),
        ("footpedal_released", "treating -> armed: footpedal released"),
        ("state_change", "armed -> treating: footpedal pressed"),
    ]


async def test_step_end_returns_to_armed_with_output_off(world: World) -> None:
    await world.to_treating()
    world.set_step(False)
    assert world.sup.state is S.ARMED
    assert not world.sup.output_commanded_on
    await world.settle()
    assert not world.laser.output_on
    world.set_step(True)
    await world.settle()
    assert world.sup.state is S.TREATING and world.laser.output_on


# --------------------------------------------------------------------------------------------- E-stop
async def test_estop_while_treating(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    mark = len(world.journal.calls)
    world.set_estop(True)
    assert sup.state is S.FAULT
    assert not sup.output_commanded_on
    off = world.journal.index("laser.off_now", mark)
    await world.settle()
    assert_safe(world)
    assert sup.fault is not None and sup.fault.event_type == "e_stop_pressed"
    assert sup.fault.term is Term.ESTOP
    verified = world.journal.index("laser.off_verified", mark)
    disarm = world.journal.index("board.disarm", mark)
    logged = world.journal.log_index("e_stop_pressed", mark)
    assert off < verified < disarm < logged
    first_log = min(i for i, c in enumerate(world.journal.calls) if i >= mark and c.device == "log")
    assert off < first_log, "the laser is turned off before anything is logged"
    entry = world.log.of_type("e_stop_pressed")[-1]
    assert entry.severity == "emergency"
    assert entry.system_state == "fault" and entry.laser_state == "off"
    assert "verified" in (entry.action_taken or "") and "disarmed" in (entry.action_taken or "")


# ------------------------------------------------------------------------------ terms false while treating
def _smoothing(w: World) -> None:
    w.vibration_g = 0.6
    w.refresh()


def _stale_tick(w: World) -> None:
    w.clock.advance(MAX_READING_AGE_S + 0.001)
    w.sup.tick()


def _tec_link(w: World) -> None:
    w.set_link("tec", "faulty")


def _laser_link(w: World) -> None:
    w.set_link("laser", "reconnecting")


def _calibrations_flag(w: World) -> None:
    w.sup.set_calibrations(False, "no active laser calibration")


def _enable_dropped(w: World) -> None:
    w.lose_arming()


TREATING_CASES: list[tuple[str, ArmBreaker, str, Term]] = [
    ("smoothing", _smoothing, "smoothing_device_fault", Term.SMOOTHING),
    ("motor off", _motor_off, "smoothing_device_fault", Term.SMOOTHING),
    ("tec drift", _tec_drift, "interlock_failure", Term.TEC),
    ("tec off", _tec_off, "interlock_failure", Term.TEC),
    ("stale", _stale_tick, "interlock_failure", Term.DEVICES),
    ("tec link", _tec_link, "interlock_failure", Term.DEVICES),
    ("laser link", _laser_link, "interlock_failure", Term.DEVICES),
    ("actuator", _actuator_fault, "interlock_failure", Term.DEVICES),
    ("storage", _storage, "interlock_failure", Term.STORAGE),
    ("calibrations", _calibrations_flag, "interlock_failure", Term.CALIBRATIONS),
    ("heartbeat", _heartbeat, "system_watchdog_timeout", Term.WATCHDOG),
    ("laser enable", _enable_dropped, "interlock_failure", Term.WATCHDOG),
]


@pytest.mark.parametrize(
    ("breaker", "event_type", "term"), [c[1:] for c in TREATING_CASES], ids=[c[0] for c in TREATING_CASES]
)
async def test_term_false_while_treating_faults(
    world: World, breaker: ArmBreaker, event_type: str, term: Term
) -> None:
    sup = world.sup
    await world.to_treating()
    mark = len(world.journal.calls)
    breaker(world)
    assert sup.state is S.FAULT
    assert not sup.output_commanded_on
    off = world.journal.index("laser.off_now", mark)
    await world.settle()
    assert_safe(world)
    assert sup.fault is not None
    assert (sup.fault.event_type, sup.fault.term) == (event_type, term)
    logged = world.journal.log_index(event_type, mark)
    assert off < world.journal.index("laser.off_verified", mark) < logged
    assert world.journal.index("board.disarm", mark) < logged
    assert world.log.of_type(event_type)[-1].severity == "critical"
    assert world.laser.switch_ons == [(S.TREATING, True)]


async def test_laser_link_loss_switches_off_synchronously(world: World) -> None:
    await world.to_treating()
    mark = len(world.journal.calls)
    world.sup.set_link("laser", "faulty")
    assert world.journal.names()[mark] == "laser.off_now"
    assert not world.laser.output_on


async def test_reading_exactly_at_the_age_limit_is_still_fresh(world: World) -> None:
    await world.to_treating()
    world.clock.advance(MAX_READING_AGE_S - 0.001)
    world.sup.tick()
    assert world.sup.state is S.TREATING
    world.clock.advance(0.002)
    world.sup.tick()
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and "ms old" in world.sup.fault.what


def _ticks_until_fault(world: World, period_s: float, limit_s: float) -> float:
    """Tick every ``period_s`` with no new readings; the age (s) of the readings when the fault latched."""
    assert world.last_refresh is not None
    last_reading = world.last_refresh
    while world.clock() - last_reading < limit_s:
        world.clock.advance(period_s)
        world.sup.tick()
        if world.sup.state is S.FAULT:
            return world.clock() - last_reading
    raise AssertionError(f"still {world.sup.state.value} with readings {limit_s} s old")


async def test_a_held_up_loop_is_allowed_its_lateness_and_no_more(world: World) -> None:
    await world.to_treating()
    for _ in range(5):
        world.clock.advance(0.010)
        world.refresh()
        world.sup.tick()
    world.clock.advance(0.150)  # the controller's loop was held up: no reading could be read meanwhile
    world.sup.tick()
    assert world.sup.state is S.TREATING
    age = _ticks_until_fault(world, 0.010, 1.0)
    assert MAX_READING_AGE_S < age <= MAX_READING_AGE_S + 0.140 + 0.011
    await world.settle()
    assert_safe(world)
    assert world.sup.fault is not None and world.sup.fault.term is Term.DEVICES


async def test_a_slow_loop_cannot_stretch_reading_ages_without_bound(world: World) -> None:
    await world.to_treating()
    world.sup.tick()
    age = _ticks_until_fault(world, 0.050, 2.0)
    assert age <= MAX_READING_AGE_S + LOOP_LATENESS_WINDOW_S + 0.050
    await world.settle()
    assert_safe(world)


async def test_calibrations_withdrawn_while_treating_faults(world: World) -> None:
    """The controller drops both the flag and the photodiode conversion when calibrations go."""
    await world.to_treating()
    world.set_calibrations(False)
    await world.settle()
    assert_safe(world)
    assert world.sup.state is S.FAULT
    entry = world.log.entries[-1]
    assert entry.details is not None
    assert entry.details["failing"][Term.CALIBRATIONS.value] == "laser calibration deactivated"


async def test_watchdog_expiry_while_treating(world: World) -> None:
    """The firmware drops LASER_ENABLE, then sends EVT:WDT:1: the fault latches on the first and the
    watchdog expiry is logged as an emergency as well."""
    await world.to_treating()
    world.expire_watchdog()
    await world.settle()
    assert_safe(world)
    assert world.sup.state is S.FAULT
    assert world.sup.fault is not None and world.sup.fault.term is Term.WATCHDOG
    wdt = world.log.of_type("system_watchdog_timeout")
    assert [e.severity for e in wdt] == ["emergency"]


async def test_watchdog_expiry_while_armed(world: World) -> None:
    await world.to_armed()
    world.expire_watchdog()
    await world.settle()
    assert_safe(world)
    assert world.sup.fault is not None
    assert (world.sup.fault.event_type, world.sup.fault.term) == ("system_watchdog_timeout", Term.WATCHDOG)


async def test_enable_dropping_with_the_pedal_released_is_not_a_fault(world: World) -> None:
    await world.to_treating()
    world.release_pedal()
    await world.settle()
    assert world.sup.state is S.ARMED
    assert world.sup.fault is None


def _storage_fails(w: World) -> None:
    w.set_storage(False)


def _tec_far_off(w: World) -> None:
    w.tec_c = TEC_SETPOINT_C + 3.0
    w.feed_tec()


SAME_TURN_CAUSES: dict[str, ArmBreaker] = {
    "tec drift": _tec_far_off,
    "storage": _storage_fails,
    "smoothing": _smoothing,
    "calibrations": _calibrations_flag,
}


@pytest.mark.parametrize("cause", sorted(SAME_TURN_CAUSES))
async def test_no_light_when_a_fault_arrives_with_the_pedal_press(world: World, cause: str) -> None:
    """A software fault in the same loop turn as the pedal press (LASER_ENABLE is still high: the board is
    disarmed only afterwards): the output must not be switched on in FAULT."""
    await world.to_armed()
    world.press_pedal()
    SAME_TURN_CAUSES[cause](world)
    assert world.sup.state is S.FAULT
    await world.settle()
    assert world.laser.switch_ons == [], "the output was switched on after the fault had latched"
    assert_safe(world)
    assert world.laser.off_failures == 0, "output off could not be verified after the fault"


async def test_no_light_when_a_fault_arrives_while_switching_on(world: World) -> None:
    """The fault arrives while the switch-on is still querying the driver, before "output on" is written."""
    await world.to_armed()
    world.press_pedal()
    await asyncio.sleep(0)
    assert world.journal.names()[-1] == "laser.on_verified"
    _tec_far_off(world)
    assert world.sup.state is S.FAULT
    await world.settle()
    assert world.laser.switch_ons == [], "the output was switched on after the fault had latched"
    assert_safe(world)


# ------------------------------------------------------------------------------------------- photodiode
async def test_photodiode_warning_is_logged_once_without_fault(world: World) -> None:
    await world.to_treating()
    world.photodiode_factor = 0.8  # 20 % low: above the 15 % warning, below the 30 % fault threshold
    world.run_for(0.480)
    assert world.log.of_type("photodiode_out_of_range") == []
    world.run_for(1.0)
    await world.settle()
    warnings = world.log.of_type("photodiode_out_of_range")
    assert len(warnings) == 1
    assert warnings[0].severity == "warning"
    assert warnings[0].details is not None
    assert warnings[0].details["measured_power"] == pytest.approx(1.6)
    assert len(world.sup.warnings) == 1
    assert world.sup.state is S.TREATING and world.laser.output_on


async def test_photodiode_fault_after_persistence(world: World) -> None:
    await world.to_treating()
    world.photodiode_factor = 0.5  # 50 % low
    world.run_for(PHOTODIODE_PERSISTENCE_S - 0.020)
    assert world.sup.state is S.TREATING
    world.run_for(0.040)
    assert world.sup.state is S.FAULT
    await world.settle()
    assert_safe(world)
    assert world.sup.fault is not None
    assert (world.sup.fault.event_type, world.sup.fault.term) == ("photodiode_fault", Term.PHOTODIODE)
    entry = world.log.of_type("photodiode_fault")[-1]
    assert entry.details is not None and entry.details["measured_power"] == pytest.approx(1.0)


async def test_photodiode_deviation_shorter_than_persistence_is_no_fault(world: World) -> None:
    await world.to_treating()
    world.photodiode_factor = 0.5
    world.run_for(0.490)
    world.photodiode_factor = 1.0
    world.run_for(0.6)
    world.photodiode_factor = 0.5
    world.run_for(0.3)
    await world.settle()
    assert world.sup.state is S.TREATING and world.laser.output_on
    assert world.sup.fault is None


async def test_fault_deviation_is_judged_by_tick_between_samples(world: World) -> None:
    await world.to_treating()
    world.photodiode_factor = 0.5
    world.run_for(0.090)
    start = world.clock()
    # The other readings stay fresh; the board stream's samples arrive, only the tick judges between them.
    for _ in range(60):
        world.clock.advance(0.010)
        world.sup.readings.board_at = world.clock()
        world.sup.tick()
        if world.sup.state is S.FAULT:
            break
    assert world.sup.state is S.FAULT
    assert world.clock() - start <= PHOTODIODE_PERSISTENCE_S
    await world.settle()
    assert_safe(world)


async def test_stray_light_while_commanded_off_faults(world: World) -> None:
    await world.to_armed()
    world.stray_w = 1.0
    world.run_for(0.1)
    assert world.sup.state is S.FAULT
    await world.settle()
    assert_safe(world)
    assert world.sup.fault is not None and world.sup.fault.term is Term.PHOTODIODE
    entry = world.log.of_type("photodiode_out_of_range")[-1]
    assert entry.severity == "emergency"


async def test_light_decaying_just_after_switch_off_is_no_fault(world: World) -> None:
    await world.to_treating()
    world.release_pedal()
    world.stray_w = 1.0  # light still seen within the grace after "output off"
    world.run_for(0.040)
    world.stray_w = 0.0
    world.run_for(0.2)
    await world.settle()
    assert world.sup.state is S.ARMED


# ---------------------------------------------------------------------------------------------- reset
async def test_reset_refused_while_the_cause_is_there(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    world.tec_c = TEC_SETPOINT_C + 2.0
    world.refresh()
    await world.settle()
    assert sup.state is S.FAULT
    with pytest.raises(Refused, match=r"the cause is still there: TEC 2\.00 degC from its setpoint"):
        await sup.reset(7, "alice", session_open=True)
    assert sup.state is S.FAULT
    world.tec_c = TEC_SETPOINT_C
    world.refresh()
    assert sup.state is S.FAULT, "the fault stays latched when the cause goes"
    await sup.reset(7, "alice", session_open=True)
    await world.settle()
    assert sup.state is S.READY
    assert sup.fault is None
    entry = world.log.of_type("fault_reset")[-1]
    assert entry.tech_id == 7
    assert "alice" in entry.description and "TEC" in entry.description
    assert_safe(world)


async def test_reset_without_a_session_goes_idle(world: World) -> None:
    await world.to_treating()
    world.set_storage(False)
    world.set_storage(True)
    await world.sup.reset(3, "bob", session_open=False)
    await world.settle()
    assert world.sup.state is S.IDLE
    assert "bob" in world.log.of_type("fault_reset")[-1].description


async def test_reset_refused_while_estop_pressed_whatever_the_fault(world: World) -> None:
    await world.to_treating()
    world.set_storage(False)
    world.set_estop(True)
    world.set_storage(True)
    await world.settle()
    with pytest.raises(Refused, match="E-stop pressed"):
        await world.sup.reset(1, "alice", session_open=True)
    world.set_estop(False)
    await world.sup.reset(1, "alice", session_open=True)
    assert world.sup.state is S.READY


async def test_reset_after_watchdog_clears_it_and_needs_arming_again(world: World) -> None:
    await world.to_treating()
    world.expire_watchdog()
    world.release_pedal()
    world.refresh()
    await world.settle()
    await world.sup.reset(1, "alice", session_open=True)
    assert "board.clear_watchdog" in world.journal.names()
    assert world.sup.state is S.READY
    assert not world.board.watchdog_expired and not world.board.armed
    await world.sup.arm()
    world.press_pedal()
    await world.settle()
    assert world.sup.state is S.TREATING and world.laser.output_on


async def test_stray_light_reset_refused_until_the_light_is_gone(world: World) -> None:
    """A refused reset must not forget the cause: a second attempt with the light still there is refused."""
    sup = world.sup
    await world.to_armed()
    world.stray_w = 1.0
    world.run_for(0.1)
    await world.settle()
    assert sup.state is S.FAULT
    with pytest.raises(Refused, match="light measured"):
        await sup.reset(1, "alice", session_open=True)
    world.refresh()
    with pytest.raises(Refused, match="light measured"):
        await sup.reset(1, "alice", session_open=True)
    assert sup.state is S.FAULT


@pytest.mark.parametrize("failure", ["laser off unconfirmed", "disarm unanswered"])
async def test_reset_keeps_the_fault_when_off_or_disarm_is_not_confirmed(world: World, failure: str) -> None:
    """Reset turns the output off and disarms; if either cannot be confirmed, the fault stays latched."""
    sup = world.sup
    await world.to_treating()
    world.set_storage(False)
    await world.settle()
    world.set_storage(True)
    if failure == "laser off unconfirmed":
        world.laser.off_unconfirmed = True
    else:
        world.board.disarm_unanswered = True
    try:
        await sup.reset(1, "alice", session_open=True)
    except Refused:
        pass
    await world.settle()
    assert world.laser.off_failures + world.board.disarm_failures == 1
    assert sup.state is S.FAULT, "a reset whose output off or disarm failed was accepted"
    assert world.log.of_type("fault_reset") == []


async def test_an_unconfirmed_disarm_is_sent_again_while_the_fault_is_latched(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    world.board.disarm_unanswered = True
    world.set_storage(False)
    await world.settle()
    assert sup.state is S.FAULT and sup.disarm_pending
    assert world.board.armed, "the unanswered DISARM left the board armed"
    world.board.disarm_unanswered = False
    world.set_storage(True)
    world.run_for(0.5)
    sup.tick()
    await world.settle()
    assert world.board.armed, "no retry before a second has passed"
    world.run_for(0.6)
    sup.tick()
    await world.settle()
    assert not world.board.armed and not sup.disarm_pending
    assert sup.state is S.FAULT, "a confirmed DISARM does not reset the fault"
    assert world.log.of_type("board_disarmed")


async def test_no_automatic_re_enable_after_reset(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    world.set_storage(False)
    await world.settle()
    world.set_storage(True)
    await sup.reset(1, "alice", session_open=True)
    await world.settle()
    assert sup.state is S.READY
    # The pedal is still down: nothing may come out, however long it is held.
    world.run_for(0.5)
    await world.settle()
    assert sup.state is S.READY and not world.laser.output_on
    with pytest.raises(Refused, match="release the footpedal"):
        await sup.arm()
    world.release_pedal()
    await sup.arm()
    await world.settle()
    assert sup.state is S.ARMED and not world.laser.output_on
    world.press_pedal()
    await world.settle()
    assert sup.state is S.TREATING and world.laser.output_on
    assert world.laser.switch_ons == [(S.TREATING, True)] * 2


# ---------------------------------------------------------------------------------------- pause, stop
async def test_pause_and_resume(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    await sup.pause()
    await world.settle()
    assert sup.state is S.PAUSED
    assert_safe(world)
    with pytest.raises(Refused, match="release the footpedal"):
        await sup.resume()
    world.release_pedal()
    await sup.resume()
    assert sup.state is S.ARMED and world.board.armed
    assert not world.laser.output_on
    world.press_pedal()
    await world.settle()
    assert sup.state is S.TREATING and world.laser.output_on


async def test_stop_from_treating(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    mark = len(world.journal.calls)
    await sup.stop()
    await world.settle()
    assert sup.state is S.PAUSED
    assert_safe(world)
    names = world.journal.names()[mark:]
    assert names[0] == "laser.off_now"
    assert names.index("laser.off_verified") < names.index("board.disarm")


async def test_end_session_and_protocol_complete(world: World) -> None:
    sup = world.sup
    await world.to_treating()
    await sup.protocol_complete()
    await world.settle()
    assert sup.state is S.READY
    assert_safe(world)
    assert not sup.readings.step_active
    await sup.end_session("treatment finished")
    assert sup.state is S.IDLE


async def test_a_session_closed_in_fault_keeps_the_fault_latched(world: World) -> None:
    """An abort while a fault is latched closes the session but not the fault: it still needs its reset,
    which then leads to IDLE (no session), from where a new session opens and arms."""
    sup = world.sup
    await world.to_treating()
    world.set_estop(True)
    await world.settle()
    await sup.end_session("abandon")
    await world.settle()
    assert sup.state is S.FAULT and not sup.session_open
    assert_safe(world)
    with pytest.raises(Refused, match="cannot open a session in fault"):
        await sup.open_session()
    with pytest.raises(Refused, match="no session is open"):
        await sup.end_session("again")
    world.set_estop(False)
    world.release_pedal()
    await sup.reset(2, "alice")
    assert sup.state is S.IDLE
    await sup.open_session()
    await sup.arm()
    assert sup.state is S.ARMED


async def test_a_fault_in_idle_is_reset_back_to_idle(world: World) -> None:
    """No session: a watchdog expiry latches a fault (the board refuses ARM until it is cleared); the
    reset clears it and leads back to IDLE, from where a session opens and arms."""
    sup = world.sup
    sup.start()
    world.feed_healthy()
    await world.settle()
    world.expire_watchdog()
    await world.settle()
    assert sup.state is S.FAULT and sup.fault is not None and sup.fault.term is Term.WATCHDOG
    assert sup.arm_blockers() == [
        "cannot arm in fault",
        "cannot arm: safety board watchdog expired",
    ]
    await sup.reset(2, "alice")
    assert sup.state is S.IDLE and not world.board.watchdog_expired
    await sup.open_session()
    await sup.set_power(2.0)
    assert sup.arm_blockers() == []
    await sup.arm()
    assert sup.state is S.ARMED


# ---------------------------------------------------------------------------------------------- power
@pytest.mark.parametrize("watts", [10.5, -0.1, math.nan, math.inf])
async def test_set_power_refused(world: World, watts: float) -> None:
    await world.to_ready()
    calls = len(world.journal.calls)
    with pytest.raises(Refused, match=r"outside 0\.\.10\.0 W"):
        await world.sup.set_power(watts)
    assert world.sup.commanded_w == 2.0
    assert world.laser.power_w == 2.0
    assert len(world.journal.calls) == calls


async def test_set_power_at_the_limit(world: World) -> None:
    await world.to_ready()
    await world.sup.set_power(10.0)
    assert world.sup.commanded_w == 10.0 and world.laser.power_w == 10.0


# ------------------------------------------------------------------------------------- the fake rig itself
async def test_fake_board_drives_laser_enable_like_the_firmware(world: World) -> None:
    board, laser = world.board, world.laser
    await board.arm()
    assert not board.laser_enable
    assert [e.kind for e in board.set_pedal(True)] == [EventKind.FOOTPEDAL, EventKind.ENABLE]
    assert board.laser_enable
    await laser.on_verified()
    assert laser.output_on
    events = board.set_estop(True)
    assert [(e.kind, e.value) for e in events] == [(EventKind.ESTOP, True), (EventKind.ENABLE, False)]
    assert not laser.output_on, "the laser drops its output when its interlock input falls"
    with pytest.raises(NotReady, match="ESTOP"):
        await board.arm()
    board.set_estop(False)
    assert board.laser_enable
    events = board.expire_watchdog()
    assert [(e.kind, e.value) for e in events] == [(EventKind.ENABLE, False), (EventKind.WDT, True)]
    assert not board.armed
    with pytest.raises(NotReady, match="WDT"):
        await board.arm()
    await board.clear_watchdog()
    assert not board.laser_enable, "after WDT_CLEAR the board needs ARM again"
    with pytest.raises(LaserOutputError, match="E-501"):
        await laser.on_verified()
    assert not laser.output_on


async def test_fake_laser_honours_still_wanted(world: World) -> None:
    await world.board.arm()
    world.board.set_pedal(True)
    with pytest.raises(LaserOutputError, match="not sent"):
        await world.laser.on_verified(lambda: False)
    assert not world.laser.output_on
    await world.laser.on_verified(lambda: True)
    assert world.laser.output_on
    world.laser.off_now()
    assert not world.laser.output_on
