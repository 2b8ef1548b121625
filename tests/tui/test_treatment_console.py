"""The console against a real controller on the simulated rig: the checks, arming, the dashboard, the stop
key, faults and their reset, abort, override, and the rules of kiosk mode and SSH.

Each test logs in as the technician, and asks for a session the way the protocol screen does (posting
``SessionRequested``); the workflow from the subjects screen on is in ``test_treatment_workflow.py``.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import TECH_PASSWORD, FakeClock, enter_text, seed, showing, wait_until
from textual.pilot import Pilot
from textual.widgets import Input
from treatment_fixtures import (
    LONG_PROTOCOL,
    SHORT_PROTOCOL,
    SUBJECT,
    add_subject,
    connected,
    console,
    controller,
    log_in,
    screen_text,
    wait_state,
)

from control.messages import Sim
from tests.support import RIG_TEST
from tui.app import ToscaApp
from tui.screens import LockScreen
from tui.screens._base import SessionRequested
from tui.screens.checks import SSH_REFUSAL, ChecksScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.dialogs import OverrideDialog, PasswordDialog, ReasonDialog
from tui.screens.end_session import EndOfSessionScreen

pytestmark = RIG_TEST


async def open_session(pilot: Pilot[Any], protocol: str = LONG_PROTOCOL) -> ChecksScreen:
    app = pilot.app
    await connected(pilot)
    app.screen.post_message(SessionRequested(SUBJECT, protocol, "left forearm"))
    await wait_until(pilot, lambda: showing(app, ChecksScreen), "the checks screen", 30.0)
    screen = app.screen
    assert isinstance(screen, ChecksScreen)
    await wait_until(pilot, lambda: screen.all_pass, "every pre-treatment check passing", 30.0)
    return screen


async def arm_on_checks(pilot: Pilot[Any], password: str = TECH_PASSWORD) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.focused, Input), "the password field")
    await enter_text(pilot, password)
    await pilot.press("enter")


async def answer_password_dialog(pilot: Pilot[Any], key: str) -> None:
    """Press ``key`` (arm or reset), then give the technician's password in the dialog it opens."""
    await pilot.press(key)
    await wait_until(pilot, lambda: showing(pilot.app, PasswordDialog), f"the dialog of {key!r}")
    await enter_text(pilot, TECH_PASSWORD)
    await pilot.press("enter")


async def sim(app: ToscaApp, command: str) -> None:
    assert app.link is not None
    await app.link.call(Sim(command=command))


async def laser_off(pilot: Pilot[Any], ctl: Any) -> None:
    """The laser driver reports its output off (read back from the laser by the controller)."""
    app = pilot.app
    assert isinstance(app, ToscaApp)
    await wait_until(
        pilot,
        lambda: app.snapshot is not None and not app.snapshot.laser.output_on,
        "the laser output read back off",
        2.0,
    )


def laser_on(app: ToscaApp) -> bool:
    return app.snapshot is not None and app.snapshot.laser.output_on


async def treating(pilot: Pilot[Any]) -> DashboardScreen:
    """From the dashboard with the laser armed: wait for the step, press the pedal (F5), see emission."""
    app = pilot.app
    assert isinstance(app, ToscaApp)
    await wait_until(pilot, lambda: showing(app, DashboardScreen), "the dashboard", 20.0)
    await wait_until(
        pilot,
        lambda: app.snapshot is not None and any(i.name == "step" and i.ok for i in app.snapshot.interlocks),
        "the protocol step (the ring in place)",
        30.0,
    )
    await pilot.press("f5")
    await wait_until(pilot, lambda: app.snapshot is not None and app.snapshot.emitting, "emission", 20.0)
    await wait_until(pilot, lambda: "LASER EMISSION" in screen_text(app), "the LASER EMISSION banner")
    screen = app.screen
    assert isinstance(screen, DashboardScreen)
    return screen


@pytest.fixture
async def ready(data_dir: Path) -> Any:
    await seed()
    await add_subject()
    async with controller() as ctl:
        yield ctl


@pytest.mark.timeout(120)
async def test_stop_key_stops_emission_from_the_dashboard_and_rings_once(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    bells: list[int] = []
    async with app.run_test(size=(120, 40)) as pilot:
        app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
        await log_in(pilot)
        await open_session(pilot)
        await arm_on_checks(pilot)
        await treating(pilot)
        assert bells == [1]  # the terminal bell on the first emission
        assert laser_on(app)
        await pilot.press("f12")
        await wait_state(pilot, "paused")
        await laser_off(pilot, ready)
        await wait_until(pilot, lambda: "PAUSED" in screen_text(app), "the PAUSED banner")
        # Resume, pedal again: emission again, and no second bell for the same session.
        await pilot.press("f5")  # pedal released (it was left pressed)
        await wait_until(
            pilot,
            lambda: (
                app.snapshot is not None
                and any(i.name == "footpedal" and not i.ok for i in app.snapshot.interlocks)
            ),
            "the pedal released",
        )
        await pilot.press("r")
        await wait_state(pilot, "armed")
        await pilot.press("f5")
        await wait_until(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.emitting,
            f"emission again ({app.snapshot})",
        )
        assert bells == [1]
        # The space bar on the dashboard stops it too.
        await pilot.press("space")
        await wait_state(pilot, "paused")
        await laser_off(pilot, ready)


#: Faults injected while treating: (simulator command, whether the cause stays while the laser is off, the
#: command that clears it). A laser that emits no light is only a cause while the output is on. (Every fault
#: of the simulator's language is injected mid-step in tests/control/test_controller.py; these are the
#: kinds the console shows.)
FAULTS = [
    ("estop on", True, "estop off"),
    ("smoothing fail", True, "smoothing ok"),
    ("unplug tec", True, "replug tec"),
]


@pytest.mark.timeout(240)
async def test_each_fault_is_shown_with_what_to_do_and_reset_with_the_password(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await open_session(pilot)
        await arm_on_checks(pilot)
        for command, persists, clear in FAULTS:
            await treating(pilot)
            await sim(app, command)
            snap = await wait_state(pilot, "fault", 20.0)
            await laser_off(pilot, ready)
            assert snap.fault is not None and snap.fault.what, (command, snap.fault)
            fault_what = snap.fault.what
            await wait_until(
                pilot,
                lambda shown=fault_what: shown in screen_text(app),  # type: ignore[misc]
                "the fault on the banner",
            )
            text = screen_text(app)
            assert "FAULT" in text
            assert "Done:" in text and "To reset:" in text
            # Reset refused while the cause is there: the fault stays.
            await pilot.press("f5")  # release the pedal
            if persists:
                await answer_password_dialog(pilot, "f")
                await wait_until(
                    pilot,
                    lambda: any("reset fault refused" in str(n.message) for n in app._notifications),
                    "the reset refused",
                )
                assert app.snapshot is not None and app.snapshot.state == "fault"
            await sim(app, clear)
            await wait_until(
                pilot,
                lambda: (
                    app.snapshot is not None
                    and app.snapshot.fault is not None
                    and app.snapshot.fault.cause_cleared
                ),
                "the cause cleared",
                30.0,
            )
            await answer_password_dialog(pilot, "f")
            await wait_state(pilot, "ready", 20.0)
            # Arming again needs the password (key control) on the dashboard.
            await answer_password_dialog(pilot, "a")
            await wait_state(pilot, "armed", 20.0)
    with sqlite3.connect("data/tosca.db") as db:
        resets = db.execute("SELECT COUNT(*) FROM safety_log WHERE event_type = 'fault_reset'").fetchone()[0]
    assert resets == len(FAULTS)


@pytest.mark.timeout(120)
async def test_abort_asks_for_a_reason_and_ends_on_the_notes(ready: Any, clock: FakeClock) -> None:
    app = console(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        await open_session(pilot)
        await arm_on_checks(pilot)
        await treating(pilot)
        await pilot.press("x")
        await wait_until(pilot, lambda: showing(app, ReasonDialog), "the reason dialog")
        await pilot.press("enter")  # blank: refused, the dialog stays
        await wait_until(pilot, lambda: "cannot be blank" in screen_text(app), "the blank reason refused")
        assert showing(app, ReasonDialog)
        assert laser_on(app)  # nothing changed yet
        await enter_text(pilot, "subject asked to stop")
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, EndOfSessionScreen), "the end-of-session screen", 30.0)
        await laser_off(pilot, ready)
        await wait_until(pilot, lambda: "aborted" in screen_text(app), "the session's summary")
    with sqlite3.connect("data/tosca.db") as db:
        status, reason = db.execute("SELECT status, abort_reason FROM sessions").fetchone()
    assert (status, reason) == ("aborted", "subject asked to stop")


@pytest.mark.timeout(120)
async def test_power_override_asks_for_a_reason_and_changes_the_setpoint(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await open_session(pilot)
        await arm_on_checks(pilot)
        await treating(pilot)
        await pilot.press("o")
        await wait_until(pilot, lambda: showing(app, OverrideDialog), "the override dialog")
        await enter_text(pilot, "2.5")
        await pilot.press("enter")
        await enter_text(pilot, "subject reports warmth")
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: app.snapshot is not None and abs(app.snapshot.laser.commanded_w - 2.5) < 1e-6,
            "the overridden power",
            20.0,
        )
        await pilot.press("f12")
        await wait_state(pilot, "paused")


@pytest.mark.timeout(120)
async def test_over_ssh_the_console_refuses_to_arm_and_says_why(ready: Any, clock: FakeClock) -> None:
    app = console(clock, over_ssh=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        screen = await open_session(pilot)
        await wait_until(pilot, lambda: SSH_REFUSAL in screen_text(app), "the SSH refusal")
        assert screen.query_one("#arm-password", Input).disabled
        attempt = screen.arm(TECH_PASSWORD)
        await wait_until(pilot, lambda: attempt.is_finished, "the arming attempt to end")
        assert app.snapshot is not None and app.snapshot.state == "ready"
        assert SSH_REFUSAL in screen_text(app)


@pytest.mark.timeout(120)
async def test_no_automatic_lock_while_emitting(ready: Any, clock: FakeClock) -> None:
    from console_fixtures import seed as _seed  # noqa: F401  (the users exist already)

    from storage import create_engine, session_factory
    from storage.repositories import ConfigRepository

    engine = create_engine(Path("data") / "tosca.db")
    try:
        async with session_factory(engine)() as db, db.begin():
            await ConfigRepository(db).set("auto_lock_minutes", 1, modified_by=None)
    finally:
        await engine.dispose()
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await open_session(pilot)
        await arm_on_checks(pilot)
        await treating(pilot)
        clock.advance(timedelta(minutes=5))
        # The inactivity check has run once the idle time restarts from now (it does while emitting).
        await wait_until(pilot, lambda: app.last_activity == clock(), "an inactivity check after 5 minutes")
        assert not app.is_locked and showing(app, DashboardScreen)
        await pilot.press("f12")
        await wait_state(pilot, "paused")
        clock.advance(timedelta(minutes=2))
        await wait_until(pilot, lambda: app.is_locked, "the automatic lock once emission has stopped")
        await wait_until(
            pilot,
            lambda: showing(app, LockScreen) and isinstance(app.focused, Input),
            "the lock screen asking for the password",
        )


@pytest.mark.timeout(60)
async def test_kiosk_keys_do_nothing(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock, kiosk=True, controller="off")
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        for key in ("ctrl+c", "ctrl+q", "ctrl+z", "ctrl+p"):
            await pilot.press(key)
            await pilot.pause()  # every message the key caused has been handled
            assert app.is_running
            assert len(app.screen_stack) == 2, (key, app.screen_stack)
        assert not app.use_command_palette


@pytest.mark.timeout(120)
async def test_short_protocol_completes_and_the_end_screen_follows(ready: Any, clock: FakeClock) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await open_session(pilot, SHORT_PROTOCOL)
        await arm_on_checks(pilot)
        await treating(pilot)
        await wait_until(pilot, lambda: showing(app, EndOfSessionScreen), "the end-of-session screen", 60.0)
        await wait_until(pilot, lambda: "completed" in screen_text(app), "the session's summary")
    with sqlite3.connect("data/tosca.db") as db:
        status = db.execute("SELECT status FROM sessions").fetchone()[0]
    assert status == "completed"


@pytest.mark.timeout(120)
async def test_a_session_left_open_comes_back_on_the_next_login(ready: Any, clock: FakeClock) -> None:
    """A console closed with a session open finds it again at the next login, on the checks while it is not
    armed, also when the login is done before the controller's first snapshot has come."""
    first = console(clock)
    async with first.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await open_session(pilot)
    second = console(clock)
    link = second.link
    assert link is not None
    start_link = link.start
    link.start = lambda: None  # type: ignore[method-assign]  # held: the login comes first
    async with second.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        assert second.snapshot is None
        start_link()
        await wait_until(pilot, lambda: showing(second, ChecksScreen), "the open session's checks", 30.0)
        assert SUBJECT in screen_text(second)
        # Nobody held it since the first console closed: this console took it over with the login's password.
        await wait_until(pilot, lambda: link.holds_session, "the session taken over", 10.0)
    third = console(clock)
    async with third.run_test(size=(120, 40)) as pilot:
        await connected(pilot)  # the snapshot first, then the login
        await wait_until(pilot, lambda: isinstance(third.focused, Input), "the login form")
        await enter_text(pilot, "tina")
        await pilot.press("enter")
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(third, ChecksScreen), "the open session's checks", 30.0)
