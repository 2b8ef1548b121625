"""The console against a real controller on the simulated rig: an override belongs to the step it was typed
for, its dialog leaves the readings in view, and every way out of the console follows one rule while a
session is open."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, FakeClock, enter_text, quit_by_palette, seed, showing, wait_until
from test_treatment_console import arm_on_checks, open_session, treating
from treatment_fixtures import SHORT_PROTOCOL, add_subject, connected, console, controller, log_in

from control.protocol_approval import approve_as_system
from storage import create_engine, session_factory
from storage.repositories import ProtocolsRepository
from tests.support import RIG_TEST, protocol_json
from tui.app import ToscaApp
from tui.screens import LoginScreen
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.dialogs import ConfirmDialog, OverrideDialog

pytestmark = RIG_TEST


#: Two steps: a short one that ends while an override for it is typed, and a long ramp after it.
TWO_STEPS = "Test two steps (4 s at 2 W, 60 s ramp to 3 W)"


async def add_two_step_protocol() -> None:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        async with session_factory(engine)() as db, db.begin():
            added = await ProtocolsRepository(db).add(
                TWO_STEPS,
                "multi_step",
                protocol_json((4, 2.0, 2.0, 3.0, "constant"), (60, 2.0, 3.0, 3.0, "linear"), max_power=8.0),
            )
            await approve_as_system(db, added.protocol_id)
    finally:
        await engine.dispose()


@pytest.fixture
async def ready(data_dir: Path) -> Any:
    await seed()
    await add_subject()
    await add_two_step_protocol()
    async with controller() as ctl:
        yield ctl


def notifications(app: ToscaApp) -> str:
    """Every notification shown so far, one a line."""
    return "\n".join(str(n.message) for n in app._notifications)


def step_number(app: ToscaApp) -> int | None:
    snapshot = app.snapshot
    if snapshot is None or snapshot.session is None or snapshot.session.step is None:
        return None
    return snapshot.session.step.number


@pytest.mark.timeout(120)
async def test_an_override_typed_while_its_step_ended_is_refused_and_the_readings_stay_in_view(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        await open_session(pilot, TWO_STEPS)
        await arm_on_checks(pilot)
        dashboard = await treating(pilot)
        assert step_number(app) == 1
        await pilot.press("o")
        await wait_until(pilot, lambda: showing(app, OverrideDialog), "the override dialog")
        dialog = app.screen
        assert isinstance(dialog, OverrideDialog)
        assert dialog.dialog_title == "Override power of step 1"
        # The dialog covers neither the banner, the power nor the interlocks, and they stay live.
        panel = dialog.query_one("#dialog").region
        for name in ("#banner", "#readouts", "#interlocks"):
            shown = dashboard.query_one(name).region
            assert shown.height > 0 and not shown.overlaps(panel), f"{name} is hidden by the dialog"
        await enter_text(pilot, "2.5")
        await pilot.press("enter")
        # Step 1 (4 s at 2 W) ends while the reason is being typed.
        await wait_until(pilot, lambda: step_number(app) == 2, "step 2 running", 20.0)
        await enter_text(pilot, "subject reports warmth")
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: "which has ended" in notifications(app),
            f"the override refused with the reason (shown: {notifications(app)!r})",
        )
        assert "the override was for step 1, which has ended; step 2 of 2 is running" in notifications(app)
        # Step 2 ramps from 2 W towards 3 W as planned (1/60 W a second): it is not held at 2.5 W.
        first = app.snapshot.laser.commanded_w if app.snapshot is not None else 0.0
        assert 2.0 <= first < 2.5
        await wait_until(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.laser.commanded_w > first + 0.02,
            "the ramp of step 2 going on",
            20.0,
        )
        await pilot.press("f12")
        await wait_until(pilot, lambda: app.snapshot is not None and not app.snapshot.emitting, "stopped")
    with sqlite3.connect("data/tosca.db") as db:
        overrides = db.execute(
            "SELECT COUNT(*) FROM treatment_events WHERE event_type = 'user_action'"
            " AND event_details LIKE '%protocol_power_override%'"
        ).fetchone()[0]
    assert overrides == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", ["palette", "ctrl+q", "ctrl+c"])
async def test_no_way_out_closes_the_console_while_a_session_is_open(
    ready: Any, clock: FakeClock, way: str
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        await open_session(pilot, SHORT_PROTOCOL)
        assert showing(app, ChecksScreen)
        if way == "palette":
            await quit_by_palette(pilot)
        else:
            await pilot.press(way)
        await wait_until(
            pilot, lambda: "a treatment session is open" in notifications(app), "the refusal to close"
        )
        await pilot.pause()  # anything the refused command still had queued is handled
        assert app.is_running and app.return_code is None
        assert not showing(app, ConfirmDialog)
        assert app.snapshot is not None and app.snapshot.session is not None
        assert showing(app, ChecksScreen) or showing(app, DashboardScreen)
    with sqlite3.connect("data/tosca.db") as db:
        status = db.execute("SELECT status FROM sessions").fetchone()[0]
    assert status != "aborted"


def pedal(app: ToscaApp) -> str | None:
    snapshot = app.snapshot
    if snapshot is None:
        return None
    return next((term.value for term in snapshot.interlocks if term.name == "footpedal"), None)


@pytest.mark.timeout(120)
async def test_the_simulator_keys_act_only_where_their_panel_shows(ready: Any, clock: FakeClock) -> None:
    app = console(clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        await connected(pilot)
        assert not app.screen.query("SimPanel")
        assert pedal(app) == "released"
        assert app.link is not None
        sent: list[str] = []
        call = app.link.call

        async def recording(command: Any, **kwargs: Any) -> Any:
            sent.append(command.type)
            return await call(command, **kwargs)

        app.link.call = recording  # type: ignore[method-assign]
        await pilot.press("f5", "f6")
        await pilot.pause()  # both keys handled
        app.link.call = call  # type: ignore[method-assign]
        assert "sim" not in sent, "a simulator key sent a command from the home screen"
        assert pedal(app) == "released", "F5 pressed the footpedal from the home screen"
        assert app.snapshot is not None and app.snapshot.state == "idle", "F6 hit the E-stop from home"
        await open_session(pilot, SHORT_PROTOCOL)
        assert app.screen.query_one("#sim-panel").display
        await pilot.press("f5")
        await wait_until(pilot, lambda: pedal(app) == "pressed", "F5 pressing the footpedal on the checks")
        await pilot.press("f5")
        await wait_until(pilot, lambda: pedal(app) == "released", "F5 releasing it")


@pytest.mark.timeout(120)
async def test_a_console_without_sim_is_told_to_restart_with_sim(ready: Any, clock: FakeClock) -> None:
    app = console(clock, sim=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        link = app.link
        assert link is not None
        await wait_until(pilot, lambda: "drives the simulated rig" in link.problem, "the refusal", 30.0)
        assert "this console was started for the real rig; restart the console with --sim" in link.problem
        assert app.snapshot is None
