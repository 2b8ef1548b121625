"""Video recording (``cv2.VideoWriter``, MPEG-4 Part 2 in a Matroska container) and PNG snapshots.

MPEG-4 Part 2 (``mp4v``) is the compressing codec the ``opencv-python-headless`` wheel can write (its
FFmpeg has no H.264 encoder): on the simulated camera's noisy 1280 x 720 frames it takes a third of the space
of Motion-JPEG at the same frame rate (32 instead of 94 MB per minute at 30 frames/s). Matroska, unlike MP4,
needs no index written at the end, so a recording cut short by a power loss plays back up to its last
complete frame. Where the codec cannot be opened (an OpenCV built without FFmpeg) the recorder falls back to
Motion-JPEG in AVI, which OpenCV encodes itself.

A recording keeps to its frame rate: frames offered faster than ``fps`` are skipped
(:meth:`VideoRecorder.due`), so the file plays at real speed and a lower ``video_fps`` means a smaller file.
The file is made readable by its owner and group only (0640 at most), like every file of a session.

Where a FIFO already exists under the video's name (``STEM.mkv``), the recorder writes into it instead of
creating a file: a reader on the other end (the encrypted records' sealing process) takes the video, and no
plaintext reaches the disk. Matroska is written as a stream (it never seeks back). Only the formats whose name
has a FIFO are tried; when none opens, :data:`STREAM_REFUSED` begins the refusal.
"""

from __future__ import annotations

import math
import os
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from devices.camera._frames import to_grey

#: (FourCC, file suffix) tried in order: the first the installed OpenCV opens is used.
VIDEO_FORMATS: tuple[tuple[str, str], ...] = (("mp4v", ".mkv"), ("MJPG", ".avi"))
VIDEO_FOURCC, VIDEO_SUFFIX = VIDEO_FORMATS[0]
#: Start of the refusal when no format can be written into a FIFO waiting under the video's name.
STREAM_REFUSED = "cannot stream the video into the FIFO"
#: The most a video file's mode allows (owner read/write, group read).
VIDEO_FILE_MODE_LIMIT = 0o640


class RecordingError(OSError):
    """A video or snapshot could not be written; the message says why."""


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    """A finished recording.

    Attributes:
        path: the video file.
        frame_count: frames written.
        fps: the frame rate stored in the file, frames per second.
        duration_s: playback duration, ``frame_count / fps`` seconds.
        wall_duration_s: time from the first to the last frame written, seconds (monotonic clock).
        error: why the recording stopped early, or None when it was closed normally.
    """

    path: Path
    frame_count: int
    fps: float
    duration_s: float
    wall_duration_s: float
    error: str | None


class VideoRecorder:
    """Writes frames of one fixed size to an ``mp4v`` ``.mkv`` file (``MJPG`` ``.avi`` where that cannot be
    opened) in a folder.

    Args:
        folder: where the file goes (created if missing).
        frame_size: (width, height) of every frame, pixels.
        fps: frame rate stored in the file, frames per second.
        stem: file name without suffix; default ``video_YYYYMMDD_HHMMSS`` (UTC).

    Raises RecordingError when the folder or the file cannot be created, ValueError for a bad size or rate.
    Not thread-safe: one thread writes and closes.
    """

    def __init__(
        self, folder: Path, frame_size: tuple[int, int], *, fps: float = 30.0, stem: str | None = None
    ) -> None:
        width, height = frame_size
        if (
            isinstance(width, bool)
            or isinstance(height, bool)
            or not (isinstance(width, int) and isinstance(height, int))
        ):
            raise ValueError(f"frame size must be two integers, got {frame_size!r}")
        if width < 2 or height < 2:
            raise ValueError(f"frame size must be at least 2 x 2 px, got {width} x {height}")
        if (
            isinstance(fps, bool)
            or not isinstance(fps, int | float)
            or not math.isfinite(fps)
            or not 0 < fps <= 1000
        ):
            raise ValueError(f"fps must be within (0, 1000], got {fps!r}")
        name = stem if stem is not None else "video_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        _check_stem(name)
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(
                f"cannot create the recording folder {folder}: {exc.strerror or exc}"
            ) from exc
        # A FIFO already waiting under the file's name is written into (a reader takes the video elsewhere):
        # only the formats with such a FIFO are tried, and never a plain file beside it.
        streams = [item for item in VIDEO_FORMATS if _is_fifo(folder / f"{name}{item[1]}")]
        opened: tuple[Path, cv2.VideoWriter, str] | None = None
        for fourcc, suffix in streams or VIDEO_FORMATS:
            path = folder / f"{name}{suffix}" if streams else _unique_path(folder, name, suffix)
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter.fourcc(*fourcc), float(fps), (width, height), True
            )
            if writer.isOpened():
                opened = (path, writer, fourcc)
                break
            writer.release()
            if not streams:
                path.unlink(missing_ok=True)
        if opened is None:
            tried = ", ".join(f"{fourcc} {suffix}" for fourcc, suffix in streams or VIDEO_FORMATS)
            if streams:
                raise RecordingError(f"{STREAM_REFUSED} {folder / name} (tried {tried})")
            raise RecordingError(f"cannot open a video file in {folder} for writing (tried {tried})")
        path, writer, self.fourcc = opened
        try:
            mode = path.stat().st_mode & 0o7777
            if mode & ~VIDEO_FILE_MODE_LIMIT:
                path.chmod(mode & VIDEO_FILE_MODE_LIMIT)
        except OSError as exc:
            writer.release()
            if not streams:
                path.unlink(missing_ok=True)
            raise RecordingError(f"cannot restrict who reads {path}: {exc.strerror or exc}") from exc
        self.path = path
        self.frame_size = (width, height)
        self.fps = float(fps)
        self._writer: cv2.VideoWriter | None = writer
        self._count = 0
        self._first_t: float | None = None
        self._last_t: float | None = None
        self._error: str | None = None

    @property
    def frame_count(self) -> int:
        """Frames written so far."""
        return self._count

    def due(self, timestamp: float) -> bool:
        """Whether a frame captured at ``timestamp`` (monotonic seconds) belongs in the file: the first one
        does, then one per period of the file's frame rate (a frame up to a quarter period early counts, so a
        camera's jitter does not skip one). Frames offered faster than the rate are left out."""
        if self._first_t is None:
            return True
        return timestamp >= self._first_t + (self._count - 0.25) / self.fps

    @property
    def is_open(self) -> bool:
        """True until :meth:`close`."""
        return self._writer is not None

    def write(self, image: npt.NDArray[np.generic], timestamp: float | None = None) -> None:
        """Append one frame (grey or BGR, uint8, of the recorder's size); ``timestamp`` is its monotonic
        capture time in seconds (now when omitted). Raises ValueError for a frame of another size and
        RecordingError once closed."""
        if self._writer is None:
            raise RecordingError(f"the recording {self.path} is closed")
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
            raise ValueError("a frame must be a grey or BGR image array")
        height, width = image.shape[:2]
        if (width, height) != self.frame_size:
            raise ValueError(
                f"frame size {width} x {height} differs from the recording's "
                f"{self.frame_size[0]} x {self.frame_size[1]}"
            )
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            bgr = image
        else:
            bgr = cv2.cvtColor(to_grey(image), cv2.COLOR_GRAY2BGR)
        self._writer.write(np.ascontiguousarray(bgr))
        now = time.monotonic() if timestamp is None else timestamp
        if self._first_t is None:
            self._first_t = now
        self._last_t = now
        self._count += 1

    def fail(self, reason: str) -> None:
        """Record why the recording ends early; :meth:`close` reports it."""
        if self._error is None:
            self._error = reason

    def close(self) -> RecordingSummary:
        """Finish the file and return its summary; closing twice returns the same summary."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        wall = 0.0 if self._first_t is None or self._last_t is None else self._last_t - self._first_t
        return RecordingSummary(
            path=self.path,
            frame_count=self._count,
            fps=self.fps,
            duration_s=self._count / self.fps,
            wall_duration_s=wall,
            error=self._error,
        )


def save_snapshot(image: npt.NDArray[np.generic], folder: Path, *, stem: str | None = None) -> Path:
    """Write an image (grey or BGR, uint8) as a PNG into ``folder`` (created if missing) and return its path.

    The default name is ``snapshot_YYYYMMDD_HHMMSS_ffffff.png`` (UTC); an existing file is never overwritten
    (a counter is appended). Blocking: call it off the asyncio loop. Raises RecordingError when it cannot be
    written.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError("a snapshot needs a non-empty grey or BGR image array")
    if image.dtype != np.uint8 or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        image = to_grey(image)
    name = stem if stem is not None else "snapshot_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
    _check_stem(name)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot create the snapshot folder {folder}: {exc.strerror or exc}") from exc
    path = _unique_path(folder, name, ".png")
    ok, encoded = cv2.imencode(".png", np.asarray(image, dtype=np.uint8))
    if not ok:
        raise RecordingError(f"the image could not be encoded as PNG for {path}")
    try:
        with open(path, "xb") as handle:
            handle.write(encoded.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _check_stem(stem: str) -> None:
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or "\x00" in stem:
        raise ValueError(f"invalid file name {stem!r}: it must be a plain name without folders")


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.lstat().st_mode)
    except OSError:
        return False


def _unique_path(folder: Path, stem: str, suffix: str) -> Path:
    path = folder / f"{stem}{suffix}"
    counter = 1
    while path.exists():
        path = folder / f"{stem}_{counter}{suffix}"
        counter += 1
    return path
