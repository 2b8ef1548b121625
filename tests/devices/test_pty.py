"""PtyDevice: framing, over-long input, stalls, never blocking, unplug/replug with a stable name."""

from __future__ import annotations

import asyncio
import os
import tty
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devices.sim.pty import MAX_PENDING_OUTPUT, LineHandler, PtyDevice


@dataclass
class Recorder:
    lines: list[str] = field(default_factory=list)
    overlong: int = 0

    def handle_line(self, line: str) -> list[str]:
        self.lines.append(line)
        return [f"got {line}"]

    def handle_overlong(self) -> None:
        self.overlong += 1


def test_recorder_is_a_line_handler() -> None:
    assert isinstance(Recorder(), LineHandler)


def exists(path: Path) -> bool:
    """Whether the name exists now."""
    return path.exists()


def resolved(path: Path) -> str:
    """The pty a name points at."""
    return os.path.realpath(path)


def read_until(fd: int, end: bytes) -> bytes:
    """Blocking read from a pty slave until ``end`` arrives (or the pty closes)."""
    data = b""
    while not data.endswith(end):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


async def wait_for_lines(recorder: Recorder, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while len(recorder.lines) < count:
        assert loop.time() < deadline, f"only {recorder.lines!r} arrived"
        await asyncio.sleep(0.001)


async def test_crlf_framing_replies_and_overlong_input(tmp_path: Path) -> None:
    recorder = Recorder()
    device = PtyDevice("dev", recorder, eol=b"\r\n", max_line_bytes=32)
    await device.start()
    fd = os.open(device.path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        os.write(fd, b"A?\r\nB 1\nC" + b"x" * 40 + b"\r\nD?\r\n")
        await wait_for_lines(recorder, 3)
        assert recorder.lines == ["A?", "B 1", "D?"]
        assert recorder.overlong == 1
        replies = await asyncio.to_thread(read_until, fd, b"got D?\r\n")
        assert replies == b"got A?\r\ngot B 1\r\ngot D?\r\n"
        assert list(device.history) == ["A?", "B 1", "D?"]
    finally:
        os.close(fd)
        await device.stop()


async def test_stalled_device_reads_but_sends_nothing_and_output_never_blocks() -> None:
    recorder = Recorder()
    device = PtyDevice("dev", recorder, eol=b"\n")
    await device.start()
    try:
        device.stalled = True
        device.emit("pushed")
        device.stalled = False
        # Nobody reads the slave: the pty fills, the rest waits, and beyond the bound the oldest is dropped.
        for _ in range(3000):
            device.emit("S:" + "9" * 60)
        assert device.bytes_dropped > 0
        assert 0 < device.pending_output_bytes <= MAX_PENDING_OUTPUT
    finally:
        await device.stop()


async def test_unplug_replug_keeps_the_stable_name(tmp_path: Path) -> None:
    link = tmp_path / "dev"
    device = PtyDevice("dev", Recorder(), eol=b"\n", link=link, seed=1)
    await device.start()
    try:
        assert resolved(link) == device.path
        assert device.port == str(link)
        device.unplug()
        assert not device.plugged and device.path == ""
        assert not exists(link)
        with pytest.raises(RuntimeError, match="already unplugged"):
            device.unplug()
        device.garbage(3)  # dropped while unplugged, never an error
        device.replug()
        assert device.plugged
        assert resolved(link) == device.path
        with pytest.raises(RuntimeError, match="not unplugged"):
            device.replug()
        with pytest.raises(ValueError):
            device.garbage(0)
    finally:
        await device.stop()
    assert not exists(link)


async def test_garbage_bytes_never_contain_line_ends() -> None:
    device = PtyDevice("dev", Recorder(), eol=b"\n", seed=3)
    await device.start()
    fd = os.open(device.path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        device.garbage(500)
        device.emit("end")
        data = await asyncio.to_thread(read_until, fd, b"end\n")
        assert len(data) == 504
        assert b"\n" not in data[:500] and b"\r" not in data[:500]
    finally:
        os.close(fd)
        await device.stop()


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        PtyDevice("dev", Recorder(), eol=b"")
    with pytest.raises(ValueError):
        PtyDevice("dev", Recorder(), eol=b"\n", max_line_bytes=0)
