"""``tosca log``: the last lines of the controller's log, a level filter, escapes for control characters, the
refusal when there is no log, and ``--follow`` printing new lines until interrupted (a real process)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tui.cli import main

LINES = [
    "2026-03-14T09:00:01.120+00:00 INFO control.controller.process: safety board firmware 3.1",
    "controller ready: /var/lib/tosca",
    "2026-03-14T09:02:18.200+00:00 WARNING devices.transport: laser: bad reply 'E\x1b[2J' (1 in a row)",
    "2026-03-14T09:02:19.015+00:00 ERROR control.supervisor: fault latched (emergency_stop): E-stop pressed",
    "2026-03-14T09:02:40.530+00:00 INFO control.supervisor: fault reset by tina",
]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "logs" / "controller.log"
    path.parent.mkdir(parents=True)
    path.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    return path


def tosca(data: Path, *argv: str) -> int:
    return main(["--data-dir", str(data), *argv])


def test_the_last_lines_and_a_level(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = log.parent.parent
    assert tosca(data, "log", "--lines", "2") == 0
    assert capsys.readouterr().out.splitlines() == LINES[3:]
    assert tosca(data, "log", "--level", "warning") == 0
    shown = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in shown] == ["WARNING", "ERROR"]
    assert shown[0].endswith("bad reply 'E\\x1b[2J' (1 in a row)"), "the escape is printed, not sent"
    assert tosca(data, "log") == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_no_log_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tosca(tmp_path, "log") == 1
    assert capsys.readouterr().err == f"tosca: no controller log at {tmp_path / 'logs' / 'controller.log'}\n"


def read_line(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout_s):
            raise AssertionError("tosca log --follow printed nothing in time")
    finally:
        selector.close()
    return process.stdout.readline().decode()


def test_follow_prints_new_lines_until_interrupted(log: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--data-dir", str(log.parent.parent), "log", "-n", "1", "--follow"],
        cwd=root,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert read_line(process).rstrip("\n") == LINES[-1]
        with log.open("a") as handle:
            handle.write(
                "2026-03-14T09:03:00.000+00:00 INFO control.controller.treatment: session 2 opened\n"
            )
        assert read_line(process).endswith("session 2 opened\n")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
