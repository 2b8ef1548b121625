"""The console's screens: first start, login, change of password, home and lock."""

from __future__ import annotations

from tui.screens._base import (
    EntryScreenRequested,
    FormField,
    FormScreen,
    LoggedIn,
    LogoutRequested,
    PasswordChanged,
    ScreenContext,
    Unlocked,
)
from tui.screens.change_password import ChangePasswordScreen
from tui.screens.first_run import FirstRunScreen
from tui.screens.home import DatabaseFacts, HomeScreen, read_database_facts
from tui.screens.lock import LockScreen
from tui.screens.login import LoginScreen

__all__ = [
    "ChangePasswordScreen",
    "DatabaseFacts",
    "EntryScreenRequested",
    "FirstRunScreen",
    "FormField",
    "FormScreen",
    "HomeScreen",
    "LockScreen",
    "LoggedIn",
    "LoginScreen",
    "LogoutRequested",
    "PasswordChanged",
    "ScreenContext",
    "Unlocked",
    "read_database_facts",
]
