"""Video recording and snapshots: files that play back with the right frames, and clear refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.camera import (
    CameraCapture,
    RecordingError,
    VideoRecorder,
    save_snapshot,
)
from devices.sim.camera import SimCameraSource


def _count_frames(path: Path) -> tuple[int, tuple[int, int], list[float]]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    count = 0
    size = (0, 0)
    means: list[float] = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            size = (frame.shape[1], frame.shape[0])
            means.append(float(frame.mean()))
    finally:
        capture.release()
    return count, size, means


def test_recorder_writes_a_video_that_plays_back(tmp_path: Path) -> None:
    recorder = VideoRecorder(tmp_path / "session", (320, 240), fps=25.0, stem="treatment")
    levels = [10 * i for i in range(12)]
    for i, level in enumerate(levels):
        recorder.write(np.full((240, 320, 3), level, np.uint8), timestamp=100.0 + i / 25.0)
    assert recorder.frame_count == 12
    summary = recorder.close()
    assert summary.path == tmp_path / "session" / "treatment.mkv"
    assert summary.frame_count == 12
    assert summary.duration_s == pytest.approx(12 / 25.0)
    assert summary.wall_duration_s == pytest.approx(11 / 25.0)
    assert summary.error is None
    count, size, means = _count_frames(summary.path)
    assert count == 12 and size == (320, 240)
    # MPEG-4 is lossy and stores limited-range YUV: a flat grey comes back within a few levels.
    assert means == pytest.approx(levels, abs=6.0)
    assert recorder.close() == summary


def test_recorder_accepts_grey_frames(tmp_path: Path) -> None:
    recorder = VideoRecorder(tmp_path, (64, 48), fps=10.0, stem="grey")
    for _ in range(3):
        recorder.write(np.full((48, 64), 128, np.uint8))
    summary = recorder.close()
    count, size, means = _count_frames(summary.path)
    assert (count, size) == (3, (64, 48))
    assert means[0] == pytest.approx(128, abs=6)


def test_recorder_refuses_a_frame_of_another_size(tmp_path: Path) -> None:
    recorder = VideoRecorder(tmp_path, (64, 48), fps=10.0)
    recorder.write(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        recorder.write(np.zeros((49, 64, 3), np.uint8))
    assert recorder.frame_count == 1
    summary = recorder.close()
    assert _count_frames(summary.path)[0] == 1
    with pytest.raises(RecordingError, match="closed"):
        recorder.write(np.zeros((48, 64, 3), np.uint8))


def test_recorder_never_overwrites(tmp_path: Path) -> None:
    first = VideoRecorder(tmp_path, (32, 32), stem="clip").close().path
    second = VideoRecorder(tmp_path, (32, 32), stem="clip").close().path
    assert first != second and first.exists() and second.exists()


def test_recorder_in_an_impossible_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecordingError, match="cannot create"):
        VideoRecorder(blocker / "videos", (32, 32))


@pytest.mark.parametrize(
    ("size", "fps", "stem", "message"),
    [
        ((0, 10), 30.0, None, "at least"),
        ((10.0, 10), 30.0, None, "integers"),
        ((32, 32), 0.0, None, "fps"),
        ((32, 32), float("nan"), None, "fps"),
        ((32, 32), 30.0, "../escape", "plain name"),
        ((32, 32), 30.0, "", "plain name"),
    ],
)
def test_recorder_refuses_bad_settings(
    tmp_path: Path, size: tuple[int, int], fps: float, stem: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VideoRecorder(tmp_path, size, fps=fps, stem=stem)
    assert list(tmp_path.iterdir()) == []


def test_snapshot_is_a_lossless_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (72, 128, 3), dtype=np.uint8)
    path = save_snapshot(image, tmp_path / "snaps")
    assert path.parent == tmp_path / "snaps" and path.suffix == ".png"
    assert path.name.startswith("snapshot_")
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back is not None and np.array_equal(back, image)


def test_snapshots_with_the_same_name_are_kept_apart(tmp_path: Path) -> None:
    image = np.zeros((8, 8), np.uint8)
    a = save_snapshot(image, tmp_path, stem="ring")
    b = save_snapshot(image, tmp_path, stem="ring")
    assert a.name == "ring.png" and b.name == "ring_1.png"


@pytest.mark.parametrize(
    ("image", "stem", "error"),
    [
        (np.zeros((0, 8), np.uint8), None, ValueError),
        (np.zeros((8, 8, 2), np.uint8), None, ValueError),
        (np.zeros((8, 8), np.uint8), "a/b", ValueError),
    ],
)
def test_snapshot_refuses_bad_input(
    tmp_path: Path, image: np.ndarray, stem: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        save_snapshot(image, tmp_path, stem=stem)
    assert list(tmp_path.iterdir()) == []


async def test_capture_records_at_the_recordings_frame_rate(tmp_path: Path) -> None:
    """A 120 frames/s camera recorded at 30 frames/s: one frame in four goes into the file, which plays
    back at real speed."""
    source = SimCameraSource(
        ring_mm=lambda: 3.0, frame_rate_hz=120.0, seed=21, width=320, height=240, px_per_mm=40.0
    )
    capture = CameraCapture(source)
    with pytest.raises(RuntimeError, match="no frame"):
        await capture.start_recording(tmp_path)
    capture.start()
    try:
        await capture.next_frame(timeout_s=2.0)
        path = await capture.start_recording(tmp_path / "video", fps=30.0, stem="session")
        assert capture.status().recording
        with pytest.raises(RuntimeError, match="already recording"):
            await capture.start_recording(tmp_path / "video")
        await capture.wait_for_frames(capture.frames_delivered + 80, 5.0)
        summary = await capture.stop_recording()
        assert summary is not None and summary.path == path
        assert not capture.status().recording
        assert await capture.stop_recording() is None
    finally:
        await capture.aclose()
    assert summary.frame_count >= 10
    assert summary.duration_s == pytest.approx(summary.frame_count / 30.0)
    assert summary.wall_duration_s > 0.0
    # One frame per 1/30 s of capture time (the first and last one included), not every frame read.
    assert summary.frame_count == pytest.approx(summary.wall_duration_s * 30.0 + 1, abs=2)
    count, size, _ = _count_frames(path)
    assert count == summary.frame_count
    assert size == (320, 240)


async def test_closing_the_capture_finishes_the_recording(tmp_path: Path) -> None:
    source = SimCameraSource(
        ring_mm=lambda: 3.0, frame_rate_hz=120.0, seed=22, width=160, height=120, px_per_mm=20.0
    )
    capture = CameraCapture(source)
    capture.start()
    await capture.next_frame(timeout_s=2.0)
    path = await capture.start_recording(tmp_path)
    await capture.next_frame(timeout_s=2.0)
    await capture.next_frame(timeout_s=2.0)
    summary = await capture.aclose()
    assert summary is not None and summary.path == path
    assert summary.frame_count >= 1
    assert _count_frames(path)[0] == summary.frame_count


async def test_capture_saves_the_latest_frame_as_a_snapshot(tmp_path: Path) -> None:
    source = SimCameraSource(
        ring_mm=lambda: 3.0, frame_rate_hz=120.0, seed=23, width=160, height=120, px_per_mm=20.0
    )
    capture = CameraCapture(source)
    with pytest.raises(RuntimeError, match="no frame"):
        await capture.snapshot(tmp_path)
    async with capture:
        await capture.next_frame(timeout_s=2.0)
        latest = capture.latest_frame
        path = await capture.snapshot(tmp_path / "snaps", stem="focus")
    assert latest is not None
    assert path == tmp_path / "snaps" / "focus.png"
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back is not None and back.shape == (120, 160, 3)


def test_recorder_keeps_to_its_frame_rate_and_to_owner_and_group(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        recorder = VideoRecorder(tmp_path, (64, 48), fps=10.0, stem="rate")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(recorder.path.stat().st_mode) == 0o640
    written = 0
    for i in range(30):  # one second of a 30 frames/s camera
        timestamp = 50.0 + i / 30.0
        if recorder.due(timestamp):
            recorder.write(np.zeros((48, 64, 3), np.uint8), timestamp)
            written += 1
    assert written == recorder.frame_count == 10
    summary = recorder.close()
    assert _count_frames(summary.path)[0] == 10


def test_recorder_falls_back_to_motion_jpeg_where_the_first_codec_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import devices.camera._recording as recording

    monkeypatch.setattr(recording, "VIDEO_FORMATS", (("QQQQ", ".mkv"), ("MJPG", ".avi")))
    recorder = VideoRecorder(tmp_path, (64, 48), fps=10.0, stem="fallback")
    assert (recorder.path.name, recorder.fourcc) == ("fallback.avi", "MJPG")
    recorder.write(np.zeros((48, 64, 3), np.uint8))
    assert _count_frames(recorder.close().path)[0] == 1
    assert not (tmp_path / "fallback.mkv").exists()
