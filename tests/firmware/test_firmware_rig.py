"""The whole controller on the simulated rig with the safety board's firmware under simavr (in real time) in
place of the Python simulator: every fault that concerns the board injected mid-step, a footpedal release
mid-step, and a short session run to its end with the pedal released in the middle. Same expectations as the
Python board's tests in tests/control, except where the firmware's reaction takes real time: "laser output
off" is waited for (a few milliseconds) instead of being true when the simulator command returns."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control"))

from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, USERNAME, open_and_treat, prepare_data_dir, wait_until

from control.controller import Controller
from control.simrun import parse_script, run_simulated_session
from control.supervisor import Refused, SystemState
from devices.sim.firmware import FirmwareBuild, FirmwareSafetyBoard
from storage import DataDir
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST

FAULT_PROTOCOL = protocol_json((4.0, 2.0, 2.0, 2.0, "constant"))
SESSION_PROTOCOL = protocol_json((6.0, 2.0, 2.0, 2.0, "constant"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path, firmware: FirmwareBuild) -> DataDir:
    del firmware  # built (or skipped, saying why) before the controller starts
    return await prepare_data_dir(
        tmp_path / "data", migrated_template, {"fault-test": FAULT_PROTOCOL, "session": SESSION_PROTOCOL}
    )


@pytest.fixture
async def controller(data: DataDir, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Controller]:
    monkeypatch.setenv("TOSCA_SIM_SAFETY_BOARD", "firmware")
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    try:
        assert ctl.sim_rig is not None and isinstance(ctl.sim_rig.safety, FirmwareSafetyBoard)
        yield ctl
    finally:
        await ctl.close()


def _safety_rows(data: DataDir, session_id: int) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data.db_path) as db:
        return db.execute(
            "SELECT event_type, severity, system_state FROM safety_log WHERE session_id = ?", (session_id,)
        ).fetchall()


async def test_pedal_release_mid_step_drops_the_output_and_is_not_a_fault(controller: Controller) -> None:
    sim = controller.sim_rig
    assert sim is not None
    await open_and_treat(controller, "fault-test")
    sup = controller.supervisor
    await asyncio.sleep(0.3)
    sim.command("pedal up")
    await wait_until(lambda: not sim.model.laser_enable, 0.5, "LASER_ENABLE low")
    await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")
    await wait_until(lambda: sup.state is SystemState.ARMED, 1.0, "ARMED")
    assert sup.fault is None
    sim.command("pedal down")
    await wait_until(lambda: sup.state is SystemState.TREATING, 2.0, "TREATING again")
    await wait_until(lambda: sim.model.laser_output_on, 2.0, "output on again")


FAULTS = [
    ("estop on", "e_stop_pressed", "emergency"),
    ("smoothing fail", "smoothing_device_fault", "critical"),
    ("photodiode gain 0.5", "photodiode_fault", "critical"),
    ("unplug safety", "interlock_failure", "critical"),
    ("stall safety on", "interlock_failure", "critical"),
    ("garbage safety 200", None, None),
]


@pytest.mark.parametrize(("command", "event_type", "severity"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_each_board_fault_mid_step_switches_the_laser_off_and_latches(
    controller: Controller, data: DataDir, command: str, event_type: str | None, severity: str | None
) -> None:
    sim = controller.sim_rig
    assert sim is not None
    session_id = await open_and_treat(controller, "fault-test")
    await asyncio.sleep(0.2)
    sim.command(command)
    sup = controller.supervisor
    if event_type is None:
        # Garbage from the board costs a reply or two; the treatment may go on or fault, never emit unsafely.
        await asyncio.sleep(1.0)
        if sup.state is not SystemState.FAULT:
            assert sup.state is SystemState.TREATING and sim.model.laser_enable
            return
    await wait_until(lambda: sup.state is SystemState.FAULT, 3.0, f"FAULT after {command!r}")
    await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")
    assert sup.fault is not None
    if command == "estop on" and sup.fault.event_type == "interlock_failure":
        # The firmware opens the laser's interlock within microseconds, 1.5 ms before its EVT:ESTOP line is
        # through the serial link, so the controller may see the laser's interlock open first and latch that
        # as the cause (a real board would do the same). The E-stop itself must still be seen.
        await wait_until(lambda: sup.readings.estop is True, 2.0, "the E-stop seen")
    elif event_type is not None:
        assert sup.fault.event_type == event_type
        await wait_until(
            lambda: (event_type, severity, "fault") in _safety_rows(data, session_id),
            3.0,
            f"a {event_type} safety_log row",
        )
    # The fault latches: the pedal does nothing, and arming is refused until a reset.
    if command != "unplug safety":
        sim.command("pedal up")
        sim.command("pedal down")
    await asyncio.sleep(0.2)
    assert sup.state is SystemState.FAULT and not sim.model.laser_output_on
    with pytest.raises(Refused):
        await controller.arm(PASSWORD)
    await controller.abort(f"fault: {command}")


@pytest.mark.timeout(120)
async def test_a_session_with_the_pedal_released_mid_step_completes(
    data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOSCA_SIM_SAFETY_BOARD", "firmware")
    # Treatment starts at arming; the 6 s step at 2 W is held 2 s by the pedal released at 2 s.
    result = await run_simulated_session(
        data.root,
        protocol="session",
        subject_code="P-2026-0009",
        username=USERNAME,
        password=PASSWORD,
        script=parse_script("2 pedal up\n4 pedal down\n"),
        hashing=CHEAP,
        say=lambda line: None,
    )
    assert result.exit_code == 0, result
    summary = result.summary
    assert summary["status"] == "completed"
    assert summary["laser_on_time_s"] == pytest.approx(6.0, abs=0.3)
    assert summary["energy_j"] == pytest.approx(12.0, rel=0.05)
    assert result.session_id is not None
    with sqlite3.connect(data.db_path) as db:
        released = db.execute(
            "SELECT count(*) FROM safety_log WHERE session_id = ? AND event_type = 'footpedal_released'",
            (result.session_id,),
        ).fetchone()[0]
    assert released == 1
