"""The controller on the simulated rig, in-process: sessions, key control, every simulator fault mid-step, and
the operator's client over control.sock.

Each test runs a real Controller (real ptys, real SQLite file, real sockets where they matter) and asserts
what the operator or the records would show: the laser simulator's output, the supervisor's state, the
safety_log rows, the session's status and summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import (
    PASSWORD,
    SUBJECT,
    USERNAME,
    authenticated,
    open_and_treat,
    prepare_data_dir,
    wait_prechecks,
    wait_session_end,
    wait_until,
)

from control import messages as msg
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.supervisor import Refused, SystemState
from storage import DataDir
from tests.support import protocol_json

# 1 step of 4 s at 2 W on a 2.0 mm ring (actuator position 0: no long move before the step).
FAULT_PROTOCOL = protocol_json((4.0, 2.0, 2.0, 2.0, "constant"))
# Two steps: a constant and a ramp, with a 200 um move between them.
SHORT_PROTOCOL = protocol_json((1.5, 2.0, 2.0, 2.0, "constant"), (1.0, 2.0, 3.0, 2.2, "linear"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(
        tmp_path / "data", migrated_template, {"fault-test": FAULT_PROTOCOL, "short": SHORT_PROTOCOL}
    )


@pytest.fixture
async def controller(data: DataDir) -> AsyncIterator[Controller]:
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.close()


def _db(data: DataDir) -> sqlite3.Connection:
    return sqlite3.connect(data.db_path)


def _status(data: DataDir, session_id: int) -> str:
    with _db(data) as db:
        return str(
            db.execute("SELECT status FROM sessions WHERE session_id = ?", (session_id,)).fetchone()[0]
        )


def _safety_rows(data: DataDir, session_id: int) -> list[tuple[str, str, str]]:
    with _db(data) as db:
        return db.execute(
            "SELECT event_type, severity, system_state FROM safety_log WHERE session_id = ? ORDER BY log_id",
            (session_id,),
        ).fetchall()


async def test_a_whole_session_is_recorded(controller: Controller, data: DataDir) -> None:
    sim = controller.sim_rig
    assert sim is not None
    opened = await controller.open_session(
        subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
    )
    session_id = opened.session_id
    assert opened.expected_energy_j == pytest.approx(2.0 * 1.5 + 2.5 * 1.0)
    assert controller.supervisor.state is SystemState.READY
    checks = await wait_prechecks(controller)
    names = {c.name for c in checks}
    assert {
        "device laser",
        "device tec",
        "device actuator",
        "device safety",
        "estop",
        "watchdog",
        "smoothing",
        "tec",
        "photodiode",
        "devices",
        "storage",
        "database",
        "disk space",
        "backup",
    } <= names
    assert {"calibration laser", "calibration photodiode", "calibration actuator"} <= names

    with pytest.raises(Refused, match=r"[Ww]rong"):
        await controller.arm("not the password")
    assert controller.supervisor.state is SystemState.READY
    await controller.arm(PASSWORD)
    assert controller.supervisor.state is SystemState.ARMED
    assert not sim.model.laser_output_on
    sim.command("pedal down")
    await wait_session_end(controller, 20.0)
    assert not sim.model.laser_output_on
    assert controller.supervisor.state is SystemState.IDLE

    with _db(data) as db:
        row = db.execute(
            "SELECT status, total_laser_on_time_seconds, avg_power_watts, max_power_watts, "
            "total_energy_joules, telemetry_path, telemetry_line_count, telemetry_sha256, "
            "protocol_data_snapshot FROM sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        events = [
            r[0]
            for r in db.execute(
                "SELECT event_type FROM treatment_events WHERE session_id = ? "
                "ORDER BY time_offset_ms, event_id",
                (session_id,),
            )
        ]
        last_power = db.execute(
            "SELECT laser_power_commanded_watts FROM treatment_events WHERE session_id = ? "
            "AND event_type = 'power_change' ORDER BY event_id DESC LIMIT 1",
            (session_id,),
        ).fetchone()[0]
    status, on_time, avg_w, max_w, energy, path, lines, sha, snapshot = row
    assert status == "completed"
    assert on_time == pytest.approx(2.5, abs=0.1)
    assert energy == pytest.approx(5.5, rel=0.05)
    assert 2.0 <= avg_w <= 2.5
    assert max_w == pytest.approx(3.0, abs=0.15)
    assert last_power == 3.0, "the ramp ends exactly on power_end_watts"
    assert json.loads(snapshot) == json.loads(SHORT_PROTOCOL)
    for kind in ("protocol_step_start", "laser_on", "laser_off", "protocol_step_end", "ring_size_change"):
        assert kind in events
    assert events.count("protocol_step_start") == 2
    content = await asyncio.to_thread(Path(path).read_bytes)
    assert hashlib.sha256(content).hexdigest() == sha
    assert len(content.splitlines()) == lines > 100
    rows = _safety_rows(data, session_id)
    assert ("state_change", "info", "treating") in rows
    with _db(data) as db:
        video = db.execute(
            "SELECT recording_type, file_path, frame_count, resolution FROM session_recordings "
            "WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        video_path = db.execute(
            "SELECT video_path FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
    assert video is not None and video[0] == "video" and video[2] > 10 and video[3] == "1280x720"
    assert video_path == video[1]
    assert (await asyncio.to_thread(Path(video_path).stat)).st_size > 0

    summary = await controller.end_session("no redness")
    assert summary.post_treatment_notes == "no redness"
    assert summary.session_id == session_id and summary.status == "completed"
    with pytest.raises(Exception, match="already"):
        await controller.end_session("second notes")


async def test_free_space_below_the_floor_is_a_failing_check_and_refuses_the_next_session(
    controller: Controller, data: DataDir
) -> None:
    opened = await controller.open_session(
        subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
    )
    space = next(c for c in await wait_prechecks(controller) if c.name == "disk space")
    assert space.ok and space.value.endswith("MB free (at least 1024 MB)")
    with _db(data) as db:
        db.execute("UPDATE system_config SET config_value = '9999999' WHERE config_key = 'min_free_disk_mb'")
    space = next(c for c in await controller.prechecks() if c.name == "disk space")
    assert not space.ok
    assert "a session needs at least 9999999 MB (setting min_free_disk_mb): free some space" in (space.detail)
    with pytest.raises(Refused, match="disk space"):
        await controller.arm(PASSWORD)
    assert controller.supervisor.state is SystemState.READY
    await controller.abort("no space")
    with pytest.raises(Refused, match=r"only \d+ MB free in the data directory"):
        await controller.open_session(subject_code=SUBJECT, username=USERNAME, protocol_name="short")
    with _db(data) as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    assert opened.session_id == 1


async def test_safety_limits_saved_meanwhile_hold_from_the_next_session_never_during_one(
    controller: Controller, data: DataDir
) -> None:
    def configure(key: str, value: str) -> None:
        with _db(data) as db:
            db.execute("UPDATE system_config SET config_value = ? WHERE config_key = ?", (value, key))

    assert controller.supervisor.limits.photodiode_fault_percent == 30.0
    opened = await controller.open_session(
        subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
    )
    configure("photodiode_fault_threshold_percent", "25.0")
    configure("max_laser_power_watts", "1.5")
    await wait_prechecks(controller)
    # The open session keeps the limits it opened with.
    assert controller.supervisor.limits.photodiode_fault_percent == 30.0
    assert controller.supervisor.limits.max_power_w == 10.0
    await controller.abort("limits changed")
    # The next session takes them: the short protocol's 2 W steps are above the new 1.5 W ceiling.
    with pytest.raises(Refused, match=r"exceeds the system limit max_laser_power_watts \(1\.5 W\)"):
        await controller.open_session(subject_code=SUBJECT, username=USERNAME, protocol_name="short")
    assert controller.supervisor.limits.photodiode_fault_percent == 25.0
    assert controller.supervisor.limits.max_power_w == 1.5
    # A stored value the settings model refuses opens no session and says which key.
    configure("max_laser_power_watts", "-1")
    with pytest.raises(
        Refused, match="no session with an unusable configuration: config max_laser_power_watts"
    ):
        await controller.open_session(subject_code=SUBJECT, username=USERNAME, protocol_name="short")
    assert controller.supervisor.limits.max_power_w == 1.5
    with _db(data) as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    assert opened.session_id == 1


async def test_pedal_release_is_not_a_fault_and_stops_the_step_clock(controller: Controller) -> None:
    sim = controller.sim_rig
    assert sim is not None
    await open_and_treat(controller, "fault-test")
    sup = controller.supervisor
    await wait_until(lambda: sup.treating_seconds() >= 0.3, 5.0, "0.3 s of emission")
    sim.command("pedal up")
    assert not sim.model.laser_output_on, "output off before the command returns"
    await wait_until(lambda: sup.state is SystemState.ARMED, 1.0, "ARMED")
    clock = sup.treating_seconds()
    # 0.3 s of the board's samples after the release, each of which would have moved a running step clock.
    released_at = sup.readings.board_at
    assert released_at is not None
    await wait_until(
        lambda: (sup.readings.board_at or 0.0) >= released_at + 0.3, 5.0, "0.3 s of board samples"
    )
    assert sup.treating_seconds() == clock
    assert sup.fault is None
    sim.command("pedal down")
    await wait_until(lambda: sup.state is SystemState.TREATING, 1.0, "TREATING again")
    await wait_until(lambda: sim.model.laser_output_on, 1.0, "output on again")


# (simulator command, safety_log event type, severity) for each fault of the simulator command language.
FAULTS = [
    ("estop on", "e_stop_pressed", "emergency"),
    ("smoothing fail", "smoothing_device_fault", "critical"),
    ("photodiode gain 0.5", "photodiode_fault", "critical"),
    ("photodiode offset 1.0", "photodiode_fault", "critical"),
    ("laser dropout on", "photodiode_fault", "critical"),
    ("tec drift 3", "interlock_failure", "critical"),
    ("actuator fault thermal", "interlock_failure", "critical"),
    ("unplug laser", "interlock_failure", "critical"),
    ("unplug tec", "interlock_failure", "critical"),
    ("unplug actuator", "interlock_failure", "critical"),
    ("unplug safety", "interlock_failure", "critical"),
    ("stall laser on", "interlock_failure", "critical"),
    ("stall tec on", "interlock_failure", "critical"),
    ("stall actuator on", "interlock_failure", "critical"),
    ("stall safety on", "interlock_failure", "critical"),
]


@pytest.mark.parametrize(("command", "event_type", "severity"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_each_fault_mid_step_switches_the_laser_off_and_latches(
    controller: Controller, data: DataDir, command: str, event_type: str, severity: str
) -> None:
    sim = controller.sim_rig
    assert sim is not None
    session_id = await open_and_treat(controller, "fault-test")
    sup = controller.supervisor
    await wait_until(lambda: sup.treating_seconds() >= 0.2, 5.0, "0.2 s of emission")
    sim.command(command)
    await wait_until(lambda: sup.state is SystemState.FAULT, 3.0, f"FAULT after {command!r}")
    await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")
    assert sup.fault is not None and sup.fault.event_type == event_type
    await wait_until(
        lambda: (event_type, severity, "fault") in _safety_rows(data, session_id),
        3.0,
        f"a {event_type} safety_log row",
    )
    await wait_until(lambda: _status(data, session_id) == "paused", 2.0, "session status paused")
    await controller.recorder.flush()
    with _db(data) as db:
        triggers = db.execute(
            "SELECT count(*) FROM treatment_events WHERE session_id = ? AND event_type = 'safety_trigger'",
            (session_id,),
        ).fetchone()[0]
    assert triggers == 1
    # The fault latches: the pedal does nothing, and arming is refused until a reset.
    # With the safety board unplugged or stalled the edges cannot reach the supervisor at all.
    board_linked = command not in ("unplug safety", "stall safety on")
    sim.command("pedal up")
    if board_linked:
        await wait_until(lambda: sup.readings.pedal is False, 2.0, "the pedal released")
    sim.command("pedal down")
    if board_linked:
        await wait_until(lambda: sup.readings.pedal is True, 2.0, "the pedal pressed")
    assert sup.state is SystemState.FAULT and not sim.model.laser_output_on
    with pytest.raises(Refused):
        await controller.arm(PASSWORD)
    await controller.abort(f"fault: {command}")
    with _db(data) as db:
        status, reason = db.execute(
            "SELECT status, abort_reason FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
    assert (status, reason) == ("aborted", f"fault: {command}")
    assert sup.state is SystemState.FAULT, "aborting the session does not clear the fault"


async def test_reset_needs_the_cause_gone_and_a_password(controller: Controller, data: DataDir) -> None:
    sim = controller.sim_rig
    assert sim is not None
    await open_and_treat(controller, "fault-test")
    sim.command("estop on")
    sup = controller.supervisor
    await wait_until(lambda: sup.state is SystemState.FAULT, 2.0, "FAULT")
    with pytest.raises(Refused, match="E-stop"):
        await controller.reset_fault(USERNAME, PASSWORD)
    sim.command("estop off")
    sim.command("pedal up")
    with pytest.raises(Refused):
        await controller.reset_fault(USERNAME, "wrong password")
    await wait_until(lambda: sup.readings.estop is False, 1.0, "E-stop released")
    await controller.reset_fault(USERNAME, PASSWORD)
    assert sup.state is SystemState.READY
    assert not sim.model.laser_output_on
    await sup.drain_log()

    def reset_row() -> tuple[str, int | None] | None:
        with _db(data) as db:
            found: tuple[str, int | None] | None = db.execute(
                "SELECT description, tech_id FROM safety_log WHERE event_type = 'fault_reset'"
            ).fetchone()
        return found

    # The safety log's writer hands the row to the recorder, which writes it to the database in its turn.
    await wait_until(lambda: reset_row() is not None, 5.0, "the fault_reset row in the database")
    row = reset_row()
    assert row is not None and "tech1" in row[0] and row[1] is not None
    # Emission needs key control again.
    sim.command("pedal down")
    await wait_until(lambda: sup.readings.pedal is True, 2.0, "the pedal pressed")
    assert sup.state is SystemState.READY and not sim.model.laser_output_on


@pytest.mark.parametrize("command", ["garbage tec 40", "camera freeze on"])
async def test_warnings_that_do_not_gate_emission_are_logged(
    controller: Controller, data: DataDir, command: str
) -> None:
    sim = controller.sim_rig
    assert sim is not None
    session_id = await open_and_treat(controller, "fault-test")
    sim.command(command)
    expected = "serial_line_error" if command.startswith("garbage") else "camera_fault"

    def logged() -> bool:
        return any(r[0] == expected for r in _safety_rows(data, session_id))

    await wait_until(logged, 5.0, f"a {expected} row")
    rows = [r for r in _safety_rows(data, session_id) if r[0] == expected]
    assert rows[0][1] == "warning"


async def test_power_override_needs_a_reason_and_stays_within_limits(controller: Controller) -> None:
    await open_and_treat(controller, "fault-test")
    session = controller.session
    assert session is not None
    with pytest.raises(Refused, match="reason"):
        session.engine.override_power(2.5, " ", actor=USERNAME, step=1)
    with pytest.raises(Refused, match="exceeds"):
        session.engine.override_power(11.0, "too much", actor=USERNAME, step=1)
    details = session.engine.override_power(2.5, "subject tolerance", actor=USERNAME, step=1)
    assert details["old_value"] == 2.0 and details["new_value"] == 2.5
    await wait_until(lambda: controller.supervisor.commanded_w == 2.5, 1.0, "override applied")


async def test_storage_failure_stops_emission(controller: Controller) -> None:
    sim = controller.sim_rig
    assert sim is not None
    await open_and_treat(controller, "fault-test")
    controller._on_storage_health(False, "disk full (test)")
    assert not sim.model.laser_output_on or controller.supervisor.state is SystemState.FAULT
    await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")
    assert controller.supervisor.state is SystemState.FAULT
    assert "storage" in (controller.supervisor.fault.what if controller.supervisor.fault else "")


async def test_operator_client_over_control_socket(controller: Controller, data: DataDir) -> None:
    sim = controller.sim_rig
    assert sim is not None
    client = await authenticated(data.root / "control.sock")
    try:
        opened = await client.call(
            msg.OpenSession(
                subject_code=SUBJECT, username=USERNAME, protocol_name="fault-test", create_subject=True
            )
        )
        assert opened["session_id"] >= 1
        await wait_prechecks(controller)
        with pytest.raises(CommandFailed):
            await client.call(msg.Arm(password="wrong password"))
        await client.call(msg.Arm(password=PASSWORD))
        await client.call(msg.Sim(command="pedal down"))
        snapshot = await client.wait_snapshot(lambda s: s.emitting, 3.0)
        assert snapshot.state == "treating"
        assert snapshot.session is not None and snapshot.session.step is not None
        assert {i.name for i in snapshot.interlocks} >= {"footpedal", "estop", "tec", "photodiode"}
    finally:
        await client.close()
    # The operator's console went away during emission: emission stops and the session pauses.
    await wait_until(lambda: controller.supervisor.state is SystemState.PAUSED, 2.0, "PAUSED")
    # "Output off" was written before the transition; the simulator reads it from its pty on this loop.
    await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")


async def test_observe_socket_has_no_arm_command(controller: Controller, data: DataDir) -> None:
    observer = await ControllerClient.connect(data.root / "observe.sock")
    try:
        status = await observer.call(msg.Status())
        assert status["state"] == "idle"
        reply = await observer.request(msg.Arm(password=PASSWORD))
        assert not reply.ok and "arm" in (reply.error or "")
    finally:
        await observer.close()
    assert (data.root / "control.sock").stat().st_mode & 0o777 == 0o600
