"""Focus stacks: a run of camera frames, each with its focus score, saved in one folder with an index.

While an engineer turns the focus ring, :func:`record_focus_stack` takes ``count`` fresh frames, one every
``interval_s`` seconds, scores each (:func:`devices.camera.focus_score`, the variance of the Laplacian of the
full-resolution grey frame) and writes it as a PNG; the folder then holds:

- ``frame_01.png`` ... ``frame_NN.png``: the frames as the camera delivered them, at full resolution;
- ``index.json``: one entry per frame (``frame``, ``file``, ``time_s`` since the first frame, ``score``,
  ``sharpest``), and the sharpest frame named again at the top (``sharpest_frame``, ``sharpest_file``,
  ``sharpest_score``), with the resolution and the time the stack was taken (UTC).

Nothing half-written is ever left: the frames and the index are written into a hidden folder
(``.<name>.partial``), each file flushed to disk, and that folder is renamed to its name only once the index
is written. On any failure (a full disk, the camera freezing or going away during the stack, a cancellation)
the hidden folder is removed and the error says why (:class:`~devices.camera.RecordingError`, or
:class:`~devices.camera.NoImageError` for the camera).

The frames are taken on time (so the stack spans the seconds it says) and scored, encoded and written behind
them on the camera's low-priority worker thread (:class:`devices.camera._threads.LowPriorityWorker`); only
the waiting for frames is on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from devices.camera._analysis import focus_score
from devices.camera._frames import CameraFrame
from devices.camera._recording import RecordingError
from devices.camera._threads import LowPriorityWorker
from devices.camera.snapshot import NoImageError, write_png

#: The index file's name inside a stack's folder.
FOCUS_INDEX = "index.json"
#: The start of a stack folder's default name.
FOCUS_STACK_PREFIX = "focus_stack_"
#: Frames a stack may hold.
MIN_FRAMES = 2
MAX_FRAMES = 99
#: Longest wait for a fresh frame during a stack, s.
FRAME_WAIT_S = 2.0
#: A stack folder's mode (owner all, group read and enter), like the data directory's folders.
STACK_FOLDER_MODE = 0o750


@dataclass(frozen=True, slots=True)
class FocusFrame:
    """One frame of a stack.

    Attributes:
        frame: its number in the stack, from 1.
        file: its PNG's name in the stack's folder.
        time_s: seconds since the stack's first frame was read.
        score: its focus score (variance of the Laplacian, grey levels squared).
        size_bytes: its PNG's size, bytes.
        sequence: its number among all frames the camera read.
    """

    frame: int
    file: str
    time_s: float
    score: float
    size_bytes: int
    sequence: int


@dataclass(frozen=True, slots=True)
class FocusStack:
    """A focus stack as written.

    Attributes:
        folder: the stack's folder.
        frames: the frames, in the order taken.
        width: frame width, pixels.
        height: frame height, pixels.
        taken_at: when the first frame was read, UTC.
        index_bytes: size of the index file, bytes.
    """

    folder: Path
    frames: tuple[FocusFrame, ...]
    width: int
    height: int
    taken_at: datetime
    index_bytes: int

    @property
    def index(self) -> Path:
        """The index file."""
        return self.folder / FOCUS_INDEX

    @property
    def sharpest(self) -> FocusFrame:
        """The frame with the highest focus score (the first of equals)."""
        return max(self.frames, key=lambda f: (f.score, -f.frame))

    @property
    def resolution(self) -> str:
        """``WIDTHxHEIGHT`` as the records keep it."""
        return f"{self.width}x{self.height}"

    @property
    def duration_s(self) -> float:
        """Seconds from the first frame to the last."""
        return self.frames[-1].time_s if self.frames else 0.0

    @property
    def total_bytes(self) -> int:
        """Size of every file of the stack, bytes."""
        return sum(f.size_bytes for f in self.frames) + self.index_bytes


def focus_stack_name(now: datetime | None = None) -> str:
    """The default name of a stack folder: ``focus_stack_YYYYMMDD_HHMMSS_mmm`` (UTC)."""
    moment = now if now is not None else datetime.now(UTC)
    return FOCUS_STACK_PREFIX + moment.strftime("%Y%m%d_%H%M%S_") + f"{moment.microsecond // 1000:03d}"


def check_frame_count(count: int) -> int:
    """A stack's frame count (an integer 2..99); ValueError otherwise."""
    if isinstance(count, bool) or not isinstance(count, int) or not MIN_FRAMES <= count <= MAX_FRAMES:
        raise ValueError(f"a focus stack has {MIN_FRAMES}..{MAX_FRAMES} frames, not {count!r}")
    return count


class FocusStackWriter:
    """Writes one stack into a hidden folder and puts it in place at the end (blocking: call it off the
    loop). :meth:`discard` removes everything written so far, also while a frame is being written."""

    def __init__(self, parent: Path, name: str) -> None:
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise ValueError(f"invalid focus stack name {name!r}: it must be a plain name without folders")
        parent = Path(parent)
        try:
            parent.mkdir(mode=STACK_FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(f"cannot create the folder {parent}: {exc.strerror or exc}") from exc
        self.parent = parent
        self.name = name
        self.partial = parent / f".{name}.partial"
        try:
            self.partial.mkdir(mode=STACK_FOLDER_MODE)
        except OSError as exc:
            raise RecordingError(f"cannot create {self.partial}: {exc.strerror or exc}") from exc
        self._lock = threading.Lock()
        self._discarded = False
        self._frames: list[FocusFrame] = []
        self._size: tuple[int, int] | None = None
        self._taken_at: datetime | None = None

    @property
    def frames(self) -> tuple[FocusFrame, ...]:
        """The frames written so far."""
        return tuple(self._frames)

    def add(self, frame: CameraFrame, time_s: float) -> FocusFrame:
        """Score ``frame`` and write it as the next frame of the stack."""
        score = focus_score(frame.grey)
        number = len(self._frames) + 1
        name = f"frame_{number:02d}.png"
        with self._lock:
            if self._discarded:
                raise RecordingError("the focus stack was abandoned")
            if self._size is None:
                self._size = frame.size
                self._taken_at = datetime.now(UTC)
            elif frame.size != self._size:
                raise RecordingError(
                    f"the camera's frame size changed during the stack ({self._size} to {frame.size})"
                )
            size = write_png(frame.image, self.partial / name)
        entry = FocusFrame(number, name, round(max(0.0, time_s), 3), score, size, frame.sequence)
        self._frames.append(entry)
        return entry

    def finish(self) -> FocusStack:
        """Write the index and put the folder in place under its name (a counter is appended when the name is
        taken); RecordingError when it cannot be written (nothing is left behind then)."""
        with self._lock:
            if self._discarded:
                raise RecordingError("the focus stack was abandoned")
            if len(self._frames) < MIN_FRAMES or self._size is None or self._taken_at is None:
                raise RecordingError("a focus stack needs at least two frames")
            sharpest = max(self._frames, key=lambda f: (f.score, -f.frame))
            width, height = self._size
            index = {
                "stack": self.name,
                "taken_at": self._taken_at.isoformat(timespec="milliseconds"),
                "resolution": f"{width}x{height}",
                "focus_measure": "variance of the Laplacian of the full-resolution grey frame",
                "sharpest_frame": sharpest.frame,
                "sharpest_file": sharpest.file,
                "sharpest_score": round(sharpest.score, 3),
                "frames": [
                    {
                        "frame": f.frame,
                        "file": f.file,
                        "time_s": f.time_s,
                        "score": round(f.score, 3),
                        "sharpest": f.frame == sharpest.frame,
                    }
                    for f in self._frames
                ],
            }
            data = (json.dumps(index, indent=2, allow_nan=False) + "\n").encode("utf-8")
            index_bytes = _write_file(self.partial / FOCUS_INDEX, data)
            final = self._free_name()
            try:
                os.rename(self.partial, final)
                _sync_folder(self.parent)
            except OSError as exc:
                raise RecordingError(
                    f"cannot put the focus stack in place at {final}: {exc.strerror or exc}"
                ) from exc
            return FocusStack(
                folder=final,
                frames=tuple(self._frames),
                width=width,
                height=height,
                taken_at=self._taken_at,
                index_bytes=index_bytes,
            )

    def _free_name(self) -> Path:
        path, counter = self.parent / self.name, 1
        while path.exists():
            path = self.parent / f"{self.name}_{counter}"
            counter += 1
        return path

    def discard(self) -> None:
        """Remove the hidden folder and everything in it (waits for a frame being written)."""
        with self._lock:
            self._discarded = True
            shutil.rmtree(self.partial, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> int:
    partial = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as exc:
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return len(data)


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def record_focus_stack(
    *,
    next_frame: Callable[[int], Awaitable[CameraFrame]],
    usable: Callable[[], str | None],
    worker: LowPriorityWorker,
    parent: Path,
    count: int,
    interval_s: float,
    name: str | None = None,
) -> FocusStack:
    """Take ``count`` fresh frames, one every ``interval_s`` s, and write them as a stack in ``parent``.

    Args:
        next_frame: ``next_frame(after)`` awaits a frame whose sequence number is above ``after``.
        usable: None while the camera is usable, else why not (checked before each frame).
        worker: the low-priority worker thread the scoring and writing run on.
        parent: the folder the stack's folder is made in.
        count: frames in the stack (2..99).
        interval_s: seconds between frames (> 0).
        name: the stack folder's name (default :func:`focus_stack_name`).

    Raises NoImageError when the camera is or becomes unusable, RecordingError when a file cannot be
    written; nothing of the stack is left behind either way.
    """
    check_frame_count(count)
    if (
        isinstance(interval_s, bool)
        or not isinstance(interval_s, int | float)
        or not 0 < interval_s < math.inf
    ):
        raise ValueError(f"interval_s must be a finite number of seconds > 0, got {interval_s!r}")
    why = usable()
    if why is not None:
        raise NoImageError(f"no image to take: {why}")
    stack_name = name if name is not None else focus_stack_name()
    writer = await worker.run(lambda: FocusStackWriter(parent, stack_name))
    loop = asyncio.get_running_loop()
    # Frames are taken on time and written behind them: the stack spans the seconds it says even when the
    # writing (on the low-priority thread) is slower than the frames.
    queue: asyncio.Queue[tuple[CameraFrame, float] | None] = asyncio.Queue()

    async def write_all() -> None:
        while (item := await queue.get()) is not None:
            await worker.run(functools.partial(writer.add, *item))

    writing = loop.create_task(write_all(), name="focus-stack-writer")
    try:
        last = 0
        first_at: float | None = None
        due = loop.time()
        for _ in range(count):
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            due = max(due, loop.time()) + interval_s
            if writing.done():
                writing.result()  # a write failed: say why now
                raise RecordingError("the focus stack's writer stopped")
            try:
                frame = await asyncio.wait_for(next_frame(last), FRAME_WAIT_S)
            except TimeoutError:
                raise NoImageError(f"no image to take: no new frame for {FRAME_WAIT_S:g} s") from None
            why = usable()
            if why is not None:
                raise NoImageError(f"no image to take: {why}")
            last = frame.sequence
            if first_at is None:
                first_at = frame.timestamp
            queue.put_nowait((frame, frame.timestamp - first_at))
        queue.put_nowait(None)
        await writing
        return await worker.run(writer.finish)
    except BaseException:
        writing.cancel()
        with contextlib.suppress(BaseException):
            await writing
        await asyncio.shield(asyncio.to_thread(writer.discard))
        raise


__all__ = [
    "FOCUS_INDEX",
    "FOCUS_STACK_PREFIX",
    "FocusFrame",
    "FocusStack",
    "FocusStackWriter",
    "check_frame_count",
    "focus_stack_name",
    "record_focus_stack",
]
