"""The actuator driver against the actuator simulator over a real pty."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from devices.actuator import ActuatorDriver, ActuatorStopped, MoveFailed, PositionOutOfRange
from devices.sim.actuator import ActuatorSim
from devices.sim.model import PhysicalModel
from devices.sim.pty import PtyDevice
from devices.transport import BadReply, LineTransport


class Recorder:
    """A line handler recording every line (and running ``before(line)``) before the simulator handles it."""

    def __init__(self, sim: ActuatorSim) -> None:
        self.sim = sim
        self.lines: list[str] = []
        self.before: Callable[[str], None] | None = None

    def handle_line(self, line: str) -> list[str]:
        self.lines.append(line)
        if self.before is not None:
            self.before(line)
        return self.sim.handle_line(line)


@dataclass
class Stage:
    model: PhysicalModel
    sim: ActuatorSim
    recorder: Recorder
    device: PtyDevice
    transport: LineTransport
    driver: ActuatorDriver


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    model = PhysicalModel(seed=1)
    sim = ActuatorSim(model, min_index_s=0.05, index_timeout_s=0.3)
    recorder = Recorder(sim)
    device = PtyDevice("actuator", recorder, eol=b"\n", seed=7)
    await device.start()
    sim.attach(device)
    await sim.start()
    transport = LineTransport("actuator", device.path, baudrate=115200, eol=b"\n", max_line_bytes=64)
    try:
        await transport.open()
        yield Stage(model, sim, recorder, device, transport, ActuatorDriver(transport))
    finally:
        await transport.close()
        await sim.stop()
        await device.stop()


async def ready(stage: Stage, speed: int = 20_000) -> None:
    driver = stage.driver
    await driver.reset()
    await driver.configure(speed_um_s=speed)
    await driver.enable_amplifiers()
    await driver.find_index(timeout_s=2.0)


async def test_home_and_move(stage: Stage) -> None:
    stage.model.actuator_position_um = 400.0  # wherever the stage stood at power-up
    await ready(stage)
    assert stage.model.actuator_position_um == 0.0  # the index mark
    reached = await stage.driver.move_to_um(1000.0)
    assert reached == pytest.approx(1000.0, abs=1.25)
    assert stage.model.ring_mm() == pytest.approx(3.0, abs=0.002)
    status = await stage.driver.status()
    assert status.position_reached and status.closed_loop and status.encoder_valid and not status.motor_on
    assert await stage.driver.position_um() == pytest.approx(1000.0, abs=1.25)
    assert await stage.driver.target_um() == 1000.0
    assert stage.transport.bad_reply_count == 0


async def test_out_of_range_target_never_reaches_the_stage(stage: Stage) -> None:
    await ready(stage)
    sent = len(stage.recorder.lines)
    with pytest.raises(PositionOutOfRange, match="outside the soft limits"):
        await stage.driver.move_to_um(3500.0)
    assert len(stage.recorder.lines) == sent


async def test_move_before_index_is_refused(stage: Stage) -> None:
    await stage.driver.reset()
    await stage.driver.enable_amplifiers()
    with pytest.raises(MoveFailed, match="refused the move"):
        await stage.driver.move_to_um(100.0, timeout_s=1.0)


async def test_thermal_stop_is_reported_and_never_cleared_by_the_driver(stage: Stage) -> None:
    await ready(stage, speed=200)

    def overheat_once_moving(line: str) -> None:
        # The driver polls STAT during the move; the stage overheats once it has travelled 5 µm.
        if line == "STAT=?" and stage.model.actuator_position_um > 5.0 and stage.recorder.before:
            stage.recorder.before = None
            stage.sim.thermal_fault()

    stage.recorder.before = overheat_once_moving
    with pytest.raises(ActuatorStopped, match=r"THERMAL_PROTECTION_1 \(bit 2\)"):
        await stage.driver.move_to_um(1000.0)
    where = stage.model.actuator_position_um
    assert 5.0 < where < 1000.0
    assert stage.driver.fault is not None and stage.driver.fault.thermal_protection_1
    stage.sim.clear_fault()  # the stage has cooled down
    with pytest.raises(ActuatorStopped):
        await stage.driver.move_to_um(1000.0, timeout_s=1.0)
    status = await stage.driver.status()
    assert status.stopped_by_fault and not status.amplifiers_enabled
    assert stage.recorder.lines.count("ENBL=1") == 1  # only the explicit enable at the start
    # An explicit request re-enables; the stage then moves again.
    await stage.driver.enable_amplifiers()
    assert stage.driver.fault is None
    assert await stage.driver.move_to_um(50.0, timeout_s=5.0) == pytest.approx(50.0, abs=1.25)


async def test_enable_refused_while_still_hot(stage: Stage) -> None:
    await ready(stage)
    stage.sim.thermal_fault(2)
    with pytest.raises(ActuatorStopped, match=r"THERMAL_PROTECTION_2 \(bit 3\)"):
        await stage.driver.enable_amplifiers()


async def test_jam_trips_error_limit(stage: Stage) -> None:
    await ready(stage)
    stage.sim.jam()
    with pytest.raises(ActuatorStopped, match=r"ERROR_LIMIT \(bit 16\)"):
        await stage.driver.move_to_um(1000.0)


async def test_encoder_fault_times_out_the_index_search(stage: Stage) -> None:
    await stage.driver.reset()
    await stage.driver.enable_amplifiers()
    stage.sim.encoder_fault()
    with pytest.raises(ActuatorStopped, match=r"SAFETY_TIMEOUT \(bit 18\)"):
        await stage.driver.find_index(timeout_s=2.0)
    assert (await stage.driver.status()).encoder_error


async def test_info_stream_with_queries_in_flight(stage: Stage) -> None:
    await ready(stage)
    queue = stage.driver.subscribe_info()
    await stage.driver.start_info(5)
    # Queries of other tags while INFO lines pour in every 5 ms: never confused.
    for _ in range(5):
        await stage.driver.configure(speed_um_s=20_000)
    reached = await stage.driver.move_to_um(500.0)  # status and position read from INFO lines
    assert reached == pytest.approx(500.0, abs=1.25)
    await stage.driver.stop_info()
    stage.driver.unsubscribe_info(queue)
    infos = [stage.driver.parse_info(queue.get_nowait()) for _ in range(queue.qsize())]
    assert len(infos) >= 9
    assert {info.tag for info in infos} == {"EPOS", "DPOS", "STAT"}
    assert max(info.value for info in infos if info.tag == "EPOS") == 400
    assert await stage.driver.position_um() == 500.0  # a plain query again
    assert stage.transport.bad_reply_count == 0


async def test_garbage_and_unknown_commands(stage: Stage) -> None:
    await ready(stage)
    stage.device.garbage(8)
    with pytest.raises(BadReply):
        await stage.driver.status()
    assert (await stage.driver.status()).encoder_valid  # the next exchange is clean
    await stage.transport.write("FOO=1")
    await stage.transport.write("DPOS=123456789012")  # 17 characters
    await stage.transport.write("hello")
    assert (await stage.driver.status()).position_reached
    assert stage.sim.ignored_lines == 3
    assert stage.model.actuator_position_um == 0.0
