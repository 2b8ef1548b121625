"""``tosca audit list`` and ``tosca db backups`` / ``tosca db verify``: output, filters and exit codes
(0 done, 1 refused with one line why, 2 usage)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from storage import DataDir
from storage.backup import backup_database
from tui import cli


def _tosca(*argv: str) -> int:
    return cli.main(list(argv))


def _rows(data_dir: Path) -> None:
    connection = sqlite3.connect(str(data_dir / "tosca.db"))
    with connection:
        connection.executemany(
            "INSERT INTO audit_log (timestamp, username, action, terminal, outcome, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("2026-03-01 08:00:00.000000", "ana", "login", "tty1", "success", '{"note": "first"}'),
                (
                    "2026-03-02 08:00:00.000000",
                    "ben",
                    "login",
                    "tty2",
                    "failure",
                    '{"reason": "bad password"}',
                ),
                (
                    "2026-03-03 08:00:00.000000",
                    "ana",
                    "config_change",
                    "tty1",
                    "success",
                    '{"key": "=cmd|x"}',
                ),
            ],
        )
    connection.close()


def _out(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_audit_list_table_is_newest_first_and_filtered(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rows(data_dir)
    assert _tosca("audit", "list", "--data-dir", str(data_dir)) == 0
    out, err = _out(capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["time", "(UTC)", "user", "action", "outcome", "terminal", "details"]
    assert [line.split()[2] for line in lines[1:4]] == ["ana", "ben", "ana"]
    assert lines[-1] == "3 row(s), newest first; all rows"
    assert err == ""
    assert _tosca("audit", "list", "--user", "ana", "--since", "2026-03-02", "--data-dir", str(data_dir)) == 0
    out, _err = _out(capsys)
    assert "config_change" in out and "login" not in out
    assert out.splitlines()[-1] == "1 row(s), newest first; user=ana, since 2026-03-02 00:00"


def test_audit_list_table_prints_a_terminal_escape_escaped(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = sqlite3.connect(str(data_dir / "tosca.db"))
    with connection:
        connection.execute(
            "INSERT INTO audit_log (timestamp, username, action, outcome, details) "
            "VALUES ('2026-03-01 08:00:00.000000', 'eve\x1b]0;owned\x07', 'login', 'failure', '{}')"
        )
    connection.close()
    assert _tosca("audit", "list", "--data-dir", str(data_dir)) == 0
    out = _out(capsys)[0]
    assert "\x1b" not in out and "\x07" not in out
    assert "eve\\x1b]0;owned\\x07" in out


def test_audit_list_json_and_csv(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rows(data_dir)
    assert _tosca("audit", "list", "--action", "login", "--format", "json", "--data-dir", str(data_dir)) == 0
    rows = json.loads(_out(capsys)[0])
    assert [(r["username"], r["outcome"], r["details"]) for r in rows] == [
        ("ben", "failure", {"reason": "bad password"}),
        ("ana", "success", {"note": "first"}),
    ]
    assert _tosca("audit", "list", "--format", "csv", "--limit", "1", "--data-dir", str(data_dir)) == 0
    records = list(csv.reader(io.StringIO(_out(capsys)[0])))
    assert len(records) == 2 and records[1][3] == "config_change"
    assert records[1][8] == '{"key": "=cmd|x"}'  # the cell starts with "{": left as it is


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--since", "last tuesday"], "tosca: since: 'last tuesday' is not a date"),
        (["--since", "2026-03-03", "--until", "2026-03-01"], "tosca: since must be before until"),
    ],
)
def test_audit_list_refuses_bad_dates_in_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert _tosca("audit", "list", *argv, "--data-dir", str(data_dir)) == 1
    out, err = _out(capsys)
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(reason)


def test_audit_list_without_a_database_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tosca("audit", "list", "--data-dir", str(tmp_path / "none")) == 1
    assert _out(capsys)[1].startswith("tosca: no database at ")


@pytest.mark.parametrize(
    "argv",
    [["audit"], ["audit", "list", "--format", "xml"], ["audit", "list", "--limit", "-1"], ["db", "verify"]],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _tosca(*argv)
    assert caught.value.code == 2


def test_db_backups_lists_what_the_screen_lists(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tosca("db", "backups", "--data-dir", str(data_dir)) == 0
    out, _err = _out(capsys)
    assert out.startswith("0 backup(s) in data/backups; kept 30 days; ") and " free of " in out
    older = backup_database(DataDir(data_dir), now=datetime.now() - timedelta(days=2))
    assert _tosca("db", "backup", "--data-dir", str(data_dir)) == 0
    _out(capsys)
    assert _tosca("db", "backups", "--data-dir", str(data_dir)) == 0
    lines = _out(capsys)[0].splitlines()
    assert lines[0].split() == ["taken", "(local", "time)", "size", "verified", "name"]
    assert lines[1].split()[4] == "yes"  # the backup just made verified as it was taken
    assert lines[2].split()[4:] == ["not", "checked", older.name]
    assert lines[-1].startswith("2 backup(s) in data/backups; kept 30 days; ")


def test_db_verify_exit_codes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = backup_database(DataDir(data_dir), now=datetime(2026, 3, 1, 9, 0, 0))
    assert _tosca("db", "verify", good.name, "--data-dir", str(data_dir)) == 0
    assert _out(capsys)[0].startswith(f"ok: {good.name}: schema 20261207_005, integrity ok")
    good.write_bytes(b"not a database at all")
    assert _tosca("db", "verify", good.name, "--data-dir", str(data_dir)) == 1
    err = _out(capsys)[1]
    assert len(err.splitlines()) == 1 and err.startswith(f"tosca: {good.name} does not verify: ")
    assert _tosca("db", "verify", "../tosca.db", "--data-dir", str(data_dir)) == 1
    assert "is not a backup name" in _out(capsys)[1]
    assert _tosca("db", "backups", "--data-dir", str(data_dir)) == 0
    assert _out(capsys)[0].splitlines()[1].split()[4] == "no"
