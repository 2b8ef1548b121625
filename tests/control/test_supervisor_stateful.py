"""The safety supervisor under random sequences of inputs and operator commands (hypothesis stateful).

Each test case gets its own event loop (:class:`asyncio.Runner`); every rule runs in it and then lets the
supervisor's tasks finish and its safety log drain, so the invariants see a settled system. The invariants
are the safety model of docs/safety.md, checked both through the supervisor's own terms and against the
fake rig's ground truth (the pedal, the E-stop, the board's arming, the TEC, the light on the photodiode).

Two properties are about getting out again: a fault latched in any state (IDLE, READY, ARMED, PAUSED,
TREATING), once its cause has cleared and it has been reset, leads back to where a session opens and arms;
and wherever a sequence of events has left the supervisor, the operator's own moves (reset, end the session,
open one, arm) reach ARMED once the world is healthy again: no state needs a restart to leave.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from hypothesis.strategies import DataObject
from supervisor_fakes import DEVICES, PHOTODIODE_W_PER_V, TEC_SETPOINT_C, World

from control.supervisor import (
    ARMED_STATES,
    MAX_READING_AGE_S,
    PHOTODIODE_FLOOR_W,
    PHOTODIODE_PERSISTENCE_S,
    PHOTODIODE_SETTLE_S,
    SESSION_STATES,
    Limits,
    Refused,
    SafetySupervisor,
    SystemState,
)
from devices.safety import SafetySample

# 200 cases take about 15 s alone; the suite's other worker and the rig tests may slow it several times over.
pytestmark = pytest.mark.timeout(300)

S = SystemState
LIMITS = Limits()
#: Photodiode conditions: (factor on the emitted light, stray light W).
PHOTODIODE_MODES = {
    "in range": (1.0, 0.0),
    "warning": (0.8, 0.0),
    "deviating": (0.5, 0.0),
    "dark": (0.0, 0.0),
    "stray": (1.0, 1.0),
}
#: Sample period of the board stream while readings are fresh, s.
PERIOD_S = 0.010


def _photodiode(mode: str) -> Callable[[World], None]:
    def change(w: World) -> None:
        w.photodiode_factor, w.stray_w = PHOTODIODE_MODES[mode]
        w.feed_sample()

    return change


def _smoothing(pwm: int, vibration_g: float) -> Callable[[World], None]:
    def change(w: World) -> None:
        w.motor_pwm, w.vibration_g = pwm, vibration_g
        w.sup.set_motor_pwm(pwm)
        w.feed_sample()

    return change


def _tec(on: bool, off_by_c: float) -> Callable[[World], None]:
    def change(w: World) -> None:
        w.tec_on, w.tec_c = on, TEC_SETPOINT_C + off_by_c
        w.feed_tec()

    return change


def _link(device: str, state: str) -> Callable[[World], None]:
    return lambda w: w.set_link(device, state)


#: Every input the world can change, by name (the hardware and the devices; not the operator).
INPUTS: dict[str, Callable[[World], None]] = {
    "pedal down": World.press_pedal,
    "pedal up": World.release_pedal,
    "estop pressed": lambda w: w.set_estop(True),
    "estop released": lambda w: w.set_estop(False),
    "watchdog expires": World.expire_watchdog,
    "board drops LASER_ENABLE": World.lose_arming,
    "step active": lambda w: w.set_step(True),
    "step ended": lambda w: w.set_step(False),
    "storage fails": lambda w: w.set_storage(False),
    "storage recovers": lambda w: w.set_storage(True),
    "calibrations lost": lambda w: w.set_calibrations(False),
    "calibrations back": lambda w: w.set_calibrations(True),
    "smoothing running": _smoothing(180, 1.2),
    "vibration low": _smoothing(180, 0.3),
    "motor off": _smoothing(0, 0.3),
    "tec in window": _tec(True, 0.0),
    "tec near edge": _tec(True, 0.9),
    "tec drift": _tec(True, 1.5),
    "tec far off": _tec(True, -4.0),
    "tec output off": _tec(False, 0.0),
    "laser off unconfirmed": lambda w: setattr(w.laser, "off_unconfirmed", True),
    "laser off confirmed": lambda w: setattr(w.laser, "off_unconfirmed", False),
    "board disarm unanswered": lambda w: setattr(w.board, "disarm_unanswered", True),
    "board disarm answered": lambda w: setattr(w.board, "disarm_unanswered", False),
    **{f"photodiode {mode}": _photodiode(mode) for mode in PHOTODIODE_MODES},
    **{
        f"{device} link {state}": _link(device, state)
        for device in DEVICES
        for state in ("open", "faulty", "reconnecting")
    },
}


@dataclass(frozen=True)
class Cause:
    """A fault's cause: how it comes, how it goes, and the states in which it latches a fault."""

    come: Callable[[World], None]
    go: Callable[[World], None]
    states: frozenset[SystemState]


def _stray_light(on: bool) -> Callable[[World], None]:
    def change(w: World) -> None:
        w.stray_w = 1.0 if on else 0.0
        w.run_for(0.1)

    return change


def _deviating(on: bool) -> Callable[[World], None]:
    def change(w: World) -> None:
        w.photodiode_factor = 0.5 if on else 1.0
        w.run_for(PHOTODIODE_PERSISTENCE_S + 0.1)

    return change


EVERYWHERE = frozenset({S.IDLE, S.READY, S.ARMED, S.PAUSED, S.TREATING})
ARMED_ONLY = frozenset({S.ARMED, S.TREATING})
#: Every kind of fault and where it latches one (the other terms only matter while the board is armed).
CAUSES: dict[str, Cause] = {
    "E-stop": Cause(lambda w: w.set_estop(True), lambda w: w.set_estop(False), EVERYWHERE - {S.IDLE}),
    "watchdog": Cause(World.expire_watchdog, lambda w: None, EVERYWHERE),  # the reset clears it
    "stray light": Cause(_stray_light(True), _stray_light(False), EVERYWHERE - {S.TREATING}),
    "photodiode deviating": Cause(_deviating(True), _deviating(False), frozenset({S.TREATING})),
    "storage": Cause(lambda w: w.set_storage(False), lambda w: w.set_storage(True), ARMED_ONLY),
    "TEC drift": Cause(_tec(True, 1.5), _tec(True, 0.0), ARMED_ONLY),
    "TEC link": Cause(_link("tec", "faulty"), _link("tec", "open"), ARMED_ONLY),
    "smoothing": Cause(_smoothing(0, 0.3), _smoothing(180, 1.2), ARMED_ONLY),
    "calibrations": Cause(
        lambda w: w.set_calibrations(False), lambda w: w.set_calibrations(True), ARMED_ONLY
    ),
}


#: Operator commands other than opening a session and reset.
COMMANDS: dict[str, Callable[[SafetySupervisor], Coroutine[Any, Any, None]]] = {
    "arm": lambda sup: sup.arm(),
    "disarm": lambda sup: sup.disarm(),
    "pause": lambda sup: sup.pause(),
    "resume": lambda sup: sup.resume(),
    "stop": lambda sup: sup.stop(),
    "end session": lambda sup: sup.end_session("ended by the operator"),
    "protocol complete": lambda sup: sup.protocol_complete(),
}


class SupervisorMachine(RuleBasedStateMachine):
    """Drives one supervisor in one fake world per test case."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.world = World()
        self.entries_into_treating = 0
        self.transitions = 0
        self.previous_state = S.IDLE
        self.reset_accepted = False
        self.deviating_since: float | None = None
        self.failures_seen = 0
        self.world.sup.on_state_change(self._count_transitions)
        self.world.sample_hooks.append(self._judge_light)
        self.run(self._start())

    # ------------------------------------------------------------------------------------------ plumbing
    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.runner.run(coro)

    async def _start(self) -> None:
        self.world.sup.start()
        self.world.feed_healthy()
        await self.world.sup.set_power(2.0)
        await self.world.settle()

    def teardown(self) -> None:
        try:
            # However the case ended, there is a way out without a restart.
            self.way_out()
        finally:
            try:
                self.run(self.world.sup.close())
            finally:
                self.runner.close()

    def act(self, inputs: Callable[[], None]) -> None:
        """Apply synchronous inputs on the loop, then let the supervisor settle."""

        async def go() -> None:
            inputs()
            await self.world.settle()

        self.run(go())

    def command(self, make: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run one operator command; False when the supervisor refused it."""

        async def go() -> bool:
            try:
                await make()
            except Refused:
                accepted = False
            else:
                accepted = True
            await self.world.settle()
            return accepted

        return bool(self.run(go()))

    def _count_transitions(self, _old: SystemState, new: SystemState, _reason: str) -> None:
        self.transitions += 1
        if new is S.TREATING:
            self.entries_into_treating += 1

    def _judge_light(self, sample: SafetySample) -> None:
        """Ground truth of a persisting photodiode deviation, from the light actually emitted."""
        laser = self.world.laser
        if not laser.output_on or laser.on_since is None:
            self.deviating_since = None
            return
        changed = max(laser.on_since, laser.power_changed_at or -math.inf)
        if sample.received - changed < PHOTODIODE_SETTLE_S:
            return
        measured = sample.photodiode_v * PHOTODIODE_W_PER_V
        percent = abs(measured - laser.power_w) / max(laser.power_w, PHOTODIODE_FLOOR_W) * 100.0
        if percent > LIMITS.photodiode_fault_percent:
            if self.deviating_since is None:
                self.deviating_since = sample.received
        else:
            self.deviating_since = None

    @initialize(start=st.sampled_from([S.IDLE, S.READY, S.ARMED, S.ARMED, S.TREATING, S.TREATING]))
    def begin_in(self, start: SystemState) -> None:
        """Start some cases part-way through a treatment so the deep states get most of the steps."""
        w = self.world
        if start is not S.IDLE:
            assert self.command(w.sup.open_session)
        if start in (S.ARMED, S.TREATING):
            self.act(lambda: w.set_step(True))
            assert self.command(w.sup.arm)
        if start is S.TREATING:
            self.act(w.press_pedal)
        assert w.sup.state is start

    # ------------------------------------------------------------------------------------------ inputs
    @rule(what=st.sampled_from(sorted(INPUTS)))
    def change(self, what: str) -> None:
        """One input changes: the pedal, the E-stop, the board, a permission term, the photodiode."""
        self.act(lambda: INPUTS[what](self.world))

    @rule(second=st.sampled_from(sorted(INPUTS)))
    def pedal_down_with(self, second: str) -> None:
        """The pedal goes down and another input arrives in the same loop turn (one read of the board's
        line, or a monitor callback right behind it), before any task has run."""

        def both() -> None:
            self.world.press_pedal()
            INPUTS[second](self.world)

        self.act(both)

    @rule(second=st.sampled_from(sorted(INPUTS)))
    def change_while_switching_on(self, second: str) -> None:
        """The pedal goes down; another input arrives while the laser is still being switched on (its
        first query to the driver is on the wire)."""

        async def go() -> None:
            self.world.press_pedal()
            await asyncio.sleep(0)
            INPUTS[second](self.world)
            await self.world.settle()

        self.run(go())

    @rule(ms=st.integers(min_value=0, max_value=300), fresh=st.booleans())
    def time_passes(self, ms: int, fresh: bool) -> None:
        """The clock moves in 10 ms steps with the periodic tick; readings keep coming only if ``fresh``."""

        def advance() -> None:
            w = self.world
            left = ms / 1000
            while left > 1e-9:
                step = min(PERIOD_S, left)
                w.clock.advance(step)
                left -= step
                if fresh:
                    w.refresh()
                w.sup.tick()

        self.act(advance)

    # ------------------------------------------------------------------------------- engine, operator
    @rule(watts=st.sampled_from([0.0, 0.5, 2.0, 5.0]))
    def set_power(self, watts: float) -> None:
        self.command(lambda: self.world.sup.set_power(watts))

    @rule(name=st.sampled_from(sorted(COMMANDS)))
    def operator(self, name: str) -> None:
        """An operator command; the supervisor may refuse it."""
        self.command(lambda: COMMANDS[name](self.world.sup))

    @rule()
    def open_session(self) -> None:
        self.command(self.world.sup.open_session)

    @rule()
    def reset(self) -> None:
        self.try_reset()

    def try_reset(self) -> bool:
        """The operator acknowledges the fault with a password; False when it is refused."""
        was = self.world.sup.state
        accepted = self.command(lambda: self.world.sup.reset(4, "alice"))
        if accepted and was is S.FAULT:
            self.reset_accepted = True
        return accepted

    # ------------------------------------------------------------------------------------- ways out
    def heal(self) -> None:
        """Every cause goes: the world healthy, the pedal up, the laser and the board answering, and time
        passing with fresh readings (a stray light's or a deviation's persistence window runs out)."""
        w = self.world

        def healthy() -> None:
            w.laser.off_unconfirmed = False
            w.board.disarm_unanswered = False
            w.release_pedal()
            w.feed_healthy()
            w.run_for(0.2)

        self.act(healthy)

    def way_out(self) -> None:
        """From wherever the supervisor is, with the world healthy, the operator's moves reach ARMED:
        reset a fault, end a session, open one, arm. Each move must be accepted."""
        sup = self.world.sup
        self.heal()
        for _ in range(3):
            state = sup.state
            if state is S.IDLE:
                break
            if state is S.FAULT:
                assert self.try_reset(), f"reset refused with the world healthy: {sup.fault}"
            else:
                assert self.command(lambda: sup.end_session("ended to start again")), state
        assert sup.state is S.IDLE, f"no way back to IDLE: still {sup.state.value}"
        assert self.command(sup.open_session), "a session does not open after the way out"
        assert sup.arm_blockers() == [], sup.arm_blockers()
        assert self.command(sup.arm), "arming refused after the way out"
        assert sup.state is S.ARMED

    def go_to(self, target: SystemState) -> None:
        """From a healthy world in IDLE, the operator's way to ``target``."""
        w, sup = self.world, self.world.sup
        if target is S.IDLE:
            return
        assert self.command(sup.open_session)
        if target is S.READY:
            return
        self.act(lambda: w.set_step(True))
        assert self.command(sup.arm)
        if target is S.PAUSED:
            assert self.command(sup.pause)
        elif target is S.TREATING:
            self.act(w.press_pedal)
        assert sup.state is target

    @rule()
    def no_state_needs_a_restart(self) -> None:
        """Wherever the events so far have left it, the supervisor can be brought back to ARMED."""
        self.way_out()

    @rule(where=st.sampled_from([S.IDLE, S.READY, S.ARMED, S.PAUSED, S.TREATING]), data=st.data())
    def fault_cleared_and_reset(self, where: SystemState, data: DataObject) -> None:
        """A fault in ``where``, its cause clearing, the reset: a session then opens (if none is open) and
        arms."""
        w, sup = self.world, self.world.sup
        self.way_out()
        self.act(lambda: w.set_step(False))
        assert self.command(lambda: sup.end_session("to reach the state under test"))
        self.go_to(where)
        name = data.draw(st.sampled_from(sorted(n for n, c in CAUSES.items() if where in c.states)))
        cause = CAUSES[name]
        if name == "photodiode deviating":
            # A deviation is judged against the commanded power: at 0 W half of nothing deviates by nothing.
            assert self.command(lambda: sup.set_power(2.0))
        self.act(lambda: cause.come(w))
        assert sup.state is S.FAULT, f"{name} in {where.value} did not latch a fault"
        assert sup.arm_blockers(), "arming would go ahead in FAULT"
        self.act(lambda: cause.go(w))
        self.act(lambda: w.run_for(0.2))
        assert sup.state is S.FAULT, "the fault did not stay latched when its cause went"
        assert self.try_reset(), f"reset refused once {name} cleared: {sup.fault}"
        assert sup.state is (S.READY if where is not S.IDLE else S.IDLE)
        if sup.state is S.IDLE:
            assert self.command(sup.open_session)
        if w.board.pedal:
            self.act(w.release_pedal)
        assert sup.arm_blockers() == [], sup.arm_blockers()
        assert self.command(sup.arm), "arming refused after the reset"
        assert sup.state is S.ARMED

    # ------------------------------------------------------------------------------------- invariants
    @invariant()
    def light_only_with_full_permission(self) -> None:
        w, sup = self.world, self.world.sup
        if not w.laser.output_on:
            return
        assert sup.state is S.TREATING, f"output on in {sup.state.value}"
        failing = sup.failing()
        assert not failing, f"output on with terms false: {[t.detail for t in failing]}"
        # The same conjunction recomputed from the world's ground truth.
        board = w.board
        assert board.armed and board.pedal and not board.estop and not board.watchdog_expired
        assert w.tec_on and abs(w.tec_c - TEC_SETPOINT_C) <= LIMITS.tec_window_c
        assert w.motor_pwm > 0 and w.vibration_g >= LIMITS.vibration_min_g
        assert all(state == "open" for state in w.links.values()), w.links
        assert w.storage_ok and w.calibrations_ok and w.step_active
        now = w.clock()
        # Fresh means younger than 100 ms plus the time the loop itself was held up (the documented
        # allowance: a long step of the world's clock between two ticks counts as the loop held up, not as a
        # stale device).
        assert w.last_refresh is not None
        assert now - w.last_refresh <= MAX_READING_AGE_S or sup._age_ok(w.last_refresh, now)
        assert self.deviating_since is None or now - self.deviating_since < PHOTODIODE_PERSISTENCE_S

    @invariant()
    def output_commanded_only_while_treating(self) -> None:
        sup = self.world.sup
        assert not sup.output_commanded_on or sup.state is S.TREATING

    @invariant()
    def emission_starts_only_on_entering_treating(self) -> None:
        switch_ons = self.world.laser.switch_ons
        assert all(seen == (S.TREATING, True) for seen in switch_ons), switch_ons
        assert len(switch_ons) <= self.entries_into_treating

    @invariant()
    def every_transition_is_logged(self) -> None:
        logged = [
            e for e in self.world.log.entries if e.details is not None and {"from", "to"} <= e.details.keys()
        ]
        assert len(logged) == self.transitions
        if logged:
            assert logged[-1].details is not None and logged[-1].details["to"] == self.world.sup.state.value

    @invariant()
    def board_armed_only_in_armed_states(self) -> None:
        """READY, PAUSED, IDLE and FAULT mean disarmed (unless a DISARM went unanswered: the supervisor does
        not retry it, and the output stays off by software alone)."""
        board = self.world.board
        if board.disarm_failures:
            return
        assert not board.armed or self.world.sup.state in ARMED_STATES, self.world.sup.state

    @invariant()
    def a_failed_off_or_disarm_leaves_fault(self) -> None:
        """When "output off" could not be verified or the board did not disarm, FAULT must be latched."""
        w = self.world
        failures = w.laser.off_failures + w.board.disarm_failures
        if failures > self.failures_seen:
            assert w.sup.state is S.FAULT, f"off/disarm failed, yet the state is {w.sup.state.value}"
        self.failures_seen = failures

    @invariant()
    def the_supervisor_knows_whether_a_session_is_open(self) -> None:
        sup = self.world.sup
        if sup.state in SESSION_STATES:
            assert sup.session_open
        elif sup.state is S.IDLE:
            assert not sup.session_open

    @invariant()
    def fault_latches_until_an_accepted_reset(self) -> None:
        state = self.world.sup.state
        if self.previous_state is S.FAULT and not self.reset_accepted:
            assert state is S.FAULT, f"left FAULT for {state.value} without an accepted reset"
        self.previous_state = state
        self.reset_accepted = False


SupervisorMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSupervisorStateMachine = SupervisorMachine.TestCase
