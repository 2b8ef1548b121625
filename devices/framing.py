"""Splitting a byte stream into lines, with a bound on line length.

Used on both ends of a serial link: by :class:`devices.transport.LineTransport` for the replies a device
sends, and by the simulators' :class:`devices.sim.pty.PtyDevice` for the commands a driver sends.
"""

from __future__ import annotations


class LineFramer:
    """Collects bytes and returns the complete lines ending in ``terminator`` (without it).

    When more than ``max_line_bytes`` accumulate with no terminator, they are dropped, the overrun is reported
    once, and everything up to the next terminator is dropped too (the rest of that over-long line).
    """

    def __init__(self, terminator: bytes, max_line_bytes: int) -> None:
        if not terminator:
            raise ValueError("a line terminator needs at least one byte")
        self.terminator = terminator
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> tuple[list[bytes], int | None]:
        """Add ``data``; return the lines it completed, and the number of bytes dropped when an over-long
        line started in it (None otherwise). The over-long report comes after the returned lines."""
        buffer = self._buffer
        buffer.extend(data)
        lines: list[bytes] = []
        size = len(self.terminator)
        while (index := buffer.find(self.terminator)) >= 0:
            raw = bytes(buffer[:index])
            del buffer[: index + size]
            if self._discarding:
                self._discarding = False
                continue
            lines.append(raw)
        overrun: int | None = None
        if len(buffer) > self.max_line_bytes:
            dropped = len(buffer)
            buffer.clear()
            if not self._discarding:
                self._discarding = True
                overrun = dropped
        return lines, overrun

    def clear(self) -> None:
        """Forget any partial line (the link was closed or replaced)."""
        self._buffer.clear()
        self._discarding = False
