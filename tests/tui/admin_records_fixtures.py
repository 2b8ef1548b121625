"""An app showing one of the admin's record screens (audit trail, backups) for the admin ``ada``, on the
test's migrated database, with an optional stand-in for the controller's link."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from console_fixtures import DATA_DIR, make_settings
from textual.app import App
from textual.screen import Screen

import tui
from control.accounts import AccountService, UserInfo
from storage import create_engine, session_factory
from tests.support import CHEAP, FakeClock
from tui.link import ConsoleLink
from tui.screens._base import ScreenContext

TCSS = Path(tui.__file__).parent / "tosca.tcss"
ScreenMaker = Callable[[ScreenContext, UserInfo], Screen[Any]]


@dataclass
class SessionShown:
    """The fields of the controller's open-session view the backups screen reads."""

    session_id: int
    subject_code: str
    status: str


@dataclass
class SnapshotShown:
    session: SessionShown | None


class LinkStandIn:
    """What the backups screen reads from the console's link: the newest snapshot (None: not connected)."""

    def __init__(self, snapshot: SnapshotShown | None = None) -> None:
        self.snapshot = snapshot


class AdminScreenApp(App[None]):
    """The console's stylesheet and one screen made for the admin ``ada`` (or ``username``; seeded first)."""

    CSS_PATH = TCSS

    def __init__(
        self,
        make_screen: ScreenMaker,
        clock: FakeClock,
        link: LinkStandIn | None = None,
        username: str = "ada",
    ) -> None:
        super().__init__()
        self.username = username
        self.make_screen = make_screen
        self.settings = make_settings(clock)
        self.terminal = "/dev/tty1"
        self.engine = create_engine(DATA_DIR / "tosca.db")
        self.accounts = AccountService(
            sessions=session_factory(self.engine), terminal="/dev/tty1", clock=clock, hashing=CHEAP
        )
        self.context = ScreenContext(
            settings=self.settings, accounts=self.accounts, link=cast(ConsoleLink | None, link)
        )
        self.first: Screen[Any] | None = None

    async def on_mount(self) -> None:
        user = await self.accounts.get_user(self.username)
        assert user is not None
        self.first = self.make_screen(self.context, user)
        await self.push_screen(self.first)

    async def on_unmount(self) -> None:
        await self.engine.dispose()


def add_audit_rows(rows: list[tuple[datetime, str | None, str, str, str]]) -> None:
    """Append audit rows of (time UTC, user, action, outcome, details JSON) to the test's database."""
    connection = sqlite3.connect(str(DATA_DIR / "tosca.db"))
    with connection:
        connection.executemany(
            "INSERT INTO audit_log (timestamp, username, action, terminal, outcome, details) "
            "VALUES (?, ?, ?, 'tty1', ?, ?)",
            [(t.isoformat(sep=" ", timespec="microseconds"), u, a, o, d) for t, u, a, o, d in rows],
        )
    connection.close()


def audit_actions(action_prefix: str = "") -> list[tuple[str, str, str | None]]:
    """(action, outcome, username) of every audit row whose action starts with ``action_prefix``."""
    connection = sqlite3.connect(str(DATA_DIR / "tosca.db"))
    rows = connection.execute(
        "SELECT action, outcome, username FROM audit_log WHERE action LIKE ? ORDER BY audit_id",
        (action_prefix + "%",),
    ).fetchall()
    connection.close()
    return [(str(a), str(o), u) for a, o, u in rows]


def fixed_space(_folder: Path) -> tuple[int, int]:
    """A file system with 12.3 GB free of 64.0 GB (steady screenshots)."""
    return 12_300_000_000, 64_000_000_000
