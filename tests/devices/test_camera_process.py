"""The camera in a process of its own: health, recording, previews, a crashed or orphaned camera process, and
the priority it leaves to the controller."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.camera import CameraClosedError, CameraProcess, CameraState, describe_spec

#: The camera process imports numpy and OpenCV before its first frame: allow for a loaded machine.
START_S = 30.0


@pytest.fixture
async def camera() -> AsyncIterator[CameraProcess]:
    cam = CameraProcess("sim", restart_after_s=0.2)
    cam.start()
    try:
        await cam.wait_for_state(CameraState.OK, START_S)
        yield cam
    finally:
        await cam.aclose()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (a reaped child does not)."""
    return Path(f"/proc/{pid}").exists()


async def _wait_until(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_a_simulated_camera_reports_ok_with_its_name_and_frame_size(camera: CameraProcess) -> None:
    status = camera.status()
    assert status.state is CameraState.OK
    assert status.reason == ""
    assert status.source == "simulated camera"
    assert camera.description == "simulated camera"
    assert camera.frame_size == (1280, 720)
    assert camera.pid is not None and camera.pid != os.getpid()


async def test_a_recording_made_by_the_camera_process_is_a_playable_video(
    camera: CameraProcess, tmp_path: Path
) -> None:
    path = await camera.start_recording(tmp_path, fps=10.0, stem="video")
    assert path.parent == tmp_path
    await _wait_until(lambda: camera.status().recording, 5.0)
    await asyncio.sleep(1.0)
    summary = await camera.stop_recording()
    assert summary is not None and summary.error is None
    assert summary.path == path
    assert summary.frame_count >= 3
    reader = cv2.VideoCapture(str(path))
    try:
        ok, image = reader.read()
    finally:
        reader.release()
    assert ok and image.shape[:2] == (720, 1280)
    assert await camera.stop_recording() is None


async def test_a_second_recording_is_refused_with_the_same_error_as_in_process(
    camera: CameraProcess, tmp_path: Path
) -> None:
    await camera.start_recording(tmp_path, stem="first")
    with pytest.raises(RuntimeError, match="already recording"):
        await camera.start_recording(tmp_path, stem="second")
    await camera.stop_recording()


async def test_the_preview_is_a_small_jpeg_with_the_ring_measured_in_the_camera_process(
    camera: CameraProcess,
) -> None:
    image = await camera.preview(width=160, quality=70, expected_mm=2.0)
    assert image is not None
    decoded = cv2.imdecode(np.frombuffer(image.jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == (90, 160) == (image.height, image.width)
    ring = image.analysis.ring
    assert ring is not None, image.analysis.no_ring_reason
    assert ring.diameter_mm == pytest.approx(2.0, abs=0.05)  # the simulated camera's ring on its own


async def test_a_missing_video_file_is_not_opened_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.mkv"
    cam = CameraProcess(str(missing))
    assert cam.description == f"video file {missing}"
    assert cam.status().state is CameraState.NOT_OPENED  # not started
    cam.start()
    try:
        status = await cam.wait_for_state(CameraState.NOT_OPENED, START_S)
        await _wait_until(lambda: str(missing) in cam.status().reason, START_S)
        assert cam.status().state is CameraState.NOT_OPENED
        assert status.fps == 0.0
    finally:
        await cam.aclose()
    assert cam.status().reason == "camera capture closed"


async def test_a_camera_process_that_dies_is_reported_and_started_again(
    camera: CameraProcess, tmp_path: Path
) -> None:
    await camera.start_recording(tmp_path, stem="video")
    pid = camera.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await _wait_until(lambda: "ended" in camera.status().reason, 10.0)
    status = camera.status()
    assert status.state is CameraState.NOT_OPENED
    assert f"exit status -{int(signal.SIGKILL)}" in status.reason
    summary = await camera.stop_recording()
    assert summary is not None and summary.error is not None and "ended" in summary.error
    await camera.wait_for_state(CameraState.OK, START_S)
    assert camera.starts == 2
    assert camera.pid not in (None, pid)


async def test_calls_after_close_are_refused(tmp_path: Path) -> None:
    cam = CameraProcess("sim")
    cam.start()
    await cam.wait_for_state(CameraState.OK, START_S)
    pid = cam.pid
    assert pid is not None
    await cam.aclose()
    assert not _running(pid)  # stopped and reaped
    with pytest.raises(CameraClosedError):
        await cam.start_recording(tmp_path)


async def test_closing_returns_the_running_recordings_summary(tmp_path: Path) -> None:
    cam = CameraProcess("sim")
    cam.start()
    await cam.wait_for_state(CameraState.OK, START_S)
    path = await cam.start_recording(tmp_path, stem="video")
    await asyncio.sleep(0.5)
    summary = await cam.aclose()
    assert summary is not None and summary.path == path and summary.error is None
    assert path.stat().st_size > 0


def test_the_camera_process_exits_when_the_controller_goes_away() -> None:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devices.camera._worker", "--fd", str(theirs.fileno()), "--camera", "sim"],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    try:
        ours.settimeout(START_S)
        assert ours.recv(4)  # the first health record: it runs
        ours.close()
        assert proc.wait(timeout=START_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
async def test_the_camera_process_leaves_the_controllers_cpu_and_priority() -> None:
    before = os.sched_getaffinity(0)
    last = max(before)
    os.sched_setaffinity(0, {last})
    try:
        cam = CameraProcess("sim")
        cam.start()
        await _wait_until(lambda: cam.pid is not None, START_S)
    finally:
        os.sched_setaffinity(0, before)
    try:
        await cam.wait_for_state(CameraState.OK, START_S)
        assert cam.pid is not None
        allowed = os.sched_getaffinity(cam.pid)
        assert last not in allowed and allowed
        assert os.getpriority(os.PRIO_PROCESS, cam.pid) >= 10
        assert os.sched_getscheduler(cam.pid) == os.SCHED_OTHER
    finally:
        await cam.aclose()


def test_a_bad_camera_spec_is_refused_before_any_process_starts() -> None:
    with pytest.raises(ValueError):
        CameraProcess("")
    with pytest.raises(ValueError):
        CameraProcess("sim", health_period_s=0)
    assert describe_spec(0) == "camera device 0"
    assert describe_spec("sim") == "simulated camera"


async def test_closing_right_after_the_start_leaves_no_camera_process() -> None:
    cam = CameraProcess("sim")
    cam.start()
    await _wait_until(lambda: cam.pid is not None, START_S)
    pid = cam.pid
    assert pid is not None
    started = time.monotonic()
    await cam.aclose(timeout_s=20.0)
    assert not _running(pid)
    assert time.monotonic() - started < 20.0  # it ended by itself, it was not killed at the deadline
