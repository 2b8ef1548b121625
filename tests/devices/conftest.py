"""Fixtures shared by the device and simulator tests."""

from __future__ import annotations

import pytest

from tests.devices.sim_support import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A hand-moved clock for simulators and the physical model (starts at 500 s)."""
    return ManualClock()
