"""Console previews: a downscaled frame with the detected ring drawn where it is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from devices.camera import RingDetector, encode_jpeg, make_preview
from devices.sim.camera import SimCameraSource


def _frame() -> np.ndarray:
    source = SimCameraSource(ring_mm=lambda: 3.0, frame_rate_hz=None, seed=41, centre_offset_px=(80.0, -40.0))
    ok, frame = source.read()
    assert ok and frame is not None
    return frame


def test_preview_is_downscaled_and_outlines_the_ring() -> None:
    frame = _frame()
    ring = RingDetector().detect_ring(frame)
    assert ring is not None
    preview = make_preview(frame, ring, width=320)
    assert preview.shape == (180, 320, 3) and preview.dtype == np.uint8
    green = (preview[..., 1].astype(int) - preview[..., 2].astype(int)) > 60
    ys, xs = np.nonzero(green)
    assert xs.size > 100
    # The outline's extent matches the ring: centre (720, 320) px and radius 150 px at full size, / 4.
    assert (xs.min() + xs.max()) / 2 == pytest.approx(720 / 4, abs=2)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(320 / 4, abs=2)
    assert (xs.max() - xs.min()) / 2 == pytest.approx(150 / 4, abs=2)


def test_preview_without_a_ring_is_plain_grey() -> None:
    preview = make_preview(_frame(), None, width=160)
    assert preview.shape == (90, 160, 3)
    assert np.array_equal(preview[..., 0], preview[..., 1])
    assert np.array_equal(preview[..., 1], preview[..., 2])


def test_jpeg_round_trip() -> None:
    preview = make_preview(_frame(), None, width=320)
    data = encode_jpeg(preview, quality=70)
    assert data[:2] == b"\xff\xd8"
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert back is not None and back.shape == preview.shape
    assert float(np.abs(back.astype(int) - preview.astype(int)).mean()) < 4.0


@pytest.mark.parametrize("width", [0, 8, 5000, 320.0, True])
def test_preview_refuses_bad_widths(width: object) -> None:
    with pytest.raises(ValueError, match="width"):
        make_preview(_frame(), None, width=width)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "quality", "message"),
    [
        (np.zeros((8, 8), np.uint8), 0, "quality"),
        (np.zeros((8, 8), np.uint8), 101, "quality"),
        (np.zeros((8, 8), np.float32), 80, "uint8"),
        (np.zeros((8, 8, 2), np.uint8), 80, "grey or BGR"),
    ],
)
def test_jpeg_refuses_bad_input(image: np.ndarray, quality: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_jpeg(image, quality=quality)
