"""``tosca sim run`` and the protocol library: a name runs the approved version and is refused without one;
``--draft`` tries the newest draft on the simulated rig, said so and recorded so; a file is tried as a
draft."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, USERNAME, prepare_data_dir

from control.simrun import run_simulated_session
from control.supervisor import Refused
from storage import DataDir, create_engine, session_factory
from storage.repositories import ConfigRepository, ProtocolsRepository
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST

TOSCA = [str(Path(sys.executable).with_name("tosca"))]
APPROVED = protocol_json((3.0, 2.0, 2.0, 2.0, "constant"))
DRAFT = protocol_json((2.0, 3.0, 3.0, 2.0, "constant"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    """``short`` with approved version 1 (3 s at 2 W) and draft version 2 (2 s at 3 W); ``fresh``, a draft
    only."""
    data = await prepare_data_dir(tmp_path / "data", migrated_template, {"short": APPROVED})
    engine = create_engine(data.db_path)
    try:
        async with session_factory(engine)() as db, db.begin():
            repo = ProtocolsRepository(db)
            short = await repo.get_by_name("short")
            assert short is not None
            await repo.add_version(short.protocol_id, DRAFT, change_summary="stronger")
            await repo.add("fresh", "constant", DRAFT)
    finally:
        await engine.dispose()
    return data


def _session_rows(data: DataDir) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data.db_path) as db:
        return db.execute(
            "SELECT s.protocol_name, s.protocol_data_snapshot, s.treatment_notes, a.details FROM sessions s "
            "JOIN audit_log a ON a.entity_id = s.session_id AND a.action = 'session_open' "
            "ORDER BY s.session_id"
        ).fetchall()


async def _run(data: DataDir, protocol: str, *, draft: bool, said: list[str]) -> Any:
    return await run_simulated_session(
        data.root,
        protocol=protocol,
        subject_code="P-2026-0011",
        username=USERNAME,
        password=PASSWORD,
        script=[],
        hashing=CHEAP,
        say=said.append,
        draft=draft,
    )


@pytest.mark.timeout(120)
async def test_a_name_runs_the_approved_version_and_draft_the_newest_draft(data: DataDir) -> None:
    said: list[str] = []
    result = await _run(data, "short", draft=False, said=said)
    assert result.exit_code == 0, result
    assert not any("DRAFT" in line for line in said)
    result = await _run(data, "short", draft=True, said=said)
    assert result.exit_code == 0, result
    assert any("trying its newest DRAFT version" in line for line in said)
    rows = _session_rows(data)
    assert [(name, json.loads(snapshot)["steps"][0]["power_start_watts"]) for name, snapshot, *_ in rows] == [
        ("short", 2.0),
        ("short", 3.0),
    ]
    first, second = (json.loads(details) for *_, details in rows)
    assert (first["protocol_version"], first["protocol_status"]) == (1, "approved")
    assert (second["protocol_version"], second["protocol_status"]) == (2, "draft")
    assert rows[0][2] is None
    assert rows[1][2] == "Trial of draft protocol version 2 on the simulated rig."


def _run_cli(args: list[str], data: DataDir) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOSCA, "--data-dir", str(data.root), *args],
        input=PASSWORD,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_protocol_with_no_approved_version_is_refused_and_nothing_opens(data: DataDir) -> None:
    done = _run_cli(["sim", "run", "fresh", "--subject", "P-2026-0012", "--user", USERNAME], data)
    assert done.returncode == 1
    assert "protocol 'fresh' has no approved version; an admin must approve one first" in done.stderr
    assert _session_rows(data) == []


@pytest.mark.timeout(120)
def test_a_file_is_tried_as_a_draft(data: DataDir, tmp_path: Path) -> None:
    file = tmp_path / "trial.json"
    file.write_text(DRAFT, encoding="utf-8")
    done = _run_cli(["sim", "run", str(file), "--subject", "P-2026-0013", "--user", USERNAME], data)
    assert done.returncode == 0, done.stderr
    assert "protocol 'trial': trying its newest DRAFT version on the simulated rig" in done.stdout
    rows = _session_rows(data)
    assert [(name, json.loads(details)["protocol_status"]) for name, _s, _n, details in rows] == [
        ("trial", "draft")
    ]


@pytest.mark.timeout(120)
async def test_a_draft_the_limits_now_refuse_does_not_block_the_approved_version(data: DataDir) -> None:
    engine = create_engine(data.db_path)
    try:
        async with session_factory(engine)() as db, db.begin():
            repo = ProtocolsRepository(db)
            short = await repo.get_by_name("short")
            assert short is not None
            await repo.add_version(short.protocol_id, protocol_json((2.0, 7.0, 7.0, 2.0, "constant")))
            await ConfigRepository(db).set("max_laser_power_watts", 5.0, modified_by=None)
    finally:
        await engine.dispose()
    said: list[str] = []
    result = await _run(data, "short", draft=False, said=said)
    assert result.exit_code == 0, result
    assert [json.loads(details)["protocol_version"] for *_, details in _session_rows(data)] == [1]
    with pytest.raises(Refused, match="not valid here"):
        await _run(data, "short", draft=True, said=said)
