"""End to end: closing the terminal (SIGHUP) of a ``tosca --sim`` console that started its own controller,
in the middle of an emission, leaves nothing running: the console stops its controller, which switches the
laser off and closes the open session as aborted, and no controller stays behind with nobody attached.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_console_in_tmux import TOSCA, Terminal, controllers_of, fill, stop_controllers
from test_treatment_in_tmux import PASSWORD, prepare

from tests.support import RIG_TEST

pytestmark = RIG_TEST


def console_pids(data_dir: Path) -> list[int]:
    """PIDs of ``tosca --sim`` consoles for ``data_dir`` (read from /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--sim" in argv and b"controller" not in argv and str(data_dir).encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting for its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(240)
def test_closing_the_terminal_mid_emission_stops_the_controller_the_console_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    prepare(data_dir)
    term = Terminal(
        f"cd {tmp_path} && TERM=xterm-256color {TOSCA} --sim --data-dir {data_dir}",
        height=40,
        width=120,
        logs=data_dir / "logs",
    )
    try:
        term.wait_for("Log in", 30.0)
        fill(term, "tina")
        term.keys("Enter")
        term.focus_moves_to("Password")
        fill(term, PASSWORD, shown="•" * len(PASSWORD))
        term.keys("Enter")
        term.wait_for("Treat: subjects", 30.0)
        term.keys("t")
        term.wait_for("n creates the first", 15.0)
        term.keys("n")
        code = f"P-{datetime.now().year}-0001"
        term.wait_for(code)
        for label in ("Gender", "Notes"):
            term.keys("Enter")
            term.focus_moves_to(label)
        term.keys("Enter")
        term.wait_for(lambda s: code in s and "Date of birth" not in s)
        term.keys("Enter")
        term.wait_for("A short test")
        term.wait_for("Step")
        term.keys("Enter")
        term.wait_for(lambda s: "All " in s and "checks pass" in s, 60.0)
        term.type(PASSWORD)
        term.keys("Enter")
        term.wait_for(lambda s: "step 1 of 2" in s, 30.0)
        term.keys("F5")
        term.wait_for("LASER EMISSION", 15.0)
        controllers = controllers_of(data_dir)
        consoles = console_pids(data_dir)
        assert len(controllers) == 1 and len(consoles) == 1

        term.close()  # the terminal goes: the console gets SIGHUP

        deadline = time.monotonic() + 30.0
        # Both leave the data directory first, then finish exiting: wait for the processes themselves too.
        while (
            controllers_of(data_dir)
            or console_pids(data_dir)
            or any(alive(pid) for pid in controllers + consoles)
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert controllers_of(data_dir) == [], "the controller the console started is still running"
        assert console_pids(data_dir) == [], "the console is still running"
        assert not [pid for pid in controllers + consoles if alive(pid)]
    finally:
        term.close()
        stop_controllers(data_dir)
    with sqlite3.connect(data_dir / "tosca.db") as db:
        status, reason = db.execute("SELECT status, abort_reason FROM sessions").fetchone()
        laser_off = db.execute(
            "SELECT COUNT(*) FROM treatment_events WHERE event_type = 'laser_off'"
        ).fetchone()[0]
    assert status == "aborted", (status, reason)
    assert laser_off >= 1
