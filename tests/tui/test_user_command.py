"""``tosca user add | list | unlock | deactivate`` through the real entry point, with stdin supplied."""

from __future__ import annotations

import asyncio
import getpass
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from control.accounts import MAX_FAILED_LOGINS, AccountService, LoginOutcome, LoginResult
from control.clock import format_local
from control.terminal import detect_terminal
from storage import AuditLog, create_engine, session_factory
from storage.repositories import AuditRepository
from tui.cli import main
from tui.commands.user import format_user_table


class TtyInput(io.StringIO):
    """Standard input that claims to be a terminal (the password is then asked with getpass)."""

    def isatty(self) -> bool:
        return True


def tosca(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main([*argv, "--data-dir", "data"])


def add_tina(monkeypatch: pytest.MonkeyPatch, password: str = "tina password 1") -> int:
    return tosca(
        monkeypatch,
        "user",
        "add",
        "--username",
        "tina",
        "--full-name",
        "Tina Tech",
        "--role",
        "technician",
        stdin=password + "\n",
    )


async def _login(db: Path, username: str, password: str, times: int = 1) -> LoginResult:
    engine = create_engine(db)
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="/dev/tty1")
        result = await accounts.login(username, password)
        for _ in range(times - 1):
            result = await accounts.login(username, password)
        return result
    finally:
        await engine.dispose()


async def _audit(db: Path) -> list[AuditLog]:
    engine = create_engine(db)
    try:
        async with session_factory(engine)() as session:
            rows = await AuditRepository(session).recent(limit=100)
    finally:
        await engine.dispose()
    return sorted(rows, key=lambda r: r.audit_id)


def login(data_dir: Path, username: str, password: str, times: int = 1) -> LoginResult:
    return asyncio.run(_login(data_dir / "tosca.db", username, password, times))


def audit(data_dir: Path) -> list[AuditLog]:
    return asyncio.run(_audit(data_dir / "tosca.db"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()


def test_add_reads_the_password_from_stdin_and_audits_the_os_user(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    assert capsys.readouterr().out == "user tina added (technician)\n"
    assert login(data_dir, "tina", "tina password 1").ok
    rows = audit(data_dir)
    created = [r for r in rows if r.action in ("user_create", "password_set")]
    assert [(r.action, r.outcome, r.tech_id) for r in created] == [
        ("user_create", "success", None),
        ("password_set", "success", None),
    ]
    details = json.loads(created[0].details or "{}")
    assert details["os_user"] == getpass.getuser() == created[0].username
    assert created[0].terminal == detect_terminal()


def test_add_with_a_short_password_is_refused_and_changes_nothing(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch, password="short") == 1
    assert one_error_line(capsys) == "tosca: the password must have at least 8 characters (it has 5)"
    assert tosca(monkeypatch, "user", "list") == 0
    assert "tina" not in capsys.readouterr().out
    assert audit(data_dir) == []


def test_add_without_a_password_on_stdin_is_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tosca(monkeypatch, "user", "add", "--username", "tina", "--full-name", "T", "--role", "admin") == 1
    assert one_error_line(capsys) == "tosca: no password on standard input (give it as one line)"


def test_on_a_terminal_the_password_is_asked_twice(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["first password", "other password", "same password", "same password"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "", stream: Any = None) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    argv = ["user", "add", "--username", "tina", "--full-name", "Tina Tech", "--role", "engineer"]
    monkeypatch.setattr("sys.stdin", TtyInput(""))
    assert main([*argv, "--data-dir", "data"]) == 1
    assert one_error_line(capsys) == "tosca: the two passwords differ"
    assert main([*argv, "--data-dir", "data"]) == 0
    assert prompts == ["Password: ", "Repeat password: "] * 2
    assert login(data_dir, "tina", "same password").ok


def test_duplicate_and_malformed_users_are_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    capsys.readouterr()
    assert add_tina(monkeypatch) == 1
    assert one_error_line(capsys) == "tosca: a user named 'tina' already exists"
    code = tosca(
        monkeypatch,
        "user",
        "add",
        "--username",
        "Bad Name",
        "--full-name",
        "B",
        "--role",
        "admin",
        stdin="good password\n",
    )
    assert code == 1
    assert one_error_line(capsys).startswith("tosca: invalid username 'Bad Name'")


def test_unknown_role_and_password_option_are_usage_errors(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for extra in (["--role", "surgeon"], ["--role", "admin", "--password", "secret123"]):
        with pytest.raises(SystemExit) as exit_info:
            tosca(monkeypatch, "user", "add", "--username", "x1", "--full-name", "X", *extra)
        assert exit_info.value.code == 2


def test_list_shows_the_table(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    assert login(data_dir, "tina", "tina password 1").ok
    capsys.readouterr()
    assert tosca(monkeypatch, "user", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "USERNAME",
        "FULL",
        "NAME",
        "ROLE",
        "ACTIVE",
        "LOCKED",
        "UNTIL",
        "LAST",
        "LOGIN",
    ]
    assert lines[1].split()[:6] == ["tina", "Tina", "Tech", "technician", "yes", "-"]
    assert len(lines) == 2


def test_table_formats_lockouts_and_missing_logins() -> None:
    from datetime import datetime, timedelta

    from control.accounts import UserInfo

    now = datetime(2026, 3, 14, 9, 0)
    locked = UserInfo(
        tech_id=1,
        username="ada",
        full_name="Ada Admin",
        role="admin",
        is_active=True,
        has_password=True,
        must_change_password=False,
        failed_login_count=0,
        locked_until=now + timedelta(minutes=15),
        last_login=None,
        created_date=now,
    )
    table = format_user_table([locked], now).splitlines()
    assert format_local(now + timedelta(minutes=15)) in table[1]
    assert table[1].endswith("never")
    assert table[0].index("ROLE") == table[1].index("admin")


def test_unlock_clears_a_lockout(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    assert login(data_dir, "tina", "wrong password", times=MAX_FAILED_LOGINS).outcome is LoginOutcome.LOCKED
    assert login(data_dir, "tina", "tina password 1").outcome is LoginOutcome.LOCKED
    capsys.readouterr()
    assert tosca(monkeypatch, "user", "unlock", "tina") == 0
    assert capsys.readouterr().out == "user tina unlocked\n"
    assert login(data_dir, "tina", "tina password 1").ok
    assert tosca(monkeypatch, "user", "unlock", "bob") == 1
    assert one_error_line(capsys) == "tosca: no user named 'bob'"
    unlocks = [r for r in audit(data_dir) if r.action == "unlock"]
    assert len(unlocks) == 1 and json.loads(unlocks[0].details or "{}")["os_user"] == getpass.getuser()


def test_deactivate_stops_logins(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    assert tosca(monkeypatch, "user", "deactivate", "tina") == 0
    assert capsys.readouterr().out.endswith("user tina deactivated\n")
    assert login(data_dir, "tina", "tina password 1").outcome is LoginOutcome.INACTIVE
    assert tosca(monkeypatch, "user", "deactivate", "tina") == 1
    assert one_error_line(capsys) == "tosca: user 'tina' is already inactive"


def test_missing_database_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tosca(monkeypatch, "user", "list") == 1
    assert one_error_line(capsys) == "tosca: no database in data; run 'tosca db upgrade' first"


def test_the_user_command_does_not_load_textual() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tui, tui.cli\n"
        "tui.cli.build_parser()\n"
        "import tui.commands.user\n"
        "print(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_set_password_lets_the_seeds_password_less_admin_log_in(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The schema document's initialisation script creates an admin with no password at all.
    with sqlite3.connect(data_dir / "tosca.db") as db:
        db.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES "
            "('admin', 'System Administrator', 'admin');"
        )
    assert login(data_dir, "admin", "anything at all").outcome is LoginOutcome.NO_PASSWORD

    assert tosca(monkeypatch, "user", "set-password", "admin", stdin="short\n") == 1
    assert one_error_line(capsys) == "tosca: the password must have at least 8 characters (it has 5)"
    assert login(data_dir, "admin", "short").outcome is LoginOutcome.NO_PASSWORD

    assert tosca(monkeypatch, "user", "set-password", "admin", stdin="a new admin password\n") == 0
    assert capsys.readouterr().out == "password of admin set; it must be changed at the next login\n"
    result = login(data_dir, "admin", "a new admin password")
    assert result.outcome is LoginOutcome.OK
    assert result.user is not None and result.user.must_change_password
    rows = [row for row in audit(data_dir) if row.action == "password_set"]
    assert len(rows) == 1 and rows[0].outcome == "success"
    assert json.loads(rows[0].details or "{}")["os_user"] == getpass.getuser()

    assert tosca(monkeypatch, "user", "set-password", "nobody", stdin="a long password\n") == 1
    assert "nobody" in one_error_line(capsys)


def add_admin(monkeypatch: pytest.MonkeyPatch, username: str) -> int:
    return tosca(
        monkeypatch,
        "user",
        "add",
        "--username",
        username,
        "--full-name",
        f"{username.title()} Admin",
        "--role",
        "admin",
        stdin="admin password 1\n",
    )


def test_role_changes_a_users_role_and_audits_old_and_new(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    capsys.readouterr()
    assert tosca(monkeypatch, "user", "role", "tina", "engineer") == 0
    assert capsys.readouterr().out == "user tina is now engineer (was technician)\n"
    result = login(data_dir, "tina", "tina password 1")
    assert result.user is not None and result.user.role == "engineer"
    changes = [r for r in audit(data_dir) if r.action == "role_change"]
    assert len(changes) == 1 and changes[0].username == getpass.getuser()
    details = json.loads(changes[0].details or "{}")
    assert (details["old"], details["new"]) == ({"role": "technician"}, {"role": "engineer"})
    assert details["user"] == "tina" and details["os_user"] == getpass.getuser()


def test_role_refusals_say_why_in_one_line_and_change_nothing(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_admin(monkeypatch, "ada") == 0
    assert add_tina(monkeypatch) == 0
    capsys.readouterr()
    before = len(audit(data_dir))
    assert tosca(monkeypatch, "user", "role", "ada", "technician") == 1
    assert one_error_line(capsys) == (
        "tosca: 'ada' is the last active admin and cannot be demoted; make another admin first"
    )
    assert tosca(monkeypatch, "user", "role", "tina", "technician") == 1
    assert one_error_line(capsys) == "tosca: 'tina' is already technician"
    assert tosca(monkeypatch, "user", "role", "nobody", "admin") == 1
    assert one_error_line(capsys) == "tosca: no user named 'nobody'"
    assert len(audit(data_dir)) == before
    assert tosca(monkeypatch, "user", "list") == 0
    listed = capsys.readouterr().out
    assert any(line.split()[:1] == ["ada"] and " admin " in line for line in listed.splitlines())

    # With a second admin, ada may be demoted.
    assert add_admin(monkeypatch, "bob") == 0
    assert tosca(monkeypatch, "user", "role", "ada", "engineer") == 0
    assert capsys.readouterr().out.endswith("user ada is now engineer (was admin)\n")


def test_role_usage_errors_exit_2(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (["user", "role", "tina", "surgeon"], ["user", "role", "tina"], ["user", "reactivate"]):
        with pytest.raises(SystemExit) as exit_info:
            tosca(monkeypatch, *argv)
        assert exit_info.value.code == 2


def test_reactivate_lets_a_deactivated_user_log_in_again(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_tina(monkeypatch) == 0
    assert tosca(monkeypatch, "user", "reactivate", "tina") == 1
    assert one_error_line(capsys) == "tosca: user 'tina' is already active"
    assert tosca(monkeypatch, "user", "deactivate", "tina") == 0
    assert login(data_dir, "tina", "tina password 1").outcome is LoginOutcome.INACTIVE
    capsys.readouterr()
    assert tosca(monkeypatch, "user", "reactivate", "tina") == 0
    assert capsys.readouterr().out == "user tina reactivated\n"
    assert login(data_dir, "tina", "tina password 1").ok
    rows = [r for r in audit(data_dir) if r.action == "reactivate"]
    assert len(rows) == 1
    details = json.loads(rows[0].details or "{}")
    assert (details["old"], details["new"]) == ({"is_active": False}, {"is_active": True})
    assert tosca(monkeypatch, "user", "reactivate", "nobody") == 1
    assert one_error_line(capsys) == "tosca: no user named 'nobody'"


def test_the_last_active_admin_cannot_be_deactivated_from_the_command_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_admin(monkeypatch, "ada") == 0
    capsys.readouterr()
    assert tosca(monkeypatch, "user", "deactivate", "ada") == 1
    assert one_error_line(capsys) == (
        "tosca: 'ada' is the last active admin and cannot be deactivated; create another first"
    )
    assert login(data_dir, "ada", "admin password 1").ok
