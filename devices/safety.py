"""Driver for the safety board: TOSCA safety firmware, protocol 3 (docs/devices.md, "Safety board").

Link: 115200 baud 8N1, ASCII lines ending LF. Three kinds of line come from the board:

* command replies (``OK:...``, ``PHOTODIODE:...``, ``ERROR:...``), one per command (two for a clamped motor
  speed);
* push events ``EVT:FOOTPEDAL|ESTOP|ENABLE:<0|1>`` and ``EVT:WDT:1``, sent at once on every change;
* sample lines ``S:<ms>,<photodiode_v>,<pedal>,<estop>,<vibration_g>,<enable>`` at the streaming rate.

``STATUS?`` (firmware 3.1 and later) reads the board's arming and watchdog state, which no push event reports
to a driver that was not listening when it changed (a watchdog left expired by a controller that died);
:meth:`SafetyBoardDriver.read_status` raises :class:`UnknownCommand` on firmware 3.0.

The driver installs ``is_unsolicited`` on its transport so that ``EVT:`` and ``S:`` lines never satisfy a
pending command, even when one arrives between a command and its reply. Between
:meth:`SafetyBoardDriver.start` and :meth:`SafetyBoardDriver.close` the transport hands each of them to the
driver synchronously, in the callback that read the bytes from the port (in arrival order, with no task
switch): the driver parses it into a :class:`SafetyEvent` or a :class:`SafetySample` stamped with the
monotonic time (s) its bytes were read, keeps the latest state, calls its listeners (the safety supervisor)
and hands it to every open :class:`EventStream` / :class:`SampleStream`. Event streams never drop an event;
sample streams keep the newest ``maxsize`` samples.

The heartbeat (``WDT_RESET``) runs as its own task, started and stopped explicitly, at a period that must be
well under the watchdog timeout (at most a third of it; a quarter by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from devices.transport import LineTransport, LinkError

_LOG = logging.getLogger(__name__)

PROTOCOL_MAJOR = "3"
WDT_MIN_MS = 100
WDT_MAX_MS = 2000
WDT_DEFAULT_MS = 1000
PWM_MAX = 153
#: Largest value the firmware accepts for MOTOR_SPEED (one byte); above PWM_MAX it clamps with a warning.
PWM_COMMAND_MAX = 255
STREAM_MIN_HZ = 10
STREAM_MAX_HZ = 200


def is_unsolicited(line: str) -> bool:
    """True for the lines the board sends by itself: push events and stream samples."""
    return line.startswith(("EVT:", "S:"))


class SafetyBoardError(Exception):
    """The safety board refused a command or answered something unexpected."""


class VersionMismatch(SafetyBoardError):
    """The board does not run protocol 3 firmware."""


class NotReady(SafetyBoardError):
    """``ARM`` refused: ``reason`` is ``ESTOP`` (E-stop pressed) or ``WDT`` (watchdog expired: WDT_CLEAR)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"safety board not ready to arm: {reason}")


class UnknownCommand(SafetyBoardError):
    """The board answered ``ERROR:UNKNOWN_COMMAND``."""


class EventKind(enum.Enum):
    """What a push event reports."""

    FOOTPEDAL = "FOOTPEDAL"
    ESTOP = "ESTOP"
    ENABLE = "ENABLE"
    WDT = "WDT"


class WatchdogState(enum.Enum):
    """The board's watchdog as ``STATUS?`` reports it."""

    IDLE = "IDLE"  # no WDT_RESET since power-up: not running, not expired
    FED = "FED"  # running
    EXPIRED = "EXPIRED"  # expired: LASER_ENABLE held low and ARM refused until WDT_CLEAR


@dataclass(frozen=True)
class BoardStatus:
    """The board's own state, read with ``STATUS?``."""

    armed: bool
    watchdog: WatchdogState


@dataclass(frozen=True)
class SafetyEvent:
    """One push event: ``value`` True for pressed / high / expired; ``received`` monotonic time, s."""

    kind: EventKind
    value: bool
    received: float


@dataclass(frozen=True)
class SafetySample:
    """One ``S:`` sample line. ``board_ms``: board clock, ms; ``photodiode_v``: V; ``vibration_g``: g;
    ``received``: monotonic time, s."""

    board_ms: int
    photodiode_v: float
    pedal: bool
    estop: bool
    vibration_g: float
    laser_enable: bool
    received: float


_EVENT = re.compile(r"EVT:(FOOTPEDAL|ESTOP|ENABLE|WDT):([01])")
_NUM = r"[0-9]+\.[0-9]{3}"
_SAMPLE = re.compile(rf"S:([0-9]+),({_NUM}),([01]),([01]),({_NUM}),([01])")
_VALUE_REPLY = re.compile(rf"(PHOTODIODE|VIBRATION):({_NUM})")
_STATUS_REPLY = re.compile(r"STATUS:ARMED=([01]),WDT=(IDLE|FED|EXPIRED)")


def parse_event(line: str, received: float) -> SafetyEvent | None:
    """Parse an ``EVT:`` line; None if malformed (``EVT:WDT:0`` is malformed: the board only sends 1)."""
    match = _EVENT.fullmatch(line)
    if match is None or (match.group(1) == "WDT" and match.group(2) != "1"):
        return None
    return SafetyEvent(EventKind(match.group(1)), match.group(2) == "1", received)


def parse_sample(line: str, received: float) -> SafetySample | None:
    """Parse an ``S:`` line; None if malformed."""
    match = _SAMPLE.fullmatch(line)
    if match is None:
        return None
    ms, volts, pedal, estop, g, enable = match.groups()
    return SafetySample(int(ms), float(volts), pedal == "1", estop == "1", float(g), enable == "1", received)


T = TypeVar("T")


class _Stream(Generic[T]):
    """An async iterator over items the driver dispatches; ends after :meth:`close` or the driver's close."""

    def __init__(self, owner: SafetyBoardDriver, maxsize: int) -> None:
        self._owner = owner
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=maxsize)
        self._closed = False

    def _put(self, item: T) -> None:
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    def close(self) -> None:
        """Stop receiving; an iteration in progress ends after the items already queued."""
        if self._closed:
            return
        self._closed = True
        self._owner._streams.discard(self)
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def get(self, timeout_s: float) -> T:
        """The next item within ``timeout_s`` s (else TimeoutError; StopAsyncIteration once closed)."""
        async with asyncio.timeout(timeout_s):
            return await self.__anext__()

    def __enter__(self) -> _Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream(_Stream[SafetyEvent]):
    """Push events in arrival order; never drops one."""


class SampleStream(_Stream[SafetySample]):
    """Stream samples; keeps the newest ``maxsize``."""


class SafetyBoardDriver:
    """The safety board over a :class:`~devices.transport.LineTransport` (LF, 115200 baud).

    Latest known state (from events, samples and replies): :attr:`pedal_pressed`, :attr:`estop_pressed`,
    :attr:`laser_enable`, :attr:`watchdog_expired`, :attr:`last_sample`.
    """

    def __init__(self, transport: LineTransport) -> None:
        self.transport = transport
        transport.is_unsolicited = is_unsolicited
        self._streams: set[_Stream[SafetyEvent] | _Stream[SafetySample]] = set()
        self._listeners: list[Callable[[SafetyEvent | SafetySample], None]] = []
        #: Monotonic time (s) of the last ``WDT_RESET`` the board acknowledged, None before the first.
        self.last_heartbeat_ok: float | None = None
        self._dispatching = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._heartbeat_stop = asyncio.Event()
        self.watchdog_timeout_ms = WDT_DEFAULT_MS
        self.heartbeat_period_s: float | None = None
        self.heartbeat_failures = 0
        self.last_heartbeat_error: str | None = None
        self.pedal_pressed: bool | None = None
        self.estop_pressed: bool | None = None
        self.laser_enable: bool | None = None
        self.watchdog_expired = False
        self.last_sample: SafetySample | None = None
        self.stream_hz = 0

    # -------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start dispatching push events and samples (call after the transport is open)."""
        if self._dispatching:
            return
        self._dispatching = True
        self.transport.on_unsolicited(self.dispatch_line)

    async def close(self) -> None:
        """Stop the heartbeat and the dispatch and end every open stream. Does not close the transport."""
        await self.stop_heartbeat()
        if self._dispatching:
            self._dispatching = False
            self.transport.on_unsolicited(None)
        for stream in list(self._streams):
            stream.close()

    def dispatch_line(self, line: str, received: float) -> None:
        """One unsolicited line, read at ``received`` (monotonic s): parsed, applied to the latest state,
        handed to the listeners and then to the streams. A malformed line is counted as a bad reply."""
        if line.startswith("EVT:"):
            event = parse_event(line, received)
            if event is None:
                self.transport.bad_reply(line, "malformed push event")
                return
            self._apply_event(event)
            self._notify(event)
            for stream in list(self._streams):
                if isinstance(stream, EventStream):
                    stream._put(event)
            return
        sample = parse_sample(line, received)
        if sample is None:
            self.transport.bad_reply(line, "malformed sample line")
            return
        self.last_sample = sample
        self.pedal_pressed = sample.pedal
        self.estop_pressed = sample.estop
        self.laser_enable = sample.laser_enable
        self._notify(sample)
        for stream in list(self._streams):
            if isinstance(stream, SampleStream):
                stream._put(sample)

    def _apply_event(self, event: SafetyEvent) -> None:
        if event.kind is EventKind.FOOTPEDAL:
            self.pedal_pressed = event.value
        elif event.kind is EventKind.ESTOP:
            self.estop_pressed = event.value
        elif event.kind is EventKind.ENABLE:
            self.laser_enable = event.value
        else:
            self.watchdog_expired = True
            _LOG.error("safety board: watchdog expired, LASER_ENABLE dropped")

    def add_listener(self, callback: Callable[[SafetyEvent | SafetySample], None]) -> None:
        """Call ``callback`` synchronously with every push event and sample, as soon as it is parsed.

        For the reaction that must not wait for a task switch (the safety supervisor). A callback must not
        block; an exception it raises is logged and never stops the dispatch.
        """
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[SafetyEvent | SafetySample], None]) -> None:
        """Stop calling ``callback``."""
        self._listeners.remove(callback)

    def _notify(self, item: SafetyEvent | SafetySample) -> None:
        for callback in list(self._listeners):
            try:
                callback(item)
            except Exception:
                _LOG.exception("safety board listener failed")

    def events(self) -> EventStream:
        """A new stream of every push event from now on (close it when done, or use ``with``)."""
        stream = EventStream(self, maxsize=0)
        self._streams.add(stream)
        return stream

    def samples(self, maxsize: int = 1000) -> SampleStream:
        """A new stream of stream samples from now on, keeping the newest ``maxsize``."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        stream = SampleStream(self, maxsize=maxsize + 1)
        self._streams.add(stream)
        return stream

    # --------------------------------------------------------------------------------------- commands
    async def _command(self, command: str, expected: str | None = None) -> str:
        reply = await self.transport.query(command)
        self._raise_for_error(command, reply)
        if expected is not None and reply != expected:
            raise self.transport.bad_reply(reply, f"expected {expected!r} to {command!r}")
        return reply

    @staticmethod
    def _raise_for_error(command: str, reply: str) -> None:
        if reply.startswith("ERROR:UNKNOWN_COMMAND:"):
            raise UnknownCommand(f"safety board did not understand {command!r} ({reply})")
        if reply.startswith("ERROR:NOT_READY:"):
            raise NotReady(reply.removeprefix("ERROR:NOT_READY:"))

    async def check_version(self) -> str:
        """``VERSION?``: returns the version (e.g. ``3.0``); :class:`VersionMismatch` unless it is 3.x."""
        reply = await self._command("VERSION?")
        match = re.fullmatch(r"VERSION:([0-9]+)\.([0-9]+)", reply)
        if match is None:
            raise self.transport.bad_reply(reply, "expected VERSION:<major>.<minor>")
        if match.group(1) != PROTOCOL_MAJOR:
            raise VersionMismatch(
                f"safety board firmware speaks protocol {match.group(1)}.{match.group(2)}; "
                f"this console needs protocol {PROTOCOL_MAJOR}.x"
            )
        return f"{match.group(1)}.{match.group(2)}"

    async def heartbeat(self) -> None:
        """``WDT_RESET``: feed the watchdog once."""
        await self._command("WDT_RESET", "OK:WDT_RESET")
        self.last_heartbeat_ok = time.monotonic()

    async def set_watchdog_timeout(self, timeout_ms: int) -> None:
        """``WDT_TIMEOUT:<ms>``, 100..2000 ms. Refused if a running heartbeat would be too slow for it."""
        if not isinstance(timeout_ms, int) or not WDT_MIN_MS <= timeout_ms <= WDT_MAX_MS:
            raise ValueError(f"watchdog timeout must be {WDT_MIN_MS}..{WDT_MAX_MS} ms, got {timeout_ms!r}")
        period = self.heartbeat_period_s
        if self._heartbeat is not None and period is not None and period > timeout_ms / 3000.0:
            raise ValueError(
                f"heartbeat every {period * 1000:.0f} ms is too slow for a {timeout_ms} ms watchdog; "
                "stop the heartbeat or restart it faster first"
            )
        await self._command(f"WDT_TIMEOUT:{timeout_ms}", f"OK:WDT_TIMEOUT:{timeout_ms}")
        self.watchdog_timeout_ms = timeout_ms

    async def clear_watchdog(self) -> None:
        """``WDT_CLEAR``: clear an expired watchdog (the board then needs ``ARM`` again)."""
        await self._command("WDT_CLEAR", "OK:WDT_CLEAR")
        self.watchdog_expired = False

    async def read_status(self) -> BoardStatus:
        """``STATUS?``: whether the board is armed and the state of its watchdog (an expiry found here is
        remembered in :attr:`watchdog_expired`). :class:`UnknownCommand` from firmware 3.0, which cannot
        tell."""
        reply = await self._command("STATUS?")
        match = _STATUS_REPLY.fullmatch(reply)
        if match is None:
            raise self.transport.bad_reply(reply, "expected STATUS:ARMED=<0|1>,WDT=<IDLE|FED|EXPIRED>")
        status = BoardStatus(match.group(1) == "1", WatchdogState(match.group(2)))
        if status.watchdog is WatchdogState.EXPIRED:
            self.watchdog_expired = True
        return status

    async def arm(self) -> None:
        """``ARM``; raises :class:`NotReady` with the reason (ESTOP or WDT) when the board refuses."""
        await self._command("ARM", "OK:ARM")

    async def disarm(self) -> None:
        """``DISARM``: LASER_ENABLE drops whatever the pedal does."""
        await self._command("DISARM", "OK:DISARM")

    async def set_stream(self, hz: int) -> None:
        """``STREAM:<hz>``: sample lines at ``hz`` per second (10..200), or 0 to stop them."""
        if not isinstance(hz, int) or not (hz == 0 or STREAM_MIN_HZ <= hz <= STREAM_MAX_HZ):
            raise ValueError(f"stream rate must be 0 or {STREAM_MIN_HZ}..{STREAM_MAX_HZ} Hz, got {hz!r}")
        await self._command(f"STREAM:{hz}", f"OK:STREAM:{hz}")
        self.stream_hz = hz

    async def photodiode_v(self) -> float:
        """``GET_PHOTODIODE``: photodiode voltage, V (0..5)."""
        return await self._value("GET_PHOTODIODE", "PHOTODIODE")

    async def vibration_g(self) -> float:
        """``GET_VIBRATION_LEVEL``: smoothing device vibration, g."""
        return await self._value("GET_VIBRATION_LEVEL", "VIBRATION")

    async def _value(self, command: str, name: str) -> float:
        reply = await self._command(command)
        match = _VALUE_REPLY.fullmatch(reply)
        if match is None or match.group(1) != name:
            raise self.transport.bad_reply(reply, f"expected {name}:<x.xxx>")
        return float(match.group(2))

    async def footpedal(self) -> bool:
        """``GET_FOOTPEDAL``: True while pressed."""
        self.pedal_pressed = await self._flag("GET_FOOTPEDAL", "FOOTPEDAL")
        return self.pedal_pressed

    async def estop(self) -> bool:
        """``GET_ESTOP``: True while pressed."""
        self.estop_pressed = await self._flag("GET_ESTOP", "ESTOP")
        return self.estop_pressed

    async def _flag(self, command: str, name: str) -> bool:
        reply = await self._command(command)
        if reply not in (f"{name}:0", f"{name}:1"):
            raise self.transport.bad_reply(reply, f"expected {name}:0 or {name}:1")
        return reply.endswith("1")

    async def set_motor_speed(self, pwm: int) -> int:
        """``MOTOR_SPEED:<pwm>``: smoothing motor PWM 0..255; returns the PWM applied (the board clamps
        to 153, answering ``WARNING:PWM_CLAMPED_TO_MAX`` then ``OK:MOTOR_SPEED:153``)."""
        if not isinstance(pwm, int) or isinstance(pwm, bool) or not 0 <= pwm <= PWM_COMMAND_MAX:
            raise ValueError(f"motor PWM must be an integer 0..{PWM_COMMAND_MAX}, got {pwm!r}")
        command = f"MOTOR_SPEED:{pwm}"
        if pwm <= PWM_MAX:
            await self._command(command, f"OK:MOTOR_SPEED:{pwm}")
            return pwm
        replies = await self.transport.query(command, lines=2)
        self._raise_for_error(command, replies[0])
        if replies != ["WARNING:PWM_CLAMPED_TO_MAX", f"OK:MOTOR_SPEED:{PWM_MAX}"]:
            raise self.transport.bad_reply(
                " | ".join(replies), f"expected the clamp warning then OK to {command}"
            )
        _LOG.warning("safety board: motor PWM %d clamped to %d", pwm, PWM_MAX)
        return PWM_MAX

    async def motor_off(self) -> None:
        """``MOTOR_OFF``: stop the smoothing motor."""
        await self._command("MOTOR_OFF", "OK:MOTOR_OFF")

    async def aiming_beam(self, on: bool) -> None:
        """``LASER_ON`` / ``LASER_OFF``: the aiming beam only (never the treatment laser)."""
        command = "LASER_ON" if on else "LASER_OFF"
        await self._command(command, f"OK:{command}")

    # -------------------------------------------------------------------------------------- heartbeat
    def start_heartbeat(self, period_s: float | None = None) -> None:
        """Send ``WDT_RESET`` every ``period_s`` s (default: watchdog timeout / 4; at most timeout / 3)."""
        if self._heartbeat is not None:
            raise RuntimeError("heartbeat already running")
        limit = self.watchdog_timeout_ms / 3000.0
        period = self.watchdog_timeout_ms / 4000.0 if period_s is None else period_s
        if not 0 < period <= limit:
            raise ValueError(
                f"heartbeat period must be above 0 and at most {limit * 1000:.0f} ms for a "
                f"{self.watchdog_timeout_ms} ms watchdog, got {period * 1000:.0f} ms"
            )
        self.heartbeat_period_s = period
        self._heartbeat_stop = asyncio.Event()
        self._heartbeat = asyncio.create_task(
            self._beat(period, self._heartbeat_stop), name="safety-heartbeat"
        )

    async def stop_heartbeat(self) -> None:
        """Stop sending ``WDT_RESET`` (the board's watchdog then expires after its timeout).

        The stop is also signalled by an event the task checks after every exchange, so a cancellation lost
        inside a reply wait cannot keep the heartbeat running.
        """
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            self._heartbeat_stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def heartbeat_running(self) -> bool:
        """True while the heartbeat task runs."""
        return self._heartbeat is not None and not self._heartbeat.done()

    async def _beat(self, period: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            try:
                await self.heartbeat()
            except (LinkError, SafetyBoardError) as exc:
                self.heartbeat_failures += 1
                self.last_heartbeat_error = str(exc)
                _LOG.warning("safety board: heartbeat failed: %s", exc)
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
