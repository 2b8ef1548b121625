"""The account rules that need no database: password and name policy, lockout limits, the messages a person
sees, the errors, the hashing parameters and the plain records a screen is handed (:class:`UserInfo`,
:class:`LoginResult`, :class:`Actor`).

Kept apart from :mod:`control.accounts` (which re-exports every name) so that what the console needs before
its database is open (the login and first-run screens, the settings) does not load SQLAlchemy.
"""

from __future__ import annotations

import enum
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Final

from argon2 import PasswordHasher

from control.clock import format_local_hm

if TYPE_CHECKING:
    from storage.models import TechUser

#: Fewest characters a password may have.
MIN_PASSWORD_LENGTH: Final = 8
#: Most characters a password may have (bounds the hashing work one request can cause).
MAX_PASSWORD_LENGTH: Final = 256
#: Consecutive failed logins that lock an account.
MAX_FAILED_LOGINS: Final = 5
#: How long a locked account stays locked.
LOCKOUT_DURATION: Final = timedelta(minutes=15)
#: Username shape: 2 to 32 lower-case letters, digits, ``.``, ``_`` and ``-``, starting with a letter.
USERNAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9._-]{1,31}")
#: Most unknown usernames whose failed logins are remembered at once (bounds memory).
MAX_TRACKED_UNKNOWN_NAMES: Final = 1024
#: Longest full name accepted, in characters.
MAX_FULL_NAME_LENGTH: Final = 100

#: The message for a wrong password and for an unknown username alike.
WRONG_CREDENTIALS_MESSAGE: Final = "wrong username or password"
#: The message for an account whose password has never been set (or was cleared).
NO_PASSWORD_MESSAGE: Final = "no password set; ask an admin"
#: The message for a deactivated account (given only with the correct password).
INACTIVE_MESSAGE: Final = "account inactive; ask an admin"


class AccountError(Exception):
    """Base class of account errors; the message is one line a person can act on."""


class PasswordPolicyError(AccountError, ValueError):
    """A proposed password does not meet the policy; nothing was changed."""


class InvalidAccountDataError(AccountError, ValueError):
    """A username, full name or role is malformed; nothing was changed."""


class UnknownUserError(AccountError, LookupError):
    """An administrative operation named a user that does not exist; nothing was changed."""


class DuplicateUserError(AccountError):
    """A user with that username already exists; nothing was changed."""


class PermissionDeniedError(AccountError, PermissionError):
    """The actor may not perform this operation; nothing was changed."""


class FirstAdminExistsError(AccountError):
    """An active administrator with a password already exists, so the first-run path is closed."""


class ConcurrentChangeError(AccountError):
    """The account was changed by someone else since it was read for this change; nothing was saved. The
    message says what changed."""


@dataclass(frozen=True, kw_only=True)
class HashingParameters:
    """argon2id cost parameters.

    Defaults are RFC 9106's second recommended option (the "low memory" profile): 3 passes over 64 MiB with 4
    lanes, about 0.1 s per hash on the console's hardware.

    Raises:
        ValueError: a parameter outside its range (or not an integer).
    """

    #: Passes over memory, 1 to 20.
    time_cost: int = 3
    #: Memory in KiB, 8 to 4 GiB.
    memory_cost_kib: int = 65536
    #: Lanes (threads), 1 to 64.
    parallelism: int = 4

    def __post_init__(self) -> None:
        for name, low, high in (
            ("time_cost", 1, 20),
            ("memory_cost_kib", 8, 4 * 1024 * 1024),
            ("parallelism", 1, 64),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"hashing {name} must be an integer from {low} to {high}, not {value!r}")

    def hasher(self) -> PasswordHasher:
        """A :class:`PasswordHasher` using these parameters (argon2id, 16-byte salt, 32-byte hash)."""
        return PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_cost_kib, parallelism=self.parallelism
        )


class LoginOutcome(enum.StrEnum):
    """Why a login succeeded or failed (recorded in the audit row's details as ``reason``)."""

    OK = "ok"
    WRONG_CREDENTIALS = "wrong_credentials"
    LOCKED = "locked"
    INACTIVE = "inactive"
    NO_PASSWORD = "no_password"


@dataclass(frozen=True)
class UserInfo:
    """A snapshot of one account, safe to hand to a user interface (no password hash).

    Times are naive UTC.
    """

    tech_id: int
    username: str
    full_name: str
    role: str
    is_active: bool
    has_password: bool
    must_change_password: bool
    failed_login_count: int
    locked_until: datetime | None
    last_login: datetime | None
    created_date: datetime | None
    #: A short digest of the stored password hash (None without a password): tells whether the password
    #: was set again since this snapshot was taken, without handing the hash itself to a user interface.
    password_stamp: str | None = None

    @classmethod
    def from_row(cls, row: TechUser) -> UserInfo:
        """Copy the fields of a ``tech_users`` row."""
        return cls(
            tech_id=row.tech_id,
            username=row.username,
            full_name=row.full_name,
            role=row.role,
            is_active=bool(row.is_active) if row.is_active is not None else True,
            has_password=row.password_hash is not None,
            must_change_password=bool(row.must_change_password),
            failed_login_count=row.failed_login_count or 0,
            locked_until=row.locked_until,
            last_login=row.last_login,
            created_date=row.created_date,
            password_stamp=password_stamp(row.password_hash),
        )

    def locked_at(self, now: datetime) -> bool:
        """True when the account is locked at ``now`` (naive UTC)."""
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class LoginResult:
    """The answer to a login attempt: ``message`` is what to show; ``user`` is set only on success."""

    outcome: LoginOutcome
    message: str
    user: UserInfo | None = None
    locked_until: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when the user is logged in."""
        return self.outcome is LoginOutcome.OK


@dataclass(frozen=True)
class Actor:
    """Who performs an account operation, for permission checks and the audit trail.

    A console user is identified by ``tech_id``/``username``/``role``. The command line acts as the operating
    system user running it (``os_user``; whoever can write the data directory administers it), with no
    ``tech_id``.
    """

    terminal: str
    tech_id: int | None = None
    username: str | None = None
    role: str | None = None
    os_user: str | None = None

    @classmethod
    def console_user(cls, user: UserInfo, terminal: str) -> Actor:
        """The actor for a user logged in at the console."""
        return cls(terminal=terminal, tech_id=user.tech_id, username=user.username, role=user.role)

    @classmethod
    def command_line(cls, os_user: str, terminal: str) -> Actor:
        """The actor for ``tosca user ...`` run by the operating system user ``os_user``."""
        if not os_user:
            raise InvalidAccountDataError("the operating system user name is empty")
        return cls(terminal=terminal, os_user=os_user)

    @property
    def is_admin(self) -> bool:
        """True for a console admin and for the command line (the data directory's owner)."""
        return self.os_user is not None or self.role == "admin"

    def audit_details(self) -> dict[str, Any]:
        """What the audit row's details record about the actor."""
        return {"os_user": self.os_user} if self.os_user is not None else {}


def password_stamp(password_hash: str | None) -> str | None:
    """A 16-hex-digit digest of ``password_hash`` (None for None), to notice a password set again."""
    if password_hash is None:
        return None
    return hashlib.blake2b(password_hash.encode(), digest_size=8).hexdigest()


#: What an administrator edits on an account, with how each is named in a message. A login changes none of
#: them except ``locked_until`` (a lockout), which is shown in the users' table and so is compared too.
ADMINISTERED_FIELDS: Final = (
    ("full_name", "full name"),
    ("role", "role"),
    ("is_active", "active"),
    ("must_change_password", "must change password"),
    ("locked_until", "locked until"),
    ("password_stamp", "password"),
)


def _shown(field: str, value: object) -> str:
    if field == "password_stamp":
        return "set" if value is not None else "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return repr(value) if isinstance(value, str) else str(value)


def account_changes(loaded: UserInfo, current: UserInfo) -> list[str]:
    """What an administrator could have changed between two snapshots of one account, one phrase each
    ("role: 'technician' -> 'engineer'", "password: set again"); empty when nothing did. The last login and
    the failed-login count are not compared: a login is not an edit."""
    changes: list[str] = []
    for field, name in ADMINISTERED_FIELDS:
        old, new = getattr(loaded, field), getattr(current, field)
        if old == new:
            continue
        if field == "password_stamp" and old is not None and new is not None:
            changes.append("password: set again")
        else:
            changes.append(f"{name}: {_shown(field, old)} -> {_shown(field, new)}")
    return changes


def check_password_policy(password: str, username: str | None = None) -> None:
    """Raise :class:`PasswordPolicyError` with a specific reason unless ``password`` is acceptable."""
    if not isinstance(password, str):
        raise PasswordPolicyError("the password must be text")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"the password must have at least {MIN_PASSWORD_LENGTH} characters (it has {len(password)})"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in password):
        raise PasswordPolicyError("the password must not contain control characters (tab, newline, ...)")
    if not password.strip():
        raise PasswordPolicyError("the password must not be only spaces")
    if username is not None and password.casefold() == username.casefold():
        raise PasswordPolicyError("the password must differ from the username")


def check_username(username: str) -> str:
    """Return ``username`` if well formed, else raise :class:`InvalidAccountDataError` saying why."""
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise InvalidAccountDataError(
            f"invalid username {username!r}: use 2 to 32 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    return username


def check_full_name(full_name: str) -> str:
    """Return ``full_name`` stripped, or raise :class:`InvalidAccountDataError` if empty or too long."""
    name = full_name.strip() if isinstance(full_name, str) else ""
    if not name:
        raise InvalidAccountDataError("the full name must not be empty")
    if len(name) > MAX_FULL_NAME_LENGTH:
        raise InvalidAccountDataError(f"the full name must have at most {MAX_FULL_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidAccountDataError("the full name must not contain control characters")
    return name


def locked_message(until: datetime, zone: tzinfo | None = None) -> str:
    """The message for a locked account: ``until`` (naive UTC) shown as local HH:MM."""
    return f"account locked until {format_local_hm(until, zone)}"


def locked_result(until: datetime, zone: tzinfo | None) -> LoginResult:
    """The answer to the failure that locks an account: the person learns at once, not at the next try."""
    return LoginResult(
        LoginOutcome.LOCKED,
        f"{WRONG_CREDENTIALS_MESSAGE}; {MAX_FAILED_LOGINS} failures: {locked_message(until, zone)}",
        locked_until=until,
    )
