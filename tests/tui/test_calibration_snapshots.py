"""Snapshots of the engineer's calibration list, of the laser power wizard refusing a fit that is not
monotonic, and of the ring size wizard offering the camera's measurement, at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp, LinkStandIn
from console_fixtures import CLI, DATA_DIR, FakeClock, seed, tables_measured, wait_until
from textual.pilot import Pilot
from textual.widgets import Label

from control.accounts import AccountService
from control.calibration import install_sim_calibrations_if_missing
from control.messages import Preview
from storage import create_engine, session_factory
from tests.support import CHEAP
from tui.screens._base import PreviewUpdated
from tui.screens.calibration import CalibrationScreen, LaserPowerWizard, RingSizeWizard

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


async def _calibrations() -> None:
    """eve (engineer), the simulated rig's factory set twice (the first kept inactive), at fixed dates."""
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        accounts = AccountService(sessions=sessions, terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user("eve", "Eve Engineer", "engineer", "engineer pass 1", CLI)
        eve = await accounts.get_user("eve")
        assert eve is not None
        await install_sim_calibrations_if_missing(sessions, eve.tech_id)
    finally:
        await engine.dispose()
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE calibrations SET calibration_date = '2026-03-01 10:00:00.000000'")
        db.execute(
            "INSERT INTO calibrations (calibration_date, tech_id, device_type, calibration_type, "
            "calibration_data, is_active, notes) SELECT '2025-02-01 09:00:00.000000', tech_id, device_type, "
            "calibration_type, calibration_data, 0, 'before the move to the new room' FROM calibrations "
            "WHERE device_type = 'laser'"
        )


def calibration_screen(context: Any, user: Any) -> CalibrationScreen:
    return CalibrationScreen(context, user)


def laser_wizard(context: Any, user: Any) -> LaserPowerWizard:
    return LaserPowerWizard(context, user, currents_ma=(1000.0, 2000.0, 3000.0, 4000.0))


@pytest.mark.parametrize("size", SIZES)
def test_calibration_list_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(_calibrations())
    app = AdminScreenApp(calibration_screen, clock, username="eve")

    async def listed(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, CalibrationScreen), "the screen")
        screen = pilot.app.screen
        assert isinstance(screen, CalibrationScreen)
        await wait_until(pilot, lambda: len(screen.rows) == 5, "the calibrations")
        await tables_measured(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=listed)


@pytest.mark.parametrize("size", SIZES)
def test_laser_wizard_refusal_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(_calibrations())
    app = AdminScreenApp(laser_wizard, clock, link=LinkStandIn(), username="eve")

    async def refused(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, LaserPowerWizard), "the wizard")
        wizard = pilot.app.screen
        assert isinstance(wizard, LaserPowerWizard)
        wizard.points[:] = [(1000.0, 0.5, 0.25), (2000.0, 1.5, 0.75), (3000.0, 1.2, 0.6), (4000.0, 3.5, 1.75)]
        wizard.show_points()
        await pilot.press("f5")
        await wait_until(
            pilot,
            lambda: "not monotonic" in str(wizard.query_one("#status", Label).render()),
            "the refusal",
        )
        await tables_measured(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=refused)


def ring_wizard(context: Any, user: Any) -> RingSizeWizard:
    return RingSizeWizard(context, user, positions_um=(0.0, 500.0, 1000.0))


@pytest.mark.parametrize("size", SIZES)
def test_ring_wizard_camera_offer_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(_calibrations())
    app = AdminScreenApp(ring_wizard, clock, link=LinkStandIn(), username="eve")

    async def offered(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, RingSizeWizard), "the wizard")
        wizard = pilot.app.screen
        assert isinstance(wizard, RingSizeWizard)
        wizard.points[:] = [(0.0, 2.001), (500.0, 2.498)]
        wizard.sources[:] = ["camera", "typed"]
        wizard.show_points()
        wizard.index, wizard.current_position, wizard.stage = 2, 1000.0, "reading"
        wizard.ask_value(
            "Point 3 of 3: actuator at 1000.0 um. Type the ring diameter you measured, mm:", "mm"
        )
        for seq in (1, 2):  # the second preview since the actuator stopped
            preview = Preview(
                seq=seq,
                time_s=1.0,
                camera="ok",
                ring_diameter_px=300.2,
                ring_diameter_mm=3.002,
                ring_scale_id=4,
            )
            wizard.post_message(PreviewUpdated(preview))
            await pilot.pause()
        await wait_until(
            pilot,
            lambda: "F6 takes it" in str(wizard.query_one("#camera-reading", Label).render()),
            "the offer",
        )
        await tables_measured(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=offered)
