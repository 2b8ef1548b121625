"""Treatment imaging in the controller on the simulated rig: snapshots (the files, their session_recordings
rows and image_captured events) and the aiming beam (its events, and off after each way a session ends, read
from the safety board simulator itself)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from account_fixtures import CHEAP
from controller_fixtures import (
    PASSWORD,
    SUBJECT,
    USERNAME,
    authenticated,
    open_and_treat,
    prepare_data_dir,
    wait_prechecks,
)

from control import messages as msg
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.supervisor import Refused, SystemState
from devices.camera import CameraCapture, CameraState
from storage import DataDir
from tests.support import protocol_json, wait_until

# One step of 4 s at 2 W on a 2.0 mm ring.
PROTOCOL = protocol_json((4.0, 2.0, 2.0, 2.0, "constant"))
# One short step: the session completes by itself.
SHORT = protocol_json((0.6, 1.0, 1.0, 2.0, "constant"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(tmp_path / "data", migrated_template, {"p": PROTOCOL, "short": SHORT})


async def _controller(data: DataDir) -> Controller:
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    return ctl


@pytest.fixture
async def controller(data: DataDir) -> AsyncIterator[Controller]:
    ctl = await _controller(data)
    try:
        yield ctl
    finally:
        await ctl.close()


async def _open(controller: Controller, protocol: str = "p") -> int:
    opened = await controller.open_session(
        subject_code=SUBJECT, username=USERNAME, protocol_name=protocol, create_subject=True
    )
    camera = controller.rig.camera
    assert camera is not None
    await camera.wait_for_state(CameraState.OK, 10.0)
    return opened.session_id


def _rows(data: DataDir, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data.db_path) as db:
        return list(db.execute(sql, args))


async def _recorded(controller: Controller) -> None:
    """Wait until the recorder has written every row it accepted."""
    await controller.recorder.flush()


def _aim_events(data: DataDir, session_id: int) -> list[dict[str, Any]]:
    rows = _rows(
        data,
        "SELECT event_details FROM treatment_events WHERE session_id = ? AND event_type = 'user_action' "
        "ORDER BY event_id",
        session_id,
    )
    details = [json.loads(r[0]) for r in rows]
    return [d for d in details if d.get("action") == "aiming_beam"]


def _board(controller: Controller) -> Any:
    assert controller.sim_rig is not None
    return controller.sim_rig.safety


# -- snapshots -------------------------------------------------------------------------------------------


async def test_a_snapshot_during_treatment_leaves_two_pngs_two_rows_and_one_event(
    controller: Controller, data: DataDir
) -> None:
    session_id = await open_and_treat(controller, "p")
    taken = await controller.take_snapshot(by=USERNAME)
    assert controller.supervisor.state is SystemState.TREATING, "the treatment goes on"

    folder = controller.session.opened.folder if controller.session else None
    raw_path, annotated_path = Path(taken.raw_path), Path(taken.annotated_path)
    assert raw_path.parent == annotated_path.parent == folder
    raw = cv2.imread(str(raw_path), cv2.IMREAD_UNCHANGED)
    annotated = cv2.imread(str(annotated_path), cv2.IMREAD_UNCHANGED)
    assert raw is not None and annotated is not None
    assert raw.shape == annotated.shape == (720, 1280, 3)
    assert taken.resolution == "1280x720"
    assert taken.ring_mm == pytest.approx(2.0, abs=0.05)
    # Where the 2.0 mm ring is (100 px from the centre at 100 px/mm), the annotated picture differs.
    differs = np.any(raw != annotated, axis=2)
    assert differs[360, 740] and differs[360, 540] and differs[260, 640] and differs[460, 640]
    assert not differs[650:, :300].any()

    await _recorded(controller)
    rows = _rows(
        data,
        "SELECT file_path, file_size_bytes, resolution, frame_count, timestamp FROM session_recordings "
        "WHERE session_id = ? AND recording_type = 'snapshot' ORDER BY recording_id",
        session_id,
    )
    assert [r[0] for r in rows] == [str(raw_path), str(annotated_path)]
    sizes = [(await asyncio.to_thread(path.stat)).st_size for path in (raw_path, annotated_path)]
    assert [r[1] for r in rows] == sizes
    assert {r[2] for r in rows} == {"1280x720"} and {r[3] for r in rows} == {1}
    assert all(r[4] for r in rows)
    events = _rows(
        data,
        "SELECT time_offset_ms, image_path, event_details FROM treatment_events "
        "WHERE session_id = ? AND event_type = 'image_captured'",
        session_id,
    )
    assert len(events) == 1
    offset_ms, image_path, details = events[0]
    assert image_path == str(raw_path)
    assert offset_ms == pytest.approx(taken.offset_s * 1000, abs=50)
    assert offset_ms > 0
    recorded = json.loads(details)
    assert recorded["annotated_path"] == str(annotated_path)
    assert recorded["by"] == USERNAME and recorded["resolution"] == "1280x720"


async def test_a_frozen_camera_has_no_image_to_take_and_nothing_is_recorded(
    controller: Controller, data: DataDir
) -> None:
    session_id = await _open(controller)
    assert controller.sim_rig is not None
    folder = controller.session.opened.folder if controller.session else Path()
    before = sorted(folder.iterdir())
    controller.sim_rig.command("camera freeze on")
    camera = controller.rig.camera
    assert camera is not None
    await camera.wait_for_state(CameraState.FROZEN, 5.0)
    with pytest.raises(Refused, match="no image to take: the camera is frozen"):
        await controller.take_snapshot(by=USERNAME)
    controller.sim_rig.command("camera freeze off")
    controller.sim_rig.command("unplug camera")
    await camera.wait_for_state(CameraState.NOT_OPENED, 5.0)
    with pytest.raises(Refused, match="no image to take"):
        await controller.take_snapshot(by=USERNAME)
    await _recorded(controller)
    assert sorted(folder.iterdir()) == before
    assert _rows(data, "SELECT * FROM session_recordings WHERE recording_type = 'snapshot'") == []
    assert _rows(data, "SELECT * FROM treatment_events WHERE event_type = 'image_captured'") == []
    assert controller.session is not None and controller.session.opened.session_id == session_id


async def test_a_snapshot_that_cannot_be_written_is_refused_and_treatment_goes_on(
    controller: Controller, data: DataDir
) -> None:
    await open_and_treat(controller, "p")
    session = controller.session
    assert session is not None
    folder = session.opened.folder
    # The session's folder is gone and a file holds its name: no picture can be written there.
    moved = folder.with_name(folder.name + "-moved")
    folder.rename(moved)
    folder.write_text("not a folder")
    try:
        with pytest.raises(Refused, match="cannot create the snapshot folder"):
            await controller.take_snapshot(by=USERNAME)
        assert controller.supervisor.state is SystemState.TREATING
        assert not [p for p in moved.iterdir() if p.suffix == ".png" or p.name.endswith(".partial")]
    finally:
        folder.unlink()
        moved.rename(folder)
    await _recorded(controller)
    assert _rows(data, "SELECT * FROM session_recordings WHERE recording_type = 'snapshot'") == []


async def test_the_snapshot_and_aiming_beam_commands_belong_to_the_holding_connection(
    controller: Controller, data: DataDir
) -> None:
    holder = await authenticated(data.root / "control.sock")
    other = await authenticated(data.root / "control.sock")
    try:
        with pytest.raises(CommandFailed, match="no session is open"):
            await holder.call(msg.TakeSnapshot())
        with pytest.raises(CommandFailed, match="no session is open"):
            await holder.call(msg.AimingBeam(on=True))
        await holder.call(
            msg.OpenSession(subject_code=SUBJECT, username=USERNAME, protocol_name="p", create_subject=True)
        )
        camera = controller.rig.camera
        assert camera is not None
        await camera.wait_for_state(CameraState.OK, 10.0)
        with pytest.raises(CommandFailed, match="another connection holds it"):
            await other.call(msg.AimingBeam(on=True))
        with pytest.raises(CommandFailed, match="another connection holds it"):
            await other.call(msg.TakeSnapshot())
        assert not _board(controller).aiming_beam
        reply = await holder.call(msg.TakeSnapshot())
        assert controller.session is not None
        assert reply == {"folder": str(controller.session.opened.folder)}
        saved = await _snapshot_event(holder)
        assert saved.severity == "info" and saved.message.startswith("snapshot saved at ")
        reply = await holder.call(msg.AimingBeam(on=True))
        assert reply == {"on": True}
        snapshot = await holder.wait_snapshot(lambda s: s.aiming_beam, 3.0)
        assert snapshot.aiming_beam
    finally:
        await other.close()
        await holder.close()


async def _snapshot_event(client: ControllerClient, timeout_s: float = 15.0) -> msg.Event:
    async with asyncio.timeout(timeout_s):
        async for event in client.events():
            if event.kind == "snapshot":
                return event
    raise AssertionError("the connection ended before the snapshot's event")


async def test_the_snapshot_key_is_answered_at_once_and_never_holds_up_a_stop(
    controller: Controller, data: DataDir
) -> None:
    """The operator's connection asks for a snapshot and then stops: the stop is answered (and the laser
    off) long before the pictures are saved; the outcome comes as an event naming both files."""
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
        asked = asyncio.get_running_loop().time()
        await holder.call(msg.TakeSnapshot())
        with pytest.raises(CommandFailed, match="a snapshot is being saved"):
            await holder.call(msg.TakeSnapshot())
        await holder.call(msg.Stop())
        stopped = asyncio.get_running_loop().time() - asked
        assert controller.supervisor.state is SystemState.PAUSED
        assert controller.snapshot_in_progress, (
            "the pictures were still being saved when the stop was answered"
        )
        event = await _snapshot_event(holder)
        assert event.severity == "info"
        folder = controller.session.opened.folder if controller.session else Path()
        names = sorted(p.name for p in await asyncio.to_thread(lambda: list(folder.glob("snapshot_*.png"))))
        assert len(names) == 2 and all(name in event.message for name in names)
        assert stopped < 0.5
    finally:
        await holder.close()


async def test_a_snapshot_that_fails_says_why_in_its_event(controller: Controller, data: DataDir) -> None:
    holder = await authenticated(data.root / "control.sock")
    try:
        await holder.call(
            msg.OpenSession(subject_code=SUBJECT, username=USERNAME, protocol_name="p", create_subject=True)
        )
        camera = controller.rig.camera
        assert camera is not None
        await camera.wait_for_state(CameraState.OK, 10.0)
        session = controller.session
        assert session is not None
        folder = session.opened.folder
        moved = folder.with_name(folder.name + "-moved")
        folder.rename(moved)
        folder.write_text("not a folder")
        try:
            await holder.call(msg.TakeSnapshot())
            event = await _snapshot_event(holder)
        finally:
            folder.unlink()
            moved.rename(folder)
        assert event.severity == "warning"
        assert event.message.startswith("snapshot not saved: cannot create the snapshot folder")
    finally:
        await holder.close()


# -- the aiming beam ---------------------------------------------------------------------------------------


async def test_the_aiming_beam_switches_the_boards_aiming_output_and_shows_in_the_camera(
    controller: Controller, data: DataDir
) -> None:
    session_id = await _open(controller)
    board = _board(controller)
    camera = controller.rig.camera
    assert isinstance(camera, CameraCapture), "the simulated rig's camera runs in the controller's process"

    async def centre_level() -> int:
        await camera.wait_for_frames(camera.frames_delivered + 3, 3.0)
        frame = camera.latest_frame
        assert frame is not None
        return int(frame.grey[355:366, 635:646].mean())

    dark = await centre_level()
    assert (await controller.set_aiming_beam(True, by=USERNAME)).on
    assert board.aiming_beam and controller.aiming_on and controller.snapshot().aiming_beam
    assert await centre_level() > dark + 100
    assert not (await controller.set_aiming_beam(False, by=USERNAME)).on
    assert not board.aiming_beam and not controller.snapshot().aiming_beam
    assert await centre_level() < dark + 20
    # The aiming beam never touched the treatment laser.
    assert controller.sim_rig is not None and not controller.sim_rig.model.laser_output_on
    assert controller.supervisor.state is SystemState.READY
    await _recorded(controller)
    events = _aim_events(data, session_id)
    assert [(e["on"], e["by"], e["reason"]) for e in events] == [
        (True, USERNAME, "asked for"),
        (False, USERNAME, "asked for"),
    ]


async def test_the_aiming_beam_stays_on_while_the_laser_emits_by_default(
    controller: Controller, data: DataDir
) -> None:
    await _open(controller)
    await controller.set_aiming_beam(True, by=USERNAME)
    await wait_prechecks(controller)
    await controller.arm(PASSWORD)
    assert controller.sim_rig is not None
    controller.sim_rig.command("pedal down")
    await wait_until(lambda: controller.supervisor.state is SystemState.TREATING, 10.0, "TREATING")
    await wait_until(lambda: controller.sim_rig.model.laser_output_on, 2.0, "laser on")  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert _board(controller).aiming_beam


async def test_with_the_setting_off_the_beam_goes_off_when_emission_starts(data: DataDir) -> None:
    with sqlite3.connect(data.db_path) as db:
        db.execute(
            "UPDATE system_config SET config_value = 'false' WHERE config_key = 'aiming_beam_during_emission'"
        )
    controller = await _controller(data)
    try:
        session_id = await _open(controller)
        await controller.set_aiming_beam(True, by=USERNAME)
        await wait_prechecks(controller)
        await controller.arm(PASSWORD)
        assert controller.sim_rig is not None
        controller.sim_rig.command("pedal down")
        await wait_until(lambda: controller.supervisor.state is SystemState.TREATING, 10.0, "TREATING")
        await wait_until(lambda: not _board(controller).aiming_beam, 2.0, "the aiming beam off")
        with pytest.raises(Refused, match="stays off while the treatment laser emits"):
            await controller.set_aiming_beam(True, by=USERNAME)
        assert controller.supervisor.state is SystemState.TREATING, "emission was never held up"
        controller.sim_rig.command("pedal up")
        await wait_until(lambda: controller.supervisor.state is SystemState.ARMED, 5.0, "ARMED")
        assert not _board(controller).aiming_beam, "no automatic switch-on"
        await _recorded(controller)
        events = _aim_events(data, session_id)
        assert [e["on"] for e in events] == [True, False]
        assert "emits" in events[1]["reason"] and events[1]["by"] == "controller"
    finally:
        await controller.close()


@pytest.mark.parametrize("ending", ["complete", "abort", "fault", "disconnect"])
async def test_the_aiming_beam_is_off_after_each_way_a_session_can_end(data: DataDir, ending: str) -> None:
    controller = await _controller(data)
    client = await authenticated(data.root / "control.sock")
    try:
        board = _board(controller)
        sim = controller.sim_rig
        assert sim is not None
        opened = await client.call(
            msg.OpenSession(
                subject_code=SUBJECT,
                username=USERNAME,
                protocol_name="short" if ending == "complete" else "p",
                create_subject=True,
            )
        )
        session_id = opened["session_id"]
        await client.call(msg.AimingBeam(on=True))
        assert board.aiming_beam
        if ending == "complete":
            await wait_prechecks(controller)
            await client.call(msg.Arm(password=PASSWORD))
            await client.call(msg.Sim(command="pedal down"))
            await wait_until(lambda: controller.session is None, 15.0, "the session to complete")
            assert _rows(data, "SELECT status FROM sessions WHERE session_id = ?", session_id) == [
                ("completed",)
            ]
        elif ending == "abort":
            await client.call(msg.Abort(reason="subject moved"))
            assert controller.session is None
        elif ending == "fault":
            await client.call(msg.Sim(command="estop on"))
            await wait_until(lambda: controller.supervisor.state is SystemState.FAULT, 3.0, "FAULT")
        else:
            await client.close()
        await wait_until(lambda: not board.aiming_beam, 3.0, "the board's aiming beam off")
        await wait_until(lambda: not controller.aiming_on, 3.0, "the board's acknowledgement")
        if ending == "disconnect":
            await wait_until(lambda: controller.authority.holder is None, 3.0, "no holder")
        await _recorded(controller)
        events = _aim_events(data, session_id)
        assert [e["on"] for e in events] == [True, False], events
        reason = events[-1]["reason"]
        expected = {
            "complete": "session completed",
            "abort": "session aborted",
            "fault": "fault",
            "disconnect": "connection closing",
        }[ending]
        assert expected in reason
    finally:
        await client.close()
        await controller.close()


@pytest.mark.parametrize("left_on", ["by the operator in a session", "unknown to the controller"])
async def test_the_aiming_beam_is_off_once_the_controller_has_stopped(data: DataDir, left_on: str) -> None:
    controller = await _controller(data)
    board = _board(controller)
    try:
        if left_on == "by the operator in a session":
            await _open(controller)
            assert (await controller.set_aiming_beam(True, by=USERNAME)).on
        else:
            # On at the board without the controller knowing (an acknowledgement that came too late, or a
            # beam a previous controller left on): no session, and the controller shows it off.
            assert board.handle_line("LASER_ON") == ["OK:LASER_ON"]
            assert controller.session is None and not controller.aiming_on
        assert board.aiming_beam
    finally:
        await controller.close()
    assert not board.aiming_beam, "the safety board's aiming beam is still on after the controller stopped"
    assert controller.supervisor.state in (SystemState.IDLE, SystemState.READY)
