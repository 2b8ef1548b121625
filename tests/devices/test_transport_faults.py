"""LineTransport against a pty device: timeouts, garbage, over-long lines, FAULTY, unplug and reconnect."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devices import transport
from devices.sim.pty import PtyDevice
from devices.transport import BadReply, LineTransport, LinkDown, LinkState, LinkTimeout
from tests.support import wait_until


@dataclass
class Echo:
    """Answers ``X?`` with ``X``; ``HANG?`` unplugs the device instead of answering."""

    device: PtyDevice | None = None
    received: list[str] = field(default_factory=list)

    def handle_line(self, line: str) -> list[str]:
        self.received.append(line)
        if line == "HANG?" and self.device is not None:
            asyncio.get_running_loop().call_soon(self.device.unplug)
            return []
        if line == "LONG?":
            return ["Z" * 300]
        if line.endswith("?"):
            return [line[:-1]]
        return []


@dataclass
class Rig:
    device: PtyDevice
    handler: Echo
    link: LineTransport
    states: list[LinkState]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    handler = Echo()
    with tempfile.TemporaryDirectory() as tmp:
        device = PtyDevice("echo", handler, eol=b"\r\n", link=Path(tmp) / "echo", seed=7)
        handler.device = device
        await device.start()
        link = LineTransport(
            "echo",
            device.port,
            baudrate=38400,
            eol=b"\r\n",
            is_unsolicited=lambda line: line.startswith("EVT:"),
        )
        states: list[LinkState] = []
        link.on_state_change(states.append)
        await link.open()
        try:
            yield Rig(device, handler, link, states)
        finally:
            await link.close()
            await device.stop()


async def test_query_round_trip_and_states(rig: Rig) -> None:
    assert await rig.link.query("ABC?") == "ABC"
    assert rig.states == [LinkState.OPEN]


async def test_stall_times_out_and_counts(rig: Rig) -> None:
    rig.device.stalled = True
    with pytest.raises(LinkTimeout, match="no reply to 'A\\?' within 100 ms"):
        await rig.link.query("A?", timeout_s=0.1)
    assert rig.link.consecutive_bad == 1
    rig.device.stalled = False
    assert await rig.link.query("B?") == "B"


async def test_three_timeouts_make_the_link_faulty_at_once(rig: Rig) -> None:
    rig.device.stalled = True
    for _ in range(3):
        with pytest.raises(LinkTimeout):
            await rig.link.query("A?", timeout_s=0.03)
    assert rig.link.state == LinkState.FAULTY
    assert rig.states == [LinkState.OPEN, LinkState.FAULTY]


async def test_garbage_corrupts_the_next_reply(rig: Rig) -> None:
    rig.device.garbage(5)
    with pytest.raises(BadReply, match="undecodable or control bytes"):
        await rig.link.query("A?")
    assert rig.link.bad_reply_count == 1
    assert await rig.link.query("B?") == "B"


async def test_over_long_reply_fails_the_query_and_is_counted(rig: Rig) -> None:
    with pytest.raises(BadReply, match="over-long"):
        await rig.link.query("LONG?")
    assert await rig.link.query("B?") == "B"
    assert rig.link.bad_reply_count == 1


async def test_stale_over_long_input_is_dropped_before_the_next_query(rig: Rig) -> None:
    rig.device.write_raw(b"Z" * 300)
    rig.device.write_raw(b"Z" * 10 + b"\r\n")
    await wait_until(lambda: rig.link.bad_reply_count == 1)
    # The over-long line (and its tail up to the line end) is discarded, counted, and not taken as the reply.
    assert await rig.link.query("A?") == "A"
    assert rig.link.bad_reply_count == 1
    assert "over-long" in (rig.link.last_error or "")


async def test_stray_line_without_a_query_is_counted(rig: Rig) -> None:
    rig.device.emit("STRAY")
    await wait_until(lambda: rig.link.bad_reply_count == 1)
    assert await rig.link.query("A?") == "A"
    assert rig.link.bad_reply_count == 1
    assert "STRAY" in (rig.link.last_error or "")


async def test_unsolicited_lines_go_to_subscribers_never_to_a_query(rig: Rig) -> None:
    first, second = rig.link.subscribe(), rig.link.subscribe()
    rig.device.emit("EVT:ESTOP:1")
    assert await rig.link.query("A?") == "A"
    assert await asyncio.wait_for(first.get(), 1) == "EVT:ESTOP:1"
    assert await asyncio.wait_for(second.get(), 1) == "EVT:ESTOP:1"
    rig.link.unsubscribe(second)
    rig.device.emit("EVT:ESTOP:0")
    assert await asyncio.wait_for(first.get(), 1) == "EVT:ESTOP:0"
    assert second.empty()


async def test_malformed_command_is_refused_and_nothing_sent(rig: Rig) -> None:
    for bad in ("A?\r\nB?", "", "caf\u00e9?"):
        with pytest.raises(ValueError):
            await rig.link.query(bad)
    assert await rig.link.query("OK?") == "OK"
    assert rig.handler.received == ["OK?"]


async def test_unplug_during_a_command_then_reconnect_after_replug(rig: Rig) -> None:
    with pytest.raises(LinkDown):
        await rig.link.query("HANG?")
    assert rig.link.state == LinkState.RECONNECTING
    assert rig.states == [LinkState.OPEN, LinkState.RECONNECTING]
    with pytest.raises(LinkDown):
        await rig.link.query("A?")
    received_before = len(rig.handler.received)
    rig.device.replug()
    await rig.link.wait_for_state(LinkState.OPEN, 5.0)
    assert len(rig.handler.received) == received_before, "reconnecting sends nothing by itself"
    assert await rig.link.query("AGAIN?") == "AGAIN"
    assert rig.states == [LinkState.OPEN, LinkState.RECONNECTING, LinkState.OPEN]


async def test_open_missing_port_is_link_down() -> None:
    link = LineTransport("none", "/nonexistent/port", baudrate=38400, eol=b"\r\n")
    with pytest.raises(LinkDown, match="cannot open /nonexistent/port"):
        await link.open()
    assert link.state == LinkState.CLOSED
    with pytest.raises(LinkDown):
        await link.query("A?")


async def test_second_opener_of_a_port_is_refused(rig: Rig) -> None:
    other = LineTransport("other", rig.device.port, baudrate=38400, eol=b"\r\n")
    with pytest.raises(LinkDown):
        await other.open()


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        LineTransport("x", "/dev/null", baudrate=9600, eol=b";")
    with pytest.raises(ValueError):
        LineTransport("x", "/dev/null", baudrate=9600, eol=b"\n", timeout_s=0)


async def test_close_while_reconnecting_stops_retrying(rig: Rig) -> None:
    rig.device.unplug()
    await rig.link.wait_for_state(LinkState.RECONNECTING, 2.0)
    await rig.link.close()
    assert rig.link.state == LinkState.CLOSED
    rig.device.replug()
    assert rig.states == [LinkState.OPEN, LinkState.RECONNECTING, LinkState.CLOSED]


async def test_backoff_keeps_retrying_until_the_device_returns(rig: Rig) -> None:
    rig.device.unplug()
    await rig.link.wait_for_state(LinkState.RECONNECTING, 2.0)
    # Long enough for several failed attempts (0.1 s, then 0.2 s, ...), waited on the link itself.
    with pytest.raises(LinkTimeout):
        await rig.link.wait_for_state(LinkState.OPEN, 0.35)
    rig.device.replug()
    await rig.link.wait_for_state(LinkState.OPEN, 5.0)
    assert await rig.link.query("BACK?") == "BACK"


@pytest.mark.parametrize(
    ("policy", "sleeps"),
    [
        (os.SCHED_FIFO, True),
        (os.SCHED_RR, True),
        # The kiosk's controller asks for SCHED_FIFO with SCHED_RESET_ON_FORK; the flag comes back with it.
        (os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, True),
        (os.SCHED_RR | os.SCHED_RESET_ON_FORK, True),
        (os.SCHED_OTHER, False),
        (os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, False),
        (os.SCHED_BATCH, False),
        (os.SCHED_IDLE, False),
    ],
)
async def test_output_off_written_at_once_then_a_real_time_caller_steps_aside(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, policy: int, sleeps: bool
) -> None:
    """``write_now`` puts the line on the wire before anything else; a real-time thread then sleeps 50 us so
    the kernel worker that carries the line to the device can run on its CPU; any other thread does not."""
    naps: list[float] = []
    monkeypatch.setattr(transport.os, "sched_getscheduler", lambda _pid: policy)
    monkeypatch.setattr(transport.time, "sleep", naps.append)
    rig.link.write_now("LAS:OUT 0")
    assert naps == ([50e-6] if sleeps else [])
    monkeypatch.undo()
    await wait_until(lambda: "LAS:OUT 0" in rig.handler.received)


async def test_an_unknown_scheduling_policy_is_not_real_time(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_pid: int) -> int:
        raise OSError("not permitted")

    naps: list[float] = []
    monkeypatch.setattr(transport.os, "sched_getscheduler", refuse)
    monkeypatch.setattr(transport.time, "sleep", naps.append)
    rig.link.write_now("LAS:OUT 0")
    assert naps == []


def test_real_time_is_read_from_the_calling_thread_as_the_kiosk_sets_it() -> None:
    """Under the policy the kiosk's unit gives the controller (SCHED_FIFO, reset on fork) the calling thread
    is real-time; another thread of the same process is not."""
    seen: dict[str, bool] = {}

    def as_the_kiosk() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
        except PermissionError:
            seen["denied"] = True
            return
        seen["rt"] = transport._real_time()

    worker = threading.Thread(target=as_the_kiosk)
    worker.start()
    worker.join()
    if seen.get("denied"):
        pytest.skip("setting SCHED_FIFO needs CAP_SYS_NICE (run as root)")
    assert seen["rt"] is True
    assert transport._real_time() is False
