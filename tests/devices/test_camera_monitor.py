"""Capture and analysis together: the latest frame is analysed off the loop and tracks the ring."""

from __future__ import annotations

import asyncio
import threading

import pytest

from devices.camera import (
    CameraCapture,
    CameraClosedError,
    CameraMonitor,
    CameraState,
    FrameAnalyser,
    RingDetector,
)
from devices.sim.camera import SimCameraSource


class _Ring:
    def __init__(self, mm: float) -> None:
        self.mm = mm

    def ring_mm(self) -> float:
        return self.mm


async def test_monitor_tracks_the_ring_size() -> None:
    model = _Ring(2.0)
    source = SimCameraSource(ring_mm=model.ring_mm, frame_rate_hz=60.0, seed=31)
    monitor = CameraMonitor(CameraCapture(source), expected_diameter_mm=lambda: model.mm)
    async with monitor:
        first = await monitor.next_analysis(timeout_s=3.0)
        assert first.ring is not None
        assert first.ring.diameter_mm == pytest.approx(2.0, rel=0.02)
        assert monitor.latest is first
        assert monitor.latest_frame is not None and monitor.latest_frame.sequence == first.sequence
        model.mm = 4.5
        for _ in range(60):
            later = await monitor.next_analysis(timeout_s=3.0)
            if later.ring is not None and later.ring.diameter_mm > 4.0:
                break
        assert later.ring is not None
        assert later.ring.diameter_mm == pytest.approx(4.5, rel=0.02)
        assert later.sequence > first.sequence
        assert monitor.status().state is CameraState.OK
        assert monitor.frames_analysed >= 2
        assert monitor.last_error == ""
        names = {t.name for t in threading.enumerate()}
        assert any(n.startswith("camera-analysis") for n in names)
        assert "camera-capture" in names
    names = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not any(n.startswith(("camera-analysis", "camera-capture")) for n in names)


async def test_analysis_runs_off_the_loop_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class _Recording(RingDetector):
        def analyse(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def,override]
            seen.append(threading.get_ident())
            return super().analyse(*args, **kwargs)  # type: ignore[arg-type]

    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=60.0, seed=32)
    monitor = CameraMonitor(CameraCapture(source), FrameAnalyser(_Recording()))
    async with monitor:
        analysis = await monitor.next_analysis(timeout_s=3.0)
    assert analysis.ring is not None
    assert seen and loop_thread not in seen


async def test_closed_analyser_refuses_work() -> None:
    analyser = FrameAnalyser()
    await analyser.aclose()
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=33)
    capture = CameraCapture(source)
    async with capture:
        frame = await capture.next_frame(timeout_s=2.0)
    with pytest.raises(RuntimeError, match="closed"):
        await analyser.analyse(frame)


async def test_monitor_with_a_missing_camera_reports_it() -> None:
    monitor = CameraMonitor(CameraCapture(SimCameraSource(ring_mm=lambda: 3.0, seed=34)))
    monitor.capture.source.unplug()  # type: ignore[attr-defined]
    async with monitor:
        status = await monitor.capture.wait_for_state(CameraState.NOT_OPENED, 2.0)
        assert "unplugged" in status.reason
        with pytest.raises(TimeoutError):
            await monitor.next_analysis(timeout_s=0.1)
    assert monitor.latest is None


async def test_a_waiter_learns_of_the_close() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, seed=35)
    source.unplug()
    monitor = CameraMonitor(CameraCapture(source))
    await monitor.start()
    waiter = asyncio.create_task(monitor.next_analysis(timeout_s=5.0))
    await asyncio.sleep(0)
    await monitor.aclose()
    with pytest.raises(CameraClosedError):
        await waiter
    with pytest.raises(CameraClosedError):
        await monitor.start()
