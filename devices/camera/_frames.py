"""Frames as they travel from the capture thread to the analysis, and their conversion to 8-bit grey."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.generic]
GreyImage = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """One frame read from the camera.

    Attributes:
        sequence: 1-based number of the frame among all frames the capture has read.
        timestamp: ``time.monotonic()`` seconds when the read returned.
        image: the frame as the source delivered it (usually BGR, uint8, height x width x 3).
        grey: the same frame as 8-bit grayscale, height x width.
    """

    sequence: int
    timestamp: float
    image: Image
    grey: GreyImage

    @property
    def size(self) -> tuple[int, int]:
        """Frame size as (width, height) in pixels."""
        return int(self.grey.shape[1]), int(self.grey.shape[0])


def to_grey(image: Image) -> GreyImage:
    """Convert a camera image to 8-bit grayscale (height x width, uint8).

    Accepts grey (H x W or H x W x 1), BGR (H x W x 3) and BGRA (H x W x 4) images of 8-bit or 16-bit unsigned
    integers, or floats in 0..255. ``VideoCapture`` returns three channels even from a grey file, so a BGR
    image is the usual input. Raises ValueError for anything else.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"a camera image must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError("a camera image must not be empty")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        grey = image
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        grey = image
    else:
        raise ValueError(
            f"unsupported camera image shape {image.shape}: expected H x W, H x W x 3 or H x W x 4"
        )
    grey = _to_uint8(grey)
    if grey.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if grey.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        grey = cv2.cvtColor(grey, code)
    return np.ascontiguousarray(grey)


def _to_uint8(image: Image) -> GreyImage:
    if image.dtype == np.uint8:
        return image  # type: ignore[return-value]
    if image.dtype == np.uint16:
        return np.asarray(
            cv2.convertScaleAbs(np.asarray(image, dtype=np.uint16), alpha=1.0 / 257.0), dtype=np.uint8
        )
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError("a floating-point camera image contains NaN or infinite values")
        return np.rint(np.clip(image, 0.0, 255.0)).astype(np.uint8)
    raise ValueError(f"unsupported camera image type {image.dtype}: expected uint8, uint16 or float")
