"""Camera previews: rate, image, ring, camera states, no clients, failures, one at a time, the hook."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from account_fixtures import CHEAP
from controller_fixtures import prepare_data_dir

from control import messages as msg
from control.calibration import CAMERA, ActiveCalibration
from control.calibration_records import check_points
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.preview import NO_CAMERA, PreviewProducer
from devices.camera import (
    CameraCapture,
    CameraProcess,
    CameraState,
    FrameAnalyser,
    FrameAnalysis,
    RingDetector,
)
from devices.rig import RigConfig
from devices.sim.camera import SimCameraSource
from devices.sim.rig import SimRig

RING_MM = 3.0


def camera_scale(px_per_mm: float, calibration_id: int = 7) -> ActiveCalibration:
    """A camera scale calibration of ``px_per_mm`` over targets of 1 to 5 mm."""
    checked = check_points(CAMERA, [(px_per_mm * mm, mm) for mm in (1.0, 2.0, 3.0, 4.0, 5.0)])
    return ActiveCalibration(calibration_id, datetime(2026, 12, 1, 9, 0), "CAM-1", checked.curve)


#: The simulated camera's own scale.
SIM_SCALE = camera_scale(100.0)


class Published:
    """Collects what the producer publishes; tests wait on it with a bounded timeout."""

    def __init__(self) -> None:
        self.previews: list[msg.Preview] = []
        self.arrived_at: list[float] = []
        self._changed = asyncio.Event()

    def __call__(self, preview: msg.Preview) -> None:
        self.previews.append(preview)
        self.arrived_at.append(time.monotonic())
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[msg.Preview]], bool], what: str, timeout_s: float = 5.0
    ) -> list[msg.Preview]:
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self.previews):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            last = self.previews[-1] if self.previews else None
            raise AssertionError(f"no {what} within {timeout_s} s; the last preview: {last!r}") from None
        return self.previews

    async def wait_count(self, count: int, timeout_s: float = 5.0) -> list[msg.Preview]:
        return await self.wait_for(lambda p: len(p) >= count, f"{count} previews", timeout_s)


class Clients:
    """A ``has_clients`` callable that can be switched and counts how often the producer asked."""

    def __init__(self, connected: bool = True, failure: Exception | None = None) -> None:
        self.connected = connected
        self.failure = failure
        self.calls = 0
        self._asked = asyncio.Event()

    def __call__(self) -> bool:
        self.calls += 1
        self._asked.set()
        if self.failure is not None:
            raise self.failure
        return self.connected

    async def wait_calls(self, count: int, timeout_s: float = 5.0) -> None:
        """Wait until the producer has asked ``count`` more times (one ask per period)."""
        target = self.calls + count
        async with asyncio.timeout(timeout_s):
            while self.calls < target:
                self._asked.clear()
                await self._asked.wait()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (a reaped child does not)."""
    return Path(f"/proc/{pid}").exists()


def _decode(preview: msg.Preview) -> npt.NDArray[np.uint8]:
    assert preview.jpeg_b64 is not None
    data = np.frombuffer(base64.b64decode(preview.jpeg_b64), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert image is not None, "the preview is not a decodable JPEG"
    return np.asarray(image, dtype=np.uint8)


@pytest.fixture
async def sim_camera() -> AsyncIterator[tuple[CameraCapture, SimCameraSource]]:
    source = SimCameraSource(ring_mm=lambda: RING_MM, width=640, height=480, frame_rate_hz=60.0, seed=5)
    capture = CameraCapture(
        source, freeze_after_s=0.2, no_frame_timeout_s=0.4, thread_name="camera-capture-preview-test"
    )
    capture.start()
    try:
        await capture.wait_for_state(CameraState.OK, 5.0)
        yield capture, source
    finally:
        await capture.aclose()


def _producer(
    camera: CameraCapture | None,
    published: Published,
    clients: Callable[[], bool],
    **kwargs: Any,
) -> PreviewProducer:
    kwargs.setdefault("expected_ring_mm", lambda: None)
    kwargs.setdefault("ring_scale", lambda: SIM_SCALE)
    return PreviewProducer(camera, published, clients, **kwargs)


async def test_previews_arrive_at_the_rate_as_jpeg_with_the_ring(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, _ = sim_camera
    published = Published()
    async with _producer(capture, published, Clients(), rate_hz=10.0, width=160):
        previews = await published.wait_count(8)
    span = published.arrived_at[7] - published.arrived_at[1]
    rate = 6 / span
    # Paced: never faster than asked. How close to the asked rate a loaded machine comes is a figure for the
    # benchmark; here only a stalled producer (well under half the rate) fails.
    assert 3.0 <= rate <= 11.0, f"previews at {rate:.1f}/s, asked for 10/s"
    seqs = [p.seq for p in previews]
    assert seqs == sorted(set(seqs))
    for preview in previews[:8]:
        assert preview.camera == "ok" and preview.detail == ""
        assert (preview.width, preview.height) == (160, 120)
        image = _decode(preview)
        assert image.shape == (120, 160, 3)
        assert preview.ring_diameter_mm is not None
        assert preview.ring_diameter_mm == pytest.approx(RING_MM, abs=0.05)
        assert preview.ring_diameter_px == pytest.approx(RING_MM * 100.0, abs=5.0)
        assert preview.focus is not None and preview.focus > 0.0
    # The detected ring is drawn in green on the grey frame.
    image = _decode(previews[-1]).astype(int)
    green = (image[:, :, 1] - np.maximum(image[:, :, 0], image[:, :, 2])) > 60
    assert green.sum() > 50


async def test_the_commanded_ring_narrows_the_search(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, _ = sim_camera
    commanded: list[float | None] = [RING_MM]
    published = Published()
    async with _producer(capture, published, Clients(), rate_hz=20.0, expected_ring_mm=lambda: commanded[0]):
        first = (await published.wait_count(1))[0]
        assert first.ring_diameter_mm == pytest.approx(RING_MM, abs=0.05)
        # A commanded 4.5 mm ring is searched for within 3.4..5.6 mm: the 3 mm ring on the camera is not it.
        commanded[0] = 4.5
        count = len(published.previews)
        await published.wait_for(
            lambda p: len(p) > count and p[-1].jpeg_b64 is not None and p[-1].ring_diameter_mm is None,
            "a preview without a ring",
        )
    last = published.previews[-1]
    assert last.camera == "ok" and last.ring_diameter_px is None
    assert _decode(last).shape == (120, 160, 3)


async def test_the_ring_is_measured_through_the_camera_scale_or_marked_uncalibrated(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, _ = sim_camera  # a 3 mm ring at the simulated camera's 100 px/mm: 300 px
    scale: list[ActiveCalibration | None] = [None]
    commanded: list[float | None] = [None]
    published = Published()
    async with _producer(
        capture,
        published,
        Clients(),
        rate_hz=20.0,
        ring_scale=lambda: scale[0],
        expected_ring_mm=lambda: commanded[0],
    ):
        first = (await published.wait_count(1))[0]
        assert first.ring_diameter_px == pytest.approx(300.0, abs=5.0)
        assert first.ring_diameter_mm is None and first.ring_scale_id is None
        assert first.ring_scale_detail == "uncalibrated: no active camera scale calibration"
        # A camera scale of 150 px/mm: the 300 px ring is 2 mm, and a commanded 2 mm ring is searched for
        # at 300 px (the detector's nominal 100 px/mm alone would look at 150..250 px).
        scale[0] = camera_scale(150.0, calibration_id=12)
        commanded[0] = 2.0
        count = len(published.previews)
        previews = await published.wait_for(
            lambda p: len(p) > count and p[-1].ring_diameter_mm is not None, "a calibrated ring"
        )
        assert previews[-1].ring_diameter_mm == pytest.approx(2.0, abs=0.04)
        assert previews[-1].ring_scale_id == 12 and previews[-1].ring_scale_detail == ""
        # Beyond the scale's calibrated span (150..750 px) the ring is not given a size in mm.
        scale[0] = camera_scale(400.0, calibration_id=13)
        commanded[0] = None
        count = len(published.previews)
        previews = await published.wait_for(
            lambda p: len(p) > count and p[-1].ring_scale_detail != "", "an out-of-span ring"
        )
    last = previews[-1]
    assert last.ring_diameter_px == pytest.approx(300.0, abs=5.0) and last.ring_diameter_mm is None
    assert "outside the calibrated range 400..2000 px" in last.ring_scale_detail
    assert "calibration #13" in last.ring_scale_detail


async def test_no_camera_is_reported_once_a_second() -> None:
    now = [100.0]
    published = Published()
    clients = Clients()
    async with _producer(None, published, clients, rate_hz=20.0, clock=lambda: now[0]):
        first = (await published.wait_count(1))[0]
        assert first.camera == NO_CAMERA
        assert "no camera" in first.detail
        assert first.jpeg_b64 is None and first.ring_diameter_mm is None and first.width == 0
        await clients.wait_calls(5)
        assert len(published.previews) == 1, "a missing camera is reported once a second, not every period"
        now[0] += 1.0
        second = (await published.wait_count(2))[1]
    assert second.camera == NO_CAMERA and second.seq > first.seq


async def test_a_frozen_camera_sends_its_state_and_no_image(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, source = sim_camera
    published = Published()
    async with _producer(capture, published, Clients(), rate_hz=20.0):
        await published.wait_for(lambda p: bool(p) and p[-1].jpeg_b64 is not None, "a live image")
        source.frozen = True
        await published.wait_for(lambda p: p[-1].camera == "frozen", "the frozen state")
        frozen_at = len(published.previews) - 1
        await published.wait_count(frozen_at + 4)
        after = published.previews[frozen_at:]
        assert all(p.camera == "frozen" for p in after)
        assert all(p.jpeg_b64 is None and p.ring_diameter_mm is None and p.focus is None for p in after)
        assert "identical frames" in after[0].detail
        # Once the camera moves again, live images come back.
        source.frozen = False
        await published.wait_for(lambda p: p[-1].camera == "ok" and p[-1].jpeg_b64 is not None, "images")


async def test_a_closed_camera_sends_its_state_and_no_image(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, _ = sim_camera
    published = Published()
    async with _producer(capture, published, Clients(), rate_hz=20.0):
        await published.wait_for(lambda p: bool(p) and p[-1].jpeg_b64 is not None, "a live image")
        await capture.aclose()
        await published.wait_for(lambda p: p[-1].camera == "not_opened", "the closed state")
    last = published.previews[-1]
    assert last.jpeg_b64 is None and last.detail == "camera capture closed"


async def test_nothing_is_made_without_clients(sim_camera: tuple[CameraCapture, SimCameraSource]) -> None:
    capture, _ = sim_camera
    published = Published()
    clients = Clients(connected=False)
    async with _producer(capture, published, clients, rate_hz=20.0) as producer:
        await clients.wait_calls(6)
        assert published.previews == []
        assert producer.published == 0
        clients.connected = True
        await published.wait_count(1)
        clients.connected = False
        await clients.wait_calls(1)
        count = len(published.previews)
        await clients.wait_calls(5)
        assert len(published.previews) == count


async def test_failures_never_stop_the_producer(
    sim_camera: tuple[CameraCapture, SimCameraSource], caplog: pytest.LogCaptureFixture
) -> None:
    capture, _ = sim_camera
    calls = [0]

    def broken_publish(preview: msg.Preview) -> None:
        calls[0] += 1
        raise OSError("socket gone")

    def broken_expected() -> float | None:
        raise RuntimeError("no session state")

    clients = Clients()
    async with _producer(
        capture,
        broken_publish,
        clients,
        rate_hz=20.0,
        expected_ring_mm=broken_expected,  # type: ignore[arg-type]
    ) as producer:
        await clients.wait_calls(4)
        assert producer.running
    assert calls[0] >= 2
    assert "publishing a preview failed: OSError: socket gone" in caplog.text
    assert "the commanded ring size is unavailable" in caplog.text

    published = Published()
    clients = Clients(failure=RuntimeError("server closed"))
    async with _producer(capture, published, clients, rate_hz=20.0) as producer:
        await clients.wait_calls(3)
        assert producer.running and published.previews == []
    assert "could not tell whether clients are connected: RuntimeError: server closed" in caplog.text


async def test_an_unusable_commanded_ring_is_ignored(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, _ = sim_camera
    published = Published()
    async with _producer(capture, published, Clients(), rate_hz=20.0, expected_ring_mm=lambda: float("nan")):
        preview = (await published.wait_count(1))[0]
    assert preview.ring_diameter_mm == pytest.approx(RING_MM, abs=0.05)


class _SlowDetector(RingDetector):
    """Holds each analysis until released, and records how many ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self.count = 0
        self._lock = threading.Lock()

    def analyse(self, image: npt.NDArray[np.generic], **kwargs: Any) -> FrameAnalysis:
        with self._lock:
            self.running += 1
            self.count += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            self.release.wait(5.0)
            return super().analyse(image, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


async def test_one_preview_at_a_time_and_overrun_periods_are_skipped(
    sim_camera: tuple[CameraCapture, SimCameraSource],
) -> None:
    capture, _ = sim_camera
    detector = _SlowDetector()
    published = Published()
    clients = Clients()
    producer = _producer(capture, published, clients, rate_hz=20.0, analyser=FrameAnalyser(detector))
    producer.start()
    try:
        await asyncio.to_thread(detector.started.wait, 5.0)
        # Hold the first analysis for six periods (0.3 s) of wall time, measured by the frames the camera
        # delivers meanwhile at 60 frames/s.
        await capture.wait_for_frames(capture.frames_delivered + 18, 5.0)
        assert clients.calls == 1, "no new period starts while a preview is being made"
        detector.release.set()
        await published.wait_count(3)
    finally:
        detector.release.set()
        await producer.aclose()
    assert detector.most_at_once == 1
    assert producer.skipped_periods >= 4


def test_settings_out_of_range_are_refused() -> None:
    published = Published()
    for kwargs, text in (
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"rate_hz": 31.0}, "rate_hz"),
        ({"rate_hz": float("nan")}, "rate_hz"),
        ({"width": 8}, "width"),
        ({"width": 1000}, "width"),
        ({"width": 160.0}, "width"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
    ):
        with pytest.raises(ValueError, match=text):
            _producer(None, published, lambda: True, **kwargs)
    with pytest.raises(ValueError, match="expected_ring_mm must be callable"):
        PreviewProducer(None, published, lambda: True, expected_ring_mm=3.0)  # type: ignore[arg-type]


async def test_start_and_close_are_clean() -> None:
    producer = _producer(None, Published(), Clients(), rate_hz=20.0)
    producer.start()
    with pytest.raises(RuntimeError, match="already started"):
        producer.start()
    assert producer.running
    await producer.aclose()
    await producer.aclose()
    assert not producer.running
    with pytest.raises(RuntimeError, match="closed"):
        producer.start()


async def test_the_controller_pushes_previews_to_its_clients(tmp_path: Path, migrated_template: Path) -> None:
    data = await prepare_data_dir(tmp_path / "data", migrated_template, {})
    controller = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await controller.start()
    try:
        assert controller.preview is not None and controller.preview.running
        client = await ControllerClient.connect(data.root / "observe.sock")
        try:
            received: list[msg.Preview] = []
            arrived = asyncio.Event()

            def listen(message: msg.Snapshot | msg.Event | msg.Preview) -> None:
                if isinstance(message, msg.Preview) and message.jpeg_b64 is not None:
                    received.append(message)
                    arrived.set()

            client.add_listener(listen)
            await asyncio.wait_for(arrived.wait(), 10.0)
        finally:
            await client.close()
    finally:
        await controller.close()
    assert controller.preview is not None and not controller.preview.running
    preview = received[0]
    assert preview.camera == "ok"
    assert _decode(preview).shape == (90, 160, 3)
    assert preview.ring_diameter_px is not None and 150.0 <= preview.ring_diameter_px <= 550.0
    # A fresh data directory has no camera scale calibration: the ring is marked uncalibrated.
    assert preview.ring_diameter_mm is None and "no active camera scale" in preview.ring_scale_detail


def test_the_benchmark_runs_and_reports_the_cost_per_preview() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable,
            "tests/bench/bench_preview.py",
            "--count",
            "6",
            "--warm-up",
            "2",
            "--rate",
            "30",
            "--json",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr  # 1: a goal missed on a busy machine, still a full report
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["previews"] == 6
    assert 0.0 < result["loop_cpu_ms_per_preview"] <= result["process_cpu_ms_per_preview"] < 1000.0
    assert result["rings_found_pct"] == 100.0
    assert 1000 < result["line_bytes"] < 20000


async def test_a_camera_process_makes_the_preview_and_its_end_shows_with_no_image() -> None:
    camera = CameraProcess("sim", restart_after_s=30.0)
    camera.start()
    published = Published()
    producer = PreviewProducer(
        camera,
        published,
        lambda: True,
        rate_hz=10.0,
        expected_ring_mm=lambda: 2.0,
        ring_scale=lambda: SIM_SCALE,
    )
    try:
        await camera.wait_for_state(CameraState.OK, 30.0)
        producer.start()
        previews = await published.wait_for(
            lambda p: any(x.jpeg_b64 is not None for x in p), "a preview with an image", 30.0
        )
        shown = next(x for x in previews if x.jpeg_b64 is not None)
        assert shown.camera == "ok"
        assert _decode(shown).shape == (90, 160, 3)
        assert shown.ring_diameter_mm == pytest.approx(2.0, abs=0.05)  # the camera process found the ring
        pid = camera.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        after = len(published.previews)
        previews = await published.wait_for(
            lambda p: any(x.camera == "not_opened" for x in p[after:]), "the camera's end", 10.0
        )
        gone = next(x for x in previews[after:] if x.camera == "not_opened")
        assert gone.jpeg_b64 is None
        assert "camera process ended" in gone.detail
    finally:
        await producer.aclose()
        await camera.aclose()


async def test_a_configured_camera_runs_in_its_own_process_and_previews_reach_the_console(
    tmp_path: Path, migrated_template: Path
) -> None:
    data = await prepare_data_dir(tmp_path / "data", migrated_template, {})
    async with SimRig() as rig:
        config = RigConfig.from_ports(rig.ports())  # camera "sim": configured, not the simulated rig's object
        controller = Controller(data.root, rig_config=config, hashing=CHEAP, terminal="test")
        await controller.start()
        try:
            camera = controller.rig.camera
            assert isinstance(camera, CameraProcess)
            assert camera.pid is not None and camera.pid != os.getpid()
            client = await ControllerClient.connect(data.root / "observe.sock")
            try:
                arrived: asyncio.Future[msg.Preview] = asyncio.get_running_loop().create_future()

                def listen(message: msg.Snapshot | msg.Event | msg.Preview) -> None:
                    if (
                        isinstance(message, msg.Preview)
                        and message.jpeg_b64 is not None
                        and not arrived.done()
                    ):
                        arrived.set_result(message)

                client.add_listener(listen)
                preview = await asyncio.wait_for(arrived, 30.0)
            finally:
                await client.close()
            pid = camera.pid
        finally:
            await controller.close()
    assert preview.camera == "ok" and preview.ring_diameter_px is not None
    assert pid is not None and not _running(pid)
