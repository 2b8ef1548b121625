"""Only an approved protocol version treats on a real rig: a controller driving real devices (here the
simulated rig's devices over ptys, with no ``--sim``) refuses to open a session that tries a draft, and one
with a protocol that has no approved version; a session opened there runs the approved version, never a
newer draft. On the simulated rig, a console's request for a draft's trial opens the draft, and the session
says so (its snapshot, its notes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from controller_fixtures import SUBJECT, USERNAME, authenticated, prepare_data_dir

from control import messages as msg
from control.calibration import install_sim_calibrations_if_missing
from control.controller import Controller
from control.protocol_approval import import_protocol
from control.supervisor import Refused
from devices.rig import RigConfig
from devices.sim.rig import SimRig
from storage import DataDir, create_engine, session_factory
from storage.repositories import UsersRepository
from tests.support import CHEAP, RIG_TEST, protocol_json

pytestmark = RIG_TEST

APPROVED_TEXT = protocol_json((30.0, 1.0, 1.0, 2.0, "constant"))
DRAFT_TEXT = protocol_json((20.0, 2.0, 2.0, 2.0, "constant"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    """``p`` approved (v1) with a newer draft (v2); ``d`` with a draft only; calibrations in place."""
    data = await prepare_data_dir(tmp_path / "data", migrated_template, {"p": APPROVED_TEXT})
    engine = create_engine(data.db_path)
    try:
        sessions = session_factory(engine)
        async with sessions() as db:
            user = await UsersRepository(db).get_by_username(USERNAME)
        assert user is not None
        await install_sim_calibrations_if_missing(sessions, user.tech_id)
        await import_protocol(sessions, DRAFT_TEXT, name="p", admin="admin1", source="p2.json")
        await import_protocol(sessions, DRAFT_TEXT, name="d", admin="admin1", source="d.json")
    finally:
        await engine.dispose()
    return data


@pytest.mark.timeout(120)
async def test_a_real_rig_refuses_drafts_and_treats_with_the_approved_version(data: DataDir) -> None:
    async with SimRig() as rig:
        config = RigConfig.from_ports(rig.ports(), with_camera=False)
        controller = Controller(data.root, rig_config=config, hashing=CHEAP, serve=False)
        await controller.start()
        try:
            assert not controller.sim
            for name in ("p", "d"):
                with pytest.raises(
                    Refused, match="a draft protocol version may be tried on the simulated rig"
                ):
                    await controller.open_session(
                        subject_code=SUBJECT,
                        username=USERNAME,
                        protocol_name=name,
                        create_subject=True,
                        draft=True,
                    )
            with pytest.raises(Refused, match="'d' has no approved version; an admin must approve one first"):
                await controller.open_session(
                    subject_code=SUBJECT, username=USERNAME, protocol_name="d", create_subject=True
                )
            opened = await controller.open_session(
                subject_code=SUBJECT, username=USERNAME, protocol_name="p", create_subject=True
            )
            assert opened.total_duration_s == 30.0  # v1's 30 s, not the draft's 20 s
            view = controller.snapshot().session
            assert view is not None and (view.protocol_version, view.protocol_status) == (1, "approved")
            await controller.abort("draft test over")
        finally:
            await controller.close()
    with sqlite3.connect(data.db_path) as db:
        rows = db.execute("SELECT protocol_name, protocol_data_snapshot FROM sessions").fetchall()
    assert rows == [("p", APPROVED_TEXT)]


@pytest.mark.timeout(120)
async def test_the_simulated_rig_tries_a_draft_asked_for_by_a_console_and_marks_it(data: DataDir) -> None:
    controller = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await controller.start()
    try:
        client = await authenticated(data.root / "control.sock")
        try:
            opened = await client.call(
                msg.OpenSession(subject_code=SUBJECT, protocol_name="p", create_subject=True, draft=True)
            )
            assert opened["total_duration_s"] == 20.0  # the draft's 20 s
            view = controller.snapshot().session
            assert view is not None and (view.protocol_version, view.protocol_status) == (2, "draft")
            await controller.abort("draft trial over")
        finally:
            await client.close()
    finally:
        await controller.close()
    with sqlite3.connect(data.db_path) as db:
        notes, snapshot = db.execute(
            "SELECT treatment_notes, protocol_data_snapshot FROM sessions"
        ).fetchone()
    assert snapshot == DRAFT_TEXT
    assert notes.startswith("Trial of draft protocol version 2")
