"""What a remote console gets from the controller over observe.sock: the device diagnostics (identity from
the simulated rig, counters, readings, the loop's figures, the reaction time of a fault), and its login,
logout and screen lock written to the audit trail with where it came from. Nothing there arms."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, USERNAME, open_and_treat, prepare_data_dir

from control import messages as msg
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.supervisor import SystemState
from storage import DataDir
from tests.support import protocol_json, wait_until

LONG_PROTOCOL = protocol_json((30.0, 2.0, 2.0, 2.0, "constant"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(tmp_path / "data", migrated_template, {"long": LONG_PROTOCOL})


@pytest.fixture
async def controller(data: DataDir) -> AsyncIterator[Controller]:
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.close()


@pytest.fixture
async def observer(controller: Controller, data: DataDir) -> AsyncIterator[ControllerClient]:
    client = await ControllerClient.connect(data.root / "observe.sock")
    try:
        yield client
    finally:
        await client.close()


async def _devices(client: ControllerClient) -> msg.DevicesReply:
    return msg.DevicesReply.model_validate(await client.call(msg.Devices()))


def _audit_rows(data: DataDir, action: str) -> list[tuple[str | None, str, str | None, dict[str, object]]]:
    with sqlite3.connect(data.db_path) as db:
        rows = db.execute(
            "SELECT username, outcome, terminal, details FROM audit_log WHERE action = ? ORDER BY audit_id",
            (action,),
        ).fetchall()
    return [
        (user, outcome, terminal, json.loads(details or "{}")) for user, outcome, terminal, details in rows
    ]


async def test_devices_names_each_device_of_the_simulated_rig_with_live_counters(
    observer: ControllerClient, data: DataDir
) -> None:
    latest: list[msg.DevicesReply] = [await _devices(observer)]

    async def ask() -> None:
        latest[0] = await _devices(observer)

    def laser_reading(name: str) -> str:
        laser = {d.name: d for d in latest[0].devices}["laser"]
        return {reading.name: reading.value for reading in laser.readings}[name]

    await wait_until(lambda: laser_reading("output") != "unknown", 3.0, "the first laser poll", poll=ask)
    first = latest[0]
    assert first.sim is True and first.state is SystemState.IDLE
    by_name = {device.name: device for device in first.devices}
    assert set(by_name) == {"laser", "tec", "actuator", "safety", "camera"}
    laser, tec, safety = by_name["laser"], by_name["tec"], by_name["safety"]
    assert (laser.model, laser.serial, laser.state) == ("Arroyo 6310", "SIM-6310-0001", "open")
    assert (tec.model, tec.serial) == ("Arroyo 5305", "SIM-5305-0001")
    assert laser.firmware is not None and "build" in laser.firmware
    assert safety.firmware is not None and safety.firmware.startswith("protocol 3.")
    readings = {reading.name: reading.value for reading in laser.readings}
    assert readings["output"] == "off"
    assert {r.name for r in tec.readings} >= {"temperature", "setpoint"}
    assert laser.replies is not None and laser.replies > 0

    # The counters are live: the monitors keep polling, and the last reply is recent.
    def counted_more() -> bool:
        replies = {d.name: d.replies for d in latest[0].devices}["laser"]
        return replies is not None and replies > (laser.replies or 0)

    await wait_until(counted_more, 3.0, "more laser replies", poll=ask)
    later = {d.name: d for d in latest[0].devices}
    assert later["laser"].last_reply_age_s is not None and later["laser"].last_reply_age_s < 1.0
    # The kiosk's console asks the same on control.sock, without anybody authenticated (it only reads).
    async with await ControllerClient.connect(data.root / "control.sock") as operator:
        on_control = await _devices(operator)
    assert {d.name: d.serial for d in on_control.devices}["laser"] == "SIM-6310-0001"
    await wait_until(lambda: latest[0].loop.samples > 0, 3.0, "the first loop lag sample", poll=ask)
    loop = latest[0].loop
    assert loop.samples > 0 and loop.lag_p50_ms is not None and loop.lag_p99_ms is not None
    assert 0 <= loop.lag_p50_ms <= loop.lag_p99_ms <= (loop.lag_max_ms or 0) + 1e-9


async def test_a_fault_is_listed_with_its_reaction_time(
    controller: Controller, observer: ControllerClient
) -> None:
    assert (await _devices(observer)).faults == []
    await open_and_treat(controller, "long")
    assert controller.sim_rig is not None
    controller.sim_rig.command("estop on")
    await wait_until(lambda: controller.supervisor.state is SystemState.FAULT, 3.0, "FAULT")
    reply = await _devices(observer)
    assert reply.state is SystemState.FAULT
    assert len(reply.faults) == 1
    fault = reply.faults[0]
    assert "E-stop" in fault.what or "estop" in fault.what.lower()
    # The E-stop's push event latched the fault in its own callback: its reaction is well under a poll period.
    assert fault.reaction_ms is not None and fault.reaction_ms < 30.0
    await controller.abort("test over")


async def test_a_remote_login_is_checked_and_audited_with_its_origin(
    observer: ControllerClient, data: DataDir
) -> None:
    refused = msg.RemoteLoginReply.model_validate(
        await observer.call(msg.RemoteLogin(username=USERNAME, password="not it", ssh_client="192.0.2.7"))
    )
    assert refused.outcome == "wrong_credentials" and refused.username is None
    # Nobody signed in on this connection: no screen-lock row can be written for anyone.
    with pytest.raises(CommandFailed, match="nobody is signed in"):
        await observer.call(msg.RemoteScreenLock(idle_minutes=5))
    ok = msg.RemoteLoginReply.model_validate(
        await observer.call(msg.RemoteLogin(username=USERNAME, password=PASSWORD, ssh_client="192.0.2.7"))
    )
    assert (ok.outcome, ok.username) == ("ok", USERNAME)
    await observer.call(msg.RemoteScreenLock(idle_minutes=5))
    await observer.call(msg.RemoteLogout(reason="user"))
    logins = _audit_rows(data, "login")
    me = pwd.getpwuid(os.getuid()).pw_name
    remote = [row for row in logins if row[3].get("console") == "remote"]
    assert [(user, outcome, terminal) for user, outcome, terminal, _ in remote] == [
        (USERNAME, "failure", "ssh:192.0.2.7"),
        (USERNAME, "success", "ssh:192.0.2.7"),
    ]
    for _, _, _, details in remote:
        assert details["ssh_client"] == "192.0.2.7"
        assert details["unix_user"] == me and details["peer_pid"] == os.getpid()
        assert details["via"] == "observe.sock"
    logout = _audit_rows(data, "logout")
    assert [(u, t) for u, _, t, _ in logout] == [(USERNAME, "ssh:192.0.2.7")]
    assert len(_audit_rows(data, "screen_lock")) == 1


async def test_nothing_on_observe_arms_even_after_a_remote_login(
    controller: Controller, observer: ControllerClient
) -> None:
    await observer.call(msg.RemoteLogin(username=USERNAME, password=PASSWORD))
    for command in (msg.Arm(password=PASSWORD), msg.Prechecks(), msg.Stop(), msg.Authenticate(token="x")):
        reply = await observer.request(command)
        assert not reply.ok and "unknown command type" in (reply.error or "")
    assert controller.supervisor.state is SystemState.IDLE


async def test_remote_backups_and_exports_are_made_for_a_signed_in_engineer_or_admin_with_the_origin(
    controller: Controller, observer: ControllerClient, data: DataDir
) -> None:
    import io
    import stat
    import tarfile

    from storage.export_fetch import stream_export

    # Nobody signed in on the connection: refused, nothing written.
    with pytest.raises(CommandFailed, match="nobody is signed in"):
        await observer.call(msg.RemoteBackup())
    # A technician may not make backups or exports at the kiosk either: refused, and the refusal audited.
    await observer.call(msg.RemoteLogin(username=USERNAME, password=PASSWORD, ssh_client="192.0.2.7"))
    with pytest.raises(CommandFailed, match="tech1 is technician: only an engineer or an admin"):
        await observer.call(msg.RemoteBackup())
    with pytest.raises(CommandFailed, match="only an engineer or an admin writes research exports"):
        await observer.call(msg.RemoteExport(session_id=1))
    with pytest.raises(CommandFailed, match="only an admin exports the audit trail"):
        await observer.call(msg.RemoteAuditExport())
    assert [(u, o) for u, o, _, _ in _audit_rows(data, "audit_export")] == [(USERNAME, "failure")]
    assert [(u, o) for u, o, _, _ in _audit_rows(data, "research_export")] == [(USERNAME, "failure")]
    assert not data.backups.exists() or not list(data.backups.glob("tosca_*.db"))
    me = pwd.getpwuid(os.getuid()).pw_name
    [refused] = _audit_rows(data, "db_backup")
    assert refused[:3] == (USERNAME, "failure", "ssh:192.0.2.7")
    assert refused[3]["unix_user"] == me and "technician" in str(refused[3]["reason"])
    # The admin on the same connection, while a treatment runs: a backup only reads, so it is made.
    await observer.call(
        msg.RemoteLogin(username="admin1", password="admin password 1", ssh_client="192.0.2.7")
    )
    session_id = await open_and_treat(controller, "long")
    made = msg.RemoteBackupMade.model_validate(await observer.call(msg.RemoteBackup()))
    assert controller.supervisor.state is SystemState.TREATING
    assert made.verified and (data.backups / made.name).stat().st_size == made.size_bytes > 0
    verdict = msg.RemoteBackupVerified.model_validate(
        await observer.call(msg.RemoteVerifyBackup(name=made.name))
    )
    assert verdict.ok and verdict.name == made.name
    # The open session is not exported (as at the kiosk); once ended, it is.
    with pytest.raises(CommandFailed, match=f"session {session_id} is still open"):
        await observer.call(msg.RemoteExport(session_id=session_id))
    await controller.abort("test over")
    written = msg.RemoteExportWritten.model_validate(
        await observer.call(msg.RemoteExport(session_id=session_id, folder="for_eng", formats=["json"]))
    )
    assert written.folder == "for_eng" and written.sessions == [session_id] and not written.identified
    folder = data.root / "exports" / "for_eng"
    assert "summary.json" in written.files and "manifest.json" in written.files
    # Readable by the records database's group, by nobody else.
    group = data.db_path.stat().st_gid
    for path in [folder.parent, folder, *folder.rglob("*")]:
        info = path.stat()
        assert info.st_gid == group, path
        assert stat.S_IMODE(info.st_mode) == (0o750 if path.is_dir() else 0o640), path
    # The audit rows name the admin, the terminal and where the request came from.
    for action in ("db_backup", "db_backup_verify", "research_export"):
        user, outcome, terminal, details = _audit_rows(data, action)[-1]
        assert (user, outcome, terminal) == ("admin1", "success", "ssh:192.0.2.7"), action
        assert details["ssh_client"] == "192.0.2.7" and details["unix_user"] == me, action
        assert details["peer_pid"] == os.getpid() and details["console"] == "remote", action
    assert _audit_rows(data, "research_export")[-1][3]["identified"] is False
    # An identified export (demographics, names, notes) is audited as such, as at the kiosk.
    identified = msg.RemoteExportWritten.model_validate(
        await observer.call(msg.RemoteExport(session_id=session_id, identified=True, formats=["json"]))
    )
    assert identified.identified and identified.folder.startswith(f"session_{session_id}_")
    row = _audit_rows(data, "research_export")[-1]
    assert row[:3] == ("admin1", "success", "ssh:192.0.2.7")
    assert row[3]["identified"] is True and row[3]["folder"] == identified.path
    # What `ssh -T ... fetch-export for_eng` streams: the same folder as a tar.
    stream = io.BytesIO()
    assert stream_export(data, "for_eng", stream) == len(written.files)
    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        names = {member.name for member in tar.getmembers() if member.isfile()}
        manifest = json.loads(tar.extractfile("for_eng/manifest.json").read())  # type: ignore[union-attr]
    assert names == {f"for_eng/{name}" for name in written.files}
    assert manifest["sessions"] == [session_id]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "a session id or a time range"),
        ({"session_id": 3, "since": "2026-12-01T00:00:00"}, "a session id or a time range"),
        ({"since": "2026-12-01T00:00:00"}, "both since and until"),
        ({"since": "2026-12-07T00:00:00", "until": "2026-12-01T00:00:00"}, "before its end"),
        ({"session_id": 3, "folder": "../x"}, "folder"),
        ({"session_id": 3, "folder": "a..b"}, "folder"),
        ({"session_id": 3, "folder": "-rf"}, "folder"),
        ({"session_id": 3, "folder": ".hidden"}, "folder"),
        ({"session_id": 0}, "session_id"),
    ],
)
def test_a_remote_export_asks_for_one_session_or_a_range_into_a_plain_folder(
    fields: dict[str, object], error: str
) -> None:
    line = json.dumps({"type": "remote_export", "id": 1, **fields})
    with pytest.raises(msg.MessageError, match=error):
        msg.decode_observe(line)
    fine = msg.decode_observe(json.dumps({"type": "remote_export", "id": 2, "session_id": 3}))
    assert isinstance(fine, msg.RemoteExport) and fine.session_id == 3
    with pytest.raises(msg.MessageError, match="unknown command type 'remote_export'"):
        msg.decode_control(json.dumps({"type": "remote_export", "id": 2, "session_id": 3}))
