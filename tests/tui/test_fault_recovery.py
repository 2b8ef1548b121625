"""A fault latched before arming, or left after its session closed, never strands the rig: it shows as a
failing check (and on the home and subjects screens), it is reset there with the password once its cause has
cleared, and then arming, or the next session, goes ahead. Every condition that refuses arming is a check.

Against the controller process on the simulated rig, with the console's keys as a technician presses them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import TECH_PASSWORD, FakeClock, enter_text, seed, showing, wait_until
from textual.pilot import Pilot
from textual.widgets import DataTable, TextArea
from treatment_fixtures import (
    LONG_PROTOCOL,
    SUBJECT,
    add_subject,
    connected,
    console,
    controller,
    log_in,
    screen_text,
    wait_state,
)

from control.messages import PrecheckView
from tests.support import RIG_TEST
from tui.app import ToscaApp
from tui.screens import HomeScreen
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.dialogs import PasswordDialog, ReasonDialog
from tui.screens.end_session import EndOfSessionScreen, SignDialog
from tui.screens.protocols import ProtocolChoiceScreen
from tui.screens.subjects import SubjectsScreen

pytestmark = RIG_TEST


@pytest.fixture
async def ready(data_dir: Path) -> Any:
    await seed()
    await add_subject()
    async with controller() as ctl:
        yield ctl


def check(screen: ChecksScreen, name: str) -> PrecheckView | None:
    return next((c for c in screen.checks if c.name == name), None)


def verdict(screen: ChecksScreen) -> str:
    return str(screen.query_one("#checks-verdict").render())


async def to_checks_from_subjects(pilot: Pilot[Any]) -> ChecksScreen:
    """On the subjects screen: Enter on the subject, the long protocol, Enter: the session opens."""
    app = pilot.app
    subjects = app.screen
    assert isinstance(subjects, SubjectsScreen)
    await wait_until(pilot, lambda: [s.subject_code for s in subjects.subjects] == [SUBJECT], "the subject")
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, ProtocolChoiceScreen), "the protocol choice")
    choice = app.screen
    assert isinstance(choice, ProtocolChoiceScreen)
    await wait_until(pilot, lambda: choice.loaded, "the protocols listed")
    names = [p.name for p in choice.protocols]
    for _ in range(names.index(LONG_PROTOCOL)):
        await pilot.press("down")
    await wait_until(
        pilot,
        lambda: choice.preview is not None and choice.preview.summary.name == LONG_PROTOCOL,
        "the long protocol highlighted",
    )
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, ChecksScreen), "the checks screen", 60.0)
    checks = app.screen
    assert isinstance(checks, ChecksScreen)
    return checks


async def reset_with_password(pilot: Pilot[Any]) -> None:
    """F4, then the technician's password in the dialog it opens."""
    await pilot.press("f4")
    await wait_until(pilot, lambda: showing(pilot.app, PasswordDialog), "the password dialog of F4")
    await enter_text(pilot, TECH_PASSWORD)
    await pilot.press("enter")


async def estop_hit_and_released(pilot: Pilot[Any]) -> None:
    """F6 twice: the E-stop on (a fault latches), then off (its cause clears; the fault stays)."""
    app = pilot.app
    assert isinstance(app, ToscaApp)
    await pilot.press("f6")
    await wait_state(pilot, "fault")
    await wait_until(
        pilot,
        lambda: (
            app.snapshot is not None and any(i.name == "estop" and not i.ok for i in app.snapshot.interlocks)
        ),
        "the E-stop pressed",
    )
    await pilot.press("f6")
    await wait_until(
        pilot,
        lambda: (
            app.snapshot is not None and app.snapshot.fault is not None and app.snapshot.fault.cause_cleared
        ),
        "the E-stop released",
    )
    assert app.snapshot is not None and app.snapshot.state == "fault", "the fault stays latched"


@pytest.mark.timeout(180)
async def test_a_fault_on_the_checks_screen_is_a_failing_check_and_is_reset_there(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        await connected(pilot)
        await pilot.press("t")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the subjects screen")
        checks = await to_checks_from_subjects(pilot)
        await wait_until(pilot, lambda: checks.all_pass, "every check passing", 30.0)
        assert "All" in verdict(checks) and "pass" in verdict(checks)

        await estop_hit_and_released(pilot)
        # The fault is a failing check with how to reset it; the verdict never says all pass.
        await wait_until(
            pilot,
            lambda: (c := check(checks, "state")) is not None and not c.ok,
            "the fault as a failing check",
        )
        state = check(checks, "state")
        assert state is not None and state.value.startswith("FAULT: E-stop pressed")
        assert "release the E-stop" in state.detail and "password" in state.detail
        assert not checks.all_pass
        assert "checks pass" not in verdict(checks) and "F4 resets it" in verdict(checks)
        table = checks.query_one("#checks-table", DataTable)
        assert "FAIL" in str(table.get_row_at(0)[1]), "the state check is the first row"

        # Arming is refused with the reason shown; nothing changes.
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: "Arming refused: checks failing (state" in screen_text(app), "refusal"
        )
        assert app.snapshot is not None and app.snapshot.state == "fault"

        # F4 and the password: the fault is reset (who and when are in the safety log), the checks pass.
        await reset_with_password(pilot)
        await wait_state(pilot, "ready")
        await wait_until(pilot, lambda: checks.all_pass, "every check passing again", 10.0)
        assert "All" in verdict(checks)
        await wait_until(pilot, lambda: checks.query_one("#arm-password").has_focus, "the password field")
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, DashboardScreen), "the dashboard", 20.0)
        await wait_state(pilot, "armed")
    with sqlite3.connect("data/tosca.db") as db:
        reset = db.execute(
            "SELECT description, tech_id, timestamp FROM safety_log WHERE event_type = 'fault_reset'"
        ).fetchall()
        tina = db.execute("SELECT tech_id FROM tech_users WHERE username = 'tina'").fetchone()[0]
    assert len(reset) == 1
    description, tech_id, when = reset[0]
    assert "tina" in description and "E-stop" in description and tech_id == tina and when


@pytest.mark.timeout(240)
async def test_after_an_abort_in_fault_the_fault_is_reset_from_home_and_the_next_session_opens(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await connected(pilot)
        await pilot.press("t")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the subjects screen")
        checks = await to_checks_from_subjects(pilot)
        await wait_until(pilot, lambda: checks.all_pass, "every check passing", 30.0)
        await estop_hit_and_released(pilot)

        # Abort while the fault is latched: the session closes, the fault stays.
        await pilot.press("f8")
        await wait_until(pilot, lambda: showing(app, ReasonDialog), "the reason dialog")
        await enter_text(pilot, "E-stop hit before arming")
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, EndOfSessionScreen), "the end of the session", 30.0)
        end = app.screen
        notes = end.query_one("#notes", TextArea)
        notes.focus()
        notes.text = "Not treated: E-stop."
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, SignDialog), "the signature dialog", 20.0)
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "back on the subjects", 20.0)
        snapshot = app.snapshot
        assert snapshot is not None and snapshot.state == "fault" and snapshot.session is None

        # The subjects and home screens show the fault and offer F4.
        await wait_until(
            pilot, lambda: "FAULT E-stop pressed" in screen_text(app), "the fault on the subjects"
        )
        assert "F4 resets it" in screen_text(app)
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
        await wait_until(
            pilot, lambda: "FAULT E-stop pressed" in screen_text(app), "the fault on the home screen"
        )
        await reset_with_password(pilot)
        await wait_state(pilot, "idle")
        await wait_until(
            pilot, lambda: "FAULT" not in screen_text(app), "the fault gone from the home screen"
        )

        # The next session opens and arms.
        await pilot.press("t")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the subjects screen")
        assert "FAULT" not in screen_text(app)
        checks = await to_checks_from_subjects(pilot)
        await wait_state(pilot, "ready")
        await wait_until(pilot, lambda: checks.all_pass, "every check passing", 30.0)
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_state(pilot, "armed")
    with sqlite3.connect("data/tosca.db") as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM sessions ORDER BY session_id")]
    assert len(statuses) == 2 and statuses[0] == "aborted", statuses


@pytest.mark.timeout(120)
async def test_a_pressed_footpedal_is_a_failing_check_with_its_live_value(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await connected(pilot)
        await pilot.press("t")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the subjects screen")
        checks = await to_checks_from_subjects(pilot)
        await wait_until(pilot, lambda: checks.all_pass, "every check passing", 30.0)
        await pilot.press("f5")  # the footpedal down
        await wait_until(
            pilot,
            lambda: (c := check(checks, "footpedal")) is not None and not c.ok,
            "the footpedal as a failing check",
        )
        pedal = check(checks, "footpedal")
        assert pedal is not None and pedal.value == "pressed"
        assert pedal.detail == "release the footpedal before arming"
        assert "checks pass" not in verdict(checks) and "1 of" in verdict(checks)
        await pilot.press("f5")  # released
        await wait_until(pilot, lambda: checks.all_pass, "every check passing again", 10.0)
        pedal = check(checks, "footpedal")
        assert pedal is not None and pedal.value == "released"
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_state(pilot, "armed")


@pytest.mark.timeout(240)
async def test_wrong_arm_passwords_block_key_control_as_a_check_and_an_admin_unblocks_it_there(
    ready: Any, clock: FakeClock
) -> None:
    from console_fixtures import ADMIN_PASSWORD

    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await connected(pilot)
        await pilot.press("t")
        await wait_until(pilot, lambda: showing(app, SubjectsScreen), "the subjects screen")
        checks = await to_checks_from_subjects(pilot)
        await wait_until(pilot, lambda: checks.all_pass, "every check passing", 30.0)
        # Who arms is shown, not asked.
        assert "Password of tina to arm" in screen_text(app)

        for attempt in range(1, 6):
            await wait_until(pilot, lambda: checks.query_one("#arm-password").has_focus, "the arm field")
            await enter_text(pilot, f"not her password {attempt}")
            await pilot.press("enter")
            await wait_until(
                pilot,
                lambda n=attempt: (  # type: ignore[misc]
                    app.snapshot is not None
                    and app.snapshot.session is not None
                    and app.snapshot.session.key_failures == n
                ),
                f"wrong password {attempt} counted",
            )
            await wait_until(pilot, lambda: not checks.busy, "the refusal shown")
        assert "Not armed" in screen_text(app)
        # Blocked: a failing check says so and how to go on; the verdict never says all pass.
        await wait_until(
            pilot,
            lambda: (c := check(checks, "key control")) is not None and not c.ok,
            "key control as a failing check",
            10.0,
        )
        key = check(checks, "key control")
        assert key is not None and "admin" in key.detail
        assert not checks.all_pass
        # Her account is not locked: the wrong passwords were key-control failures, not failed logins.
        with sqlite3.connect("data/tosca.db") as db:
            locked, failed = db.execute(
                "SELECT locked_until, failed_login_count FROM tech_users WHERE username = 'tina'"
            ).fetchone()
        assert locked is None and failed == 0

        # Enter now asks for an admin, whose username and password unblock key control and arm.
        await wait_until(pilot, lambda: checks.key_blocked, "the block seen by the screen")
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, PasswordDialog), "the admin's dialog")
        await enter_text(pilot, "ada")
        await pilot.press("tab")
        await enter_text(pilot, ADMIN_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, DashboardScreen), "the dashboard", 20.0)
        await wait_state(pilot, "armed")
