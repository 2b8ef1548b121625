"""Driver for the ring-size actuator, a Xeryon XLA_1250 style piezo stage (docs/devices.md, "Actuator").

The driver speaks micrometres; the wire speaks encoder counts of 1250 nm. Link: 115200 baud 8N1, lines end LF,
each command ``TAG=value`` of at most 16 characters. Set commands get no reply; queries ``TAG=?`` are answered
``TAG=<value>``.

Safety rules kept here:

* ``ENBL=1`` is sent only by :meth:`ActuatorDriver.enable_amplifiers`, which the console calls when an
  engineer or operator asks for it. No other method sends it, so a thermal, error-limit or safety-timeout
  stop (STAT bits 2, 3, 16, 18) is never cleared by the driver: it is reported as :class:`ActuatorStopped`
  naming the bits, and as :attr:`ActuatorStatus.stopped_by_fault` / :attr:`ActuatorDriver.fault`.
* A target outside the soft limits is refused with :class:`PositionOutOfRange` before a byte is sent.

INFO lines versus query replies. With ``INFO=3`` the stage sends ``EPOS=``, ``DPOS=`` and ``STAT=`` lines
by itself every ``POLI`` ms; they look exactly like the replies to ``EPOS=?``, ``DPOS=?`` and ``STAT=?``. The
driver therefore keeps one rule: **while INFO is on, every EPOS/DPOS/STAT line is unsolicited** (it goes to
the transport's subscribers, never to a pending query), and the driver never queries those three tags; it
reads them from the next INFO line instead (:meth:`ActuatorDriver.status`, ``position_um``).
INFO counts as on from just before ``INFO=3`` is written until the reply to the ``INFO=?`` sent after
``INFO=0`` (or after ``RSET=0``) arrives; the stage answers in order, so no INFO line can follow that reply.
The driver installs this rule as the transport's ``is_unsolicited``; other tags' replies (``SSPD=``,
``PTO2=``...) are never confused.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
import time
from dataclasses import dataclass

from devices.transport import LineTransport

_LOG = logging.getLogger(__name__)

#: XLA_1250: one encoder count is 1250 nm.
NM_PER_COUNT = 1250
UM_PER_COUNT = NM_PER_COUNT / 1000.0
MAX_COMMAND_CHARS = 16
INFO_TAGS = ("EPOS=", "DPOS=", "STAT=")
SETTING_TAGS = ("SSPD", "LLIM", "HLIM", "PTO2", "POLI", "INFO")
#: Interval between STAT/EPOS polls while waiting for a move or an index search, s.
POLL_S = 0.02


class StatBit(enum.IntFlag):
    """The bits of the STAT word (docs/devices.md)."""

    AMPLIFIERS_ENABLED = 1 << 0
    END_STOP = 1 << 1
    THERMAL_PROTECTION_1 = 1 << 2
    THERMAL_PROTECTION_2 = 1 << 3
    MOTOR_ON = 1 << 5
    CLOSED_LOOP = 1 << 6
    ENCODER_AT_INDEX = 1 << 7
    ENCODER_VALID = 1 << 8
    SEARCHING_INDEX = 1 << 9
    POSITION_REACHED = 1 << 10
    ENCODER_ERROR = 1 << 12
    ERROR_LIMIT = 1 << 16
    SAFETY_TIMEOUT = 1 << 18
    POSITION_FAIL = 1 << 21


#: Bits that stop the stage and leave it disabled until someone asks for ``ENBL=1``.
STOP_BITS = (
    StatBit.THERMAL_PROTECTION_1 | StatBit.THERMAL_PROTECTION_2 | StatBit.ERROR_LIMIT | StatBit.SAFETY_TIMEOUT
)


def _bit_names(flags: StatBit) -> list[str]:
    return [f"{bit.name} (bit {bit.value.bit_length() - 1})" for bit in StatBit if bit in flags and bit.name]


@dataclass(frozen=True)
class ActuatorStatus:
    """A decoded STAT word. ``raw`` is the integer as received; each flag is a named property."""

    raw: int

    @classmethod
    def decode(cls, raw: int) -> ActuatorStatus:
        """Decode a STAT value; refuses negative values (the word is unsigned)."""
        if raw < 0:
            raise ValueError(f"STAT must not be negative, got {raw}")
        return cls(raw)

    @property
    def flags(self) -> StatBit:
        """The known bits that are set."""
        known = 0
        for bit in StatBit:
            known |= bit.value
        return StatBit(self.raw & known)

    def _has(self, bit: StatBit) -> bool:
        return bool(self.raw & bit)

    @property
    def amplifiers_enabled(self) -> bool:
        """STAT bit 0: amplifiers enabled."""
        return self._has(StatBit.AMPLIFIERS_ENABLED)

    @property
    def end_stop(self) -> bool:
        """STAT bit 1: end stop."""
        return self._has(StatBit.END_STOP)

    @property
    def thermal_protection_1(self) -> bool:
        """STAT bit 2: thermal protection 1."""
        return self._has(StatBit.THERMAL_PROTECTION_1)

    @property
    def thermal_protection_2(self) -> bool:
        """STAT bit 3: thermal protection 2."""
        return self._has(StatBit.THERMAL_PROTECTION_2)

    @property
    def motor_on(self) -> bool:
        """STAT bit 5: motor on."""
        return self._has(StatBit.MOTOR_ON)

    @property
    def closed_loop(self) -> bool:
        """STAT bit 6: closed loop."""
        return self._has(StatBit.CLOSED_LOOP)

    @property
    def encoder_at_index(self) -> bool:
        """STAT bit 7: encoder at index."""
        return self._has(StatBit.ENCODER_AT_INDEX)

    @property
    def encoder_valid(self) -> bool:
        """STAT bit 8: encoder valid."""
        return self._has(StatBit.ENCODER_VALID)

    @property
    def searching_index(self) -> bool:
        """STAT bit 9: searching index."""
        return self._has(StatBit.SEARCHING_INDEX)

    @property
    def position_reached(self) -> bool:
        """STAT bit 10: position reached."""
        return self._has(StatBit.POSITION_REACHED)

    @property
    def encoder_error(self) -> bool:
        """STAT bit 12: encoder error."""
        return self._has(StatBit.ENCODER_ERROR)

    @property
    def error_limit(self) -> bool:
        """STAT bit 16: error limit."""
        return self._has(StatBit.ERROR_LIMIT)

    @property
    def safety_timeout(self) -> bool:
        """STAT bit 18: safety timeout."""
        return self._has(StatBit.SAFETY_TIMEOUT)

    @property
    def position_fail(self) -> bool:
        """STAT bit 21: position fail."""
        return self._has(StatBit.POSITION_FAIL)

    @property
    def stopped_by_fault(self) -> bool:
        """True when a thermal, error-limit or safety-timeout stop (bits 2, 3, 16, 18) holds the stage."""
        return bool(self.raw & STOP_BITS)

    @property
    def fault_bits(self) -> StatBit:
        """The stop bits that are set."""
        return StatBit(self.raw & STOP_BITS)

    def describe(self) -> str:
        """The set bits by name, e.g. ``AMPLIFIERS_ENABLED (bit 0), ENCODER_VALID (bit 8)``."""
        return ", ".join(_bit_names(self.flags)) or "no bits set"


class ActuatorError(Exception):
    """The actuator could not do what was asked."""


class PositionOutOfRange(ActuatorError, ValueError):
    """A target outside the soft limits (or not a finite number); nothing was sent."""


class ActuatorStopped(ActuatorError):
    """A thermal, error-limit or safety-timeout stop holds the stage; only an explicit enable clears it."""

    def __init__(self, status: ActuatorStatus, context: str) -> None:
        self.status = status
        names = ", ".join(_bit_names(status.fault_bits))
        super().__init__(
            f"actuator stopped by {names} during {context}; the stage stays disabled until an explicit enable"
        )


class MoveFailed(ActuatorError):
    """The stage refused a move or index search (STAT bit 21 position fail) or did not finish in time."""


@dataclass(frozen=True)
class InfoLine:
    """One INFO line: ``tag`` EPOS, DPOS or STAT, ``value`` the integer, ``received`` monotonic time, s."""

    tag: str
    value: int
    received: float


_REPLY = re.compile(r"([A-Z]{3}[A-Z0-9])=(-?[0-9]+)")


class ActuatorDriver:
    """The ring-size actuator over a :class:`~devices.transport.LineTransport` (LF, 115200 baud).

    ``low_limit_um`` and ``high_limit_um`` are the soft limits in µm (default travel 0 to 3000 µm) that the
    driver checks before sending a target and writes to the stage with :meth:`configure`.
    """

    def __init__(
        self, transport: LineTransport, *, low_limit_um: float = 0.0, high_limit_um: float = 3000.0
    ) -> None:
        if not low_limit_um < high_limit_um:
            raise ValueError(f"low limit {low_limit_um} µm must be below high limit {high_limit_um} µm")
        self.transport = transport
        self.low_limit_um = low_limit_um
        self.high_limit_um = high_limit_um
        self._info_on = False
        self._info_period_s = 0.097
        #: The last status read, and the last one that showed a stop bit (None until one does).
        self.last_status: ActuatorStatus | None = None
        self.fault: ActuatorStatus | None = None
        transport.is_unsolicited = self._is_unsolicited

    # ------------------------------------------------------------------------------------------ wire
    def _is_unsolicited(self, line: str) -> bool:
        return self._info_on and line.startswith(INFO_TAGS)

    @property
    def info_on(self) -> bool:
        """True while the stage is (or may still be) sending INFO lines."""
        return self._info_on

    async def _write(self, tag: str, value: int) -> None:
        command = f"{tag}={value}"
        if len(command) > MAX_COMMAND_CHARS:
            raise ValueError(f"command {command!r} is longer than {MAX_COMMAND_CHARS} characters")
        await self.transport.write(command)

    async def _query(self, tag: str) -> int:
        if self._info_on and tag + "=" in INFO_TAGS:
            raise RuntimeError(f"{tag} is read from INFO lines while INFO is on")
        reply = await self.transport.query(f"{tag}=?")
        match = _REPLY.fullmatch(reply)
        if match is None or match.group(1) != tag:
            raise self.transport.bad_reply(reply, f"expected {tag}=<integer>")
        return int(match.group(2))

    async def _next_info(self, tag: str) -> int:
        """The value of the next INFO line for ``tag`` received from now on."""
        queue = self.transport.subscribe()
        try:
            deadline = 2 * self._info_period_s + self.transport.timeout_s
            async with asyncio.timeout(deadline):
                while True:
                    line = await queue.get()
                    if line.startswith(tag + "="):
                        match = _REPLY.fullmatch(line)
                        if match is None:
                            raise self.transport.bad_reply(line, f"malformed INFO line for {tag}")
                        return int(match.group(2))
        except TimeoutError:
            raise MoveFailed(f"no INFO {tag} line within {deadline * 1000:.0f} ms") from None
        finally:
            self.transport.unsubscribe(queue)

    async def _read(self, tag: str) -> int:
        if self._info_on:
            return await self._next_info(tag)
        return await self._query(tag)

    async def setting(self, tag: str) -> int:
        """Read one setting as the stage holds it: SSPD (µm/s), LLIM/HLIM/PTO2 (counts), POLI (ms) or INFO."""
        if tag not in SETTING_TAGS:
            raise ValueError(f"not a setting: {tag!r} (one of {', '.join(SETTING_TAGS)})")
        return await self._query(tag)

    # -------------------------------------------------------------------------------------- commands
    async def reset(self) -> None:
        """``RSET=0``: reset the controller (disabled, index lost, power-up settings, INFO off).

        The ``INFO=?`` read afterwards confirms the controller answers and no INFO line is still on its way.
        """
        await self._write("RSET", 0)
        info = await self._query_info_barrier()
        if info != 0:
            raise self.transport.bad_reply(f"INFO={info}", "INFO still on after RSET=0")

    async def _query_info_barrier(self) -> int:
        reply = await self.transport.query("INFO=?")
        match = _REPLY.fullmatch(reply)
        if match is None or match.group(1) != "INFO":
            raise self.transport.bad_reply(reply, "expected INFO=<integer>")
        value = int(match.group(2))
        self._info_on = value != 0
        return value

    async def configure(
        self,
        *,
        speed_um_s: int = 200,
        tolerance_counts: int = 4,
    ) -> None:
        """Write speed (µm/s, 1..100000), the soft limits and the position tolerance (counts, 0..10000).

        Each value is read back; a stage that keeps another value is a :class:`ActuatorError`.
        """
        if not 1 <= speed_um_s <= 100_000:
            raise ValueError(f"speed must be 1..100000 µm/s, got {speed_um_s}")
        if not 0 <= tolerance_counts <= 10_000:
            raise ValueError(f"position tolerance must be 0..10000 counts, got {tolerance_counts}")
        wanted = {
            "SSPD": speed_um_s,
            "LLIM": self.um_to_counts(self.low_limit_um),
            "HLIM": self.um_to_counts(self.high_limit_um),
            "PTO2": tolerance_counts,
        }
        for tag, value in wanted.items():
            await self._write(tag, value)
        for tag, value in wanted.items():
            got = await self._query(tag)
            if got != value:
                raise ActuatorError(f"stage kept {tag}={got} after {tag}={value}")

    async def enable_amplifiers(self) -> ActuatorStatus:
        """``ENBL=1``: enable the amplifiers; this is also what clears a thermal/error-limit/timeout stop.

        Only call this on an explicit request of an engineer or operator. Raises :class:`ActuatorStopped` if
        the stage stays disabled (the cause of the stop is still present).
        """
        _LOG.warning("actuator: amplifiers enabled on request (ENBL=1)")
        await self._write("ENBL", 1)
        status = await self.status()
        if not status.amplifiers_enabled:
            if status.stopped_by_fault:
                raise ActuatorStopped(status, "enable")
            raise ActuatorError(f"amplifiers still disabled after ENBL=1 ({status.describe()})")
        self.fault = None
        return status

    async def disable_amplifiers(self) -> None:
        """``ENBL=0``: disable the amplifiers (motion stops, the stage is no longer held)."""
        await self._write("ENBL", 0)

    async def stop(self) -> None:
        """``STOP=0``: stop at once and hold the present position."""
        await self._write("STOP", 0)

    async def status(self) -> ActuatorStatus:
        """The decoded STAT word (from the next INFO line while INFO is on)."""
        raw = await self._read("STAT")
        if raw < 0:
            raise self.transport.bad_reply(f"STAT={raw}", "negative STAT word")
        status = ActuatorStatus(raw)
        self.last_status = status
        if status.stopped_by_fault:
            if self.fault is None or self.fault.fault_bits != status.fault_bits:
                _LOG.error("actuator stopped: %s", ", ".join(_bit_names(status.fault_bits)))
            self.fault = status
        return status

    async def position_um(self) -> float:
        """Encoder (actual) position, µm."""
        return self.counts_to_um(await self._read("EPOS"))

    async def target_um(self) -> float:
        """Desired position, µm."""
        return self.counts_to_um(await self._read("DPOS"))

    async def find_index(self, *, timeout_s: float = 30.0) -> ActuatorStatus:
        """``INDX=0`` and wait (at most ``timeout_s`` s) until the encoder is valid (STAT bit 8)."""
        await self._write("INDX", 0)
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.status()
            if status.stopped_by_fault:
                raise ActuatorStopped(status, "index search")
            if status.position_fail:
                raise MoveFailed(f"stage refused the index search ({status.describe()})")
            if status.encoder_valid and not status.searching_index:
                return status
            if time.monotonic() >= deadline:
                raise MoveFailed(f"index not found within {timeout_s} s ({status.describe()})")
            await asyncio.sleep(POLL_S)

    def check_target(self, position_um: float) -> int:
        """Check a target (µm) against the soft limits; returns it in counts or raises PositionOutOfRange."""
        if (
            isinstance(position_um, bool)
            or not isinstance(position_um, int | float)
            or not math.isfinite(position_um)
        ):
            raise PositionOutOfRange(f"target must be a finite number of µm, got {position_um!r}")
        if not self.low_limit_um <= position_um <= self.high_limit_um:
            raise PositionOutOfRange(
                f"target {position_um} µm is outside the soft limits "
                f"{self.low_limit_um}..{self.high_limit_um} µm"
            )
        return self.um_to_counts(position_um)

    async def move_to_um(self, position_um: float, *, timeout_s: float | None = None) -> float:
        """Move to ``position_um`` (µm) and wait until reached; returns the reached position, µm.

        Reached means |EPOS - DPOS| <= PTO2 and STAT bit 10. ``timeout_s`` defaults to the travel time at the
        stage's speed plus 50 % and 1 s. Raises :class:`PositionOutOfRange` (nothing sent),
        :class:`ActuatorStopped` on a stop bit, :class:`MoveFailed` on a refused move or a timeout (the
        stage is then told ``STOP=0``).
        """
        counts = self.check_target(position_um)
        tolerance = await self.setting("PTO2")
        if timeout_s is None:
            speed = await self.setting("SSPD")
            start = await self.position_um()
            timeout_s = abs(position_um - start) / max(speed, 1) * 1.5 + 1.0
        await self._write("DPOS", counts)
        deadline = time.monotonic() + timeout_s
        while True:
            status = await self.status()
            if status.stopped_by_fault:
                raise ActuatorStopped(status, f"move to {position_um} µm")
            if status.position_fail:
                raise MoveFailed(
                    f"stage refused the move to {position_um} µm (position fail; enabled and indexed?)"
                    f" ({status.describe()})"
                )
            if status.position_reached:
                epos = await self._read("EPOS")
                if abs(epos - counts) <= tolerance:
                    return self.counts_to_um(epos)
            if time.monotonic() >= deadline:
                await self.stop()
                raise MoveFailed(
                    f"{position_um} µm not reached within {timeout_s:.1f} s ({status.describe()})"
                )
            await asyncio.sleep(POLL_S)

    async def start_info(self, period_ms: int = 97) -> None:
        """Turn the INFO stream on (``POLI=<ms>``, 5..1000, then ``INFO=3``)."""
        if not 5 <= period_ms <= 1000:
            raise ValueError(f"INFO period must be 5..1000 ms, got {period_ms}")
        await self._write("POLI", period_ms)
        self._info_period_s = period_ms / 1000.0
        self._info_on = True
        await self._write("INFO", 3)

    async def stop_info(self) -> None:
        """Turn the INFO stream off (``INFO=0``); wait for the ``INFO=?`` reply that follows the last line."""
        await self._write("INFO", 0)
        value = await self._query_info_barrier()
        if value != 0:
            raise self.transport.bad_reply(f"INFO={value}", "INFO still on after INFO=0")

    def subscribe_info(self) -> asyncio.Queue[str]:
        """A queue of the raw INFO lines (``EPOS=``, ``DPOS=``, ``STAT=``); parse with :meth:`parse_info`."""
        return self.transport.subscribe()

    def unsubscribe_info(self, queue: asyncio.Queue[str]) -> None:
        """Stop a queue from :meth:`subscribe_info`."""
        self.transport.unsubscribe(queue)

    def parse_info(self, line: str, *, received: float | None = None) -> InfoLine:
        """Parse one INFO line; a malformed line is counted as a bad reply and raised."""
        match = _REPLY.fullmatch(line)
        if match is None or match.group(1) + "=" not in INFO_TAGS:
            raise self.transport.bad_reply(line, "malformed INFO line")
        when = time.monotonic() if received is None else received
        return InfoLine(match.group(1), int(match.group(2)), when)

    # ------------------------------------------------------------------------------------------ units
    @staticmethod
    def um_to_counts(position_um: float) -> int:
        """µm to encoder counts (1250 nm per count), rounded to the nearest count."""
        return round(position_um / UM_PER_COUNT)

    @staticmethod
    def counts_to_um(counts: int) -> float:
        """Encoder counts to µm."""
        return counts * UM_PER_COUNT
