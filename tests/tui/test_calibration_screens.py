"""The calibration wizards as an engineer uses them, against a controller on the simulated rig (in the test's
loop, serving its real sockets): the ring size wizard moves the actuator and stores what was typed; the laser
power wizard emits only with the footpedal and gives back the simulator's own current-to-power curve; every
refusal (a typed value that is not a finite non-negative number, too few points, a fit that is not monotonic
or below the quality floor, the wrong password, the wrong role, over SSH) says why and stores nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import CLI, DATA_DIR, FakeClock, enter_text, seed, showing, wait_until
from textual.pilot import Pilot
from treatment_fixtures import ControllerProcess, connected, console, controller, log_in, screen_text

from control.accounts import AccountService
from control.calibration import install_sim_calibrations_if_missing, load_active_calibrations
from control.messages import Sim, Snapshot
from devices.sim import model as sim_model
from devices.sim.model import PhysicalModel
from storage import create_engine, session_factory
from tests.support import CHEAP, RIG_TEST
from tui.app import ToscaApp
from tui.screens.calibration import CalibrationScreen, LaserPowerWizard, RingSizeWizard
from tui.screens.dialogs import ConfirmDialog

pytestmark = RIG_TEST

ENGINEER_PASSWORD = "engineer pass 1"


async def _people_and_factory_calibrations() -> None:
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        accounts = AccountService(sessions=sessions, terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user("eve", "Eve Engineer", "engineer", ENGINEER_PASSWORD, CLI)
        ada = await accounts.get_user("ada")
        assert ada is not None
        await install_sim_calibrations_if_missing(sessions, ada.tech_id)
    finally:
        await engine.dispose()
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE calibrations SET calibration_date = '2026-03-04 10:00:00.000000'")


@pytest.fixture
async def rig(data_dir: Path) -> AsyncIterator[ControllerProcess]:
    await _people_and_factory_calibrations()
    async with controller() as process:
        yield process


def snapshot(app: ToscaApp) -> Snapshot:
    assert app.snapshot is not None
    return app.snapshot


async def simulator(app: ToscaApp, line: str) -> None:
    """A command to the simulated rig (the footpedal), through the console's own connection."""
    assert app.link is not None
    await app.link.call(Sim(command=line))


def meter_reading(current_ma: float) -> float:
    """What an external power meter reads: the light of the simulator's own physical model at the current the
    laser driver reports."""
    model = PhysicalModel(seed=1)
    model.laser_current_ma = current_ma
    model.laser_output_on = True
    return model.light_w()


def stored() -> list[tuple[Any, ...]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(
            db.execute(
                "SELECT calibration_id, calibration_type, is_active, notes FROM calibrations "
                "ORDER BY calibration_id"
            )
        )


async def open_calibrations(pilot: Pilot[Any], *, connect: bool = True) -> None:
    await log_in(pilot, "eve", ENGINEER_PASSWORD)
    if connect:
        await connected(pilot)
    await pilot.press("w")
    await wait_until(pilot, lambda: showing(pilot.app, CalibrationScreen), "the calibration screen")


async def type_value(pilot: Pilot[Any], text: str) -> None:
    await enter_text(pilot, text)
    await pilot.press("enter")


def status(app: ToscaApp) -> str:
    return str(app.screen.query_one("#status").render())


def prompt(app: ToscaApp) -> str:
    return str(app.screen.query_one("#prompt").render())


async def test_ring_size_wizard_moves_refuses_bad_readings_and_saves_when_confirmed(
    rig: ControllerProcess, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_calibrations(pilot)
        screen = app.screen
        assert isinstance(screen, CalibrationScreen)
        await wait_until(pilot, lambda: len(screen.rows) == 4, "the factory calibrations listed")
        expected = (
            "active: actuator 9 days, camera scale 9 days, laser 9 days, photodiode 9 days "
            "(valid for 365 days)"
        )
        assert expected in screen_text(app)
        wizard = RingSizeWizard(screen.context, screen.user, positions_um=(0.0, 100.0, 200.0, 300.0))
        app.push_screen(wizard)
        await wait_until(pilot, lambda: showing(app, RingSizeWizard), "the wizard")

        await type_value(pilot, "wrong password")
        await wait_until(pilot, lambda: "refused:" in status(app), "the wrong password refused")
        assert wizard.stage == "password"

        await type_value(pilot, ENGINEER_PASSWORD)
        await wait_until(pilot, lambda: wizard.stage == "reading", "the first position", 30.0)
        for bad, reason in (
            ("nan", "not a finite number"),
            ("-2", "must be above 0 mm"),
            ("0", "must be above 0 mm"),
            ("wide", "is not a number"),
        ):
            await type_value(pilot, bad)
            await wait_until(pilot, lambda reason=reason: reason in status(app), reason)
            assert wizard.points == []
        await type_value(pilot, "2.0")
        await wait_until(
            pilot, lambda: wizard.stage == "reading" and wizard.index == 1, "the second position", 30.0
        )
        await wait_until(
            pilot, lambda: abs((snapshot(app).ring.position_um or 0) - 100.0) <= 2.0, "the actuator at 100 um"
        )
        await pilot.press("f5")
        await wait_until(pilot, lambda: "1 points; a calibration needs at least 3" in status(app), "too few")

        await type_value(pilot, "2.1")
        await wait_until(pilot, lambda: wizard.index == 2 and wizard.stage == "reading", "the third", 30.0)
        await type_value(pilot, "2.05")  # smaller than the one before: not monotonic
        await wait_until(pilot, lambda: wizard.index == 3 and wizard.stage == "reading", "the fourth", 30.0)
        assert "not monotonic" in str(app.screen.query_one("#fit").render())
        await pilot.press("f5")
        await wait_until(
            pilot, lambda: "not saved:" in status(app) and "not monotonic" in status(app), "refused"
        )
        assert len(stored()) == 4  # the factory set only

        # Measured again from the start, well this time.
        wizard.points.clear()
        wizard.sources.clear()
        await type_value(pilot, "2.3")
        await wait_until(pilot, lambda: wizard.stage == "done", "every position")
        wizard.points[:] = [(0.0, 2.0), (100.0, 2.01), (200.0, 2.02), (300.0, 4.0)]  # monotonic, a poor line
        wizard.sources[:] = ["typed"] * 4
        await pilot.press("f5")
        await wait_until(pilot, lambda: "below the quality floor 0.99" in status(app), "the quality floor")
        assert len(stored()) == 4
        wizard.points[:] = [(0.0, 2.0), (100.0, 2.1), (200.0, 2.2), (300.0, 2.3)]
        wizard.show_points()
        assert "r squared 1.0000" in str(app.screen.query_one("#fit").render())
        await pilot.press("f5")
        await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
        await pilot.press("n")
        await wait_until(pilot, lambda: status(app) == "not saved", "not saved on no")
        await pilot.press("f5")
        await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: "saved as active: calibration #5" in status(app), "saved")
    rows = stored()
    assert rows[2][1:3] == ("actuator_position_to_ring_size", 0)
    assert rows[4] == (5, "actuator_position_to_ring_size", 1, "ring size wizard; points 1, 2, 3, 4 typed")


def camera_line(app: ToscaApp) -> str:
    return str(app.screen.query_one("#camera-reading").render())


async def test_ring_size_wizard_takes_the_cameras_measurement_and_gives_back_the_simulators_curve(
    rig: ControllerProcess, clock: FakeClock
) -> None:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE calibrations SET is_active = 0 WHERE device_type = 'camera'")
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_calibrations(pilot)
        screen = app.screen
        assert isinstance(screen, CalibrationScreen)
        # No camera scale calibration active: the camera's measurement is not offered, and says why.
        wizard = RingSizeWizard(screen.context, screen.user, positions_um=(0.0,))
        app.push_screen(wizard)
        await wait_until(pilot, lambda: showing(app, RingSizeWizard), "the wizard")
        await type_value(pilot, ENGINEER_PASSWORD)
        await wait_until(pilot, lambda: wizard.stage == "reading", "the first position", 30.0)
        await wait_until(pilot, lambda: "no active camera scale calibration" in camera_line(app), "why not")
        assert "camera's measurement not offered: ring 20" in camera_line(app)  # 2 mm: about 200 px
        await pilot.press("f6")
        await wait_until(pilot, lambda: "not taken:" in status(app), "the refusal")
        assert "no active camera scale calibration" in status(app)
        assert wizard.points == []
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, CalibrationScreen), "back from the wizard")

        # The factory camera scale active again: read by the controller at the next move.
        with sqlite3.connect(DATA_DIR / "tosca.db") as db:
            db.execute("UPDATE calibrations SET is_active = 1 WHERE device_type = 'camera'")
        positions = (0.0, 300.0, 600.0, 900.0)
        wizard = RingSizeWizard(screen.context, screen.user, positions_um=positions)
        app.push_screen(wizard)
        await wait_until(pilot, lambda: showing(app, RingSizeWizard), "the wizard again")
        await type_value(pilot, ENGINEER_PASSWORD)
        for n in range(len(positions)):
            await wait_until(
                pilot, lambda n=n: wizard.stage == "reading" and wizard.index == n, f"point {n}", 30.0
            )
            await wait_until(
                pilot,
                lambda: "F6 takes it" in camera_line(app),
                f"the camera's measurement at point {n}",
                10.0,
            )
            assert "through camera scale calibration #4" in camera_line(app)
            await pilot.press("f6")
            await wait_until(pilot, lambda n=n: len(wizard.points) == n + 1, f"point {n} taken")
        await wait_until(pilot, lambda: wizard.stage == "done", "every position")
        assert wizard.sources == ["camera"] * len(positions)
        # The simulator's own ring: 2.0 mm + 1 mm per 1000 um.
        for (um, mm), target in zip(wizard.points, positions, strict=True):
            assert um == pytest.approx(target, abs=2.0)
            model = PhysicalModel(seed=1)
            model.actuator_position_um = um
            assert mm == pytest.approx(model.ring_mm(), rel=0.02), (um, mm)
        await pilot.press("f5")
        await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: "saved as active: calibration #5" in status(app), "saved")
    assert stored()[-1] == (
        5,
        "actuator_position_to_ring_size",
        1,
        "ring size wizard; points 1, 2, 3, 4 from the camera (camera scale calibration #4)",
    )


async def test_laser_power_wizard_gives_back_the_simulators_curve_within_2_percent(
    rig: ControllerProcess, clock: FakeClock
) -> None:
    app = console(clock)
    currents = (1500.0, 3000.0, 4500.0, 6000.0, 7500.0, 9000.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_calibrations(pilot)
        screen = app.screen
        assert isinstance(screen, CalibrationScreen)
        wizard = LaserPowerWizard(screen.context, screen.user, currents_ma=currents)
        app.push_screen(wizard)
        await wait_until(pilot, lambda: showing(app, LaserPowerWizard), "the wizard")
        await type_value(pilot, ENGINEER_PASSWORD)
        for number, current in enumerate(currents):
            await wait_until(
                pilot,
                lambda number=number: wizard.index == number and wizard.stage == "reading",
                "the point",
                20.0,
            )
            assert f"{current:g} mA set" in prompt(app)
            assert not snapshot(app).emitting  # nothing before the footpedal
            if number == 0:
                await type_value(pilot, "1.0")  # the pedal is not pressed: refused, not recorded
                await wait_until(pilot, lambda: "press and hold the footpedal" in status(app), "no emission")
                await type_value(pilot, "inf")
                await wait_until(pilot, lambda: "not a finite number" in status(app), "inf refused")
                await type_value(pilot, "-0.5")
                await wait_until(pilot, lambda: "must be at least 0 W" in status(app), "negative refused")
                assert wizard.points == []
            await simulator(app, "pedal down")
            await wait_until(
                pilot,
                lambda current=current: (
                    snapshot(app).emitting and (snapshot(app).laser.current_ma or 0) > current - 50
                ),
                "the laser to emit",
            )
            reported = snapshot(app).laser.current_ma
            assert reported is not None
            meter = meter_reading(reported)
            await type_value(pilot, f"{meter:.4f}")
            await wait_until(
                pilot, lambda number=number: len(wizard.points) == number + 1, "the point recorded"
            )
            await simulator(app, "pedal up")
            await wait_until(pilot, lambda: not snapshot(app).emitting, "the laser off")
        await wait_until(pilot, lambda: wizard.stage == "done", "every point")
        assert "r squared 1.0000" in str(app.screen.query_one("#fit").render())
        await pilot.press("f5")
        await wait_until(pilot, lambda: showing(app, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: "saved as active" in status(app), "saved")
        await wait_until(pilot, lambda: snapshot(app).state.value == "idle", "the run ended")

    rows = stored()
    assert [(r[1], r[2]) for r in rows[4:]] == [
        ("laser_current_to_power", 1),
        ("photodiode_voltage_to_power", 1),
    ]
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        active = await load_active_calibrations(session_factory(engine))
    finally:
        await engine.dispose()
    assert active.laser.calibration_id == 5 and active.photodiode.calibration_id == 6
    for current in (2000.0, 5000.0, 8500.0):
        truth = sim_model.LASER_SLOPE_W_PER_A * (current / 1000.0 - sim_model.LASER_THRESHOLD_A)
        assert active.current_to_power_w(current) == pytest.approx(truth, rel=0.02)
    for volts in (1.0, 2.5, 4.0):
        assert active.photodiode_to_watts(volts) == pytest.approx(
            volts * sim_model.PHOTODIODE_W_PER_V, rel=0.02
        )


async def test_laser_power_wizard_is_refused_over_ssh_and_only_the_engineer_calibrates(
    data_dir: Path, clock: FakeClock
) -> None:
    from tui.screens.home import menu_for

    assert "w" in [entry.key for entry in menu_for("engineer")]
    assert "w" not in [entry.key for entry in menu_for("technician")]
    assert "w" not in [entry.key for entry in menu_for("admin")]
    await _people_and_factory_calibrations()
    app = console(clock, over_ssh=True, controller="off")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_calibrations(pilot, connect=False)
        await pilot.press("l")
        await wait_until(pilot, lambda: "not over SSH" in status(app), "refused over SSH")
        assert showing(app, CalibrationScreen)
