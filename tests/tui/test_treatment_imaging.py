"""The imaging keys of the console against a real controller on the simulated rig: F2 saves a snapshot (the
console says where; the files and rows are checked on disk and in the database) and F3 switches the aiming
beam (its state on the checks screen and the dashboard), on the checks screen and on the dashboard; a frozen
camera has no image to take."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import cv2
import pytest
from console_fixtures import DATA_DIR, FakeClock, seed, showing, wait_until
from test_treatment_console import arm_on_checks, open_session, sim
from textual.pilot import Pilot
from treatment_fixtures import add_subject, console, controller, log_in, screen_text

from tests.support import RIG_TEST
from tui.app import ToscaApp
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen

pytestmark = RIG_TEST


@pytest.fixture
async def ready(data_dir: Path) -> Any:
    await seed()
    await add_subject()
    async with controller() as ctl:
        yield ctl


def notifications(app: ToscaApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


def snapshot_rows() -> list[tuple[str, int, str]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(
            db.execute(
                "SELECT file_path, file_size_bytes, resolution FROM session_recordings "
                "WHERE recording_type = 'snapshot' ORDER BY recording_id"
            )
        )


def focus_stack_rows() -> list[str]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return [
            path
            for (path,) in db.execute(
                "SELECT file_path FROM session_recordings "
                "WHERE recording_type = 'focus_stack' AND session_id = 1"
            )
        ]


def aim_shown(app: ToscaApp, on: bool) -> bool:
    snapshot = app.snapshot
    return (
        snapshot is not None
        and snapshot.aiming_beam is on
        and ("aiming beam ON" if on else "aiming beam off") in screen_text(app)
    )


async def press_and_see(pilot: Pilot[Any], key: str, text: str, what: str) -> None:
    app = pilot.app
    assert isinstance(app, ToscaApp)
    await pilot.press(key)
    await wait_until(
        pilot, lambda: text in notifications(app), f"{what} (shown: {notifications(app)!r})", 20.0
    )


@pytest.mark.timeout(180)
async def test_snapshot_and_aiming_beam_keys_on_the_checks_screen_and_the_dashboard(
    ready: Any, clock: FakeClock
) -> None:
    app = console(clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot)
        checks = await open_session(pilot)
        assert aim_shown(app, False)
        assert {"f2", "f3"} <= set(app.screen.active_bindings)

        # F3 on the checks screen: the aiming beam on, shown on the session line.
        await press_and_see(pilot, "f3", "aiming beam on", "the aiming beam switched on")
        await wait_until(pilot, lambda: aim_shown(app, True), "aim ON on the checks screen")

        # F2 on the checks screen: the picture saved, and where.
        await press_and_see(pilot, "f2", "snapshot saved", "the snapshot saved")
        assert showing(app, ChecksScreen) and app.screen is checks
        rows = snapshot_rows()
        assert len(rows) == 2
        raw, annotated = Path(rows[0][0]), Path(rows[1][0])
        assert f"{raw.name} and {annotated.name} in {raw.parent}" in notifications(app)
        for path, size, resolution in rows:
            image = cv2.imread(path)
            assert image is not None and image.shape == (720, 1280, 3)
            assert resolution == "1280x720"
            assert (await asyncio.to_thread(Path(path).stat)).st_size == size
        # The aiming beam was on: its spot is at the centre of the raw picture.
        assert int(cv2.imread(str(raw), cv2.IMREAD_GRAYSCALE)[360, 640]) > 150

        # F10 on the checks screen: a focus stack recorded with the session, its frames and index on disk.
        await press_and_see(pilot, "f10", "taking a focus stack of 15 frames", "the focus stack started")
        saved = "focus stack saved"
        await wait_until(pilot, lambda: saved in notifications(app), "the focus stack saved", 30.0)
        assert "recorded with session 1" in notifications(app)
        stacks = focus_stack_rows()
        assert len(stacks) == 1
        index = json.loads(await asyncio.to_thread(Path(stacks[0]).read_text))
        assert len(index["frames"]) == 15
        assert sum(1 for frame in index["frames"] if frame["sharpest"]) == 1

        # Arm: the dashboard shows the aiming beam on the Laser line; F2 and F3 work there too.
        await arm_on_checks(pilot)
        await wait_until(pilot, lambda: showing(app, DashboardScreen), "the dashboard", 20.0)
        await wait_until(pilot, lambda: aim_shown(app, True), "aim ON on the dashboard")
        before = notifications(app).count("snapshot saved")
        await pilot.press("f2")
        await wait_until(
            pilot, lambda: notifications(app).count("snapshot saved") == before + 1, "a second snapshot", 20.0
        )
        assert len(snapshot_rows()) == 4
        await press_and_see(pilot, "f3", "aiming beam off", "the aiming beam switched off")
        await wait_until(pilot, lambda: aim_shown(app, False), "aim off on the dashboard")

        # A frozen camera: no image to take, said, and nothing recorded.
        await sim(app, "camera freeze on")
        await wait_until(pilot, lambda: _camera_frozen(app), "the camera frozen", 10.0)
        await press_and_see(pilot, "f2", "no image to take", "the snapshot refused")
        assert "snapshot refused: no image to take: the camera is frozen" in notifications(app)
        assert len(snapshot_rows()) == 4


def _camera_frozen(app: ToscaApp) -> bool:
    snapshot = app.snapshot
    return snapshot is not None and any(d.name == "camera" and d.state == "frozen" for d in snapshot.devices)
