"""The console's screens: first start, login, home and lock."""

from __future__ import annotations

from tui.screens._base import (
    EntryScreenRequested,
    FormScreen,
    LoggedIn,
    LogoutRequested,
    ScreenContext,
    Unlocked,
)
from tui.screens.first_run import FirstRunScreen
from tui.screens.home import DatabaseFacts, HomeScreen, read_database_facts
from tui.screens.lock import LockScreen
from tui.screens.login import LoginScreen

__all__ = [
    "DatabaseFacts",
    "EntryScreenRequested",
    "FirstRunScreen",
    "FormScreen",
    "HomeScreen",
    "LockScreen",
    "LoggedIn",
    "LoginScreen",
    "LogoutRequested",
    "ScreenContext",
    "Unlocked",
    "read_database_facts",
]
