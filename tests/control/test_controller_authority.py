"""Who may command the controller over control.sock, and who owns emission: the real controller on the
simulated rig, real sockets, the real records database.

Each test reproduces a way a connection acted for a person it never proved to be, or emitted for a session it
did not hold, and asserts what the laser simulator, the supervisor and the audit trail show instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from account_fixtures import CHEAP
from controller_fixtures import (
    PASSWORD,
    SUBJECT,
    USERNAME,
    authenticated,
    prepare_data_dir,
    wait_prechecks,
    wait_until,
)

from control import messages as msg
from control.authority import MAX_KEY_FAILURES
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.supervisor import SystemState
from storage import DataDir
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST

# One long step (the tests end the session themselves) on a 2.0 mm ring.
LONG_PROTOCOL = protocol_json((120.0, 2.0, 2.0, 2.0, "constant"))
ADMIN = "admin1"
ADMIN_PASSWORD = "admin password 1"


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


def _sock(data: DataDir) -> Path:
    return data.root / "control.sock"


def _audit(data: DataDir, action: str) -> list[tuple[str | None, str, dict[str, Any]]]:
    with sqlite3.connect(data.db_path) as db:
        rows = db.execute(
            "SELECT username, outcome, details FROM audit_log WHERE action = ? ORDER BY rowid", (action,)
        ).fetchall()
    return [(name, outcome, json.loads(details) if details else {}) for name, outcome, details in rows]


def _subjects(data: DataDir) -> int:
    with sqlite3.connect(data.db_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM subjects").fetchone()[0])


async def _open(client: ControllerClient, controller: Controller) -> int:
    opened = await client.call(
        msg.OpenSession(subject_code=SUBJECT, protocol_name="long", create_subject=True)
    )
    await wait_prechecks(controller)
    return int(opened["session_id"])


async def _treat(client: ControllerClient, controller: Controller) -> None:
    """Arm on ``client``, press the pedal, and wait until the laser simulator emits."""
    sim = controller.sim_rig
    assert sim is not None
    await client.call(msg.Arm(password=PASSWORD), timeout_s=10.0)
    await client.call(msg.Sim(command="pedal down"))
    await wait_until(lambda: controller.supervisor.state is SystemState.TREATING, 15.0, "TREATING")
    await wait_until(lambda: sim.model.laser_output_on, 2.0, "laser output on")


async def _wait_audits(
    data: DataDir, action: str, count: int
) -> list[tuple[str | None, str, dict[str, Any]]]:
    for _ in range(200):
        rows = _audit(data, action)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} {action} audit rows: {_audit(data, action)}")


async def test_commands_without_a_person_are_refused_and_a_locked_account_cannot_open(
    controller: Controller, data: DataDir
) -> None:
    # Observed: open_session needed no credentials; a locked-out user's name opened a session and created
    # a subject, recorded as that user's success.
    for _ in range(5):
        result = await controller.accounts.login(USERNAME, "not the password", context="login")
    assert not result.ok and "locked" in result.message
    stranger = await ControllerClient.connect(_sock(data))
    try:
        with pytest.raises(CommandFailed, match="authenticate this connection first"):
            await stranger.call(
                msg.OpenSession(
                    subject_code=SUBJECT, username=USERNAME, protocol_name="long", create_subject=True
                )
            )
        with pytest.raises(CommandFailed, match="locked"):
            await stranger.call(msg.Authenticate(username=USERNAME, password=PASSWORD))
        with pytest.raises(CommandFailed, match="authenticate"):
            await stranger.call(msg.Sim(command="pedal down"))
        # Reading and stopping need nobody.
        assert (await stranger.call(msg.Ping()))["pong"] is True
        assert (await stranger.call(msg.Stop()))["state"] == "idle"
    finally:
        await stranger.close()
    assert controller.session is None
    assert _subjects(data) == 0
    refused = await _wait_audits(data, "control_command", 2)
    claimed, outcome, details = refused[0]
    assert (claimed, outcome, details["command"]) == (USERNAME, "failure", "open_session")
    assert details["reason"] == "not authenticated"
    assert details["peer_pid"] == os.getpid() and details["peer_uid"] == os.getuid()
    logins = [row for row in _audit(data, "login") if row[2].get("context") == "control_connection"]
    assert logins and logins[-1][1] == "failure" and logins[-1][2]["peer_pid"] == os.getpid()


async def test_an_account_locked_or_deactivated_after_authenticating_opens_nothing(
    controller: Controller, data: DataDir
) -> None:
    client = await authenticated(_sock(data))
    try:
        for _ in range(5):
            await controller.accounts.login(USERNAME, "not the password", context="login")
        with pytest.raises(CommandFailed, match="locked until"):
            await _open(client, controller)
        from control.accounts import Actor

        await controller.accounts.unlock(USERNAME, Actor.command_line("root", "test"))
        await controller.accounts.deactivate(USERNAME, Actor.command_line("root", "test"))
        with pytest.raises(CommandFailed, match="deactivated"):
            await _open(client, controller)
        # The connection no longer acts for that person at all.
        with pytest.raises(CommandFailed, match="authenticate this connection first"):
            await client.call(msg.Sim(command="pedal up"))
    finally:
        await client.close()
    assert controller.session is None and _subjects(data) == 0


async def test_a_role_changed_after_authenticating_acts_no_more_under_the_old_one(
    controller: Controller, data: DataDir
) -> None:
    from control.accounts import Actor

    client = await authenticated(_sock(data))
    try:
        await controller.accounts.change_role(USERNAME, "engineer", Actor.command_line("root", "test"))
        with pytest.raises(CommandFailed, match="is engineer now, not technician: sign in again"):
            await _open(client, controller)
        # The connection no longer acts for that person at all.
        with pytest.raises(CommandFailed, match="authenticate this connection first"):
            await client.call(msg.Sim(command="pedal up"))
    finally:
        await client.close()
    assert controller.session is None and _subjects(data) == 0


async def test_the_audit_row_of_a_command_names_the_person_and_the_peer(
    controller: Controller, data: DataDir
) -> None:
    client = await authenticated(_sock(data))
    try:
        session_id = await _open(client, controller)
    finally:
        await client.close()
    rows = await _wait_audits(data, "control_command", 1)
    opened = [r for r in rows if r[2]["command"] == "open_session" and r[1] == "success"]
    assert opened, rows
    username, _outcome, details = opened[0]
    assert username == USERNAME
    assert details["peer_pid"] == os.getpid() and details["peer_uid"] == os.getuid()
    assert details["session_id"] == session_id


async def test_a_second_connection_cannot_resume_arm_or_pause_the_session(
    controller: Controller, data: DataDir
) -> None:
    # Observed: a second connection sent resume and held the pedal into TREATING.
    sim = controller.sim_rig
    assert sim is not None
    owner = await authenticated(_sock(data))
    other = await authenticated(_sock(data))
    try:
        await _open(owner, controller)
        await owner.call(msg.Arm(password=PASSWORD), timeout_s=10.0)
        await owner.call(msg.Pause())
        assert controller.supervisor.state is SystemState.PAUSED
        for command in (msg.Resume(), msg.Arm(password=PASSWORD), msg.Pause(), msg.Abort(reason="not mine")):
            with pytest.raises(CommandFailed, match="does not hold the open session"):
                await other.call(command, timeout_s=10.0)
        await other.call(msg.Sim(command="pedal down"))
        await wait_until(lambda: controller.supervisor.readings.pedal is True, 2.0, "the pedal pressed")
        assert controller.supervisor.state is SystemState.PAUSED
        assert not sim.model.laser_output_on
        # The owner's own pause resumes without the password.
        await other.call(msg.Sim(command="pedal up"))
        await wait_until(lambda: controller.supervisor.readings.pedal is False, 2.0, "pedal released")
        await owner.call(msg.Resume())
        assert controller.supervisor.state is SystemState.ARMED
    finally:
        await other.close()
        await owner.close()


async def test_closing_the_arming_connection_stops_emission_and_pauses(
    controller: Controller, data: DataDir
) -> None:
    # Observed: the connection holding the pedal closed and the laser stayed on (3 W, 3 s later).
    sim = controller.sim_rig
    assert sim is not None
    bystander = await authenticated(_sock(data))
    owner = await authenticated(_sock(data))
    try:
        await _open(owner, controller)
        await _treat(owner, controller)
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        await owner.close()
        await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")
        off_after = loop.time() - closed_at
        await wait_until(lambda: controller.supervisor.state is SystemState.PAUSED, 1.0, "PAUSED")
        assert off_after < 0.5
        assert controller.authority.holder is None
        # The pedal is still down; nobody can resume: the bystander does not hold the session.
        with pytest.raises(CommandFailed, match="does not hold"):
            await bystander.call(msg.Resume())
        assert not sim.model.laser_output_on
    finally:
        await bystander.close()
        await owner.close()


async def test_resume_after_a_disconnect_pause_needs_the_password(
    controller: Controller, data: DataDir
) -> None:
    # Observed: resume re-armed without the password after any pause.
    sim = controller.sim_rig
    assert sim is not None
    first = await authenticated(_sock(data))
    await _open(first, controller)
    await _treat(first, controller)
    await first.close()
    await wait_until(lambda: controller.supervisor.state is SystemState.PAUSED, 2.0, "PAUSED")
    console = await authenticated(_sock(data))
    try:
        with pytest.raises(CommandFailed, match="wrong password"):
            await console.call(msg.Takeover(password="not the password"))
        await console.call(msg.Takeover(password=PASSWORD))
        snapshot = await console.wait_snapshot(
            lambda s: s.session is not None and s.session.held_by_connection is not None, 2.0
        )
        assert snapshot.session is not None and snapshot.session.resume_needs_key
        await console.call(msg.Sim(command="pedal up"))
        await wait_until(lambda: controller.supervisor.readings.pedal is False, 2.0, "pedal released")
        with pytest.raises(CommandFailed, match="needs key control"):
            await console.call(msg.Resume())
        assert controller.supervisor.state is SystemState.PAUSED
        await console.call(msg.Arm(password=PASSWORD), timeout_s=10.0)
        assert controller.supervisor.state is SystemState.ARMED
        # A pause this connection made itself resumes without the password.
        await console.call(msg.Pause())
        await console.call(msg.Resume())
        assert controller.supervisor.state is SystemState.ARMED
        # A stop from another connection (the stop key's own) is not the operator's pause.
        stop_key = await ControllerClient.connect(_sock(data))
        try:
            assert (await stop_key.call(msg.Stop()))["state"] == "paused"
        finally:
            await stop_key.close()
        with pytest.raises(CommandFailed, match="needs key control"):
            await console.call(msg.Resume())
    finally:
        await console.close()


async def test_a_takeover_stops_emission_before_the_new_holder_has_it(
    controller: Controller, data: DataDir
) -> None:
    sim = controller.sim_rig
    assert sim is not None
    owner = await authenticated(_sock(data))
    admin = await authenticated(_sock(data), ADMIN, ADMIN_PASSWORD)
    try:
        await _open(owner, controller)
        await _treat(owner, controller)
        await admin.call(msg.Takeover(password=ADMIN_PASSWORD))
        await wait_until(lambda: not sim.model.laser_output_on, 0.5, "laser output off")
        assert controller.supervisor.state is SystemState.PAUSED
        with pytest.raises(CommandFailed, match="does not hold"):
            await owner.call(msg.Arm(password=PASSWORD), timeout_s=10.0)
    finally:
        await admin.close()
        await owner.close()


async def test_wrong_arm_passwords_never_lock_the_account_and_are_limited_per_session(
    controller: Controller, data: DataDir
) -> None:
    # Observed: five mistyped key entries locked the technician out of their own session.
    client = await authenticated(_sock(data))
    try:
        await _open(client, controller)
        for attempt in range(1, MAX_KEY_FAILURES + 1):
            with pytest.raises(CommandFailed, match="wrong password"):
                await client.call(msg.Arm(password=f"mistyped {attempt}"), timeout_s=10.0)
        user = await controller.accounts.get_user(USERNAME)
        assert user is not None and user.locked_until is None and user.failed_login_count == 0
        keys = await _wait_audits(data, "key_control", MAX_KEY_FAILURES)
        assert [outcome for _, outcome, _ in keys] == ["failure"] * MAX_KEY_FAILURES
        assert all(d["context"] == "arm" and d["peer_pid"] == os.getpid() for _, _, d in keys)
        assert not [r for r in _audit(data, "login") if r[0] == USERNAME and r[1] == "failure"]
        # The sixth try is refused even with the right password, and says how to recover.
        with pytest.raises(CommandFailed, match="an admin's username and password"):
            await client.call(msg.Arm(password=PASSWORD), timeout_s=10.0)
        assert controller.supervisor.state is SystemState.READY
        # The technician can still log in, and an admin's password unblocks and arms.
        assert (await controller.accounts.login(USERNAME, PASSWORD)).ok
        await client.call(msg.Arm(password=ADMIN_PASSWORD, username=ADMIN), timeout_s=10.0)
        assert controller.supervisor.state is SystemState.ARMED
        assert controller.authority.key_failures == 0
    finally:
        await client.close()


async def test_a_token_authenticates_a_new_connection_until_logout(
    controller: Controller, data: DataDir
) -> None:
    first = await ControllerClient.connect(_sock(data))
    try:
        reply = await first.call(msg.Authenticate(username=USERNAME, password=PASSWORD))
    finally:
        await first.close()
    token = str(reply["token"])
    second = await ControllerClient.connect(_sock(data))
    try:
        again = await second.call(msg.Authenticate(token=token))
        assert again["username"] == USERNAME
        await second.call(msg.Logout())
        with pytest.raises(CommandFailed, match="authenticate this connection first"):
            await second.call(msg.Sim(command="pedal up"))
        with pytest.raises(CommandFailed, match="token is not valid"):
            await second.call(msg.Authenticate(token=token))
    finally:
        await second.close()
