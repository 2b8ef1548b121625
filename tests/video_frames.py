"""Counting the frames a video decodes to, for the tests of recorded (and decrypted) session videos."""

from __future__ import annotations

from pathlib import Path

import cv2

#: The first bytes of a Matroska file.
EBML = b"\x1a\x45\xdf\xa3"


def decoded_frames(video: bytes, copy: Path) -> int:
    """The frames OpenCV decodes from ``video`` (written to the temporary ``copy``, then removed)."""
    copy.write_bytes(video)
    try:
        capture = cv2.VideoCapture(str(copy))
        count = 0
        while capture.read()[0]:
            count += 1
        capture.release()
    finally:
        copy.unlink()
    return count
