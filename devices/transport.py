"""Async line transport over a serial port (``pyserial-asyncio-fast``).

Every device of the rig speaks ASCII lines: the Arroyo laser driver and TEC end lines with CR LF, the
actuator and the safety board with LF. :class:`LineTransport` owns one port and gives the drivers three
things:

- :meth:`LineTransport.query`: send a command and wait for its reply line(s), with a timeout (default 250 ms);
- :meth:`LineTransport.write`: send a set command that has no reply;
- :meth:`LineTransport.subscribe`: a queue of the unsolicited lines (push events, stream samples) the device
  sends by itself, as told apart by ``is_unsolicited``; :meth:`LineTransport.on_unsolicited` hands each of
  them to a callback instead, synchronously, in the callback that read the bytes (no task switch between the
  port becoming readable and the driver acting on the line).

Rules (docs/devices.md, "General rules for every driver"):

- Exchanges are serialised by a lock: one command is in flight at a time.
- A received line must be printable ASCII and at most ``max_line_bytes`` long; anything else (undecodable
  bytes, control characters, over-long lines) is counted as a bad reply and dropped. A bad line arriving
  while a query waits fails that query with :class:`BadReply` at once. A line arriving when no query waits
  (a late reply after a timeout, noise) is also counted as bad.
- A query with no complete reply within its timeout raises :class:`LinkTimeout` and counts as a bad reply.
- A driver that finds a well-framed reply malformed calls :meth:`LineTransport.bad_reply`, which counts it and
  returns the :class:`BadReply` to raise.
- Three bad replies in a row put the link in :attr:`LinkState.FAULTY`, reported through the state callbacks at
  once. A reply the driver accepts (it starts its next exchange without calling ``bad_reply``) clears the
  count and returns a FAULTY link to OPEN; the safety supervisor latches its own fault, so this never
  restores emission.
- :meth:`LineTransport.write_now` (the laser's "output off") writes at once and then, when the calling
  thread is real-time, lets it sleep for :data:`HAND_ON_S`: a pseudo-terminal, and serial drivers that push
  data through the kernel's workqueue, hand the line on from a normal-priority kernel worker, which a
  real-time loop thread on the same CPU would otherwise hold off until it next waits.
- When the port disappears (EOF/EIO) the link goes RECONNECTING and reopens the port with backoff (0.1 s
  doubling to 2 s). Reconnecting sends nothing to the device: it never restores any output by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Callable
from typing import Literal, TypeVar, overload

import serial
import serial_asyncio_fast

from devices.framing import LineFramer

_LOG = logging.getLogger(__name__)

#: Consecutive bad replies that mark a link FAULTY.
FAULT_AFTER_BAD_REPLIES = 3
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
#: Unsolicited lines kept per subscriber before the oldest are dropped.
SUBSCRIBER_QUEUE_SIZE = 1000
#: After a failed exchange, the next one first waits for the line to stay quiet this long (s), dropping late
#: replies, so a reply that arrives after its query gave up is never taken for the answer to the next query.
RESYNC_QUIET_S = 0.02
#: After :meth:`LineTransport.write_now`, the calling thread sleeps this long (s), so that the kernel worker
#: that hands the written line on (a pty's, or a workqueue-driven serial driver's) can run on this CPU even
#: when this thread is real-time; measured: 20 us is enough on an idle core, 5 us is not.
HAND_ON_S = 50e-6


def _real_time() -> bool:
    """Whether the calling thread runs under a real-time scheduling policy (SCHED_FIFO or SCHED_RR)."""
    try:
        policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK  # the kiosk's flag comes with the policy
    except (AttributeError, OSError):
        return False
    return policy in (os.SCHED_FIFO, os.SCHED_RR)


class LinkError(Exception):
    """A failure of the serial link to a device."""


class LinkTimeout(LinkError):
    """No complete reply arrived within the timeout."""


class BadReply(LinkError):
    """A reply was malformed (garbage, wrong form, out of range)."""


class LinkDown(LinkError):
    """The port is closed, could not be opened, or disappeared."""


_E = TypeVar("_E", bound=LinkError)


class LinkState(enum.Enum):
    """State of a :class:`LineTransport`."""

    CLOSED = "closed"
    OPEN = "open"
    FAULTY = "faulty"
    RECONNECTING = "reconnecting"


StateCallback = Callable[["LinkState"], None]


class _Pending:
    """A query waiting for ``count`` reply lines."""

    def __init__(self, count: int, future: asyncio.Future[list[str]]) -> None:
        self.count = count
        self.lines: list[str] = []
        self.future = future


class _LineProtocol(asyncio.Protocol):
    """Frames bytes from the serial transport into lines and hands them to the owning
    :class:`LineTransport`."""

    def __init__(self, owner: LineTransport) -> None:
        self._owner = owner
        self._framer = LineFramer(owner.eol, owner.max_line_bytes)
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        lines, overrun = self._framer.feed(data)
        for raw in lines:
            owner._on_raw_line(raw)
        if overrun is not None:
            owner._on_bad_line(f"over-long line (more than {owner.max_line_bytes} bytes, {overrun} so far)")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._on_connection_lost(self, exc)


class LineTransport:
    """One device's serial port, carrying ASCII command lines and their replies.

    ``port`` is the device path, ``baudrate`` in bit/s, ``eol`` the line ending used both ways,
    ``timeout_s`` the default reply timeout in seconds, ``max_line_bytes`` the longest acceptable reply line
    (without the line end), and ``is_unsolicited(line)`` tells lines the device sends by itself from replies.
    """

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int,
        eol: bytes,
        timeout_s: float = 0.25,
        max_line_bytes: int = 256,
        is_unsolicited: Callable[[str], bool] = lambda line: False,
    ) -> None:
        if not eol or any(b not in (0x0A, 0x0D) for b in eol):
            raise ValueError(f"{name}: eol must be made of CR/LF bytes, got {eol!r}")
        if timeout_s <= 0:
            raise ValueError(f"{name}: timeout_s must be positive, got {timeout_s}")
        if baudrate <= 0:
            raise ValueError(f"{name}: baudrate must be positive, got {baudrate}")
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self.eol = eol
        self.timeout_s = timeout_s
        self.max_line_bytes = max_line_bytes
        self.is_unsolicited = is_unsolicited
        self.state = LinkState.CLOSED
        self.bad_reply_count = 0
        self.consecutive_bad = 0
        #: The last problem seen on the link, in words (None until one happens).
        self.last_error: str | None = None
        #: Monotonic time (s) of the last line received, or None.
        self.last_rx_monotonic: float | None = None
        self._callbacks: list[StateCallback] = []
        self._subscribers: list[asyncio.Queue[str]] = []
        self._unsolicited_handler: Callable[[str, float], None] | None = None
        self._lock = asyncio.Lock()
        self._serial_transport: asyncio.Transport | None = None
        self._protocol: _LineProtocol | None = None
        self._pending: _Pending | None = None
        self._unconfirmed = False
        self._resync = False
        self._rx_lines = 0
        #: Lines dropped while resynchronising after a failed exchange.
        self.discarded_lines = 0
        self._reconnect_task: asyncio.Task[None] | None = None
        self._stop_reconnecting = asyncio.Event()
        self._closing = False

    def __repr__(self) -> str:
        return f"<LineTransport {self.name} {self.port} {self.state.value}>"

    # ------------------------------------------------------------------------------------------ state
    def on_state_change(self, cb: StateCallback) -> None:
        """Call ``cb(new_state)`` on every state change, synchronously, as soon as it happens."""
        self._callbacks.append(cb)

    def _set_state(self, state: LinkState) -> None:
        if state == self.state:
            return
        self.state = state
        _LOG.info("%s: link %s", self.name, state.value)
        for cb in list(self._callbacks):
            try:
                cb(state)
            except Exception:
                _LOG.exception("%s: state callback failed", self.name)

    # --------------------------------------------------------------------------------------- open/close
    async def open(self) -> None:
        """Open the port. Raises :class:`LinkDown` (with the reason) if it cannot be opened."""
        if self.state in (LinkState.OPEN, LinkState.FAULTY):
            return
        if self._reconnect_task is not None:
            raise LinkDown(f"{self.name}: reconnecting to {self.port}")
        self._closing = False
        await self._connect()
        self.consecutive_bad = 0
        self._set_state(LinkState.OPEN)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await serial_asyncio_fast.create_serial_connection(
                loop,
                lambda: _LineProtocol(self),
                self.port,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                exclusive=True,
            )
        except (OSError, serial.SerialException, ValueError) as exc:
            self.last_error = f"cannot open {self.port}: {exc}"
            raise LinkDown(f"{self.name}: {self.last_error}") from exc
        self._serial_transport = transport
        assert isinstance(protocol, _LineProtocol)
        self._protocol = protocol

    async def close(self) -> None:
        """Close the port and stop reconnecting; waits until the port is really closed. Idempotent."""
        self._closing = True
        self._stop_reconnecting.set()
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            # Not cancelled: an open in progress finishes and is closed again, leaving no descriptor open.
            await task
        await self._drop_connection()
        self._fail_pending(LinkDown(f"{self.name}: closed"))
        self._set_state(LinkState.CLOSED)

    async def _drop_connection(self) -> None:
        transport, protocol = self._serial_transport, self._protocol
        self._serial_transport = None
        if transport is not None and protocol is not None:
            transport.close()
            await protocol.closed
        self._protocol = None

    def _on_connection_lost(self, protocol: _LineProtocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._serial_transport = None
        if self._closing:
            return
        self.last_error = f"port lost: {exc}" if exc else "port lost"
        _LOG.warning("%s: %s", self.name, self.last_error)
        self._fail_pending(LinkDown(f"{self.name}: {self.last_error}"))
        self._set_state(LinkState.RECONNECTING)
        self._stop_reconnecting = asyncio.Event()
        self._reconnect_task = asyncio.get_running_loop().create_task(
            self._reconnect(), name=f"{self.name}-reconnect"
        )

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_reconnecting.wait(), delay)
            if self._closing:
                return
            try:
                await self._connect()
            except LinkDown:
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if self._closing:
                await self._drop_connection()
                return
            self._reconnect_task = None
            self.consecutive_bad = 0
            self._unconfirmed = False
            self._set_state(LinkState.OPEN)
            return

    async def wait_for_state(self, state: LinkState, timeout_s: float) -> None:
        """Wait until the link is in ``state``; raises :class:`LinkTimeout` after ``timeout_s`` seconds."""
        if self.state == state:
            return
        reached = asyncio.Event()

        def watch(new: LinkState) -> None:
            if new == state:
                reached.set()

        self._callbacks.append(watch)
        try:
            await asyncio.wait_for(reached.wait(), timeout_s)
        except TimeoutError as exc:
            raise LinkTimeout(f"{self.name}: still {self.state.value}, not {state.value}") from exc
        finally:
            self._callbacks.remove(watch)

    # ---------------------------------------------------------------------------------------- exchanges
    def _encode(self, command: str) -> bytes:
        if not command:
            raise ValueError(f"{self.name}: empty command")
        if any(not (" " <= ch <= "~") for ch in command):
            raise ValueError(f"{self.name}: command must be printable ASCII without line ends: {command!r}")
        return command.encode("ascii") + self.eol

    def _ready(self) -> asyncio.Transport:
        if self._unconfirmed:
            # The previous reply was accepted by the driver (it did not call bad_reply).
            self._unconfirmed = False
            self.consecutive_bad = 0
            if self.state == LinkState.FAULTY:
                self._set_state(LinkState.OPEN)
        transport = self._serial_transport
        if transport is None or self.state not in (LinkState.OPEN, LinkState.FAULTY):
            raise LinkDown(f"{self.name}: link {self.state.value}")
        return transport

    async def write(self, command: str, *, guard: Callable[[], bool] | None = None) -> bool:
        """Send a set command (no reply expected). Raises ValueError for a malformed command, LinkDown if
        down.

        ``guard``, when given, is called once the link is free, immediately before the bytes are written (no
        task switch in between); when it returns False nothing is sent and the result is False.
        """
        data = self._encode(command)
        async with self._lock:
            if guard is not None and not guard():
                return False
            self._ready().write(data)
            return True

    def write_now(self, command: str) -> None:
        """Send a set command at once, without waiting for an exchange in flight (no reply is expected).

        For the one command that must never queue behind a slow reply: the laser's "output off". A set
        command has no reply, so it cannot be taken for the answer to a pending query. Raises ValueError for
        a malformed command, :class:`LinkDown` if the link is down.

        A real-time calling thread (SCHED_FIFO or SCHED_RR) then sleeps for :data:`HAND_ON_S` (blocking, on
        purpose): the kernel worker that hands the line on to the device (a pty's flip buffer, a serial
        driver's workqueue) is an ordinary kernel thread, which a real-time caller on the same CPU would
        otherwise keep from running until the loop has nothing left to do. A caller at normal priority does
        not hold it off, and does not sleep.
        """
        self._ready_now().write(self._encode(command))
        if _real_time():
            time.sleep(HAND_ON_S)

    def _ready_now(self) -> asyncio.Transport:
        transport = self._serial_transport
        if transport is None or self.state not in (LinkState.OPEN, LinkState.FAULTY):
            raise LinkDown(f"{self.name}: link {self.state.value}")
        return transport

    @overload
    async def query(self, command: str, *, timeout_s: float | None = None, lines: Literal[1] = 1) -> str: ...

    @overload
    async def query(
        self, command: str, *, timeout_s: float | None = None, lines: Literal[2, 3, 4]
    ) -> list[str]: ...

    async def query(self, command: str, *, timeout_s: float | None = None, lines: int = 1) -> list[str] | str:
        """Send ``command`` and return its reply: one line as ``str`` when ``lines == 1``, else a list of
        lines.

        Raises :class:`LinkTimeout` when the reply is not complete within ``timeout_s`` seconds (default: the
        transport's), :class:`BadReply` when a malformed line arrives, :class:`LinkDown` when the link is
        down.
        """
        if lines < 1:
            raise ValueError(f"{self.name}: lines must be at least 1, got {lines}")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if timeout <= 0:
            raise ValueError(f"{self.name}: timeout_s must be positive, got {timeout}")
        data = self._encode(command)
        async with self._lock:
            transport = self._ready()
            if self._resync:
                await self._wait_quiet(timeout)
                transport = self._ready()
            self._drain_input(transport)
            future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
            self._pending = _Pending(lines, future)
            try:
                transport.write(data)
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands
                    # just as the reply arrives, leaving a cancelled caller running.
                    async with asyncio.timeout(timeout):
                        reply = await future
                except TimeoutError:
                    got = self._pending.lines if self._pending is not None else []
                    raise self._count_bad(
                        LinkTimeout, f"no reply to {command!r} within {timeout * 1000:.0f} ms (got {got!r})"
                    ) from None
            except LinkError:
                self._resync = True
                raise
            finally:
                self._pending = None
        self._unconfirmed = True
        return reply[0] if lines == 1 else reply

    async def _wait_quiet(self, limit_s: float) -> None:
        """Drop whatever arrives until the line has been quiet for RESYNC_QUIET_S (at most ``limit_s`` s)."""
        self._resync = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(limit_s, RESYNC_QUIET_S)
        while loop.time() < deadline:
            seen = self._rx_lines
            await asyncio.sleep(RESYNC_QUIET_S)
            if self._rx_lines == seen:
                return

    def _drain_input(self, transport: asyncio.Transport) -> None:
        """Hand bytes already waiting in the port to the framer, so stale input is never taken as the
        reply."""
        port = getattr(transport, "serial", None)
        protocol = self._protocol
        if port is None or protocol is None:
            return
        try:
            waiting = port.in_waiting
            data = port.read(waiting) if waiting else b""
        except (OSError, serial.SerialException):
            return
        if data:
            protocol.data_received(data)

    def _fail_pending(self, exc: LinkError) -> None:
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(exc)
            # Mark it retrieved so an abandoned future does not warn.
            pending.future.exception()

    # -------------------------------------------------------------------------------------- bad replies
    def bad_reply(self, line: str, reason: str) -> BadReply:
        """Count a reply the driver found malformed and return the :class:`BadReply` for it to raise."""
        self._unconfirmed = False
        return self._count_bad(BadReply, f"{reason}: {line!r}")

    def _count_bad(self, kind: type[_E], message: str) -> _E:
        self.bad_reply_count += 1
        self.consecutive_bad += 1
        self.last_error = message
        _LOG.warning("%s: %s", self.name, message)
        if self.consecutive_bad >= FAULT_AFTER_BAD_REPLIES and self.state == LinkState.OPEN:
            self._set_state(LinkState.FAULTY)
        return kind(f"{self.name}: {message}")

    def _on_bad_line(self, reason: str) -> None:
        exc = self._count_bad(BadReply, reason)
        self._fail_pending(exc)

    # ------------------------------------------------------------------------------------------- lines
    def _on_raw_line(self, raw: bytes) -> None:
        received = self.last_rx_monotonic = time.monotonic()
        self._rx_lines += 1
        if len(raw) > self.max_line_bytes:
            self._on_bad_line(f"over-long line ({len(raw)} bytes, at most {self.max_line_bytes})")
            return
        if any(b < 0x20 or b > 0x7E for b in raw):
            self._on_bad_line(f"undecodable or control bytes in line {raw[:40]!r}")
            return
        line = raw.decode("ascii")
        if self.is_unsolicited(line):
            handler = self._unsolicited_handler
            if handler is not None:
                try:
                    handler(line, received)
                except Exception:
                    _LOG.exception("%s: unsolicited line handler failed on %r", self.name, line)
            for queue in self._subscribers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(line)
            return
        pending = self._pending
        if pending is None or pending.future.done():
            if self._resync:
                self.discarded_lines += 1
                _LOG.info("%s: dropped late line %r", self.name, line)
                return
            self._count_bad(BadReply, f"unexpected line with no query waiting: {line!r}")
            return
        pending.lines.append(line)
        if len(pending.lines) >= pending.count:
            pending.future.set_result(pending.lines)

    def on_unsolicited(self, handler: Callable[[str, float], None] | None) -> None:
        """Call ``handler(line, received)`` with every unsolicited line from now on, synchronously, as soon as
        the line is framed (``received``: monotonic time, s, the bytes were taken from the port); ``None``
        stops it. One handler at a time; it must not block. Subscribers' queues get the lines as well."""
        self._unsolicited_handler = handler

    def subscribe(self) -> asyncio.Queue[str]:
        """A new queue receiving every unsolicited line from now on (oldest dropped beyond 1000 waiting)."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE_SIZE)
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        """Stop delivering to ``queue``. Unknown queues are ignored."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)
