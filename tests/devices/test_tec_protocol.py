"""Byte-level tests of TecDriver: exact command lines, scripted replies, every pair must be used."""

from __future__ import annotations

import pytest

from devices.laser import ArroyoError, Identity, OutOfRange, VerifyError
from devices.tec import TecDriver
from devices.transport import BadReply
from tests.devices.protocol import expected_protocol

IDN = "Arroyo 5305 SN77 1.4 b12"
CONNECT = [("*IDN?", IDN), ("TEC:LIM:TLO?", "15.00"), ("TEC:LIM:THI?", "35.00")]


async def test_connect_reads_identity_and_limits() -> None:
    async with expected_protocol(CONNECT) as link:
        driver = TecDriver(link.transport)
        identity = await driver.connect()
    assert identity == Identity("Arroyo", "5305", "SN77", "1.4", "b12")
    assert (driver.limit_low_c, driver.limit_high_c) == (15.0, 35.0)


async def test_laser_identity_on_the_tec_port_is_rejected() -> None:
    async with expected_protocol([("*IDN?", "Arroyo 6310 SN1 1.6 b")]) as link:
        with pytest.raises(BadReply, match="TEC"):
            await TecDriver(link.transport).identify()


async def test_limits_low_not_below_high_is_bad_reply() -> None:
    async with expected_protocol([("TEC:LIM:TLO?", "35.00"), ("TEC:LIM:THI?", "15.00")]) as link:
        with pytest.raises(BadReply):
            await TecDriver(link.transport).limits()


async def test_set_setpoint_within_limits() -> None:
    script = [*CONNECT, ("TEC:T 24.50", None), ("ERR?", "0"), ("TEC:SET:T?", "24.50")]
    async with expected_protocol(script) as link:
        driver = TecDriver(link.transport)
        await driver.connect()
        await driver.set_setpoint_c(24.5)


@pytest.mark.parametrize("bad", [14.99, 35.01, float("nan")])
async def test_set_setpoint_outside_limits_sends_nothing(bad: float) -> None:
    async with expected_protocol(CONNECT) as link:
        driver = TecDriver(link.transport)
        await driver.connect()
        with pytest.raises(OutOfRange):
            await driver.set_setpoint_c(bad)
    assert len(link.received) == 3


async def test_set_setpoint_before_connect_is_refused() -> None:
    async with expected_protocol([]) as link:
        with pytest.raises(RuntimeError, match="connect first"):
            await TecDriver(link.transport).set_setpoint_c(25.0)


async def test_set_setpoint_device_error_and_read_back_mismatch() -> None:
    script = [
        *CONNECT,
        ("TEC:T 30.00", None),
        ("ERR?", "201"),
        ("TEC:T 31.00", None),
        ("ERR?", "0"),
        ("TEC:SET:T?", "25.00"),
    ]
    async with expected_protocol(script) as link:
        driver = TecDriver(link.transport)
        await driver.connect()
        with pytest.raises(ArroyoError) as caught:
            await driver.set_setpoint_c(30.0)
        assert caught.value.codes == (201,)
        with pytest.raises(VerifyError):
            await driver.set_setpoint_c(31.0)


async def test_readings() -> None:
    script = [("TEC:T?", "25.03"), ("TEC:ITE?", "0.412"), ("TEC:SET:T?", "25.00"), ("TEC:OUT?", "1")]
    async with expected_protocol(script) as link:
        driver = TecDriver(link.transport)
        assert await driver.temperature_c() == pytest.approx(25.03)
        assert await driver.current_a() == pytest.approx(0.412)
        assert await driver.get_setpoint_c() == pytest.approx(25.0)
        assert await driver.output_is_on() is True


async def test_output_on_and_off_verified() -> None:
    script = [
        ("ERR?", "0"),
        ("TEC:OUT 1", None),
        ("ERR?", "0"),
        ("TEC:OUT?", "1"),
        ("TEC:OUT 0", None),
        ("TEC:OUT?", "0"),
        ("ERR?", "0"),
    ]
    async with expected_protocol(script) as link:
        driver = TecDriver(link.transport)
        await driver.output_on()
        assert await driver.output_off() == ()


async def test_output_off_read_back_wrong_is_an_error() -> None:
    async with expected_protocol([("TEC:OUT 0", None), ("TEC:OUT?", "1")]) as link:
        with pytest.raises(VerifyError):
            await TecDriver(link.transport).output_off()


async def test_errors_decoded() -> None:
    async with expected_protocol([("ERR?", "123,202")]) as link:
        errors = await TecDriver(link.transport).errors()
    assert [str(e) for e in errors] == ["E-123 unknown command", "E-202 invalid data type"]
