"""Ring detection accuracy, focus score and grey conversion on synthetic frames of the simulated camera."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from devices.camera import (
    FrameAnalysis,
    RingDetector,
    RingDetectorConfig,
    focus_score,
    to_grey,
)
from devices.sim.camera import SimCameraSource


def _frame(ring_mm: float, **kwargs: object) -> np.ndarray:
    options: dict[str, object] = {"frame_rate_hz": None, "seed": 7}
    options.update(kwargs)
    source = SimCameraSource(ring_mm=lambda: ring_mm, **options)  # type: ignore[arg-type]
    ok, frame = source.read()
    assert ok and frame is not None
    return frame


@pytest.mark.parametrize("ring_mm", [2.0, 3.0, 4.0, 5.0])
@pytest.mark.parametrize("blur_sigma_px", [1.0, 2.5])
def test_ring_diameter_within_two_percent(ring_mm: float, blur_sigma_px: float) -> None:
    offset = (37.5, -21.25)
    frame = _frame(ring_mm, blur_sigma_px=blur_sigma_px, noise_sigma=6.0, centre_offset_px=offset)
    analysis = RingDetector().analyse(frame)
    ring = analysis.ring
    assert ring is not None, analysis.no_ring_reason
    assert abs(ring.diameter_mm - ring_mm) / ring_mm < 0.02
    assert abs(ring.diameter_px - ring_mm * 100.0) / (ring_mm * 100.0) < 0.02
    assert ring.centre_px[0] == pytest.approx(640.0 + offset[0], abs=1.0)
    assert ring.centre_px[1] == pytest.approx(360.0 + offset[1], abs=1.0)
    assert ring.coverage > 0.9
    assert analysis.no_ring_reason == ""


def test_expected_size_narrows_the_search() -> None:
    frame = _frame(2.0, blur_sigma_px=1.0, noise_sigma=3.0)
    detector = RingDetector()
    found = detector.detect_ring(frame, expected_diameter_mm=2.0)
    assert found is not None and found.diameter_mm == pytest.approx(2.0, rel=0.02)
    assert detector.detect_ring(frame, expected_diameter_mm=4.5) is None


def test_calibration_converts_pixels_to_millimetres() -> None:
    frame = _frame(3.0, px_per_mm=80.0, blur_sigma_px=1.0, noise_sigma=3.0)
    detector = RingDetector(RingDetectorConfig(px_per_mm=80.0))
    ring = detector.detect_ring(frame)
    assert ring is not None
    assert ring.diameter_px == pytest.approx(240.0, rel=0.02)
    assert ring.diameter_mm == pytest.approx(3.0, rel=0.02)


def test_no_ring_on_an_empty_scene() -> None:
    source = SimCameraSource(ring_mm=lambda: 3.0, ring_level=1e-3, frame_rate_hz=None, seed=3)
    ok, frame = source.read()
    assert ok and frame is not None
    analysis = RingDetector().analyse(frame, sequence=5, timestamp=12.5)
    assert analysis.ring is None
    assert analysis.no_ring_reason
    assert (analysis.sequence, analysis.timestamp) == (5, 12.5)


def test_a_faint_ring_is_not_reported() -> None:
    frame = _frame(3.0, ring_level=8.0, noise_sigma=3.0)
    detector = RingDetector(RingDetectorConfig(accumulator_threshold=8.0))
    analysis = detector.analyse(frame)
    assert analysis.ring is None
    assert analysis.no_ring_reason


def test_ring_partly_outside_the_frame_is_refused() -> None:
    frame = _frame(5.0, centre_offset_px=(0.0, 300.0), noise_sigma=2.0)
    analysis = RingDetector().analyse(frame)
    assert analysis.ring is None
    assert "rays" in analysis.no_ring_reason or "circle" in analysis.no_ring_reason


def test_focus_score_falls_monotonically_as_blur_grows() -> None:
    sigmas = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    scores = [focus_score(to_grey(_frame(3.0, blur_sigma_px=s, noise_sigma=2.0))) for s in sigmas]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    # Sensor noise is added after the optics, so it sets a floor the score approaches but never goes below.
    assert scores[0] > 1.5 * scores[-1]


def test_focus_score_of_a_noise_free_ring_drops_steeply_with_blur() -> None:
    sharp = focus_score(to_grey(_frame(3.0, blur_sigma_px=0.0, noise_sigma=0.0, texture_sigma=0.0)))
    blurred = focus_score(to_grey(_frame(3.0, blur_sigma_px=4.0, noise_sigma=0.0, texture_sigma=0.0)))
    assert sharp > 20.0 * blurred


def test_analysis_reports_focus_and_time() -> None:
    analysis = RingDetector().analyse(_frame(4.0))
    assert isinstance(analysis, FrameAnalysis)
    assert analysis.focus_score > 0.0
    assert 0.0 < analysis.analysis_s < 5.0


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 0), np.uint8),
        np.zeros((10, 10, 3), np.uint8),
        np.zeros((10, 10), np.float32),
    ],
)
def test_focus_score_needs_a_grey_8_bit_image(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="8-bit grey"):
        focus_score(image)


def test_to_grey_accepts_camera_layouts() -> None:
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 1] = 200
    grey = to_grey(bgr)
    assert grey.shape == (4, 6) and grey.dtype == np.uint8
    assert int(grey[0, 0]) == pytest.approx(0.587 * 200, abs=1)
    assert to_grey(np.full((4, 6, 4), 90, np.uint8))[0, 0] == 90
    assert to_grey(np.full((4, 6, 1), 17, np.uint8))[0, 0] == 17
    assert to_grey(np.full((4, 6), 65535, np.uint16))[0, 0] == 255
    assert to_grey(np.full((4, 6), 99.6, np.float64))[0, 0] == 100


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[1, 2], [3, 4]], "numpy array"),
        (np.zeros((0, 4), np.uint8), "empty"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4), np.int32), "type"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
    ],
)
def test_to_grey_rejects_other_input(image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_grey(image)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("px_per_mm", 0.0),
        ("px_per_mm", float("nan")),
        ("min_diameter_mm", 6.0),
        ("expected_tolerance", 1.0),
        ("downscale", 0),
        ("downscale", 2.0),
        ("rays", 8),
        ("min_coverage", 0.0),
        ("min_contrast", -1.0),
    ],
)
def test_detector_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RingDetectorConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("expected", [0.0, -2.0, float("inf"), float("nan")])
def test_bad_expected_diameter_is_refused(expected: float) -> None:
    with pytest.raises(ValueError, match="expected_diameter_mm"):
        RingDetector().analyse(_frame(3.0), expected_diameter_mm=expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_texture_is_not_taken_for_a_ring(seed: int) -> None:
    source = SimCameraSource(
        ring_mm=lambda: 3.0,
        ring_level=1e-6,
        texture_sigma=15.0,
        noise_sigma=12.0,
        frame_rate_hz=None,
        seed=seed,
    )
    ok, frame = source.read()
    assert ok and frame is not None
    analysis = RingDetector().analyse(frame)
    assert analysis.ring is None, analysis.ring
    assert analysis.no_ring_reason


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (40, 30)])
def test_tiny_frames_give_no_ring_rather_than_an_error(size: tuple[int, int]) -> None:
    width, height = size
    analysis = RingDetector().analyse(np.full((height, width), 40, np.uint8))
    assert analysis.ring is None
    assert analysis.no_ring_reason


def test_small_frames_are_searched_at_full_resolution() -> None:
    source = SimCameraSource(ring_mm=lambda: 0.6, width=160, height=120, frame_rate_hz=None, seed=12)
    ok, frame = source.read()
    assert ok and frame is not None
    config = RingDetectorConfig(min_diameter_mm=0.3, max_diameter_mm=1.0, downscale=4)
    ring = RingDetector(config).detect_ring(frame)
    assert ring is not None
    assert ring.diameter_mm == pytest.approx(0.6, rel=0.02)
