"""Camera sources: the simulated camera's behaviour and faults, OpenCV devices and files, configuration."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from devices.camera import (
    CameraOpenError,
    OpenCVSource,
    RingDetector,
    VideoRecorder,
    make_source,
    parse_camera_spec,
    video_device_index,
)
from devices.sim.camera import DEFAULT_PX_PER_MM, SimCameraSource


class _Ring:
    """A stand-in for the physical model's ring size, settable by the test."""

    def __init__(self, mm: float) -> None:
        self.mm = mm

    def ring_mm(self) -> float:
        return self.mm


def test_sim_frames_are_720p_bgr_and_follow_the_model() -> None:
    model = _Ring(2.5)
    source = SimCameraSource(ring_mm=model.ring_mm, frame_rate_hz=None, seed=1)
    detector = RingDetector()
    ok, frame = source.read()
    assert ok and frame is not None
    assert frame.shape == (720, 1280, 3) and frame.dtype == np.uint8
    first = detector.detect_ring(frame)
    model.mm = 4.25
    ok, frame = source.read()
    assert ok and frame is not None
    second = detector.detect_ring(frame)
    assert first is not None and second is not None
    assert first.diameter_px == pytest.approx(2.5 * DEFAULT_PX_PER_MM, rel=0.02)
    assert second.diameter_px == pytest.approx(4.25 * DEFAULT_PX_PER_MM, rel=0.02)
    assert source.frame_count == 2


def test_sim_background_is_dark_and_the_ring_bright() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=2, blur_sigma_px=0.0)
    ok, frame = source.read()
    assert ok and frame is not None
    grey = frame[..., 0]
    assert float(np.median(grey)) < 40.0
    assert int(grey[360, 640 + 150]) > 150  # on the ring's centre line (radius 150 px)
    assert float(grey[:100, :100].std()) > 1.0  # textured and noisy, not flat


def test_sim_noise_changes_every_frame() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=4)
    _, a = source.read()
    _, b = source.read()
    assert a is not None and b is not None
    assert not np.array_equal(a, b)


def test_frozen_sim_repeats_the_same_frame() -> None:
    model = _Ring(3.0)
    source = SimCameraSource(ring_mm=model.ring_mm, frame_rate_hz=None, seed=5)
    _, before = source.read()
    source.frozen = True
    model.mm = 4.0
    _, a = source.read()
    _, b = source.read()
    assert before is not None and a is not None and b is not None
    assert np.array_equal(before, a) and np.array_equal(a, b)
    source.frozen = False
    _, after = source.read()
    assert after is not None and not np.array_equal(after, b)
    ring = RingDetector().detect_ring(after)
    assert ring is not None and ring.diameter_mm == pytest.approx(4.0, rel=0.02)


def test_unplugged_sim_fails_reads_and_opens_until_replugged() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=6)
    source.unplug()
    assert source.unplugged
    assert source.read() == (False, None)
    with pytest.raises(OSError, match="unplugged"):
        source.open()
    source.replug()
    source.open()
    ok, frame = source.read()
    assert ok and frame is not None


def test_released_sim_fails_reads_until_opened() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=6)
    source.release()
    assert source.read() == (False, None)
    source.open()
    assert source.read()[0]


def test_sim_overlay_marks_only_the_corner() -> None:
    plain = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=8, noise_sigma=0.0)
    marked = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=8, noise_sigma=0.0, overlay=True)
    _, a = plain.read()
    _, b = marked.read()
    assert a is not None and b is not None
    differs = np.any(a != b, axis=2)
    ys, xs = np.nonzero(differs)
    assert ys.size > 0
    assert ys.max() < 45 and xs.max() < 600


def test_sim_paces_reads_at_its_frame_rate() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=100.0, seed=9)
    started = time.monotonic()
    for _ in range(6):
        assert source.read()[0]
    assert time.monotonic() - started >= 0.045  # first frame at once, then five 10 ms periods


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, "3"])
def test_sim_refuses_a_bad_ring_size(bad: object) -> None:
    source = SimCameraSource(ring_mm=lambda: bad, frame_rate_hz=None, seed=1)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="ring diameter"):
        source.read()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"px_per_mm": 0.0}, "px_per_mm"),
        ({"width": 8}, "frame size"),
        ({"blur_sigma_px": -1.0}, "blur_sigma_px"),
        ({"noise_sigma": float("inf")}, "noise_sigma"),
        ({"frame_rate_hz": 0.0}, "frame_rate_hz"),
        ({"background_level": 300.0}, "background_level"),
        ({"centre_offset_px": (float("nan"), 0.0)}, "centre_offset_px"),
    ],
)
def test_sim_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimCameraSource(ring_mm=lambda: 3.0, **kwargs)  # type: ignore[arg-type]


def test_sim_needs_a_callable_ring_size() -> None:
    with pytest.raises(TypeError, match="callable"):
        SimCameraSource(ring_mm=3.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (0, 0),
        ("2", 2),
        (" sim ", "sim"),
        ("SIM", "sim"),
        ("/videos/ring.avi", Path("/videos/ring.avi")),
        (Path("ring.avi"), Path("ring.avi")),
    ],
)
def test_camera_spec_parsing(spec: object, expected: object) -> None:
    assert parse_camera_spec(spec) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [-1, "-3", "", "   ", True, 2.5])
def test_camera_spec_rejects_bad_values(spec: object) -> None:
    with pytest.raises(ValueError):
        parse_camera_spec(spec)  # type: ignore[arg-type]


def test_make_source_builds_each_kind(tmp_path: Path) -> None:
    sim = make_source("sim", sim_ring_mm=lambda: 4.0)
    assert isinstance(sim, SimCameraSource)
    assert isinstance(make_source(3), OpenCVSource)
    file_source = make_source(str(tmp_path / "a.avi"))
    assert isinstance(file_source, OpenCVSource) and file_source.is_file


def test_missing_device_index_is_reported() -> None:
    source = OpenCVSource(63)
    with pytest.raises(CameraOpenError, match="camera device 63"):
        source.open()
    assert source.read() == (False, None)


def test_a_video_device_path_is_followed_to_its_index(tmp_path: Path) -> None:
    """udev's stable names (/dev/v4l/by-id/...) are links to /dev/videoN; N is read again at each open."""
    link = tmp_path / "usb-Rig_Camera_0001-video-index0"
    link.symlink_to("/dev/video63")
    assert video_device_index(link) == 63
    assert video_device_index(Path("/dev/video7")) == 7
    assert video_device_index(Path("/dev/null")) is None
    assert video_device_index(tmp_path / "ring.avi") is None
    source = OpenCVSource(link)
    assert not source.is_file
    assert source.description == f"camera device {link}"
    with pytest.raises(CameraOpenError, match=r"usb-Rig_Camera_0001-video-index0 \(/dev/video63\) not found"):
        source.open()
    link.unlink()
    link.symlink_to("/dev/video62")  # replugged: another number
    with pytest.raises(CameraOpenError, match=r"\(/dev/video62\) not found"):
        source.open()


def test_a_device_path_that_is_no_video_device_is_refused() -> None:
    with pytest.raises(CameraOpenError, match="/dev/null is not a video device"):
        OpenCVSource(Path("/dev/null")).open()
    with pytest.raises(CameraOpenError, match="camera device /dev/v4l/by-id/absent not found"):
        OpenCVSource(Path("/dev/v4l/by-id/absent")).open()
    assert not OpenCVSource(Path("/dev/v4l/by-id/absent")).is_file


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CameraOpenError, match="does not exist"):
        OpenCVSource(tmp_path / "nothing.avi").open()


def test_undecodable_file_is_reported(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.avi"
    bogus.write_text("this is not a video\n")
    with pytest.raises(CameraOpenError, match="could not be decoded"):
        OpenCVSource(bogus).open()


def test_negative_device_index_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        OpenCVSource(-1)


def _write_video(path_folder: Path, frames: int) -> Path:
    recorder = VideoRecorder(path_folder, (160, 120), fps=100.0, stem="clip")
    for i in range(frames):
        image = np.full((120, 160, 3), 20 * i, np.uint8)
        recorder.write(image)
    return recorder.close().path


def test_file_source_reads_every_frame_then_fails(tmp_path: Path) -> None:
    path = _write_video(tmp_path, 5)
    source = OpenCVSource(path, pace_file=False)
    source.open()
    try:
        assert source.frame_rate_hz == pytest.approx(100.0)
        levels = []
        while True:
            ok, frame = source.read()
            if not ok:
                break
            assert frame is not None
            levels.append(float(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).mean()))
        assert len(levels) == 5
        assert levels == sorted(levels)
    finally:
        source.release()


def test_file_source_can_loop(tmp_path: Path) -> None:
    path = _write_video(tmp_path, 3)
    source = OpenCVSource(path, loop_file=True, pace_file=False)
    source.open()
    try:
        assert all(source.read()[0] for _ in range(7))
    finally:
        source.release()


def test_sim_accepts_numpy_ring_sizes() -> None:
    source = SimCameraSource(ring_mm=lambda: np.float32(3.5), frame_rate_hz=None, seed=10)  # type: ignore[arg-type,return-value]
    ok, frame = source.read()
    assert ok and frame is not None
    ring = RingDetector().detect_ring(frame)
    assert ring is not None and ring.diameter_mm == pytest.approx(3.5, rel=0.02)
