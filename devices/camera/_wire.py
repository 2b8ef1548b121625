"""The messages between the controller and its camera process, over one Unix stream socket.

Each message is a 4-byte big-endian length followed by that many bytes of a pickled tuple. Both ends are this
program (the camera process is started by the controller from the same installation), so the tuples carry the
camera's own types:

- camera process to controller: ``("health", CaptureHealth)`` every health period, and
  ``("reply", call_id, True, value)`` or ``("reply", call_id, False, (exception_name, message))``;
- controller to camera process: ``("call", call_id, operation, keyword_arguments)``.

The operations are ``start_recording``, ``stop_recording``, ``snapshot``, ``save_snapshots``, ``focus_stack``,
``preview`` and ``close``
(:mod:`devices.camera._worker`).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from devices.camera._analysis import FrameAnalysis

#: Nice value of the camera process (the controller runs at -10 where the system grants it).
DEFAULT_PROCESS_NICE = 10
#: Seconds between two health records the camera process sends.
DEFAULT_HEALTH_PERIOD_S = 0.1

_HEADER = struct.Struct("!I")
#: The largest message accepted, bytes (a preview JPEG is a few KiB; a health record a few hundred bytes).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """A preview made by the camera process: the newest frame, downscaled, with the detected ring drawn.

    Attributes:
        sequence: the frame's sequence number.
        expected_mm: the ring diameter the search was narrowed to, mm, or None.
        jpeg: the JPEG bytes.
        width: the image's width, pixels.
        height: the image's height, pixels.
        analysis: ring and focus score found in the full-resolution frame.
    """

    sequence: int
    expected_mm: float | None
    jpeg: bytes
    width: int
    height: int
    analysis: FrameAnalysis


def encode(message: tuple[Any, ...]) -> bytes:
    """One message as it goes on the socket."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"a camera message of {len(body)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    return _HEADER.pack(len(body)) + body


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None when the other end has closed the socket."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE_BYTES:
            raise ValueError(f"a camera message of {size} bytes is over the {MAX_MESSAGE_BYTES} limit")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    message = pickle.loads(body)
    if not isinstance(message, tuple) or not message:
        raise ValueError(f"a camera message must be a non-empty tuple, got {type(message).__name__}")
    return message
