"""Camera preview benchmark: what one preview costs the controller, in CPU time.

Run ``python tests/bench/bench_preview.py`` (``--help`` for options). A ``PreviewProducer`` runs on an
asyncio loop over a camera that hands it a new pre-rendered 1280 x 720 simulated frame (rings of 2 to 5 mm,
noise, mild blur) for every preview, so the camera's own capture thread costs nothing here and only the
preview is measured; the first previews (``--warm-up``) are not counted. Each preview is encoded to its JSON
line, as the socket server does once per preview. OpenCV is limited to one thread. It reports, per preview:

- **process CPU** (goal < 15 ms, so 4 previews/s take < 6 % of one core): ``time.process_time`` between the
  first and the last measured preview, divided by their number: the loop thread, the analyser's worker
  thread and the encoding thread together.
- **loop-thread CPU** (goal < 2.5 ms, so 4 previews/s take < 1 % of the loop's core): ``time.thread_time``
  of the loop thread over the same span: what the safety loop itself gives up per preview, including the
  waking, the thread hand-offs and the system calls around them.
- the share of one core that the default rate (4 previews/s) costs, and the preview line's size in bytes.

``--camera process`` measures the arrangement the controller uses for a configured camera instead: the
simulated camera in its own process (:class:`devices.camera.CameraProcess`), which finds the ring and makes
the JPEG there; the figures are then what this process (the controller) still spends per preview, the
camera process's own work excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from control.messages import Preview, encode  # noqa: E402
from control.preview import PreviewProducer  # noqa: E402
from devices.camera import CameraFrame, CameraProcess, CameraState, CameraStatus, to_grey  # noqa: E402
from devices.sim.camera import SimCameraSource  # noqa: E402

PROCESS_GOAL_MS = 15.0
LOOP_GOAL_MS = 2.5
DEFAULT_RATE_HZ = 4.0


class _FramesCamera:
    """Stands in for a capture whose camera is ok: a new frame (the next pre-rendered one) at every look."""

    def __init__(self, images: list[npt.NDArray[np.uint8]]) -> None:
        self._frames = [
            CameraFrame(sequence=0, timestamp=0.0, image=image, grey=to_grey(image)) for image in images
        ]
        self._count = 0

    def status(self) -> CameraStatus:
        return CameraStatus(CameraState.OK, "", "pre-rendered frames", self._count, 0, 0.0, 30.0, False)

    @property
    def latest_frame(self) -> CameraFrame:
        self._count += 1
        base = self._frames[self._count % len(self._frames)]
        return CameraFrame(self._count, time.monotonic(), base.image, base.grey)


def _frames() -> list[npt.NDArray[np.uint8]]:
    images = []
    for i, size in enumerate((2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)):
        source = SimCameraSource(
            ring_mm=lambda size=size: size,
            frame_rate_hz=None,
            blur_sigma_px=1.5,
            noise_sigma=5.0,
            centre_offset_px=(17.0 * i - 40.0, 9.0 * i - 25.0),
            seed=200 + i,
        )
        ok, image = source.read()
        assert ok and image is not None
        images.append(image)
    return images


async def _run(
    count: int, rate_hz: float, width: int, warm_up: int, in_process: bool = True
) -> dict[str, float]:
    camera: _FramesCamera | CameraProcess
    if in_process:
        camera = _FramesCamera(_frames())
    else:
        camera = CameraProcess("sim")
        camera.start()
        await camera.wait_for_state(CameraState.OK, 60.0)
    lines: list[int] = []
    rings: list[bool] = []
    marks: list[tuple[float, float, float]] = []
    done = asyncio.Event()

    def publish(preview: Preview) -> None:
        lines.append(len(encode(preview)))
        rings.append(preview.ring_diameter_px is not None)
        if len(lines) in (warm_up, warm_up + count):
            # Called on the loop thread: its thread_time is the loop's.
            marks.append((time.process_time(), time.thread_time(), time.perf_counter()))
        if len(lines) >= warm_up + count:
            done.set()

    producer = PreviewProducer(
        camera,  # type: ignore[arg-type]
        publish,
        lambda: True,
        rate_hz=rate_hz,
        width=width,
        expected_ring_mm=lambda: None,
    )
    producer.start()
    try:
        await asyncio.wait_for(done.wait(), (warm_up + count) / rate_hz * 4 + 10.0)
    finally:
        await producer.aclose()
        if isinstance(camera, CameraProcess):
            await camera.aclose()
    (process_0, loop_0, wall_0), (process_1, loop_1, wall_1) = marks
    per_preview_ms = (process_1 - process_0) / count * 1e3
    return {
        "previews": float(count),
        "rate_hz": count / (wall_1 - wall_0),
        "process_cpu_ms_per_preview": per_preview_ms,
        "loop_cpu_ms_per_preview": (loop_1 - loop_0) / count * 1e3,
        "core_share_at_4_hz_pct": per_preview_ms * DEFAULT_RATE_HZ / 10.0,
        "line_bytes": float(np.mean(lines)),
        "rings_found_pct": 100.0 * sum(rings) / len(rings),
        "skipped_periods": float(producer.skipped_periods),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100, help="previews measured")
    parser.add_argument("--warm-up", type=int, default=10, help="previews made before measuring")
    parser.add_argument("--rate", type=float, default=20.0, help="previews per second during the run")
    parser.add_argument("--width", type=int, default=160, help="preview width, pixels")
    parser.add_argument(
        "--camera",
        choices=("in-process", "process"),
        default="in-process",
        help="in-process: pre-rendered frames analysed on this process's threads; process: the simulated "
        "camera in its own process (devices.camera.CameraProcess), which analyses and encodes there",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.count < 5:
        parser.error("--count must be >= 5")
    if not 0.0 < args.rate <= 30.0:
        parser.error("--rate must be within (0, 30]")
    cv2.setNumThreads(1)
    result = asyncio.run(
        _run(args.count, args.rate, args.width, max(1, args.warm_up), args.camera == "in-process")
    )
    result["process_goal_ms"] = PROCESS_GOAL_MS
    result["loop_goal_ms"] = LOOP_GOAL_MS
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:32} {value:10.3f}")
    ok = (
        result["process_cpu_ms_per_preview"] < PROCESS_GOAL_MS
        and result["loop_cpu_ms_per_preview"] < LOOP_GOAL_MS
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
