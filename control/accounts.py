"""User accounts: passwords, logins, lockout, and the audit trail of every account event.

Rules (a medical console's, written down once here):

* Roles are ``technician``, ``engineer`` and ``admin``. There are no default accounts and no default
  passwords: the first administrator is created by a person at first start
  (:meth:`AccountService.create_first_admin`) or with ``tosca user add``.
* Passwords are hashed with argon2id (:class:`argon2.PasswordHasher`). When the configured parameters change,
  a stored hash is recomputed with the new parameters at the user's next successful login. Hashing is
  CPU-bound and always runs in a worker thread (:func:`asyncio.to_thread`), so a user interface on the event
  loop stays live.
* A password has at least :data:`MIN_PASSWORD_LENGTH` characters (and at most :data:`MAX_PASSWORD_LENGTH`, so
  a pasted file cannot stall the hasher), contains no control characters and differs from the username.
* After :data:`MAX_FAILED_LOGINS` consecutive failures an account is locked for :data:`LOCKOUT_DURATION`; a
  successful login resets the count; an admin can unlock at any time. An account with no password
  (``password_hash`` NULL) or a deactivated account cannot log in.
* A login never tells whether a username exists: an unknown name gets the same "wrong username or password" as
  a wrong password, costs the same hashing time (it is verified against a dummy hash), and is locked out the
  same way after repeated failures (tracked in memory, as there is no row to count on). An inactive account is
  only reported as inactive to someone who typed its correct password.
* Every login success and failure, lockout, unlock, user creation, password set and deactivation is written to
  ``audit_log`` with the terminal (:mod:`control.terminal`) and the outcome.
* Key control (the password re-entered to arm the laser or take a session over,
  :meth:`AccountService.check_key`) is not a login: a wrong password is audited as a ``key_control`` failure,
  does not count towards the lockout, and a lockout does not refuse it (a person is never locked out of their
  own open session); a deactivated account is refused. The controller limits key-control failures per session
  instead.

All database work goes through :class:`storage.UsersRepository` and :class:`storage.AuditRepository`; this
module contains no SQL and does not import the user interface.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.account_rules import (
    INACTIVE_MESSAGE,
    LOCKOUT_DURATION,
    MAX_FAILED_LOGINS,
    MAX_FULL_NAME_LENGTH,
    MAX_PASSWORD_LENGTH,
    MAX_TRACKED_UNKNOWN_NAMES,
    MIN_PASSWORD_LENGTH,
    NO_PASSWORD_MESSAGE,
    USERNAME_PATTERN,
    WRONG_CREDENTIALS_MESSAGE,
    AccountError,
    Actor,
    ConcurrentChangeError,
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
    account_changes,
    check_full_name,
    check_password_policy,
    check_username,
    locked_message,
    locked_result,
)
from control.clock import Clock, utc_now
from storage import ROLES, TechUser
from storage.repositories import AuditRepository, UsersRepository

#: Public names, those defined in :mod:`control.account_rules` included (re-exported here).
__all__ = [
    "ACTION_DEACTIVATE",
    "ACTION_FULL_NAME_CHANGE",
    "ACTION_KEY_CONTROL",
    "ACTION_LOCKOUT",
    "ACTION_LOGIN",
    "ACTION_LOGOUT",
    "ACTION_PASSWORD_SET",
    "ACTION_REACTIVATE",
    "ACTION_ROLE_CHANGE",
    "ACTION_SCREEN_LOCK",
    "ACTION_UNLOCK",
    "ACTION_USER_CREATE",
    "ENTITY_USER",
    "INACTIVE_MESSAGE",
    "LOCKOUT_DURATION",
    "MAX_FAILED_LOGINS",
    "MAX_FULL_NAME_LENGTH",
    "MAX_PASSWORD_LENGTH",
    "MAX_TRACKED_UNKNOWN_NAMES",
    "MIN_PASSWORD_LENGTH",
    "NO_PASSWORD_MESSAGE",
    "USERNAME_PATTERN",
    "WRONG_CREDENTIALS_MESSAGE",
    "AccountError",
    "AccountService",
    "Actor",
    "ConcurrentChangeError",
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
    "account_changes",
    "check_full_name",
    "check_password_policy",
    "check_role",
    "check_username",
    "locked_message",
    "locked_result",
]

#: ``audit_log.action`` values written by this module.
ACTION_LOGIN: Final = "login"
ACTION_LOCKOUT: Final = "lockout"
ACTION_UNLOCK: Final = "unlock"
ACTION_USER_CREATE: Final = "user_create"
ACTION_PASSWORD_SET: Final = "password_set"
ACTION_DEACTIVATE: Final = "deactivate"
ACTION_LOGOUT: Final = "logout"
ACTION_SCREEN_LOCK: Final = "screen_lock"
ACTION_KEY_CONTROL: Final = "key_control"
ACTION_REACTIVATE: Final = "reactivate"
ACTION_ROLE_CHANGE: Final = "role_change"
ACTION_FULL_NAME_CHANGE: Final = "full_name_change"
#: ``audit_log.entity_type`` for rows about a user account.
ENTITY_USER: Final = "tech_user"


def _require_admin(actor: Actor, what: str) -> None:
    if not actor.is_admin:
        raise PermissionDeniedError(f"only an admin can {what}")


def _active(row: TechUser) -> bool:
    return row.is_active if row.is_active is not None else True


def _usable_admin(row: TechUser) -> bool:
    """An admin who can log in now or after an unlock: active, with a password."""
    return row.role == "admin" and _active(row) and row.password_hash is not None


def check_role(role: str) -> str:
    """Return ``role`` if it is one of :data:`storage.ROLES`, else raise :class:`InvalidAccountDataError`."""
    if role not in ROLES:
        raise InvalidAccountDataError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    return role


@dataclass
class _PhantomFailures:
    """Failed-login bookkeeping for usernames that do not exist (so they lock out like real ones)."""

    count: int = 0
    locked_until: datetime | None = None


@dataclass
class AccountService:
    """Account operations against the records database.

    Args:
        sessions: the session maker of the records database (:func:`storage.session_factory`).
        terminal: the terminal recorded in audit rows for logins (:func:`control.terminal.detect_terminal`).
        clock: returns naive UTC now; lockouts and audit timestamps use it.
        hashing: argon2id parameters; stored hashes made with other parameters are recomputed at login.
        zone: time zone for messages such as "locked until HH:MM" (default: the machine's local zone).
    """

    sessions: async_sessionmaker[AsyncSession]
    terminal: str
    clock: Clock = utc_now
    hashing: HashingParameters = field(default_factory=HashingParameters)
    zone: tzinfo | None = None
    _hasher: PasswordHasher = field(init=False, repr=False)
    _dummy_hash: str | None = field(default=None, init=False, repr=False)
    _phantoms: dict[str, _PhantomFailures] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._hasher = self.hashing.hasher()

    # -- hashing -------------------------------------------------------------------------------------------

    async def hash_password(self, password: str) -> str:
        """Hash ``password`` with argon2id in a worker thread; returns the encoded hash."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, stored_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(stored_hash, password)
            except VerifyMismatchError:
                return False
            except (VerificationError, InvalidHashError):
                # A damaged or foreign hash never matches; the account then needs a new password.
                return False

        return await asyncio.to_thread(verify)

    async def _ensure_dummy_hash(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash_password(secrets.token_urlsafe(24))
        return self._dummy_hash

    async def _verify_dummy(self, password: str) -> None:
        """Spend the same hashing time as a real verification, for unknown or unverifiable accounts."""
        await self._verify(await self._ensure_dummy_hash(), password)

    # -- queries -------------------------------------------------------------------------------------------

    async def list_users(self) -> list[UserInfo]:
        """Every account, ordered by username."""
        async with self.sessions() as session:
            rows = await UsersRepository(session).list_all()
            return [UserInfo.from_row(row) for row in rows]

    async def get_user(self, username: str) -> UserInfo | None:
        """The account called ``username``, or ``None``."""
        async with self.sessions() as session:
            row = await UsersRepository(session).get_by_username(username)
            return UserInfo.from_row(row) if row is not None else None

    async def needs_first_admin(self) -> bool:
        """True when no active admin with a password exists (the console then offers to create one)."""
        async with self.sessions() as session:
            return await UsersRepository(session).count_active_admins_with_password() == 0

    # -- login ---------------------------------------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        *,
        context: str = "login",
        details: Mapping[str, Any] | None = None,
    ) -> LoginResult:
        """Check ``password`` for ``username``; update the failure count, lockout and last login; audit it.

        ``context`` is recorded in the audit details (``"login"`` at the login screen, ``"lock_screen"`` when
        a locked console is reopened, ``"control_connection"`` on the controller's socket); ``details`` are
        added to them (the socket's peer: its uid and pid).
        """
        # Made before the first attempt of any kind, so that no first attempt costs more than another.
        await self._ensure_dummy_hash()
        now = self.clock()
        name = username.strip() if isinstance(username, str) else ""
        extra = dict(details or {})
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await users.get_by_username(name) if name else None
            if row is None:
                return await self._login_unknown(session, name, password, now, context, extra)
            return await self._login_known(session, row, password, now, context, extra)

    async def check_key(
        self, username: str, password: str, *, details: Mapping[str, Any] | None = None
    ) -> LoginResult:
        """Key control: check ``password`` for ``username`` without touching the lockout (see the module's
        rules). Audited as ``key_control`` with ``details``; refused for an account that is deactivated or
        has no password. The failure count and ``locked_until`` are neither read nor changed."""
        await self._ensure_dummy_hash()
        now = self.clock()
        extra = dict(details or {})
        async with self.sessions() as session, session.begin():
            row = await UsersRepository(session).get_by_username(username.strip())
            if row is None or row.password_hash is None:
                await self._verify_dummy(password)
                result = LoginResult(LoginOutcome.WRONG_CREDENTIALS, "wrong password")
            elif not await self._verify(row.password_hash, password):
                result = LoginResult(LoginOutcome.WRONG_CREDENTIALS, "wrong password")
            elif not (row.is_active if row.is_active is not None else True):
                result = LoginResult(LoginOutcome.INACTIVE, INACTIVE_MESSAGE)
            else:
                result = LoginResult(LoginOutcome.OK, "key control", user=UserInfo.from_row(row))
            await self._audit(
                session,
                ACTION_KEY_CONTROL,
                "success" if result.ok else "failure",
                now,
                username=row.username if row is not None else username.strip(),
                tech_id=row.tech_id if row is not None else None,
                entity_id=row.tech_id if row is not None else None,
                details={**extra, "reason": result.outcome.value},
            )
            return result

    async def record_command(
        self,
        action: str,
        outcome: str,
        *,
        user: UserInfo | None,
        details: Mapping[str, Any],
        username: str | None = None,
    ) -> None:
        """Audit one command a person gave the controller (``user``; ``None`` when nobody was
        authenticated, then ``username`` names who was claimed, if anyone), with ``details`` (the
        connection's peer, what was refused and why)."""
        now = self.clock()
        async with self.sessions() as session, session.begin():
            await AuditRepository(session).add(
                action,
                outcome,
                timestamp=now,
                tech_id=user.tech_id if user is not None else None,
                username=user.username if user is not None else username,
                terminal=self.terminal,
                details=dict(details),
            )

    async def _login_unknown(
        self,
        session: AsyncSession,
        name: str,
        password: str,
        now: datetime,
        context: str,
        extra: Mapping[str, Any],
    ) -> LoginResult:
        if len(self._phantoms) >= MAX_TRACKED_UNKNOWN_NAMES:
            self._forget_stale_phantoms(now)
        phantom = self._phantoms.setdefault(name, _PhantomFailures())
        details = {**extra, "reason": "unknown_user", "context": context}
        if phantom.locked_until is not None and phantom.locked_until > now:
            await self._verify_dummy(password)
            await self._audit(session, ACTION_LOGIN, "failure", now, username=name, details=details)
            return LoginResult(
                LoginOutcome.LOCKED,
                locked_message(phantom.locked_until, self.zone),
                locked_until=phantom.locked_until,
            )
        await self._verify_dummy(password)
        phantom.count += 1
        await self._audit(session, ACTION_LOGIN, "failure", now, username=name, details=details)
        if phantom.count >= MAX_FAILED_LOGINS:
            phantom.count = 0
            phantom.locked_until = now + LOCKOUT_DURATION
            await self._audit(
                session,
                ACTION_LOCKOUT,
                "success",
                now,
                username=name,
                details={"reason": "unknown_user", "locked_until": phantom.locked_until.isoformat()},
            )
            return locked_result(phantom.locked_until, self.zone)
        return LoginResult(LoginOutcome.WRONG_CREDENTIALS, WRONG_CREDENTIALS_MESSAGE)

    def _forget_stale_phantoms(self, now: datetime) -> None:
        """Drop unknown names that are not locked; if all are locked, drop the oldest half."""
        for key in [k for k, v in self._phantoms.items() if v.locked_until is None or v.locked_until <= now]:
            del self._phantoms[key]
        if len(self._phantoms) >= MAX_TRACKED_UNKNOWN_NAMES:
            for key in list(self._phantoms)[: MAX_TRACKED_UNKNOWN_NAMES // 2]:
                del self._phantoms[key]

    async def _login_known(
        self,
        session: AsyncSession,
        row: TechUser,
        password: str,
        now: datetime,
        context: str,
        extra: Mapping[str, Any],
    ) -> LoginResult:
        users = UsersRepository(session)

        if row.locked_until is not None and row.locked_until > now:
            await self._verify_dummy(password)
            await self._audit_account(
                session,
                row,
                ACTION_LOGIN,
                "failure",
                now,
                details={**extra, "reason": LoginOutcome.LOCKED.value, "context": context},
            )
            return LoginResult(
                LoginOutcome.LOCKED,
                locked_message(row.locked_until, self.zone),
                locked_until=row.locked_until,
            )

        if row.password_hash is None:
            await self._verify_dummy(password)
            await self._audit_account(
                session,
                row,
                ACTION_LOGIN,
                "failure",
                now,
                details={**extra, "reason": LoginOutcome.NO_PASSWORD.value, "context": context},
            )
            return LoginResult(LoginOutcome.NO_PASSWORD, NO_PASSWORD_MESSAGE)

        matches = await self._verify(row.password_hash, password)
        if not matches:
            count = (row.failed_login_count or 0) + 1
            locked_until: datetime | None = None
            if count >= MAX_FAILED_LOGINS:
                locked_until = now + LOCKOUT_DURATION
                count = 0
            row.failed_login_count = count
            if locked_until is not None:
                row.locked_until = locked_until
            await users.save(row)
            await self._audit_account(
                session,
                row,
                ACTION_LOGIN,
                "failure",
                now,
                details={**extra, "reason": LoginOutcome.WRONG_CREDENTIALS.value, "context": context},
            )
            if locked_until is not None:
                await self._audit_account(
                    session,
                    row,
                    ACTION_LOCKOUT,
                    "success",
                    now,
                    details={"failures": MAX_FAILED_LOGINS, "locked_until": locked_until.isoformat()},
                )
                return locked_result(locked_until, self.zone)
            return LoginResult(LoginOutcome.WRONG_CREDENTIALS, WRONG_CREDENTIALS_MESSAGE)

        if not (row.is_active if row.is_active is not None else True):
            await self._audit_account(
                session,
                row,
                ACTION_LOGIN,
                "failure",
                now,
                details={**extra, "reason": LoginOutcome.INACTIVE.value, "context": context},
            )
            return LoginResult(LoginOutcome.INACTIVE, INACTIVE_MESSAGE)

        new_hash: str | None = None
        if self._hasher.check_needs_rehash(row.password_hash):
            new_hash = await self.hash_password(password)
        row.failed_login_count = 0
        row.locked_until = None
        row.last_login = now
        if new_hash is not None:
            row.password_hash = new_hash
        await users.save(row)
        await self._audit_account(
            session,
            row,
            ACTION_LOGIN,
            "success",
            now,
            details={**extra, "context": context, "rehashed": new_hash is not None},
        )
        return LoginResult(LoginOutcome.OK, f"welcome, {row.full_name}", user=UserInfo.from_row(row))

    async def logout(self, user: UserInfo, *, reason: str) -> None:
        """Record that ``user`` logged out (``reason``: ``"user"``, ``"lock_screen"``, ...)."""
        await self._record_session_event(user, ACTION_LOGOUT, {"reason": reason})

    async def screen_locked(self, user: UserInfo, *, idle_minutes: float) -> None:
        """Record that the console locked itself after ``idle_minutes`` minutes without input."""
        await self._record_session_event(user, ACTION_SCREEN_LOCK, {"idle_minutes": idle_minutes})

    async def _record_session_event(self, user: UserInfo, action: str, details: Mapping[str, Any]) -> None:
        now = self.clock()
        async with self.sessions() as session, session.begin():
            await self._audit(
                session,
                action,
                "success",
                now,
                username=user.username,
                tech_id=user.tech_id,
                entity_id=user.tech_id,
                details=details,
            )

    # -- administration ------------------------------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        full_name: str,
        role: str,
        password: str | None,
        actor: Actor,
        *,
        must_change_password: bool = False,
    ) -> UserInfo:
        """Create an account (admin only). ``password`` None creates an account that cannot log in yet;
        with ``must_change_password`` the new user must choose their own password at the first login.

        Raises:
            InvalidAccountDataError, PasswordPolicyError: malformed input.
            DuplicateUserError: the username is taken.
            PermissionDeniedError: the actor is not an admin.
        """
        check_username(username)
        name = check_full_name(full_name)
        check_role(role)
        if password is not None:
            check_password_policy(password, username)
        if not actor.is_admin:
            raise PermissionDeniedError("only an admin can create users")
        password_hash = await self.hash_password(password) if password is not None else None
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            if await users.get_by_username(username) is not None:
                raise DuplicateUserError(f"a user named {username!r} already exists")
            try:
                row = await users.add(
                    TechUser(
                        username=username,
                        full_name=name,
                        role=role,
                        password_hash=password_hash,
                        must_change_password=must_change_password and password_hash is not None,
                        created_date=now,
                        is_active=True,
                        failed_login_count=0,
                    )
                )
            except IntegrityError:
                # Another console added the same name between the check above and this insert.
                raise DuplicateUserError(f"a user named {username!r} already exists") from None
            await self._record_creation(session, row, actor, now, first_admin=False)
            return UserInfo.from_row(row)

    async def create_first_admin(self, username: str, full_name: str, password: str) -> UserInfo:
        """Create the first administrator at first start; refused once an active admin with a password exists.

        The new admin is recorded as the actor of their own creation (there is no one else yet).
        """
        check_username(username)
        name = check_full_name(full_name)
        check_password_policy(password, username)
        password_hash = await self.hash_password(password)
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            if await users.count_active_admins_with_password() > 0:
                raise FirstAdminExistsError("an administrator already exists; log in instead")
            if await users.get_by_username(username) is not None:
                raise DuplicateUserError(f"a user named {username!r} already exists")
            row = await users.add(
                TechUser(
                    username=username,
                    full_name=name,
                    role="admin",
                    password_hash=password_hash,
                    must_change_password=False,
                    created_date=now,
                    is_active=True,
                    failed_login_count=0,
                )
            )
            actor = Actor(terminal=self.terminal, tech_id=row.tech_id, username=row.username, role="admin")
            await self._record_creation(session, row, actor, now, first_admin=True)
            return UserInfo.from_row(row)

    async def _record_creation(
        self, session: AsyncSession, row: TechUser, actor: Actor, now: datetime, *, first_admin: bool
    ) -> None:
        details: dict[str, Any] = {**actor.audit_details(), "created": row.username, "role": row.role}
        details["old"] = {}
        details["new"] = {
            "username": row.username,
            "full_name": row.full_name,
            "role": row.role,
            "is_active": True,
            "has_password": row.password_hash is not None,
            "must_change_password": row.must_change_password,
        }
        if first_admin:
            details["first_admin"] = True
        await self._audit_by(session, actor, ACTION_USER_CREATE, now, row.tech_id, details)
        if row.password_hash is not None:
            await self._audit_change(
                session,
                actor,
                ACTION_PASSWORD_SET,
                now,
                row,
                {"has_password": False, "must_change_password": False},
                {"has_password": True, "must_change_password": row.must_change_password},
            )

    async def set_password(
        self, username: str, password: str, actor: Actor, *, expected: UserInfo | None = None
    ) -> UserInfo:
        """Set ``username``'s password (an admin for anyone, a user for themselves).

        When an admin sets someone else's password, that user must change it at next login. ``expected`` is
        the account as the caller last read it (see :meth:`_current`).
        """
        check_password_policy(password, username)
        own = actor.tech_id is not None and actor.username == username
        if not (own or actor.is_admin):
            raise PermissionDeniedError("only an admin can set another user's password")
        password_hash = await self.hash_password(password)
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await self._current(users, username, expected)
            old = {
                "has_password": row.password_hash is not None,
                "must_change_password": row.must_change_password,
            }
            row.password_hash = password_hash
            row.must_change_password = not own
            await users.save(row)
            new = {"has_password": True, "must_change_password": row.must_change_password}
            await self._audit_change(session, actor, ACTION_PASSWORD_SET, now, row, old, new)
            return UserInfo.from_row(row)

    async def change_full_name(
        self, username: str, full_name: str, actor: Actor, *, expected: UserInfo | None = None
    ) -> UserInfo:
        """Change ``username``'s full name (admin only)."""
        name = check_full_name(full_name)
        _require_admin(actor, "change a user's full name")
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await self._current(users, username, expected)
            if row.full_name == name:
                raise AccountError(f"the full name of {username!r} is already {name!r}")
            old = {"full_name": row.full_name}
            row.full_name = name
            await users.save(row)
            await self._audit_change(
                session, actor, ACTION_FULL_NAME_CHANGE, now, row, old, {"full_name": name}
            )
            return UserInfo.from_row(row)

    async def change_role(
        self, username: str, role: str, actor: Actor, *, expected: UserInfo | None = None
    ) -> UserInfo:
        """Give ``username`` another role (admin only).

        An admin cannot demote their own account, and the last usable admin (active, with a password) is
        never demoted, so the console always keeps someone who can administer it.
        """
        check_role(role)
        _require_admin(actor, "change a user's role")
        if actor.tech_id is not None and actor.username == username and role != "admin":
            raise PermissionDeniedError("an admin cannot demote their own account; another admin must")
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await self._current(users, username, expected)
            if row.role == role:
                raise AccountError(f"{username!r} is already {role}")
            if _usable_admin(row) and await users.count_active_admins_with_password() <= 1:
                raise PermissionDeniedError(
                    f"{username!r} is the last active admin and cannot be demoted; make another admin first"
                )
            old = {"role": row.role}
            row.role = role
            await users.save(row)
            await self._audit_change(session, actor, ACTION_ROLE_CHANGE, now, row, old, {"role": role})
            return UserInfo.from_row(row)

    async def unlock(self, username: str, actor: Actor, *, expected: UserInfo | None = None) -> UserInfo:
        """Clear ``username``'s lockout and failure count (admin only)."""
        _require_admin(actor, "unlock users")
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await self._current(users, username, expected)
            was_locked = row.locked_until.isoformat() if row.locked_until is not None else None
            old = {"locked_until": was_locked, "failed_login_count": row.failed_login_count or 0}
            row.locked_until = None
            row.failed_login_count = 0
            await users.save(row)
            await self._audit_change(
                session,
                actor,
                ACTION_UNLOCK,
                now,
                row,
                old,
                {"locked_until": None, "failed_login_count": 0},
                was_locked_until=was_locked,
            )
            return UserInfo.from_row(row)

    async def deactivate(self, username: str, actor: Actor, *, expected: UserInfo | None = None) -> UserInfo:
        """Deactivate ``username`` (admin only); the account stays in the records but can no longer log in.

        An admin cannot deactivate their own account, so the console is never left without the one who is
        using it; the last usable admin is never deactivated.
        """
        _require_admin(actor, "deactivate users")
        if actor.tech_id is not None and actor.username == username:
            raise PermissionDeniedError("an admin cannot deactivate their own account")
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await self._current(users, username, expected)
            if not _active(row):
                raise AccountError(f"user {username!r} is already inactive")
            if _usable_admin(row) and await users.count_active_admins_with_password() <= 1:
                raise PermissionDeniedError(
                    f"{username!r} is the last active admin and cannot be deactivated; create another first"
                )
            row.is_active = False
            await users.save(row)
            await self._audit_change(
                session, actor, ACTION_DEACTIVATE, now, row, {"is_active": True}, {"is_active": False}
            )
            return UserInfo.from_row(row)

    async def reactivate(self, username: str, actor: Actor, *, expected: UserInfo | None = None) -> UserInfo:
        """Let a deactivated account log in again (admin only); its password, role and lockout are as they
        were when it was deactivated."""
        _require_admin(actor, "reactivate users")
        now = self.clock()
        async with self.sessions() as session, session.begin():
            users = UsersRepository(session)
            row = await self._current(users, username, expected)
            if _active(row):
                raise AccountError(f"user {username!r} is already active")
            row.is_active = True
            await users.save(row)
            await self._audit_change(
                session, actor, ACTION_REACTIVATE, now, row, {"is_active": False}, {"is_active": True}
            )
            return UserInfo.from_row(row)

    # -- internals -------------------------------------------------------------------------------------------

    @staticmethod
    async def _existing(users: UsersRepository, username: str) -> TechUser:
        row = await users.get_by_username(username)
        if row is None:
            raise UnknownUserError(f"no user named {username!r}")
        return row

    @classmethod
    async def _current(cls, users: UsersRepository, username: str, expected: UserInfo | None) -> TechUser:
        """The row of ``username``, read in the caller's transaction. With ``expected`` (the account as a
        screen showed it when the change was asked for), a row changed since by someone else refuses the
        change with what changed, so that two admins never overwrite each other's work unawares."""
        row = await cls._existing(users, username)
        if expected is None:
            return row
        if expected.tech_id != row.tech_id:
            raise ConcurrentChangeError(
                f"{username!r} is no longer the account that was shown; nothing was saved: look again"
            )
        changes = account_changes(expected, UserInfo.from_row(row))
        if changes:
            raise ConcurrentChangeError(
                f"{username!r} was changed meanwhile ({'; '.join(changes)}); nothing was saved: "
                "look at it again and retry"
            )
        return row

    async def _audit_change(
        self,
        session: AsyncSession,
        actor: Actor,
        action: str,
        now: datetime,
        row: TechUser,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        **extra: Any,
    ) -> None:
        """Audit an administrative change of ``row`` with its ``old`` and ``new`` values."""
        details = {**actor.audit_details(), "user": row.username, **extra, "old": dict(old), "new": dict(new)}
        await self._audit_by(session, actor, action, now, row.tech_id, details)

    async def _audit_by(
        self,
        session: AsyncSession,
        actor: Actor,
        action: str,
        now: datetime,
        entity_id: int,
        details: Mapping[str, Any],
    ) -> None:
        await AuditRepository(session).add(
            action,
            "success",
            timestamp=now,
            tech_id=actor.tech_id,
            username=actor.username if actor.username else actor.os_user,
            entity_type=ENTITY_USER,
            entity_id=entity_id,
            terminal=actor.terminal,
            details=dict(details),
        )

    async def _audit_account(
        self,
        session: AsyncSession,
        row: TechUser,
        action: str,
        outcome: str,
        now: datetime,
        *,
        details: Mapping[str, Any],
    ) -> None:
        """Audit an event of the account ``row`` at this service's terminal."""
        await self._audit(
            session,
            action,
            outcome,
            now,
            username=row.username,
            tech_id=row.tech_id,
            entity_id=row.tech_id,
            details=details,
        )

    async def _audit(
        self,
        session: AsyncSession,
        action: str,
        outcome: str,
        now: datetime,
        *,
        username: str,
        details: Mapping[str, Any],
        tech_id: int | None = None,
        entity_id: int | None = None,
    ) -> None:
        await AuditRepository(session).add(
            action,
            outcome,
            timestamp=now,
            tech_id=tech_id,
            username=username,
            entity_type=ENTITY_USER if entity_id is not None else None,
            entity_id=entity_id,
            terminal=self.terminal,
            details=dict(details),
        )
