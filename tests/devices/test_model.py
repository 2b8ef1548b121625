"""The shared physical model: light, photodiode, LASER_ENABLE, ring size, vibration, TEC response."""

from __future__ import annotations

import math

import pytest

from devices.sim.model import PhysicalModel
from tests.devices.sim_support import ManualClock


@pytest.fixture
def model(clock: ManualClock) -> PhysicalModel:
    return PhysicalModel(seed=9, clock=clock)


def test_light_above_threshold_only_while_on_and_without_dropout(model: PhysicalModel) -> None:
    model.laser_current_ma = 2500.0
    assert model.light_w() == 0.0
    model.laser_output_on = True
    assert model.light_w() == pytest.approx(2.0)
    model.laser_current_ma = 400.0
    assert model.light_w() == 0.0
    model.laser_current_ma = 1500.0
    model.laser_dropout = True
    assert model.light_w() == 0.0


def test_photodiode_follows_light_gain_offset_with_bounded_noise_and_adc_steps(model: PhysicalModel) -> None:
    model.laser_output_on = True
    model.laser_current_ma = 2500.0  # 2 W -> 1 V
    step = 5.0 / 1023
    readings = [model.photodiode_v() for _ in range(200)]
    assert all(abs(v - 1.0) <= 0.005 + step for v in readings)
    assert len(set(readings)) > 1, "the 5 mV noise is there"
    assert all(abs(v / step - round(v / step)) < 1e-9 for v in readings), "10-bit quantised"
    model.photodiode_gain = 2.0
    model.photodiode_offset_v = 0.5
    assert model.photodiode_v() == pytest.approx(2.5, abs=0.005 + step)
    model.photodiode_offset_v = 10.0
    assert model.photodiode_v() == 5.0
    model.laser_output_on = False
    model.photodiode_offset_v = -1.0
    assert model.photodiode_v() == 0.0


def test_laser_enable_calls_every_callback_on_change_only(model: PhysicalModel) -> None:
    seen: list[tuple[str, bool]] = []
    model.on_laser_enable_change(lambda v: seen.append(("a", v)))
    model.on_laser_enable_change(lambda v: seen.append(("b", v)))
    assert model.laser_enable is False
    model.laser_enable = False
    model.laser_enable = True
    model.laser_enable = True
    model.laser_enable = False
    assert seen == [("a", True), ("b", True), ("a", False), ("b", False)]


def test_ring_size_from_position(model: PhysicalModel) -> None:
    assert model.ring_mm() == 2.0
    model.actuator_position_um = 1500.0
    assert model.ring_mm() == pytest.approx(3.5)


def test_vibration_with_motor_off_on_and_failed(model: PhysicalModel) -> None:
    assert model.vibration_g() == pytest.approx(0.05, abs=0.011)
    model.motor_pwm = 153
    assert model.vibration_g() == pytest.approx(1.5, abs=0.011)
    model.motor_pwm = 0
    assert model.vibration_g() < 0.1
    model.motor_pwm = 77
    assert model.vibration_g() == pytest.approx(0.5 + 77 / 153, abs=0.011)
    model.smoothing_fail = True
    assert model.vibration_g() < 0.1


def test_tec_first_order_towards_setpoint_and_back_to_ambient(
    model: PhysicalModel, clock: ManualClock
) -> None:
    assert model.tec_temperature_c() == 25.0
    model.tec_setpoint_c = 20.0
    clock.t += 10.0
    assert model.tec_temperature_c() == 25.0, "nothing moves while the TEC output is off"
    model.tec_output_on = True
    clock.t += 5.0
    assert model.tec_temperature_c() == pytest.approx(20.0 + 5.0 * math.exp(-1.0))
    model.tec_setpoint_c = 30.0  # re-anchored at the present temperature
    start = 20.0 + 5.0 * math.exp(-1.0)
    clock.t += 5.0
    assert model.tec_temperature_c() == pytest.approx(30.0 + (start - 30.0) * math.exp(-1.0))
    model.tec_drift_c = -2.0
    clock.t += 100.0
    assert model.tec_temperature_c() == pytest.approx(28.0)
    assert model.tec_current_a() < 0, "heating above ambient draws negative (heating) current"
    model.tec_output_on = False
    assert model.tec_current_a() == 0.0
