"""Byte-level driver tests: a scripted device on a real pty (in the spirit of pymeasure's
``expected_protocol``).

Usage::

    from tests.devices.protocol import Raw, expected_protocol

    async def test_output_off() -> None:
        async with expected_protocol(
            [
                ("LAS:OUT 0", None),        # a set command: checked, no reply
                ("LAS:OUT?", "0"),          # a query: checked, one reply line
                ("ERR?", "0"),
            ],
            eol=b"\\r\\n",                   # b"\\n" for the actuator and the safety board
        ) as link:
            driver = LaserDriver(link.transport)
            await driver.output_off()

What it does:

- A :class:`~devices.sim.pty.PtyDevice` plays the device on a real pty; :attr:`Scripted.transport` is an open
  :class:`~devices.transport.LineTransport` on it, so the driver under test runs exactly as against hardware.
- Each line the driver sends must equal the next scripted command exactly (case and spacing included). The
  reply is ``None`` (nothing is sent), a ``str`` (one line, the device's line end added), a ``list[str]``
  (several lines) or ``Raw(b"...")`` (exact bytes, for garbage, partial or unterminated replies).
- On leaving the block, the helper waits (bounded, 1 s) for the driver's last commands to arrive, then fails
  the test with :class:`AssertionError` if a line differed from the script, an unscripted line arrived, or a
  scripted pair was left unused. If the block raised, its exception propagates unchanged, unless a line also
  differed from the script: then an AssertionError naming the mismatch is raised from it.
- :attr:`Scripted.peer` is the pty device: ``link.peer.emit("EVT:FOOTPEDAL:1")`` sends an unsolicited line
  at any time; :attr:`Scripted.received` lists every line the device received.
- ``transport_kwargs`` go to the :class:`LineTransport` (``is_unsolicited=...``, ``timeout_s=...``,
  ``baudrate=...``). Everything (transport, pty) is closed on exit, so the leak checks of
  ``tests/conftest.py`` stay green.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from devices.sim.pty import PtyDevice
from devices.transport import LineTransport


@dataclass(frozen=True)
class Raw:
    """Reply with exactly these bytes (no line end added)."""

    data: bytes


Reply = str | list[str] | Raw | None


@dataclass
class _ScriptHandler:
    """A :class:`~devices.sim.pty.LineHandler` that checks each line against the script."""

    script: list[tuple[str, Reply]]
    device: PtyDevice | None = None
    received: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    position: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    def handle_line(self, line: str) -> list[str]:
        self.received.append(line)
        asyncio.get_running_loop().create_task(self._notify())
        if self.position >= len(self.script):
            self.mismatches.append(f"unscripted line {line!r} after the script ended")
            self.done.set()
            return []
        expected, reply = self.script[self.position]
        if line != expected:
            self.mismatches.append(f"step {self.position + 1}: expected {expected!r}, got {line!r}")
            self.done.set()
            return []
        self.position += 1
        if self.position == len(self.script):
            self.done.set()
        if reply is None:
            return []
        if isinstance(reply, Raw):
            assert self.device is not None
            self.device.write_raw(reply.data)
            return []
        if isinstance(reply, str):
            return [reply]
        return list(reply)

    def handle_overlong(self) -> None:
        self.mismatches.append("an over-long line was received")
        self.done.set()

    async def _notify(self) -> None:
        async with self.progress:
            self.progress.notify_all()


@dataclass
class Scripted:
    """What :func:`expected_protocol` yields."""

    transport: LineTransport
    peer: PtyDevice
    handler: _ScriptHandler

    @property
    def received(self) -> list[str]:
        """Every line the scripted device received so far."""
        return self.handler.received

    async def wait_received(self, line: str, count: int = 1, *, timeout_s: float = 2.0) -> None:
        """Wait until the device has received ``line`` at least ``count`` times (TimeoutError after
        ``timeout_s``)."""
        async with asyncio.timeout(timeout_s), self.handler.progress:
            await self.handler.progress.wait_for(lambda: self.received.count(line) >= count)


@asynccontextmanager
async def expected_protocol(
    script: Sequence[tuple[str, Reply]],
    *,
    eol: bytes = b"\r\n",
    name: str = "scripted",
    **transport_kwargs: Any,
) -> AsyncIterator[Scripted]:
    """A scripted device on a pty and an open transport to it; fails if the driver strays from the script."""
    handler = _ScriptHandler(list(script))
    if not handler.script:
        handler.done.set()
    peer = PtyDevice(name, handler, eol=eol)
    handler.device = peer
    await peer.start()
    transport_kwargs.setdefault("baudrate", 38400 if eol == b"\r\n" else 115200)
    transport = LineTransport(name, peer.path, eol=eol, **transport_kwargs)
    try:
        await transport.open()
        link = Scripted(transport=transport, peer=peer, handler=handler)
        try:
            yield link
        except BaseException as exc:
            if handler.mismatches:
                raise AssertionError(f"protocol mismatch: {'; '.join(handler.mismatches)}") from exc
            raise
        try:
            await asyncio.wait_for(handler.done.wait(), 1.0)
        except TimeoutError:
            pass
        if handler.mismatches:
            raise AssertionError(f"protocol mismatch: {'; '.join(handler.mismatches)}")
        unused = handler.script[handler.position :]
        if unused:
            raise AssertionError(f"scripted pairs left unused: {unused!r}")
    finally:
        await transport.close()
        await peer.stop()
