"""``--safety-board firmware`` on the command line: the option is accepted where the simulated rig runs, the
Python simulator stays the default, and ``tosca sim --safety-board firmware`` serves the firmware under simavr
on the safety port."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

from devices.sim.firmware import FirmwareBuild, FirmwareSafetyBoard
from devices.sim.rig import SAFETY_BOARD_ENV, SimRig
from devices.sim.safety import SafetyBoardSim
from tui import cli

TOSCA = str(Path(sys.executable).with_name("tosca"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--sim", "--safety-board", "firmware"],
        ["sim", "--safety-board", "firmware"],
        ["sim", "run", "P", "--subject", "P-2026-0001", "--user", "tech", "--safety-board", "firmware"],
        ["controller", "--sim", "--safety-board", "firmware"],
        ["--safety-board", "firmware", "controller", "--sim"],
    ],
)
def test_the_option_reaches_the_simulated_rig(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SAFETY_BOARD_ENV, raising=False)
    args = cli.build_parser().parse_args(argv)
    cli._apply_safety_board(args)
    assert os.environ[SAFETY_BOARD_ENV] == "firmware"
    assert isinstance(SimRig().safety, FirmwareSafetyBoard)


def test_the_python_simulator_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SAFETY_BOARD_ENV, raising=False)
    args = cli.build_parser().parse_args(["sim"])
    cli._apply_safety_board(args)
    assert SAFETY_BOARD_ENV not in os.environ
    assert isinstance(SimRig().safety, SafetyBoardSim)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sim", "--safety-board", "arduino"])


def _read_line(fd: int, timeout_s: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"no line within {timeout_s} s (got {data!r})")
        data += os.read(fd, 1)
    return data.decode("ascii").rstrip("\n")


def _children(pid: int) -> list[str]:
    found: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def test_tosca_sim_serves_the_firmware_on_the_safety_port(firmware: FirmwareBuild) -> None:
    proc = subprocess.Popen(
        [TOSCA, "sim", "--safety-board", "firmware"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ports = json.loads(proc.stdout.readline())
        assert set(ports) == {"laser", "tec", "actuator", "safety", "camera"}
        assert any(str(firmware.elf) in line for line in _children(proc.pid))
        fd = os.open(ports["safety"], os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            os.write(fd, b"VERSION?\n")
            assert _read_line(fd, 5.0) == "VERSION:3.1"
            proc.stdin.write("pedal down\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok pedal down"
            assert _read_line(fd, 5.0) == "EVT:FOOTPEDAL:1"
            os.write(fd, b"GET_FOOTPEDAL\n")
            assert _read_line(fd, 5.0) == "FOOTPEDAL:1"
        finally:
            os.close(fd)
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
