"""``tosca retention run [--dry-run]``: the policy from the settings, a dry run that changes nothing, a run
that prunes and still verifies, and an audit retention under six years refused."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from control.system_config import MIN_AUDIT_RETENTION_DAYS, SettingError, check_setting
from storage import DataDir, create_engine, session_factory
from storage.retention import MIN_AUDIT_DAYS, RetentionPolicy, RetentionRefused, run_retention
from tests.control.signing_fixtures import Finished, copy_template, finished_session
from tui import cli


@pytest.fixture
async def done(tmp_path: Path, migrated_template: Path) -> AsyncIterator[Finished]:
    data_dir = copy_template(migrated_template, DataDir(tmp_path / "data"))
    engine = create_engine(data_dir.db_path)
    try:
        yield await finished_session(session_factory(engine), data_dir)
    finally:
        await engine.dispose()


def _short_policy(db: Path) -> None:
    connection = sqlite3.connect(str(db))
    with connection:
        for kind in ("video", "telemetry", "sessions", "safety"):
            connection.execute(
                "UPDATE system_config SET config_value = '1' WHERE config_key = ?",
                (f"retention_{kind}_days",),
            )
    connection.close()


def _sessions(db: Path) -> int:
    connection = sqlite3.connect(str(db))
    try:
        return int(connection.execute("SELECT count(*) FROM sessions").fetchone()[0])
    finally:
        connection.close()


def test_dry_run_then_run_prune_the_old_session_and_the_records_still_verify(
    done: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    db = done.data_dir.db_path
    root = str(done.data_dir.root)
    _short_policy(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    assert cli.main(["retention", "run", "--dry-run", "--data-dir", root]) == 0
    out = capsys.readouterr().out
    assert "video 1 d, telemetry 1 d, sessions 1 d, safety 1 d, audit 3653 d" in out
    assert f"would prune 1 sessions: {done.session_id}" in out
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert _sessions(db) == 1

    assert cli.main(["retention", "run", "--data-dir", root]) == 0
    out = capsys.readouterr().out
    assert "pruned treatment_events: 3 rows (positions up to 3)" in out
    assert _sessions(db) == 0
    assert cli.main(["audit", "verify", "--data-dir", root]) == 0
    assert "treatment_events: positions 1 to 3 pruned on" in capsys.readouterr().out


def test_audit_retention_under_six_years_is_refused(
    done: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingError, match="retention_audit_days: 2191 refused"):
        check_setting("retention_audit_days", 2191)
    assert check_setting("retention_audit_days", 2192) == 2192 == MIN_AUDIT_DAYS == MIN_AUDIT_RETENTION_DAYS
    assert check_setting("retention_sessions_days", 1) == 1
    with pytest.raises(RetentionRefused, match="audit retention of 2191 days is refused"):
        run_retention(
            done.data_dir.db_path,
            done.data_dir.root,
            RetentionPolicy(1, 1, 1, 1, 2191),
            datetime(2030, 1, 1),
        )
    # A value written into the database by hand is refused too: nothing is pruned.
    db = done.data_dir.db_path
    connection = sqlite3.connect(str(db))
    with connection:
        connection.execute(
            "UPDATE system_config SET config_value = '30' WHERE config_key = 'retention_audit_days'"
        )
    connection.close()
    assert cli.main(["retention", "run", "--data-dir", str(done.data_dir.root)]) == 1
    assert "retention_audit_days" in capsys.readouterr().err
    assert _sessions(db) == 1


def test_no_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["retention", "run", "--data-dir", str(tmp_path / "none")]) == 1
    assert "run 'tosca db upgrade' first" in capsys.readouterr().err
