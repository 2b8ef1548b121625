"""The camera: sources, the capture thread, ring detection, focus score, recording and snapshots.

A camera is configured as a device index, a video file path or ``"sim"`` (:func:`make_source`). A
:class:`CameraProcess` reads a configured camera in a process of its own (capture, recording, ring analysis
and preview images), so none of that work competes with the controller's loop for the interpreter; it has the
methods of :class:`CameraCapture` the controller uses, plus :meth:`CameraProcess.preview`. A
:class:`CameraCapture` reads a camera in a thread of the calling process and hands the newest frame to the
asyncio loop through a queue of one; its :meth:`CameraCapture.status` reports ok, frozen, no_frames or
not_opened with a reason. A :class:`FrameAnalyser` runs the :class:`RingDetector` (ring centre and diameter
in px and mm, focus score as the variance of the Laplacian) on a worker thread; :class:`CameraMonitor` ties
the two together. Recording writes MPEG-4 ``.mkv`` files (:class:`VideoRecorder`); :func:`save_snapshot`
writes PNG files and :func:`save_snapshot_pair` a treatment snapshot (the raw frame and one with the ring
drawn, :mod:`devices.camera.snapshot`); ``record_focus_stack`` of either camera saves a focus stack (frames
with their focus scores and an index, :mod:`devices.camera.focus`); :func:`make_preview` and
:func:`encode_jpeg` make the small previews the console shows.

Typical use in the controller::

    capture = CameraCapture(make_source(config.camera))
    async with CameraMonitor(capture, expected_diameter_mm=lambda: commanded_ring_mm) as monitor:
        analysis = await monitor.next_analysis(timeout_s=1.0)
        health = monitor.status()
"""

from devices.camera._analysis import (
    FrameAnalyser,
    FrameAnalysis,
    RingDetection,
    RingDetector,
    RingDetectorConfig,
    focus_score,
)
from devices.camera._capture import (
    CameraCapture,
    CameraClosedError,
    CameraState,
    CameraStatus,
    CaptureHealth,
    judge_health,
)
from devices.camera._frames import CameraFrame, to_grey
from devices.camera._monitor import CameraMonitor
from devices.camera._preview import encode_jpeg, make_preview
from devices.camera._process import CameraProcess, describe_spec
from devices.camera._recording import (
    STREAM_REFUSED,
    VIDEO_SUFFIX,
    RecordingError,
    RecordingSummary,
    VideoRecorder,
    save_snapshot,
)
from devices.camera._sources import (
    DEFAULT_SIM_RING_MM,
    SIM_SOURCE,
    CameraOpenError,
    CameraSpec,
    FrameSource,
    OpenCVSource,
    make_source,
    parse_camera_spec,
    video_device_index,
)
from devices.camera._threads import DEFAULT_THREAD_NICE
from devices.camera._wire import PreviewImage
from devices.camera.focus import FOCUS_INDEX, FocusFrame, FocusStack, focus_stack_name
from devices.camera.snapshot import NoImageError, SnapshotFiles, save_snapshot_pair

#: The camera of a rig: read in the controller's process (a source object given by the simulated rig) or in
#: a process of its own (a configured camera).
Camera = CameraCapture | CameraProcess

__all__ = [
    "DEFAULT_SIM_RING_MM",
    "DEFAULT_THREAD_NICE",
    "FOCUS_INDEX",
    "SIM_SOURCE",
    "STREAM_REFUSED",
    "VIDEO_SUFFIX",
    "Camera",
    "CameraCapture",
    "CameraClosedError",
    "CameraFrame",
    "CameraMonitor",
    "CameraOpenError",
    "CameraProcess",
    "CameraSpec",
    "CameraState",
    "CameraStatus",
    "CaptureHealth",
    "FocusFrame",
    "FocusStack",
    "FrameAnalyser",
    "FrameAnalysis",
    "FrameSource",
    "NoImageError",
    "OpenCVSource",
    "PreviewImage",
    "RecordingError",
    "RecordingSummary",
    "RingDetection",
    "RingDetector",
    "RingDetectorConfig",
    "SnapshotFiles",
    "VideoRecorder",
    "describe_spec",
    "encode_jpeg",
    "focus_score",
    "focus_stack_name",
    "judge_health",
    "make_preview",
    "make_source",
    "parse_camera_spec",
    "save_snapshot",
    "save_snapshot_pair",
    "to_grey",
    "video_device_index",
]
