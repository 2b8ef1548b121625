"""Camera previews for the console: the newest frame, downscaled, with the detected ring, a few per second.

docs/architecture.md: previews are pushed to the console's sockets "downscaled, a few per second", and the
console never sees a stale image presented as live. :class:`PreviewProducer` runs one task on the controller's
loop. While at least one client is connected it, ``rate_hz`` times a second:

1. asks the camera for its health (:meth:`devices.camera.CameraCapture.status`);
2. when the camera is ok, has its newest frame analysed (ring detected, focus scored) and made into the small
   JPEG (a ``width``-pixel-wide grey image with the ring drawn on it): by the camera's own process
   (:meth:`devices.camera.CameraProcess.preview`), or, for a camera read in this process, on the analyser's
   worker thread and another worker thread (a lower scheduling priority than the loop);
3. publishes a :class:`control.messages.Preview` carrying the camera's state and, only when the camera is ok,
   the image, the ring's diameter (mm and px) and the focus score.

The ring is measured in pixels by the detector; its size in millimetres comes from the active camera scale
calibration (``ring_scale``, :func:`control.calibration.camera_ring_mm`) and is left out, with the reason in
``ring_scale_detail``, where none is active or the ring lies outside its calibrated span: the detector's own
``px_per_mm`` is only the nominal scale that turns the expected ring size into the pixel radii it searches
(with a camera scale active, the expected size is turned into pixels through it first).

A camera that is frozen, not delivering frames or not open publishes its state and the reason with no image:
the last frame is dropped, never shown again as if it were live. The camera's health is checked again after
the image is made, so a camera that froze meanwhile does not get its last image published. With no camera at
all the producer publishes ``camera="none"`` once a second.

One preview is made at a time: when making one takes longer than a period, the periods it overran are
skipped, never queued. Nothing is made while no client is connected. Any failure (of the analysis, of the
encoding, of the callables given) is logged and reported in the preview's ``detail``; nothing raises into the
loop. The cost on the controller's loop is one status read and one message per period; the measured CPU cost
of making one preview is in ``tests/bench/bench_preview.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from control.calibration import CalibrationError, camera_ring_mm
from control.messages import Preview
from devices.camera import (
    Camera,
    CameraFrame,
    CameraProcess,
    CameraState,
    CameraStatus,
    FrameAnalyser,
    FrameAnalysis,
    RingDetectorConfig,
    encode_jpeg,
    make_preview,
)

if TYPE_CHECKING:
    from control.calibration import ActiveCalibration

_LOG = logging.getLogger(__name__)

#: Camera state a preview reports when the rig has no camera.
NO_CAMERA = "none"
#: Seconds between previews when the rig has no camera.
NO_CAMERA_PERIOD_S = 1.0
#: Highest preview rate accepted, previews per second (the socket coalesces anyway).
MAX_RATE_HZ = 30.0
#: Preview width limits, pixels (:func:`devices.camera.make_preview` accepts 16..1920).
MIN_WIDTH_PX = 16
MAX_WIDTH_PX = 640


@dataclass(frozen=True, slots=True)
class _Rendered:
    """What the worker threads made of one frame."""

    sequence: int
    expected_mm: float | None
    jpeg: bytes
    width: int
    height: int
    analysis: FrameAnalysis


class PreviewProducer:
    """Publishes camera previews while clients are connected.

    Args:
        camera: the rig's camera (started and closed by its owner), or None when the rig has none. A camera in
            a process of its own analyses the frame and makes the image there; a camera read in this process
            has it done on worker threads here.
        publish: hands a preview to every connected client (``ControllerServer.publish_preview``); called on
            the loop.
        has_clients: True while at least one client is connected; nothing is made otherwise.
        rate_hz: previews per second while the camera is usable (0 < rate <= 30).
        width: preview width, pixels (16..640); the height follows the frame's aspect ratio.
        expected_ring_mm: the ring diameter the actuator is commanded to, mm, or None; narrows the search.
        analyser: runs the ring detection and focus score (a default one on its own worker thread when
            omitted); closed by :meth:`aclose`.
        jpeg_quality: JPEG quality of the preview image, 1..100.
        clock: monotonic clock, seconds; a preview's ``time_s`` comes from it.
        ring_scale: the active camera scale calibration, or None (the ring's size is then given in pixels
            only, marked uncalibrated); None instead of a callable: never a camera scale.

    Raises:
        ValueError: for a rate, width or quality out of range, or a ``publish``, ``has_clients`` or
            ``expected_ring_mm`` that is not callable.
    """

    def __init__(
        self,
        camera: Camera | None,
        publish: Callable[[Preview], None],
        has_clients: Callable[[], bool],
        *,
        rate_hz: float = 4.0,
        width: int = 160,
        expected_ring_mm: Callable[[], float | None],
        analyser: FrameAnalyser | None = None,
        jpeg_quality: int = 70,
        clock: Callable[[], float] = time.monotonic,
        ring_scale: Callable[[], ActiveCalibration | None] | None = None,
    ) -> None:
        if (
            isinstance(rate_hz, bool)
            or not isinstance(rate_hz, int | float)
            or not math.isfinite(rate_hz)
            or not 0.0 < rate_hz <= MAX_RATE_HZ
        ):
            raise ValueError(
                f"rate_hz must be a number of previews per second in (0, {MAX_RATE_HZ}], got {rate_hz!r}"
            )
        if isinstance(width, bool) or not isinstance(width, int) or not MIN_WIDTH_PX <= width <= MAX_WIDTH_PX:
            raise ValueError(f"width must be an integer {MIN_WIDTH_PX}..{MAX_WIDTH_PX} px, got {width!r}")
        if (
            isinstance(jpeg_quality, bool)
            or not isinstance(jpeg_quality, int)
            or not 1 <= jpeg_quality <= 100
        ):
            raise ValueError(f"jpeg_quality must be an integer 1..100, got {jpeg_quality!r}")
        for name, value in (
            ("publish", publish),
            ("has_clients", has_clients),
            ("expected_ring_mm", expected_ring_mm),
        ):
            if not callable(value):
                raise ValueError(f"{name} must be callable, got {value!r}")
        self._camera = camera
        self._publish = publish
        self._has_clients = has_clients
        self._period_s = 1.0 / float(rate_hz)
        self._width = width
        self._expected = expected_ring_mm
        self._analyser = analyser
        self._quality = jpeg_quality
        self._clock = clock
        self._ring_scale = ring_scale
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._seq = 0
        self._last_none_at: float | None = None
        self._had_clients = False
        self._cached: _Rendered | None = None
        self._last_failure = ""
        self.skipped_periods = 0
        """Periods skipped because making a preview took longer than a period."""

    # -- life cycle ------------------------------------------------------------------------------------------

    @property
    def rate_hz(self) -> float:
        """Previews per second while the camera is usable."""
        return 1.0 / self._period_s

    @property
    def published(self) -> int:
        """Previews handed to ``publish`` since the start."""
        return self._seq

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`aclose`."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the producing task on the running loop (and the analyser's thread, when there is a camera).

        Raises RuntimeError when already started or closed.
        """
        if self._closed:
            raise RuntimeError("the preview producer is closed")
        if self._task is not None:
            raise RuntimeError("the preview producer is already started")
        in_process = self._camera is not None and not isinstance(self._camera, CameraProcess)
        if in_process and self._analyser is None:
            self._analyser = FrameAnalyser(thread_name="camera-preview")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="camera-preview")

    async def aclose(self) -> None:
        """Stop the task and join the analyser's thread; never raises (a failure is logged). Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        analyser, self._analyser = self._analyser, None
        if analyser is not None:
            try:
                await analyser.aclose()
            except Exception:
                _LOG.exception("camera preview: the analyser did not close cleanly")

    async def __aenter__(self) -> PreviewProducer:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the task --------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self._period_s
        due = loop.time()
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never into the loop: log once per distinct failure
                self._note_failure(f"preview failed: {type(exc).__name__}: {exc}")
            due += period
            now = loop.time()
            if now > due:
                missed = math.ceil((now - due) / period)
                self.skipped_periods += missed
                due += missed * period
            await asyncio.sleep(due - now)

    async def _tick(self) -> None:
        clients = self._clients()
        appeared = clients and not self._had_clients
        self._had_clients = clients
        if not clients:
            self._cached = None
            return
        camera = self._camera
        if camera is None:
            now = self._clock()
            if (
                appeared
                or self._last_none_at is None
                or now - self._last_none_at >= NO_CAMERA_PERIOD_S - 1e-6
            ):
                self._last_none_at = now
                self._emit(NO_CAMERA, "no camera is configured on this rig")
            return
        status = camera.status()
        if status.state is not CameraState.OK:
            self._cached = None
            self._emit(status.state.value, status.reason)
            return
        scale = self._scale()
        expected = self._search_mm(self._expected_mm(), scale)
        try:
            if isinstance(camera, CameraProcess):
                made = await self._render_elsewhere(camera, expected)
            else:
                frame = camera.latest_frame
                made = None if frame is None else await self._render(frame, expected)
            if made is None:
                self._emit(CameraState.NO_FRAMES.value, "waiting for the first frame from the camera")
                return
            rendered = made
        except ValueError as exc:
            self._note_failure(f"preview image failed: {exc}")
            self._emit(status.state.value, f"preview image failed: {exc}")
            return
        if self._closed:
            return
        # The camera may have frozen or stopped while the image was being made: then its image is stale.
        after = camera.status()
        if after.state is not CameraState.OK:
            self._cached = None
            self._emit(after.state.value, after.reason)
            return
        self._emit_image(after, rendered, scale)

    async def _render(self, frame: CameraFrame, expected: float | None) -> _Rendered:
        cached = self._cached
        if cached is not None and cached.sequence == frame.sequence and cached.expected_mm == expected:
            return cached  # a camera slower than the preview rate: the same frame, already made
        analyser = self._analyser
        if analyser is None:
            raise RuntimeError("the preview producer is not started")
        analysis = await analyser.analyse(frame, expected_diameter_mm=expected)
        jpeg, width, height = await asyncio.to_thread(self._make_image, frame, analysis)
        rendered = _Rendered(frame.sequence, expected, jpeg, width, height, analysis)
        self._cached = rendered
        return rendered

    async def _render_elsewhere(self, camera: CameraProcess, expected: float | None) -> _Rendered | None:
        """Have the camera's own process analyse its newest frame and make the image."""
        image = await camera.preview(width=self._width, quality=self._quality, expected_mm=expected)
        if image is None:
            return None
        return _Rendered(image.sequence, expected, image.jpeg, image.width, image.height, image.analysis)

    def _make_image(self, frame: CameraFrame, analysis: FrameAnalysis) -> tuple[bytes, int, int]:
        """Downscale, draw the ring and encode (worker thread)."""
        small = make_preview(frame.grey, analysis.ring, width=min(self._width, frame.size[0]))
        height, width = int(small.shape[0]), int(small.shape[1])
        return encode_jpeg(small, quality=self._quality), width, height

    # -- helpers ---------------------------------------------------------------------------------------------

    def _clients(self) -> bool:
        try:
            return bool(self._has_clients())
        except Exception as exc:
            self._note_failure(f"could not tell whether clients are connected: {type(exc).__name__}: {exc}")
            return False

    def _expected_mm(self) -> float | None:
        try:
            value = self._expected()
        except Exception as exc:
            self._note_failure(f"the commanded ring size is unavailable: {type(exc).__name__}: {exc}")
            return None
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            self._note_failure(f"ignoring an unusable commanded ring size {value!r} mm")
            return None
        return float(value)

    def _scale(self) -> ActiveCalibration | None:
        if self._ring_scale is None:
            return None
        try:
            return self._ring_scale()
        except Exception as exc:
            self._note_failure(f"the camera scale is unavailable: {type(exc).__name__}: {exc}")
            return None

    def _detector_px_per_mm(self) -> float:
        analyser = self._analyser
        if analyser is not None:
            return analyser.detector.config.px_per_mm
        return RingDetectorConfig().px_per_mm  # the camera's own process runs the default detector

    def _search_mm(self, expected: float | None, scale: ActiveCalibration | None) -> float | None:
        """The expected ring size in the detector's nominal millimetres: through the camera scale (to pixels,
        then the detector's nominal px/mm) where one is active; None (search everywhere) outside its span."""
        if expected is None or scale is None:
            return expected
        try:
            px = scale.curve.inverse(expected)
        except CalibrationError:
            return None
        return px / self._detector_px_per_mm() if px > 0 else None

    def _emit(self, camera: str, detail: str) -> None:
        self._send(Preview(seq=self._next_seq(), time_s=self._clock(), camera=camera, detail=detail))

    def _emit_image(self, status: CameraStatus, rendered: _Rendered, scale: ActiveCalibration | None) -> None:
        self._last_failure = ""
        ring = rendered.analysis.ring
        focus = rendered.analysis.focus_score
        ring_mm: float | None = None
        scale_detail = ""
        if ring is not None:
            ring_mm, scale_detail = camera_ring_mm(scale, ring.diameter_px)
        scale_id = scale.calibration_id if scale is not None and ring_mm is not None else None
        self._send(
            Preview(
                seq=self._next_seq(),
                time_s=self._clock(),
                camera=status.state.value,
                detail="",
                width=rendered.width,
                height=rendered.height,
                jpeg_b64=base64.b64encode(rendered.jpeg).decode("ascii"),
                ring_diameter_mm=ring_mm,
                ring_diameter_px=ring.diameter_px if ring is not None else None,
                focus=focus if math.isfinite(focus) else None,
                ring_scale_id=scale_id,
                ring_scale_detail=scale_detail,
            )
        )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, preview: Preview) -> None:
        try:
            self._publish(preview)
        except Exception as exc:
            self._note_failure(f"publishing a preview failed: {type(exc).__name__}: {exc}")

    def _note_failure(self, message: str) -> None:
        if message != self._last_failure:
            _LOG.warning("camera preview: %s", message)
        self._last_failure = message
