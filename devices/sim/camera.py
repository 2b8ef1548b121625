"""Synthetic camera of the simulated rig.

:class:`SimCameraSource` renders what the rig's camera would see: a bright treatment ring on a dark, slightly
textured background, 1280 x 720 pixels by default, three-channel 8-bit BGR like ``cv2.VideoCapture`` returns.

Geometry and units:

- The ring's diameter follows the physical model: ``ring_mm()`` (millimetres) times ``px_per_mm`` gives the
  diameter in pixels, measured on the centre line of the bright band. The default scale is
  :data:`DEFAULT_PX_PER_MM` = 100 px/mm, so the treatment range 2 to 5 mm spans 200 to 500 px.
- The band is ``ring_width_mm`` wide (default 0.10 mm, 10 px), anti-aliased, ``ring_level`` grey levels above
  the background.
- Optics are modelled by a Gaussian blur of ``blur_sigma_px`` pixels (defocus), applied before the sensor
  noise; the sensor adds white Gaussian noise of ``noise_sigma`` grey levels to every frame.
- An optional overlay writes the frame counter and the source's clock in the top-left corner.
- The aiming beam: while ``aiming()`` returns true (the safety board's aiming beam output), a small bright
  spot, :data:`AIM_SPOT_RADIUS_PX` pixels in radius, shows at the ring's centre.

Faults, driven by the simulated rig:

- ``frozen = True``: every read returns the last frame again, byte for byte (a hung camera).
- :meth:`SimCameraSource.unplug`: reads fail and :meth:`SimCameraSource.open` raises :class:`OSError` until
  :meth:`SimCameraSource.replug`.

Timing: with ``frame_rate_hz`` set (default 30 frames/s) a read waits for the next frame period, as a real
camera blocks until its next exposure; ``frame_rate_hz=None`` renders on demand (tests and benchmarks).

The source is used by one reading thread at a time; ``frozen``, :meth:`unplug`, :meth:`replug` and
:meth:`release` may be called from any thread. ``ring_mm`` is called from the reading thread.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt

DEFAULT_PX_PER_MM = 100.0
"""Default image scale of the simulated camera, pixels per millimetre at the treatment plane."""

DEFAULT_WIDTH_PX = 1280
DEFAULT_HEIGHT_PX = 720

AIM_SPOT_RADIUS_PX = 6.0
"""Radius of the aiming beam's spot on the simulated image, pixels (its brightness falls off over a pixel)."""
AIM_SPOT_LEVEL = 200.0
"""Brightness of the aiming beam's spot above the background, grey levels."""

_NOISE_BANK_SIZE = 4
_NOISE_MARGIN_PX = 64

Image = npt.NDArray[np.uint8]


class SimCameraSource:
    """A synthetic camera showing the treatment ring of the simulated physical model.

    Args:
        ring_mm: returns the ring diameter in millimetres at the moment of the exposure.
        px_per_mm: image scale, pixels per millimetre (> 0).
        width: frame width in pixels (>= 16).
        height: frame height in pixels (>= 16).
        centre_offset_px: ring centre relative to the frame centre, pixels (x right, y down).
        ring_width_mm: width of the bright band, millimetres (> 0).
        background_level: mean background grey level (0..255).
        ring_level: brightness of the band above the background, grey levels (> 0).
        texture_sigma: standard deviation of the background's low-frequency texture, grey levels (>= 0).
        blur_sigma_px: Gaussian blur (defocus) in pixels; 0 for a perfectly sharp image.
        noise_sigma: sensor noise standard deviation in grey levels (>= 0).
        frame_rate_hz: frames per second a read is paced at, or None for no pacing.
        overlay: draw the frame counter and timestamp in the top-left corner.
        seed: seed of the texture and noise generator, for reproducible frames.
        aiming: returns whether the aiming beam is on at the moment of the exposure (None: never).
    """

    def __init__(
        self,
        ring_mm: Callable[[], float],
        *,
        px_per_mm: float = DEFAULT_PX_PER_MM,
        width: int = DEFAULT_WIDTH_PX,
        height: int = DEFAULT_HEIGHT_PX,
        centre_offset_px: tuple[float, float] = (0.0, 0.0),
        ring_width_mm: float = 0.10,
        background_level: float = 28.0,
        ring_level: float = 170.0,
        texture_sigma: float = 4.0,
        blur_sigma_px: float = 1.0,
        noise_sigma: float = 3.0,
        frame_rate_hz: float | None = 30.0,
        overlay: bool = False,
        seed: int | None = None,
        aiming: Callable[[], bool] | None = None,
    ) -> None:
        if not callable(ring_mm):
            raise TypeError("ring_mm must be a callable returning the ring diameter in mm")
        _check_positive("px_per_mm", px_per_mm)
        if not isinstance(width, int) or not isinstance(height, int) or width < 16 or height < 16:
            raise ValueError(f"frame size must be integers >= 16 px, got {width!r} x {height!r}")
        if len(centre_offset_px) != 2 or not all(math.isfinite(v) for v in centre_offset_px):
            raise ValueError(f"centre_offset_px must be two finite numbers, got {centre_offset_px!r}")
        _check_positive("ring_width_mm", ring_width_mm)
        _check_range("background_level", background_level, 0.0, 255.0)
        _check_positive("ring_level", ring_level)
        _check_non_negative("texture_sigma", texture_sigma)
        _check_non_negative("blur_sigma_px", blur_sigma_px)
        _check_non_negative("noise_sigma", noise_sigma)
        if frame_rate_hz is not None:
            _check_positive("frame_rate_hz", frame_rate_hz)
        self._ring_mm = ring_mm
        self._aiming = aiming
        self.px_per_mm = float(px_per_mm)
        self.width = width
        self.height = height
        self.centre_px = (width / 2.0 + float(centre_offset_px[0]), height / 2.0 + float(centre_offset_px[1]))
        self.ring_width_px = float(ring_width_mm) * self.px_per_mm
        self.ring_level = float(ring_level)
        self.blur_sigma_px = float(blur_sigma_px)
        self.noise_sigma = float(noise_sigma)
        self.frame_rate_hz = frame_rate_hz
        self.overlay = overlay
        self.frozen = False
        """When true, every read returns the previous frame again (camera freeze)."""

        self._rng = np.random.default_rng(seed)
        self._unplugged = threading.Event()
        self._released = threading.Event()
        self._opened = True
        self._frame_count = 0
        self._started_at = time.monotonic()
        self._next_due: float | None = None
        self._last_frame: Image | None = None
        self._clean_key: tuple[float, bool] | None = None
        self._clean: npt.NDArray[np.float32] | None = None

        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self._radius_map = cv2.magnitude(
            xs - np.float32(self.centre_px[0]), ys - np.float32(self.centre_px[1])
        )
        self._background = self._make_background(float(background_level), float(texture_sigma))
        self._noise_bank = self._make_noise_bank()

    # -- the camera's small interface ------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """A human-readable name of the source."""
        return "simulated camera"

    @property
    def unplugged(self) -> bool:
        """True while the simulated cable is pulled."""
        return self._unplugged.is_set()

    @property
    def frame_count(self) -> int:
        """Number of frames delivered by successful reads (repeated frozen frames included)."""
        return self._frame_count

    def open(self) -> None:
        """Open (or reopen) the camera; raises OSError while unplugged."""
        if self._unplugged.is_set():
            raise OSError("simulated camera is unplugged")
        self._released.clear()
        self._opened = True
        self._next_due = None

    def read(self) -> tuple[bool, Image | None]:
        """Wait for the next frame period and return ``(True, frame)``, or ``(False, None)`` on failure.

        A read fails while the camera is unplugged or after :meth:`release`. A frozen camera returns a copy of
        its previous frame.
        """
        if not self._opened or self._unplugged.is_set():
            return False, None
        self._pace()
        if not self._opened or self._unplugged.is_set():
            return False, None
        if self.frozen and self._last_frame is not None:
            self._frame_count += 1
            return True, self._last_frame.copy()
        frame = self.render(self._ring_mm(), aiming=self._aiming is not None and bool(self._aiming()))
        self._frame_count += 1
        if self.overlay:
            self._draw_overlay(frame)
        self._last_frame = frame  # kept for a freeze; readers must not modify frames in place
        return True, frame

    def release(self) -> None:
        """Close the camera; a read waiting for its frame period returns at once with a failure."""
        self._opened = False
        self._released.set()

    # -- fault injection -----------------------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the simulated cable: reads fail and opening raises OSError until :meth:`replug`."""
        self._unplugged.set()
        self._released.set()

    def replug(self) -> None:
        """Plug the simulated cable back in; the reader must open the camera again if it released it."""
        self._unplugged.clear()
        self._released.clear()

    # -- rendering -----------------------------------------------------------------------------------------

    def render(self, ring_mm: float, *, aiming: bool = False) -> Image:
        """Render one frame (BGR, uint8, height x width x 3) showing a ring of ``ring_mm`` millimetres, and
        the aiming beam's spot at its centre when ``aiming``.

        Raises ValueError when ``ring_mm`` is not a finite positive number.
        """
        if isinstance(ring_mm, bool) or not isinstance(ring_mm, numbers.Real) or not math.isfinite(ring_mm):
            raise ValueError(f"ring diameter must be a finite number of mm, got {ring_mm!r}")
        if ring_mm <= 0.0:
            raise ValueError(f"ring diameter must be positive, got {ring_mm} mm")
        clean = self._clean_image(float(ring_mm), aiming)
        # OpenCV does the per-pixel work (it saturates to 0..255 and releases the GIL while it works).
        if self.noise_sigma > 0.0:
            noise = self._noise_bank[int(self._rng.integers(_NOISE_BANK_SIZE))]
            dy = int(self._rng.integers(_NOISE_MARGIN_PX))
            dx = int(self._rng.integers(_NOISE_MARGIN_PX))
            grey8 = cv2.add(clean, noise[dy : dy + self.height, dx : dx + self.width], dtype=cv2.CV_8U)
        else:
            grey8 = cv2.convertScaleAbs(clean)  # the clean image is never negative
        return cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR)

    def _clean_image(self, ring_mm: float, aiming: bool = False) -> npt.NDArray[np.float32]:
        if self._clean is not None and self._clean_key == (ring_mm, aiming):
            return self._clean
        radius = np.float32(ring_mm * self.px_per_mm / 2.0)
        half = np.float32(self.ring_width_px / 2.0 + 0.5)
        # Area-weighted coverage of a band of the given width: 1 inside, 0 outside, linear over one pixel.
        coverage = np.clip(half - np.abs(self._radius_map - radius), 0.0, 1.0)
        image = self._background + np.float32(self.ring_level) * coverage
        if aiming:
            spot = np.clip(np.float32(AIM_SPOT_RADIUS_PX + 0.5) - self._radius_map, 0.0, 1.0)
            image = image + np.float32(AIM_SPOT_LEVEL) * spot
        if self.blur_sigma_px > 0.0:
            image = cv2.GaussianBlur(image, (0, 0), self.blur_sigma_px)
        self._clean = image.astype(np.float32, copy=False)
        self._clean_key = (ring_mm, aiming)
        return self._clean

    def _make_background(self, level: float, texture_sigma: float) -> npt.NDArray[np.float32]:
        field = self._rng.standard_normal((self.height, self.width), dtype=np.float32)
        texture = np.asarray(cv2.GaussianBlur(field, (0, 0), 9.0), dtype=np.float32)
        spread = float(texture.std())
        if spread > 0.0 and texture_sigma > 0.0:
            texture *= np.float32(texture_sigma / spread)
        else:
            texture[:] = 0.0
        # A gentle vignette: the corners are about 15 % darker than the centre.
        r2 = (self._radius_map / np.float32(math.hypot(self.width, self.height) / 2.0)) ** 2
        return np.asarray(np.float32(level) * (1.0 - 0.15 * r2) + texture, dtype=np.float32)

    def _make_noise_bank(self) -> list[npt.NDArray[np.float32]]:
        if self.noise_sigma <= 0.0:
            return []
        shape = (self.height + _NOISE_MARGIN_PX, self.width + _NOISE_MARGIN_PX)
        bank = []
        for _ in range(_NOISE_BANK_SIZE):
            field = self._rng.standard_normal(shape, dtype=np.float32)
            field *= np.float32(self.noise_sigma)
            bank.append(field)
        return bank

    def _draw_overlay(self, frame: Image) -> None:
        elapsed = time.monotonic() - self._started_at
        text = f"SIM  frame {self._frame_count}  t={elapsed:9.3f} s"
        cv2.putText(frame, text, (12, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (220, 220, 220), 1, cv2.LINE_AA)

    def _pace(self) -> None:
        if self.frame_rate_hz is None:
            return
        period = 1.0 / self.frame_rate_hz
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > period:
            # First frame, or the reader fell behind by more than a frame: resynchronise instead of bursting.
            self._next_due = now + period
            return
        wait = self._next_due - now
        self._next_due += period
        if wait > 0.0:
            self._released.wait(wait)


def _check_positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}, got {value}")
