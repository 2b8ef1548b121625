"""The protocol library screen's tests: people, the shipped protocols and imported ones, the screen opened and
loaded, and what the database holds afterwards."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from console_fixtures import CLI, DATA_DIR, seed, wait_until
from textual.pilot import Pilot
from textual.widgets import DataTable

from control.accounts import AccountService, UserInfo
from control.protocol_approval import import_protocol
from control.protocols import install_library_protocols
from storage import create_engine, session_factory
from tests.support import CHEAP
from tui.screens._base import ScreenContext
from tui.screens.protocol_library import ProtocolLibraryScreen

BOB_PASSWORD = "bob password 1"
NAME = "Gentle 2 W"


def protocol_text(power_w: float = 2.0, **extra: Any) -> str:
    step = {
        "step_number": 1,
        "duration_seconds": 20,
        "power_start_watts": power_w,
        "power_end_watts": power_w,
        "ring_size_mm": 3.0,
        "ramp_type": "constant",
    }
    limits = {"max_power_watts": 8.0, "max_duration_seconds": 600}
    return json.dumps({"version": "1.0", "steps": [step], "safety_limits": limits, **extra})


async def seed_library(*, imported: bool = True) -> None:
    """ada and bob (admins), tina (technician), the shipped protocols and (``imported``) ada's draft
    ``Gentle 2 W`` v1; every version dated 2026-03-14 09:00 UTC."""
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        service = AccountService(sessions=sessions, terminal="/dev/pts/9", hashing=CHEAP)
        await service.create_user("bob", "Bob Admin", "admin", BOB_PASSWORD, CLI)
        await install_library_protocols(sessions)
        if imported:
            await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="gentle.json")
    finally:
        await engine.dispose()
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE protocol_versions SET created_date = '2026-03-14 09:00:00'")
        db.execute(
            "UPDATE protocol_versions SET approved_at = '2026-03-14 09:00:00' WHERE approved_at IS NOT NULL"
        )


def library_screen(context: ScreenContext, user: UserInfo) -> ProtocolLibraryScreen:
    return ProtocolLibraryScreen(context, user)


async def library_loaded(pilot: Pilot[Any]) -> ProtocolLibraryScreen:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ProtocolLibraryScreen), "the library screen")
    screen = app.screen
    assert isinstance(screen, ProtocolLibraryScreen)
    await wait_until(pilot, lambda: screen.loaded, "the library")
    return screen


def library_rows(pilot: Pilot[Any]) -> list[list[str]]:
    table = pilot.app.screen.query_one("#library-table", DataTable)
    return [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]


def stored_versions() -> list[tuple[Any, ...]]:
    """Each version a person stored (not the shipped ones): name, number, status."""
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(
            db.execute(
                "SELECT p.protocol_name, v.version, v.status FROM protocol_versions v "
                "JOIN protocols p USING (protocol_id) WHERE v.created_by_tech_id IS NOT NULL "
                "ORDER BY v.version_id"
            )
        )


def library_audits(action: str) -> list[tuple[str, str]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute(
            "SELECT outcome, username FROM audit_log WHERE action = ? ORDER BY audit_id", (action,)
        )
        return [(str(o), str(u)) for o, u in rows]


def write_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
