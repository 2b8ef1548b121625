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
