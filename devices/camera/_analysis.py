"""Ring detection and focus measurement on 8-bit grey frames.

Ring detection works in two stages, so that a 1280 x 720 frame is analysed in a few milliseconds:

1. **Find.** The frame is reduced by ``downscale`` (area averaging), smoothed with a Gaussian blur (without it
   ``HoughCircles`` on a noisy frame is slow and finds circles in the noise) and searched with
   ``cv2.HoughCircles`` for one circle whose radius lies within the bounds of the expected ring size.
2. **Refine.** Around the circle found, the full-resolution frame is sampled along ``rays`` rays over an
   annulus (``cv2.remap``). On each ray the bright band's centre is located to a fraction of a pixel
   (intensity centroid above the half-maximum level), and a circle is fitted through those points by least
   squares, discarding outlying rays. The diameter is that of the band's centre line.

A ring is reported only when enough rays (``min_coverage``) show the band with at least ``min_contrast`` grey
levels above their background and the band points lie on a circle (RMS scatter at most ``max_residual_px``);
otherwise the result says "no ring" and why. The diameter is measured in pixels; ``px_per_mm`` is a nominal
scale that turns ring sizes in millimetres into the pixel radii searched, and gives ``diameter_mm`` in those
nominal millimetres. A measured size in millimetres comes from the rig's camera scale calibration, applied to
``diameter_px`` by the controller (docs/calibration.md).

The focus score is the variance of the Laplacian of the full-resolution frame (grey levels squared); it falls
as the image blurs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from devices.camera._frames import CameraFrame, GreyImage, to_grey
from devices.camera._threads import DEFAULT_THREAD_NICE, LowPriorityWorker

_RAY_STEP_PX = 1.0
"""Sampling step along each refinement ray, full-resolution pixels."""
_RESAMPLE_SHIFT_PX = 2.0
_RESAMPLE_RADIUS_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class RingDetectorConfig:
    """Settings of :class:`RingDetector`.

    Attributes:
        px_per_mm: nominal scale, pixels per millimetre at the treatment plane, that turns the sizes searched
            for into pixels (the simulated camera's own scale by default); not a calibration.
        min_diameter_mm: smallest ring searched for when no expected size is given, mm.
        max_diameter_mm: largest ring searched for when no expected size is given, mm.
        expected_tolerance: with an expected size, the search covers expected x (1 -/+ tolerance).
        downscale: integer reduction of the frame for the Hough search (1 = full resolution).
        blur_sigma_px: Gaussian blur applied to the reduced frame before the Hough search, pixels of the
            reduced frame.
        canny_high: upper Canny threshold of the Hough gradient method, grey levels.
        accumulator_threshold: Hough accumulator threshold (votes at the reduced scale).
        rays: number of rays sampled in the refinement.
        min_contrast: brightness of the band above its background a ray needs to count, grey levels.
        min_coverage: fraction of rays that must show the band for a ring to be reported (0..1).
        max_residual_px: largest RMS distance of the band points from the fitted circle for a ring to be
            reported, full-resolution pixels (texture or glare gives scattered points, a ring a true circle).
    """

    px_per_mm: float = 100.0
    min_diameter_mm: float = 1.5
    max_diameter_mm: float = 5.5
    expected_tolerance: float = 0.25
    downscale: int = 4
    blur_sigma_px: float = 1.0
    canny_high: float = 80.0
    accumulator_threshold: float = 20.0
    rays: int = 256
    min_contrast: float = 20.0
    min_coverage: float = 0.6
    max_residual_px: float = 3.0

    def __post_init__(self) -> None:
        _finite_positive("px_per_mm", self.px_per_mm)
        _finite_positive("min_diameter_mm", self.min_diameter_mm)
        _finite_positive("max_diameter_mm", self.max_diameter_mm)
        if self.min_diameter_mm >= self.max_diameter_mm:
            raise ValueError(
                f"min_diameter_mm ({self.min_diameter_mm}) must be below "
                f"max_diameter_mm ({self.max_diameter_mm})"
            )
        if not (math.isfinite(self.expected_tolerance) and 0.0 < self.expected_tolerance < 1.0):
            raise ValueError(f"expected_tolerance must be within (0, 1), got {self.expected_tolerance}")
        if (
            isinstance(self.downscale, bool)
            or not isinstance(self.downscale, int)
            or not 1 <= self.downscale <= 8
        ):
            raise ValueError(f"downscale must be an integer 1..8, got {self.downscale!r}")
        _finite_positive("blur_sigma_px", self.blur_sigma_px)
        _finite_positive("canny_high", self.canny_high)
        _finite_positive("accumulator_threshold", self.accumulator_threshold)
        if isinstance(self.rays, bool) or not isinstance(self.rays, int) or not 16 <= self.rays <= 4096:
            raise ValueError(f"rays must be an integer 16..4096, got {self.rays!r}")
        _finite_positive("min_contrast", self.min_contrast)
        if not (math.isfinite(self.min_coverage) and 0.0 < self.min_coverage <= 1.0):
            raise ValueError(f"min_coverage must be within (0, 1], got {self.min_coverage}")
        _finite_positive("max_residual_px", self.max_residual_px)


@dataclass(frozen=True, slots=True)
class RingDetection:
    """A ring found in a frame.

    Attributes:
        centre_px: centre (x, y) in full-resolution pixels, origin at the top-left corner.
        diameter_px: diameter of the band's centre line, pixels.
        diameter_mm: the same in the detector's nominal millimetres (``px_per_mm``), not calibrated.
        coverage: fraction of rays on which the band was found (0..1).
        residual_px: RMS distance of the band points from the fitted circle, pixels.
    """

    centre_px: tuple[float, float]
    diameter_px: float
    diameter_mm: float
    coverage: float
    residual_px: float


@dataclass(frozen=True, slots=True)
class FrameAnalysis:
    """What one frame showed.

    Attributes:
        sequence: the frame's sequence number (0 for an image that did not come from a capture).
        timestamp: the frame's ``time.monotonic()`` capture time, seconds.
        ring: the ring, or None when none was found.
        no_ring_reason: why no ring was reported (empty when a ring was found).
        focus_score: variance of the Laplacian, grey levels squared; higher is sharper.
        analysis_s: time the analysis took, seconds.
    """

    sequence: int
    timestamp: float
    ring: RingDetection | None
    no_ring_reason: str
    focus_score: float
    analysis_s: float


def focus_score(grey: GreyImage) -> float:
    """Variance of the Laplacian of an 8-bit grey image, grey levels squared (higher means sharper)."""
    if not isinstance(grey, np.ndarray) or grey.ndim != 2 or grey.dtype != np.uint8 or grey.size == 0:
        raise ValueError("focus_score needs a non-empty 8-bit grey image (H x W, uint8)")
    laplacian = cv2.Laplacian(grey, cv2.CV_16S)
    _mean, std = cv2.meanStdDev(laplacian)
    return float(std[0, 0]) ** 2


class RingDetector:
    """Finds the treatment ring in 8-bit grey frames and measures focus; thread-safe (no frame state)."""

    def __init__(self, config: RingDetectorConfig | None = None) -> None:
        self.config = config if config is not None else RingDetectorConfig()
        self._angles = np.linspace(0.0, 2.0 * math.pi, self.config.rays, endpoint=False)
        self._cos = np.cos(self._angles).astype(np.float32)
        self._sin = np.sin(self._angles).astype(np.float32)

    def search_radii_px(self, expected_diameter_mm: float | None = None) -> tuple[float, float]:
        """The radius range searched, in full-resolution pixels, for an expected diameter (mm) or the default
        range. Raises ValueError for an expected diameter that is not a finite positive number."""
        cfg = self.config
        if expected_diameter_mm is None:
            low_mm, high_mm = cfg.min_diameter_mm, cfg.max_diameter_mm
        else:
            _finite_positive("expected_diameter_mm", expected_diameter_mm)
            low_mm = expected_diameter_mm * (1.0 - cfg.expected_tolerance)
            high_mm = expected_diameter_mm * (1.0 + cfg.expected_tolerance)
        return low_mm * cfg.px_per_mm / 2.0, high_mm * cfg.px_per_mm / 2.0

    def analyse(
        self,
        image: npt.NDArray[np.generic],
        *,
        expected_diameter_mm: float | None = None,
        sequence: int = 0,
        timestamp: float = 0.0,
    ) -> FrameAnalysis:
        """Detect the ring and score the focus of one image (any layout :func:`to_grey` accepts)."""
        started = time.perf_counter()
        grey = to_grey(image)
        low, high = self.search_radii_px(expected_diameter_mm)
        ring, reason = self._detect(grey, low, high)
        score = focus_score(grey)
        return FrameAnalysis(
            sequence=sequence,
            timestamp=timestamp,
            ring=ring,
            no_ring_reason=reason,
            focus_score=score,
            analysis_s=time.perf_counter() - started,
        )

    def detect_ring(
        self, image: npt.NDArray[np.generic], expected_diameter_mm: float | None = None
    ) -> RingDetection | None:
        """Only the ring detection of :meth:`analyse`; None when no ring is found."""
        grey = to_grey(image)
        low, high = self.search_radii_px(expected_diameter_mm)
        return self._detect(grey, low, high)[0]

    # -- stages ----------------------------------------------------------------------------------------------

    def _detect(self, grey: GreyImage, low_px: float, high_px: float) -> tuple[RingDetection | None, str]:
        found = self._hough(grey, low_px, high_px)
        if found is None:
            return None, "no circle of the expected size"
        fit, reason = self._refine(grey, *found)
        if fit is None:
            return None, reason
        # When the fit lands far from where the rays were cast (a rough Hough estimate), sample again around
        # the fit so that the rays cross the band squarely and the band sits mid-window.
        moved = math.hypot(fit[0] - found[0], fit[1] - found[1])
        if moved > _RESAMPLE_SHIFT_PX or abs(fit[2] - found[2]) > _RESAMPLE_RADIUS_FRACTION * found[2]:
            fit, reason = self._refine(grey, fit[0], fit[1], fit[2])
            if fit is None:
                return None, reason
        cx, cy, radius, coverage, residual = fit
        if residual > self.config.max_residual_px:
            return None, (
                f"band points scatter {residual:.1f} px around the best circle "
                f"(at most {self.config.max_residual_px:.1f} px for a ring)"
            )
        if not low_px <= radius <= high_px:
            return None, f"ring radius {radius:.1f} px outside the searched {low_px:.1f}..{high_px:.1f} px"
        diameter = 2.0 * radius
        ring = RingDetection(
            centre_px=(cx, cy),
            diameter_px=diameter,
            diameter_mm=diameter / self.config.px_per_mm,
            coverage=coverage,
            residual_px=residual,
        )
        return ring, ""

    def _hough(self, grey: GreyImage, low_px: float, high_px: float) -> tuple[float, float, float] | None:
        cfg = self.config
        height, width = grey.shape
        # Small frames are searched at (nearly) full resolution: keep at least 32 px on the short side.
        k = max(1, min(cfg.downscale, min(height, width) // 32))
        if k > 1:
            small = cv2.resize(grey, (width // k, height // k), interpolation=cv2.INTER_AREA)
        else:
            small = grey
        small = cv2.GaussianBlur(small, (0, 0), cfg.blur_sigma_px)
        min_r = max(1, math.floor(low_px / k))
        max_r = max(min_r + 1, math.ceil(high_px / k))
        circles = cv2.HoughCircles(
            small,
            cv2.HOUGH_GRADIENT,
            dp=1,
            minDist=float(max(small.shape)),
            param1=cfg.canny_high,
            param2=cfg.accumulator_threshold,
            minRadius=min_r,
            maxRadius=max_r,
        )
        if circles is None or circles.size == 0:
            return None
        x, y, r = (float(v) for v in circles[0, 0])
        # Centre of a reduced pixel maps to k * (x + 0.5) - 0.5 at full resolution.
        return k * (x + 0.5) - 0.5, k * (y + 0.5) - 0.5, k * r

    def _refine(
        self, grey: GreyImage, cx: float, cy: float, radius: float
    ) -> tuple[tuple[float, float, float, float, float] | None, str]:
        cfg = self.config
        half_span = max(0.3 * radius, 12.0)
        r_first = max(radius - half_span, 1.0)
        r_last = radius + half_span
        radii = np.arange(r_first, r_last, _RAY_STEP_PX, dtype=np.float32)
        if radii.size < 16:
            return None, "ring too small to measure"
        height, width = grey.shape
        # A ray is usable when both its ends lie in the frame (the frame is convex).
        ends_x = cx + self._cos * np.float32(radii[-1])
        ends_y = cy + self._sin * np.float32(radii[-1])
        starts_x = cx + self._cos * np.float32(radii[0])
        starts_y = cy + self._sin * np.float32(radii[0])
        ray_inside = (
            (np.minimum(ends_x, starts_x) >= 0.0)
            & (np.maximum(ends_x, starts_x) <= width - 1)
            & (np.minimum(ends_y, starts_y) >= 0.0)
            & (np.maximum(ends_y, starts_y) <= height - 1)
        )
        map_x = np.multiply.outer(self._cos, radii)
        map_x += np.float32(cx)
        map_y = np.multiply.outer(self._sin, radii)
        map_y += np.float32(cy)
        polar = cv2.remap(grey, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Smooth along each ray only, to steady the peak against sensor noise.
        polar = cv2.GaussianBlur(polar.astype(np.float32), (0, 0), sigmaX=1.0, sigmaY=1e-3)
        rows = np.arange(polar.shape[0])
        peak = polar.argmax(axis=1)
        top = polar[rows, peak]
        # Background: the darker of the two ends of each ray (the band lies between them).
        edge = max(3, radii.size // 10)
        base = np.minimum(polar[:, :edge].mean(axis=1), polar[:, -edge:].mean(axis=1))
        valid = ray_inside & (top - base >= cfg.min_contrast)
        coverage = float(valid.mean())
        if coverage < cfg.min_coverage:
            return None, f"ring visible on {coverage:.0%} of rays (needs {cfg.min_coverage:.0%})"
        # Centroid of the band above its half-maximum level, within a window around the peak.
        half_level = (top + base) * np.float32(0.5)
        window = max(3, round(0.25 * half_span / _RAY_STEP_PX))
        idx = np.clip(peak[:, None] + np.arange(-window, window + 1)[None, :], 0, radii.size - 1)
        weights = polar[rows[:, None], idx]
        weights -= half_level[:, None]
        np.maximum(weights, 0.0, out=weights)
        total = weights.sum(axis=1)
        valid &= total > 0.0
        band_r = (weights * radii[idx]).sum(axis=1)[valid] / total[valid]
        xs = cx + self._cos[valid].astype(np.float64) * band_r
        ys = cy + self._sin[valid].astype(np.float64) * band_r
        fit = _fit_circle(xs, ys)
        if fit is None:
            return None, "ring points do not form a circle"
        fx, fy, fr = fit
        residuals = np.hypot(xs - fx, ys - fy) - fr
        spread = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
        keep = np.abs(residuals) <= max(3.0 * spread, 1.0)
        kept = int(keep.sum())
        if 0.5 * xs.size <= kept < xs.size:
            refit = _fit_circle(xs[keep], ys[keep])
            if refit is not None:
                fx, fy, fr = refit
                residuals = np.hypot(xs[keep] - fx, ys[keep] - fy) - fr
        rms = float(np.sqrt(np.mean(residuals**2)))
        return (fx, fy, fr, coverage, rms), ""


class FrameAnalyser(LowPriorityWorker):
    """Runs a :class:`RingDetector` on its own worker thread, so the asyncio loop never waits on OpenCV.

    One analysis runs at a time (a second call queues behind it); numpy and OpenCV release the GIL while they
    work, and the thread runs ``thread_nice`` steps below the process's scheduling priority (Linux). Close
    with :meth:`aclose` (or :meth:`close`), which joins the worker thread.
    """

    WHAT = "the frame analyser"

    def __init__(
        self,
        detector: RingDetector | None = None,
        *,
        thread_name: str = "camera-analysis",
        thread_nice: int = DEFAULT_THREAD_NICE,
    ) -> None:
        super().__init__(thread_name=thread_name, thread_nice=thread_nice)
        self.detector = detector if detector is not None else RingDetector()

    async def analyse(
        self, frame: CameraFrame, *, expected_diameter_mm: float | None = None
    ) -> FrameAnalysis:
        """Analyse one captured frame off the loop; the expected diameter (mm) narrows the search."""
        self._check_open()
        if expected_diameter_mm is not None:
            self.detector.search_radii_px(expected_diameter_mm)  # validates before any work is queued
        return await self.run(
            lambda: self.detector.analyse(
                frame.grey,
                expected_diameter_mm=expected_diameter_mm,
                sequence=frame.sequence,
                timestamp=frame.timestamp,
            )
        )


def _fit_circle(
    xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
) -> tuple[float, float, float] | None:
    """Algebraic least-squares circle through points (Kåsa): centre x, centre y, radius, or None."""
    if xs.size < 8:
        return None
    mx, my = float(xs.mean()), float(ys.mean())
    u, v = xs - mx, ys - my
    matrix = np.column_stack([u, v, np.ones_like(u)])
    rhs = u * u + v * v
    solution, _res, rank, _sv = np.linalg.lstsq(matrix, rhs, rcond=None)
    if rank < 3:
        return None
    a, b, c = (float(s) for s in solution)
    ux, uy = a / 2.0, b / 2.0
    r2 = c + ux * ux + uy * uy
    if not math.isfinite(r2) or r2 <= 0.0:
        return None
    return ux + mx, uy + my, math.sqrt(r2)


def _finite_positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
