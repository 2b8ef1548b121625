"""The engineer's camera focus screen against a real controller on the simulated rig: the live focus score,
judged against the camera's focus reference; the key that records a focus stack (the folder, its frames and
index with the sharpest marked, and the calibration row, checked on disk and in the database); a frozen camera
has no stack to take and nothing is recorded. And the screen's snapshots at 80x24 and 120x40, from a fixed
preview and reference."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from console_fixtures import CLI, DATA_DIR, FakeClock, make_settings, seed, seed_sync, showing, wait_until
from test_treatment_console import sim
from textual.app import App
from textual.pilot import Pilot
from treatment_fixtures import console, controller, log_in, screen_text

import tui
from control.accounts import AccountService
from control.messages import Preview
from storage import create_engine, session_factory
from storage.engine import finish_closing_connections
from storage.repositories import ConfigRepository
from tests.support import CHEAP, RIG_TEST
from tui.app import ToscaApp
from tui.screens._base import PreviewUpdated, ScreenContext
from tui.screens.camera_focus import CameraFocusScreen
from tui.screens.home import HomeScreen

SnapCompare = Callable[..., bool]
ENGINEER, ENGINEER_PASSWORD = "eric", "engineer pass 1"
FRAMES = 4


async def _engineer_and_frames() -> None:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        accounts = AccountService(sessions=sessions, terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user(ENGINEER, "Eric Engineer", "engineer", ENGINEER_PASSWORD, CLI)
        async with sessions() as db, db.begin():
            await ConfigRepository(db).set(
                "focus_stack_frames", FRAMES, modified_by=None, config_type="integer"
            )
    finally:
        await engine.dispose()


def _rows(sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(db.execute(sql))


def _stacks() -> list[Path]:
    folder = DATA_DIR / "calibrations" / "camera"
    return sorted(folder.iterdir()) if folder.exists() else []


def _focus_shown(app: ToscaApp, title: str) -> bool:
    screen = app.screen
    if not isinstance(screen, CameraFocusScreen):
        return False
    text = screen_text(app)
    return f"\n{title}\n" in f"\n{text}\n" and "focus " in text


@RIG_TEST
@pytest.mark.timeout(180)
async def test_the_focus_screen_shows_the_live_score_and_records_a_stack(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    await _engineer_and_frames()
    async with controller():
        app = console(clock)
        async with app.run_test(size=(120, 40)) as pilot:
            await log_in(pilot, ENGINEER, ENGINEER_PASSWORD)
            await wait_until(pilot, lambda: app.snapshot is not None, "the controller's snapshot", 20.0)
            await pilot.press("f")
            await wait_until(pilot, lambda: showing(app, CameraFocusScreen), "the camera focus screen")
            # The live score, and no reference yet to judge it by.
            await wait_until(pilot, lambda: _focus_shown(app, "NO REFERENCE"), "the live focus score", 20.0)
            assert "reference: none yet" in screen_text(app)
            assert _stacks() == []

            await pilot.press("r")
            await wait_until(
                pilot,
                lambda: "focus stack saved" in screen_text(app),
                f"the stack saved: {screen_text(app)}",
                30.0,
            )
            [stack] = _stacks()
            index = json.loads((stack / "index.json").read_text(encoding="utf-8"))
            frames = index["frames"]
            assert len(frames) == FRAMES
            assert sorted(p.name for p in stack.iterdir()) == sorted(
                ["index.json"] + [f"frame_{n:02d}.png" for n in range(1, FRAMES + 1)]
            )
            best = max(frames, key=lambda f: f["score"])
            assert (
                [f["frame"] for f in frames if f["sharpest"]] == [best["frame"]] == [index["sharpest_frame"]]
            )
            picture = cv2.imread(str(stack / best["file"]))
            assert picture is not None and picture.shape == (720, 1280, 3)
            [(tech, data, active)] = _rows(
                "SELECT u.username, c.calibration_data, c.is_active FROM calibrations c JOIN tech_users u "
                "ON u.tech_id = c.tech_id WHERE c.calibration_type = 'camera_focus_calibration'"
            )
            assert tech == ENGINEER and active == 1
            assert json.loads(data)["focus_score_reference"] == pytest.approx(best["score"])
            # The stack became the reference: the same optics are now in focus by it.
            await wait_until(
                pilot, lambda: _focus_shown(app, "IN FOCUS"), "IN FOCUS by the new reference", 20.0
            )
            assert f"reference {best['score']:.0f}" in screen_text(app)

            # A frozen camera: no stack to take, said, and nothing more recorded.
            await sim(app, "camera freeze on")
            await wait_until(pilot, lambda: _focus_shown(app, "NO IMAGE"), "the frozen camera shown", 20.0)
            await pilot.press("r")
            await wait_until(
                pilot,
                lambda: "focus stack refused: no image to take: the camera is frozen" in screen_text(app),
                "the stack refused",
                20.0,
            )
            assert _stacks() == [stack]
            assert (
                len(_rows("SELECT * FROM calibrations WHERE calibration_type = 'camera_focus_calibration'"))
                == 1
            )
            await pilot.press("escape")
            await wait_until(pilot, lambda: showing(app, HomeScreen), "back home")


# -- snapshots ---------------------------------------------------------------------------------------------


def _fixed_preview() -> Preview:
    """A fixed camera preview: a grey gradient, a bright ring and the green outline the controller draws."""
    width, height = 160, 90
    ys, xs = np.mgrid[0:height, 0:width]
    grey = (30 + 40 * xs / width + 20 * ys / height).astype(np.uint8)
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    cv2.circle(image, (80, 45), 30, (210, 210, 210), 3, cv2.LINE_AA)
    cv2.circle(image, (80, 45), 30, (0, 200, 0), 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return Preview(
        seq=1,
        time_s=100.0,
        camera="ok",
        width=width,
        height=height,
        jpeg_b64=base64.b64encode(encoded.tobytes()).decode("ascii"),
        ring_diameter_mm=2.0,
        ring_diameter_px=200.0,
        focus=391.6,
    )


class _ShownLink:
    """What the screen reads of a link for a picture: the newest preview; nothing is ever asked of it."""

    preview = _fixed_preview()
    snapshot = None


class FocusApp(App[None]):
    CSS_PATH = Path(tui.__file__).parent / "tosca.tcss"

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.engine = create_engine(DATA_DIR / "tosca.db")
        accounts = AccountService(sessions=session_factory(self.engine), terminal="/dev/tty1", hashing=CHEAP)
        self.accounts = accounts
        self.context = ScreenContext(
            settings=make_settings(clock, sim=True),
            accounts=accounts,
            link=_ShownLink(),  # type: ignore[arg-type]
        )

    async def on_mount(self) -> None:
        user = await self.accounts.get_user(ENGINEER)
        assert user is not None
        await self.push_screen(CameraFocusScreen(self.context, user, stale_after_s=None))

    async def on_unmount(self) -> None:
        await self.engine.dispose()
        await finish_closing_connections()


def _reference_row() -> None:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        (tech_id,) = db.execute("SELECT tech_id FROM tech_users WHERE username = ?", (ENGINEER,)).fetchone()
        db.execute(
            "INSERT INTO calibrations (calibration_date, tech_id, device_type, calibration_type, "
            "calibration_data, is_active) "
            "VALUES ('2026-03-14 09:00:00', ?, 'camera', 'camera_focus_calibration', ?, 1)",
            (tech_id, json.dumps({"focus_score_reference": 420.0, "in_focus_fraction": 0.8})),
        )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_camera_focus_screen(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    seed_sync()
    asyncio.run(_engineer_and_frames())
    _reference_row()

    async def shown(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await wait_until(pilot, lambda: "reference 420" in screen_text_of(app), "the reference read")
        screen = app.screen
        assert isinstance(screen, CameraFocusScreen)
        screen.post_message(PreviewUpdated(_fixed_preview()))
        await wait_until(pilot, lambda: "IN FOCUS" in screen_text_of(app), "the verdict")
        await pilot.pause()

    assert snap_compare(FocusApp(clock), terminal_size=size, run_before=shown)


def screen_text_of(app: App[Any]) -> str:
    from textual.widgets import Static

    return "\n".join(str(w.content) for w in app.screen.query(Static))
