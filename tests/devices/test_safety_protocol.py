"""Byte-level tests of the safety board driver: every method against a scripted device on a real pty."""

from __future__ import annotations

import asyncio

import pytest

from devices.safety import (
    BoardStatus,
    EventKind,
    NotReady,
    SafetyBoardDriver,
    SafetyEvent,
    UnknownCommand,
    VersionMismatch,
    WatchdogState,
    is_unsolicited,
    parse_event,
    parse_sample,
)
from devices.transport import BadReply
from tests.devices.protocol import expected_protocol

LF = b"\n"


def test_line_classes() -> None:
    assert is_unsolicited("EVT:FOOTPEDAL:1") and is_unsolicited("S:1,0.000,0,0,0.050,0")
    assert not is_unsolicited("OK:ARM") and not is_unsolicited("ERROR:NOT_READY:ESTOP")
    assert parse_event("EVT:ESTOP:1", 2.0) == SafetyEvent(EventKind.ESTOP, True, 2.0)
    assert parse_event("EVT:WDT:1", 2.0) == SafetyEvent(EventKind.WDT, True, 2.0)
    for bad in ("EVT:WDT:0", "EVT:PEDAL:1", "EVT:ENABLE:2", "EVT:ENABLE:1 "):
        assert parse_event(bad, 0.0) is None
    sample = parse_sample("S:1234,1.002,1,0,1.496,1", 3.0)
    assert sample is not None
    assert (sample.board_ms, sample.photodiode_v, sample.pedal, sample.estop) == (1234, 1.002, True, False)
    assert (sample.vibration_g, sample.laser_enable, sample.received) == (1.496, True, 3.0)
    for bad in (
        "S:1,1.0,1,0,1.496,1",
        "S:1,1.002,1,0,1.496",
        "S:x,1.002,1,0,1.496,1",
        "S:1,1.002,2,0,1.496,1",
    ):
        assert parse_sample(bad, 0.0) is None


async def test_check_version() -> None:
    async with expected_protocol([("VERSION?", "VERSION:3.0"), ("VERSION?", "VERSION:3.12")], eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        assert await driver.check_version() == "3.0"
        assert await driver.check_version() == "3.12"


async def test_old_firmware_is_refused() -> None:
    async with expected_protocol([("VERSION?", "VERSION:2.0")], eol=LF) as link:
        with pytest.raises(VersionMismatch, match=r"protocol 2\.0; this console needs protocol 3\.x"):
            await SafetyBoardDriver(link.transport).check_version()


@pytest.mark.parametrize("reply", ["VERSION:3", "TOSCA-SAFETY 3.0", "VERSION:3.x"])
async def test_malformed_version(reply: str) -> None:
    async with expected_protocol([("VERSION?", reply)], eol=LF) as link:
        with pytest.raises(BadReply):
            await SafetyBoardDriver(link.transport).check_version()


async def test_version_of_firmware_2_is_an_unknown_command() -> None:
    async with expected_protocol([("VERSION?", "ERROR:UNKNOWN_COMMAND:VERSION?")], eol=LF) as link:
        with pytest.raises(UnknownCommand, match="VERSION"):
            await SafetyBoardDriver(link.transport).check_version()


async def test_simple_commands() -> None:
    script = [
        ("WDT_RESET", "OK:WDT_RESET"),
        ("WDT_TIMEOUT:500", "OK:WDT_TIMEOUT:500"),
        ("ARM", "OK:ARM"),
        ("DISARM", "OK:DISARM"),
        ("WDT_CLEAR", "OK:WDT_CLEAR"),
        ("STREAM:50", "OK:STREAM:50"),
        ("STREAM:0", "OK:STREAM:0"),
        ("MOTOR_OFF", "OK:MOTOR_OFF"),
        ("LASER_ON", "OK:LASER_ON"),
        ("LASER_OFF", "OK:LASER_OFF"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        await driver.heartbeat()
        await driver.set_watchdog_timeout(500)
        assert driver.watchdog_timeout_ms == 500
        await driver.arm()
        await driver.disarm()
        driver.watchdog_expired = True
        await driver.clear_watchdog()
        assert not driver.watchdog_expired
        await driver.set_stream(50)
        assert driver.stream_hz == 50
        await driver.set_stream(0)
        await driver.motor_off()
        await driver.aiming_beam(True)
        await driver.aiming_beam(False)


@pytest.mark.parametrize(
    ("reply", "armed", "watchdog"),
    [
        ("STATUS:ARMED=0,WDT=IDLE", False, WatchdogState.IDLE),
        ("STATUS:ARMED=1,WDT=FED", True, WatchdogState.FED),
        ("STATUS:ARMED=0,WDT=EXPIRED", False, WatchdogState.EXPIRED),
    ],
)
async def test_status(reply: str, armed: bool, watchdog: WatchdogState) -> None:
    async with expected_protocol([("STATUS?", reply)], eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        status = await driver.read_status()
        assert status == BoardStatus(armed, watchdog)
        assert driver.watchdog_expired == (watchdog is WatchdogState.EXPIRED)


@pytest.mark.parametrize("reply", ["STATUS:ARMED=2,WDT=FED", "STATUS:0,1", "STATUS:ARMED=0,WDT=GONE"])
async def test_malformed_status_is_a_bad_reply(reply: str) -> None:
    async with expected_protocol([("STATUS?", reply)], eol=LF) as link:
        with pytest.raises(BadReply, match="STATUS"):
            await SafetyBoardDriver(link.transport).read_status()


async def test_status_on_firmware_3_0_is_an_unknown_command() -> None:
    async with expected_protocol([("STATUS?", "ERROR:UNKNOWN_COMMAND:STATUS?")], eol=LF) as link:
        with pytest.raises(UnknownCommand, match="STATUS"):
            await SafetyBoardDriver(link.transport).read_status()


async def test_wrong_acknowledgement_is_a_bad_reply() -> None:
    async with expected_protocol([("DISARM", "OK:ARM")], eol=LF) as link:
        with pytest.raises(BadReply, match="expected 'OK:DISARM'"):
            await SafetyBoardDriver(link.transport).disarm()


@pytest.mark.parametrize("reason", ["ESTOP", "WDT"])
async def test_arm_not_ready(reason: str) -> None:
    async with expected_protocol([("ARM", f"ERROR:NOT_READY:{reason}")], eol=LF) as link:
        with pytest.raises(NotReady, match=reason) as info:
            await SafetyBoardDriver(link.transport).arm()
        assert info.value.reason == reason


async def test_unknown_command_is_an_error() -> None:
    async with expected_protocol([("MOTOR_OFF", "ERROR:UNKNOWN_COMMAND:MOTOR_OFF")], eol=LF) as link:
        with pytest.raises(UnknownCommand, match="did not understand 'MOTOR_OFF'"):
            await SafetyBoardDriver(link.transport).motor_off()


async def test_readings() -> None:
    script = [
        ("GET_PHOTODIODE", "PHOTODIODE:2.500"),
        ("GET_VIBRATION_LEVEL", "VIBRATION:0.912"),
        ("GET_FOOTPEDAL", "FOOTPEDAL:1"),
        ("GET_FOOTPEDAL", "FOOTPEDAL:0"),
        ("GET_ESTOP", "ESTOP:1"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        assert await driver.photodiode_v() == 2.5
        assert await driver.vibration_g() == 0.912
        assert await driver.footpedal() is True
        assert await driver.footpedal() is False
        assert await driver.estop() is True and driver.estop_pressed


@pytest.mark.parametrize(
    "command,reply",
    [
        ("GET_PHOTODIODE", "PHOTODIODE:2.5"),
        ("GET_PHOTODIODE", "VIBRATION:2.500"),
        ("GET_VIBRATION_LEVEL", "VIBRATION:-0.100"),
        ("GET_FOOTPEDAL", "FOOTPEDAL:2"),
        ("GET_ESTOP", "FOOTPEDAL:1"),
    ],
)
async def test_malformed_readings(command: str, reply: str) -> None:
    methods = {
        "GET_PHOTODIODE": SafetyBoardDriver.photodiode_v,
        "GET_VIBRATION_LEVEL": SafetyBoardDriver.vibration_g,
        "GET_FOOTPEDAL": SafetyBoardDriver.footpedal,
        "GET_ESTOP": SafetyBoardDriver.estop,
    }
    async with expected_protocol([(command, reply)], eol=LF) as link:
        with pytest.raises(BadReply):
            await methods[command](SafetyBoardDriver(link.transport))


async def test_motor_speed_and_clamp() -> None:
    script = [
        ("MOTOR_SPEED:100", "OK:MOTOR_SPEED:100"),
        ("MOTOR_SPEED:200", ["WARNING:PWM_CLAMPED_TO_MAX", "OK:MOTOR_SPEED:153"]),
    ]
    async with expected_protocol(script, eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        assert await driver.set_motor_speed(100) == 100
        assert await driver.set_motor_speed(200) == 153


async def test_clamp_without_its_warning_is_a_bad_reply() -> None:
    async with expected_protocol(
        [("MOTOR_SPEED:200", ["OK:MOTOR_SPEED:153", "OK:MOTOR_SPEED:153"])], eol=LF
    ) as link:
        with pytest.raises(BadReply, match="clamp warning"):
            await SafetyBoardDriver(link.transport).set_motor_speed(200)


async def test_out_of_range_arguments_send_nothing() -> None:
    async with expected_protocol([], eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        for bad in (-1, 256, True, 1.5):
            with pytest.raises(ValueError, match="PWM"):
                await driver.set_motor_speed(bad)  # type: ignore[arg-type]
        for bad in (99, 2001):
            with pytest.raises(ValueError, match=r"100\.\.2000"):
                await driver.set_watchdog_timeout(bad)
        for bad in (5, 201, -1):
            with pytest.raises(ValueError, match="stream rate"):
                await driver.set_stream(bad)
        assert link.received == []


async def test_push_and_sample_lines_kept_apart_from_a_pending_reply() -> None:
    script = [
        ("GET_PHOTODIODE", ["EVT:FOOTPEDAL:1", "S:10,1.002,1,0,1.496,0", "EVT:ENABLE:1", "PHOTODIODE:1.002"]),
        ("GET_FOOTPEDAL", ["S:20,1.002,1,0,1.496,1", "FOOTPEDAL:1"]),
    ]
    async with expected_protocol(script, eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        await driver.start()
        try:
            with driver.events() as events, driver.samples() as samples:
                assert await driver.photodiode_v() == 1.002
                assert await driver.footpedal() is True
                first = await events.get(1.0)
                second = await events.get(1.0)
                assert (first.kind, first.value) == (EventKind.FOOTPEDAL, True)
                assert (second.kind, second.value) == (EventKind.ENABLE, True)
                assert first.received <= second.received
                got = [await samples.get(1.0), await samples.get(1.0)]
                assert [s.board_ms for s in got] == [10, 20]
                assert got[1].laser_enable
            assert driver.pedal_pressed and driver.laser_enable
            assert link.transport.bad_reply_count == 0
        finally:
            await driver.close()


async def test_malformed_push_line_is_counted_and_dropped() -> None:
    async with expected_protocol(
        [("GET_ESTOP", ["EVT:FOOTPEDAL:7", "EVT:ESTOP:1", "ESTOP:1"])], eol=LF
    ) as link:
        driver = SafetyBoardDriver(link.transport)
        await driver.start()
        try:
            with driver.events() as events:
                assert await driver.estop() is True
                event = await events.get(1.0)
                assert event.kind is EventKind.ESTOP
                assert link.transport.bad_reply_count == 1
        finally:
            await driver.close()


async def test_watchdog_event_sets_the_flag_and_streams_end_on_close() -> None:
    async with expected_protocol([], eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        await driver.start()
        events = driver.events()
        link.peer.emit("EVT:WDT:1")
        event = await events.get(1.0)
        assert event.kind is EventKind.WDT and driver.watchdog_expired
        await driver.close()
        with pytest.raises(StopAsyncIteration):
            await events.get(1.0)


async def test_heartbeat_task() -> None:
    async with expected_protocol([("WDT_RESET", "OK:WDT_RESET")] * 3, eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        driver.start_heartbeat(0.05)
        assert driver.heartbeat_running
        with pytest.raises(RuntimeError, match="already running"):
            driver.start_heartbeat()
        with pytest.raises(ValueError, match="too slow"):
            await driver.set_watchdog_timeout(100)
        async with asyncio.timeout(2.0):
            await link.handler.done.wait()
        await driver.stop_heartbeat()
        assert not driver.heartbeat_running and driver.heartbeat_failures == 0


async def test_heartbeat_failures_are_counted_and_it_keeps_going() -> None:
    script = [("WDT_RESET", "OK:WDT_RESET"), ("WDT_RESET", "OK:NOPE"), ("WDT_RESET", "OK:WDT_RESET")]
    async with expected_protocol(script, eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        driver.start_heartbeat(0.02)
        async with asyncio.timeout(2.0):
            await link.handler.done.wait()
        await driver.stop_heartbeat()
        assert driver.heartbeat_failures == 1 and "OK:NOPE" in (driver.last_heartbeat_error or "")


async def test_heartbeat_period_must_be_well_under_the_timeout() -> None:
    async with expected_protocol([], eol=LF) as link:
        driver = SafetyBoardDriver(link.transport)
        with pytest.raises(ValueError, match="at most 333 ms for a 1000 ms watchdog"):
            driver.start_heartbeat(0.5)
        with pytest.raises(ValueError, match="above 0"):
            driver.start_heartbeat(0.0)
        assert not driver.heartbeat_running
