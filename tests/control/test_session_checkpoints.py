"""Ending a session signs a checkpoint of each record chain, in the transaction that ends it."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from control.protocol_approval import approve_as_system
from control.sessions import SessionService, SessionSummary
from storage import DataDir, create_engine, session_factory
from storage.chain_verify import verify_database
from storage.maintenance import upgrade_async
from storage.models import TechUser
from storage.repositories import ProtocolsRepository, SubjectsRepository, UsersRepository
from tests.support import FakeClock

PROTOCOL = "Standard 1 W"
PROTOCOL_DATA = json.dumps({"protocol_name": PROTOCOL, "steps": [{"step_number": 1, "power": 1.0}]})


async def test_finishing_a_session_checkpoints_every_chain_and_the_records_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOSCA_CHAIN_KEY_FILE", raising=False)
    data_dir = DataDir(tmp_path / "data")
    await upgrade_async(data_dir)
    engine = create_engine(data_dir.db_path)
    try:
        sessions = session_factory(engine)
        async with sessions() as s, s.begin():
            alice = await UsersRepository(s).add(
                TechUser(username="alice", full_name="Alice", role="technician")
            )
            await SubjectsRepository(s).add("P-2026-0001", created_by_tech_id=alice.tech_id)
            added = await ProtocolsRepository(s).add(
                PROTOCOL, "standard", PROTOCOL_DATA, created_by_tech_id=alice.tech_id
            )
            await approve_as_system(s, added.protocol_id)
        clock = FakeClock(datetime(2026, 3, 14, 9, 30))
        service = SessionService(sessions, data_dir, clock=clock, terminal="/dev/tty1")
        opened = await service.open(
            subject_code="P-2026-0001", username="alice", protocol_name=PROTOCOL, backup=False
        )
        clock.advance(timedelta(seconds=30))
        await service.finish(
            opened.session_id,
            status="aborted",
            reason="subject moved",
            summary=SessionSummary.empty(),
            telemetry=None,
            video_path=None,
        )
    finally:
        await engine.dispose()
    connection = sqlite3.connect(str(data_dir.db_path))
    audit_rows = connection.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    written = connection.execute(
        "SELECT chain, length FROM chain_checkpoints WHERE reason = 'session_end' ORDER BY checkpoint_id"
    ).fetchall()
    connection.close()
    # The session's finish row is the last audit row, and the checkpoint covers it.
    # The session's final record is the first row of the session records chain.
    assert written == [
        ("audit_log", audit_rows),
        ("safety_log", 1),
        ("treatment_events", 0),
        ("session_records", 1),
    ]
    result = verify_database(data_dir.db_path)
    assert result.failure is None
    assert [c.checkpoints for c in result.counts] == [2, 2, 2, 2]
