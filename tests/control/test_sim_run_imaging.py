"""``tosca sim run --script`` with the operator's imaging keys: ``snapshot``, ``aim on`` and ``aim off`` are
carried out and recorded as the console's (the snapshot's two pictures and rows and its image_captured event,
the aiming beam's user_action events), and said on the output."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import cv2
import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, USERNAME, prepare_data_dir

from control.simrun import ScriptError, parse_script, run_simulated_session
from storage import DataDir
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(
        tmp_path / "data", migrated_template, {"short": protocol_json((3.0, 2.0, 2.0, 2.0, "constant"))}
    )


def _rows(data: DataDir, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data.db_path) as db:
        return list(db.execute(sql, args))


def _size(path: str) -> int:
    return Path(path).stat().st_size


@pytest.mark.timeout(120)
async def test_the_script_takes_a_snapshot_and_switches_the_aiming_beam(data: DataDir) -> None:
    said: list[str] = []
    script = parse_script("0.3 aim on\n1.0 snapshot\n1.05 snapshot\n2.0 aim off\n")
    result = await run_simulated_session(
        data.root,
        protocol="short",
        subject_code="P-2026-0007",
        username=USERNAME,
        password=PASSWORD,
        script=script,
        hashing=CHEAP,
        say=said.append,
    )
    assert result.exit_code == 0 and result.status == "completed"
    output = "\n".join(said)
    session_id = result.session_id

    # The snapshot: two pictures in the session's folder, two rows, one image_captured event, for the user.
    rows = _rows(
        data,
        "SELECT file_path, file_size_bytes, resolution FROM session_recordings "
        "WHERE session_id = ? AND recording_type = 'snapshot' ORDER BY recording_id",
        session_id,
    )
    assert len(rows) == 2, "one snapshot (the second asked while the first was saving is refused)"
    assert "snapshot refused: a snapshot is being saved" in output
    for path, size, resolution in rows:
        picture = cv2.imread(path)
        assert picture is not None and picture.shape == (720, 1280, 3) and resolution == "1280x720"
        assert _size(path) == size
    raw = Path(rows[0][0])
    assert "snapshot saved at" in output and f"{raw.name} and " in output
    # The aiming beam was on when it was taken: its spot is at the centre of the picture.
    grey = cv2.imread(str(raw), cv2.IMREAD_GRAYSCALE)
    assert grey is not None and int(grey[360, 640]) > 150
    [(image_path, details)] = _rows(
        data,
        "SELECT image_path, event_details FROM treatment_events "
        "WHERE session_id = ? AND event_type = 'image_captured'",
        session_id,
    )
    assert image_path == str(raw) and json.loads(details)["by"] == USERNAME

    # The aiming beam: on, then off, each a user_action event for the user, and said.
    actions = [
        json.loads(d)
        for (d,) in _rows(
            data,
            "SELECT event_details FROM treatment_events WHERE session_id = ? AND event_type = 'user_action' "
            "ORDER BY event_id",
            session_id,
        )
    ]
    aim = [(a["on"], a["by"]) for a in actions if a.get("action") == "aiming_beam"]
    assert aim == [(True, USERNAME), (False, USERNAME)]
    assert "aiming beam on" in output and "aiming beam off" in output


def test_the_imaging_keys_in_a_script_are_checked() -> None:
    lines = parse_script("1 Snapshot\n2 aim ON\n3 aim off\n")
    assert [(line.command, line.operator_action) for line in lines] == [
        ("snapshot", True),
        ("aim on", True),
        ("aim off", True),
    ]
    assert not parse_script("1 pedal up")[0].operator_action
    for bad, message in (
        ("1 aim", "'aim' needs 'on' or 'off'"),
        ("1 aim sideways", "'aim' needs 'on' or 'off'"),
        ("1 snapshot now", "'snapshot' takes nothing after it"),
    ):
        with pytest.raises(ScriptError, match=message):
            parse_script(bad)
