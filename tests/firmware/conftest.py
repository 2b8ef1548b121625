"""Fixtures for the firmware tests: one build per test session (cached by make), and a fresh simulated board
per test. Everything here is skipped, saying what is missing, only where the AVR toolchain or simavr is not
installed; CI installs them (``.ci/run``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devices.sim.firmware import FirmwareBuild, LockstepBoard, build, missing_tools


@pytest.fixture(scope="session")
def firmware() -> FirmwareBuild:
    missing = missing_tools()
    if missing:
        pytest.skip(f"safety firmware under simavr: not installed: {', '.join(missing)}")
    return build()


@pytest.fixture
def board(firmware: FirmwareBuild) -> Iterator[LockstepBoard]:
    """The firmware on a simulated ATmega328P in lock-step, after 10 ms of boot."""
    with LockstepBoard(firmware.elf, firmware.harness) as sim:
        sim.run_ms(10)
        yield sim
