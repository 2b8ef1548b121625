"""The actuator simulator against docs/devices.md ("Actuator"): a line handler on a hand-stepped clock."""

from __future__ import annotations

import pytest

from devices.sim import actuator as act
from devices.sim.actuator import ActuatorSim
from devices.sim.model import PhysicalModel
from tests.devices.sim_support import ManualClock


@pytest.fixture
def model(clock: ManualClock) -> PhysicalModel:
    return PhysicalModel(seed=1, clock=clock)


@pytest.fixture
def sim(model: PhysicalModel, clock: ManualClock) -> ActuatorSim:
    return ActuatorSim(model, clock=clock)


def q(sim: ActuatorSim, tag: str) -> int:
    (reply,) = sim.handle_line(f"{tag}=?")
    name, value = reply.split("=")
    assert name == tag
    return int(value)


def stat(sim: ActuatorSim) -> int:
    return q(sim, "STAT")


def homed(sim: ActuatorSim, clock: ManualClock) -> ActuatorSim:
    assert sim.handle_line("ENBL=1") == []
    assert sim.handle_line("INDX=0") == []
    clock.advance(1.0)
    return sim


def test_power_up_state(sim: ActuatorSim) -> None:
    assert stat(sim) == 0
    assert q(sim, "EPOS") == 0
    assert q(sim, "DPOS") == 0
    assert [q(sim, t) for t in ("SSPD", "LLIM", "HLIM", "PTO2", "INFO", "POLI")] == [200, 0, 2400, 4, 0, 97]


def test_set_commands_send_nothing_and_queries_answer_tag_value(sim: ActuatorSim) -> None:
    assert sim.handle_line("SSPD=500") == []
    assert sim.handle_line("SSPD=?") == ["SSPD=500"]
    assert sim.handle_line("PTO2=10") == []
    assert sim.handle_line("PTO2=?") == ["PTO2=10"]
    assert sim.handle_line("LLIM=-80") == []
    assert sim.handle_line("LLIM=?") == ["LLIM=-80"]
    assert sim.handle_line("HLIM=+3000") == []
    assert sim.handle_line("HLIM=?") == ["HLIM=3000"]
    assert sim.handle_line("POLI=20") == []
    assert sim.handle_line("POLI=?") == ["POLI=20"]
    assert sim.ignored_lines == 0


@pytest.mark.parametrize(
    "line",
    [
        "GARBAGE",
        "sspd=100",
        "SSPD=1.5",
        "SSPD=",
        "SSPD=abc",
        "SSP=100",
        "SSPD=0",
        "PTO2=-1",
        "POLI=1",
        "INFO=2",
        "ENBL=2",
        "ABCD=1",
        "RSET=?",
        "INDX=?",
        "STOP=?",
        "INDX=1",
        "LLIM=99999999999",
        "DPOS=1234567890123",  # 17 characters: over the 16-character limit
        "",
        "\x00\xff",
    ],
)
def test_bad_lines_are_ignored_and_change_nothing(sim: ActuatorSim, line: str) -> None:
    before = [q(sim, t) for t in ("SSPD", "LLIM", "HLIM", "PTO2", "INFO", "POLI", "STAT", "DPOS")]
    assert sim.handle_line(line) == []
    assert sim.ignored_lines == 1
    after = [q(sim, t) for t in ("SSPD", "LLIM", "HLIM", "PTO2", "INFO", "POLI", "STAT", "DPOS")]
    assert after == before


def test_sixteen_characters_is_accepted(sim: ActuatorSim, clock: ManualClock) -> None:
    homed(sim, clock)
    line = "DPOS=+0000000800"
    assert len(line) == 16
    sim.handle_line(line)
    assert q(sim, "DPOS") == 800


def test_enable_and_index_search_takes_time(
    sim: ActuatorSim, clock: ManualClock, model: PhysicalModel
) -> None:
    model.actuator_position_um = 250.0
    sim.handle_line("RSET=0")  # the encoder now counts from here
    sim.handle_line("ENBL=1")
    assert stat(sim) & act.BIT_ENABLED
    assert not stat(sim) & act.BIT_CLOSED_LOOP
    sim.handle_line("INDX=0")
    s = stat(sim)
    assert s & act.BIT_SEARCHING_INDEX and s & act.BIT_MOTOR_ON
    assert not s & act.BIT_ENCODER_VALID
    clock.advance(0.5)  # 100 µm of the 250 µm at 200 µm/s
    assert stat(sim) & act.BIT_SEARCHING_INDEX
    assert model.actuator_position_um == pytest.approx(150.0)
    assert q(sim, "EPOS") == -80  # counted from the reset position, 1250 nm per count
    clock.advance(0.8)
    s = stat(sim)
    assert not s & act.BIT_SEARCHING_INDEX and not s & act.BIT_MOTOR_ON
    for bit in (act.BIT_ENCODER_VALID, act.BIT_AT_INDEX, act.BIT_CLOSED_LOOP, act.BIT_POSITION_REACHED):
        assert s & bit
    assert q(sim, "EPOS") == 0 and model.actuator_position_um == 0.0


def test_index_search_has_a_minimum_duration(sim: ActuatorSim, clock: ManualClock) -> None:
    sim.handle_line("ENBL=1")
    sim.handle_line("INDX=0")
    clock.advance(sim.min_index_s / 2)
    assert stat(sim) & act.BIT_SEARCHING_INDEX
    clock.advance(sim.min_index_s)
    assert stat(sim) & act.BIT_ENCODER_VALID


def test_move_at_sspd_updates_the_model(sim: ActuatorSim, clock: ManualClock, model: PhysicalModel) -> None:
    homed(sim, clock)
    sim.handle_line("DPOS=800")  # 1000 µm
    s = stat(sim)
    assert s & act.BIT_MOTOR_ON and not s & act.BIT_POSITION_REACHED
    clock.advance(2.5)
    assert q(sim, "EPOS") == 400
    assert model.actuator_position_um == pytest.approx(500.0)
    assert model.ring_mm() == pytest.approx(2.5)
    clock.advance(2.5)
    assert q(sim, "EPOS") == 800
    s = stat(sim)
    assert s & act.BIT_POSITION_REACHED and not s & act.BIT_MOTOR_ON


def test_stop_holds_the_current_position(sim: ActuatorSim, clock: ManualClock) -> None:
    homed(sim, clock)
    sim.handle_line("DPOS=800")
    clock.advance(1.0)
    sim.handle_line("STOP=0")
    clock.advance(5.0)
    assert q(sim, "EPOS") == 160
    assert q(sim, "DPOS") == 160
    s = stat(sim)
    assert s & act.BIT_ENABLED and s & act.BIT_POSITION_REACHED and not s & act.BIT_MOTOR_ON


def test_target_is_clamped_to_soft_limits(sim: ActuatorSim, clock: ManualClock) -> None:
    homed(sim, clock)
    sim.handle_line("SSPD=100000")
    sim.handle_line("DPOS=9000")
    assert q(sim, "DPOS") == 2400
    sim.handle_line("DPOS=-50")
    assert q(sim, "DPOS") == 0


def test_end_stop_at_physical_travel(sim: ActuatorSim, clock: ManualClock, model: PhysicalModel) -> None:
    homed(sim, clock)
    sim.handle_line("HLIM=10000")
    sim.handle_line("SSPD=100000")
    sim.handle_line("DPOS=9000")
    clock.advance(1.0)
    s = stat(sim)
    assert model.actuator_position_um == act.PHYSICAL_MAX_UM
    assert s & act.BIT_END_STOP and not s & act.BIT_POSITION_REACHED and not s & act.BIT_MOTOR_ON


def test_move_refused_without_index_or_enable(sim: ActuatorSim, clock: ManualClock) -> None:
    sim.handle_line("ENBL=1")
    sim.handle_line("DPOS=100")
    assert stat(sim) & act.BIT_POSITION_FAIL
    assert q(sim, "DPOS") == 0
    sim.handle_line("INDX=0")
    clock.advance(1.0)
    sim.handle_line("DPOS=100")
    assert not stat(sim) & act.BIT_POSITION_FAIL
    sim.handle_line("ENBL=0")
    assert not stat(sim) & act.BIT_ENABLED
    sim.handle_line("DPOS=200")
    assert stat(sim) & act.BIT_POSITION_FAIL


def test_index_refused_while_disabled(sim: ActuatorSim) -> None:
    sim.handle_line("INDX=0")
    assert stat(sim) == act.BIT_POSITION_FAIL


@pytest.mark.parametrize("sensor,bit", [(1, act.BIT_THERMAL_1), (2, act.BIT_THERMAL_2)])
def test_thermal_fault_latches_until_enbl(
    sim: ActuatorSim, clock: ManualClock, model: PhysicalModel, sensor: int, bit: int
) -> None:
    homed(sim, clock)
    sim.handle_line("DPOS=800")
    clock.advance(1.0)
    sim.thermal_fault(sensor)
    s = stat(sim)
    assert s & bit and not s & act.BIT_ENABLED and not s & act.BIT_MOTOR_ON
    where = model.actuator_position_um
    clock.advance(2.0)
    assert model.actuator_position_um == where  # stopped
    sim.handle_line("ENBL=1")  # still hot: refused
    assert stat(sim) & bit and not stat(sim) & act.BIT_ENABLED
    sim.clear_fault()
    assert stat(sim) & bit and not stat(sim) & act.BIT_ENABLED  # clearing the cause re-enables nothing
    sim.handle_line("ENBL=1")
    s = stat(sim)
    assert not s & bit and s & act.BIT_ENABLED and s & act.BIT_POSITION_REACHED


def test_thermal_sensor_must_exist(sim: ActuatorSim) -> None:
    with pytest.raises(ValueError, match="1 or 2"):
        sim.thermal_fault(3)


def test_jam_trips_error_limit(sim: ActuatorSim, clock: ManualClock) -> None:
    homed(sim, clock)
    sim.jam()
    sim.handle_line("DPOS=800")
    clock.advance(1.0)
    s = stat(sim)
    assert s & act.BIT_ERROR_LIMIT and not s & act.BIT_ENABLED
    sim.clear_fault()
    sim.handle_line("ENBL=1")
    assert not stat(sim) & act.BIT_ERROR_LIMIT


def test_encoder_fault_times_out_index_search(sim: ActuatorSim, clock: ManualClock) -> None:
    sim.handle_line("ENBL=1")
    sim.encoder_fault()
    sim.handle_line("INDX=0")
    assert stat(sim) & act.BIT_ENCODER_ERROR
    clock.advance(sim.index_timeout_s + 0.1)
    s = stat(sim)
    assert s & act.BIT_SAFETY_TIMEOUT and not s & act.BIT_ENABLED and not s & act.BIT_ENCODER_VALID


def test_reset_restores_defaults_and_forgets_index(sim: ActuatorSim, clock: ManualClock) -> None:
    homed(sim, clock)
    sim.handle_line("SSPD=900")
    sim.handle_line("INFO=3")
    sim.handle_line("RSET=0")
    assert stat(sim) == 0
    assert q(sim, "SSPD") == 200 and q(sim, "INFO") == 0


def test_info_lines(sim: ActuatorSim, clock: ManualClock) -> None:
    homed(sim, clock)
    assert sim.info_lines() == ["EPOS=0", "DPOS=0", f"STAT={stat(sim)}"]
    sim.handle_line("INFO=3")
    assert q(sim, "INFO") == 3
    sim.handle_line("INFO=0")
    assert q(sim, "INFO") == 0
