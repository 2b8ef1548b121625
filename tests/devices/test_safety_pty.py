"""The safety board driver over a real pty, against both safety boards: the Python simulator and the C
firmware on a simulated ATmega328P (skipped, saying why, only where the AVR toolchain or simavr is not
installed)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from devices.safety import EventKind, EventStream, NotReady, SafetyBoardDriver, SafetyEvent
from devices.sim.firmware import FirmwarePort, FirmwareSafetyBoard, missing_tools
from devices.sim.model import PhysicalModel
from devices.sim.pty import PtyDevice
from devices.sim.safety import LINE_MAX_BYTES, SafetyBoardSim
from devices.transport import BadReply, LineTransport


class Recorder:
    """A line handler that records every line and counts heartbeats before the simulator handles it."""

    def __init__(self, sim: SafetyBoardSim | FirmwareSafetyBoard) -> None:
        self.sim = sim
        self.lines: list[str] = []
        self.heartbeats = 0
        self.heartbeat_target = 0
        self.heartbeats_reached = asyncio.Event()

    def handle_line(self, line: str) -> list[str]:
        self.lines.append(line)
        if line == "WDT_RESET":
            self.heartbeats += 1
            if self.heartbeat_target and self.heartbeats >= self.heartbeat_target:
                self.heartbeats_reached.set()
        return self.sim.handle_line(line)

    def handle_overlong(self) -> None:
        if isinstance(self.sim, SafetyBoardSim):
            self.sim.handle_overlong()


@dataclass
class Board:
    model: PhysicalModel
    sim: SafetyBoardSim | FirmwareSafetyBoard
    recorder: Recorder
    device: PtyDevice
    transport: LineTransport
    driver: SafetyBoardDriver


@pytest.fixture(params=["python", "firmware"])
async def board(request: pytest.FixtureRequest) -> AsyncIterator[Board]:
    model = PhysicalModel(seed=2)
    sim: SafetyBoardSim | FirmwareSafetyBoard
    device: PtyDevice
    if request.param == "firmware":
        missing = missing_tools()
        if missing:
            pytest.skip(f"safety firmware under simavr: not installed: {', '.join(missing)}")
        sim = FirmwareSafetyBoard(model)
        recorder = Recorder(sim)
        device = FirmwarePort("safety", recorder, forward=sim.receive, eol=b"\n", seed=5)
    else:
        sim = SafetyBoardSim(model)
        recorder = Recorder(sim)
        device = PtyDevice("safety", recorder, eol=b"\n", seed=5, max_line_bytes=LINE_MAX_BYTES)
    await device.start()
    sim.attach(device)
    await sim.start()
    transport = LineTransport("safety", device.path, baudrate=115200, eol=b"\n", max_line_bytes=128)
    driver = SafetyBoardDriver(transport)
    try:
        await transport.open()
        await driver.start()
        yield Board(model, sim, recorder, device, transport, driver)
    finally:
        await driver.close()
        await transport.close()
        await sim.stop()
        await device.stop()


async def next_event(events: EventStream, kind: EventKind, timeout_s: float = 1.0) -> SafetyEvent:
    """The next event of ``kind`` (others are skipped)."""
    async with asyncio.timeout(timeout_s):
        async for event in events:
            if event.kind is kind:
                return event
    raise AssertionError("event stream ended")


async def test_version_readings_motor_and_aiming_beam(board: Board) -> None:
    driver, model = board.driver, board.model
    assert await driver.check_version() == "3.1"
    assert await driver.set_motor_speed(200) == 153
    assert model.motor_pwm == 153
    assert await driver.vibration_g() == pytest.approx(1.5, abs=0.02)
    assert await driver.set_motor_speed(77) == 77 and model.motor_pwm == 77
    await driver.motor_off()
    assert model.motor_pwm == 0 and await driver.vibration_g() < 0.1
    model.laser_output_on, model.laser_current_ma = True, 2500.0  # 2.0 W of light
    assert await driver.photodiode_v() == pytest.approx(1.0, abs=0.011)
    assert await driver.footpedal() is False and await driver.estop() is False
    await driver.aiming_beam(True)
    assert board.sim.aiming_beam
    await driver.aiming_beam(False)
    assert not board.sim.aiming_beam


async def test_pedal_edges_arrive_as_typed_events(board: Board) -> None:
    driver = board.driver
    with driver.events() as events:
        await driver.heartbeat()
        await driver.arm()
        board.sim.set_pedal(True)
        pedal = await next_event(events, EventKind.FOOTPEDAL)
        enable = await next_event(events, EventKind.ENABLE)
        assert pedal.value and enable.value and pedal.received <= enable.received
        assert board.model.laser_enable and driver.laser_enable and driver.pedal_pressed
        board.sim.set_pedal(False)
        assert not (await next_event(events, EventKind.FOOTPEDAL)).value
        assert not (await next_event(events, EventKind.ENABLE)).value
        assert not board.model.laser_enable


async def test_estop_refuses_arming(board: Board) -> None:
    with board.driver.events() as events:
        board.sim.set_estop(True)
        assert (await next_event(events, EventKind.ESTOP)).value
        with pytest.raises(NotReady) as info:
            await board.driver.arm()
        assert info.value.reason == "ESTOP"
        assert await board.driver.estop() is True


async def test_watchdog_expiry_drops_laser_enable(board: Board) -> None:
    driver, model = board.driver, board.model
    await driver.set_watchdog_timeout(100)
    assert await driver.set_motor_speed(120) == 120
    with driver.events() as events:
        await driver.heartbeat()
        await driver.arm()
        board.sim.set_pedal(True)
        assert (await next_event(events, EventKind.ENABLE)).value
        assert model.laser_enable
        # No more heartbeats: the board's watchdog expires by itself.
        dropped = await next_event(events, EventKind.ENABLE)
        expired = await next_event(events, EventKind.WDT)
        assert not dropped.value and dropped.received <= expired.received
        assert not model.laser_enable and model.motor_pwm == 0 and driver.watchdog_expired
        await driver.heartbeat()
        with pytest.raises(NotReady) as info:
            await driver.arm()
        assert info.value.reason == "WDT" and not model.laser_enable
        await driver.clear_watchdog()
        assert not model.laser_enable  # still needs ARM
        await driver.heartbeat()
        await driver.arm()
        assert (await next_event(events, EventKind.ENABLE)).value
        assert model.laser_enable


async def test_heartbeat_keeps_the_watchdog_fed(board: Board) -> None:
    driver, model = board.driver, board.model
    await driver.set_watchdog_timeout(200)
    with driver.events() as events:
        driver.start_heartbeat(0.02)
        board.recorder.heartbeat_target = 20  # 400 ms: two watchdog timeouts
        await driver.arm()
        board.sim.set_pedal(True)
        assert (await next_event(events, EventKind.ENABLE)).value
        async with asyncio.timeout(3.0):
            await board.recorder.heartbeats_reached.wait()
        assert model.laser_enable and not board.sim.wdt_expired
        await driver.stop_heartbeat()
        assert (await next_event(events, EventKind.WDT)).value
        assert not model.laser_enable
    assert driver.heartbeat_failures == 0


async def test_stream_samples(board: Board) -> None:
    board.model.motor_pwm = 153
    with board.driver.samples() as samples:
        await board.driver.set_stream(100)
        got = [await samples.get(1.0) for _ in range(5)]
        await board.driver.set_stream(0)
    assert all(s.vibration_g == pytest.approx(1.5, abs=0.02) and not s.pedal for s in got)
    assert all(b.board_ms > a.board_ms for a, b in itertools.pairwise(got))
    assert board.driver.last_sample is not None


async def test_events_and_samples_never_answer_a_pending_query(board: Board) -> None:
    """Pedal edges and 200 Hz samples flow while 60 queries run; every reply reaches its query."""
    driver = board.driver
    await driver.set_stream(200)
    edges = 0

    async def stomp() -> None:
        nonlocal edges
        for _ in range(40):
            board.sim.set_pedal(not board.sim.pedal)
            edges += 1
            await asyncio.sleep(0.002)

    with driver.events() as events:
        stomper = asyncio.create_task(stomp())
        for _ in range(20):
            assert await driver.estop() is False
            assert 0.0 <= await driver.photodiode_v() <= 5.0
            await driver.aiming_beam(False)
        await stomper
        await driver.set_stream(0)
        pedal_events = []
        while len(pedal_events) < edges:
            event = await events.get(1.0)
            if event.kind is EventKind.FOOTPEDAL:
                pedal_events.append(event.value)
    assert pedal_events == [i % 2 == 0 for i in range(edges)]
    assert board.transport.bad_reply_count == 0


async def test_unknown_command_and_garbage(board: Board) -> None:
    assert await board.transport.query("HELLO") == "ERROR:UNKNOWN_COMMAND:HELLO"
    board.device.garbage(6)
    with pytest.raises(BadReply):
        await board.driver.footpedal()
    assert await board.driver.footpedal() is False


async def test_over_long_lines_are_discarded_whole_and_answered(board: Board) -> None:
    assert await board.transport.query("X" * 64) == "ERROR:UNKNOWN_COMMAND:" + "X" * 64
    assert await board.transport.query("ARM" + " " * 62) == "ERROR:LINE_TOO_LONG"
    assert not (await board.driver.read_status()).armed
    assert await board.transport.query("VERSION?") == "VERSION:3.1"


async def test_a_push_event_reaches_a_listener_in_the_callback_that_read_it_not_in_a_task(
    board: Board,
) -> None:
    """The pedal edge is acted on where its bytes are read from the port: no task is scheduled in between."""
    seen: list[tuple[SafetyEvent, asyncio.Task[object] | None]] = []

    def listener(item: object) -> None:
        if isinstance(item, SafetyEvent) and item.kind is EventKind.FOOTPEDAL:
            seen.append((item, asyncio.current_task()))

    board.driver.add_listener(listener)
    with board.driver.events() as events:
        board.sim.set_pedal(True)
        event = await next_event(events, EventKind.FOOTPEDAL)
    assert event.value and board.driver.pedal_pressed
    assert [(e.value, task) for e, task in seen] == [(True, None)]
    read_at = board.transport.last_rx_monotonic
    assert read_at is not None and seen[0][0].received <= read_at  # stamped when its bytes were read
