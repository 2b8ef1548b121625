"""The safety board simulator against docs/devices.md ("Safety board"), as a line handler on a hand-stepped
clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from devices.sim.model import PhysicalModel
from devices.sim.safety import SafetyBoardSim
from tests.devices.sim_support import ManualClock


@pytest.fixture
def model(clock: ManualClock) -> PhysicalModel:
    return PhysicalModel(seed=3, clock=clock)


@pytest.fixture
def sim(model: PhysicalModel, clock: ManualClock) -> SafetyBoardSim:
    return SafetyBoardSim(model, clock=clock)


def pushes(sim: SafetyBoardSim) -> list[str]:
    out = list(sim.sent)
    sim.sent.clear()
    return out


@pytest.mark.parametrize(
    "command,reply",
    [
        ("WDT_RESET", ["OK:WDT_RESET"]),
        ("GET_FOOTPEDAL", ["FOOTPEDAL:0"]),
        ("GET_ESTOP", ["ESTOP:0"]),
        ("MOTOR_SPEED:0", ["OK:MOTOR_SPEED:0"]),
        ("MOTOR_SPEED:153", ["OK:MOTOR_SPEED:153"]),
        ("MOTOR_SPEED:154", ["WARNING:PWM_CLAMPED_TO_MAX", "OK:MOTOR_SPEED:153"]),
        ("MOTOR_OFF", ["OK:MOTOR_OFF"]),
        ("LASER_ON", ["OK:LASER_ON"]),
        ("LASER_OFF", ["OK:LASER_OFF"]),
        ("VERSION?", ["VERSION:3.1"]),
        ("WDT_TIMEOUT:100", ["OK:WDT_TIMEOUT:100"]),
        ("WDT_TIMEOUT:2000", ["OK:WDT_TIMEOUT:2000"]),
        ("ARM", ["OK:ARM"]),
        ("DISARM", ["OK:DISARM"]),
        ("WDT_CLEAR", ["OK:WDT_CLEAR"]),
        ("STREAM:0", ["OK:STREAM:0"]),
        ("STREAM:10", ["OK:STREAM:10"]),
        ("STREAM:200", ["OK:STREAM:200"]),
        ("  ARM\r", ["OK:ARM"]),
    ],
)
def test_command_table(sim: SafetyBoardSim, command: str, reply: list[str]) -> None:
    assert sim.handle_line(command) == reply


@pytest.mark.parametrize(
    "command",
    [
        "HELLO",
        "arm",
        "WDT_TIMEOUT:99",
        "WDT_TIMEOUT:2001",
        "WDT_TIMEOUT:abc",
        "STREAM:5",
        "STREAM:201",
        "MOTOR_SPEED:-1",
        "MOTOR_SPEED:",
        "MOTOR_SPEED:1.5",
        "VERSION",
        "GET_PHOTODIODE:1",
        "\x01\xfe",
        "HEL\x01LO\xfe",
        "",
    ],
)
def test_unknown_commands_echo_what_was_received_and_change_nothing(
    sim: SafetyBoardSim, model: PhysicalModel, command: str
) -> None:
    printable = "".join(c for c in command if " " <= c <= "~")
    assert sim.handle_line(command) == [f"ERROR:UNKNOWN_COMMAND:{printable.strip()}"]
    assert sim.wdt_timeout_ms == 1000 and sim.stream_hz == 0 and model.motor_pwm == 0 and not sim.armed


def test_bytes_outside_printable_ascii_are_ignored(sim: SafetyBoardSim) -> None:
    assert sim.handle_line("VER\x00SI\x7f\x1bON?\r") == ["VERSION:3.1"]


def test_readings_come_from_the_model(sim: SafetyBoardSim, model: PhysicalModel) -> None:
    model.laser_output_on = True
    model.laser_current_ma = 2500.0  # 2.0 W -> 1.0 V
    (reply,) = sim.handle_line("GET_PHOTODIODE")
    assert reply.startswith("PHOTODIODE:") and len(reply.split(":")[1].split(".")[1]) == 3
    assert float(reply.split(":")[1]) == pytest.approx(1.0, abs=0.011)
    assert sim.handle_line("MOTOR_SPEED:153") == ["OK:MOTOR_SPEED:153"]
    assert model.motor_pwm == 153
    (reply,) = sim.handle_line("GET_VIBRATION_LEVEL")
    assert float(reply.removeprefix("VIBRATION:")) == pytest.approx(1.5, abs=0.02)
    sim.handle_line("MOTOR_OFF")
    assert model.motor_pwm == 0
    (reply,) = sim.handle_line("GET_VIBRATION_LEVEL")
    assert float(reply.removeprefix("VIBRATION:")) < 0.1


def test_pwm_clamped(sim: SafetyBoardSim, model: PhysicalModel) -> None:
    sim.handle_line("MOTOR_SPEED:999")
    assert model.motor_pwm == 153


def test_pedal_and_estop_push_events_at_once(sim: SafetyBoardSim) -> None:
    sim.set_pedal(True)
    sim.set_pedal(True)  # no change, no event
    assert pushes(sim) == ["EVT:FOOTPEDAL:1"]
    assert sim.handle_line("GET_FOOTPEDAL") == ["FOOTPEDAL:1"]
    sim.set_estop(True)
    assert pushes(sim) == ["EVT:ESTOP:1"]
    assert sim.handle_line("GET_ESTOP") == ["ESTOP:1"]
    sim.set_estop(False)
    sim.set_pedal(False)
    assert pushes(sim) == ["EVT:ESTOP:0", "EVT:FOOTPEDAL:0"]


def test_laser_enable_is_the_conjunction(
    sim: SafetyBoardSim, model: PhysicalModel, clock: ManualClock
) -> None:
    seen: list[bool] = []
    model.on_laser_enable_change(seen.append)
    sim.handle_line("WDT_RESET")
    sim.handle_line("ARM")
    assert not model.laser_enable  # pedal up
    sim.set_pedal(True)
    assert model.laser_enable
    assert pushes(sim) == ["EVT:FOOTPEDAL:1", "EVT:ENABLE:1"]
    sim.set_pedal(False)
    assert not model.laser_enable
    sim.set_pedal(True)
    sim.handle_line("DISARM")
    assert not model.laser_enable
    assert pushes(sim) == [
        "EVT:FOOTPEDAL:0",
        "EVT:ENABLE:0",
        "EVT:FOOTPEDAL:1",
        "EVT:ENABLE:1",
        "EVT:ENABLE:0",
    ]
    assert seen == [True, False, True, False]


def test_estop_drops_enable_and_disarms(sim: SafetyBoardSim, model: PhysicalModel) -> None:
    sim.handle_line("WDT_RESET")
    sim.handle_line("ARM")
    sim.set_pedal(True)
    assert model.laser_enable
    sim.set_estop(True)
    assert not model.laser_enable
    assert sim.handle_line("ARM") == ["ERROR:NOT_READY:ESTOP"]
    sim.set_estop(False)
    assert not model.laser_enable  # released, but a new ARM is needed
    assert sim.handle_line("ARM") == ["OK:ARM"]
    assert model.laser_enable


def test_no_enable_before_the_first_heartbeat(sim: SafetyBoardSim, model: PhysicalModel) -> None:
    sim.handle_line("ARM")
    sim.set_pedal(True)
    assert not model.laser_enable
    sim.handle_line("WDT_RESET")
    assert model.laser_enable


def test_watchdog_expiry(sim: SafetyBoardSim, model: PhysicalModel, clock: ManualClock) -> None:
    sim.handle_line("WDT_TIMEOUT:200")
    sim.handle_line("WDT_RESET")
    sim.handle_line("ARM")
    sim.handle_line("MOTOR_SPEED:100")
    sim.set_pedal(True)
    pushes(sim)
    clock.advance(0.15)
    assert sim.handle_line("WDT_RESET") == ["OK:WDT_RESET"]
    clock.advance(0.15)
    assert model.laser_enable  # fed within the timeout
    assert sim.handle_line("GET_FOOTPEDAL") == ["FOOTPEDAL:1"]
    clock.advance(0.06)  # 210 ms since the last WDT_RESET
    assert sim.handle_line("GET_ESTOP") == ["ESTOP:0"]
    assert not model.laser_enable
    assert model.motor_pwm == 0
    assert pushes(sim) == ["EVT:ENABLE:0", "EVT:WDT:1"]
    # Stays down: a heartbeat or ARM alone does not bring it back.
    assert sim.handle_line("WDT_RESET") == ["OK:WDT_RESET"]
    assert sim.handle_line("ARM") == ["ERROR:NOT_READY:WDT"]
    assert not model.laser_enable
    assert sim.handle_line("WDT_CLEAR") == ["OK:WDT_CLEAR"]
    assert not model.laser_enable  # cleared, not re-armed
    assert sim.handle_line("ARM") == ["OK:ARM"]
    assert model.laser_enable
    assert pushes(sim) == ["EVT:ENABLE:1"]


def test_status_reports_arming_and_the_watchdog_without_changing_them(
    sim: SafetyBoardSim, model: PhysicalModel, clock: ManualClock
) -> None:
    """``STATUS?`` tells a newly connected host what no push event will: a watchdog left expired."""
    assert sim.handle_line("STATUS?") == ["STATUS:ARMED=0,WDT=IDLE"]
    sim.handle_line("WDT_RESET")
    sim.handle_line("ARM")
    assert sim.handle_line("STATUS?") == ["STATUS:ARMED=1,WDT=FED"]
    pushes(sim)
    clock.advance(1.1)  # the host stopped feeding it (its process died)
    assert sim.handle_line("STATUS?") == ["STATUS:ARMED=0,WDT=EXPIRED"]
    assert pushes(sim) == ["EVT:WDT:1"]
    assert sim.handle_line("STATUS?") == ["STATUS:ARMED=0,WDT=EXPIRED"], "reading it changes nothing"
    assert sim.handle_line("ARM") == ["ERROR:NOT_READY:WDT"]
    assert sim.handle_line("WDT_CLEAR") == ["OK:WDT_CLEAR"]
    assert sim.handle_line("STATUS?") == ["STATUS:ARMED=0,WDT=FED"]
    assert not model.laser_enable


def test_sample_line_format(sim: SafetyBoardSim, model: PhysicalModel, clock: ManualClock) -> None:
    clock.advance(1.234)
    sim.set_pedal(True)
    model.motor_pwm = 153
    line = sim.sample_line()
    ms, volts, pedal, estop, g, enable = line.removeprefix("S:").split(",")
    assert line.startswith("S:")
    assert int(ms) == 1234
    assert volts == "0.000" and pedal == "1" and estop == "0" and enable == "0"
    assert float(g) == pytest.approx(1.5, abs=0.02) and len(g.split(".")[1]) == 3


async def test_background_watchdog_and_stream() -> None:
    """With the tasks running (real clock), the watchdog fires by itself and S: lines come at the rate."""
    model = PhysicalModel(seed=1)
    sim = SafetyBoardSim(model)
    lines: asyncio.Queue[str] = asyncio.Queue()

    class Sink:
        def emit(self, line: str) -> None:
            lines.put_nowait(line)

    sim.attach(Sink())
    await sim.start()
    try:
        sim.handle_line("WDT_TIMEOUT:100")
        sim.handle_line("WDT_RESET")
        sim.handle_line("ARM")
        sim.set_pedal(True)
        assert model.laser_enable
        assert sim.handle_line("STREAM:100") == ["OK:STREAM:100"]
        got: list[str] = []
        async with asyncio.timeout(2.0):
            while "EVT:WDT:1" not in got:
                got.append(await lines.get())
            samples = []
            while len(samples) < 5:
                line = await lines.get()
                if line.startswith("S:"):
                    samples.append(line)
        assert got[:2] == ["EVT:FOOTPEDAL:1", "EVT:ENABLE:1"]
        assert got.index("EVT:ENABLE:0") == got.index("EVT:WDT:1") - 1
        assert not model.laser_enable
        stamps = [int(s.split(",")[0][2:]) for s in samples]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(gap > 0 for gap in gaps), gaps
        assert 8 <= sum(gaps) / len(gaps) <= 30, gaps  # 100 Hz: 10 ms apart, with scheduler slack
        assert samples[-1].endswith(",0")  # LASER_ENABLE low in the samples too
        sim.handle_line("STREAM:0")
    finally:
        await sim.stop()
