"""``tosca config list | get | set`` through the real entry point on a migrated database: the listing, one
value, a change by an admin with the password on stdin, and each refusal (exit 1 with one line why, nothing
changed, the refusal audited), and usage errors (exit 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from config_fixtures import config_audits, stored
from console_fixtures import ADMIN_PASSWORD, DATA_DIR, TECH_PASSWORD, seed_sync

from control.system_config import SETTING_KEYS
from tui.cli import main


def tosca(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main([*argv, "--data-dir", str(DATA_DIR)])


def test_list_shows_every_setting_with_value_default_unit_and_meaning(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tosca(monkeypatch, "config", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "DEFAULT", "UNIT", "MEANING"]
    assert [line.split()[0] for line in lines[1:]] == list(SETTING_KEYS)
    power = next(line for line in lines if line.startswith("max_laser_power_watts "))
    assert power.split()[1:4] == ["10.0", "10.0", "W"] and "Hard limit for laser power" in power


def test_get_prints_the_value_and_an_unknown_key_is_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tosca(monkeypatch, "config", "get", "backup_retention_days") == 0
    assert capsys.readouterr().out == "30\n"
    assert tosca(monkeypatch, "config", "get", "no_such_key") == 1
    assert capsys.readouterr().err == "tosca: config no_such_key: no such setting\n"


def test_set_changes_the_value_as_the_admin_and_audits_it(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_sync()
    code = tosca(
        monkeypatch,
        *("config", "set", "max_laser_power_watts", "7.5", "--reason", "new fibre", "--user", "ada"),
        stdin=ADMIN_PASSWORD + "\n",
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "config max_laser_power_watts: 10.0 -> 7.5 W"
    assert out[1].startswith("Safety limits never change during a session")
    assert stored("max_laser_power_watts") == "7.5"
    assert config_audits() == [
        ("success", "ada", {"key": "max_laser_power_watts", "old": 10.0, "new": 7.5, "reason": "new fibre"})
    ]
    assert tosca(monkeypatch, "config", "get", "max_laser_power_watts") == 0
    assert capsys.readouterr().out == "7.5\n"


@pytest.mark.parametrize(
    ("key", "value", "reason", "why"),
    [
        (
            "max_laser_power_watts",
            "12",
            "r",
            "config max_laser_power_watts: 12.0 refused: must be less than or equal to 10 W",
        ),
        (
            "max_laser_power_watts",
            "nan",
            "r",
            "config max_laser_power_watts: 'nan' refused: must be a finite number",
        ),
        ("auto_lock_minutes", "ten", "r", "config auto_lock_minutes: 'ten' refused: must be a whole number"),
        ("no_such_key", "1", "r", "config no_such_key: no such setting"),
        ("auto_lock_minutes", "5", "  ", "config: refused: a reason is needed; say why the setting changes"),
    ],
)
def test_set_refuses_with_one_line_why_changes_nothing_and_audits_the_refusal(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
    value: str,
    reason: str,
    why: str,
) -> None:
    seed_sync()
    before = stored(key)
    code = tosca(
        monkeypatch,
        "config",
        "set",
        key,
        value,
        "--reason",
        reason,
        "--user",
        "ada",
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert code == 1
    assert capsys.readouterr().err == f"tosca: {why}\n"
    assert stored(key) == before
    [(outcome, user, details)] = config_audits()
    assert (outcome, user, details["refused"]) == ("failure", "ada", why)


def test_set_refuses_a_wrong_password_a_technician_and_no_password(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_sync()
    argv = ("config", "set", "auto_lock_minutes", "5", "--reason", "ward")
    assert tosca(monkeypatch, *argv, "--user", "ada", stdin="wrong password\n") == 1
    assert capsys.readouterr().err == "tosca: config set: wrong username or password\n"
    assert tosca(monkeypatch, *argv, "--user", "tina", stdin=TECH_PASSWORD + "\n") == 1
    assert capsys.readouterr().err == (
        "tosca: config: refused: only an admin may change settings ('tina' is technician)\n"
    )
    assert tosca(monkeypatch, *argv, "--user", "ada", stdin="") == 1
    assert "no password on standard input" in capsys.readouterr().err
    assert stored("auto_lock_minutes") == "10"
    assert [(o, u) for o, u, _ in config_audits()] == [("failure", "tina")]


def test_usage_errors_exit_2(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (
        ("config",),
        ("config", "set", "auto_lock_minutes", "5", "--user", "ada"),
        ("config", "get"),
    ):
        with pytest.raises(SystemExit) as exited:
            tosca(monkeypatch, *argv)
        assert exited.value.code == 2


def test_no_database_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tosca(monkeypatch, "config", "list") == 1
    assert "no database in data" in capsys.readouterr().err


def test_the_config_command_does_not_load_textual(data_dir: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tui.cli import main\n"
        "assert main(['config', 'list', '--data-dir', 'data']) == 0\n"
        "print(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
