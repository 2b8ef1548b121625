"""A controller on the simulated rig, in-process, over a real migrated SQLite file and real ptys."""

from __future__ import annotations

import shutil
from pathlib import Path

from account_fixtures import CHEAP

from control.accounts import AccountService
from control.controller import Controller
from control.ipc.client import ControllerClient
from control.messages import Authenticate, PrecheckView
from control.protocol_approval import approve_as_system
from control.supervisor import SystemState
from storage import DataDir, create_engine, session_factory
from storage.repositories import ProtocolsRepository
from tests.support import wait_until

PASSWORD = "correct horse 9"
USERNAME = "tech1"
SUBJECT = "P-2026-0001"


async def prepare_data_dir(root: Path, template: Path, protocols: dict[str, str]) -> DataDir:
    """A data directory with the migrated database, the technician ``tech1`` and the given protocols."""
    data = DataDir(root).ensure()
    shutil.copyfile(template, data.db_path)
    engine = create_engine(data.db_path)
    try:
        sessions = session_factory(engine)
        accounts = AccountService(sessions=sessions, terminal="test", hashing=CHEAP)
        await accounts.create_first_admin("admin1", "Admin One", "admin password 1")
        from control.accounts import Actor

        admin = await accounts.get_user("admin1")
        assert admin is not None
        await accounts.create_user(
            USERNAME, "Tech One", "technician", PASSWORD, Actor.console_user(admin, "test")
        )
        async with sessions() as db, db.begin():
            repo = ProtocolsRepository(db)
            for name, text in protocols.items():
                added = await repo.add(name, "multi_step", text)
                await approve_as_system(db, added.protocol_id)
    finally:
        await engine.dispose()
    return data


async def wait_prechecks(controller: Controller, timeout_s: float = 10.0) -> list[PrecheckView]:
    return await controller.wait_prechecks(timeout_s)


async def open_and_treat(controller: Controller, protocol: str) -> int:
    """Open a session, arm, press the pedal and wait until the laser emits; returns the session id."""
    opened = await controller.open_session(
        subject_code=SUBJECT, username=USERNAME, protocol_name=protocol, create_subject=True
    )
    await wait_prechecks(controller)
    await controller.arm(PASSWORD)
    assert controller.sim_rig is not None
    controller.sim_rig.command("pedal down")
    await wait_until(lambda: controller.supervisor.state is SystemState.TREATING, 10.0, "TREATING")
    await wait_until(lambda: controller.sim_rig.model.laser_output_on, 2.0, "laser output on")  # type: ignore[union-attr]
    return opened.session_id


async def wait_session_end(controller: Controller, timeout_s: float) -> None:
    """Wait until the open session has ended; fail at once, saying why, if a fault latches meanwhile."""

    def ended() -> bool:
        fault = controller.supervisor.fault
        if fault is not None:
            raise AssertionError(f"fault during the session: {fault.event_type}: {fault.what}")
        return controller.session is None

    await wait_until(ended, timeout_s, "the session to end")


async def authenticated(
    socket_path: Path, username: str = USERNAME, password: str = PASSWORD
) -> ControllerClient:
    """A connection to ``control.sock`` on which ``username`` has authenticated."""
    client = await ControllerClient.connect(socket_path)
    try:
        await client.call(Authenticate(username=username, password=password))
    except BaseException:
        await client.close()
        raise
    return client
