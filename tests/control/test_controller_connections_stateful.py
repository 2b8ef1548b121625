"""The controller's command handling under random sequences from two or three connections (hypothesis
stateful): connect, authenticate, open, arm, the pedal, pause, stop, resume, take over, log out, disconnect.

The machine drives the controller's own dispatch (:meth:`Controller._dispatch`, its arm, takeover and
disconnect handling, and :mod:`control.authority`) in front of a real safety supervisor on the fake rig of
``supervisor_fakes``; only the database (accounts, the session record, the pre-checks) is replaced by small
fakes. The invariant is the one emission rests on: the laser is on only while exactly one live connection
holds the armed session, and a plain resume (no password) only leaves a pause its own connection made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from supervisor_fakes import World

from control import messages as msg
from control.account_rules import LoginOutcome, LoginResult, UserInfo
from control.authority import Authority, Person
from control.controller import Controller
from control.ipc.server import CommandRefused, Peer
from control.supervisor import ARMED_STATES, Refused, SystemState

pytestmark = pytest.mark.timeout(600)

S = SystemState
#: username: (tech_id, role, password)
USERS = {
    "tina": (1, "technician", "tina password"),
    "tom": (2, "technician", "tom password"),
    "ada": (3, "admin", "ada password"),
}
MAX_CONNECTIONS = 3


def _info(username: str) -> UserInfo:
    tech_id, role, _password = USERS[username]
    return UserInfo(
        tech_id=tech_id,
        username=username,
        full_name=username.title(),
        role=role,
        is_active=True,
        has_password=True,
        must_change_password=False,
        failed_login_count=0,
        locked_until=None,
        last_login=None,
        created_date=None,
    )


class FakeAccounts:
    """The account service's answers, without a database (passwords per :data:`USERS`)."""

    zone = None

    def clock(self) -> datetime:
        return datetime(2026, 3, 14, 9, 30)

    async def login(self, username: str, password: str, **_: Any) -> LoginResult:
        if username in USERS and USERS[username][2] == password:
            return LoginResult(LoginOutcome.OK, "welcome", user=_info(username))
        return LoginResult(LoginOutcome.WRONG_CREDENTIALS, "wrong username or password")

    async def check_key(self, username: str, password: str, **_: Any) -> LoginResult:
        return await self.login(username, password)

    async def get_user(self, username: str) -> UserInfo | None:
        return _info(username) if username in USERS else None

    async def record_command(self, *_: Any, **__: Any) -> None:
        return None


@dataclass
class FakeSession:
    opened: Any


def make_controller(world: World) -> Controller:
    """A controller whose supervisor is the fake world's, its storage replaced by fakes."""
    ctl = Controller.__new__(Controller)
    ctl.supervisor = world.sup
    ctl.authority = Authority(clock=world.clock)
    ctl.session = None
    ctl.server = None
    ctl.sim_rig = None
    ctl._tasks = []
    ctl._seq = 0
    ctl.accounts = FakeAccounts()  # type: ignore[assignment]
    world.sup.on_state_change(ctl._authority_state)

    async def prechecks() -> list[dict[str, Any]]:
        return []

    async def open_session(
        *, username: str, by_connection: int | None, by_person: Person | None, **_: Any
    ) -> Any:
        if ctl.session is not None or world.sup.state is not S.IDLE:
            raise Refused("cannot open a session")
        ctl.session = FakeSession(SimpleNamespace(username=username, session_id=1))  # type: ignore[assignment]
        ctl.authority.session_opened(by_connection, by_person)
        await world.sup.open_session()
        return {"session_id": 1}

    async def close_session(status: str, reason: str | None) -> None:
        world.sup.output_off_now()
        if world.sup.state is not S.FAULT:
            await world.sup.end_session(reason or status)
        ctl.session = None
        ctl.authority.session_closed()

    ctl.prechecks = prechecks  # type: ignore[method-assign]
    ctl.open_session = open_session  # type: ignore[method-assign,assignment]
    ctl._close_session = close_session  # type: ignore[method-assign,assignment]
    ctl._record = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return ctl


class ConnectionsMachine(RuleBasedStateMachine):
    """Two or three connections commanding one controller; the model tracks who holds the session."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.world = World()
        self.ctl = make_controller(self.world)
        self.numbers = iter(range(1, 1000))
        self.live: dict[int, Peer] = {}
        #: The model: who each connection acts for, who holds the session, whose own pause it is.
        self.people: dict[int, str] = {}
        self.holder: int | None = None
        self.own_pause: int | None = None
        self.world.sup.on_state_change(self._state_changed)
        self.run(self._start())

    async def _start(self) -> None:
        w = self.world
        w.sup.start()
        w.feed_healthy()
        w.set_step(True)
        await w.sup.set_power(2.0)
        await w.settle()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self._close())
        finally:
            self.runner.close()

    async def _close(self) -> None:
        await asyncio.gather(*self.ctl._tasks, return_exceptions=True)
        await self.world.sup.close()

    def _state_changed(self, old: SystemState, new: SystemState, _reason: str) -> None:
        if new is S.FAULT or new is S.IDLE or old is S.PAUSED:
            self.own_pause = None

    def send(self, connection: int, command: msg.Command) -> bool:
        """One command on ``connection``; False when the controller refused it."""
        peer = self.live[connection]

        async def go() -> bool:
            try:
                await self.ctl.handle(command, peer)
            except CommandRefused:
                accepted = False
            else:
                accepted = True
            await self.world.settle()
            return accepted

        return bool(self.run(go()))

    def _lose_holder(self, connection: int) -> None:
        if self.holder == connection:
            self.holder = None
            self.own_pause = None

    @initialize(
        start=st.sampled_from(["none", "signed in", "ready", "armed", "armed", "treating", "treating"])
    )
    def begin_in(self, start: str) -> None:
        """Start most cases part-way (a session open on connection 1, a second console signed in), so the
        deep states get most of the steps."""
        if start == "none":
            return
        self.connect()
        self.connect()
        for conn, user in ((1, "tina"), (2, "tina" if start != "signed in" else "ada")):
            assert self.send(conn, msg.Authenticate(username=user, password=USERS[user][2]))
            self.people[conn] = user
        if start == "signed in":
            return
        assert self.send(1, msg.OpenSession(subject_code="P-2026-0001", protocol_name="p"))
        self.holder = 1
        if start in ("armed", "treating"):
            assert self.send(1, msg.Arm(password=USERS["tina"][2]))
        if start == "treating":
            self.pedal(True)
            assert self.world.laser.output_on

    # ------------------------------------------------------------------------------------------- rules
    @precondition(lambda self: len(self.live) < MAX_CONNECTIONS)
    @rule()
    def connect(self) -> None:
        number = next(self.numbers)
        self.live[number] = Peer("control", number, 1000 + number, 1000, 1000)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), user=st.sampled_from(sorted(USERS)), right=st.booleans())
    def authenticate(self, data: st.DataObject, user: str, right: bool) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        password = USERS[user][2] if right else "wrong password"
        accepted = self.send(conn, msg.Authenticate(username=user, password=password))
        assert accepted == right
        if accepted:
            if self.people.get(conn) not in (None, user):
                self._lose_holder(conn)
            self.people[conn] = user

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def open_session(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        state = self.world.sup.state
        accepted = self.send(conn, msg.OpenSession(subject_code="P-2026-0001", protocol_name="p"))
        if accepted:
            assert conn in self.people and state is S.IDLE
            self.holder = conn
            self.own_pause = None
        elif conn not in self.people:
            pass
        else:
            assert state is not S.IDLE or self.ctl.session is not None

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), right=st.booleans())
    def arm(self, data: st.DataObject, right: bool) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        user = self.people.get(conn)
        password = USERS[user][2] if user is not None and right else "wrong password"
        accepted = self.send(conn, msg.Arm(password=password))
        event(f"arm {'accepted' if accepted else 'refused'} in {self.world.sup.state.value}")
        if accepted:
            assert conn == self.holder and right
            assert self.world.sup.state in ARMED_STATES
            self.own_pause = None

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), right=st.booleans())
    def take_over(self, data: st.DataObject, right: bool) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        user = self.people.get(conn)
        password = USERS[user][2] if user is not None and right else "wrong password"
        accepted = self.send(conn, msg.Takeover(password=password))
        if accepted:
            assert user is not None and right
            if self.holder != conn:
                self.own_pause = None
            self.holder = conn
            assert self.world.sup.state not in ARMED_STATES or self.holder == conn

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        before = self.world.sup.state
        if self.send(conn, msg.Pause()):
            assert conn == self.holder and before in ARMED_STATES
            self.own_pause = conn

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        before = self.world.sup.state
        assert self.send(conn, msg.Stop()), "stop is always accepted"
        if before in ARMED_STATES and self.ctl.session is not None:
            self.own_pause = conn if conn == self.holder and conn in self.people else None
        assert self.world.sup.state not in ARMED_STATES

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        before = self.world.sup.state
        own = self.own_pause
        if self.send(conn, msg.Resume()):
            assert before is S.PAUSED and conn == self.holder
            assert own == conn, f"a plain resume left a pause connection {conn} did not make (own: {own})"
            self.own_pause = None

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def log_out(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        self.send(conn, msg.Logout())
        self.people.pop(conn, None)
        self._lose_holder(conn)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        peer = self.live.pop(conn)
        self.people.pop(conn, None)
        was_holder = self.holder == conn

        async def go() -> None:
            await self.ctl._operator_gone(peer)
            await self.world.settle()

        self.run(go())
        self._lose_holder(conn)
        if was_holder:
            assert not self.world.laser.output_on and self.world.sup.state not in ARMED_STATES

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        if self.send(conn, msg.Abort(reason="test")):
            assert conn == self.holder
            self.holder = None
            self.own_pause = None

    @rule(down=st.booleans())
    def pedal(self, down: bool) -> None:
        async def go() -> None:
            (self.world.press_pedal if down else self.world.release_pedal)()
            await self.world.settle()

        self.run(go())

    @rule(pressed=st.booleans())
    def estop(self, pressed: bool) -> None:
        async def go() -> None:
            self.world.set_estop(pressed)
            await self.world.settle()

        self.run(go())

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), user=st.sampled_from(sorted(USERS)))
    def reset_fault(self, data: st.DataObject, user: str) -> None:
        conn = data.draw(st.sampled_from(sorted(self.live)))
        self.send(conn, msg.ResetFault(username=user, password=USERS[user][2]))

    @rule(ms=st.integers(min_value=10, max_value=200))
    def time_passes(self, ms: int) -> None:
        def advance() -> None:
            w = self.world
            for _ in range(ms // 10):
                w.clock.advance(0.010)
                w.refresh()
                w.sup.tick()

        async def go() -> None:
            advance()
            await self.world.settle()

        self.run(go())

    # ------------------------------------------------------------------------------------- invariants
    @invariant()
    def laser_on_only_while_one_live_connection_holds_the_armed_session(self) -> None:
        auth = self.ctl.authority
        holders = [conn for conn in self.live if auth.holds(conn)]
        assert len(holders) <= 1
        if self.world.laser.output_on or self.world.sup.state in ARMED_STATES:
            assert self.world.sup.state in ARMED_STATES
            assert len(holders) == 1, f"emission possible with holders {holders} among {sorted(self.live)}"
            assert holders[0] in self.people, "the holder acts for nobody"

    @invariant()
    def the_controller_agrees_with_the_model_on_the_holder(self) -> None:
        auth = self.ctl.authority
        if self.ctl.session is None:
            assert auth.holder is None
        else:
            assert auth.holder == self.holder

    @invariant()
    def only_authenticated_connections_act(self) -> None:
        for conn in self.live:
            person = self.ctl.authority.person(conn)
            assert (person.username if person is not None else None) == self.people.get(conn)


ConnectionsMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestConnectionsStateMachine = ConnectionsMachine.TestCase
