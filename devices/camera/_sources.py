"""Where frames come from: a camera device index, a video file, or the simulated rig's synthetic camera.

Every source offers the same small interface (:class:`FrameSource`): ``open()`` raises :class:`OSError` with a
reason when the camera cannot be opened, ``read()`` returns ``(ok, frame)`` like ``cv2.VideoCapture.read`` and
``release()`` closes it. The capture thread is the only caller of ``open`` and ``read``.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from devices.sim.camera import SimCameraSource

SIM_SOURCE = "sim"
"""The configuration value naming the simulated rig's camera."""

DEFAULT_SIM_RING_MM = 2.0
"""Ring diameter shown by a ``sim`` camera that is not attached to a simulated physical model, mm."""

CameraSpec = int | str | Path
"""A camera in configuration: a device index, a video file path, or ``"sim"``."""


class CameraOpenError(OSError):
    """The camera could not be opened; the message says why."""


def video_device_index(path: Path) -> int | None:
    """The N of the Video4Linux device ``/dev/videoN`` that ``path`` is or links to (udev's stable names,
    such as ``/dev/v4l/by-id/usb-...-video-index0``, are links); None for any other path."""
    match = re.fullmatch(r"/dev/video(\d+)", os.path.realpath(path))
    return int(match.group(1)) if match else None


class FrameSource(Protocol):
    """The small interface every camera source offers."""

    @property
    def description(self) -> str:
        """A human-readable name of the source."""
        ...

    def open(self) -> None:
        """Open (or reopen) the source; raise OSError with the reason on failure."""
        ...

    def read(self) -> tuple[bool, npt.NDArray[np.generic] | None]:
        """Return ``(True, frame)`` or ``(False, None)`` when no frame could be read."""
        ...

    def release(self) -> None:
        """Close the source; it may be opened again."""
        ...


class OpenCVSource:
    """A camera device or a video file opened through ``cv2.VideoCapture``.

    Args:
        target: a device index (``/dev/videoN`` on Linux), the path of a video device (``/dev/videoN`` or a
            link to it, followed again at each ``open()``: a replugged camera may get another N), or the
            path of a video file.
        loop_file: for a file, start again from the first frame at its end instead of failing reads.
        pace_file: for a file, deliver frames at the file's frame rate (as a camera would) rather than as
            fast as they decode.
        api_preference: the OpenCV back end (``cv2.CAP_ANY`` lets OpenCV choose).
    """

    def __init__(
        self,
        target: int | Path,
        *,
        loop_file: bool = False,
        pace_file: bool = True,
        api_preference: int = cv2.CAP_ANY,
    ) -> None:
        if isinstance(target, bool) or not isinstance(target, int | Path):
            raise ValueError(f"a camera target is a device index or a file path, got {target!r}")
        if isinstance(target, int) and target < 0:
            raise ValueError(f"a camera device index must be >= 0, got {target}")
        self._target = target
        #: A device named by its path (anything under /dev, or a link to /dev/videoN), not a file.
        self._device_path = isinstance(target, Path) and (
            str(target).startswith("/dev/") or video_device_index(target) is not None
        )
        self._loop_file = loop_file
        self._pace_file = pace_file
        self._api = api_preference
        self._capture: cv2.VideoCapture | None = None
        self._period_s = 0.0
        self._next_due: float | None = None
        self._released = threading.Event()

    @property
    def description(self) -> str:
        """A human-readable name of the source."""
        if isinstance(self._target, int) or self._device_path:
            return f"camera device {self._target}"
        return f"video file {self._target}"

    @property
    def is_file(self) -> bool:
        """True when the source is a video file."""
        return isinstance(self._target, Path) and not self._device_path

    @property
    def frame_rate_hz(self) -> float | None:
        """The frame rate the source reports, frames per second, or None when unknown or not open."""
        if self._capture is None:
            return None
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        return fps if math.isfinite(fps) and fps > 0.0 else None

    def open(self) -> None:
        """Open the device or file; raises CameraOpenError saying why it failed."""
        self.release()
        if isinstance(self._target, Path) and self._device_path:
            index = video_device_index(self._target)
            if index is None and not os.path.lexists(self._target):
                raise CameraOpenError(f"camera device {self._target} not found")
            if index is None:
                raise CameraOpenError(f"{self._target} is not a video device (/dev/videoN or a link to one)")
            capture = self._open_device(index, f"camera device {self._target} (/dev/video{index})")
        elif isinstance(self._target, Path):
            if not self._target.exists():
                raise CameraOpenError(f"video file {self._target} does not exist")
            if not self._target.is_file():
                raise CameraOpenError(f"{self._target} is not a file")
            capture = cv2.VideoCapture(str(self._target), self._api)
            if not capture.isOpened():
                capture.release()
                raise CameraOpenError(f"video file {self._target} could not be decoded")
        else:
            capture = self._open_device(self._target, f"camera device {self._target}")
        self._capture = capture
        self._released.clear()
        fps = self.frame_rate_hz
        self._period_s = 1.0 / fps if (self.is_file and self._pace_file and fps) else 0.0
        self._next_due = None

    def _open_device(self, index: int, name: str) -> cv2.VideoCapture:
        if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
            raise CameraOpenError(f"{name} not found (no /dev/video{index})")
        capture = cv2.VideoCapture(index, self._api)
        if not capture.isOpened():
            capture.release()
            raise CameraOpenError(f"{name} could not be opened (busy or not a camera)")
        return capture

    def read(self) -> tuple[bool, npt.NDArray[np.generic] | None]:
        """Read the next frame; ``(False, None)`` when closed, at the end of a file or on a device error."""
        capture = self._capture
        if capture is None:
            return False, None
        self._pace()
        ok, frame = capture.read()
        if not ok and self.is_file and self._loop_file:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        if not ok or frame is None:
            return False, None
        return True, frame

    def release(self) -> None:
        """Release the ``VideoCapture``; the source may be opened again."""
        self._released.set()
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def _pace(self) -> None:
        if self._period_s <= 0.0:
            return
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > self._period_s:
            self._next_due = now + self._period_s
            return
        wait = self._next_due - now
        self._next_due += self._period_s
        if wait > 0.0:
            self._released.wait(wait)


def parse_camera_spec(spec: CameraSpec) -> int | Path | str:
    """Normalise a configured camera: an int or a string of digits is a device index, ``"sim"`` the simulated
    camera, anything else a file path. Raises ValueError for an empty or negative value."""
    if isinstance(spec, bool):
        raise ValueError(f"invalid camera {spec!r}: expected a device index, a file path or 'sim'")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"a camera device index must be >= 0, got {spec}")
        return spec
    if isinstance(spec, Path):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"invalid camera {spec!r}: expected a device index, a file path or 'sim'")
    text = spec.strip()
    if not text:
        raise ValueError("the camera is empty: expected a device index, a file path or 'sim'")
    if text.lower() == SIM_SOURCE:
        return SIM_SOURCE
    if text.isdigit():
        return int(text)
    if text.startswith("-") and text[1:].isdigit():
        raise ValueError(f"a camera device index must be >= 0, got {text}")
    return Path(text).expanduser()


def make_source(
    spec: CameraSpec,
    *,
    sim_ring_mm: Callable[[], float] | None = None,
    loop_file: bool = False,
) -> FrameSource:
    """Build the source a configuration names (not yet opened).

    ``"sim"`` gives a :class:`~devices.sim.camera.SimCameraSource`; its ring follows ``sim_ring_mm`` (mm) when
    given, otherwise it stays at :data:`DEFAULT_SIM_RING_MM`. The simulated rig normally builds its own source
    and hands that to the capture directly.
    """
    parsed = parse_camera_spec(spec)
    if isinstance(parsed, str):  # the only string parse_camera_spec returns is SIM_SOURCE
        ring = sim_ring_mm if sim_ring_mm is not None else (lambda: DEFAULT_SIM_RING_MM)
        return SimCameraSource(ring_mm=ring)
    return OpenCVSource(parsed, loop_file=loop_file)
