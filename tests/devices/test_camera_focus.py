"""Focus stacks: fresh frames, each with its focus score, in one folder with an index naming the sharpest;
written whole or not at all (a frozen camera, a full disk), in the controller's process or the camera's."""

from __future__ import annotations

import asyncio
import json
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
    FOCUS_INDEX,
    CameraCapture,
    CameraProcess,
    CameraState,
    NoImageError,
    focus_score,
)

#: The frame (0-based read number, modulo the cycle) the focusing source shows sharpest.
SHARPEST_READ = 4
CYCLE = 9


class FocusingSource:
    """A camera whose image sharpens and blurs again, as while a focus ring is turned through focus: the
    image read ``SHARPEST_READ`` (of every ``CYCLE``) is sharp, the others blurred the more the farther."""

    description = "focusing test camera"

    def __init__(self) -> None:
        rng = np.random.default_rng(11)
        base = rng.integers(0, 255, size=(120, 160), dtype=np.uint8)
        base = cv2.GaussianBlur(base, (0, 0), 1.0)
        cv2.circle(base, (80, 60), 30, 250, 3)
        self.images = [
            cv2.cvtColor(
                base if k == SHARPEST_READ else cv2.GaussianBlur(base, (0, 0), 0.6 * abs(k - SHARPEST_READ)),
                cv2.COLOR_GRAY2BGR,
            )
            for k in range(CYCLE)
        ]
        self.reads = 0
        self.frozen = False
        self._wait = threading.Event()

    def open(self) -> None:
        self.reads = 0

    def read(self) -> tuple[bool, npt.NDArray[np.uint8] | None]:
        self._wait.wait(0.01)
        index = 0 if self.frozen else self.reads % CYCLE
        self.reads += 1
        # A little noise that keeps the frames changing (the camera is not frozen) without moving the focus.
        image = self.images[index].copy()
        if not self.frozen:
            image[0, self.reads % 160] ^= 1
        return True, image

    def release(self) -> None:
        pass


@pytest.fixture
async def focusing() -> AsyncIterator[tuple[CameraCapture, FocusingSource]]:
    source = FocusingSource()
    cam = CameraCapture(source, freeze_after_s=0.2, no_frame_timeout_s=0.5)
    cam.start()
    try:
        await cam.wait_for_state(CameraState.OK, 3.0)
        yield cam, source
    finally:
        await cam.aclose()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _index(folder: Path) -> dict[str, object]:
    data = json.loads((folder / FOCUS_INDEX).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


async def test_a_stack_saves_each_frame_with_its_score_and_marks_the_sharpest(
    focusing: tuple[CameraCapture, FocusingSource], tmp_path: Path
) -> None:
    cam, _source = focusing
    stack = await cam.record_focus_stack(tmp_path, count=12, interval_s=0.01, name="stack")
    assert stack.folder == tmp_path / "stack"
    assert _names(tmp_path) == ["stack"], "no hidden or partial folder left"
    index = _index(stack.folder)
    frames = index["frames"]
    assert isinstance(frames, list) and len(frames) == 12
    assert [f["frame"] for f in frames] == list(range(1, 13))
    times = [f["time_s"] for f in frames]
    assert times[0] == 0.0 and times == sorted(times) and times[-1] > 0.0
    files = sorted(p.name for p in stack.folder.iterdir())
    assert files == sorted([FOCUS_INDEX] + [f"frame_{n:02d}.png" for n in range(1, 13)])
    # Each score is the focus score of the picture saved under that frame.
    for entry in frames:
        grey = cv2.imread(str(stack.folder / entry["file"]), cv2.IMREAD_GRAYSCALE)
        assert grey is not None and grey.shape == (120, 160)
        assert entry["score"] == pytest.approx(focus_score(grey), abs=1e-3)
    best = max(frames, key=lambda f: f["score"])
    assert [f["frame"] for f in frames if f["sharpest"]] == [best["frame"]]
    assert index["sharpest_frame"] == best["frame"] == stack.sharpest.frame
    assert index["sharpest_file"] == best["file"]
    # The sharpest marked is the least blurred picture the stack holds, far sharper than the most blurred.
    source = FocusingSource()

    def blur_of(name: str) -> int:
        picture = cv2.imread(str(stack.folder / name), cv2.IMREAD_UNCHANGED)
        assert picture is not None
        [blur] = {
            abs(k - SHARPEST_READ)
            for k, im in enumerate(source.images)
            if np.array_equal(picture[1:], im[1:])
        }
        return blur

    blurs = {f["file"]: blur_of(f["file"]) for f in frames}
    assert blurs[best["file"]] == min(blurs.values())
    assert best["score"] > 2 * min(f["score"] for f in frames)
    assert index["resolution"] == stack.resolution == "160x120"


async def test_a_camera_that_freezes_during_the_stack_leaves_nothing(
    focusing: tuple[CameraCapture, FocusingSource], tmp_path: Path
) -> None:
    cam, source = focusing

    async def freeze_soon() -> None:
        await cam.wait_for_frames(cam.frames_delivered + 3, 3.0)
        source.frozen = True

    freezer = asyncio.create_task(freeze_soon())
    with pytest.raises(NoImageError, match="no image to take: the camera is frozen"):
        await cam.record_focus_stack(tmp_path, count=60, interval_s=0.05, name="stack")
    await freezer
    assert _names(tmp_path) == []


async def test_a_frozen_camera_has_no_stack_to_take(
    focusing: tuple[CameraCapture, FocusingSource], tmp_path: Path
) -> None:
    cam, source = focusing
    source.frozen = True
    await cam.wait_for_state(CameraState.FROZEN, 3.0)
    with pytest.raises(NoImageError, match="frozen"):
        await cam.record_focus_stack(tmp_path / "c", count=5, interval_s=0.01)
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import cv2, numpy as np
    from devices.camera import CameraFrame, RecordingError, to_grey
    from devices.camera.focus import FocusStackWriter

    rng = np.random.default_rng(3)
    smooth = np.zeros((240, 320, 3), dtype=np.uint8)
    smooth[:, :, 1] = np.arange(320, dtype=np.uint8)[None, :] // 2
    noisy = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    small, large = (len(cv2.imencode(".png", i)[1]) for i in (smooth, noisy))
    assert 4 * small < large, (small, large)
    limit = large // 2  # two smooth frames fit, the noisy third is cut short: as a disk that fills up
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    images = [smooth, smooth, noisy, smooth]
    writer = FocusStackWriter(Path(sys.argv[1]), "stack")
    try:
        for n, image in enumerate(images):
            frame = CameraFrame(sequence=n + 1, timestamp=n * 0.1, image=image, grey=to_grey(image))
            writer.add(frame, n * 0.1)
        writer.finish()
    except RecordingError as exc:
        writer.discard()
        print("refused:", exc)
    else:
        print("written")
    """
)


def test_a_full_disk_refuses_the_stack_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    """A file that cannot grow (RLIMIT_FSIZE: a write fails part-way, as on a full disk) during the third
    frame: refused with the system's reason, and no folder, frame or index is left."""
    parent = tmp_path / "calibrations"
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.startswith("refused:"), out.stdout + out.stderr
    assert "frame_03.png" in out.stdout and "too large" in out.stdout.lower()
    assert list(parent.iterdir()) == []


async def test_the_camera_process_takes_the_stack_in_its_own_process(tmp_path: Path) -> None:
    cam = CameraProcess("sim", restart_after_s=0.2)
    cam.start()
    try:
        await cam.wait_for_state(CameraState.OK, 30.0)
        stack = await cam.record_focus_stack(tmp_path, count=3, interval_s=0.05, name="remote")
    finally:
        await cam.aclose()
    assert stack.folder == tmp_path / "remote"
    index = _index(stack.folder)
    assert [f["file"] for f in index["frames"]] == ["frame_01.png", "frame_02.png", "frame_03.png"]  # type: ignore[index]
    picture = cv2.imread(str(stack.folder / "frame_01.png"))
    assert picture is not None and picture.shape == (720, 1280, 3)
    assert stack.resolution == "1280x720"
