"""The controller layer: accounts and authorisation, console settings, clocks and terminals.

Import from here::

    from control import AccountService, Actor, ConsoleSettings, detect_terminal

The names are loaded on first use (PEP 562): importing one light module (``control.clock``) does not
pull in SQLAlchemy. This package never imports the user interface (``tui``) nor ``textual``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.lazy import lazy_attributes

if TYPE_CHECKING:
    from control.accounts import (
        LOCKOUT_DURATION,
        MAX_FAILED_LOGINS,
        MIN_PASSWORD_LENGTH,
        NO_PASSWORD_MESSAGE,
        WRONG_CREDENTIALS_MESSAGE,
        AccountError,
        AccountService,
        Actor,
        DuplicateUserError,
        FirstAdminExistsError,
        HashingParameters,
        InvalidAccountDataError,
        LoginOutcome,
        LoginResult,
        PasswordPolicyError,
        PermissionDeniedError,
        UnknownUserError,
        UserInfo,
        check_password_policy,
    )
    from control.clock import Clock, format_local, format_local_hm, to_local, utc_now
    from control.settings import ConsoleSettings
    from control.terminal import NO_TTY, detect_terminal, is_ssh_session

#: Where each name of the package is defined.
_SOURCES: dict[str, str] = {
    "AccountError": "control.accounts",
    "AccountService": "control.accounts",
    "Actor": "control.accounts",
    "Clock": "control.clock",
    "ConsoleSettings": "control.settings",
    "DuplicateUserError": "control.accounts",
    "FirstAdminExistsError": "control.accounts",
    "HashingParameters": "control.accounts",
    "InvalidAccountDataError": "control.accounts",
    "LOCKOUT_DURATION": "control.accounts",
    "LoginOutcome": "control.accounts",
    "LoginResult": "control.accounts",
    "MAX_FAILED_LOGINS": "control.accounts",
    "MIN_PASSWORD_LENGTH": "control.accounts",
    "NO_PASSWORD_MESSAGE": "control.accounts",
    "NO_TTY": "control.terminal",
    "PasswordPolicyError": "control.accounts",
    "PermissionDeniedError": "control.accounts",
    "UnknownUserError": "control.accounts",
    "UserInfo": "control.accounts",
    "WRONG_CREDENTIALS_MESSAGE": "control.accounts",
    "check_password_policy": "control.accounts",
    "detect_terminal": "control.terminal",
    "format_local": "control.clock",
    "format_local_hm": "control.clock",
    "is_ssh_session": "control.terminal",
    "to_local": "control.clock",
    "utc_now": "control.clock",
}


__getattr__, __dir__ = lazy_attributes("control", _SOURCES, globals())


__all__ = [
    "LOCKOUT_DURATION",
    "MAX_FAILED_LOGINS",
    "MIN_PASSWORD_LENGTH",
    "NO_PASSWORD_MESSAGE",
    "NO_TTY",
    "WRONG_CREDENTIALS_MESSAGE",
    "AccountError",
    "AccountService",
    "Actor",
    "Clock",
    "ConsoleSettings",
    "DuplicateUserError",
    "FirstAdminExistsError",
    "HashingParameters",
    "InvalidAccountDataError",
    "LoginOutcome",
    "LoginResult",
    "PasswordPolicyError",
    "PermissionDeniedError",
    "UnknownUserError",
    "UserInfo",
    "check_password_policy",
    "detect_terminal",
    "format_local",
    "format_local_hm",
    "is_ssh_session",
    "to_local",
    "utc_now",
]
