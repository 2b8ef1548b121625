"""Conformance of the TEC simulator to docs/devices.md ("TEC"), as a line handler on a hand-stepped clock."""

from __future__ import annotations

import math

import pytest

from devices.sim.model import PhysicalModel
from devices.sim.tec import TecSim
from tests.devices.sim_support import ManualClock


@pytest.fixture
def model(clock: ManualClock) -> PhysicalModel:
    return PhysicalModel(seed=1, clock=clock)


@pytest.fixture
def sim(model: PhysicalModel) -> TecSim:
    return TecSim(model)


def one(sim: TecSim, line: str) -> str:
    (reply,) = sim.handle_line(line)
    return reply


def test_identity_and_limits(sim: TecSim) -> None:
    assert one(sim, "*IDN?") == "Arroyo 5305 SIM-5305-0001 1.4 sim"
    assert one(sim, "TEC:LIM:THI?") == "35.00"
    assert one(sim, "tec:limit:tlo?") == "15.00"


def test_setpoint_set_and_query_without_reply(sim: TecSim) -> None:
    assert sim.handle_line("TEC:T 22.5") == []
    assert one(sim, "TEC:SET:T?") == "22.50"
    assert one(sim, "ERR?") == "0"


@pytest.mark.parametrize("value", ["14.99", "35.01", "-3"])
def test_setpoint_outside_limits_is_201_and_unchanged(sim: TecSim, value: str) -> None:
    sim.handle_line(f"TEC:T {value}")
    assert one(sim, "ERR?") == "201"
    assert one(sim, "TEC:SET:T?") == "25.00"


def test_bad_value_202_unknown_123_too_long_102(sim: TecSim) -> None:
    sim.handle_line("TEC:T warm")
    sim.handle_line("TEC:OUT 5")
    sim.handle_line("LAS:OUT 1")
    sim.handle_line("TEC:T?" + ";" * 130)
    assert one(sim, "ERR?") == "202,202,123,102"


def test_output_and_first_order_response(sim: TecSim, model: PhysicalModel, clock: ManualClock) -> None:
    assert one(sim, "TEC:OUT?") == "0"
    assert one(sim, "TEC:ITE?") == "0.000"
    sim.handle_line("TEC:T 20;OUT 1")
    assert one(sim, "TEC:OUT?") == "1"
    assert model.tec_output_on
    assert one(sim, "TEC:T?") == "25.00"
    clock.t += 5.0  # one time constant: 63 % of the way
    expected = 20.0 + 5.0 * math.exp(-1.0)
    assert float(one(sim, "TEC:T?")) == pytest.approx(expected, abs=0.006)
    assert float(one(sim, "TEC:ITE?")) > 0.4
    clock.t += 60.0
    assert one(sim, "TEC:T?") == "20.00"
    sim.handle_line("TEC:OUT OFF")
    clock.t += 60.0
    assert one(sim, "TEC:T?") == "25.00", "with the output off the diode returns to ambient"


def test_drift_moves_the_measured_temperature(sim: TecSim, model: PhysicalModel) -> None:
    model.tec_drift_c = 1.5
    assert one(sim, "TEC:T?") == "26.50"
