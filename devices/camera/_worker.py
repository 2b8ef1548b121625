"""The camera process: capture, recording, ring analysis and preview images, away from the controller.

Started by :class:`devices.camera.CameraProcess` as ``python -m devices.camera._worker --fd N --camera SPEC``
with one end of a Unix socket pair as file descriptor N. It runs the same :class:`CameraCapture` the
controller would otherwise run in a thread, with its own interpreter, so reading, converting, comparing and
encoding frames never holds the controller's interpreter lock. See :mod:`devices.camera._wire` for the
messages.

Before it opens the camera it gives up any priority it inherited: the normal (SCHED_OTHER) policy even when
started by a real-time process, nice ``--nice`` (default 10), and, when its parent was pinned to some of the
machine's CPUs, the other CPUs, so the controller's CPU is left to the controller. It exits when the
controller asks it to (``close``, which finishes a running recording first) or closes its end of the socket
(the controller ended, whatever the way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

from devices.camera._analysis import FrameAnalyser
from devices.camera._capture import CameraCapture
from devices.camera._preview import encode_jpeg, make_preview
from devices.camera._recording import RecordingSummary
from devices.camera._sources import make_source
from devices.camera._wire import DEFAULT_HEALTH_PERIOD_S, DEFAULT_PROCESS_NICE, PreviewImage, encode, receive


def lower_priority(nice: int) -> list[str]:
    """Normal scheduling, nice ``nice`` at least, and the CPUs the parent was not pinned to; what was done."""
    done: list[str] = []
    if hasattr(os, "sched_getscheduler"):
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(0) != os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                done.append("real-time policy dropped")
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            done.append(f"nice {nice}")
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            mine = os.sched_getaffinity(0)
            others = set(range(os.cpu_count() or 1)) - mine
            if others:
                os.sched_setaffinity(0, others)
                done.append(f"CPUs {sorted(others)}")
    return done


#: Longest wait for the first frame when a recording is asked for before it, s.
FIRST_FRAME_WAIT_S = 5.0


class _Server:
    """Answers the controller's calls for one camera capture."""

    def __init__(self, capture: CameraCapture, writer: asyncio.StreamWriter) -> None:
        self.capture = capture
        self.writer = writer
        self.analyser = FrameAnalyser(thread_name="camera-analysis", thread_nice=0)
        self.closing = asyncio.Event()
        self.close_summary: RecordingSummary | None = None
        self._cached: tuple[tuple[int, float | None, int, int], PreviewImage] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def push_health(self, period_s: float) -> None:
        while True:
            self.send(("health", self.capture.health()))
            await self.writer.drain()
            await asyncio.sleep(period_s)

    def dispatch(self, message: tuple[Any, ...]) -> None:
        if len(message) != 4 or message[0] != "call":
            raise ValueError(f"unexpected message {message[:1]!r}")
        _, call_id, operation, kwargs = message
        task = asyncio.get_running_loop().create_task(self._answer(call_id, operation, kwargs))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _answer(self, call_id: int, operation: str, kwargs: dict[str, Any]) -> None:
        try:
            value = await self._call(operation, kwargs)
        except Exception as exc:
            self.send(("reply", call_id, False, (type(exc).__name__, str(exc))))
        else:
            self.send(("reply", call_id, True, value))

    async def _call(self, operation: str, kwargs: dict[str, Any]) -> Any:
        capture = self.capture
        if operation == "start_recording":
            if capture.frame_size is None:  # just started: the video's size comes from the first frame
                with contextlib.suppress(TimeoutError):
                    await capture.wait_for_frames(1, FIRST_FRAME_WAIT_S)
            return await capture.start_recording(
                Path(kwargs["folder"]), fps=float(kwargs["fps"]), stem=kwargs["stem"]
            )
        if operation == "stop_recording":
            return await capture.stop_recording()
        if operation == "snapshot":
            return await capture.snapshot(Path(kwargs["folder"]), stem=kwargs["stem"])
        if operation == "save_snapshots":
            return await capture.save_snapshots(
                Path(kwargs["folder"]), stem=kwargs["stem"], expected_mm=kwargs["expected_mm"]
            )
        if operation == "focus_stack":
            return await capture.record_focus_stack(
                Path(kwargs["folder"]),
                count=int(kwargs["count"]),
                interval_s=float(kwargs["interval_s"]),
                name=kwargs["name"],
            )
        if operation == "preview":
            return await self.preview(int(kwargs["width"]), int(kwargs["quality"]), kwargs["expected_mm"])
        if operation == "close":
            self.close_summary = await capture.aclose()
            self.closing.set()
            return self.close_summary
        raise ValueError(f"unknown camera operation {operation!r}")

    async def preview(self, width: int, quality: int, expected_mm: float | None) -> PreviewImage | None:
        """The newest frame analysed and made into a small JPEG; None before the first frame."""
        frame = self.capture.latest_frame
        if frame is None:
            return None
        key = (frame.sequence, expected_mm, width, quality)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]  # a camera slower than the preview rate: the same frame, already made
        analysis = await self.analyser.analyse(frame, expected_diameter_mm=expected_mm)

        def make() -> tuple[bytes, int, int]:
            small = make_preview(frame.grey, analysis.ring, width=min(width, frame.size[0]))
            return encode_jpeg(small, quality=quality), int(small.shape[1]), int(small.shape[0])

        jpeg, w, h = await asyncio.to_thread(make)
        image = PreviewImage(frame.sequence, expected_mm, jpeg, w, h, analysis)
        self._cached = (key, image)
        return image

    async def aclose(self) -> None:
        for task in list(self._calls):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.capture.aclose()
        with contextlib.suppress(Exception):
            await self.analyser.aclose()


async def serve(sock: socket.socket, spec: str, health_period_s: float) -> int:
    """Run the capture and answer the controller until it asks to close or goes away."""
    reader, writer = await asyncio.open_connection(sock=sock)
    capture = CameraCapture(make_source(spec), thread_name="camera-capture", thread_nice=0)
    capture.start()
    server = _Server(capture, writer)
    pusher = asyncio.create_task(server.push_health(health_period_s))
    try:
        while not server.closing.is_set():
            receiving = asyncio.ensure_future(receive(reader))
            closing = asyncio.ensure_future(server.closing.wait())
            await asyncio.wait({receiving, closing}, return_when=asyncio.FIRST_COMPLETED)
            closing.cancel()
            if not receiving.done():
                receiving.cancel()
                break
            message = receiving.result()
            if message is None:  # the controller is gone
                break
            server.dispatch(message)
        # Let the reply to "close" reach the controller before the socket closes.
        for _ in range(100):
            if not server._calls:
                break
            await asyncio.sleep(0.01)
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pusher
        await server.aclose()
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The controller's camera process")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the controller")
    parser.add_argument("--camera", required=True, help="device index, video file or 'sim'")
    parser.add_argument("--nice", type=int, default=DEFAULT_PROCESS_NICE)
    parser.add_argument("--health-period", type=float, default=DEFAULT_HEALTH_PERIOD_S)
    args = parser.parse_args(argv)
    lower_priority(args.nice)
    sock = socket.socket(fileno=args.fd)
    return asyncio.run(serve(sock, args.camera, args.health_period))


if __name__ == "__main__":
    sys.exit(main())
