"""``tosca sim run``: a whole session on the simulated rig, headless. The seed's example protocol in real time
(delivered energy, a 5 s footpedal release), a SIGKILL in the middle of a session, and the command line's
exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, USERNAME, prepare_data_dir

from control.controller import Controller
from control.simrun import ScriptError, parse_script, run_simulated_session
from storage import DataDir, scan_telemetry
from storage.maintenance import check_database
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST


TOSCA = [str(Path(sys.executable).with_name("tosca"))]


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(
        tmp_path / "data",
        migrated_template,
        {
            "fault-test": protocol_json((3.0, 2.0, 2.0, 2.0, "constant")),
            "long": protocol_json((300.0, 2.0, 2.0, 2.0, "constant")),
        },
    )


def _run_cli(
    args: list[str], data: DataDir, stdin: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOSCA, "--data-dir", str(data.root), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_sim_run_prints_the_summary_and_exits_0(data: DataDir) -> None:
    done = _run_cli(
        ["sim", "run", "fault-test", "--subject", "P-2026-0002", "--user", USERNAME], data, PASSWORD
    )
    assert done.returncode == 0, done.stderr
    assert "status: completed" in done.stdout
    assert "delivered energy:" in done.stdout and "telemetry sha256:" in done.stdout


def test_sim_run_exits_1_with_the_fault(data: DataDir, tmp_path: Path) -> None:
    script = tmp_path / "estop.txt"
    script.write_text("# an E-stop one second into treatment\n1.0 estop on\n", encoding="utf-8")
    done = _run_cli(
        ["sim", "run", "fault-test", "--subject", "P-2026-0003", "--user", USERNAME, "--script", str(script)],
        data,
        PASSWORD,
    )
    assert done.returncode == 1
    assert "E-stop pressed" in done.stderr
    assert "status: aborted" in done.stdout


def test_sim_run_refuses_a_wrong_password_and_a_bad_script(data: DataDir, tmp_path: Path) -> None:
    done = _run_cli(
        ["sim", "run", "fault-test", "--subject", "P-2026-0004", "--user", USERNAME], data, "nope-nope"
    )
    assert done.returncode == 1
    assert "password" in done.stderr.lower()
    script = tmp_path / "bad.txt"
    script.write_text("1 pedal down\nsoon estop on\n", encoding="utf-8")
    done = _run_cli(
        ["sim", "run", "fault-test", "--subject", "P-2026-0004", "--user", USERNAME, "--script", str(script)],
        data,
        PASSWORD,
    )
    assert done.returncode == 1
    assert "script line 2" in done.stderr


async def test_sim_run_refuses_a_locked_out_user_before_opening_anything(data: DataDir) -> None:
    from control.accounts import AccountService
    from control.supervisor import Refused
    from storage import create_engine, session_factory

    engine = create_engine(data.db_path)
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="test", hashing=CHEAP)
        for _ in range(5):
            await accounts.login(USERNAME, "not the password")
    finally:
        await engine.dispose()
    with pytest.raises(Refused, match="locked"):
        await run_simulated_session(
            data.root,
            protocol="fault-test",
            subject_code="P-2026-0005",
            username=USERNAME,
            password=PASSWORD,
            script=[],
            hashing=CHEAP,
            say=lambda line: None,
        )
    with sqlite3.connect(data.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM subjects").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


def test_script_parsing() -> None:
    lines = parse_script("# comment\n\n2.5 estop on\n0 pedal up\n")
    assert [(line.at_s, line.command) for line in lines] == [(0.0, "pedal up"), (2.5, "estop on")]
    for bad, message in (
        ("-1 pedal up", "finite number >= 0"),
        ("3", "no simulator command"),
        ("1 fire laser", "unknown simulator command"),
    ):
        with pytest.raises(ScriptError, match=message):
            parse_script(bad)


def _start_and_kill_mid_treatment(data: DataDir) -> Path:
    """Run `tosca sim run` on a long protocol and SIGKILL it once it emits; returns the telemetry file."""
    child = subprocess.Popen(
        [
            *TOSCA,
            "--data-dir",
            str(data.root),
            "sim",
            "run",
            "long",
            "--subject",
            "P-2026-0005",
            "--user",
            USERNAME,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdin is not None
    child.stdin.write(PASSWORD + "\n")
    child.stdin.close()
    subject_folder = data.sessions / "P-2026-0005"
    telemetry = subject_folder / "telemetry.jsonl"  # until the session's folder (named by its uid) exists
    deadline = time.monotonic() + 60
    try:
        while True:
            assert child.poll() is None, "the session ended before it could be killed"
            found = list(subject_folder.glob("*/telemetry.jsonl")) if subject_folder.is_dir() else []
            if found:
                telemetry = found[0]
            if telemetry.exists() and telemetry.stat().st_size > 100 * 150:
                with sqlite3.connect(data.db_path) as db:
                    on = db.execute(
                        "SELECT count(*) FROM treatment_events WHERE event_type = 'laser_on'"
                    ).fetchone()
                if on[0] >= 1:
                    break
            assert time.monotonic() < deadline, "no emission within 60 s"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    return telemetry


@pytest.mark.timeout(120)
async def test_a_session_killed_mid_treatment_is_closed_as_aborted_at_next_start(data: DataDir) -> None:
    telemetry = await asyncio.to_thread(_start_and_kill_mid_treatment, data)
    with sqlite3.connect(data.db_path) as db:
        assert db.execute("SELECT status FROM sessions WHERE session_id = 1").fetchone()[0] == "in_progress"

    controller = Controller(data.root, sim=True, hashing=CHEAP, terminal="test", serve=False)
    await controller.start()
    await controller.close()

    with sqlite3.connect(data.db_path) as db:
        status, reason = db.execute(
            "SELECT status, abort_reason FROM sessions WHERE session_id = 1"
        ).fetchone()
        startup_rows = db.execute(
            "SELECT count(*) FROM safety_log "
            "WHERE session_id = 1 AND event_type = 'session_aborted_at_startup'"
        ).fetchone()[0]
    assert status == "aborted" and "stopped while the session was open" in reason
    assert startup_rows == 1
    assert check_database(data.db_path).integrity == "ok"
    scan = await asyncio.to_thread(scan_telemetry, telemetry)
    assert scan.line_count > 100
    content = await asyncio.to_thread(telemetry.read_bytes)
    for line in content.splitlines()[: scan.line_count]:
        record = json.loads(line)
        assert {"t", "pd_v", "cmd_w", "state"} <= record.keys()


def test_sim_run_refuses_an_oversized_number_and_a_too_short_step_without_storing_them(
    data: DataDir, tmp_path: Path
) -> None:
    huge = tmp_path / "huge.json"
    huge.write_text(
        protocol_json((3.0, 2.0, 2.0, 2.0, "constant")).replace("3.0", "9" * 5000, 1), encoding="utf-8"
    )
    tiny = tmp_path / "tiny.json"
    tiny.write_text(protocol_json((1e-300, 2.0, 2.0, 2.0, "constant")), encoding="utf-8")
    for path, reason in (
        (huge, "invalid JSON: a number written with 5000 characters"),
        (tiny, "steps[0].duration_seconds: 1e-300 s is shorter than one period of the control loop"),
    ):
        done = _run_cli(
            ["sim", "run", str(path), "--subject", "P-2026-0009", "--user", USERNAME], data, PASSWORD
        )
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert reason in done.stderr
    with sqlite3.connect(data.db_path) as db:
        stored = db.execute("SELECT protocol_name FROM protocols WHERE protocol_name IN ('huge', 'tiny')")
        assert stored.fetchall() == []
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
