"""Focus stacks in the controller on the simulated rig: outside a session kept as the camera's focus
calibration (the sharpest score the new reference, the one before retired and used to judge it), during a
session a ``focus_stack`` recording of it; refused without a usable image or a folder to write in, and then
nothing is recorded or left behind."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, SUBJECT, USERNAME, authenticated, prepare_data_dir, wait_prechecks

from control import messages as msg
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.supervisor import SystemState
from devices.camera import FOCUS_INDEX, CameraState
from storage import DataDir
from tests.support import protocol_json, wait_until

PROTOCOL = protocol_json((30.0, 2.0, 2.0, 2.0, "constant"))
ADMIN, ADMIN_PASSWORD = "admin1", "admin password 1"
FRAMES = 4


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    data = await prepare_data_dir(tmp_path / "data", migrated_template, {"p": PROTOCOL})
    with sqlite3.connect(data.db_path) as db:
        db.execute(
            "INSERT INTO system_config (config_key, config_value, config_type, description) "
            "VALUES ('focus_stack_frames', ?, 'integer', 'frames in a focus stack')",
            (str(FRAMES),),
        )
    return data


@pytest.fixture
async def controller(data: DataDir) -> AsyncIterator[Controller]:
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    try:
        camera = ctl.rig.camera
        assert camera is not None
        await camera.wait_for_state(CameraState.OK, 10.0)
        yield ctl
    finally:
        await ctl.close()


def _rows(data: DataDir, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data.db_path) as db:
        return list(db.execute(sql, args))


def _read_index(folder: Path) -> dict[str, Any]:
    loaded = json.loads((folder / FOCUS_INDEX).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def _focus_event(client: ControllerClient, timeout_s: float = 20.0) -> msg.Event:
    async with asyncio.timeout(timeout_s):
        async for event in client.events():
            if event.kind == "focus_stack":
                return event
    raise AssertionError("the connection ended before the focus stack's event")


def _calibrations(data: DataDir) -> list[tuple[Any, ...]]:
    return _rows(
        data,
        "SELECT calibration_id, tech_id, device_type, is_active, calibration_data, validation_data "
        "FROM calibrations WHERE calibration_type = 'camera_focus_calibration' ORDER BY calibration_id",
    )


async def test_outside_a_session_a_stack_is_the_cameras_focus_calibration(
    controller: Controller, data: DataDir
) -> None:
    tech = await authenticated(data.root / "control.sock")
    admin = await authenticated(data.root / "control.sock", ADMIN, ADMIN_PASSWORD)
    try:
        with pytest.raises(CommandFailed, match="only an engineer or an admin"):
            await tech.call(msg.TakeFocusStack())
        reply = await admin.call(msg.TakeFocusStack())
        folder = data.root / "calibrations" / "camera"
        assert reply == {"folder": str(folder), "frames": FRAMES, "duration_s": pytest.approx(0.6)}
        with pytest.raises(CommandFailed, match="a focus stack is being taken"):
            await admin.call(msg.TakeFocusStack())
        first = await _focus_event(admin)
        assert first.severity == "info", first.message
        assert "no earlier focus reference to judge it by" in first.message

        [stack_name] = await asyncio.to_thread(_listing, folder)
        stack = folder / stack_name
        index = await asyncio.to_thread(_read_index, stack)
        assert [f["file"] for f in index["frames"]] == [f"frame_{n:02d}.png" for n in range(1, FRAMES + 1)]
        best = max(index["frames"], key=lambda f: f["score"])
        assert [f["frame"] for f in index["frames"] if f["sharpest"]] == [best["frame"]]
        assert index["resolution"] == "1280x720"
        [(cal_id, tech_id, device, active, cal_data, _validation)] = _calibrations(data)
        assert device == "camera" and active == 1
        assert tech_id == _rows(data, "SELECT tech_id FROM tech_users WHERE username = ?", ADMIN)[0][0]
        kept = json.loads(cal_data)
        assert kept["focus_score_reference"] == pytest.approx(best["score"])
        assert kept["sharpest_frame"] == best["frame"] and kept["frames"] == FRAMES
        assert kept["index_file"] == str(stack / FOCUS_INDEX)
        assert (
            f"calibration #{cal_id}" in first.message and f"sharpest frame {best['frame']}" in first.message
        )
        assert _rows(data, "SELECT * FROM session_recordings") == []

        # A second stack of the same (unchanged) optics is judged in focus by the first's reference, and
        # takes its place as the active calibration.
        await admin.call(msg.TakeFocusStack())
        second = await _focus_event(admin)
        assert "in focus (" in second.message and "NOT in focus" not in second.message
        rows = _calibrations(data)
        assert [(r[0], r[3]) for r in rows] == [(cal_id, 0), (cal_id + 1, 1)]
        validation = json.loads(rows[1][5])
        assert validation["previous_calibration_id"] == cal_id
        assert validation["previous_reference"] == pytest.approx(best["score"])
        assert validation["in_focus_against_previous"] is True
        assert len(await asyncio.to_thread(_listing, folder)) == 2
    finally:
        await admin.close()
        await tech.close()


async def test_during_a_session_a_stack_is_a_recording_of_the_session(
    controller: Controller, data: DataDir
) -> None:
    holder = await authenticated(data.root / "control.sock")
    admin = await authenticated(data.root / "control.sock", ADMIN, ADMIN_PASSWORD)
    try:
        await holder.call(
            msg.OpenSession(subject_code=SUBJECT, username=USERNAME, protocol_name="p", create_subject=True)
        )
        assert controller.session is not None
        session_id, folder = controller.session.opened.session_id, controller.session.opened.folder
        with pytest.raises(CommandFailed, match="another connection holds it"):
            await admin.call(msg.TakeFocusStack())
        reply = await holder.call(msg.TakeFocusStack())
        assert reply["folder"] == str(folder)
        event = await _focus_event(holder)
        assert event.severity == "info" and f"recorded with session {session_id}" in event.message
        [(path, size, frames, resolution, notes, duration)] = _rows(
            data,
            "SELECT file_path, file_size_bytes, frame_count, resolution, notes, duration_seconds "
            "FROM session_recordings WHERE session_id = ? AND recording_type = 'focus_stack'",
            session_id,
        )
        index_path = Path(path)
        assert index_path.name == FOCUS_INDEX and index_path.parent.parent == folder
        index = await asyncio.to_thread(_read_index, index_path.parent)
        assert frames == FRAMES == len(index["frames"]) and resolution == "1280x720"
        on_disk = await asyncio.to_thread(lambda: sum(p.stat().st_size for p in index_path.parent.iterdir()))
        assert size == on_disk
        assert duration == pytest.approx(index["frames"][-1]["time_s"])
        # One frame every 0.2 s: the frames are spread over the 0.6 s the stack said, not taken at once.
        assert index["frames"][-1]["time_s"] >= 0.45
        assert f"sharpest frame {index['sharpest_frame']} ({index['sharpest_file']}" in notes
        assert _calibrations(data) == [], "a session's stack is not a calibration"
    finally:
        await admin.close()
        await holder.close()


async def test_no_usable_image_or_no_place_to_write_records_nothing(
    controller: Controller, data: DataDir
) -> None:
    admin = await authenticated(data.root / "control.sock", ADMIN, ADMIN_PASSWORD)
    folder = data.root / "calibrations" / "camera"
    try:
        assert controller.sim_rig is not None
        camera = controller.rig.camera
        assert camera is not None
        controller.sim_rig.command("camera freeze on")
        await camera.wait_for_state(CameraState.FROZEN, 5.0)
        with pytest.raises(CommandFailed, match="no image to take: the camera is frozen"):
            await admin.call(msg.TakeFocusStack())
        controller.sim_rig.command("camera freeze off")
        await camera.wait_for_state(CameraState.OK, 5.0)

        # The stacks' folder cannot be made (a file holds its name): said, and nothing is left.
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("not a folder")
        await admin.call(msg.TakeFocusStack())
        event = await _focus_event(admin)
        assert event.severity == "warning"
        assert event.message.startswith("focus stack not saved: cannot create the folder")
        assert folder.read_text() == "not a folder"
        assert await asyncio.to_thread(_listing, folder.parent) == ["camera"]
        assert _calibrations(data) == []
    finally:
        await admin.close()


async def test_over_observe_sock_the_live_focus_score_arrives_but_no_stack_can_be_asked_for(
    controller: Controller, data: DataDir
) -> None:
    """An engineer's connection to ``observe.sock`` gets the camera previews with their focus score (what the
    focus screen shows live), but a focus stack, which acts for a person, is not a command there."""
    observer = await ControllerClient.connect(data.root / "observe.sock")
    try:
        await wait_until(
            lambda: (p := observer.latest_preview) is not None and p.camera == "ok" and p.focus is not None,
            15.0,
            "a preview with a focus score on observe.sock",
        )
        preview = observer.latest_preview
        assert preview is not None and preview.focus is not None and preview.focus > 0
        assert preview.jpeg_b64
        with pytest.raises(CommandFailed, match="unknown command type 'focus_stack'"):
            await observer.call(msg.TakeFocusStack())
    finally:
        await observer.close()
    assert _calibrations(data) == []


async def test_a_stack_during_treatment_never_holds_up_the_stop(
    controller: Controller, data: DataDir
) -> None:
    """The operator's connection asks for a focus stack while the laser emits and then stops: the stop is
    answered, and the laser off, while the stack is still being taken; the stack then ends as recorded."""
    holder = await authenticated(data.root / "control.sock")
    try:
        await holder.call(
            msg.OpenSession(subject_code=SUBJECT, username=USERNAME, protocol_name="p", create_subject=True)
        )
        await wait_prechecks(controller)
        await holder.call(msg.Arm(password=PASSWORD))
        assert controller.sim_rig is not None
        controller.sim_rig.command("pedal down")
        await wait_until(lambda: controller.sim_rig.model.laser_output_on, 10.0, "laser on")  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await holder.call(msg.TakeFocusStack())
        await holder.call(msg.Stop())
        stopped = loop.time() - asked
        assert controller.supervisor.state is SystemState.PAUSED
        assert not controller.sim_rig.model.laser_output_on
        assert controller.focus_stack_in_progress, (
            "the stack was still being taken when the stop was answered"
        )
        assert stopped < 0.5
        event = await _focus_event(holder)
        assert event.severity == "info", event.message
    finally:
        await holder.close()
