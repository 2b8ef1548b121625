"""Small preview images for the console: a downscaled frame with the detected ring drawn on it.

The controller pushes camera previews to the console a few times per second; they are encoded as JPEG to keep
each message small.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from devices.camera._analysis import RingDetection
from devices.camera._frames import to_grey

RING_COLOUR_BGR = (0, 200, 0)
"""Colour of the detected ring's outline in previews (green)."""

MIN_PREVIEW_WIDTH = 16
MAX_PREVIEW_WIDTH = 1920


def make_preview(
    image: npt.NDArray[np.generic], ring: RingDetection | None = None, *, width: int = 320
) -> npt.NDArray[np.uint8]:
    """A BGR preview ``width`` pixels wide (height keeps the aspect ratio) of a camera image, with the
    detected ring (centre and diameter in full-resolution pixels) outlined and its centre marked.

    Raises ValueError for a width outside 16..1920 px or an image :func:`to_grey` refuses.
    """
    if isinstance(width, bool) or not isinstance(width, int):
        raise ValueError(f"preview width must be an integer, got {width!r}")
    if not MIN_PREVIEW_WIDTH <= width <= MAX_PREVIEW_WIDTH:
        raise ValueError(
            f"preview width must be within {MIN_PREVIEW_WIDTH}..{MAX_PREVIEW_WIDTH} px, got {width}"
        )
    grey = to_grey(image)
    full_h, full_w = grey.shape
    scale = width / full_w
    height = max(1, round(full_h * scale))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(grey, (width, height), interpolation=interpolation)
    preview = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    if ring is not None:
        shift = 4  # OpenCV draws with 1/16 px precision
        factor = 1 << shift
        cx = round((ring.centre_px[0] + 0.5) * scale * factor - 0.5 * factor)
        cy = round((ring.centre_px[1] + 0.5) * scale * factor - 0.5 * factor)
        radius = round(ring.diameter_px / 2.0 * scale * factor)
        cv2.circle(preview, (cx, cy), radius, RING_COLOUR_BGR, 1, cv2.LINE_AA, shift)
        arm = 4 * factor
        cv2.line(preview, (cx - arm, cy), (cx + arm, cy), RING_COLOUR_BGR, 1, cv2.LINE_AA, shift)
        cv2.line(preview, (cx, cy - arm), (cx, cy + arm), RING_COLOUR_BGR, 1, cv2.LINE_AA, shift)
    return np.asarray(preview, dtype=np.uint8)


def encode_jpeg(image: npt.NDArray[np.generic], *, quality: int = 80) -> bytes:
    """Encode a grey or BGR uint8 image as JPEG bytes; ``quality`` is 1..100. Raises ValueError for bad
    input."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer 1..100, got {quality!r}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        raise ValueError("a JPEG preview needs a non-empty uint8 image")
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        raise ValueError(f"a JPEG preview needs a grey or BGR image, got shape {image.shape}")
    ok, encoded = cv2.imencode(".jpg", np.asarray(image, dtype=np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("the image could not be encoded as JPEG")
    return encoded.tobytes()
