"""``tosca calibration list | import | export`` through the real entry point on a migrated database: an
import becomes the active calibration (the one before kept), an export imports again to the same points, and
every refusal exits 1 with the reason, stores nothing and is audited."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import ADMIN_PASSWORD, CLI, DATA_DIR, seed

from control.accounts import AccountService
from storage import create_engine, session_factory
from tests.support import CHEAP
from tui.cli import main

ENGINEER_PASSWORD = "engineer pass 1"


def tosca(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main([*argv, "--data-dir", str(DATA_DIR)])


def laser_sheet(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device_type": "laser",
        "calibration_type": "laser_current_to_power",
        "device_serial_number": "LDC-0042",
        "notes": "factory sheet",
        "calibration_points": [
            {"current_ma": 1000, "power_watts": 0.52},
            {"current_ma": 3000, "power_watts": 2.49},
            {"current_ma": 5000, "power_watts": 4.51},
            {"current_ma": 8000, "power_watts": 7.5},
        ],
        "interpolation_method": "linear_fit",
    }
    body.update(changes)
    return body


def write(path: Path, body: Any) -> Path:
    path.write_text(body if isinstance(body, str) else json.dumps(body), encoding="utf-8")
    return path


def rows() -> list[tuple[Any, ...]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(
            db.execute(
                "SELECT calibration_id, calibration_type, is_active, device_serial_number "
                "FROM calibrations ORDER BY calibration_id"
            )
        )


def audits() -> list[tuple[Any, ...]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        return list(
            db.execute(
                "SELECT action, outcome, username, details FROM audit_log "
                "WHERE action = 'calibration_import' ORDER BY audit_id"
            )
        )


@pytest.fixture
def people(data_dir: Path) -> None:
    """ada (admin), tina (technician) and eve (engineer)."""

    async def run() -> None:
        await seed()
        engine = create_engine(DATA_DIR / "tosca.db")
        try:
            service = AccountService(sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP)
            await service.create_user("eve", "Eve Engineer", "engineer", ENGINEER_PASSWORD, CLI)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_import_becomes_active_keeps_the_old_one_and_export_round_trips(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write(tmp_path / "first.json", laser_sheet())
    assert (
        tosca(monkeypatch, "calibration", "import", str(first), "--user", "eve", stdin=ENGINEER_PASSWORD) == 0
    )
    out = capsys.readouterr().out
    assert "calibration #1: laser_current_to_power stored as active (4 points" in out
    assert "r squared 1.0000)" in out

    assert tosca(monkeypatch, "calibration", "export", "1") == 0
    exported = capsys.readouterr().out
    again = write(tmp_path / "again.json", exported)
    assert (
        tosca(monkeypatch, "calibration", "import", str(again), "--user", "eve", stdin=ENGINEER_PASSWORD) == 0
    )
    capsys.readouterr()
    assert rows() == [
        (1, "laser_current_to_power", 0, "LDC-0042"),
        (2, "laser_current_to_power", 1, "LDC-0042"),
    ]

    assert tosca(monkeypatch, "calibration", "export", "2") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["calibration_points"] == laser_sheet()["calibration_points"]
    assert second["notes"] == "factory sheet"
    assert json.loads(exported)["calibration_points"] == second["calibration_points"]

    assert tosca(monkeypatch, "calibration", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:3] == ["ID", "TYPE", "DATE"]
    assert [line.split()[0] for line in listing[1:]] == ["2", "1"]
    assert " active " in listing[1] and " eve " in listing[1]
    assert " active " not in listing[2]
    assert [(a[0], a[1], a[2]) for a in audits()] == [("calibration_import", "success", "eve")] * 2


#: Each refused file, with the words its refusal must hold.
BAD_FILES: list[tuple[Any, str]] = [
    (
        laser_sheet(calibration_points=laser_sheet()["calibration_points"][:2]),
        "2 points; a calibration needs",
    ),
    (
        '{"device_type": "laser", "calibration_type": "laser_current_to_power", "calibration_points": '
        '[{"current_ma": 1000, "power_watts": NaN}, {"current_ma": 2000, "power_watts": 1.5}, '
        '{"current_ma": 3000, "power_watts": 2.5}]}',
        "NaN is not a number",
    ),
    (
        laser_sheet(
            calibration_points=[
                {"current_ma": 1000, "power_watts": 0.5},
                {"current_ma": 2000, "power_watts": -1.5},
                {"current_ma": 3000, "power_watts": 2.5},
            ]
        ),
        "point 2 power_watts is negative",
    ),
    (
        laser_sheet(
            calibration_points=[
                {"current_ma": 1000, "power_watts": 0.5},
                {"current_ma": 2000, "power_watts": 2.5},
                {"current_ma": 3000, "power_watts": 1.5},
                {"current_ma": 4000, "power_watts": 3.5},
            ]
        ),
        "not monotonic",
    ),
    (
        laser_sheet(
            calibration_points=[
                {"current_ma": 1000, "power_watts": 0.5},
                {"current_ma": 2000, "power_watts": 0.6},
                {"current_ma": 3000, "power_watts": 0.7},
                {"current_ma": 4000, "power_watts": 5.0},
            ]
        ),
        "below the quality floor 0.99",
    ),
    (laser_sheet(calibration_type="ring_detection_calibration"), "unknown calibration"),
    (laser_sheet(colour="blue"), "unknown keys: colour"),
    ("[1, 2, 3]", "one JSON object"),
    ("{not json", "not valid JSON"),
]


def test_a_bad_calibration_is_refused_with_the_reason_nothing_stored_and_audited(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for number, (body, reason) in enumerate(BAD_FILES, start=1):
        file = write(tmp_path / f"bad{number}.json", body)
        assert (
            tosca(monkeypatch, "calibration", "import", str(file), "--user", "eve", stdin=ENGINEER_PASSWORD)
            == 1
        )
        err = capsys.readouterr().err
        assert reason in err and "nothing stored" in err, err
        assert rows() == []
        action, outcome, username, details = audits()[-1]
        assert (action, outcome, username) == ("calibration_import", "failure", "eve")
        assert reason in json.loads(details)["refused"]
    assert len(audits()) == len(BAD_FILES)


def test_only_an_engineer_with_the_right_password_imports(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path / "sheet.json", laser_sheet())
    assert tosca(monkeypatch, "calibration", "import", str(file), "--user", "eve", stdin="wrong\n") == 1
    assert "calibration import:" in capsys.readouterr().err
    assert tosca(monkeypatch, "calibration", "import", str(file), "--user", "ada", stdin=ADMIN_PASSWORD) == 1
    assert "only an engineer makes calibrations ('ada' is admin)" in capsys.readouterr().err
    assert tosca(monkeypatch, "calibration", "import", str(file), "--user", "eve") == 1
    assert "no password on standard input" in capsys.readouterr().err
    assert rows() == []


def test_missing_file_unknown_id_and_empty_list(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.json"
    assert tosca(monkeypatch, "calibration", "import", str(missing), "--user", "eve", stdin="x") == 1
    assert "no such file" in capsys.readouterr().err
    assert tosca(monkeypatch, "calibration", "export", "42") == 1
    assert "no calibration #42" in capsys.readouterr().err
    assert tosca(monkeypatch, "calibration", "list") == 0
    assert capsys.readouterr().out == "no calibrations stored\n"


def camera_sheet(points: list[tuple[float, float]]) -> dict[str, Any]:
    return {
        "device_type": "camera",
        "calibration_type": "camera_pixels_to_mm",
        "device_serial_number": "CAM-7",
        "notes": "targets of 2, 3, 4 and 5 mm",
        "calibration_points": [{"diameter_px": px, "diameter_mm": mm} for px, mm in points],
    }


def test_a_camera_scale_is_checked_like_the_others_and_round_trips(
    people: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for number, (points, reason) in enumerate(
        [
            ([(198.0, 2.0), (301.5, 3.0)], "2 points; a calibration needs at least 3"),
            ([(198.0, 2.0), (301.5, 3.0), (280.0, 4.0)], "not monotonic"),
            ([(198.0, 2.0), (301.5, 2.1), (402.0, 2.2), (499.0, 5.0)], "below the quality floor 0.99"),
            ([(198.0, 2.0), (301.5, -3.0), (402.0, 4.0)], "point 2 diameter_mm is negative"),
        ],
        start=1,
    ):
        file = write(tmp_path / f"camera-bad{number}.json", camera_sheet(points))
        assert (
            tosca(monkeypatch, "calibration", "import", str(file), "--user", "eve", stdin=ENGINEER_PASSWORD)
            == 1
        )
        err = capsys.readouterr().err
        assert reason in err and "nothing stored" in err, err
    assert rows() == []

    good = camera_sheet([(198.0, 2.0), (301.5, 3.0), (402.0, 4.0), (499.0, 5.0)])
    file = write(tmp_path / "camera.json", good)
    assert (
        tosca(monkeypatch, "calibration", "import", str(file), "--user", "eve", stdin=ENGINEER_PASSWORD) == 0
    )
    assert "calibration #1: camera_pixels_to_mm stored as active (4 points" in capsys.readouterr().out
    assert tosca(monkeypatch, "calibration", "export", "1") == 0
    exported = capsys.readouterr().out
    again = write(tmp_path / "camera-again.json", exported)
    assert (
        tosca(monkeypatch, "calibration", "import", str(again), "--user", "eve", stdin=ENGINEER_PASSWORD) == 0
    )
    capsys.readouterr()
    assert rows() == [(1, "camera_pixels_to_mm", 0, "CAM-7"), (2, "camera_pixels_to_mm", 1, "CAM-7")]
    assert tosca(monkeypatch, "calibration", "export", "2") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["calibration_points"] == good["calibration_points"]
    assert (second["device_type"], second["notes"]) == ("camera", "targets of 2, 3, 4 and 5 mm")
    assert tosca(monkeypatch, "calibration", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [
        ["2", "camera_pixels_to_mm"],
        ["1", "camera_pixels_to_mm"],
    ]
