"""The capture thread and its hand-off of frames to the asyncio loop.

One named, non-daemon thread per camera opens the source, reads frames, converts them to 8-bit grey and hands
each one to the loop with ``loop.call_soon_threadsafe`` into a queue of one: a frame the consumer has not
taken yet is replaced by the newer one (and counted as dropped), so a slow consumer always gets the latest
frame and never a backlog. The same thread writes every frame it reads to the video recording, when one is
running.

Health is reported, never hidden (:class:`CameraStatus`):

- ``not_opened``: the camera could not be opened (missing device, missing or undecodable file, unplugged),
  with the reason; the thread keeps trying to open it with a growing back-off.
- ``no_frames``: the camera is open but no frame arrived within ``no_frame_timeout_s`` (reads fail or block).
  When reads keep failing for ``reopen_after_s`` the source is released and opened again.
- ``frozen``: frames keep arriving but have been byte-for-byte identical for longer than ``freeze_after_s``.
- ``ok``: fresh, changing frames.

The status is computed when asked from the times the thread records, so a thread stuck inside a driver's read
still shows as ``no_frames``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from devices.camera._frames import CameraFrame, to_grey
from devices.camera._recording import RecordingError, RecordingSummary, VideoRecorder, save_snapshot
from devices.camera._sources import FrameSource
from devices.camera._threads import DEFAULT_THREAD_NICE, check_nice, lower_current_thread_priority
from devices.camera.focus import FocusStack, record_focus_stack
from devices.camera.snapshot import NoImageError, SnapshotFiles, SnapshotWriter


class CameraState(enum.StrEnum):
    """Health of the camera."""

    OK = "ok"
    FROZEN = "frozen"
    NO_FRAMES = "no_frames"
    NOT_OPENED = "not_opened"


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """Camera health at one moment.

    Attributes:
        state: ok, frozen, no_frames or not_opened.
        reason: what is wrong, in words (empty when ok).
        source: the source's description.
        frames_read: frames read since the capture started.
        frames_dropped: frames replaced in the hand-off queue before the consumer took them.
        last_frame_age_s: seconds since the last frame was read, or None before the first.
        fps: recent frame rate, frames per second (0 before two frames).
        recording: True while a video recording runs.
    """

    state: CameraState
    reason: str
    source: str
    frames_read: int
    frames_dropped: int
    last_frame_age_s: float | None
    fps: float
    recording: bool


@dataclass(frozen=True, slots=True)
class CaptureHealth:
    """What the capture thread has recorded, as :func:`judge_health` needs it (times: ``time.monotonic()``
    seconds, the same clock in every process of the machine).

    Attributes:
        source: the source's description.
        started: the capture thread was started.
        closed: the capture was closed.
        fatal_error: why the capture thread stopped on an unexpected error (empty otherwise).
        opened: the source is open.
        open_error: why the last attempt to open the source failed (empty otherwise).
        read_error: why the last read failed (empty after a good read).
        opened_at: when the source was last opened, or None.
        last_frame_at: when the last frame was read, or None.
        last_change_at: when a frame last differed from the one before, or None.
        frames_read: frames read since the start.
        frames_dropped: frames replaced before the consumer took them.
        fps: recent frame rate, frames per second.
        recording: a video recording runs.
        frame_size: (width, height) of the last frame, pixels, or None before the first.
    """

    source: str
    started: bool
    closed: bool
    fatal_error: str
    opened: bool
    open_error: str
    read_error: str
    opened_at: float | None
    last_frame_at: float | None
    last_change_at: float | None
    frames_read: int
    frames_dropped: int
    fps: float
    recording: bool
    frame_size: tuple[int, int] | None


def judge_health(
    health: CaptureHealth, now: float, *, freeze_after_s: float, no_frame_timeout_s: float
) -> CameraStatus:
    """The camera's state at ``now`` from what its capture thread recorded (see the module documentation)."""
    last_frame_at = health.last_frame_at
    age = None if last_frame_at is None else now - last_frame_at

    def make(state: CameraState, reason: str) -> CameraStatus:
        return CameraStatus(
            state=state,
            reason=reason,
            source=health.source,
            frames_read=health.frames_read,
            frames_dropped=health.frames_dropped,
            last_frame_age_s=age,
            fps=health.fps if state is CameraState.OK or state is CameraState.FROZEN else 0.0,
            recording=health.recording,
        )

    if not health.started:
        return make(CameraState.NOT_OPENED, "camera capture not started")
    if health.closed:
        return make(CameraState.NOT_OPENED, "camera capture closed")
    if health.fatal_error:
        return make(CameraState.NOT_OPENED, health.fatal_error)
    if not health.opened:
        return make(CameraState.NOT_OPENED, health.open_error or f"opening {health.source}")
    since = last_frame_at if last_frame_at is not None else health.opened_at
    if since is not None and now - since > no_frame_timeout_s:
        reason = f"no frame from {health.source} for {now - since:.1f} s"
        if health.read_error:
            reason += f" ({health.read_error})"
        return make(CameraState.NO_FRAMES, reason)
    if last_frame_at is None:
        reason = f"waiting for the first frame from {health.source}"
        if health.read_error:
            reason += f" ({health.read_error})"
        return make(CameraState.NO_FRAMES, reason)
    last_change_at = health.last_change_at
    if last_change_at is not None and last_frame_at - last_change_at > freeze_after_s:
        return make(
            CameraState.FROZEN,
            f"{health.source} has sent identical frames for {last_frame_at - last_change_at:.1f} s",
        )
    return make(CameraState.OK, "")


async def wait_for_camera_state(
    status: Callable[[], CameraStatus], state: CameraState, timeout_s: float, poll_s: float
) -> CameraStatus:
    """Poll ``status()`` every ``poll_s`` s until it reports ``state``; TimeoutError with the last status
    after ``timeout_s`` s. Shared by the in-process camera and the camera process."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        current = status()
        if current.state is state:
            return current
        if loop.time() >= deadline:
            raise TimeoutError(f"camera did not reach {state.value} within {timeout_s} s; it is {current}")
        await asyncio.sleep(poll_s)


class CameraClosedError(RuntimeError):
    """The capture was closed while a frame was awaited, or before it."""


class CameraCapture:
    """Reads a :class:`FrameSource` in its own thread and hands the latest frame to the asyncio loop.

    Args:
        source: the camera (not yet opened; the capture thread opens, reads and releases it).
        freeze_after_s: identical frames for longer than this many seconds mean a frozen camera.
        no_frame_timeout_s: no frame for longer than this many seconds means no_frames.
        reopen_after_s: reads failing for this many seconds make the thread release and reopen the source.
        reopen_backoff_s: (first, longest) wait between attempts to open the camera, seconds; it doubles
            after each failed attempt.
        thread_name: name of the capture thread.
        thread_nice: how much lower the capture thread's scheduling priority is than the process's (nice
            increment 0..19, Linux), so the asyncio loop wins a contended CPU.
        clock: monotonic clock in seconds (``time.monotonic``); frame timestamps use it.

    Use :meth:`start` from a running loop, then :meth:`next_frame`; finish with :meth:`aclose` (or
    ``async with``), which stops and joins the thread and releases the camera.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        freeze_after_s: float = 1.0,
        no_frame_timeout_s: float = 1.0,
        reopen_after_s: float = 2.0,
        reopen_backoff_s: tuple[float, float] = (0.25, 5.0),
        thread_name: str = "camera-capture",
        thread_nice: int = DEFAULT_THREAD_NICE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (
            ("freeze_after_s", freeze_after_s),
            ("no_frame_timeout_s", no_frame_timeout_s),
            ("reopen_after_s", reopen_after_s),
        ):
            _check_seconds(name, value)
        first, longest = reopen_backoff_s
        _check_seconds("reopen_backoff_s[0]", first)
        _check_seconds("reopen_backoff_s[1]", longest)
        if longest < first:
            raise ValueError(
                f"reopen_backoff_s must be (first, longest) with first <= longest, got {reopen_backoff_s}"
            )
        if not thread_name:
            raise ValueError("the capture thread needs a name")
        self._source = source
        self._freeze_after = float(freeze_after_s)
        self._no_frame_timeout = float(no_frame_timeout_s)
        self._reopen_after = float(reopen_after_s)
        self._backoff = (float(first), float(longest))
        self._thread_name = thread_name
        self._thread_nice = check_nice(thread_nice)
        self._clock = clock

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[CameraFrame | None] | None = None
        self._exited: asyncio.Event | None = None
        self._latest: CameraFrame | None = None
        self._frames_delivered = 0
        self._delivered_event = asyncio.Event()
        self._closed = False

        # Written by the capture thread under the lock; read by status().
        self._opened = False
        self._open_error = ""
        self._read_error = ""
        self._opened_at: float | None = None
        self._last_frame_at: float | None = None
        self._last_change_at: float | None = None
        self._frames_read = 0
        self._fps = 0.0
        self._frames_dropped = 0  # loop thread only
        self._recorder: VideoRecorder | None = None
        self._failed_summary: RecordingSummary | None = None
        self._write_lock = threading.Lock()
        self._last_size: tuple[int, int] | None = None
        self._fatal_error = ""
        self._snapshot_writer: SnapshotWriter | None = None

    # -- life cycle ------------------------------------------------------------------------------------------

    @property
    def source(self) -> FrameSource:
        """The camera source."""
        return self._source

    @property
    def description(self) -> str:
        """A human-readable name of the camera."""
        return self._source.description

    def start(self) -> None:
        """Start the capture thread; call from the asyncio loop that will consume the frames."""
        if self._closed:
            raise CameraClosedError("the camera capture is closed")
        if self._thread is not None:
            raise RuntimeError("the camera capture is already started")
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=1)
        self._exited = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=False)
        self._thread.start()

    async def __aenter__(self) -> CameraCapture:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self, timeout_s: float = 5.0) -> RecordingSummary | None:
        """Stop the thread, release the camera and finish a running recording (whose summary is returned).

        Waits without blocking the loop. Raises TimeoutError if the thread is still inside a read after
        ``timeout_s`` seconds (it stops at its next return).
        """
        thread = self._thread
        self._begin_close()
        if thread is not None and self._exited is not None:
            try:
                await asyncio.wait_for(self._exited.wait(), timeout_s)
            except TimeoutError:
                raise TimeoutError(
                    f"the camera thread {self._thread_name!r} did not stop within {timeout_s} s"
                ) from None
            await asyncio.to_thread(thread.join, timeout_s)
        writer, self._snapshot_writer = self._snapshot_writer, None
        if writer is not None:
            await writer.aclose()
        return await asyncio.to_thread(self._finish_recording)

    def close(self, timeout_s: float = 5.0) -> RecordingSummary | None:
        """Blocking form of :meth:`aclose`, for use outside the loop's thread."""
        thread = self._thread
        self._begin_close()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                raise TimeoutError(
                    f"the camera thread {self._thread_name!r} did not stop within {timeout_s} s"
                )
        writer, self._snapshot_writer = self._snapshot_writer, None
        if writer is not None:
            writer.close()
        return self._finish_recording()

    def _begin_close(self) -> None:
        self._closed = True
        self._stop.set()
        queue = self._queue
        if queue is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_waiters, queue)

    def _wake_waiters(self, queue: asyncio.Queue[CameraFrame | None]) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
        self._notify_delivery()

    # -- frames for the loop ---------------------------------------------------------------------------------

    async def next_frame(self, timeout_s: float | None = None) -> CameraFrame:
        """Wait for the newest frame not yet taken. Raises TimeoutError after ``timeout_s`` seconds and
        CameraClosedError once the capture is closed."""
        if self._queue is None:
            raise RuntimeError("the camera capture is not started")
        if self._closed:
            raise CameraClosedError("the camera capture is closed")
        async with asyncio.timeout(timeout_s):
            frame = await self._queue.get()
        if frame is None:
            self._queue.put_nowait(None)  # let every other waiter see the close as well
            raise CameraClosedError("the camera capture is closed")
        return frame

    @property
    def latest_frame(self) -> CameraFrame | None:
        """The last frame handed to the loop (taken or not), or None."""
        return self._latest

    def _deliver(self, frame: CameraFrame) -> None:
        queue = self._queue
        if queue is None or self._closed:
            return
        if queue.full():
            queue.get_nowait()
            self._frames_dropped += 1
        queue.put_nowait(frame)
        self._latest = frame
        self._frames_delivered += 1
        self._notify_delivery()

    def _notify_delivery(self) -> None:
        event, self._delivered_event = self._delivered_event, asyncio.Event()
        event.set()

    @property
    def frames_delivered(self) -> int:
        """Frames handed to the loop since the start (taken by the consumer or dropped as stale)."""
        return self._frames_delivered

    async def wait_for_frames(self, count: int, timeout_s: float) -> int:
        """Wait until at least ``count`` frames have been handed to the loop since the start, and return how
        many have. Raises TimeoutError after ``timeout_s`` seconds and CameraClosedError once closed."""
        async with asyncio.timeout(timeout_s):
            while self._frames_delivered < count:
                if self._closed:
                    raise CameraClosedError("the camera capture is closed")
                await self._delivered_event.wait()
        return self._frames_delivered

    # -- health ----------------------------------------------------------------------------------------------

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the latest frame read, pixels; None before the first."""
        with self._lock:
            return self._last_size

    def health(self) -> CaptureHealth:
        """The raw facts :meth:`status` judges: what the capture thread recorded, with the times on the
        monotonic clock. A camera in another process sends these, so it is judged by the same rules."""
        with self._lock:
            return CaptureHealth(
                source=self._source.description,
                started=self._thread is not None,
                closed=self._closed,
                fatal_error=self._fatal_error,
                opened=self._opened,
                open_error=self._open_error,
                read_error=self._read_error,
                opened_at=self._opened_at,
                last_frame_at=self._last_frame_at,
                last_change_at=self._last_change_at,
                frames_read=self._frames_read,
                frames_dropped=self._frames_dropped,
                fps=self._fps,
                recording=self._recorder is not None,
                frame_size=self._last_size,
            )

    def status(self) -> CameraStatus:
        """The camera's health now (see the module documentation for the states)."""
        return judge_health(
            self.health(),
            self._clock(),
            freeze_after_s=self._freeze_after,
            no_frame_timeout_s=self._no_frame_timeout,
        )

    async def wait_for_state(
        self, state: CameraState, timeout_s: float, poll_s: float = 0.01
    ) -> CameraStatus:
        """Wait until :meth:`status` reports ``state``; raises TimeoutError with the last status otherwise."""
        return await wait_for_camera_state(self.status, state, timeout_s, poll_s)

    # -- recording -------------------------------------------------------------------------------------------

    async def start_recording(self, folder: Path, *, fps: float = 30.0, stem: str | None = None) -> Path:
        """Record the frames the thread reads from now on, at most ``fps`` a second, into a video file in
        ``folder`` (:class:`VideoRecorder`: ``mp4v`` in ``.mkv``); returns its path.

        The frame size is that of the latest frame, so at least one frame must have been read; the file is
        created off the loop. Raises RuntimeError if a recording is already running or no frame was read yet,
        RecordingError when the file cannot be created, CameraClosedError once the capture is closed.
        """
        if self._closed:
            raise CameraClosedError("the camera capture is closed")
        with self._lock:
            if self._recorder is not None:
                raise RuntimeError(f"already recording to {self._recorder.path}")
            size = self._last_size
        if size is None:
            raise RuntimeError("no frame read yet, so the video size is unknown")
        recorder = await asyncio.to_thread(VideoRecorder, folder, size, fps=fps, stem=stem)
        with self._lock:
            refusal = ""
            if self._closed:
                refusal = "the camera capture was closed while the recording was being created"
            elif self._recorder is not None:
                refusal = f"already recording to {self._recorder.path}"
            else:
                self._recorder = recorder
        if refusal:
            await asyncio.to_thread(_discard, recorder)
            if self._closed:
                raise CameraClosedError(refusal)
            raise RuntimeError(refusal)
        return recorder.path

    async def stop_recording(self) -> RecordingSummary | None:
        """Finish the running recording and return its summary, or the summary of a recording that stopped
        on an error (its ``error`` says why), or None when none was running. The file is finalised off the
        loop."""
        return await asyncio.to_thread(self._finish_recording)

    def _finish_recording(self) -> RecordingSummary | None:
        with self._lock:
            recorder, self._recorder = self._recorder, None
            failed, self._failed_summary = self._failed_summary, None
        if recorder is None:
            return failed
        with self._write_lock:  # lets a write in progress complete first
            return recorder.close()

    async def snapshot(self, folder: Path, *, stem: str | None = None) -> Path:
        """Save the latest frame as a PNG in ``folder`` (written off the loop) and return its path.

        Raises RuntimeError before the first frame and RecordingError when the file cannot be written.
        """
        frame = self._latest
        if frame is None:
            raise RuntimeError("no frame read yet, nothing to save")
        return await asyncio.to_thread(save_snapshot, frame.image, folder, stem=stem)

    async def save_snapshots(
        self, folder: Path, *, stem: str | None = None, expected_mm: float | None = None
    ) -> SnapshotFiles:
        """Save the newest frame as a treatment snapshot pair (raw and with the ring drawn,
        :func:`devices.camera.snapshot.save_snapshot_pair`) in ``folder``, on a thread of its
        own at the lowest priority (nice 19).

        Raises NoImageError, saying why, unless the camera is ok (no frame yet, frozen, not opened), and
        RecordingError when a file cannot be written (neither is left behind).
        """
        if self._closed:
            raise NoImageError("no image to take: the camera is closed")
        status = self.status()
        frame = self._latest
        if status.state is not CameraState.OK or frame is None:
            raise NoImageError(f"no image to take: the camera is {status.state.value} ({status.reason})")
        return await self._writer().save(frame, folder, stem=stem, expected_diameter_mm=expected_mm)

    def _writer(self) -> SnapshotWriter:
        if self._snapshot_writer is None:
            self._snapshot_writer = SnapshotWriter()
        return self._snapshot_writer

    async def frame_after(self, sequence: int) -> CameraFrame:
        """The newest frame handed to the loop whose sequence number is above ``sequence``, waiting for one
        when there is none yet; CameraClosedError once closed."""
        while True:
            if self._closed:
                raise CameraClosedError("the camera capture is closed")
            frame = self._latest
            if frame is not None and frame.sequence > sequence:
                return frame
            event = self._delivered_event
            await event.wait()

    def _unusable(self) -> str | None:
        if self._closed:
            return "the camera is closed"
        status = self.status()
        if status.state is not CameraState.OK:
            return f"the camera is {status.state.value} ({status.reason})"
        return None

    async def record_focus_stack(
        self, folder: Path, *, count: int, interval_s: float, name: str | None = None
    ) -> FocusStack:
        """Take ``count`` fresh frames, one every ``interval_s`` s, each with its focus score, and save them
        as a focus stack in a folder of its own inside ``folder``
        (:func:`devices.camera.focus.record_focus_stack`), written on the snapshots' low-priority thread.

        Raises NoImageError unless the camera stays ok throughout, RecordingError when a file cannot be
        written; nothing of the stack is left behind either way."""
        return await record_focus_stack(
            next_frame=self.frame_after,
            usable=self._unusable,
            worker=self._writer(),
            parent=folder,
            count=count,
            interval_s=interval_s,
            name=name,
        )

    # -- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._backoff[0]
        previous: np.ndarray | None = None
        lower_current_thread_priority(self._thread_nice)
        try:
            while not self._stop.is_set():
                if not self._opened:
                    if self._open_source():
                        backoff = self._backoff[0]
                        previous = None
                    else:
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2.0, self._backoff[1])
                    continue
                try:
                    ok, image = self._source.read()
                    error = "" if ok and image is not None else "read returned no frame"
                except Exception as exc:  # a driver error must become a health state, not a dead thread
                    ok, image, error = False, None, f"read failed: {type(exc).__name__}: {exc}"
                if self._stop.is_set():
                    break
                if not ok or image is None:
                    self._read_failed(error)
                    continue
                try:
                    grey = to_grey(image)
                except ValueError as exc:
                    self._read_failed(f"unusable frame: {exc}")
                    continue
                now = self._clock()
                changed = previous is None or previous.shape != grey.shape or _differs(previous, grey)
                previous = grey
                self._frame_read(now, changed, (int(grey.shape[1]), int(grey.shape[0])))
                frame = CameraFrame(sequence=self._frames_read, timestamp=now, image=image, grey=grey)
                self._record(frame)
                if not self._hand_over(frame):
                    break
        except BaseException as exc:
            with self._lock:
                self._fatal_error = f"camera thread stopped: {type(exc).__name__}: {exc}"
            raise
        finally:
            with contextlib.suppress(Exception):
                self._source.release()
            with self._lock:
                self._opened = False
            loop, exited = self._loop, self._exited
            if loop is not None and exited is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(exited.set)

    def _open_source(self) -> bool:
        try:
            self._source.open()
        except Exception as exc:  # OSError from sources; anything else is reported the same way
            reason = str(exc) or type(exc).__name__
            with self._lock:
                self._opened = False
                self._open_error = reason
            return False
        now = self._clock()
        with self._lock:
            self._opened = True
            self._open_error = ""
            self._read_error = ""
            self._opened_at = now
            self._last_frame_at = None
            self._last_change_at = None
        return True

    def _read_failed(self, error: str) -> None:
        now = self._clock()
        with self._lock:
            self._read_error = error
            since = self._last_frame_at if self._last_frame_at is not None else self._opened_at
        if since is not None and now - since > self._reopen_after:
            with contextlib.suppress(Exception):
                self._source.release()
            with self._lock:
                self._opened = False
                self._open_error = (
                    f"{self._source.description} stopped delivering frames ({error}); reopening"
                )
            return
        self._stop.wait(0.02)

    def _frame_read(self, now: float, changed: bool, size: tuple[int, int]) -> None:
        with self._lock:
            if self._last_frame_at is not None:
                interval = now - self._last_frame_at
                if interval > 0.0:
                    rate = 1.0 / interval
                    self._fps = rate if self._fps == 0.0 else 0.9 * self._fps + 0.1 * rate
            self._last_frame_at = now
            if changed:
                self._last_change_at = now
            self._read_error = ""
            self._frames_read += 1
            self._last_size = size

    def _record(self, frame: CameraFrame) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        with self._write_lock:
            if recorder is not self._recorder:
                return  # stopped meanwhile
            if not recorder.due(frame.timestamp):
                return  # faster than the recording's frame rate
            try:
                recorder.write(frame.image, frame.timestamp)
            except (ValueError, RecordingError) as exc:
                recorder.fail(str(exc))
                summary = recorder.close()
                with self._lock:
                    self._recorder = None
                    self._failed_summary = summary

    def _hand_over(self, frame: CameraFrame) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(self._deliver, frame)
        except RuntimeError:  # the loop is closed: nobody is left to consume frames
            return False
        return True


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two grey frames of one size differ in any pixel (OpenCV compares without holding the GIL)."""
    return bool(cv2.norm(a, b, cv2.NORM_INF) > 0)


def _discard(recorder: VideoRecorder) -> None:
    recorder.close()
    recorder.path.unlink(missing_ok=True)


def _check_seconds(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or value == float("inf")
    ):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
