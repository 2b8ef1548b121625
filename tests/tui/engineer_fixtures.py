"""Records for the engineer's screens and commands: the fixed aborted session of the end-of-session tests
(session 1, subject P-2026-0001, technician tina "Tina Tech") with a date of birth, notes and two snapshot
pictures added; a completed session 2 of another subject two days later; safety rows of no session (a
fault latched and reset); an engineer ``eric``; and an app showing one screen for a given user."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from console_fixtures import DATA_DIR, make_settings
from test_end_session_screen import START, write_fixed_session
from textual.app import App
from textual.screen import Screen

import tui
from control.accounts import AccountService, Actor, UserInfo
from storage import create_engine, session_factory
from tests.support import CHEAP, FakeClock
from tui.screens._base import ScreenContext

TCSS = Path(tui.__file__).parent / "tosca.tcss"
ScreenMaker = Callable[[ScreenContext, UserInfo], Screen[Any]]
ENGINEER_PASSWORD = "engineer pass 1"
#: What a de-identified export must never hold.
BIRTH_DATE = "1961-04-12"
SUBJECT_NOTES = "lives at 5 Elm Road"
POST_NOTES = "Mrs Example felt fine afterwards"
TECH_FULL_NAME = "Tina Tech"
#: The second session's start and the system fault's time.
SECOND_START = START + timedelta(days=2)
FAULT_AT = START + timedelta(days=1)


def stamp(moment: datetime) -> str:
    return moment.isoformat(" ", "microseconds")


async def _add_engineer() -> None:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user(
            "eric",
            "Eric Engineer",
            "engineer",
            ENGINEER_PASSWORD,
            Actor.command_line("opsadmin", "/dev/pts/9"),
        )
    finally:
        await engine.dispose()


def write_snapshot_pictures(folder: Path) -> list[Path]:
    """Two small PNG pictures (raw and ring) in ``folder``; returns their paths."""
    raw = np.zeros((48, 64, 3), dtype=np.uint8)
    raw[10:30, 20:40] = (40, 200, 90)
    ring = raw.copy()
    cv2.circle(ring, (30, 20), 12, (0, 220, 0), 1)
    paths = [folder / "snapshot_0001.png", folder / "snapshot_0001_ring.png"]
    for path, image in zip(paths, (raw, ring), strict=True):
        ok, encoded = cv2.imencode(".png", image)
        assert ok
        path.write_bytes(encoded.tobytes())
    return paths


def write_engineer_records() -> None:
    """Everything the module documentation lists, in ``./data``."""
    write_fixed_session()
    asyncio.run(_add_engineer())
    folder = DATA_DIR / "sessions" / "P-2026-0001" / "1"
    pictures = write_snapshot_pictures(folder)
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute(
            "UPDATE subjects SET date_of_birth = ?, gender = 'female', notes = ?", (BIRTH_DATE, SUBJECT_NOTES)
        )
        db.execute("UPDATE sessions SET post_treatment_notes = ? WHERE session_id = 1", (POST_NOTES,))
        (tech_id,) = db.execute("SELECT tech_id FROM tech_users WHERE username = 'tina'").fetchone()
        for path in pictures:
            db.execute(
                "INSERT INTO session_recordings (session_id, recording_type, file_path, file_size_bytes, "
                "timestamp, resolution) VALUES (1, 'snapshot', ?, ?, ?, '64x48')",
                (str(path.resolve()), path.stat().st_size, stamp(START + timedelta(seconds=9))),
            )
        db.execute(
            "INSERT INTO subjects (subject_code, created_by_tech_id) VALUES ('P-2026-0002', ?)", (tech_id,)
        )
        db.execute(
            "INSERT INTO sessions (session_id, subject_id, tech_id, start_time, end_time, duration_seconds, "
            "status, protocol_name, total_laser_on_time_seconds, avg_power_watts, max_power_watts, "
            "total_energy_joules) VALUES (2, 2, ?, ?, ?, 30, 'completed', 'ramp_demo', 20.0, 1.5, 1.6, 30.0)",
            (tech_id, stamp(SECOND_START), stamp(SECOND_START + timedelta(seconds=30))),
        )
        db.execute(
            "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
            "laser_power_commanded_watts, laser_power_actual_watts) "
            "VALUES (2, ?, 1000, 'laser_on', 1.5, 1.48)",
            (stamp(SECOND_START + timedelta(seconds=1)),),
        )
        db.executemany(
            "INSERT INTO safety_log (timestamp, session_id, tech_id, event_type, severity, description, "
            "action_taken) VALUES (?, NULL, ?, ?, ?, ?, ?)",
            [
                (
                    stamp(FAULT_AT),
                    None,
                    "emergency_stop",
                    "critical",
                    "E-stop pressed [red]x[/red]",
                    "laser output off (verified)",
                ),
                (
                    stamp(FAULT_AT + timedelta(minutes=2)),
                    tech_id,
                    "fault_reset",
                    "info",
                    "fault reset by tina",
                    None,
                ),
            ],
        )


class EngineerApp(App[None]):
    """The console's stylesheet and one screen made for ``username`` (eric, the engineer, by default)."""

    CSS_PATH = TCSS

    def __init__(self, make_screen: ScreenMaker, clock: FakeClock, username: str = "eric") -> None:
        super().__init__()
        self.username = username
        self.make_screen = make_screen
        self.terminal = "/dev/tty1"
        self.engine = create_engine(DATA_DIR / "tosca.db")
        self.accounts = AccountService(
            sessions=session_factory(self.engine), terminal="/dev/tty1", clock=clock, hashing=CHEAP
        )
        self.context = ScreenContext(settings=make_settings(clock), accounts=self.accounts, link=None)
        self.first: Screen[Any] | None = None

    async def on_mount(self) -> None:
        user = await self.accounts.get_user(self.username)
        assert user is not None
        self.first = self.make_screen(self.context, user)
        await self.push_screen(self.first)

    async def on_unmount(self) -> None:
        await self.engine.dispose()


def audit_rows(action: str) -> list[tuple[str, str | None, str]]:
    """(outcome, username, details) of every audit row of ``action``, oldest first."""
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute(
            "SELECT outcome, username, details FROM audit_log WHERE action = ? ORDER BY audit_id", (action,)
        ).fetchall()
    return [(str(o), u, str(d)) for o, u, d in rows]
