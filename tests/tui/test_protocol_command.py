"""``tosca protocol validate FILE``: the real executable in a subprocess and the entry point in-process, for a
valid file and for each kind of bad file, with and without a database in the data directory."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from control.calibration import record_calibration
from storage import TechUser, create_engine, session_factory
from storage.repositories import ConfigRepository, UsersRepository
from tui.cli import main

TOSCA = Path(sys.executable).with_name("tosca")

SEED: dict[str, Any] = {
    "version": "1.0",
    "steps": [
        {
            "step_number": 1,
            "duration_seconds": 60,
            "power_start_watts": 5.0,
            "power_end_watts": 5.0,
            "ring_size_mm": 3.0,
            "ramp_type": "constant",
        },
        {
            "step_number": 2,
            "duration_seconds": 30,
            "power_start_watts": 5.0,
            "power_end_watts": 8.0,
            "ring_size_mm": 3.5,
            "ramp_type": "linear",
        },
    ],
    "safety_limits": {"max_power_watts": 10.0, "max_duration_seconds": 300},
}


def seed_text(**changes: Any) -> str:
    """The seed example with ``steps__1__field=value`` style changes, as JSON text."""
    data = copy.deepcopy(SEED)
    for path, value in changes.items():
        target: Any = data
        parts = path.split("__")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[parts[-1]] = value
    return json.dumps(data, indent=2)


def write(tmp_path: Path, text: str, name: str = "protocol.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_tosca(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOSCA), *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


# ------------------------------------------------------------------------------------------ subprocess


def test_real_cli_prints_the_plan_with_default_limits(tmp_path: Path) -> None:
    path = write(tmp_path, seed_text())
    out = run_tosca("protocol", "validate", str(path), "--data-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0].startswith("default limits (no database at ")
    assert (
        "system maximum power 10.0 W; ring size 2.0..5.0 mm (default actuator travel 0..3000 um" in lines[0]
    )
    assert lines[1] == f"{path}: ok (multi_step, 2 steps)"
    assert lines[2].split() == ["step", "start", "s", "duration", "s", "power", "W", "ring", "mm", "ramp"]
    assert lines[4].split() == ["1", "0.0", "60.0", "5.0", "->", "5.0", "3.0", "constant"]
    assert lines[5].split() == ["2", "60.0", "30.0", "5.0", "->", "8.0", "3.5", "linear"]
    assert "total time: 90.0 s" in lines
    assert "expected energy: 495.0 J" in lines


def test_real_cli_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, seed_text(steps__0__duration_seconds=0, steps__1__power_end_watts=12.0))
    out = run_tosca("--data-dir", str(tmp_path / "nothing"), "protocol", "validate", str(path), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"{path}: steps[0].duration_seconds: must be > 0.0, got 0",
        f"{path}: steps[1].power_end_watts: 12.0 W exceeds safety_limits.max_power_watts (10.0 W)",
        f"{path}: steps[1].power_end_watts: 12.0 W exceeds the system limit max_laser_power_watts (10.0 W)",
        f"tosca: {path}: refused (3 problems)",
    ]
    assert "total time" not in out.stdout


def test_real_cli_reads_limits_from_the_data_directory(data_dir: Path) -> None:
    path = write(data_dir.parent, seed_text())
    out = run_tosca("protocol", "validate", str(path), "--data-dir", str(data_dir), cwd=data_dir.parent)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith(f"limits from {data_dir / 'tosca.db'}: system maximum power 10.0 W")
    assert "(default actuator travel 0..3000 um" in first


def test_real_cli_missing_file(tmp_path: Path) -> None:
    out = run_tosca("protocol", "validate", "absent.json", "--data-dir", "nothing", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == "tosca: absent.json: no such file\n"
    assert out.stdout == ""


# ------------------------------------------------------------------------------------------ in-process

BAD_FILES: list[tuple[str, str, str]] = [
    ("invalid JSON", '{"version": "1.0",\n "steps": [1,]\n}', "invalid JSON at line 2, column 14"),
    ("unknown key", seed_text(steps__1__wavelength_nm=808), "steps[1].wavelength_nm: unknown key"),
    (
        "NaN",
        seed_text().replace('"power_start_watts": 5.0', '"power_start_watts": NaN', 1),
        "steps[0].power_start_watts: must be a finite number, got NaN",
    ),
    (
        "Infinity",
        seed_text().replace('"duration_seconds": 30', '"duration_seconds": Infinity'),
        "steps[1].duration_seconds: must be a finite number, got Infinity",
    ),
    (
        "steps out of order",
        seed_text(steps__0__step_number=2, steps__1__step_number=1),
        "steps[1].step_number: expected 2, got 1 (steps are numbered 1..N in order)",
    ),
    (
        "duration 0",
        seed_text(steps__1__duration_seconds=0),
        "steps[1].duration_seconds: must be > 0.0, got 0",
    ),
    (
        "negative power",
        seed_text(steps__0__power_start_watts=-2, steps__0__power_end_watts=-2),
        "steps[0].power_start_watts: must be >= 0.0, got -2",
    ),
    (
        "bad ramp_type",
        seed_text(steps__1__ramp_type="sine"),
        "steps[1].ramp_type: must be 'constant' or 'linear', got \"sine\"",
    ),
    (
        "over own limit",
        seed_text(safety_limits__max_power_watts=7.0),
        "steps[1].power_end_watts: 8.0 W exceeds safety_limits.max_power_watts (7.0 W)",
    ),
    (
        "over system limit",
        seed_text(steps__1__power_end_watts=10.5, safety_limits__max_power_watts=12.0),
        "steps[1].power_end_watts: 10.5 W exceeds the system limit max_laser_power_watts (10.0 W)",
    ),
    (
        "too long",
        seed_text(steps__1__duration_seconds=241),
        "steps: total duration 301.0 s exceeds safety_limits.max_duration_seconds (300.0 s)",
    ),
    (
        "ring outside range",
        seed_text(steps__0__ring_size_mm=5.5),
        "steps[0].ring_size_mm: 5.5 mm is outside the actuator's range 2.0..5.0 mm (default actuator travel",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_each_bad_file_is_refused_with_its_own_message(
    data_dir: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, message: str
) -> None:
    path = write(data_dir.parent, text)
    assert main(["protocol", "validate", str(path), "--data-dir", str(data_dir)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert any(line == f"{path}: {message}" or line.startswith(f"{path}: {message}") for line in errors), (
        errors
    )
    assert errors[-1].startswith(f"tosca: {path}: refused (")
    assert captured.out.startswith("limits from ")
    assert "expected energy" not in captured.out


async def _narrow_the_rig(db: Path) -> int:
    engine = create_engine(db)
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            user = await UsersRepository(session).add(
                TechUser(username="eng", full_name="Eng", role="engineer")
            )
            await ConfigRepository(session).set("max_laser_power_watts", 7.5, modified_by=user.tech_id)
        cal = await record_calibration(
            sessions,
            tech_id=user.tech_id,
            device_type="actuator",
            calibration_type="actuator_position_to_ring_size",
            points=[(0.0, 2.4), (1500.0, 3.3), (3000.0, 4.1)],
            interpolation_method="linear",
        )
        return cal.calibration_id
    finally:
        await engine.dispose()


def test_limits_come_from_config_and_the_active_calibration(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calibration_id = asyncio.run(_narrow_the_rig(data_dir / "tosca.db"))
    path = write(data_dir.parent, seed_text(steps__0__ring_size_mm=2.2))
    assert main(["--data-dir", str(data_dir), "protocol", "validate", str(path)]) == 1
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert "system maximum power 7.5 W; ring size 2.4..4.1 mm" in first
    assert f"(active calibration #{calibration_id} of " in first
    assert captured.err.splitlines()[:2] == [
        f"{path}: steps[0].ring_size_mm: 2.2 mm is outside the actuator's range 2.4..4.1 mm "
        f"(active calibration #{calibration_id} of "
        + first.split(f"#{calibration_id} of ")[1].split(")")[0]
        + ")",
        f"{path}: steps[1].power_end_watts: 8.0 W exceeds the system limit max_laser_power_watts (7.5 W)",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe{", "is not UTF-8 text (byte 0)"), (None, "is a directory")],
)
def test_unreadable_file_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = tmp_path / "p.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert main(["protocol", "validate", str(path), "--data-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tosca: cannot read {path}: ") and message in err


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"this is not a database" * 100, "file is not a database"), (b"", "no such table: system_config")],
)
def test_unusable_database_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "tosca.db").write_bytes(content)
    path = write(tmp_path, seed_text())
    assert main(["protocol", "validate", str(path), "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err == f"tosca: cannot read the limits from {data / 'tosca.db'}: {reason}\n"


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["protocol", "validate"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ input limits


def test_real_cli_refuses_a_5000_digit_number_in_one_line(tmp_path: Path) -> None:
    text = seed_text().replace('"duration_seconds": 60', '"duration_seconds": ' + "9" * 5000)
    path = write(tmp_path, text)
    done = run_tosca("protocol", "validate", str(path), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "4300" not in done.stderr
    assert (
        f"{path}: invalid JSON: a number written with 5000 characters; numbers in a protocol have at most 40"
        in (done.stderr)
    )
    assert done.stderr.splitlines()[-1] == f"tosca: {path}: refused (1 problem)"


def test_real_cli_refuses_a_step_shorter_than_the_control_loop_period(tmp_path: Path) -> None:
    path = write(tmp_path, seed_text(steps__0__duration_seconds=1e-300))
    done = run_tosca("protocol", "validate", str(path), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 1
    assert (
        f"{path}: steps[0].duration_seconds: 1e-300 s is shorter than one period of the control loop "
        "(0.1 s at treatment_loop_frequency_hz 10.0)"
    ) in done.stderr
    # One period exactly is accepted.
    path = write(tmp_path, seed_text(steps__0__duration_seconds=0.1), "period.json")
    done = run_tosca("protocol", "validate", str(path), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_the_shortest_step_follows_the_configured_loop_frequency(tmp_path: Path, capsys: Any) -> None:
    data_dir = tmp_path / "data"
    assert main(["--data-dir", str(data_dir), "db", "upgrade"]) == 0

    async def set_rate() -> None:
        engine = create_engine(data_dir / "tosca.db")
        try:
            async with session_factory(engine)() as db, db.begin():
                await ConfigRepository(db).set("treatment_loop_frequency_hz", 2, modified_by=None)
        finally:
            await engine.dispose()

    asyncio.run(set_rate())
    capsys.readouterr()
    path = write(tmp_path, seed_text(steps__0__duration_seconds=0.4))
    assert main(["--data-dir", str(data_dir), "protocol", "validate", str(path)]) == 1
    out = capsys.readouterr()
    assert "steps of at least 0.5 s (control loop 2.0 Hz)" in out.out
    assert (
        "0.4 s is shorter than one period of the control loop (0.5 s at treatment_loop_frequency_hz 2.0)"
        in (out.err)
    )
