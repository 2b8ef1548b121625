"""A records database holding one finished session, a technician with a password and the account service:
what the signature tests and the end-of-session and past-session screen tests share."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.accounts import AccountService
from control.protocol_approval import approve_as_system
from control.sessions import SessionService, SessionSummary
from storage import DataDir
from storage.models import TechUser
from storage.repositories import (
    ProtocolsRepository,
    SubjectsRepository,
    TreatmentEventsRepository,
    UsersRepository,
)
from storage.telemetry import TelemetrySummary
from tests.support import CHEAP, FakeClock

PROTOCOL = "Standard 1 W"
PROTOCOL_DATA = json.dumps({"protocol_name": PROTOCOL, "steps": [{"step_number": 1, "power": 1.0}]})
PASSWORD = "correct horse 42"
TECHNICIAN = "Jane Doe"


def copy_template(template: Path, data_dir: DataDir) -> DataDir:
    """A copy of the migrated template database with its chain keys (so its seal verifies)."""
    data_dir.ensure()
    shutil.copyfile(template, data_dir.db_path)
    shutil.copytree(template.parent / "keys", data_dir.db_path.parent / "keys")
    return data_dir


@dataclass
class Finished:
    """A finished session in a database: its id, the services over the database and the clock."""

    session_id: int
    accounts: AccountService
    service: SessionService
    clock: FakeClock
    data_dir: DataDir


async def finished_session(
    sessions: async_sessionmaker[AsyncSession], data_dir: DataDir, *, events: int = 3
) -> Finished:
    """Create the technician ``jdoe`` (password :data:`PASSWORD`), a subject and a protocol; open, record
    ``events`` treatment events and finish a session; return it."""
    clock = FakeClock(datetime(2026, 3, 14, 9, 30))
    accounts = AccountService(sessions=sessions, terminal="/dev/tty1", clock=clock, hashing=CHEAP)
    hashed = await accounts.hash_password(PASSWORD)
    async with sessions() as s, s.begin():
        tech = await UsersRepository(s).add(
            TechUser(username="jdoe", full_name=TECHNICIAN, role="technician", password_hash=hashed)
        )
        await SubjectsRepository(s).add("P-2026-0001", created_by_tech_id=tech.tech_id)
        added = await ProtocolsRepository(s).add(
            PROTOCOL, "standard", PROTOCOL_DATA, created_by_tech_id=tech.tech_id
        )
        await approve_as_system(s, added.protocol_id)
    service = SessionService(sessions, data_dir, clock=clock, terminal="/dev/tty1")
    opened = await service.open(
        subject_code="P-2026-0001", username="jdoe", protocol_name=PROTOCOL, backup=False
    )
    start = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
    async with sessions() as s, s.begin():
        await TreatmentEventsRepository(s).add_many(
            [
                {
                    "session_id": opened.session_id,
                    "timestamp": start + timedelta(seconds=i),
                    "time_offset_ms": i * 1000,
                    "event_type": "laser_on" if i == 0 else "power_sample",
                    "laser_power_commanded_watts": 1.0,
                    "laser_power_actual_watts": 0.98,
                }
                for i in range(events)
            ]
        )
    clock.advance(timedelta(seconds=30))
    telemetry = opened.folder / "telemetry.jsonl"
    telemetry.write_text('{"t": 0}\n', encoding="utf-8")
    await service.finish(
        opened.session_id,
        status="completed",
        reason=None,
        summary=SessionSummary(laser_on_time_s=30.0, avg_power_w=0.98, max_power_w=1.0, energy_j=29.4),
        telemetry=TelemetrySummary(
            path=telemetry,
            line_count=1,
            sha256=hashlib.sha256(b'{"t": 0}\n').hexdigest(),
            size_bytes=9,
        ),
        video_path=None,
    )
    return Finished(opened.session_id, accounts, service, clock, data_dir)


__all__ = ["PASSWORD", "PROTOCOL", "TECHNICIAN", "Finished", "copy_template", "finished_session"]
