"""The capture thread: hand-off to the loop, dropping stale frames, health states, closing and joining."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from devices.camera import (
    CameraCapture,
    CameraClosedError,
    CameraFrame,
    CameraState,
    CameraStatus,
    OpenCVSource,
    make_source,
)
from devices.sim.camera import SimCameraSource


def _sim(rate_hz: float | None = 200.0, **kwargs: object) -> SimCameraSource:
    return SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=rate_hz, seed=11, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def sim_capture() -> AsyncIterator[tuple[CameraCapture, SimCameraSource]]:
    source = _sim()
    capture = CameraCapture(source, freeze_after_s=0.2, no_frame_timeout_s=0.2, reopen_after_s=0.6)
    capture.start()
    try:
        yield capture, source
    finally:
        await capture.aclose()


def _capture_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("camera-capture")]


async def _wait_reason(capture: CameraCapture, text: str, timeout_s: float = 2.0) -> CameraStatus:
    """Wait until the health reason mentions ``text`` (health states are time-based, so they are polled)."""
    for _ in range(int(timeout_s / 0.01)):
        status = capture.status()
        if text in status.reason:
            return status
        await asyncio.sleep(0.01)
    raise TimeoutError(f"the camera status never mentioned {text!r}; it is {capture.status()}")


async def test_frames_reach_the_loop_as_grey(sim_capture: tuple[CameraCapture, SimCameraSource]) -> None:
    capture, _ = sim_capture
    frames = [await capture.next_frame(timeout_s=2.0) for _ in range(3)]
    assert [isinstance(f, CameraFrame) for f in frames] == [True] * 3
    sequences = [f.sequence for f in frames]
    assert sequences == sorted(set(sequences))
    assert frames[0].grey.shape == (720, 1280) and frames[0].grey.dtype == np.uint8
    assert frames[0].image.shape == (720, 1280, 3)
    assert frames[0].size == (1280, 720)
    assert frames[1].timestamp > frames[0].timestamp
    status = await capture.wait_for_state(CameraState.OK, 2.0)
    assert status.reason == ""
    assert status.source == "simulated camera"


async def test_stale_frames_are_dropped(sim_capture: tuple[CameraCapture, SimCameraSource]) -> None:
    capture, _ = sim_capture
    first = await capture.next_frame(timeout_s=2.0)
    delivered = await capture.wait_for_frames(capture.frames_delivered + 8, 5.0)
    newest = await capture.next_frame(timeout_s=2.0)
    assert newest.sequence >= first.sequence + 8
    assert newest.sequence >= delivered
    assert capture.status().frames_dropped >= 6
    following = await capture.next_frame(timeout_s=2.0)
    assert following.sequence > newest.sequence


async def test_capture_thread_is_named_non_daemon_and_joined() -> None:
    capture = CameraCapture(_sim(), thread_name="camera-capture-test")
    capture.start()
    await capture.next_frame(timeout_s=2.0)
    threads = [t for t in _capture_threads() if t.name == "camera-capture-test"]
    assert len(threads) == 1 and not threads[0].daemon
    await capture.aclose()
    assert not threads[0].is_alive()
    status = capture.status()
    assert status.state is CameraState.NOT_OPENED and "closed" in status.reason


async def test_freeze_is_detected_and_clears(sim_capture: tuple[CameraCapture, SimCameraSource]) -> None:
    capture, source = sim_capture
    await capture.wait_for_state(CameraState.OK, 2.0)
    source.frozen = True
    frozen = await capture.wait_for_state(CameraState.FROZEN, 3.0)
    assert "identical frames" in frozen.reason
    assert frozen.last_frame_age_s is not None and frozen.last_frame_age_s < 0.3
    source.frozen = False
    await capture.wait_for_state(CameraState.OK, 3.0)


async def test_unplugged_camera_is_reported_and_recovers(
    sim_capture: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, source = sim_capture
    await capture.wait_for_state(CameraState.OK, 2.0)
    source.unplug()
    no_frames = await capture.wait_for_state(CameraState.NO_FRAMES, 3.0)
    assert "no frame" in no_frames.reason
    gone = await capture.wait_for_state(CameraState.NOT_OPENED, 3.0)
    assert "unplugged" in gone.reason
    before = capture.status().frames_read
    source.replug()
    await capture.wait_for_state(CameraState.OK, 5.0)
    await capture.wait_for_frames(capture.frames_delivered + 2, 5.0)
    assert capture.status().frames_read >= before + 2


async def test_slow_camera_shows_no_frames() -> None:
    capture = CameraCapture(_sim(rate_hz=1.5), no_frame_timeout_s=0.2)
    capture.start()
    try:
        await capture.next_frame(timeout_s=2.0)
        status = await capture.wait_for_state(CameraState.NO_FRAMES, 2.0)
        assert "for 0." in status.reason
    finally:
        await capture.aclose()


async def test_missing_device_is_reported() -> None:
    capture = CameraCapture(OpenCVSource(63))
    capture.start()
    try:
        status = await capture.wait_for_state(CameraState.NOT_OPENED, 2.0)
        assert "camera device 63" in status.reason
        assert status.frames_read == 0
        with pytest.raises(TimeoutError):
            await capture.next_frame(timeout_s=0.05)
    finally:
        await capture.aclose()


async def test_missing_file_is_reported(tmp_path: Path) -> None:
    capture = CameraCapture(make_source(str(tmp_path / "absent.avi")))
    async with capture:
        status = await _wait_reason(capture, "does not exist")
        assert status.state is CameraState.NOT_OPENED


async def test_status_before_start_and_double_start() -> None:
    capture = CameraCapture(_sim())
    assert capture.status().state is CameraState.NOT_OPENED
    assert "not started" in capture.status().reason
    capture.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            capture.start()
    finally:
        await capture.aclose()
    with pytest.raises(CameraClosedError):
        capture.start()


async def test_a_waiting_consumer_learns_of_the_close() -> None:
    capture = CameraCapture(OpenCVSource(63))
    capture.start()
    waiter = asyncio.create_task(capture.next_frame())
    await asyncio.sleep(0)
    await capture.aclose()
    with pytest.raises(CameraClosedError):
        await asyncio.wait_for(waiter, 2.0)
    with pytest.raises(CameraClosedError):
        await capture.next_frame()


async def test_close_is_idempotent_and_blocking_close_joins() -> None:
    capture = CameraCapture(_sim())
    capture.start()
    await capture.next_frame(timeout_s=2.0)
    await asyncio.to_thread(capture.close)
    assert not any(t.name == "camera-capture" and t.is_alive() for t in threading.enumerate())
    await capture.aclose()


class _BrokenSource:
    """A camera whose driver raises on every read."""

    description = "broken camera"

    def __init__(self) -> None:
        self.released = threading.Event()

    def open(self) -> None:
        self.released.clear()

    def read(self) -> tuple[bool, None]:
        raise RuntimeError("driver crashed")

    def release(self) -> None:
        self.released.set()


async def test_a_raising_driver_becomes_a_health_state() -> None:
    source = _BrokenSource()
    capture = CameraCapture(source, no_frame_timeout_s=0.1, reopen_after_s=5.0)
    capture.start()
    try:
        status = await _wait_reason(capture, "driver crashed")
        assert status.state is CameraState.NO_FRAMES
        assert "RuntimeError" in status.reason
    finally:
        await capture.aclose()
    assert source.released.is_set()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"freeze_after_s": 0.0}, "freeze_after_s"),
        ({"no_frame_timeout_s": float("inf")}, "no_frame_timeout_s"),
        ({"reopen_after_s": -1.0}, "reopen_after_s"),
        ({"reopen_backoff_s": (2.0, 1.0)}, "reopen_backoff_s"),
        ({"thread_name": ""}, "name"),
    ],
)
def test_capture_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CameraCapture(_sim(), **kwargs)  # type: ignore[arg-type]


class _OddSource:
    """A camera that claims success but delivers two-channel images."""

    description = "odd camera"

    def open(self) -> None:
        return None

    def read(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((8, 8, 2), np.uint8)

    def release(self) -> None:
        return None


async def test_unusable_frames_are_reported_not_delivered() -> None:
    capture = CameraCapture(_OddSource(), no_frame_timeout_s=0.1, reopen_after_s=5.0)
    capture.start()
    try:
        status = await _wait_reason(capture, "unusable frame")
        assert status.state is CameraState.NO_FRAMES
        assert capture.frames_delivered == 0
    finally:
        await capture.aclose()
