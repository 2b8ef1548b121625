"""The laser and TEC drivers against their simulators over real ptys, with the safety board in the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from devices.laser import ArroyoError, LaserDriver, OutOfRange
from devices.sim.rig import SimRig
from devices.tec import TecDriver
from devices.transport import LineTransport


@dataclass
class Bench:
    sim: SimRig
    laser: LaserDriver
    tec: TecDriver
    safety: LineTransport


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    sim = SimRig(seed=5, camera_frame_rate_hz=None)
    await sim.start()
    ports = sim.ports()
    links = [
        LineTransport("laser", ports["laser"], baudrate=38400, eol=b"\r\n"),
        LineTransport("tec", ports["tec"], baudrate=38400, eol=b"\r\n"),
        LineTransport(
            "safety",
            ports["safety"],
            baudrate=115200,
            eol=b"\n",
            is_unsolicited=lambda line: line.startswith(("EVT:", "S:")),
        ),
    ]
    try:
        for link in links:
            await link.open()
        laser, tec = LaserDriver(links[0]), TecDriver(links[1])
        await laser.connect()
        await tec.connect()
        yield Bench(sim, laser, tec, links[2])
    finally:
        for link in links:
            await link.close()
        await sim.stop()


async def arm_safety_board(bench: Bench) -> None:
    assert await bench.safety.query("WDT_RESET") == "OK:WDT_RESET"
    assert await bench.safety.query("ARM") == "OK:ARM"


async def test_identities_and_limits(bench: Bench) -> None:
    assert bench.laser.identity is not None and bench.laser.identity.model == "6310"
    assert bench.laser.identity.serial.startswith("SIM-")
    assert bench.laser.current_limit_ma == 6000.0
    assert (bench.tec.limit_low_c, bench.tec.limit_high_c) == (15.0, 35.0)


async def test_tec_setpoint_and_output(bench: Bench) -> None:
    await bench.tec.set_setpoint_c(24.0)
    assert await bench.tec.get_setpoint_c() == 24.0
    await bench.tec.output_on()
    assert await bench.tec.output_is_on()
    assert 24.0 <= await bench.tec.temperature_c() <= 25.01
    assert await bench.tec.current_a() > 0.0
    assert await bench.tec.output_off() == ()
    with pytest.raises(OutOfRange):
        await bench.tec.set_setpoint_c(36.0)


async def test_laser_refused_while_the_tec_is_off_508(bench: Bench) -> None:
    bench.sim.model.laser_enable = True
    with pytest.raises(ArroyoError) as caught:
        await bench.laser.output_on()
    assert caught.value.codes == (508,)
    assert not await bench.laser.output_is_on()


async def test_laser_refused_while_the_interlock_is_open_501(bench: Bench) -> None:
    await bench.tec.output_on()
    with pytest.raises(ArroyoError) as caught:
        await bench.laser.output_on()
    assert caught.value.codes == (501,)
    assert (await bench.laser.condition()).interlock_open


async def test_full_emission_and_pedal_release_drops_the_output(bench: Bench) -> None:
    events = bench.safety.subscribe()
    await bench.tec.output_on()
    await arm_safety_board(bench)
    assert bench.sim.command("pedal down") == "ok pedal down"
    assert await asyncio.wait_for(events.get(), 1) == "EVT:FOOTPEDAL:1"
    assert await asyncio.wait_for(events.get(), 1) == "EVT:ENABLE:1"
    await bench.laser.set_current_setpoint_ma(1500.0)
    await bench.laser.output_on()
    cond = await bench.laser.condition()
    assert cond.output_on and not cond.interlock_open
    assert bench.sim.model.light_w() == pytest.approx(1.0)
    assert await bench.laser.measured_voltage_v() > 1.5

    bench.sim.command("pedal up")
    assert await asyncio.wait_for(events.get(), 1) == "EVT:FOOTPEDAL:0"
    assert await asyncio.wait_for(events.get(), 1) == "EVT:ENABLE:0"
    cond = await bench.laser.condition()
    assert not cond.output_on and cond.interlock_open
    assert [e.code for e in await bench.laser.errors()] == [501]
    assert bench.sim.model.light_w() == 0.0


async def test_setpoint_above_limit_refused_then_lower_limit(bench: Bench) -> None:
    with pytest.raises(OutOfRange):
        await bench.laser.set_current_setpoint_ma(6000.5)
    assert bench.sim.devices["laser"].lines_received == 2  # *IDN? and LAS:LIM:LDI? only
    await bench.laser.set_current_setpoint_ma(2000.0)
    await bench.laser.set_current_limit_ma(1500.0)
    assert bench.laser.current_limit_ma == 1500.0
    assert await bench.laser.get_current_setpoint_ma() == 1500.0
    with pytest.raises(OutOfRange):
        await bench.laser.set_current_setpoint_ma(1600.0)


async def test_output_off_is_verified_against_the_simulator(bench: Bench) -> None:
    assert await bench.laser.output_off() == ()
    assert not await bench.laser.output_is_on()


async def test_over_long_commands_are_refused_with_102(bench: Bench) -> None:
    link = bench.laser.transport
    await link.write("LAS:OUT 1" + " " * 150)  # over the laser's 128 characters
    assert [e.code for e in await bench.laser.errors()] == [102]
    await link.write("LAS:OUT 1;" * 30)  # over the pty's own line bound too
    assert [e.code for e in await bench.laser.errors()] == [102]
    assert not await bench.laser.output_is_on()


async def test_unknown_command_and_bad_value_reach_err(bench: Bench) -> None:
    link = bench.tec.transport
    await link.write("TEC:BOGUS 1")
    await link.write("TEC:T hot")
    await link.write("TEC:T 99")
    assert [e.code for e in await bench.tec.errors()] == [123, 202, 201]


async def emitting(bench: Bench) -> asyncio.Queue[str]:
    """TEC on, board armed, pedal down, laser on at 1.5 A: the rig emitting 1 W.

    Returns the safety board's event queue."""
    events = bench.safety.subscribe()
    await bench.tec.output_on()
    await arm_safety_board(bench)
    bench.sim.command("pedal down")
    assert await asyncio.wait_for(events.get(), 1) == "EVT:FOOTPEDAL:1"
    assert await asyncio.wait_for(events.get(), 1) == "EVT:ENABLE:1"
    await bench.laser.set_current_setpoint_ma(1500.0)
    await bench.laser.output_on()
    assert bench.sim.model.light_w() == pytest.approx(1.0)
    return events


async def test_watchdog_expiry_drops_laser_enable_and_the_laser_output(bench: Bench) -> None:
    assert await bench.safety.query("WDT_TIMEOUT:300") == "OK:WDT_TIMEOUT:300"
    events = await emitting(bench)
    # The host stops feeding the watchdog (no WDT_RESET): within its timeout the board drops the line.
    seen = [await asyncio.wait_for(events.get(), 2), await asyncio.wait_for(events.get(), 2)]
    assert set(seen) == {"EVT:ENABLE:0", "EVT:WDT:1"}
    cond = await bench.laser.condition()
    assert not cond.output_on and cond.interlock_open
    assert [e.code for e in await bench.laser.errors()] == [501]
    assert bench.sim.model.light_w() == 0.0
    # The board stays down until the host clears the watchdog and arms again: no output comes back.
    bench.sim.command("pedal up")
    bench.sim.command("pedal down")
    assert not bench.sim.model.laser_enable
    with pytest.raises(ArroyoError) as caught:
        await bench.laser.output_on()
    assert caught.value.codes == (501,)


async def test_estop_drops_the_laser_output(bench: Bench) -> None:
    events = await emitting(bench)
    assert bench.sim.command("estop on").startswith("ok")
    seen = [await asyncio.wait_for(events.get(), 1), await asyncio.wait_for(events.get(), 1)]
    assert seen[0] == "EVT:ESTOP:1" and "EVT:ENABLE:0" in seen
    assert not await bench.laser.output_is_on()
    assert [e.code for e in await bench.laser.errors()] == [501]
    assert bench.sim.model.light_w() == 0.0
