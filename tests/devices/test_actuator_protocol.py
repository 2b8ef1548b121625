"""Byte-level tests of the actuator driver: every method against a scripted device on a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import pytest

from devices.actuator import (
    ActuatorDriver,
    ActuatorError,
    ActuatorStatus,
    ActuatorStopped,
    MoveFailed,
    PositionOutOfRange,
    StatBit,
)
from devices.transport import BadReply
from tests.devices.protocol import expected_protocol

LF = b"\n"
# STAT words used below.
ENABLED = 1
SEARCHING = 1 | 32 | 512
MOVING = 1 | 32 | 64 | 256
REACHED = 1 | 64 | 128 | 256 | 1024
REACHED_AWAY = 1 | 64 | 256 | 1024
THERMAL_STOP = 4 | 256


def test_status_decoding_names_every_bit() -> None:
    status = ActuatorStatus.decode(sum(bit.value for bit in StatBit))
    flags = [
        status.amplifiers_enabled,
        status.end_stop,
        status.thermal_protection_1,
        status.thermal_protection_2,
        status.motor_on,
        status.closed_loop,
        status.encoder_at_index,
        status.encoder_valid,
        status.searching_index,
        status.position_reached,
        status.encoder_error,
        status.error_limit,
        status.safety_timeout,
        status.position_fail,
    ]
    assert all(flags) and len(flags) == len(StatBit)
    assert status.stopped_by_fault
    assert status.fault_bits == (
        StatBit.THERMAL_PROTECTION_1
        | StatBit.THERMAL_PROTECTION_2
        | StatBit.ERROR_LIMIT
        | StatBit.SAFETY_TIMEOUT
    )
    quiet = ActuatorStatus.decode(REACHED)
    assert (
        quiet.position_reached
        and quiet.encoder_at_index
        and not quiet.motor_on
        and not quiet.stopped_by_fault
    )
    assert quiet.describe() == (
        "AMPLIFIERS_ENABLED (bit 0), CLOSED_LOOP (bit 6), ENCODER_AT_INDEX (bit 7), ENCODER_VALID (bit 8), "
        "POSITION_REACHED (bit 10)"
    )
    assert ActuatorStatus.decode(1 << 4).flags == StatBit(0)  # an undocumented bit is kept raw, not named
    with pytest.raises(ValueError, match="negative"):
        ActuatorStatus.decode(-1)


def test_unit_conversion() -> None:
    assert ActuatorDriver.um_to_counts(1000.0) == 800
    assert ActuatorDriver.um_to_counts(1.25) == 1
    assert ActuatorDriver.counts_to_um(-8) == -10.0


def test_limits_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="below"):
        ActuatorDriver(None, low_limit_um=10.0, high_limit_um=10.0)  # type: ignore[arg-type]


async def test_reset() -> None:
    async with expected_protocol([("RSET=0", None), ("INFO=?", "INFO=0")], eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        await driver.reset()
        assert not driver.info_on


async def test_reset_refuses_a_stage_still_streaming() -> None:
    async with expected_protocol([("RSET=0", None), ("INFO=?", "INFO=3")], eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        with pytest.raises(BadReply, match="INFO still on"):
            await driver.reset()


async def test_configure_writes_and_reads_back() -> None:
    script = [
        ("SSPD=500", None),
        ("LLIM=0", None),
        ("HLIM=2400", None),
        ("PTO2=3", None),
        ("SSPD=?", "SSPD=500"),
        ("LLIM=?", "LLIM=0"),
        ("HLIM=?", "HLIM=2400"),
        ("PTO2=?", "PTO2=3"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        await ActuatorDriver(link.transport).configure(speed_um_s=500, tolerance_counts=3)


async def test_configure_detects_a_value_not_kept() -> None:
    script = [
        ("SSPD=200", None),
        ("LLIM=-80", None),
        ("HLIM=800", None),
        ("PTO2=4", None),
        ("SSPD=?", "SSPD=200"),
        ("LLIM=?", "LLIM=0"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        driver = ActuatorDriver(link.transport, low_limit_um=-100.0, high_limit_um=1000.0)
        with pytest.raises(ActuatorError, match="LLIM=0 after LLIM=-80"):
            await driver.configure()


async def test_configure_validates_before_sending() -> None:
    async with expected_protocol([], eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        with pytest.raises(ValueError, match="speed"):
            await driver.configure(speed_um_s=0)
        with pytest.raises(ValueError, match="tolerance"):
            await driver.configure(tolerance_counts=-1)


async def test_enable_amplifiers() -> None:
    async with expected_protocol([("ENBL=1", None), ("STAT=?", f"STAT={ENABLED}")], eol=LF) as link:
        status = await ActuatorDriver(link.transport).enable_amplifiers()
        assert status.amplifiers_enabled


async def test_enable_refused_while_the_thermal_cause_remains() -> None:
    async with expected_protocol([("ENBL=1", None), ("STAT=?", "STAT=4")], eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        with pytest.raises(ActuatorStopped, match=r"THERMAL_PROTECTION_1 \(bit 2\)"):
            await driver.enable_amplifiers()
        assert driver.fault is not None and driver.fault.thermal_protection_1


async def test_disable_and_stop() -> None:
    async with expected_protocol([("ENBL=0", None), ("STOP=0", None)], eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        await driver.disable_amplifiers()
        await driver.stop()


async def test_status_position_and_target() -> None:
    script = [("STAT=?", f"STAT={REACHED}"), ("EPOS=?", "EPOS=800"), ("DPOS=?", "DPOS=-8")]
    async with expected_protocol(script, eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        status = await driver.status()
        assert status.raw == REACHED and driver.last_status == status
        assert await driver.position_um() == 1000.0
        assert await driver.target_um() == -10.0


@pytest.mark.parametrize("reply", ["STAT=abc", "EPOS=5", "STAT=", "STAT=-4", "STAT=1 "])
async def test_malformed_status_reply_is_an_error(reply: str) -> None:
    async with expected_protocol([("STAT=?", reply)], eol=LF) as link:
        with pytest.raises(BadReply):
            await ActuatorDriver(link.transport).status()
        assert link.transport.bad_reply_count == 1


async def test_find_index_waits_for_encoder_valid() -> None:
    script = [("INDX=0", None), ("STAT=?", f"STAT={SEARCHING}"), ("STAT=?", f"STAT={REACHED}")]
    async with expected_protocol(script, eol=LF) as link:
        status = await ActuatorDriver(link.transport).find_index()
        assert status.encoder_valid and not status.searching_index


async def test_find_index_refused() -> None:
    script = [("INDX=0", None), ("STAT=?", f"STAT={1 << 21}")]
    async with expected_protocol(script, eol=LF) as link:
        with pytest.raises(MoveFailed, match="refused the index search"):
            await ActuatorDriver(link.transport).find_index()


async def test_find_index_safety_timeout() -> None:
    script = [("INDX=0", None), ("STAT=?", f"STAT={SEARCHING}"), ("STAT=?", f"STAT={(1 << 18) | (1 << 12)}")]
    async with expected_protocol(script, eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        with pytest.raises(ActuatorStopped, match=r"SAFETY_TIMEOUT \(bit 18\)"):
            await driver.find_index()
        assert driver.fault is not None and driver.fault.safety_timeout


async def test_find_index_gives_up_after_its_timeout() -> None:
    async with expected_protocol([("INDX=0", None), ("STAT=?", f"STAT={SEARCHING}")], eol=LF) as link:
        with pytest.raises(MoveFailed, match="index not found"):
            await ActuatorDriver(link.transport).find_index(timeout_s=0.0)


async def test_move_to_um() -> None:
    script = [
        ("PTO2=?", "PTO2=4"),
        ("SSPD=?", "SSPD=200"),
        ("EPOS=?", "EPOS=0"),
        ("DPOS=800", None),
        ("STAT=?", f"STAT={MOVING}"),
        ("STAT=?", f"STAT={REACHED_AWAY}"),
        ("EPOS=?", "EPOS=799"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        assert await ActuatorDriver(link.transport).move_to_um(1000.0) == 998.75


async def test_move_needs_both_bit_10_and_the_tolerance() -> None:
    script = [
        ("PTO2=?", "PTO2=2"),
        ("DPOS=800", None),
        ("STAT=?", f"STAT={REACHED_AWAY}"),
        ("EPOS=?", "EPOS=790"),  # bit 10 set but 10 counts away: not there yet
        ("STAT=?", f"STAT={REACHED_AWAY}"),
        ("EPOS=?", "EPOS=802"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        assert await ActuatorDriver(link.transport).move_to_um(1000.0, timeout_s=5.0) == 1002.5


@pytest.mark.parametrize("target", [-0.1, 3000.1, math.nan, math.inf, -math.inf])
async def test_move_outside_soft_limits_sends_nothing(target: float) -> None:
    async with expected_protocol([], eol=LF) as link:
        with pytest.raises(PositionOutOfRange):
            await ActuatorDriver(link.transport).move_to_um(target)
        assert link.received == []


async def test_thermal_stop_during_a_move_is_reported_and_not_cleared() -> None:
    script = [("PTO2=?", "PTO2=4"), ("DPOS=800", None), ("STAT=?", f"STAT={THERMAL_STOP}")]
    async with expected_protocol(script, eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        with pytest.raises(ActuatorStopped, match=r"THERMAL_PROTECTION_1 \(bit 2\)") as info:
            await driver.move_to_um(1000.0, timeout_s=5.0)
        assert info.value.status.stopped_by_fault
        assert driver.fault is not None and driver.fault.raw == THERMAL_STOP
    assert "ENBL=1" not in link.received  # the script would also have failed on any unscripted line


async def test_error_limit_stop_is_reported() -> None:
    script = [("PTO2=?", "PTO2=4"), ("DPOS=80", None), ("STAT=?", f"STAT={(1 << 16) | 256}")]
    async with expected_protocol(script, eol=LF) as link:
        with pytest.raises(ActuatorStopped, match=r"ERROR_LIMIT \(bit 16\)"):
            await ActuatorDriver(link.transport).move_to_um(100.0, timeout_s=5.0)


async def test_move_refused_by_the_stage() -> None:
    script = [("PTO2=?", "PTO2=4"), ("DPOS=80", None), ("STAT=?", f"STAT={1 << 21}")]
    async with expected_protocol(script, eol=LF) as link:
        with pytest.raises(MoveFailed, match="refused the move"):
            await ActuatorDriver(link.transport).move_to_um(100.0, timeout_s=5.0)


async def test_move_timeout_stops_the_stage() -> None:
    script = [("PTO2=?", "PTO2=4"), ("DPOS=80", None), ("STAT=?", f"STAT={MOVING}"), ("STOP=0", None)]
    async with expected_protocol(script, eol=LF) as link:
        with pytest.raises(MoveFailed, match="not reached"):
            await ActuatorDriver(link.transport).move_to_um(100.0, timeout_s=0.0)


@contextlib.asynccontextmanager
async def info_stream(emit: object, lines: list[str], period_s: float) -> AsyncIterator[None]:
    """Play a stage's INFO stream: ``lines`` every ``period_s`` through ``emit`` until the block ends."""

    async def play() -> None:
        while True:
            for line in lines:
                emit(line)  # type: ignore[operator]
            await asyncio.sleep(period_s)

    task = asyncio.create_task(play())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_info_lines_go_to_subscribers_and_answer_reads() -> None:
    script = [("POLI=20", None), ("INFO=3", None)]
    async with expected_protocol(script, eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        queue = driver.subscribe_info()
        await driver.start_info(20)
        assert driver.info_on
        async with info_stream(link.peer.emit, ["EPOS=40", "DPOS=40", f"STAT={REACHED_AWAY}"], 0.02):
            assert (await driver.status()).raw == REACHED_AWAY
            assert await driver.position_um() == 50.0
            assert await driver.target_um() == 50.0
            async with asyncio.timeout(1.0):
                info = driver.parse_info(await queue.get())
        driver.unsubscribe_info(queue)
        assert info.tag in ("EPOS", "DPOS", "STAT") and info.value in (40, REACHED_AWAY)
        assert link.transport.bad_reply_count == 0


async def test_info_lines_never_answer_a_pending_query() -> None:
    """While INFO is on, EPOS/DPOS/STAT lines arriving before a reply go to subscribers, not to the query."""
    script = [
        ("POLI=97", None),
        ("INFO=3", None),
        ("PTO2=?", ["EPOS=5", "DPOS=5", "STAT=1345", "PTO2=4"]),
        ("INFO=0", None),
        ("INFO=?", ["EPOS=5", "DPOS=5", "STAT=1345", "INFO=0"]),  # lines already on their way
        ("EPOS=?", "EPOS=7"),
    ]
    async with expected_protocol(script, eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        queue = driver.subscribe_info()
        await driver.start_info()
        assert await driver.setting("PTO2") == 4
        await driver.stop_info()
        assert not driver.info_on
        assert await driver.position_um() == 8.75  # a real query once INFO is off
        got = [queue.get_nowait() for _ in range(queue.qsize())]
        assert got == ["EPOS=5", "DPOS=5", "STAT=1345"] * 2
        assert link.transport.bad_reply_count == 0


async def test_setting_names_are_checked() -> None:
    async with expected_protocol([], eol=LF) as link:
        with pytest.raises(ValueError, match="not a setting: 'EPOS'"):
            await ActuatorDriver(link.transport).setting("EPOS")


async def test_info_period_validated() -> None:
    async with expected_protocol([], eol=LF) as link:
        with pytest.raises(ValueError, match=r"5\.\.1000"):
            await ActuatorDriver(link.transport).start_info(4)


async def test_info_read_times_out_without_lines() -> None:
    async with expected_protocol([("POLI=5", None), ("INFO=3", None)], eol=LF, timeout_s=0.05) as link:
        driver = ActuatorDriver(link.transport)
        await driver.start_info(5)
        with pytest.raises(MoveFailed, match="no INFO STAT line"):
            await driver.status()


async def test_malformed_info_line() -> None:
    async with expected_protocol([], eol=LF) as link:
        driver = ActuatorDriver(link.transport)
        with pytest.raises(BadReply, match="malformed INFO"):
            driver.parse_info("SSPD=4")
