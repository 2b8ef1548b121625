"""Accounts: hashing, password policy, lockout, unlock, refused and unknown accounts, the audit trail."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from account_fixtures import TERMINAL, FakeClock
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.accounts import (
    INACTIVE_MESSAGE,
    LOCKOUT_DURATION,
    MAX_FAILED_LOGINS,
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
    PasswordPolicyError,
    PermissionDeniedError,
    UnknownUserError,
    UserInfo,
    check_password_policy,
)
from control.clock import format_local_hm
from storage import AuditLog, TechUser, probe
from storage.repositories import AuditRepository, UsersRepository

CLI = Actor.command_line("opsadmin", "/dev/pts/9")
PASSWORD = "correct horse"


async def audit_rows(sessions: async_sessionmaker[AsyncSession]) -> list[AuditLog]:
    async with sessions() as session:
        rows = await AuditRepository(session).recent(limit=500)
    return sorted(rows, key=lambda r: r.audit_id)


async def stored_user(sessions: async_sessionmaker[AsyncSession], username: str) -> TechUser:
    async with sessions() as session:
        row = await UsersRepository(session).get_by_username(username)
    assert row is not None
    return row


async def make_user(
    service: AccountService, username: str = "tina", role: str = "technician", password: str | None = PASSWORD
) -> UserInfo:
    return await service.create_user(username, "Tina Tech", role, password, CLI)


# -- hashing -------------------------------------------------------------------------------------------------


async def test_password_is_stored_as_argon2id_and_verifies(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await make_user(service)
    row = await stored_user(sessions, "tina")
    assert row.password_hash is not None
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert (await service.login("tina", PASSWORD)).ok
    assert not (await service.login("tina", PASSWORD + "x")).ok


async def test_hash_is_rehashed_at_login_when_parameters_change(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    await make_user(service)
    old_hash = (await stored_user(sessions, "tina")).password_hash
    assert old_hash is not None and ",t=1," in old_hash

    stronger = HashingParameters(time_cost=2, memory_cost_kib=16, parallelism=1)
    upgraded = AccountService(sessions=sessions, terminal=TERMINAL, clock=clock, hashing=stronger)
    assert (await upgraded.login("tina", PASSWORD)).ok
    new_hash = (await stored_user(sessions, "tina")).password_hash
    assert new_hash is not None and new_hash != old_hash
    assert "m=16,t=2,p=1" in new_hash
    assert not stronger.hasher().check_needs_rehash(new_hash)
    assert stronger.hasher().verify(new_hash, PASSWORD)

    # A second login with the same parameters leaves the hash alone.
    assert (await upgraded.login("tina", PASSWORD)).ok
    assert (await stored_user(sessions, "tina")).password_hash == new_hash
    logins = [r for r in await audit_rows(sessions) if r.action == "login" and r.outcome == "success"]
    assert [json.loads(r.details or "{}")["rehashed"] for r in logins] == [True, False]


async def test_hashing_runs_off_the_event_loop_thread(
    service: AccountService, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real_hash = PasswordHasher.hash

    def spy(self: PasswordHasher, password: str | bytes, **kwargs: Any) -> str:
        threads.append(threading.current_thread())
        return real_hash(self, password, **kwargs)

    monkeypatch.setattr(PasswordHasher, "hash", spy)
    await make_user(service)
    assert threads and all(t is not threading.main_thread() for t in threads)


def test_default_hashing_parameters_are_rfc9106_low_memory() -> None:
    params = HashingParameters()
    assert (params.time_cost, params.memory_cost_kib, params.parallelism) == (3, 65536, 4)
    with pytest.raises(ValueError, match="time_cost must be an integer from 1 to 20, not 0"):
        HashingParameters(time_cost=0)
    with pytest.raises(ValueError, match="memory_cost_kib"):
        HashingParameters(memory_cost_kib=4)
    with pytest.raises(ValueError, match="parallelism"):
        HashingParameters(parallelism=True)


# -- password policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("", "at least 8 characters (it has 0)"),
        ("short7c", "at least 8 characters (it has 7)"),
        ("x" * 257, "at most 256 characters"),
        ("tab\tinside", "control characters"),
        ("        ", "only spaces"),
        ("TINA.NURSE", "differ from the username"),
    ],
)
def test_password_policy_refuses_with_a_specific_reason(password: str, reason: str) -> None:
    with pytest.raises(PasswordPolicyError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_password_policy(password, "tina.nurse")


def test_password_policy_accepts_eight_characters() -> None:
    check_password_policy("abcdefgh", "tina")
    check_password_policy("a longer pass phrase with spaces", "tina")


async def test_short_password_changes_nothing(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    with pytest.raises(PasswordPolicyError, match="at least 8"):
        await make_user(service, password="seven77")
    assert await service.list_users() == []
    assert await audit_rows(sessions) == []


@pytest.mark.parametrize(
    ("username", "full_name", "role", "error"),
    [
        ("Tina", "Tina Tech", "technician", "invalid username"),
        ("t", "Tina Tech", "technician", "invalid username"),
        ("tina", "   ", "technician", "full name must not be empty"),
        ("tina", "Tina Tech", "surgeon", "invalid role 'surgeon'"),
    ],
)
async def test_bad_account_data_is_refused(
    service: AccountService, username: str, full_name: str, role: str, error: str
) -> None:
    with pytest.raises(InvalidAccountDataError, match=error):
        await service.create_user(username, full_name, role, PASSWORD, CLI)
    assert await service.list_users() == []


async def test_duplicate_username_is_refused(service: AccountService) -> None:
    await make_user(service)
    with pytest.raises(DuplicateUserError, match="already exists"):
        await make_user(service)


# -- lockout -------------------------------------------------------------------------------------------------


async def test_five_failures_lock_for_fifteen_minutes_then_expire(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    await make_user(service)
    for attempt in range(1, MAX_FAILED_LOGINS):
        result = await service.login("tina", f"wrong-{attempt}")
        assert result.outcome is LoginOutcome.WRONG_CREDENTIALS
        assert result.message == WRONG_CREDENTIALS_MESSAGE
    # The failure that locks the account says so at once.
    locked_at = clock.now
    result = await service.login("tina", "wrong-5")
    assert result.outcome is LoginOutcome.LOCKED
    assert result.message == (
        f"{WRONG_CREDENTIALS_MESSAGE}; 5 failures: account locked until "
        f"{format_local_hm(locked_at + LOCKOUT_DURATION)}"
    )
    row = await stored_user(sessions, "tina")
    assert row.locked_until == locked_at + LOCKOUT_DURATION == locked_at + timedelta(minutes=15)

    # Even the right password is refused while locked, and the message says until when (local time).
    clock.advance(timedelta(minutes=14, seconds=59))
    result = await service.login("tina", PASSWORD)
    assert result.outcome is LoginOutcome.LOCKED
    assert result.message == f"account locked until {format_local_hm(locked_at + LOCKOUT_DURATION)}"
    assert result.user is None

    clock.advance(timedelta(seconds=1))
    result = await service.login("tina", PASSWORD)
    assert result.ok, result.message
    row = await stored_user(sessions, "tina")
    assert row.failed_login_count == 0 and row.locked_until is None and row.last_login == clock.now


async def test_success_resets_the_failure_count(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await make_user(service)
    for _ in range(MAX_FAILED_LOGINS - 1):
        await service.login("tina", "wrong password")
    assert (await stored_user(sessions, "tina")).failed_login_count == MAX_FAILED_LOGINS - 1
    assert (await service.login("tina", PASSWORD)).ok
    for _ in range(MAX_FAILED_LOGINS - 1):
        await service.login("tina", "wrong password")
    assert (await service.login("tina", PASSWORD)).ok


async def test_admin_unlocks_a_locked_account(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tina = await make_user(service)
    for _ in range(MAX_FAILED_LOGINS):
        await service.login("tina", "wrong password")
    assert (await service.login("tina", PASSWORD)).outcome is LoginOutcome.LOCKED

    technician = Actor.console_user(tina, "/dev/tty1")
    with pytest.raises(PermissionDeniedError):
        await service.unlock("tina", technician)
    with pytest.raises(UnknownUserError, match="no user named 'nobody'"):
        await service.unlock("nobody", CLI)

    info = await service.unlock("tina", CLI)
    assert info.locked_until is None and info.failed_login_count == 0
    assert (await service.login("tina", PASSWORD)).ok


# -- refused accounts ----------------------------------------------------------------------------------------


async def test_account_without_password_cannot_log_in(service: AccountService) -> None:
    info = await make_user(service, password=None)
    assert not info.has_password
    result = await service.login("tina", "anything at all")
    assert result.outcome is LoginOutcome.NO_PASSWORD
    assert result.message == NO_PASSWORD_MESSAGE == "no password set; ask an admin"

    await service.set_password("tina", PASSWORD, CLI)
    result = await service.login("tina", PASSWORD)
    assert result.ok and result.user is not None and result.user.must_change_password


async def test_deactivated_account_cannot_log_in(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await make_user(service)
    await service.deactivate("tina", CLI)
    assert not (await stored_user(sessions, "tina")).is_active
    right = await service.login("tina", PASSWORD)
    assert right.outcome is LoginOutcome.INACTIVE and right.message == INACTIVE_MESSAGE and right.user is None
    # Without the right password an inactive account answers like any wrong password.
    wrong = await service.login("tina", "not the password")
    assert wrong.outcome is LoginOutcome.WRONG_CREDENTIALS
    with pytest.raises(AccountError, match="already inactive"):
        await service.deactivate("tina", CLI)


async def test_last_admin_cannot_be_deactivated(service: AccountService) -> None:
    admin = await service.create_first_admin("ada", "Ada Admin", PASSWORD)
    with pytest.raises(PermissionDeniedError, match="own account"):
        await service.deactivate("ada", Actor.console_user(admin, "/dev/tty1"))
    with pytest.raises(PermissionDeniedError, match="last active admin"):
        await service.deactivate("ada", CLI)
    await service.create_user("bob", "Bob Admin", "admin", "another pass", CLI)
    await service.deactivate("ada", CLI)


# -- unknown users -------------------------------------------------------------------------------------------


async def test_unknown_user_is_indistinguishable_from_wrong_password(
    service: AccountService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_user(service)
    verified: list[str] = []
    real_verify = PasswordHasher.verify

    def spy(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        verified.append(str(hash))
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    wrong = await service.login("tina", "wrong password")
    unknown = await service.login("nobody", "wrong password")
    assert (wrong.outcome, wrong.message) == (unknown.outcome, unknown.message)
    assert wrong.message == WRONG_CREDENTIALS_MESSAGE
    # Each attempt cost exactly one argon2id verification with the same parameters.
    assert len(verified) == 2
    assert verified[0].split("$")[1:4] == verified[1].split("$")[1:4]


async def test_unknown_user_locks_out_like_a_real_one(service: AccountService, clock: FakeClock) -> None:
    await make_user(service)
    real = [await service.login("tina", "wrong password") for _ in range(MAX_FAILED_LOGINS + 1)]
    ghost = [await service.login("ghost", "wrong password") for _ in range(MAX_FAILED_LOGINS + 1)]
    assert [r.message for r in real] == [r.message for r in ghost]
    assert ghost[-1].outcome is LoginOutcome.LOCKED
    clock.advance(LOCKOUT_DURATION)
    assert (await service.login("ghost", "wrong password")).outcome is LoginOutcome.WRONG_CREDENTIALS


# -- first administrator -------------------------------------------------------------------------------------


async def test_first_admin_only_while_no_usable_admin_exists(service: AccountService, db_path: Path) -> None:
    # The console's plain query before its database is open (storage.probe) gives the same answer each time.
    assert await service.needs_first_admin()
    assert probe.needs_first_admin(db_path) is True
    # An admin without a password does not count: nobody could log in as them.
    await service.create_user("root", "Root Admin", "admin", None, CLI)
    assert await service.needs_first_admin()
    assert probe.needs_first_admin(db_path) is True
    admin = await service.create_first_admin("ada", "Ada Admin", PASSWORD)
    assert admin.role == "admin" and admin.has_password and admin.is_active
    assert not await service.needs_first_admin()
    assert probe.needs_first_admin(db_path) is False
    with pytest.raises(FirstAdminExistsError):
        await service.create_first_admin("eve", "Eve Admin", PASSWORD)
    assert [u.username for u in await service.list_users()] == ["ada", "root"]


# -- audit trail ---------------------------------------------------------------------------------------------


async def test_every_account_event_is_audited_with_terminal_and_outcome(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    admin = await service.create_first_admin("ada", "Ada Admin", PASSWORD)
    console_admin = Actor.console_user(admin, "/dev/tty1")
    await service.create_user("tina", "Tina Tech", "technician", None, console_admin)
    await service.set_password("tina", PASSWORD, CLI)
    await service.login("tina", PASSWORD)
    await service.login("nobody", PASSWORD)
    for _ in range(MAX_FAILED_LOGINS):
        await service.login("tina", "wrong password")
    await service.unlock("tina", CLI)
    await service.deactivate("tina", console_admin)

    rows = [
        (r.action, r.outcome, r.terminal, r.username, json.loads(r.details or "{}"))
        for r in await audit_rows(sessions)
    ]
    summary = [(a, o, t, u) for a, o, t, u, _ in rows]
    assert summary == [
        ("user_create", "success", TERMINAL, "ada"),
        ("password_set", "success", TERMINAL, "ada"),
        ("user_create", "success", "/dev/tty1", "ada"),
        ("password_set", "success", "/dev/pts/9", "opsadmin"),
        ("login", "success", TERMINAL, "tina"),
        ("login", "failure", TERMINAL, "nobody"),
        *[("login", "failure", TERMINAL, "tina")] * MAX_FAILED_LOGINS,
        ("lockout", "success", TERMINAL, "tina"),
        ("unlock", "success", "/dev/pts/9", "opsadmin"),
        ("deactivate", "success", "/dev/tty1", "ada"),
    ]
    details = [d for *_, d in rows]
    assert details[0]["first_admin"] is True
    assert details[3] == {
        "os_user": "opsadmin",
        "user": "tina",
        "old": {"has_password": False, "must_change_password": False},
        "new": {"has_password": True, "must_change_password": True},
    }
    assert details[5]["reason"] == "unknown_user"
    assert details[6]["reason"] == "wrong_credentials"
    assert details[-2]["os_user"] == "opsadmin" and details[-2]["was_locked_until"] is not None
    tina = await stored_user(sessions, "tina")
    assert all(r.entity_id == tina.tech_id for r in (await audit_rows(sessions))[-3:])


async def test_refused_logins_are_audited_with_their_reason(
    service: AccountService, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await make_user(service, "nopass", password=None)
    await make_user(service, "gone")
    await service.deactivate("gone", CLI)
    await service.login("nopass", PASSWORD)
    await service.login("gone", PASSWORD)
    reasons = [
        (r.username, json.loads(r.details or "{}")["reason"])
        for r in await audit_rows(sessions)
        if r.action == "login"
    ]
    assert reasons == [("nopass", "no_password"), ("gone", "inactive")]


def test_the_plain_query_says_it_cannot_tell_rather_than_guess(tmp_path: Path) -> None:
    assert probe.needs_first_admin(tmp_path / "absent.db") is True  # a new install: first run
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database " * 100)
    assert probe.needs_first_admin(damaged) is None
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert probe.needs_first_admin(empty) is None  # no schema yet: the upgrade must run first
    assert not list(tmp_path.glob("*-wal")) and damaged.read_bytes() == b"not a database " * 100
