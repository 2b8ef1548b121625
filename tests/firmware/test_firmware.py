"""The safety board firmware on a simulated ATmega328P, in simulated time (exact cycles at 16 MHz).

What an operator relies on: LASER_ENABLE falls within 20 us of a footpedal release or an E-stop press, falls
when the host stops feeding the watchdog, stays low after any reset, and none of that is disturbed by a serial
line full of garbage; the protocol answers exactly as the Python simulator of the same board does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from devices.sim.firmware import CYCLES_PER_MS, FIRMWARE_DIR, FirmwareBuild, LockstepBoard
from devices.sim.model import PhysicalModel
from devices.sim.safety import SafetyBoardSim
from tests.firmware.support import BUDGET_CYCLES, arm_and_press, fall_after

#: One byte at 115200 baud 8N1 (10 bits), in cycles.
BYTE_CYCLES = 16_000_000 * 10 // 115200


def quantised(volts: float) -> str:
    return f"{round(volts / 5.0 * 1023) * 5.0 / 1023:.3f}"


def estimated_stack_bytes(build_dir: Path) -> int:
    """The build's estimate of the deepest stack (main plus the deepest interrupt)."""
    out = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR / "safety"), f"BUILD={build_dir}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"\+ (\d+) bytes deepest stack", out)
    assert found is not None, out
    return int(found.group(1))


def test_build_prints_flash_and_ram_within_limits(firmware: FirmwareBuild, tmp_path: Path) -> None:
    del firmware  # the toolchain is there
    out = subprocess.run(
        ["make", "-C", str(FIRMWARE_DIR / "safety"), f"BUILD={tmp_path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flash = re.search(r"flash: (\d+) of 32768 bytes", out)
    ram = re.search(r"ram: (\d+) bytes static \+ (\d+) bytes deepest stack .*; (-?\d+) bytes free", out)
    assert flash is not None and ram is not None, out
    assert int(flash.group(1)) < 32768 // 2
    static, stack, free = (int(g) for g in ram.groups())
    assert stack > 0 and free == 2048 - static - stack and free >= 512
    assert (tmp_path / "safety.hex").read_text().startswith(":")


def test_starts_with_laser_enable_low_disarmed_and_the_watchdog_idle(board: LockstepBoard) -> None:
    assert not board.enable and board.duty == 0 and not board.beam
    assert board.query("VERSION?") == ["VERSION:3.1"]
    assert board.query("STATUS?") == ["STATUS:ARMED=0,WDT=IDLE"]
    assert board.query("GET_FOOTPEDAL") == ["FOOTPEDAL:0"] and board.query("GET_ESTOP") == ["ESTOP:0"]
    assert not board.resets and not board.crashed


COMMANDS = [
    "VERSION?",
    "  VERSION?  ",
    "WDT_RESET",
    "STATUS?",
    "ARM",
    "STATUS?",
    "DISARM",
    "MOTOR_SPEED:77",
    "MOTOR_SPEED:153",
    "MOTOR_SPEED:154",
    "MOTOR_SPEED:99999",
    "MOTOR_SPEED:",
    "MOTOR_SPEED:-1",
    "MOTOR_OFF",
    "LASER_ON",
    "LASER_OFF",
    "WDT_TIMEOUT:100",
    "WDT_TIMEOUT:2000",
    "WDT_TIMEOUT:0100",
    "WDT_TIMEOUT:50",
    "WDT_TIMEOUT:2001",
    "WDT_TIMEOUT:1000",
    "STREAM:5",
    "STREAM:201",
    "STREAM:0",
    "WDT_CLEAR",
    "GET_ESTOP",
    "GET_FOOTPEDAL",
    "",
    "version?",
    "HELLO WORLD",
    "HEL\x01LO\xfe",
    "\x1b[31mARM",
    "ARMED",
    "X" * 64,
]


def test_every_reply_is_the_python_simulators(board: LockstepBoard) -> None:
    reference = SafetyBoardSim(PhysicalModel(seed=1))
    for command in COMMANDS:
        expected = reference.handle_line(command)
        assert board.query(command, replies=len(expected)) == expected, command
    board.run_ms(5)
    assert [text for _, text in board.sent if not text.startswith(("EVT:", "S:"))][
        -1
    ] == "ERROR:UNKNOWN_COMMAND:" + "X" * 64


def test_motor_pwm_and_aiming_beam_reach_their_pins(board: LockstepBoard) -> None:
    board.query("MOTOR_SPEED:200", replies=2)
    assert board.duty == 153
    board.query("MOTOR_SPEED:40")
    assert board.duty == 40
    board.query("MOTOR_OFF")
    assert board.duty == 0
    board.query("LASER_ON")
    assert board.beam
    board.query("LASER_OFF")
    assert not board.beam


def test_readings_come_from_the_analog_inputs(board: LockstepBoard) -> None:
    board.analog(0, 2.5)
    board.analog(1, 0.912)
    board.run(4000)  # one conversion is 104 us
    # 10 bits on 0..5 V: the voltage of the nearest code, as the Python simulator's model quantises it.
    assert board.query("GET_PHOTODIODE") == [f"PHOTODIODE:{quantised(2.5)}"] == ["PHOTODIODE:2.502"]
    assert board.query("GET_VIBRATION_LEVEL") == [f"VIBRATION:{quantised(0.912)}"] == ["VIBRATION:0.914"]
    board.pedal(True)
    board.query("STREAM:100")
    board.run_ms(35)
    samples = [text for _, text in board.sent if text.startswith("S:")]
    assert 3 <= len(samples) <= 4
    fields = samples[-1].split(",")
    assert fields[1:] == ["2.502", "1", "0", "0.914", "0"]
    assert board.query("STREAM:0") == ["OK:STREAM:0"]


def test_pedal_release_drops_laser_enable_within_20_us(board: LockstepBoard) -> None:
    arm_and_press(board)
    edge = board.pedal(False)
    assert fall_after(board, edge) <= BUDGET_CYCLES
    board.run_ms(8)
    pushes = [text for _, text in board.sent if text.startswith("EVT:")]
    assert pushes[-2:] == ["EVT:FOOTPEDAL:0", "EVT:ENABLE:0"]
    # Pressing again re-enables: the board is still armed and fed.
    board.pedal(True)
    board.run(2000)
    assert board.enable


def test_estop_press_drops_laser_enable_and_disarms(board: LockstepBoard) -> None:
    arm_and_press(board)
    edge = board.estop(True)
    assert fall_after(board, edge) <= BUDGET_CYCLES
    assert board.query("ARM") == ["ERROR:NOT_READY:ESTOP"]
    board.estop(False)
    board.run_ms(2)
    assert not board.enable  # releasing the E-stop never re-enables by itself
    assert board.query("STATUS?") == ["STATUS:ARMED=0,WDT=FED"]
    assert board.query("WDT_RESET") == ["OK:WDT_RESET"] and board.query("ARM") == ["OK:ARM"]
    board.run(2000)
    assert board.enable


def test_watchdog_expiry_drops_laser_enable_at_the_timeout(board: LockstepBoard) -> None:
    assert board.query("WDT_TIMEOUT:100") == ["OK:WDT_TIMEOUT:100"]
    board.query("MOTOR_SPEED:120")
    arm_and_press(board)
    mark = len(board.sent)
    written = board.cycle
    board.write(b"WDT_RESET\n")
    fed = written + 10 * BYTE_CYCLES  # the LF is in by then; the firmware restarts the countdown on it
    board.run_ms(110)
    falls = [c.cycle for c in board.changes if c.kind == "L" and c.value == 0 and c.cycle > written]
    assert len(falls) == 1
    after_feed_ms = (falls[0] - fed) / CYCLES_PER_MS
    assert 99.0 <= after_feed_ms <= 101.5, after_feed_ms
    assert board.duty == 0
    lines = [text for _, text in board.sent[mark:]]
    assert lines == ["OK:WDT_RESET", "EVT:ENABLE:0", "EVT:WDT:1"]
    # Expired: a heartbeat does not revive it, ARM is refused until WDT_CLEAR.
    assert board.query("WDT_RESET") == ["OK:WDT_RESET"]
    assert board.query("ARM") == ["ERROR:NOT_READY:WDT"]
    assert board.query("STATUS?") == ["STATUS:ARMED=0,WDT=EXPIRED"]
    assert board.query("WDT_CLEAR") == ["OK:WDT_CLEAR"]
    board.run(2000)
    assert not board.enable  # still needs ARM
    assert board.query("ARM") == ["OK:ARM"]
    board.run(2000)
    assert board.enable


def test_lines_over_64_bytes_are_discarded_whole(board: LockstepBoard) -> None:
    mark = len(board.sent)
    board.write(b"A" * 65 + b"\n" + b"WDT_RESET" + b"B" * 200 + b"\n" + b"VERSION?\n")
    board.run_ms(40)
    assert board.replies_since(mark) == ["ERROR:LINE_TOO_LONG", "ERROR:LINE_TOO_LONG", "VERSION:3.1"]
    assert board.query("STATUS?") == ["STATUS:ARMED=0,WDT=IDLE"]  # the WDT_RESET inside was not obeyed


def test_bytes_outside_printable_ascii_are_ignored(board: LockstepBoard) -> None:
    assert board.query("VER\x00SI\x7f\x1bON?\r") == ["VERSION:3.1"]
    mark = len(board.sent)
    board.write(bytes(range(0x80, 0x100)) + b"GET_ESTOP\n")
    board.run_ms(30)
    assert board.replies_since(mark) == ["ESTOP:0"]


def test_garbage_flood_delays_no_edge_and_crashes_nothing(board: LockstepBoard, tmp_path: Path) -> None:
    assert board.query("WDT_TIMEOUT:2000") == ["OK:WDT_TIMEOUT:2000"]
    arm_and_press(board)
    board.flood(True)
    board.run_ms(20)
    worst = 0
    for phase in range(0, 20 * 97, 97):  # phases spread over the flood's byte period
        board.run(phase % BYTE_CYCLES + 500)
        if not board.enable:
            break
        edge = board.pedal(False)
        worst = max(worst, fall_after(board, edge, 2000))
        board.pedal(True)
        board.run(1000)
    assert worst <= BUDGET_CYCLES
    assert board.enable
    edge = board.estop(True)
    assert fall_after(board, edge, 2000) <= BUDGET_CYCLES
    board.run_ms(250)  # the push lines of 40 edges take 110 ms of the line; then the flood is answered again
    flood_replies = [text for _, text in board.sent if text == "ERROR:LINE_TOO_LONG"]
    assert flood_replies, "the flood's over-long lines were not answered"
    board.flood(False)
    board.write(b"\n")  # ends the flood's unfinished line
    board.run_ms(30)
    assert board.query("VERSION?") == ["VERSION:3.1"]
    assert not board.resets and not board.crashed
    # The deepest stack the flood, the edges and the commands reached stays within the build's estimate.
    assert 0 < board.deepest_stack_bytes() <= estimated_stack_bytes(tmp_path)


def test_hung_main_loop_ends_in_a_watchdog_reset_with_laser_enable_low(firmware: FirmwareBuild) -> None:
    with LockstepBoard(firmware.hang_elf, firmware.harness) as board:
        board.run_ms(10)
        assert board.query("WDT_TIMEOUT:2000") == ["OK:WDT_TIMEOUT:2000"]
        arm_and_press(board)
        board.write(b"HANG\n")
        hung = board.cycle + 5 * BYTE_CYCLES
        board.run_ms(400)
        assert len(board.resets) == 1
        reset_after_ms = (board.resets[0] - hung) / CYCLES_PER_MS
        # The hardware watchdog's 250 ms (its oscillator is nominal in simulation), long before the host
        # watchdog's 2 s.
        assert 240 <= reset_after_ms <= 270, reset_after_ms
        falls = [c.cycle for c in board.changes if c.kind == "L" and c.value == 0]
        assert falls and falls[-1] == board.resets[0]
        assert not board.enable
        # Back up: it says LASER_ENABLE is low, it is disarmed and waits for a host, pedal still down.
        assert "EVT:ENABLE:0" in [text for cycle, text in board.sent if cycle > board.resets[0]]
        assert board.query("STATUS?") == ["STATUS:ARMED=0,WDT=IDLE"]
        assert board.query("GET_FOOTPEDAL") == ["FOOTPEDAL:1"]
        board.query("WDT_RESET")
        board.run_ms(5)
        assert not board.enable
        assert board.query("ARM") == ["OK:ARM"]
        board.run(2000)
        assert board.enable


@pytest.mark.parametrize("build", ["firmware", "hang"])
def test_the_release_build_has_no_hang_command(firmware: FirmwareBuild, build: str) -> None:
    elf = firmware.elf if build == "firmware" else firmware.hang_elf
    with LockstepBoard(elf, firmware.harness) as board:
        board.run_ms(5)
        board.write(b"HANG\n")
        board.run_ms(300)
        assert bool(board.resets) is (build == "hang")


def test_a_chattering_pedal_on_a_flooded_line_neither_resets_nor_loses_the_last_level(
    board: LockstepBoard,
) -> None:
    """Edges faster than the line can report (one every 0.6 ms for 400 ms, 16 bytes of push line each) with
    garbage arriving at full baud: the board keeps up where it matters and is not reset by its own
    watchdog."""
    assert board.query("WDT_TIMEOUT:2000") == ["OK:WDT_TIMEOUT:2000"]
    arm_and_press(board)
    board.flood(True)
    pressed = True
    for _ in range(660):
        pressed = not pressed
        board.pedal(pressed)
        board.run(9_600)
        assert board.enable is pressed
    board.flood(False)
    board.run_ms(400)
    assert not board.resets and not board.crashed
    pedal_events = [text for _, text in board.sent if text.startswith("EVT:FOOTPEDAL:")]
    assert pedal_events[-1] == f"EVT:FOOTPEDAL:{int(pressed)}"
    # The leading LF ends whatever the overrun left of the last garbage line (answered as an error).
    assert board.query("\nGET_FOOTPEDAL", replies=2)[-1] == f"FOOTPEDAL:{int(pressed)}"
