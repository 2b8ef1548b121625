"""Byte-level tests of LaserDriver: exact command lines, scripted replies, every pair must be used."""

from __future__ import annotations

import asyncio

import pytest

from devices.laser import (
    ArroyoError,
    Identity,
    LaserCondition,
    LaserDriver,
    OutOfRange,
    VerifyError,
)
from devices.transport import BadReply, LinkState
from tests.devices.protocol import Raw, expected_protocol

IDN = "Arroyo 6310 SN1234 1.6 20240101"


async def test_identify_parses_five_words() -> None:
    async with expected_protocol([("*IDN?", IDN)]) as link:
        identity = await LaserDriver(link.transport).identify()
    assert identity == Identity("Arroyo", "6310", "SN1234", "1.6", "20240101")


@pytest.mark.parametrize(
    "reply",
    [
        "Arroyo 6310 SN1234 1.6",  # four words
        "Acme 6310 SN1234 1.6 b",  # wrong maker
        "Arroyo 5305 SN1234 1.6 b",  # a TEC on the laser's port
        "Arroyo  6310 SN1234 1.6",  # empty word
    ],
)
async def test_identify_rejects_malformed_identity(reply: str) -> None:
    async with expected_protocol([("*IDN?", reply)]) as link:
        with pytest.raises(BadReply):
            await LaserDriver(link.transport).identify()
        assert link.transport.bad_reply_count == 1


async def test_connect_reads_identity_and_limit() -> None:
    async with expected_protocol([("*IDN?", IDN), ("LAS:LIM:LDI?", "6000.0")]) as link:
        driver = LaserDriver(link.transport)
        await driver.connect()
    assert driver.current_limit_ma == 6000.0
    assert driver.identity is not None and driver.identity.serial == "SN1234"


async def test_set_current_limit_checks_errors_and_reads_back() -> None:
    script = [("LAS:LIM:LDI 2500.0", None), ("ERR?", "0"), ("LAS:LIM:LDI?", "2500.0")]
    async with expected_protocol(script) as link:
        driver = LaserDriver(link.transport)
        await driver.set_current_limit_ma(2500)
    assert driver.current_limit_ma == 2500.0


async def test_set_current_limit_device_error_is_raised_decoded() -> None:
    async with expected_protocol([("LAS:LIM:LDI 2500.0", None), ("ERR?", "201")]) as link:
        with pytest.raises(ArroyoError) as caught:
            await LaserDriver(link.transport).set_current_limit_ma(2500)
    assert caught.value.codes == (201,)
    assert "value out of range" in str(caught.value)


@pytest.mark.parametrize("bad", [-1.0, 10000.5, float("nan"), float("inf")])
async def test_set_current_limit_out_of_range_sends_nothing(bad: float) -> None:
    async with expected_protocol([]) as link:
        with pytest.raises(OutOfRange):
            await LaserDriver(link.transport).set_current_limit_ma(bad)
    assert link.received == []


async def test_setpoint_within_limit_is_sent_checked_and_read_back() -> None:
    script = [
        ("*IDN?", IDN),
        ("LAS:LIM:LDI?", "2000.0"),
        ("LAS:LDI 1200.0", None),
        ("ERR?", "0"),
        ("LAS:SET:LDI?", "1200.0"),
    ]
    async with expected_protocol(script) as link:
        driver = LaserDriver(link.transport)
        await driver.connect()
        await driver.set_current_setpoint_ma(1200.0)


async def test_setpoint_above_limit_is_refused_before_a_byte_is_sent() -> None:
    async with expected_protocol([("*IDN?", IDN), ("LAS:LIM:LDI?", "2000.0")]) as link:
        driver = LaserDriver(link.transport)
        await driver.connect()
        with pytest.raises(OutOfRange, match=r"above the current limit 2000\.0 mA"):
            await driver.set_current_setpoint_ma(2000.1)
    assert link.received == ["*IDN?", "LAS:LIM:LDI?"]


async def test_setpoint_before_connect_is_refused() -> None:
    async with expected_protocol([]) as link:
        with pytest.raises(RuntimeError, match="connect first"):
            await LaserDriver(link.transport).set_current_setpoint_ma(100.0)


async def test_setpoint_read_back_mismatch_is_an_error() -> None:
    script = [
        ("LAS:LIM:LDI?", "2000.0"),
        ("LAS:LDI 1200.0", None),
        ("ERR?", "0"),
        ("LAS:SET:LDI?", "1100.0"),
    ]
    async with expected_protocol(script) as link:
        driver = LaserDriver(link.transport)
        await driver.get_current_limit_ma()
        with pytest.raises(VerifyError, match=r"1100\.0"):
            await driver.set_current_setpoint_ma(1200.0)


async def test_output_off_verified_and_errors_returned() -> None:
    script = [("LAS:OUT 0", None), ("LAS:OUT?", "0"), ("ERR?", "501")]
    async with expected_protocol(script) as link:
        errors = await LaserDriver(link.transport).output_off()
    assert [e.code for e in errors] == [501]
    assert "interlock" in str(errors[0])


async def test_output_off_read_back_on_is_an_error() -> None:
    async with expected_protocol([("LAS:OUT 0", None), ("LAS:OUT?", "1")]) as link:
        with pytest.raises(VerifyError, match="still on"):
            await LaserDriver(link.transport).output_off()


async def test_output_on_success() -> None:
    script = [("ERR?", "0"), ("LAS:OUT 1", None), ("ERR?", "0"), ("LAS:OUT?", "1")]
    async with expected_protocol(script) as link:
        await LaserDriver(link.transport).output_on()


async def test_output_on_refused_by_interlock_turns_off_and_raises() -> None:
    script = [
        ("ERR?", "0"),
        ("LAS:OUT 1", None),
        ("ERR?", "501"),
        ("LAS:OUT?", "0"),
        ("LAS:OUT 0", None),
        ("LAS:OUT?", "0"),
        ("ERR?", "0"),
    ]
    async with expected_protocol(script) as link:
        with pytest.raises(ArroyoError) as caught:
            await LaserDriver(link.transport).output_on()
    assert caught.value.codes == (501,)


async def test_output_on_with_tec_off_raises_508() -> None:
    script = [
        ("ERR?", "0"),
        ("LAS:OUT 1", None),
        ("ERR?", "508"),
        ("LAS:OUT?", "0"),
        ("LAS:OUT 0", None),
        ("LAS:OUT?", "0"),
        ("ERR?", "0"),
    ]
    async with expected_protocol(script) as link:
        with pytest.raises(ArroyoError, match="E-508 output refused because the TEC is off"):
            await LaserDriver(link.transport).output_on()


async def test_output_on_stale_errors_are_cleared_first_and_not_a_refusal() -> None:
    script = [("ERR?", "201"), ("LAS:OUT 1", None), ("ERR?", "0"), ("LAS:OUT?", "1")]
    async with expected_protocol(script) as link:
        await LaserDriver(link.transport).output_on()


async def test_output_on_read_back_off_without_error_turns_off_and_raises() -> None:
    script = [
        ("ERR?", "0"),
        ("LAS:OUT 1", None),
        ("ERR?", "0"),
        ("LAS:OUT?", "0"),
        ("LAS:OUT 0", None),
        ("LAS:OUT?", "0"),
        ("ERR?", "0"),
    ]
    async with expected_protocol(script) as link:
        with pytest.raises(VerifyError, match="did not turn on"):
            await LaserDriver(link.transport).output_on()


async def test_output_on_malformed_read_back_switches_off() -> None:
    script = [
        ("ERR?", "0"),
        ("LAS:OUT 1", None),
        ("ERR?", "0"),
        ("LAS:OUT?", "yes"),
        ("LAS:OUT 0", None),
        ("LAS:OUT?", "0"),
        ("ERR?", "0"),
    ]
    async with expected_protocol(script) as link:
        with pytest.raises(BadReply):
            await LaserDriver(link.transport).output_on()


async def test_measured_current_and_voltage() -> None:
    async with expected_protocol([("LAS:LDI?", "1199.7"), ("LAS:LDV?", "1.842")]) as link:
        driver = LaserDriver(link.transport)
        assert await driver.measured_current_ma() == pytest.approx(1199.7)
        assert await driver.measured_voltage_v() == pytest.approx(1.842)


@pytest.mark.parametrize("reply", ["", "12a", "nan", "1.2.3", "inf", "1e5"])
async def test_measured_current_malformed_is_bad_reply(reply: str) -> None:
    script: list[tuple[str, str | Raw | None]] = [("LAS:LDI?", reply if reply else Raw(b"\r\n"))]
    async with expected_protocol(script) as link:
        with pytest.raises(BadReply):
            await LaserDriver(link.transport).measured_current_ma()


@pytest.mark.parametrize(
    ("raw", "flags"),
    [
        (0, set()),
        (1, {"current_limit"}),
        (16, {"interlock_open"}),
        (512, {"out_of_tolerance"}),
        (1024, {"output_on"}),
        (32768, {"thermal_trip"}),
        (
            1 | 16 | 512 | 1024 | 32768,
            {"current_limit", "interlock_open", "out_of_tolerance", "output_on", "thermal_trip"},
        ),
    ],
)
async def test_condition_register_decoded(raw: int, flags: set[str]) -> None:
    async with expected_protocol([("LAS:COND?", str(raw))]) as link:
        cond = await LaserDriver(link.transport).condition()
    names = {"current_limit", "interlock_open", "out_of_tolerance", "output_on", "thermal_trip"}
    assert {n for n in names if getattr(cond, n)} == flags
    assert cond.raw == raw
    assert cond == LaserCondition.from_register(raw)


async def test_condition_out_of_range_is_bad_reply() -> None:
    async with expected_protocol([("LAS:COND?", "65536")]) as link:
        with pytest.raises(BadReply):
            await LaserDriver(link.transport).condition()


async def test_errors_list_decoded() -> None:
    async with expected_protocol([("ERR?", "201,501"), ("ERR?", "0"), ("ERR?", "999")]) as link:
        driver = LaserDriver(link.transport)
        first = await driver.errors()
        assert [(e.code, e.meaning) for e in first] == [
            (201, "value out of range"),
            (501, "interlock shutdown (output forced off because the interlock input opened)"),
        ]
        assert await driver.errors() == ()
        (unknown,) = await driver.errors()
        assert unknown.code == 999 and unknown.meaning == "unknown error code"


@pytest.mark.parametrize("reply", ["201,", "201,0", "E201", ",", "201 501"])
async def test_errors_malformed_is_bad_reply(reply: str) -> None:
    async with expected_protocol([("ERR?", reply)]) as link:
        with pytest.raises(BadReply):
            await LaserDriver(link.transport).errors()


async def test_three_malformed_replies_make_the_link_faulty_and_a_good_one_recovers() -> None:
    states: list[LinkState] = []
    script = [
        ("LAS:LDV?", "x"),
        ("LAS:LDV?", "y"),
        ("LAS:LDV?", "z"),
        ("LAS:LDV?", "1.9"),
        ("LAS:LDV?", "1.9"),
    ]
    async with expected_protocol(script) as link:
        link.transport.on_state_change(states.append)
        driver = LaserDriver(link.transport)
        for _ in range(2):
            with pytest.raises(BadReply):
                await driver.measured_voltage_v()
        assert link.transport.state == LinkState.OPEN
        with pytest.raises(BadReply):
            await driver.measured_voltage_v()
        assert link.transport.state == LinkState.FAULTY
        assert states == [LinkState.FAULTY]
        assert await driver.measured_voltage_v() == pytest.approx(1.9)
        await driver.measured_voltage_v()
        assert link.transport.state == LinkState.OPEN
        assert link.transport.consecutive_bad == 0
        assert link.transport.bad_reply_count == 3


async def test_output_on_cancelled_mid_check_switches_the_output_off_again() -> None:
    """A caller cancelled between ``LAS:OUT 1`` and its verification must not leave the output on."""
    script = [
        ("ERR?", "0"),
        ("LAS:OUT 1", None),
        ("ERR?", None),  # the device is slow: the caller is cancelled while waiting for this reply
        ("LAS:OUT 0", None),
        ("LAS:OUT?", "0"),
        ("ERR?", "0"),
    ]
    async with expected_protocol(script) as link:
        driver = LaserDriver(link.transport)
        task = asyncio.create_task(driver.output_on())
        await link.wait_received("ERR?", 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
