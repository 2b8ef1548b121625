"""The console's screens: first start, login, change of password, home and lock.

The names are loaded on first use (PEP 562): the login and first-run screens, shown before the database is
open, do not pull in what the others need (SQLAlchemy, Alembic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.lazy import lazy_attributes

if TYPE_CHECKING:
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

#: Where each name of the package is defined.
_SOURCES: dict[str, str] = {
    "ChangePasswordScreen": "tui.screens.change_password",
    "DatabaseFacts": "tui.screens.home",
    "EntryScreenRequested": "tui.screens._base",
    "FirstRunScreen": "tui.screens.first_run",
    "FormField": "tui.screens._base",
    "FormScreen": "tui.screens._base",
    "HomeScreen": "tui.screens.home",
    "LockScreen": "tui.screens.lock",
    "LoggedIn": "tui.screens._base",
    "LoginScreen": "tui.screens.login",
    "LogoutRequested": "tui.screens._base",
    "PasswordChanged": "tui.screens._base",
    "ScreenContext": "tui.screens._base",
    "Unlocked": "tui.screens._base",
    "read_database_facts": "tui.screens.home",
}


__getattr__, __dir__ = lazy_attributes("tui.screens", _SOURCES, globals())


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
