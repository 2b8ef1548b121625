"""Administering accounts: full name, role, password reset, unlock, deactivate and reactivate.

The last active admin is kept, an admin never demotes or deactivates themselves, every change is audited with
its old and new values, a refusal changes nothing, and a change made meanwhile by someone else refuses the
second one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from account_fixtures import FakeClock
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.accounts import (
    MAX_FAILED_LOGINS,
    AccountError,
    AccountService,
    Actor,
    ConcurrentChangeError,
    DuplicateUserError,
    InvalidAccountDataError,
    PasswordPolicyError,
    PermissionDeniedError,
    UnknownUserError,
    UserInfo,
    account_changes,
)
from storage import AuditLog
from storage.repositories import AuditRepository, UsersRepository

CLI = Actor.command_line("opsadmin", "/dev/pts/9")
PASSWORD = "correct horse"


async def audit_rows(sessions: async_sessionmaker[AsyncSession]) -> list[AuditLog]:
    async with sessions() as session:
        rows = await AuditRepository(session).recent(limit=500)
    return sorted(rows, key=lambda r: r.audit_id)


async def last_audit(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str | None, dict[str, Any]]:
    row = (await audit_rows(sessions))[-1]
    return row.action, row.username, json.loads(row.details or "{}")


async def user(service: AccountService, username: str) -> UserInfo:
    info = await service.get_user(username)
    assert info is not None
    return info


@pytest.fixture
async def people(service: AccountService) -> dict[str, Actor]:
    """Two admins (ada, bob), a technician (tina); the actors of ada and tina at the console."""
    ada = await service.create_user("ada", "Ada Admin", "admin", PASSWORD, CLI)
    await service.create_user("bob", "Bob Admin", "admin", PASSWORD, CLI)
    tina = await service.create_user("tina", "Tina Tech", "technician", PASSWORD, CLI)
    return {"ada": Actor.console_user(ada, "/dev/tty1"), "tina": Actor.console_user(tina, "/dev/tty2")}


async def test_role_change_is_audited_with_old_and_new_role(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    changed = await service.change_role("tina", "engineer", people["ada"])
    assert changed.role == "engineer" and (await user(service, "tina")).role == "engineer"
    action, who, details = await last_audit(sessions)
    assert (action, who) == ("role_change", "ada")
    assert details == {"user": "tina", "old": {"role": "technician"}, "new": {"role": "engineer"}}
    rows = await audit_rows(sessions)
    assert rows[-1].entity_id == changed.tech_id and rows[-1].terminal == "/dev/tty1"


async def test_role_change_refusals_change_nothing(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    before = await audit_rows(sessions)
    with pytest.raises(PermissionDeniedError, match="only an admin can change a user's role"):
        await service.change_role("tina", "admin", people["tina"])
    with pytest.raises(PermissionDeniedError, match="cannot demote their own account"):
        await service.change_role("ada", "technician", people["ada"])
    with pytest.raises(InvalidAccountDataError, match="invalid role 'boss'"):
        await service.change_role("tina", "boss", people["ada"])
    with pytest.raises(AccountError, match="'tina' is already technician"):
        await service.change_role("tina", "technician", people["ada"])
    with pytest.raises(UnknownUserError, match="no user named 'zed'"):
        await service.change_role("zed", "engineer", people["ada"])
    assert (await user(service, "ada")).role == "admin"
    assert (await user(service, "tina")).role == "technician"
    assert len(await audit_rows(sessions)) == len(before)


async def test_the_last_active_admin_is_never_demoted_nor_deactivated(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    await service.deactivate("bob", people["ada"])
    # An admin without a password cannot log in: it does not count as a usable admin.
    await service.create_user("root", "Root Admin", "admin", None, CLI)
    with pytest.raises(PermissionDeniedError, match="'ada' is the last active admin and cannot be demoted"):
        await service.change_role("ada", "engineer", CLI)
    with pytest.raises(
        PermissionDeniedError, match="'ada' is the last active admin and cannot be deactivated"
    ):
        await service.deactivate("ada", CLI)
    assert (await user(service, "ada")).role == "admin" and (await user(service, "ada")).is_active
    # Once another admin can log in again, ada may go.
    await service.reactivate("bob", CLI)
    await service.change_role("ada", "engineer", CLI)
    assert (await user(service, "ada")).role == "engineer"
    with pytest.raises(PermissionDeniedError, match="'bob' is the last active admin"):
        await service.change_role("bob", "technician", CLI)


async def test_an_admin_cannot_deactivate_themselves(
    service: AccountService, people: dict[str, Actor]
) -> None:
    with pytest.raises(PermissionDeniedError, match="cannot deactivate their own account"):
        await service.deactivate("ada", people["ada"])
    assert (await user(service, "ada")).is_active


async def test_deactivate_and_reactivate_are_audited(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    gone = await service.deactivate("tina", people["ada"])
    assert not gone.is_active
    assert (await last_audit(sessions))[2] == {
        "user": "tina",
        "old": {"is_active": True},
        "new": {"is_active": False},
    }
    assert not (await service.login("tina", PASSWORD)).ok
    with pytest.raises(AccountError, match="'tina' is already inactive"):
        await service.deactivate("tina", people["ada"])

    back = await service.reactivate("tina", people["ada"])
    assert back.is_active and (await service.login("tina", PASSWORD)).ok
    rows = await audit_rows(sessions)
    reactivation = next(r for r in reversed(rows) if r.action == "reactivate")
    assert reactivation.username == "ada"
    assert json.loads(reactivation.details or "{}")["old"] == {"is_active": False}
    assert json.loads(reactivation.details or "{}")["new"] == {"is_active": True}
    with pytest.raises(AccountError, match="'tina' is already active"):
        await service.reactivate("tina", people["ada"])
    with pytest.raises(PermissionDeniedError, match="only an admin can reactivate users"):
        await service.reactivate("bob", people["tina"])


async def test_full_name_change_is_checked_and_audited(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    changed = await service.change_full_name("tina", "  Tina [b]Turner[/b]  ", people["ada"])
    assert changed.full_name == "Tina [b]Turner[/b]"
    assert (await last_audit(sessions))[2]["old"] == {"full_name": "Tina Tech"}
    assert (await last_audit(sessions))[2]["new"] == {"full_name": "Tina [b]Turner[/b]"}
    count = len(await audit_rows(sessions))
    with pytest.raises(InvalidAccountDataError, match="must not be empty"):
        await service.change_full_name("tina", "   ", people["ada"])
    with pytest.raises(InvalidAccountDataError, match="control characters"):
        await service.change_full_name("tina", "Tina\x1b[31m", people["ada"])
    with pytest.raises(AccountError, match="already 'Tina \\[b\\]Turner\\[/b\\]'"):
        await service.change_full_name("tina", "Tina [b]Turner[/b]", people["ada"])
    with pytest.raises(PermissionDeniedError):
        await service.change_full_name("bob", "Robert", people["tina"])
    assert len(await audit_rows(sessions)) == count
    assert (await user(service, "tina")).full_name == "Tina [b]Turner[/b]"


async def test_password_reset_by_an_admin_must_be_changed_and_follows_the_policy(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    with pytest.raises(PasswordPolicyError, match="at least 8 characters"):
        await service.set_password("tina", "short", people["ada"])
    with pytest.raises(PasswordPolicyError, match="must not contain control characters"):
        await service.set_password("tina", "pass\tword 1", people["ada"])
    assert not (await user(service, "tina")).must_change_password
    reset = await service.set_password("tina", "given password 1", people["ada"])
    assert reset.must_change_password
    result = await service.login("tina", "given password 1")
    assert result.ok and result.user is not None and result.user.must_change_password
    assert (await audit_rows(sessions))[-2].action == "password_set"
    details = json.loads((await audit_rows(sessions))[-2].details or "{}")
    assert details["old"] == {"has_password": True, "must_change_password": False}
    assert details["new"] == {"has_password": True, "must_change_password": True}
    assert "given password 1" not in json.dumps(details)


async def test_unlock_records_the_lockout_it_cleared(
    service: AccountService, sessions: async_sessionmaker[AsyncSession], people: dict[str, Actor]
) -> None:
    for _ in range(MAX_FAILED_LOGINS):
        await service.login("tina", "wrong password")
    locked = await user(service, "tina")
    assert locked.locked_until is not None
    await service.unlock("tina", people["ada"], expected=locked)
    _, who, details = await last_audit(sessions)
    assert who == "ada"
    assert details["old"] == {"locked_until": locked.locked_until.isoformat(), "failed_login_count": 0}
    assert details["new"] == {"locked_until": None, "failed_login_count": 0}
    assert (await service.login("tina", PASSWORD)).ok


async def test_an_account_created_at_the_console_must_change_its_password(
    service: AccountService, people: dict[str, Actor]
) -> None:
    made = await service.create_user(
        "tom", "Tom Tech", "technician", "first pass 1", people["ada"], must_change_password=True
    )
    assert made.must_change_password
    # Without a password there is nothing to change yet.
    empty = await service.create_user(
        "eve", "Eve", "engineer", None, people["ada"], must_change_password=True
    )
    assert not empty.must_change_password


async def test_a_second_admin_is_refused_with_what_changed(
    service: AccountService,
    sessions: async_sessionmaker[AsyncSession],
    people: dict[str, Actor],
    clock: FakeClock,
) -> None:
    bob = Actor.console_user(await user(service, "bob"), "/dev/tty3")
    seen_by_ada = await user(service, "tina")
    seen_by_bob = await user(service, "tina")
    await service.change_role("tina", "engineer", bob, expected=seen_by_bob)
    count = len(await audit_rows(sessions))

    with pytest.raises(ConcurrentChangeError) as refused:
        await service.change_full_name("tina", "Tina Turner", people["ada"], expected=seen_by_ada)
    message = str(refused.value)
    assert message == (
        "'tina' was changed meanwhile (role: 'technician' -> 'engineer'); nothing was saved: "
        "look at it again and retry"
    )
    assert "\n" not in message
    for change in (
        service.change_role("tina", "admin", people["ada"], expected=seen_by_ada),
        service.set_password("tina", "another pass 1", people["ada"], expected=seen_by_ada),
        service.unlock("tina", people["ada"], expected=seen_by_ada),
        service.deactivate("tina", people["ada"], expected=seen_by_ada),
    ):
        with pytest.raises(ConcurrentChangeError, match="role: 'technician' -> 'engineer'"):
            await change
    now = await user(service, "tina")
    assert (now.full_name, now.role, now.is_active) == ("Tina Tech", "engineer", True)
    assert (await service.login("tina", PASSWORD)).ok
    assert len(await audit_rows(sessions)) == count + 1  # only the login

    # With what it reads now, the same change goes through.
    fresh = await user(service, "tina")
    await service.change_full_name("tina", "Tina Turner", people["ada"], expected=fresh)
    assert (await user(service, "tina")).full_name == "Tina Turner"


async def test_a_password_reset_twice_is_noticed(service: AccountService, people: dict[str, Actor]) -> None:
    bob = Actor.console_user(await user(service, "bob"), "/dev/tty3")
    await service.set_password("tina", "first given 1", bob)
    seen_by_ada = await user(service, "tina")
    await service.set_password("tina", "second given 1", bob)
    with pytest.raises(ConcurrentChangeError, match=r"\(password: set again\)"):
        await service.set_password("tina", "third given 1", people["ada"], expected=seen_by_ada)
    assert (await service.login("tina", "second given 1")).ok


async def test_a_login_is_not_an_edit(service: AccountService, people: dict[str, Actor]) -> None:
    seen = await user(service, "tina")
    assert (await service.login("tina", PASSWORD)).ok
    await service.login("tina", "wrong once")
    assert account_changes(seen, await user(service, "tina")) == []
    await service.change_role("tina", "engineer", people["ada"], expected=seen)


async def test_a_lockout_meanwhile_is_a_change_shown_in_the_refusal(
    service: AccountService, people: dict[str, Actor]
) -> None:
    seen = await user(service, "tina")
    for _ in range(MAX_FAILED_LOGINS):
        await service.login("tina", "wrong password")
    with pytest.raises(ConcurrentChangeError, match=r"locked until: none -> 2026-03-14 09:45 UTC"):
        await service.deactivate("tina", people["ada"], expected=seen)


async def test_the_same_name_added_at_once_from_two_consoles_is_refused_cleanly(
    service: AccountService, people: dict[str, Actor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other console's insert lands between this one's check for the name and its own insert.
    async def not_seen(self: UsersRepository, username: str) -> None:
        return None

    monkeypatch.setattr(UsersRepository, "get_by_username", not_seen)
    with pytest.raises(DuplicateUserError, match="a user named 'tina' already exists"):
        await service.create_user("tina", "Tina Two", "technician", PASSWORD, people["ada"])
    monkeypatch.undo()
    assert [u.full_name for u in await service.list_users() if u.username == "tina"] == ["Tina Tech"]
