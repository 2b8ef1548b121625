"""The camera in a process of its own, behind the same methods as :class:`CameraCapture`.

Reading a camera, converting and comparing frames, encoding the session video and finding the ring all run
Python code between the C calls, and in the controller's process that code takes the interpreter lock from
the safety loop (measured: ``tests/bench/bench_safety.py``). :class:`CameraProcess` starts
``python -m devices.camera._worker`` and talks to it over a Unix socket pair (:mod:`devices.camera._wire`);
the controller's loop only reads a small health record ten times a second and, a few times a second while a
console is connected, a preview JPEG of a few KiB.

Health is judged in the controller by the same rules as in-process (:func:`judge_health`) from the times the
camera process recorded (CLOCK_MONOTONIC, common to every process), so a camera process that hangs shows as
``no_frames`` once its last frame is old enough. A camera process that exits without being asked (a crash in a
driver) shows as ``not_opened`` with its exit status, and is started again after ``restart_after_s``; a
recording it was making ends there (:meth:`stop_recording` then reports the error).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devices.camera._capture import (
    CameraClosedError,
    CameraState,
    CameraStatus,
    CaptureHealth,
    judge_health,
    wait_for_camera_state,
)
from devices.camera._recording import RecordingError, RecordingSummary
from devices.camera._sources import CameraSpec, parse_camera_spec
from devices.camera._wire import (
    DEFAULT_HEALTH_PERIOD_S,
    DEFAULT_PROCESS_NICE,
    PreviewImage,
    encode,
    receive,
)
from devices.camera.focus import FRAME_WAIT_S, FocusStack, check_frame_count
from devices.camera.snapshot import NoImageError, SnapshotFiles

_LOG = logging.getLogger(__name__)

#: Exceptions the camera process reports by name and the controller raises again as the same type.
_ERRORS: dict[str, type[Exception]] = {
    "RuntimeError": RuntimeError,
    "ValueError": ValueError,
    "TimeoutError": TimeoutError,
    "RecordingError": RecordingError,
    "CameraClosedError": CameraClosedError,
    "NoImageError": NoImageError,
    "FileNotFoundError": RecordingError,
    "PermissionError": RecordingError,
    "OSError": RecordingError,
}


def describe_spec(spec: CameraSpec) -> str:
    """The name a configured camera is shown by before its process has reported."""
    parsed = parse_camera_spec(spec)
    if isinstance(parsed, str):
        return "simulated camera"
    if isinstance(parsed, int) or str(parsed).startswith("/dev/"):
        return f"camera device {parsed}"
    return f"video file {parsed}"


class CameraProcess:
    """A configured camera read by a process of its own; the controller-side object.

    Args:
        spec: the camera as configured: a device index, a video device or file path, or ``"sim"``.
        freeze_after_s: identical frames for longer than this many seconds mean a frozen camera.
        no_frame_timeout_s: no frame for longer than this many seconds means no_frames.
        process_nice: the camera process's nice value (it also leaves real-time scheduling and the CPUs its
            parent is pinned to).
        health_period_s: seconds between the health records the camera process sends.
        call_timeout_s: longest wait for the camera process to answer a call, s.
        restart_after_s: wait before a camera process that exited unasked is started again, s.
        clock: monotonic clock (``time.monotonic``; the camera process stamps frames with the same clock).

    Use :meth:`start` from a running loop; finish with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        spec: CameraSpec,
        *,
        freeze_after_s: float = 1.0,
        no_frame_timeout_s: float = 1.0,
        process_nice: int = DEFAULT_PROCESS_NICE,
        health_period_s: float = DEFAULT_HEALTH_PERIOD_S,
        call_timeout_s: float = 10.0,
        restart_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._description = describe_spec(spec)  # ValueError for a bad spec
        for name, value in (
            ("freeze_after_s", freeze_after_s),
            ("no_frame_timeout_s", no_frame_timeout_s),
            ("health_period_s", health_period_s),
            ("call_timeout_s", call_timeout_s),
            ("restart_after_s", restart_after_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if (
            isinstance(process_nice, bool)
            or not isinstance(process_nice, int)
            or not -20 <= process_nice < 20
        ):
            raise ValueError(f"process_nice must be an integer -20..19, got {process_nice!r}")
        self._spec = str(spec)
        self._freeze_after = float(freeze_after_s)
        self._no_frame_timeout = float(no_frame_timeout_s)
        self._nice = process_nice
        self._health_period = float(health_period_s)
        self._call_timeout = float(call_timeout_s)
        self._restart_after = float(restart_after_s)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._stopping = False
        self._health: CaptureHealth | None = None
        self._down_reason = "starting the camera process"
        self._writer: asyncio.StreamWriter | None = None
        self._connected: asyncio.Event | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._recording_lost: RecordingSummary | None = None
        self._recording_path: Path | None = None
        self._recording_fps = 30.0
        self.starts = 0
        """How many times the camera process was started."""

    # -- life cycle ------------------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """A human-readable name of the camera."""
        health = self._health
        return health.source if health is not None else self._description

    @property
    def pid(self) -> int | None:
        """The camera process's id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def start(self) -> None:
        """Start the camera process; call from the asyncio loop that will use the camera."""
        if self._closed:
            raise CameraClosedError("the camera capture is closed")
        if self._task is not None:
            raise RuntimeError("the camera capture is already started")
        self._connected = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="camera-process")

    async def __aenter__(self) -> CameraProcess:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, timeout_s: float = 5.0) -> RecordingSummary | None:
        """Finish a running recording (its summary is returned), stop the camera process and wait for it.

        A process that does not exit within ``timeout_s`` seconds is killed.
        """
        if self._closed:
            return None
        summary: RecordingSummary | None = None
        self._stopping = True
        if self._writer is not None and self._proc is not None and self._proc.returncode is None:
            try:
                summary = await self._call("close", timeout_s=timeout_s)
            except Exception as exc:
                _LOG.warning("camera process did not close cleanly: %s", exc)
        self._closed = True
        # Stopping the task closes this end of the socket: a camera process that was not asked to close
        # (not connected yet, or no answer) sees it end and exits.
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return summary if summary is not None else self._take_lost_recording()

    # -- the process -----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not (self._closed or self._stopping):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "devices.camera._worker",
                    "--fd",
                    str(theirs.fileno()),
                    "--camera",
                    self._spec,
                    "--nice",
                    str(self._nice),
                    "--health-period",
                    repr(self._health_period),
                    stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                )
            except OSError as exc:
                ours.close()
                self._down_reason = f"the camera process could not be started: {exc}"
                _LOG.error("%s", self._down_reason)
                await asyncio.sleep(self._restart_after)
                continue
            finally:
                theirs.close()
            self.starts += 1
            try:
                reader, writer = await asyncio.open_connection(sock=ours)
            except BaseException:
                ours.close()
                raise
            self._writer = writer
            assert self._connected is not None
            self._connected.set()
            try:
                while (message := await receive(reader)) is not None:
                    self._on_message(message)
            except (OSError, ValueError) as exc:
                _LOG.error("camera process: %s", exc)
            finally:
                self._connected.clear()
                self._writer = None
                writer.close()
                self._health = None
                self._lose_calls()
            code = await self._proc.wait()
            if self._closed or self._stopping:
                return
            self._down_reason = f"the camera process ended (exit status {code}); starting it again"
            _LOG.error("%s", self._down_reason)
            self._lose_recording(f"the camera process ended (exit status {code})")
            await asyncio.sleep(self._restart_after)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "health" and isinstance(message[1], CaptureHealth):
            self._health = message[1]
            return
        if kind == "reply" and len(message) == 4:
            _, call_id, ok, value = message
            future = self._calls.pop(call_id, None)
            if future is None or future.done():
                return
            if ok:
                future.set_result(value)
            else:
                name, text = value
                error = _ERRORS.get(name)
                future.set_exception(error(text) if error is not None else RuntimeError(f"{name}: {text}"))
            return
        _LOG.warning("camera process sent an unexpected %r message", kind)

    def _lose_calls(self) -> None:
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(CameraClosedError("the camera process ended before it answered"))

    def _lose_recording(self, reason: str) -> None:
        if self._recording_path is not None:
            self._recording_lost = RecordingSummary(
                path=self._recording_path,
                frame_count=0,
                fps=self._recording_fps,
                duration_s=0.0,
                wall_duration_s=0.0,
                error=reason,
            )
            self._recording_path = None

    def _take_lost_recording(self) -> RecordingSummary | None:
        lost, self._recording_lost = self._recording_lost, None
        return lost

    async def _call(self, operation: str, *, timeout_s: float | None = None, **kwargs: Any) -> Any:
        if self._closed:
            raise CameraClosedError("the camera capture is closed")
        if self._connected is None:
            raise RuntimeError("the camera capture is not started")
        limit = self._call_timeout if timeout_s is None else timeout_s
        async with asyncio.timeout(limit):
            await self._connected.wait()
            writer = self._writer
            if writer is None:
                raise CameraClosedError("the camera process is not running")
            call_id = next(self._ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._calls[call_id] = future
            try:
                writer.write(encode(("call", call_id, operation, kwargs)))
                return await future
            finally:
                self._calls.pop(call_id, None)

    # -- health ----------------------------------------------------------------------------------------------

    def status(self) -> CameraStatus:
        """The camera's health now, judged from the camera process's latest record."""
        health = self._health
        if self._task is None and not self._closed:
            reason = "camera capture not started"
        elif self._closed:
            reason = "camera capture closed"
        elif health is None:
            reason = self._down_reason
        else:
            return judge_health(
                health,
                self._clock(),
                freeze_after_s=self._freeze_after,
                no_frame_timeout_s=self._no_frame_timeout,
            )
        return CameraStatus(
            state=CameraState.NOT_OPENED,
            reason=reason,
            source=self.description,
            frames_read=0,
            frames_dropped=0,
            last_frame_age_s=None,
            fps=0.0,
            recording=False,
        )

    async def wait_for_state(
        self, state: CameraState, timeout_s: float, poll_s: float = 0.01
    ) -> CameraStatus:
        """Wait until :meth:`status` reports ``state``; raises TimeoutError with the last status otherwise."""
        return await wait_for_camera_state(self.status, state, timeout_s, poll_s)

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the latest frame read, pixels; None before the first."""
        health = self._health
        return None if health is None else health.frame_size

    # -- recording, snapshots, previews ----------------------------------------------------------------------

    async def start_recording(self, folder: Path, *, fps: float = 30.0, stem: str | None = None) -> Path:
        """Have the camera process record the frames it reads from now on into a video file in ``folder``
        (as :meth:`CameraCapture.start_recording`); returns its path."""
        path: Path = await self._call("start_recording", folder=str(folder), fps=float(fps), stem=stem)
        self._recording_path, self._recording_fps, self._recording_lost = path, float(fps), None
        return path

    async def stop_recording(self) -> RecordingSummary | None:
        """Finish the running recording and return its summary (as :meth:`CameraCapture.stop_recording`);
        when the camera process ended meanwhile, a summary whose ``error`` says so."""
        if self._health is None and self._recording_lost is not None:
            return self._take_lost_recording()
        try:
            summary: RecordingSummary | None = await self._call("stop_recording")
        except CameraClosedError:
            self._lose_recording("the camera process ended during the recording")
            return self._take_lost_recording()
        self._recording_path = None
        return summary if summary is not None else self._take_lost_recording()

    async def snapshot(self, folder: Path, *, stem: str | None = None) -> Path:
        """Save the latest frame as a PNG in ``folder`` and return its path."""
        path: Path = await self._call("snapshot", folder=str(folder), stem=stem)
        return path

    async def save_snapshots(
        self, folder: Path, *, stem: str | None = None, expected_mm: float | None = None
    ) -> SnapshotFiles:
        """Have the camera process save its newest frame as a treatment snapshot pair (as
        :meth:`CameraCapture.save_snapshots`); NoImageError unless the camera is ok."""
        status = self.status()
        if status.state is not CameraState.OK:
            raise NoImageError(f"no image to take: the camera is {status.state.value} ({status.reason})")
        files: SnapshotFiles = await self._call(
            "save_snapshots", folder=str(folder), stem=stem, expected_mm=expected_mm
        )
        return files

    async def record_focus_stack(
        self, folder: Path, *, count: int, interval_s: float, name: str | None = None
    ) -> FocusStack:
        """Have the camera process take and save a focus stack (as :meth:`CameraCapture.record_focus_stack`);
        NoImageError unless the camera is ok."""
        check_frame_count(count)
        status = self.status()
        if status.state is not CameraState.OK:
            raise NoImageError(f"no image to take: the camera is {status.state.value} ({status.reason})")
        limit = self._call_timeout + count * (float(interval_s) + FRAME_WAIT_S)
        stack: FocusStack = await self._call(
            "focus_stack",
            timeout_s=limit,
            folder=str(folder),
            count=count,
            interval_s=float(interval_s),
            name=name,
        )
        return stack

    async def preview(self, *, width: int, quality: int, expected_mm: float | None) -> PreviewImage | None:
        """The newest frame analysed (ring, focus) and made into a ``width``-pixel JPEG by the camera
        process; None before its first frame."""
        image: PreviewImage | None = await self._call(
            "preview", width=width, quality=quality, expected_mm=expected_mm
        )
        return image
