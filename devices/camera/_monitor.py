"""Capture and analysis together: the latest frame is analysed off the loop and the latest result kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from devices.camera._analysis import FrameAnalyser, FrameAnalysis
from devices.camera._capture import CameraCapture, CameraClosedError, CameraStatus
from devices.camera._frames import CameraFrame


class CameraMonitor:
    """Owns a :class:`CameraCapture` and a :class:`FrameAnalyser` and runs one task on the loop that takes the
    newest frame, has it analysed on the analyser's thread and keeps the result.

    Frames arriving while an analysis runs replace each other in the capture's queue of one, so the analysis
    always works on the newest frame and never builds a backlog.

    Args:
        capture: the capture to read from (started by :meth:`start`, closed by :meth:`aclose`).
        analyser: the analyser (closed by :meth:`aclose`); a default one when omitted.
        expected_diameter_mm: returns the ring size the actuator is commanded to, mm, or None for the default
            search range; called on the loop before each analysis.
    """

    def __init__(
        self,
        capture: CameraCapture,
        analyser: FrameAnalyser | None = None,
        *,
        expected_diameter_mm: Callable[[], float | None] | None = None,
    ) -> None:
        self.capture = capture
        self.analyser = analyser if analyser is not None else FrameAnalyser()
        self._expected = expected_diameter_mm
        self._task: asyncio.Task[None] | None = None
        self._latest: FrameAnalysis | None = None
        self._latest_frame: CameraFrame | None = None
        self._updated = asyncio.Event()
        self._analysed = 0
        self._last_error = ""
        self._closed = False

    @property
    def latest(self) -> FrameAnalysis | None:
        """The newest analysis, or None before the first."""
        return self._latest

    @property
    def latest_frame(self) -> CameraFrame | None:
        """The frame the newest analysis was made on."""
        return self._latest_frame

    @property
    def frames_analysed(self) -> int:
        """Number of frames analysed since the start."""
        return self._analysed

    @property
    def last_error(self) -> str:
        """Why the last frame could not be analysed (empty when it could)."""
        return self._last_error

    def status(self) -> CameraStatus:
        """The camera's health (see :meth:`CameraCapture.status`)."""
        return self.capture.status()

    async def start(self) -> None:
        """Start the capture thread and the analysis task."""
        if self._closed:
            raise CameraClosedError("the camera monitor is closed")
        if self._task is not None:
            raise RuntimeError("the camera monitor is already started")
        self.capture.start()
        self._task = asyncio.create_task(self._run(), name="camera-monitor")

    async def __aenter__(self) -> CameraMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def next_analysis(self, timeout_s: float | None = None) -> FrameAnalysis:
        """Wait for an analysis newer than the current one; TimeoutError after ``timeout_s`` seconds,
        CameraClosedError once the monitor is closed."""
        if self._closed:
            raise CameraClosedError("the camera monitor is closed")
        event = self._updated
        async with asyncio.timeout(timeout_s):
            await event.wait()
        result = self._latest
        if self._closed or result is None:
            raise CameraClosedError("the camera monitor is closed")
        return result

    async def aclose(self) -> None:
        """Stop the task, the analysis thread and the capture thread (all joined)."""
        self._closed = True
        task, self._task = self._task, None
        event, self._updated = self._updated, asyncio.Event()
        event.set()  # waiters of next_analysis learn of the close
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.capture.aclose()
        finally:
            await self.analyser.aclose()

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.capture.next_frame()
            except CameraClosedError:
                return
            expected = self._expected() if self._expected is not None else None
            try:
                result = await self.analyser.analyse(frame, expected_diameter_mm=expected)
            except ValueError as exc:
                self._last_error = str(exc)
                continue
            self._last_error = ""
            self._latest = result
            self._latest_frame = frame
            self._analysed += 1
            event, self._updated = self._updated, asyncio.Event()
            event.set()
