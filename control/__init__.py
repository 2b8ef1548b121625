"""The controller layer: accounts and authorisation, console settings, clocks and terminals.

Import from here::

    from control import AccountService, Actor, ConsoleSettings, detect_terminal

This package never imports the user interface (``tui``) nor ``textual``.
"""

from __future__ import annotations

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
