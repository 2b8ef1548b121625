"""Treatment snapshots: the camera's newest frame saved as two PNG files, raw and with the ring drawn.

:func:`save_snapshot_pair` writes, into a session's folder:

- ``<stem>.png``: the frame exactly as the camera delivered it, at its full resolution;
- ``<stem>_ring.png``: the same frame with the detected ring outlined, its centre marked and its diameter
  written beside it (or, when no ring was found, why not).

Each file is encoded in memory, written under a temporary name (``.<name>.partial``), flushed to disk and only
then renamed into place, so a full disk or any other failure never leaves a half-written picture behind: on
failure the temporary file, and the raw picture when the annotated one could not follow it, are removed, and
:class:`~devices.camera._recording.RecordingError` says why.

The work is blocking (ring detection, PNG encoding, file writes) and runs off the asyncio loop: on a thread
of its own at a lowered priority in the controller's process (:class:`SnapshotWriter`, used by
:meth:`devices.camera.CameraCapture.save_snapshots`), or in the camera process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from devices.camera._analysis import RingDetection, RingDetector
from devices.camera._frames import CameraFrame, to_grey
from devices.camera._recording import RecordingError
from devices.camera._threads import MAX_NICE, LowPriorityWorker

#: Colour of the ring, its centre mark and its label on the annotated picture (BGR, green).
ANNOTATION_BGR = (0, 220, 0)
#: Suffix of the annotated picture's name (``<stem>_ring.png``).
ANNOTATED_SUFFIX = "_ring"
#: The most a snapshot file's mode allows (owner read/write, group read), like a session's video.
SNAPSHOT_FILE_MODE = 0o640


class NoImageError(RuntimeError):
    """There is no usable camera image to save (no camera, no frame yet, or a frozen camera)."""


@dataclass(frozen=True, slots=True)
class SnapshotFiles:
    """The two pictures of one snapshot.

    Attributes:
        raw: the frame as the camera delivered it.
        annotated: the same frame with the ring drawn.
        raw_bytes: size of ``raw``, bytes.
        annotated_bytes: size of ``annotated``, bytes.
        width: frame width, pixels.
        height: frame height, pixels.
        frame_sequence: the frame's number in the capture.
        frame_timestamp: when the frame was read, ``time.monotonic()`` seconds.
        ring: the ring detected in the frame, or None.
        no_ring_reason: why no ring was found (empty when one was).
    """

    raw: Path
    annotated: Path
    raw_bytes: int
    annotated_bytes: int
    width: int
    height: int
    frame_sequence: int
    frame_timestamp: float
    ring: RingDetection | None
    no_ring_reason: str

    @property
    def resolution(self) -> str:
        """``WIDTHxHEIGHT`` as the records keep it."""
        return f"{self.width}x{self.height}"


def snapshot_stem(now: datetime | None = None) -> str:
    """The default name of a snapshot: ``snapshot_YYYYMMDD_HHMMSS_mmm`` (UTC)."""
    moment = now if now is not None else datetime.now(UTC)
    return "snapshot_" + moment.strftime("%Y%m%d_%H%M%S_") + f"{moment.microsecond // 1000:03d}"


def annotate(
    image: npt.NDArray[np.generic], ring: RingDetection | None, no_ring_reason: str = ""
) -> npt.NDArray[np.uint8]:
    """A BGR copy of ``image`` at full resolution with the ring outlined, its centre marked and its diameter
    written above it; without a ring, the reason is written in the top-left corner."""
    grey_or_bgr = np.asarray(image)
    if grey_or_bgr.ndim == 3 and grey_or_bgr.shape[2] == 3 and grey_or_bgr.dtype == np.uint8:
        out = grey_or_bgr.copy()
    else:
        out = cv2.cvtColor(to_grey(grey_or_bgr), cv2.COLOR_GRAY2BGR)
    height, width = out.shape[:2]
    thickness = max(1, round(width / 640))
    font_scale = max(0.5, width / 1600)
    if ring is None:
        text = "no ring" + (f": {no_ring_reason}" if no_ring_reason else "")
        cv2.putText(
            out, text, (12, 12 + round(24 * font_scale)), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
            ANNOTATION_BGR, thickness, cv2.LINE_AA,
        )  # fmt: skip
        return np.asarray(out, dtype=np.uint8)
    shift = 4  # sub-pixel drawing, 1/16 px
    factor = 1 << shift
    cx, cy = ring.centre_px
    centre = (round(cx * factor), round(cy * factor))
    radius = round(ring.diameter_px / 2.0 * factor)
    cv2.circle(out, centre, radius, ANNOTATION_BGR, thickness, cv2.LINE_AA, shift)
    arm = 8 * factor
    cv2.line(out, (centre[0] - arm, centre[1]), (centre[0] + arm, centre[1]), ANNOTATION_BGR, thickness,
             cv2.LINE_AA, shift)  # fmt: skip
    cv2.line(out, (centre[0], centre[1] - arm), (centre[0], centre[1] + arm), ANNOTATION_BGR, thickness,
             cv2.LINE_AA, shift)  # fmt: skip
    label = f"ring {ring.diameter_mm:.2f} mm ({ring.diameter_px:.0f} px)"
    (text_w, text_h), _base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    x = int(min(max(4.0, cx - text_w / 2.0), width - text_w - 4.0))
    top = cy - ring.diameter_px / 2.0 - 3 * thickness - 4
    y = int(top) if top - text_h > 4 else int(min(height - 4, cy + ring.diameter_px / 2.0 + text_h + 8))
    cv2.putText(out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ANNOTATION_BGR, thickness,
                cv2.LINE_AA)  # fmt: skip
    return np.asarray(out, dtype=np.uint8)


def write_png(image: npt.NDArray[np.generic], path: Path) -> int:
    """Write ``image`` as a PNG at ``path`` (which must not exist) through a temporary name, flushed before
    the rename; returns its size in bytes. On any failure nothing is left at either name and
    RecordingError says why."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RecordingError(f"the image could not be encoded as PNG for {path}")
    data = encoded.tobytes()
    partial = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SNAPSHOT_FILE_MODE)
    except OSError as exc:
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            raise FileExistsError(f"{path} appeared meanwhile")
        os.rename(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return len(data)


def _free_name(folder: Path, stem: str) -> str:
    name, counter = stem, 1
    while (folder / f"{name}.png").exists() or (folder / f"{name}{ANNOTATED_SUFFIX}.png").exists():
        name = f"{stem}_{counter}"
        counter += 1
    return name


def save_snapshot_pair(
    frame: CameraFrame,
    folder: Path,
    *,
    stem: str | None = None,
    detector: RingDetector | None = None,
    expected_diameter_mm: float | None = None,
) -> SnapshotFiles:
    """Detect the ring in ``frame`` and write its two pictures into ``folder`` (created if missing); an
    existing file is never overwritten (a counter is appended to the name). Blocking: call it off the loop.
    Raises RecordingError when a file cannot be written (and leaves neither behind)."""
    name = stem if stem is not None else snapshot_stem()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"invalid snapshot name {name!r}: it must be a plain name without folders")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot create the snapshot folder {folder}: {exc.strerror or exc}") from exc
    finder = detector if detector is not None else RingDetector()
    analysis = finder.analyse(frame.grey, expected_diameter_mm=expected_diameter_mm)
    annotated_image = annotate(frame.image, analysis.ring, analysis.no_ring_reason)
    name = _free_name(folder, name)
    raw_path = folder / f"{name}.png"
    annotated_path = folder / f"{name}{ANNOTATED_SUFFIX}.png"
    raw_image = frame.image if frame.image.dtype == np.uint8 else frame.grey
    raw_bytes = write_png(raw_image, raw_path)
    try:
        annotated_bytes = write_png(annotated_image, annotated_path)
    except RecordingError:
        with contextlib.suppress(OSError):
            raw_path.unlink()
        raise
    width, height = frame.size
    return SnapshotFiles(
        raw=raw_path,
        annotated=annotated_path,
        raw_bytes=raw_bytes,
        annotated_bytes=annotated_bytes,
        width=width,
        height=height,
        frame_sequence=frame.sequence,
        frame_timestamp=frame.timestamp,
        ring=analysis.ring,
        no_ring_reason=analysis.no_ring_reason,
    )


class SnapshotWriter(LowPriorityWorker):
    """Saves snapshot pairs on one worker thread of its own, ``thread_nice`` steps below the process's
    priority (default: the lowest there is, nice 19), so the asyncio loop neither waits for nor competes with
    the encoding: a snapshot is never urgent."""

    WHAT = "the snapshot writer"

    def __init__(
        self,
        *,
        detector: RingDetector | None = None,
        thread_name: str = "camera-snapshot",
        thread_nice: int = MAX_NICE,
    ) -> None:
        super().__init__(thread_name=thread_name, thread_nice=thread_nice)
        self.detector = detector if detector is not None else RingDetector()

    async def save(
        self,
        frame: CameraFrame,
        folder: Path,
        *,
        stem: str | None = None,
        expected_diameter_mm: float | None = None,
    ) -> SnapshotFiles:
        """:func:`save_snapshot_pair` on the writer's thread."""
        return await self.run(
            lambda: save_snapshot_pair(
                frame, folder, stem=stem, detector=self.detector, expected_diameter_mm=expected_diameter_mm
            )
        )
