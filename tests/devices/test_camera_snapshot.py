"""Treatment snapshots: the raw and ring-annotated PNG pair, written whole or not at all, refused without a
usable image; and the simulated camera's aiming beam spot."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from devices.camera import (
    DEFAULT_SIM_RING_MM,
    CameraCapture,
    CameraFrame,
    CameraProcess,
    CameraState,
    NoImageError,
    RecordingError,
    save_snapshot_pair,
    to_grey,
)
from devices.camera.snapshot import ANNOTATED_SUFFIX, write_png
from devices.sim.camera import AIM_SPOT_RADIUS_PX, SimCameraSource

RING_MM = 3.0
PX_PER_MM = 100.0


def _frame(ring_mm: float = RING_MM, *, aiming: bool = False) -> CameraFrame:
    image = SimCameraSource(lambda: ring_mm, frame_rate_hz=None, seed=5).render(ring_mm, aiming=aiming)
    return CameraFrame(sequence=7, timestamp=123.5, image=image, grey=to_grey(image))


def _read(path: Path) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} does not decode as an image"
    return np.asarray(image, dtype=np.uint8)


def test_the_pair_is_the_full_frame_raw_and_with_the_ring_drawn_where_the_ring_is(tmp_path: Path) -> None:
    frame = _frame()
    files = save_snapshot_pair(frame, tmp_path / "session", stem="snap", expected_diameter_mm=RING_MM)

    assert files.raw == tmp_path / "session" / "snap.png"
    assert files.annotated == tmp_path / "session" / f"snap{ANNOTATED_SUFFIX}.png"
    assert files.resolution == "1280x720"
    assert files.raw_bytes == files.raw.stat().st_size > 0
    assert files.annotated_bytes == files.annotated.stat().st_size > 0
    raw, annotated = _read(files.raw), _read(files.annotated)
    assert raw.shape == annotated.shape == (720, 1280, 3)
    assert np.array_equal(raw, frame.image), "the raw picture is the frame, losslessly"
    assert files.ring is not None and files.ring.diameter_mm == pytest.approx(RING_MM, abs=0.05)

    differs = np.any(raw != annotated, axis=2)
    cx, cy, radius = 640.0, 360.0, RING_MM * PX_PER_MM / 2.0
    on_ring = [
        (round(cy + radius * math.sin(a)), round(cx + radius * math.cos(a)))
        for a in np.linspace(0.0, 2.0 * math.pi, 36, endpoint=False)
    ]
    assert all(differs[y, x] for y, x in on_ring), "the ring is drawn all the way round"
    assert differs[int(cy), int(cx)], "the centre is marked"
    # Far from the ring, its centre and its label, the annotated picture is the frame itself.
    assert not differs[600:, :300].any()
    assert not differs[:200, 1000:].any()
    # The drawing is green: on the ring, green dominates where the raw frame is grey.
    y, x = on_ring[0]
    b, g, r = (int(v) for v in annotated[y, x])
    assert g > b + 50 and g > r + 50


def test_no_ring_is_said_on_the_annotated_picture(tmp_path: Path) -> None:
    image = np.full((480, 640, 3), 30, dtype=np.uint8)
    frame = CameraFrame(sequence=1, timestamp=1.0, image=image, grey=to_grey(image))
    files = save_snapshot_pair(frame, tmp_path, stem="blank")
    assert files.ring is None and files.no_ring_reason
    raw, annotated = _read(files.raw), _read(files.annotated)
    assert np.array_equal(raw, image)
    assert np.any(raw[:60] != annotated[:60]), "the reason is written in the top-left corner"
    assert np.array_equal(raw[100:], annotated[100:])


def test_an_existing_name_is_never_overwritten(tmp_path: Path) -> None:
    frame = _frame()
    first = save_snapshot_pair(frame, tmp_path, stem="snap")
    second = save_snapshot_pair(frame, tmp_path, stem="snap")
    assert second.raw == tmp_path / "snap_1.png"
    assert second.annotated == tmp_path / f"snap_1{ANNOTATED_SUFFIX}.png"
    assert first.raw.exists() and first.annotated.exists()


def test_a_picture_that_cannot_be_put_in_place_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "picture.png"
    target.mkdir()  # something else holds the name: the rename fails after the data was written
    with pytest.raises(RecordingError, match=r"picture\.png"):
        write_png(np.zeros((16, 16), dtype=np.uint8), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]
    assert target.is_dir()


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import cv2
    from devices.camera import CameraFrame, RecordingError, RingDetector, save_snapshot_pair, to_grey
    from devices.camera.snapshot import annotate
    from devices.sim.camera import SimCameraSource

    image = SimCameraSource(lambda: 3.0, frame_rate_hz=None, seed=5).render(3.0)
    frame = CameraFrame(sequence=1, timestamp=0.0, image=image, grey=to_grey(image))
    raw_size = len(cv2.imencode(".png", image)[1])
    ring = RingDetector().analyse(frame.grey).ring
    annotated_size = len(cv2.imencode(".png", annotate(image, ring))[1])
    if sys.argv[2] == "raw":
        limit = raw_size // 2
    else:
        assert annotated_size > raw_size, (annotated_size, raw_size)
        limit = raw_size
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        save_snapshot_pair(frame, Path(sys.argv[1]), stem="snap")
    except RecordingError as exc:
        print("refused:", exc)
    else:
        print("written")
    """
)


@pytest.mark.parametrize("fails", ["raw", "annotated"])
def test_a_full_disk_refuses_the_snapshot_and_leaves_no_file(tmp_path: Path, fails: str) -> None:
    """Files may grow only so far (as on a full disk, the write fails part-way): half the raw picture, or
    the raw picture but not the annotated one, whose raw partner must then go too."""
    folder = tmp_path / "session"
    folder.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(folder), fails],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.startswith("refused:"), out.stdout + out.stderr
    expected = "snap.png" if fails == "raw" else f"snap{ANNOTATED_SUFFIX}.png"
    assert expected in out.stdout and "too large" in out.stdout.lower()
    assert list(folder.iterdir()) == []


def test_the_simulated_camera_shows_the_aiming_beam_as_a_spot_at_the_rings_centre() -> None:
    off, on = _frame(aiming=False).grey, _frame(aiming=True).grey
    cy, cx = 360, 640
    assert int(on[cy, cx]) > int(off[cy, cx]) + 120
    r = int(AIM_SPOT_RADIUS_PX)
    spot = (on.astype(int) - off.astype(int))[cy - 3 * r : cy + 3 * r, cx - 3 * r : cx + 3 * r]
    assert (spot > 60).sum() == pytest.approx(math.pi * r * r, rel=0.5), "a small spot, not a flood"
    # Away from the centre the picture is unchanged (the ring is still found the same).
    assert np.array_equal(on[:, :500], off[:, :500])


@pytest.fixture
async def capture() -> AsyncIterator[tuple[CameraCapture, SimCameraSource]]:
    source = SimCameraSource(lambda: RING_MM, frame_rate_hz=100.0, seed=3)
    cam = CameraCapture(source, freeze_after_s=0.2, no_frame_timeout_s=0.3)
    cam.start()
    try:
        await cam.wait_for_state(CameraState.OK, 3.0)
        yield cam, source
    finally:
        await cam.aclose()


async def test_the_in_process_camera_saves_its_newest_frame(
    capture: tuple[CameraCapture, SimCameraSource], tmp_path: Path
) -> None:
    cam, _source = capture
    files = await cam.save_snapshots(tmp_path, stem="now", expected_mm=RING_MM)
    assert _read(files.raw).shape == (720, 1280, 3)
    assert files.ring is not None and files.ring.diameter_mm == pytest.approx(RING_MM, abs=0.05)
    assert files.frame_sequence >= 1


async def test_a_frozen_or_unplugged_camera_has_no_image_to_take(
    capture: tuple[CameraCapture, SimCameraSource], tmp_path: Path
) -> None:
    cam, source = capture
    source.frozen = True
    await cam.wait_for_state(CameraState.FROZEN, 3.0)
    with pytest.raises(NoImageError, match="no image to take: the camera is frozen"):
        await cam.save_snapshots(tmp_path / "a")
    source.frozen = False
    source.unplug()
    await cam.wait_for_state(CameraState.NOT_OPENED, 5.0)
    with pytest.raises(NoImageError, match="no image to take"):
        await cam.save_snapshots(tmp_path / "a")
    assert not (tmp_path / "a").exists()


async def test_the_camera_process_saves_the_pair_in_its_own_process(tmp_path: Path) -> None:
    cam = CameraProcess("sim", restart_after_s=0.2)
    cam.start()
    try:
        await cam.wait_for_state(CameraState.OK, 30.0)
        files = await cam.save_snapshots(tmp_path, stem="remote", expected_mm=DEFAULT_SIM_RING_MM)
    finally:
        await cam.aclose()
    assert files.raw == tmp_path / "remote.png"
    raw, annotated = _read(files.raw), _read(files.annotated)
    assert raw.shape == annotated.shape == (720, 1280, 3)
    assert files.ring is not None
    assert files.ring.diameter_mm == pytest.approx(DEFAULT_SIM_RING_MM, abs=0.05)
    assert np.any(raw != annotated)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread nice values are Linux's")
async def test_snapshots_are_saved_at_the_lowest_priority(
    capture: tuple[CameraCapture, SimCameraSource], tmp_path: Path
) -> None:
    cam, _source = capture
    await cam.save_snapshots(tmp_path)
    writers = [t for t in threading.enumerate() if t.name.startswith("camera-snapshot")]
    assert writers and writers[0].native_id is not None
    assert os.getpriority(os.PRIO_PROCESS, writers[0].native_id) == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19, "the loop's thread keeps its own"
