"""The controller's calibration commands on the simulated rig, in-process, over its real sockets: the ring
size move (allowed on observe.sock, refused while a session is open), the laser power run (engineer, key
control, footpedal, every interlock of the supervisor, faults latching), and the pre-treatment checks failing
an expired calibration."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, SUBJECT, USERNAME, authenticated, prepare_data_dir, wait_until

from control import messages as msg
from control.accounts import AccountService, Actor
from control.calibration import install_sim_calibrations_if_missing
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.supervisor import Refused, SystemState
from storage import DataDir, create_engine, session_factory, utc_now
from storage.repositories import ConfigRepository
from tests.support import protocol_json

ENGINEER = "eve"
ENGINEER_PASSWORD = "engineer pass 9"


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    data = await prepare_data_dir(
        tmp_path / "data", migrated_template, {"short": protocol_json((2.0, 2.0, 2.0, 2.0, "constant"))}
    )
    engine = create_engine(data.db_path)
    try:
        sessions = session_factory(engine)
        accounts = AccountService(sessions=sessions, terminal="test", hashing=CHEAP)
        admin = await accounts.get_user("admin1")
        assert admin is not None
        await accounts.create_user(
            ENGINEER, "Eve Engineer", "engineer", ENGINEER_PASSWORD, Actor.console_user(admin, "test")
        )
        await install_sim_calibrations_if_missing(sessions, admin.tech_id)
    finally:
        await engine.dispose()
    return data


@pytest.fixture
async def controller(data: DataDir) -> AsyncIterator[Controller]:
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.close()


@pytest.fixture
async def engineer(controller: Controller, data: DataDir) -> AsyncIterator[ControllerClient]:
    client = await authenticated(data.root / "control.sock", ENGINEER, ENGINEER_PASSWORD)
    try:
        yield client
    finally:
        await client.close()


def move(
    position_um: float, password: str = ENGINEER_PASSWORD, username: str = ENGINEER
) -> msg.CalibrationMove:
    return msg.CalibrationMove(position_um=position_um, username=username, password=password)


async def test_observe_socket_moves_the_actuator_for_an_engineer_but_never_during_a_session(
    controller: Controller, data: DataDir
) -> None:
    sim = controller.sim_rig
    assert sim is not None
    observe = await ControllerClient.connect(data.root / "observe.sock")
    try:
        reply = await observe.call(move(300.0), timeout_s=30.0)
        assert reply is not None and reply["position_um"] == pytest.approx(300.0, abs=2.0)
        assert reply["ring_mm"] == pytest.approx(2.3, abs=0.01)
        assert sim.model.actuator_position_um == pytest.approx(300.0, abs=2.0)
        with pytest.raises(CommandFailed, match="only an engineer calibrates"):
            await observe.call(move(100.0, PASSWORD, USERNAME))
        with pytest.raises(CommandFailed, match=r"[Ii]ncorrect|wrong|password"):
            await observe.call(move(100.0, "not it"))
        await controller.open_session(
            subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
        )
        with pytest.raises(CommandFailed, match="not moved for a calibration while a session is open"):
            await observe.call(move(100.0))
        # Nor is the ring size calibration stored (the remote console saves it through the controller).
        save = msg.CalibrationSaveRing(
            points=[[0.0, 2.0], [300.0, 2.3], [600.0, 2.6]], username=ENGINEER, password=ENGINEER_PASSWORD
        )
        with pytest.raises(CommandFailed, match="not changed while a session is open"):
            await observe.call(save)
        with pytest.raises(CommandFailed, match="unknown command type 'calibration_begin'"):
            await observe.call(msg.CalibrationBegin(password=ENGINEER_PASSWORD))
    finally:
        await observe.close()


async def _point(controller: Controller, client: ControllerClient, current_ma: float) -> tuple[float, float]:
    """One point as the wizard takes it: the current set, the pedal pressed, the meter read while it
    emits (the simulator's own light), the photodiode measured, the pedal released."""
    sim = controller.sim_rig
    assert sim is not None
    await client.call(msg.CalibrationCurrent(current_ma=current_ma))
    sim.command("pedal down")
    await wait_until(lambda: sim.model.laser_output_on, 5.0, "the laser to emit")
    meter_w = sim.model.light_w()
    reading = await client.call(msg.CalibrationMeasure())
    sim.command("pedal up")
    await wait_until(lambda: not sim.model.laser_output_on, 5.0, "the laser to stop")
    assert reading is not None
    return meter_w, float(reading["photodiode_v"])


async def test_laser_power_run_follows_the_pedal_and_the_interlocks(
    controller: Controller, engineer: ControllerClient
) -> None:
    sim = controller.sim_rig
    assert sim is not None
    sup = controller.supervisor
    with pytest.raises(CommandFailed, match="no calibration run"):
        await engineer.call(msg.CalibrationCurrent(current_ma=3000.0))
    with pytest.raises(CommandFailed, match=r"[Ii]ncorrect|wrong|password"):
        await engineer.call(msg.CalibrationBegin(password="not it"))
    assert sup.state is SystemState.IDLE
    reply = await engineer.call(msg.CalibrationBegin(password=ENGINEER_PASSWORD))
    assert reply == {"state": "armed"}
    drive = await engineer.call(msg.CalibrationCurrent(current_ma=3000.0))
    assert drive == {"current_ma": 3000.0, "expected_w": pytest.approx(2.5)}
    assert not sim.model.laser_output_on  # nothing without the footpedal
    with pytest.raises(CommandFailed, match="press and hold the footpedal"):
        await engineer.call(msg.CalibrationMeasure())
    meter, volts = await _point(controller, engineer, 3000.0)
    assert meter == pytest.approx(2.5)
    assert volts == pytest.approx(1.25, abs=0.02)
    with pytest.raises(CommandFailed, match="above the calibrated maximum"):
        await engineer.call(msg.CalibrationCurrent(current_ma=20000.0))

    # An interlock while it emits: the E-stop latches a fault, the laser goes off and stays off.
    await engineer.call(msg.CalibrationCurrent(current_ma=4000.0))
    sim.command("pedal down")
    await wait_until(lambda: sim.model.laser_output_on, 5.0, "the laser to emit")
    sim.command("estop on")
    await wait_until(lambda: sup.state is SystemState.FAULT, 5.0, "the fault")
    await wait_until(lambda: not sim.model.laser_output_on, 2.0, "the laser off")
    with pytest.raises(CommandFailed, match="fault: E-stop pressed"):
        await engineer.call(msg.CalibrationCurrent(current_ma=4000.0))
    sim.command("estop off")
    sim.command("pedal up")
    assert (await engineer.call(msg.CalibrationEnd())) == {"state": "fault"}
    assert sup.fault is not None  # latched until reset with a password
    await controller.reset_fault(ENGINEER, ENGINEER_PASSWORD)
    assert sup.state is SystemState.IDLE
    assert not sim.model.laser_output_on


async def test_only_an_engineer_begins_and_a_closed_connection_ends_the_run(
    controller: Controller, data: DataDir, engineer: ControllerClient
) -> None:
    tech = await authenticated(data.root / "control.sock")
    try:
        with pytest.raises(CommandFailed, match="only an engineer calibrates the laser"):
            await tech.call(msg.CalibrationBegin(password=PASSWORD))
        await engineer.call(msg.CalibrationBegin(password=ENGINEER_PASSWORD))
        with pytest.raises(CommandFailed, match="belongs to eve on another connection"):
            await tech.call(msg.CalibrationCurrent(current_ma=2000.0))
        with pytest.raises(Refused, match="cannot open a session in armed"):
            await controller.open_session(
                subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
            )
    finally:
        await tech.close()
    await engineer.close()
    await wait_until(lambda: controller.supervisor.state is SystemState.IDLE, 5.0, "the run to end")
    assert controller.calibration_run is None


async def test_checks_fail_an_expired_calibration_and_a_session_is_refused(
    controller: Controller, data: DataDir
) -> None:
    with sqlite3.connect(data.db_path) as db:
        old = (utc_now() - timedelta(days=40)).isoformat(sep=" ")
        db.execute("UPDATE calibrations SET calibration_date = ? WHERE device_type = 'laser'", (old,))
    await controller.open_session(
        subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
    )
    checks = {c.name: c for c in await controller.prechecks()}
    assert checks["calibration laser"].ok and "(40 days old)" in checks["calibration laser"].value
    assert checks["calibration photodiode"].ok
    await controller.abort("test", by=USERNAME)

    engine = create_engine(data.db_path)
    try:
        async with session_factory(engine)() as db, db.begin():
            await ConfigRepository(db).set(
                "calibration_validity_days", 30, modified_by=None, config_type="integer"
            )
    finally:
        await engine.dispose()
    with pytest.raises(Refused, match="the laser calibration is 40 days old; valid for 30 days"):
        await controller.open_session(subject_code=SUBJECT, username=USERNAME, protocol_name="short")
    checks = {c.name: c for c in await controller.prechecks()}
    assert not checks["calibration laser"].ok
    assert "valid for 30 days" in checks["calibration laser"].detail
    assert checks["calibration actuator"].ok
