"""``tosca protocol list | import | submit | approve | reject | retire`` through the real entry point on a
migrated database: an import stored as a draft, approval by a second admin with the password on stdin, each
refusal (exit 1 with the reason, nothing changed, audited) and usage errors (exit 2)."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import ADMIN_PASSWORD, CLI, DATA_DIR, TECH_PASSWORD, seed
from protocol_library_fixtures import library_audits

from control.accounts import AccountService
from storage import create_engine, session_factory
from tests.support import CHEAP
from tui.cli import main

BOB_PASSWORD = "bob password 1"
NAME = "Gentle 2 W"


def tosca(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main([*argv, "--data-dir", str(DATA_DIR)])


def protocol_file(path: Path, power_w: float = 2.0, **extra: Any) -> Path:
    step = {
        "step_number": 1,
        "duration_seconds": 20,
        "power_start_watts": power_w,
        "power_end_watts": power_w,
        "ring_size_mm": 3.0,
        "ramp_type": "constant",
    }
    body = {
        "version": "1.0",
        "steps": [step],
        "safety_limits": {"max_power_watts": 8.0, "max_duration_seconds": 600},
        **extra,
    }
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def versions() -> list[tuple[Any, ...]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(
            db.execute(
                "SELECT p.protocol_name, v.version, v.status FROM protocol_versions v "
                "JOIN protocols p USING (protocol_id) ORDER BY v.version_id"
            )
        )


@pytest.fixture
def people(data_dir: Path) -> None:
    """ada and bob (admins) and tina (technician)."""

    async def run() -> None:
        await seed()
        engine = create_engine(DATA_DIR / "tosca.db")
        try:
            service = AccountService(sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP)
            await service.create_user("bob", "Bob Admin", "admin", BOB_PASSWORD, CLI)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_import_then_a_second_admin_approves_and_the_list_shows_it(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = protocol_file(tmp_path / "gentle.json")
    argv = ("protocol", "import", str(file), "--name", NAME, "--user", "ada")
    assert tosca(monkeypatch, *argv, stdin=ADMIN_PASSWORD + "\n") == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{NAME} v1: stored as a draft (new protocol, constant)"
    assert versions() == [(NAME, 1, "draft")]
    code = tosca(
        monkeypatch, "protocol", "approve", NAME, "--version", "1", "--user", "ada", stdin=ADMIN_PASSWORD
    )
    assert code == 1
    assert capsys.readouterr().err == (
        f"tosca: protocol approve: {NAME} v1: ada is its author; another admin must approve it\n"
    )
    code = tosca(
        monkeypatch, "protocol", "approve", NAME, "--version", "1", "--user", "bob", stdin=BOB_PASSWORD
    )
    assert code == 0
    assert capsys.readouterr().out == f"{NAME} v1: draft -> approved\n"
    code = tosca(
        monkeypatch, "protocol", "approve", NAME, "--version", "1", "--user", "bob", stdin=BOB_PASSWORD
    )
    assert code == 1 and "already approved" in capsys.readouterr().err
    assert library_audits("protocol_approve") == [("failure", "ada"), ("success", "bob"), ("failure", "bob")]
    assert tosca(monkeypatch, "protocol", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PROTOCOL", "V", "STATUS", "AUTHOR", "DECIDED", "BY", "NOTE"]
    assert lines[1].split("  ")[0] == NAME
    assert " 1 " in lines[1] and "approved" in lines[1] and "bob" in lines[1]
    assert lines[1].endswith("used for treatment")


def test_a_refused_file_prints_every_error_and_stores_nothing(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = protocol_file(tmp_path / "bad.json", power_w=12.0, colour="red")
    argv = ("protocol", "import", str(bad), "--name", NAME, "--user", "ada")
    assert tosca(monkeypatch, *argv, stdin=ADMIN_PASSWORD + "\n") == 1
    err = capsys.readouterr().err.splitlines()
    assert any("colour: unknown key" in line for line in err)
    assert any("12.0 W exceeds" in line for line in err)
    assert err[-1] == f"tosca: {bad}: refused ({len(err) - 1} problems); nothing stored"
    notjson = tmp_path / "notjson.json"
    notjson.write_text("steps: 1", encoding="utf-8")
    argv = ("protocol", "import", str(notjson), "--name", NAME, "--user", "ada")
    assert tosca(monkeypatch, *argv, stdin=ADMIN_PASSWORD + "\n") == 1
    assert "invalid JSON" in capsys.readouterr().err
    big = tmp_path / "big.json"
    with big.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
    argv = ("protocol", "import", str(big), "--name", NAME, "--user", "ada")
    assert tosca(monkeypatch, *argv, stdin=ADMIN_PASSWORD + "\n") == 1
    assert "larger than 1000000 bytes" in capsys.readouterr().err
    assert versions() == []
    # Each refusal is audited: by its rules, as not JSON, and the 50 MB file refused unread.
    assert library_audits("protocol_import") == [("failure", "ada")] * 3


def test_a_technician_and_a_wrong_password_are_refused(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = protocol_file(tmp_path / "gentle.json")
    argv = ("protocol", "import", str(file), "--name", NAME, "--user", "tina")
    assert tosca(monkeypatch, *argv, stdin=TECH_PASSWORD + "\n") == 1
    assert "only an admin may change the protocol library ('tina' is technician)" in capsys.readouterr().err
    argv = ("protocol", "import", str(file), "--name", NAME, "--user", "ada")
    assert tosca(monkeypatch, *argv, stdin="wrong password\n") == 1
    assert capsys.readouterr().err.startswith("tosca: protocol import: ")
    assert tosca(monkeypatch, *argv, stdin="") == 1
    assert "no password on standard input" in capsys.readouterr().err
    assert versions() == []


def test_reject_needs_a_reason_and_a_retired_protocol_is_kept(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = protocol_file(tmp_path / "gentle.json")
    argv = ("protocol", "import", str(file), "--name", NAME, "--user", "ada")
    assert tosca(monkeypatch, *argv, stdin=ADMIN_PASSWORD + "\n") == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        tosca(monkeypatch, "protocol", "reject", NAME, "--version", "1", "--user", "bob", stdin=BOB_PASSWORD)
    assert usage.value.code == 2
    reject = ("protocol", "reject", NAME, "--version", "1", "--reason", "ring too small", "--user", "bob")
    assert tosca(monkeypatch, *reject, stdin=BOB_PASSWORD) == 0
    assert capsys.readouterr().out == f"{NAME} v1: draft -> rejected\n"
    assert tosca(monkeypatch, "protocol", "retire", NAME, "--user", "bob", stdin=BOB_PASSWORD) == 0
    capsys.readouterr()
    assert tosca(monkeypatch, "protocol", "list") == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith(f"{NAME} (retired)") and "rejected" in line and line.endswith("ring too small")
