"""Conformance of the laser driver simulator to docs/devices.md ("Laser driver"), as a line handler."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.sim import laser as sl
from devices.sim.laser import LaserSim
from devices.sim.model import PhysicalModel
from tests.devices.sim_support import ManualClock


@pytest.fixture
def model(clock: ManualClock) -> PhysicalModel:
    m = PhysicalModel(seed=3, clock=clock)
    m.tec_output_on = True
    m.laser_enable = True
    return m


@pytest.fixture
def sim(model: PhysicalModel) -> LaserSim:
    return LaserSim(model, seed=3)


def err(sim: LaserSim) -> str:
    (reply,) = sim.handle_line("ERR?")
    return reply


def cond(sim: LaserSim) -> int:
    (reply,) = sim.handle_line("LAS:COND?")
    return int(reply)


def test_identity(sim: LaserSim) -> None:
    assert sim.handle_line("*IDN?") == ["Arroyo 6310 SIM-6310-0001 1.6 sim"]
    assert sim.handle_line("*idn?") == ["Arroyo 6310 SIM-6310-0001 1.6 sim"]


@pytest.mark.parametrize(
    ("set_cmd", "query", "expected"),
    [
        ("LAS:LDI 1200", "LAS:SET:LDI?", "1200.0"),
        ("laser:ldi 1200", "LASER:SET:LDI?", "1200.0"),
        ("LAS:LIM:LDI 3000", "LAS:LIM:LDI?", "3000.0"),
        ("LASER:LIMIT:LDI 3000", "laser:limit:ldi?", "3000.0"),
        ("LAS:OUT 1", "LAS:OUT?", "1"),
        ("LASER:OUTPUT ON", "LASER:OUTPUT?", "1"),
        ("las:out on", "las:out?", "1"),
    ],
)
def test_set_commands_short_long_any_case_and_no_reply(
    sim: LaserSim, set_cmd: str, query: str, expected: str
) -> None:
    assert sim.handle_line(set_cmd) == []
    assert sim.handle_line(query) == [expected]
    assert err(sim) == "0"


def test_output_off_forms(sim: LaserSim) -> None:
    for on, off in (("LAS:OUT 1", "LAS:OUT 0"), ("LAS:OUT ON", "LAS:OUT OFF")):
        sim.handle_line(on)
        assert sim.handle_line("LAS:OUT?") == ["1"]
        sim.handle_line(off)
        assert sim.handle_line("LAS:OUT?") == ["0"]


def test_chaining_keeps_the_path_and_falls_back_to_root(sim: LaserSim) -> None:
    assert sim.handle_line("LAS:LDI 1200;OUT 1;OUT?;SET:LDI?;ERR?") == ["1", "1200.0", "0"]
    assert sim.output_on
    assert sim.handle_line("LAS:OUT 0;:LAS:OUT?") == ["0"]


def test_chained_path_is_the_last_header_s_path(sim: LaserSim) -> None:
    # After LAS:LIM:LDI the path is LAS:LIM, so "OUT 1" means LAS:LIM:OUT, which does not exist.
    sim.handle_line("LAS:LIM:LDI 1000;OUT 1")
    assert err(sim) == "123"
    assert sim.handle_line("LAS:LIM:LDI?;LDI?") == ["1000.0", "1000.0"]


def test_over_long_input_is_refused_with_102_and_not_executed(sim: LaserSim) -> None:
    line = "LAS:LDI 1200;" + "LAS:OUT?;" * 14
    assert len(line) > 128
    assert sim.handle_line(line) == []
    assert err(sim) == "102"
    assert sim.handle_line("LAS:SET:LDI?") == ["0.0"]
    exactly = "LAS:OUT?" + " " * 120
    assert len(exactly) == 128
    assert sim.handle_line(exactly) == ["0"]


def test_unknown_commands_are_123(sim: LaserSim) -> None:
    for line in ("LAS:FOO?", "TEC:T?", "LAS:OUT:X 1", "LAS::OUT?", "BOGUS 1", "?"):
        assert sim.handle_line(line) == []
        assert err(sim) == "123", line


@pytest.mark.parametrize(
    "line",
    ["LAS:LDI abc", "LAS:LDI", "LAS:OUT 2", "LAS:OUT maybe", "LAS:OUT? 1", "LAS:LDI nan", "LAS:LIM:LDI 1,5"],
)
def test_bad_values_are_202(sim: LaserSim, line: str) -> None:
    sim.handle_line(line)
    assert err(sim) == "202"
    assert sim.handle_line("LAS:SET:LDI?;:LAS:LIM:LDI?;:LAS:OUT?") == ["0.0", "6000.0", "0"]


def test_setpoint_above_limit_is_201_and_unchanged(sim: LaserSim) -> None:
    sim.handle_line("LAS:LDI 1000")
    sim.handle_line("LAS:LDI 6000.1")
    sim.handle_line("LAS:LDI -1")
    assert err(sim) == "201,201"
    assert sim.handle_line("LAS:SET:LDI?") == ["1000.0"]
    sim.handle_line("LAS:LIM:LDI 10000.1")
    assert err(sim) == "201"


def test_lowering_the_limit_lowers_a_higher_setpoint(sim: LaserSim, model: PhysicalModel) -> None:
    sim.handle_line("LAS:LDI 1500")
    sim.handle_line("LAS:LIM:LDI 1000")
    assert sim.handle_line("LAS:SET:LDI?") == ["1000.0"]
    assert model.laser_current_ma == 1000.0
    sim.handle_line("LAS:LIM:LDI 2000")
    assert sim.handle_line("LAS:SET:LDI?") == ["1000.0"]


def test_error_queue_lists_then_clears(sim: LaserSim) -> None:
    sim.handle_line("NOPE")
    sim.handle_line("LAS:LDI x")
    sim.handle_line("LAS:LDI 99999")
    assert err(sim) == "123,202,201"
    assert err(sim) == "0"


def test_error_queue_is_bounded(sim: LaserSim) -> None:
    for _ in range(40):
        sim.handle_line("NOPE")
    assert err(sim) == ",".join(["123"] * sl.ERROR_QUEUE_SIZE)


def test_measured_current_voltage_and_settling(sim: LaserSim, clock: ManualClock) -> None:
    assert sim.handle_line("LAS:LDI?;LDV?") == ["0.0", "0.000"]
    sim.handle_line("LAS:LDI 1200;OUT 1")
    assert cond(sim) & sl.BIT_OUT_OF_TOLERANCE
    clock.t += 0.010
    (half,) = sim.handle_line("LAS:LDI?")
    assert 590.0 <= float(half) <= 610.0
    clock.t += 0.015
    assert not cond(sim) & sl.BIT_OUT_OF_TOLERANCE
    (current,) = sim.handle_line("LAS:LDI?")
    assert float(current) == pytest.approx(1200.0, abs=0.3)
    assert sim.handle_line("LAS:LDV?") == ["1.842"]


def test_condition_bits(sim: LaserSim, model: PhysicalModel, clock: ManualClock) -> None:
    assert cond(sim) == 0
    sim.handle_line("LAS:LIM:LDI 1000;:LAS:LDI 1000;OUT 1")
    clock.t += 1.0
    assert cond(sim) == sl.BIT_CURRENT_LIMIT | sl.BIT_OUTPUT_ON
    sim.handle_line("LAS:LDI 900")
    clock.t += 1.0
    assert cond(sim) == sl.BIT_OUTPUT_ON
    model.laser_enable = False
    assert cond(sim) == sl.BIT_INTERLOCK_OPEN


def test_interlock_drop_while_on_forces_off_with_501(sim: LaserSim, model: PhysicalModel) -> None:
    sim.handle_line("LAS:LDI 1200;OUT 1")
    assert model.light_w() > 0
    model.laser_enable = False
    assert not model.laser_output_on
    assert model.light_w() == 0.0
    assert sim.handle_line("LAS:OUT?") == ["0"]
    assert cond(sim) & sl.BIT_INTERLOCK_OPEN
    assert err(sim) == "501"
    model.laser_enable = True
    assert sim.handle_line("LAS:OUT?") == ["0"], "closing the interlock again never restores the output"


def test_output_on_with_interlock_open_stays_off_with_501(sim: LaserSim, model: PhysicalModel) -> None:
    model.laser_enable = False
    sim.handle_line("LAS:OUT 1")
    assert sim.handle_line("LAS:OUT?") == ["0"]
    assert err(sim) == "501"


def test_output_on_with_tec_off_stays_off_with_508(sim: LaserSim, model: PhysicalModel) -> None:
    model.tec_output_on = False
    sim.handle_line("LAS:OUT 1")
    assert sim.handle_line("LAS:OUT?") == ["0"]
    assert err(sim) == "508"
    assert cond(sim) & sl.BIT_OUTPUT_ON == 0


def test_thermal_trip_bit_and_output_forced_off(sim: LaserSim, model: PhysicalModel) -> None:
    sim.handle_line("LAS:LDI 1200;OUT 1")
    model.tec_drift_c = 20.0  # 25 + 20 degC is over the 40 degC trip
    assert sim.handle_line("LAS:OUT?") == ["0"]
    assert cond(sim) & sl.BIT_THERMAL_TRIP
    sim.handle_line("LAS:OUT 1")
    assert sim.handle_line("LAS:OUT?") == ["0"]
    model.tec_drift_c = 0.0
    assert cond(sim) & sl.BIT_THERMAL_TRIP == 0


def test_dropout_keeps_output_on_without_light(sim: LaserSim, model: PhysicalModel) -> None:
    sim.handle_line("LAS:LDI 1500;OUT 1")
    assert model.light_w() == pytest.approx(1.0)
    model.laser_dropout = True
    assert sim.handle_line("LAS:OUT?") == ["1"]
    assert model.light_w() == 0.0


def test_overlong_hook_queues_102(sim: LaserSim) -> None:
    sim.handle_overlong()
    assert err(sim) == "102"


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_printable_input_never_crashes_and_never_switches_on_unasked(line: str) -> None:
    model = PhysicalModel(seed=1, clock=lambda: 0.0)
    model.tec_output_on = True
    model.laser_enable = True
    sim = LaserSim(model, seed=1)
    replies = sim.handle_line(line)
    assert all(isinstance(r, str) and "\n" not in r for r in replies)
    if len(line) > 128:
        assert replies == [] and sim.errors == [102]
    if "OUT" not in line.upper():
        assert not model.laser_output_on
