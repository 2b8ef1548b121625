"""One simulated device on its own pseudo-terminal.

A :class:`PtyDevice` owns the master side of a pty and hands every received command line to a
:class:`LineHandler` (the device's firmware model); the handler's reply lines go back out with the device's
line ending. A driver opens :attr:`PtyDevice.path` (the slave, ``/dev/pts/N``) exactly as it would open a
real serial port, so driver code runs unchanged against the simulator.

Pty handling follows docs/devices.md: the slave is put in raw mode right after ``openpty`` (no echo, no line
discipline translating CR/LF), a slave descriptor stays open in the simulator for as long as the device is
plugged in (otherwise the master reads EIO whenever no driver has the port open), and output never blocks:
when the pty buffer is full the rest waits for the descriptor to become writable, and beyond
:data:`MAX_PENDING_OUTPUT` bytes waiting the oldest output is dropped, as a real UART overruns.

Stable names: with ``link`` the device also keeps a symbolic link at that path pointing at the current
slave. A replugged device gets a new pty, whose number may differ, but the link follows it, as a udev rule
gives a real device the same name after it is plugged back in. While unplugged the link does not exist.

Fault injection (the simulator command language of docs/devices.md): :meth:`unplug` / :meth:`replug`,
:attr:`stalled` (commands are read but nothing at all is sent, neither replies nor unsolicited output) and
:meth:`garbage`.

Input framing: a line ends at the last byte of ``eol`` (LF for both CR LF and LF devices); a CR left before
it is removed. More than ``max_line_bytes`` without a line end is "input too long": the bytes up to the next
line end are discarded, nothing is sent, and the handler's optional ``handle_overlong()`` is called so it
can queue its own error (the laser driver queues error 102).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import tty
from collections import deque
from pathlib import Path
from typing import Protocol, runtime_checkable

from devices.framing import LineFramer

_LOG = logging.getLogger(__name__)

#: Output bytes kept waiting for a reader before the oldest are dropped.
MAX_PENDING_OUTPUT = 64 * 1024
_READ_CHUNK = 4096
#: Received lines kept in :attr:`PtyDevice.history`.
HISTORY_LINES = 200


@runtime_checkable
class LineHandler(Protocol):
    """A device's firmware model: one received command line in, the reply lines out."""

    def handle_line(self, line: str) -> list[str]:
        """Handle one command line (without its line end) and return the reply lines (possibly none)."""
        ...


class PtyDevice:
    """A simulated serial device on a pty.

    ``name`` labels logs and errors; ``eol`` is the device's line ending (``b"\\r\\n"`` for the Arroyo-style
    laser and TEC, ``b"\\n"`` for the actuator and the safety board); ``max_line_bytes`` bounds one input
    line; ``link`` is an optional stable path kept pointing at the current slave; ``seed`` makes
    :meth:`garbage` reproducible.
    """

    def __init__(
        self,
        name: str,
        handler: LineHandler,
        *,
        eol: bytes,
        max_line_bytes: int = 256,
        link: str | os.PathLike[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if not eol:
            raise ValueError(f"{name}: eol must not be empty")
        if max_line_bytes < 1:
            raise ValueError(f"{name}: max_line_bytes must be at least 1, got {max_line_bytes}")
        self.name = name
        self.handler = handler
        self.eol = eol
        self.max_line_bytes = max_line_bytes
        self.link: Path | None = Path(link) if link is not None else None
        self.stalled: bool = False
        self._rng = random.Random(seed)
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path = ""
        # Framed on the last byte of the line end; a preceding CR is removed if present (see _feed).
        self._framer = LineFramer(self.eol[-1:], max_line_bytes)
        self._outbuf = bytearray()
        self._writer_registered = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._unplugged = False
        #: Counters for diagnostics and tests.
        self.lines_received = 0
        #: The most recent received lines (without line ends), oldest first.
        self.history: deque[str] = deque(maxlen=HISTORY_LINES)
        self.bytes_dropped = 0

    # ------------------------------------------------------------------------------------------ life cycle
    @property
    def path(self) -> str:
        """The slave path a driver opens (``/dev/pts/N``); empty while not started or unplugged."""
        return self._slave_path

    @property
    def port(self) -> str:
        """The name a driver should be configured with: the stable link when there is one, else
        :attr:`path`."""
        return str(self.link) if self.link is not None else self._slave_path

    @property
    def pending_output_bytes(self) -> int:
        """Output bytes waiting for the pty to accept them."""
        return len(self._outbuf)

    @property
    def plugged(self) -> bool:
        """True while the device's pty exists."""
        return self._master is not None

    async def start(self) -> None:
        """Create the pty and start answering. Idempotent."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._unplugged = False
        self._open_pty()

    async def stop(self) -> None:
        """Close the pty and remove the link. Idempotent."""
        self._close_pty()
        self._started = False
        self._unplugged = False

    def _open_pty(self) -> None:
        assert self._loop is not None
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._slave_path = os.ttyname(slave)
            self._loop.add_reader(master, self._on_readable)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave = master, slave
        self._framer.clear()
        self._outbuf.clear()
        if self.link is not None:
            temp = self.link.with_name(f".{self.link.name}.new")
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            os.symlink(self._slave_path, temp)
            os.replace(temp, self.link)

    def _close_pty(self) -> None:
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        if self._master is not None and self._loop is not None:
            self._loop.remove_reader(self._master)
            if self._writer_registered:
                self._loop.remove_writer(self._master)
        self._writer_registered = False
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._slave_path = ""
        self._framer.clear()
        self._outbuf.clear()

    # ---------------------------------------------------------------------------------------------- faults
    def unplug(self) -> None:
        """The port disappears: master and slave are closed, so a driver holding the port sees EOF/EIO."""
        if not self._started:
            raise RuntimeError(f"{self.name}: not started")
        if self._unplugged:
            raise RuntimeError(f"{self.name}: already unplugged")
        self._close_pty()
        self._unplugged = True

    def replug(self) -> None:
        """Plug the device back in on a new pty; :attr:`path` may change, :attr:`link` follows it."""
        if not self._started:
            raise RuntimeError(f"{self.name}: not started")
        if not self._unplugged:
            raise RuntimeError(f"{self.name}: not unplugged")
        self._open_pty()
        self._unplugged = False

    def garbage(self, n: int) -> None:
        """Send ``n`` random bytes (never CR or LF, so they corrupt the next line instead of framing their
        own)."""
        if n < 1:
            raise ValueError(f"{self.name}: garbage needs at least 1 byte, got {n}")
        choices = [b for b in range(256) if b not in (0x0A, 0x0D)]
        self.write_raw(bytes(self._rng.choice(choices) for _ in range(n)))

    # ---------------------------------------------------------------------------------------------- output
    def emit(self, line: str) -> None:
        """Send one unsolicited line (push event, stream sample). Never blocks; dropped while
        stalled/unplugged."""
        self.write_raw(line.encode("ascii", errors="replace") + self.eol)

    def write_raw(self, data: bytes) -> None:
        """Send exact bytes to the driver. Never blocks; dropped while stalled or unplugged."""
        if self.stalled or self._master is None or not data:
            return
        self._outbuf.extend(data)
        overflow = len(self._outbuf) - MAX_PENDING_OUTPUT
        if overflow > 0:
            del self._outbuf[:overflow]
            self.bytes_dropped += overflow
        self._flush()

    def _flush(self) -> None:
        master = self._master
        if master is None:
            return
        while self._outbuf:
            try:
                written = os.write(master, self._outbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:
                    # Nobody can read yet; keep the bytes until a reader opens the port or they overflow.
                    break
                raise
            del self._outbuf[:written]
        want_writer = bool(self._outbuf)
        if want_writer != self._writer_registered and self._loop is not None:
            if want_writer:
                self._loop.add_writer(master, self._flush)
            else:
                self._loop.remove_writer(master)
            self._writer_registered = want_writer

    # ----------------------------------------------------------------------------------------------- input
    def _on_readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        if data:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        strip = self.eol[:-1]
        lines, overrun = self._framer.feed(data)
        for raw in lines:
            if strip and raw.endswith(strip):
                raw = raw[: -len(strip)]
            self._dispatch(raw)
        if overrun is not None:
            self._overlong()

    def _overlong(self) -> None:
        hook = getattr(self.handler, "handle_overlong", None)
        if callable(hook):
            hook()

    def _dispatch(self, raw: bytes) -> None:
        self.lines_received += 1
        if len(raw) > self.max_line_bytes:
            self._overlong()
            return
        line = raw.decode("latin-1")
        self.history.append(line)
        try:
            replies = self.handler.handle_line(line)
        except Exception:
            _LOG.exception("%s: simulator failed on %r", self.name, line)
            return
        for reply in replies:
            self.emit(reply)
